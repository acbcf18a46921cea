"""Mailboxes: always-on nodes that hold sealed envelopes for registered recipients.

A recipient names its mailboxes in a signed :mod:`~tierlink.mailbox.codec` descriptor kept in
the DHT; a sender whose live tiers fail deposits the envelope with one of them
(:mod:`~tierlink.mailbox.client`), which stores it durably (:mod:`~tierlink.mailbox.store`)
under the :mod:`~tierlink.mailbox.policy` and hands it to the recipient when it collects
(:mod:`~tierlink.mailbox.server`). Formats: docs/PROTOCOL.md, section "Mailboxes".
"""

from tierlink.mailbox.client import MailboxClient
from tierlink.mailbox.codec import Descriptor, create_descriptor, open_descriptor
from tierlink.mailbox.policy import MailboxRefused, MailboxSettings
from tierlink.mailbox.server import MailboxServer
from tierlink.mailbox.store import MailboxStore, SenderStore

__all__ = [
    "Descriptor",
    "MailboxClient",
    "MailboxRefused",
    "MailboxServer",
    "MailboxSettings",
    "MailboxStore",
    "SenderStore",
    "create_descriptor",
    "open_descriptor",
]
