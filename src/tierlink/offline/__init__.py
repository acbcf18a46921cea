"""The offline tier's data layer: envelopes, acks, inbox policy, durable outbox.

A sender that cannot reach a peer directly seals the message into a sealed-sender
:mod:`~tierlink.wire.envelope` (only the recipient learns who sent it) and puts it under the
peer's offline-queue DHT key, re-putting it until the peer's :mod:`~tierlink.wire.ack`
(sealed under a key only the two ends know) arrives or the message expires; the
:mod:`~tierlink.offline.outbox` keeps that state across restarts. The receiver runs each
fetch through the :mod:`~tierlink.offline.inbox` policy and remembers what it delivered in a
bounded :mod:`~tierlink.offline.delivered` log so a re-sent message reaches the application
once. The :mod:`~tierlink.offline.worker` (:class:`OfflineTier`) drives both sides through
the DHT.
"""

from tierlink.offline.delivered import DeliveredLog
from tierlink.offline.inbox import FetchResult, Inbox, InboxLimits
from tierlink.offline.outbox import Outbox, OutboxEntry
from tierlink.offline.store import StoreError
from tierlink.offline.worker import OfflineTier
from tierlink.wire.ack import ReceivedAck, create_ack, open_ack
from tierlink.wire.envelope import (
    MAX_PAYLOAD,
    ReceivedEnvelope,
    create_envelope,
    open_envelope,
)

__all__ = [
    "MAX_PAYLOAD",
    "DeliveredLog",
    "FetchResult",
    "Inbox",
    "InboxLimits",
    "OfflineTier",
    "Outbox",
    "OutboxEntry",
    "ReceivedAck",
    "ReceivedEnvelope",
    "StoreError",
    "create_ack",
    "create_envelope",
    "open_ack",
    "open_envelope",
]
