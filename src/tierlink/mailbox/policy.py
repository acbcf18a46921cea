"""Mailbox policy: who may deposit, how much, for how long (with an injectable clock).

Checks, in order, each refusal a :class:`MailboxRefused` with its reason word:
``not-registered`` (the recipient never registered here, or revoked), ``not-allowed`` (the
recipient handed us an allow-list without the depositor), ``expired`` (the envelope's clear
expiry has passed), ``sender-quota`` (the depositor's bytes held for this recipient would pass
``per_sender_quota``), ``quota`` (the recipient's bytes held would pass ``recipient_quota``),
``full`` (the bytes held for every recipient together would pass ``total_quota``). With an
allow-list only its members deposit, so fresh (Sybil) identities cannot fill the quota of an
allow-listed recipient; without one, each identity holds at most ``per_sender_quota``, and
the whole disk of an open mailbox is bounded by ``total_quota`` however many register.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

from tierlink.errors import TierlinkError
from tierlink.wire.records import now_ms

DAY_S = 24 * 3600.0


class MailboxRefused(TierlinkError):
    """A mailbox refused a request; ``reason`` is one word of the policy."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"mailbox refused ({reason}){': ' + detail if detail else ''}")
        self.reason = reason


@dataclass(frozen=True)
class MailboxSettings:
    """What ``tierlink mailbox serve`` configures (defaults in the CLI help).

    ``descriptor_interval``: how often the descriptors of registered recipients are re-put in
    the DHT (OpenDHT keeps a value 10 minutes). ``expiry_interval``: how often expired
    envelopes are deleted (and reported to their depositors). ``recipients``: the only
    fingerprints that may register (None: anyone). ``max_registrations``: the most recipients
    registered at once (each costs a DHT put every ``descriptor_interval``, so an open mailbox
    bounds what fresh identities can make it do). Quotas are envelope bytes held:
    ``total_quota`` for all recipients together, ``recipient_quota`` per recipient,
    ``per_sender_quota`` per (recipient, depositor). ``clock``: Unix ms (tests).
    """

    retention_s: float = 7 * DAY_S
    total_quota: int = 1 << 30
    recipient_quota: int = 64 << 20
    per_sender_quota: int = 8 << 20
    recipients: frozenset[str] | None = None
    descriptor_interval: float = 240.0
    expiry_interval: float = 60.0
    max_registrations: int = 1000
    clock: Callable[[], int] = field(default=now_ms, compare=False)

    def __post_init__(self) -> None:
        quotas = (self.total_quota, self.recipient_quota, self.per_sender_quota)
        if self.retention_s <= 0 or min(quotas) < 0:
            raise ValueError("retention must be positive and quotas not negative")
        if self.max_registrations < 1:
            raise ValueError("max_registrations must be at least 1")


def check_deposit(
    settings: MailboxSettings, *, registered: bool, allow: set[str] | None, depositor: str,
    expires_ms: int, size: int, sender_bytes: int, recipient_bytes: int, total_bytes: int,
) -> None:
    """Raise MailboxRefused unless a deposit of ``size`` bytes may be stored (module order)."""
    if not registered:
        raise MailboxRefused("not-registered", "the recipient has no registration here")
    if allow is not None and depositor not in allow:
        raise MailboxRefused("not-allowed", "the recipient does not accept this sender")
    if expires_ms <= settings.clock():
        raise MailboxRefused("expired", "the envelope has expired")
    if sender_bytes + size > settings.per_sender_quota:
        raise MailboxRefused("sender-quota", f"{sender_bytes} bytes held for this sender")
    if recipient_bytes + size > settings.recipient_quota:
        raise MailboxRefused("quota", f"{recipient_bytes} bytes held for this recipient")
    if total_bytes + size > settings.total_quota:
        raise MailboxRefused("full", f"{total_bytes} bytes held for all recipients")
