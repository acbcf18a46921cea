"""argparse types of the CLI's network options, all on :mod:`tierlink.hostport`.

Each turns a ``ValueError`` into ``argparse.ArgumentTypeError`` so a bad value is one usage
line and exit status 2.
"""

from __future__ import annotations

import argparse
import ipaddress
import math
import os
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlsplit

from tierlink.errors import TierlinkError
from tierlink.hostport import parse_hostport, parse_port
from tierlink.identity import is_fingerprint
from tierlink.transport.host_addresses import check_host_address
from tierlink.transport.ice_servers import TurnUrl, parse_stun_url, parse_turn_url, tls_context
from tierlink.wire.envelope import MAX_PAYLOAD


class UsageError(TierlinkError):
    """Options that parse one by one but not together (exit code 2, like a bad argument)."""


#: The UDP port OpenDHT nodes listen on unless told otherwise.
DHT_DEFAULT_PORT = 4222


def _endpoint(default_port: int) -> Callable[[str], tuple[str, int]]:
    def convert(text: str) -> tuple[str, int]:
        try:
            return parse_hostport(text, default_port)
        except ValueError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    return convert


#: ``--bootstrap HOST[:PORT]`` (an OpenDHT node, port 4222 by default).
dht_address = _endpoint(DHT_DEFAULT_PORT)


def proxy_url(text: str) -> str:
    """``--dht-proxy``: an ``http://`` or ``https://`` URL with a host (and a valid port)."""
    try:
        url = urlsplit(text)
        port_ok = url.port is None or url.port > 0
    except ValueError:
        url, port_ok = urlsplit(""), False
    if url.scheme not in ("http", "https") or not url.hostname or not port_ok:
        raise argparse.ArgumentTypeError(f"invalid proxy URL {text!r}: expected "
                                         "http://HOST[:PORT]/ or https://HOST[:PORT]/")
    return text


def stun_address(text: str) -> tuple[str, int]:
    """``--stun stun:HOST[:PORT]`` or ``HOST[:PORT]`` (port 3478 by default)."""
    try:
        return parse_stun_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def turn_server(text: str) -> TurnUrl:
    """``--turn turn:HOST[:PORT][?transport=udp|tcp]``, ``turns:HOST[:PORT]`` or
    ``USER:PASS@HOST[:PORT]``."""
    try:
        return parse_turn_url(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


#: Longest secret read from a file (a password or a shared secret is far shorter).
_MAX_SECRET = 4096


def key_file(text: str) -> str:
    """An identity key file's path (``--identity``, ``id new --out``, ``id show``): not empty
    (which would silently mean the default identity) and not a directory."""
    if not text:
        raise argparse.ArgumentTypeError("empty path: leave the option out for the default "
                                         "identity")
    if Path(text).is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory, not a key file")
    return text


def secret_file(text: str) -> str:
    """A file holding one secret (a TURN password or shared secret): its first line,
    read now, so a bad file is a usage error."""
    try:
        with Path(text).open("rb") as f:
            data = f.read(_MAX_SECRET + 1)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot read {text!r}: {exc.strerror}") from None
    try:
        secret = data.decode().splitlines()[0] if data.strip() else ""
    except UnicodeDecodeError:
        secret = ""
    if not secret or len(data) > _MAX_SECRET or not secret.isprintable():
        raise argparse.ArgumentTypeError(f"{text!r} does not hold a secret: expected one "
                                         f"line of text (at most {_MAX_SECRET} bytes)")
    return secret


def ca_file(text: str) -> str:
    """A PEM file of CA certificates to verify TURN servers against (loaded now)."""
    try:
        tls_context(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None
    return text


def port_number(text: str) -> int:
    """A port, 1-65535."""
    try:
        return parse_port(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def port_or_zero(text: str) -> int:
    """A port, 0 (let the kernel pick) to 65535."""
    try:
        return parse_port(text, allow_zero=True)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def positive_int(text: str) -> int:
    """An integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected a whole number >= 1")
    return value


def number_in(low: float, high: float, unit: str, *,
              above: bool = False) -> Callable[[str], float]:
    """An argparse type: a number from ``low`` (``above``: more than ``low``) to ``high``.
    NaN and the infinities are refused, so no option can wedge a timer or a loop."""
    lowest = f"more than {low:g}" if above else f"from {low:g}"

    def convert(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (low < value if above else low <= value) or not value <= high:
            raise argparse.ArgumentTypeError(f"invalid value {text!r}: expected {unit} "
                                             f"{lowest} to {high:g}")
        return value

    return convert


#: ``--timeout``, ``--wait``: seconds, 0 to an hour.
seconds = number_in(0, 3600, "seconds")
#: A timeout that cannot be 0 (``lab --ice-timeout``).
positive_seconds = number_in(0, 3600, "seconds", above=True)


def port_range(text: str) -> tuple[int, int]:
    """``LOW-HIGH``, both within 1024-65535."""
    low, dash, high = text.partition("-")
    try:
        lo, hi = int(low), int(high)
    except ValueError:
        lo = hi = -1
    if not dash or not 1024 <= lo <= hi <= 65535:
        raise argparse.ArgumentTypeError(f"invalid port range {text!r}: expected LOW-HIGH "
                                         "within 1024-65535")
    return lo, hi


def host_address(text: str) -> str:
    """``--host-address``: an IPv4 or IPv6 address of this host (``[v6]`` too), normalised;
    not link-local, multicast or unspecified."""
    try:
        return check_host_address(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def ipv4_address(text: str) -> str:
    """An IPv4 address (``dht serve --proxy-host``: where the REST proxy listens)."""
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise argparse.ArgumentTypeError(f"invalid address {text!r}: expected an IPv4 "
                                         "address such as 127.0.0.1") from None


def fingerprint(text: str) -> str:
    """A fingerprint (128 hex characters; case and surrounding blanks ignored)."""
    text = text.strip().lower()
    if not is_fingerprint(text):
        shown = f"{text[:20]!r}…" if len(text) > 20 else repr(text)
        raise argparse.ArgumentTypeError(f"{shown} is not a fingerprint (128 hex characters)")
    return text


def message(text: str) -> bytes:
    """A message to send: the bytes the shell passed (UTF-8 or not), 1 to the offline
    envelope's :data:`MAX_PAYLOAD` bytes, so that every message of one ``send`` is checked
    before any of them is stored."""
    data = os.fsencode(text)
    if not data:
        raise argparse.ArgumentTypeError("cannot send an empty message")
    if len(data) > MAX_PAYLOAD:
        raise argparse.ArgumentTypeError(f"a message of {len(data)} bytes is over the limit of "
                                         f"{MAX_PAYLOAD} bytes (what one DHT envelope carries)")
    return data
