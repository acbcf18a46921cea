"""The one ``HOST:PORT`` parser: IPv4, names, bracketed IPv6, default ports, clear errors."""

from __future__ import annotations

import pytest

from tierlink.hostport import format_hostport, parse_hostport, parse_port


@pytest.mark.parametrize(("text", "default", "expected"), [
    ("127.0.0.1:4222", None, ("127.0.0.1", 4222)),
    ("dht.example.org:1", None, ("dht.example.org", 1)),
    (" host:65535 ", None, ("host", 65535)),
    ("[::1]:4222", None, ("::1", 4222)),
    ("[2001:db8::2]:3478", 4222, ("2001:db8::2", 3478)),
    ("[fe80::1%eth0]:5", None, ("fe80::1%eth0", 5)),
    ("stun.example.org", 3478, ("stun.example.org", 3478)),
    ("[::1]", 4222, ("::1", 4222)),
])
def test_accepted(text: str, default: int | None, expected: tuple[str, int]) -> None:
    assert parse_hostport(text, default) == expected


@pytest.mark.parametrize(("text", "default", "needle"), [
    ("host:notaport", None, "port must be a number"),
    ("host:", None, "port must be a number"),
    ("host:0", None, "between 1 and 65535"),
    ("host:65536", None, "between 1 and 65535"),
    ("host:-1", None, "port must be a number"),
    (":4222", None, "the host is empty"),
    ("", 4222, "the host is empty"),
    ("my host:4222", None, "contains spaces"),
    ("host", None, "the port is missing"),
    ("::1:4222", None, "needs brackets"),
    ("::1:4222", 4222, "needs brackets, [ADDR]:PORT or [ADDR]"),
    ("[::1", None, "expected [IPv6]:PORT"),
    ("[::1]4222", None, "expected [IPv6]:PORT"),
    ("[not-v6]:4222", None, "expected [IPv6]:PORT"),
    ("a:b:c", 4222, "IPv6 as [ADDR]:PORT"),
])
def test_rejected_with_one_clear_line(text: str, default: int | None, needle: str) -> None:
    with pytest.raises(ValueError) as err:
        parse_hostport(text, default)
    message = str(err.value)
    assert needle in message and "\n" not in message
    assert repr(text) in message


def test_port_zero_only_when_allowed() -> None:
    assert parse_port("0", allow_zero=True) == 0
    with pytest.raises(ValueError, match="between 1 and 65535"):
        parse_port("0")
    with pytest.raises(ValueError, match="between 0 and 65535"):
        parse_port("99999", allow_zero=True)


@pytest.mark.parametrize(("host", "port"), [("127.0.0.1", 1), ("::1", 4222), ("a.b", 9)])
def test_format_round_trips(host: str, port: int) -> None:
    text = format_hostport(host, port)
    assert parse_hostport(text) == (host, port)
    assert text.startswith("[") == (":" in host)
