"""STUN and TURN servers as configured: the one parser of ``stun:`` / ``turn:`` / ``turns:``
URLs (RFC 7064, RFC 7065) and TURN credentials, static or time-limited (coturn's
``use-auth-secret``, the TURN REST scheme).

A URL names a server and a transport, never credentials (RFC 7065 has no userinfo); those
come separately, so a password need not appear on a command line. ``turn:HOST`` without
``?transport=`` means UDP and TCP gathered side by side: a network that blocks outbound UDP
still gets a relay over TCP without waiting for UDP to time out. Every error is a
``ValueError`` naming the text and what was expected.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import ssl
import time
from dataclasses import dataclass, field
from typing import Literal

from tierlink.hostport import format_hostport, parse_hostport

TurnTransport = Literal["udp", "tcp", "tls"]
TURN_TRANSPORTS: tuple[TurnTransport, ...] = ("udp", "tcp", "tls")
#: RFC 8489 / RFC 8656 default ports: plain (UDP and TCP) and TLS.
STUN_PORT = 3478
STUNS_PORT = 5349
#: How long a time-limited (REST) credential stays valid; coturn checks it on every
#: allocation and refresh, so it must outlive the longest session.
REST_CREDENTIAL_LIFETIME = 24 * 3600
_MAX_URL = 512


@dataclass(frozen=True)
class TurnServer:
    """One way to reach a TURN server (RFC 8656): address, transport and credentials.

    ``transport``: ``udp``, ``tcp`` or ``tls`` (TCP inside TLS, verified against
    ``ca_file`` or the system's CAs: never unverified). ``secret``: coturn's
    ``static-auth-secret``; the credentials are then made per allocation
    (:meth:`credentials`) and ``username`` is the optional user part. The repr leaves out
    the password and the secret.
    """

    host: str
    port: int
    username: str
    password: str = field(repr=False)
    transport: TurnTransport = "udp"
    ca_file: str | None = None
    secret: str | None = field(default=None, repr=False)

    def __post_init__(self) -> None:
        if self.transport not in TURN_TRANSPORTS:
            raise ValueError(f"invalid TURN transport {self.transport!r}: expected one of "
                             f"{', '.join(TURN_TRANSPORTS)}")
        if not 1 <= self.port <= 65535:
            raise ValueError(f"invalid TURN port {self.port}: must be between 1 and 65535")
        if self.ca_file is not None and self.transport != "tls":
            raise ValueError(f"a CA file applies to TLS servers only, not {self.url}")

    @property
    def url(self) -> str:
        """The server as a ``turn:`` / ``turns:`` URL (no credentials)."""
        where = format_hostport(self.host, self.port)
        if self.transport == "tls":
            return f"turns:{where}"
        return f"turn:{where}?transport={self.transport}"

    def credentials(self, now: float | None = None) -> tuple[str, str]:
        """(username, password) for an allocation made at ``now`` (default: the time now).

        With a secret: username ``EXPIRY[:USER]`` (Unix time), password
        ``base64(HMAC-SHA1(secret, username))``, as coturn's ``use-auth-secret`` expects.
        """
        if self.secret is None:
            return self.username, self.password
        expiry = int(time.time() if now is None else now) + REST_CREDENTIAL_LIFETIME
        user = f"{expiry}:{self.username}" if self.username else str(expiry)
        digest = hmac.new(self.secret.encode(), user.encode(), hashlib.sha1).digest()
        return user, base64.b64encode(digest).decode()

    def ssl_context(self) -> ssl.SSLContext | None:
        """The TLS context of a ``tls`` server (certificate and host name verified); None
        for the other transports."""
        if self.transport != "tls":
            return None
        return tls_context(self.ca_file)


def tls_context(ca_file: str | None) -> ssl.SSLContext:
    """A verifying client context: ``ca_file``'s CAs, or the system's without one."""
    try:
        return ssl.create_default_context(cafile=ca_file)
    except (OSError, ssl.SSLError) as exc:
        raise ValueError(f"cannot load the TURN CA file {ca_file!r}: {exc}") from None


@dataclass(frozen=True)
class TurnUrl:
    """A parsed ``turn:`` / ``turns:`` URL (or the older ``USER:PASS@HOST[:PORT]`` form,
    which carries its own credentials): where, over which transports."""

    host: str
    port: int
    transports: tuple[TurnTransport, ...]
    username: str | None = None
    password: str | None = field(default=None, repr=False)

    def servers(
        self, username: str | None = None, password: str | None = None, *,
        secret: str | None = None, ca_file: str | None = None,
    ) -> tuple[TurnServer, ...]:
        """One :class:`TurnServer` per transport, with the URL's own credentials or these.

        ``secret`` makes time-limited credentials (``username`` then optional); otherwise a
        username and a password are needed. ValueError says which is missing.
        """
        user = self.username if self.username is not None else username
        if self.password is not None:
            pw, secret = self.password, None
        elif secret is not None:
            pw = ""
        elif password is not None:
            pw = password
        else:
            raise ValueError(
                f"TURN server {self.describe()} has no credentials: give --turn-user with "
                "--turn-password-file or TIERLINK_TURN_PASSWORD, or --turn-secret-file"
            )
        if user is None:
            if secret is None:
                raise ValueError(f"TURN server {self.describe()} has a password but no user "
                                 "name: give --turn-user")
            user = ""
        return tuple(
            TurnServer(self.host, self.port, user, pw, t,
                       ca_file if t == "tls" else None, secret)
            for t in self.transports
        )

    def describe(self) -> str:
        """The URL without credentials."""
        where = format_hostport(self.host, self.port)
        if self.transports == ("tls",):
            return f"turns:{where}"
        if len(self.transports) == 1:
            return f"turn:{where}?transport={self.transports[0]}"
        return f"turn:{where}"


def _check_text(text: str, what: str) -> str:
    shown = f"…@{text.rpartition('@')[2]}" if "@" in text else text  # no password echoed
    if len(text) > _MAX_URL:
        raise ValueError(f"invalid {what} {shown[:40]!r}…: longer than {_MAX_URL} characters")
    if not text.isprintable() or any(c.isspace() for c in text.strip()):
        raise ValueError(f"invalid {what} {shown!r}: contains spaces or control characters")
    return text.strip()


def parse_turn_url(text: str) -> TurnUrl:
    """``turn:HOST[:PORT][?transport=udp|tcp]``, ``turns:HOST[:PORT][?transport=tcp]``, or
    ``USER:PASS@HOST[:PORT]`` -> :class:`TurnUrl`. IPv6 hosts go in brackets."""
    spec = _check_text(text, "TURN server")
    scheme, colon, rest = spec.partition(":")
    scheme = scheme.lower()
    if not colon or scheme not in ("turn", "turns"):
        if "@" in spec:
            return _legacy_turn(spec, text)
        raise ValueError(f"invalid TURN server {text!r}: expected turn:HOST[:PORT]"
                         "[?transport=udp|tcp] or turns:HOST[:PORT]")
    if rest.startswith("//"):
        raise ValueError(f"invalid TURN URL {text!r}: a turn: URL has no '//' "
                         f"(write {scheme}:HOST[:PORT])")
    if "@" in rest:  # not echoed: it may hold a password
        raise ValueError(f"invalid TURN URL {scheme}:…@{rest.rpartition('@')[2]}: credentials "
                         "do not go in the URL; give --turn-user with --turn-password-file "
                         "or TIERLINK_TURN_PASSWORD")
    if "/" in rest or "#" in rest:
        raise ValueError(f"invalid TURN URL {text!r}: expected {scheme}:HOST[:PORT]"
                         "[?transport=udp|tcp]")
    where, question, query = rest.partition("?")
    transports: tuple[TurnTransport, ...]
    if not question:
        transports = ("tls",) if scheme == "turns" else ("udp", "tcp")
    else:
        key, eq, value = query.partition("=")
        value = value.lower()
        if key.lower() != "transport" or not eq or value not in ("udp", "tcp"):
            raise ValueError(f"invalid TURN URL {text!r}: the only query is ?transport=udp "
                             "or ?transport=tcp")
        if scheme == "turns" and value == "udp":
            raise ValueError(f"invalid TURN URL {text!r}: turns: over UDP (DTLS) is not "
                             "supported; use turns:HOST or turn:HOST?transport=udp")
        transports = ("tls",) if scheme == "turns" else ("udp",) if value == "udp" else ("tcp",)
    default = STUNS_PORT if scheme == "turns" else STUN_PORT
    host, port = _server_address(where, default, text)
    return TurnUrl(host, port, transports)


def _legacy_turn(spec: str, text: str) -> TurnUrl:
    creds, _, where = spec.rpartition("@")
    user, colon, password = creds.partition(":")
    shown = f"…@{where}"  # errors do not echo the password
    if not colon or not user:
        raise ValueError(f"invalid TURN server {shown!r}: expected USER:PASS@HOST[:PORT] "
                         "or a turn: URL")
    host, port = _server_address(where, STUN_PORT, shown)
    return TurnUrl(host, port, ("udp", "tcp"), user, password)


def parse_stun_url(text: str) -> tuple[str, int]:
    """``stun:HOST[:PORT]`` or ``HOST[:PORT]`` -> (host, port); port 3478 by default."""
    spec = _check_text(text, "STUN server")
    scheme, colon, rest = spec.partition(":")
    if colon and scheme.lower() == "stuns":
        raise ValueError(f"invalid STUN server {text!r}: stuns: (STUN over TLS) is not "
                         "supported; use stun:HOST[:PORT]")
    if colon and scheme.lower() == "stun":
        if rest.startswith("//") or "?" in rest or "/" in rest or "@" in rest:
            raise ValueError(f"invalid STUN URL {text!r}: expected stun:HOST[:PORT]")
        spec = rest
    return _server_address(spec, STUN_PORT, text)


def _server_address(where: str, default_port: int, text: str) -> tuple[str, int]:
    try:
        host, port = parse_hostport(where, default_port)
    except ValueError as exc:
        reason = str(exc).partition(": ")[2]
        raise ValueError(f"invalid server {text!r}: {reason}") from None
    if any(c in host for c in "[]?#/@%") and not host.count(":"):
        raise ValueError(f"invalid server {text!r}: the host name has characters a host name "
                         "cannot have")
    return host, port
