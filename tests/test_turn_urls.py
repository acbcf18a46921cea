"""STUN and TURN servers as users write them: turn:/turns: URLs (RFC 7065), credentials from
options, a file, the environment or coturn's shared secret; hostile text is a clear error."""

from __future__ import annotations

import argparse
import base64
import hashlib
import hmac
import subprocess
import sys
from pathlib import Path

import pytest

from tierlink.cli.argtypes import ca_file, secret_file
from tierlink.cli.node_options import TURN_PASSWORD_ENV, add_node_options, turn_servers
from tierlink.transport.ice_servers import (
    REST_CREDENTIAL_LIFETIME,
    TurnServer,
    TurnUrl,
    parse_stun_url,
    parse_turn_url,
)


@pytest.mark.parametrize(("text", "host", "port", "transports"), [
    ("turn:turn.example.org", "turn.example.org", 3478, ("udp", "tcp")),
    ("turn:turn.example.org:3479", "turn.example.org", 3479, ("udp", "tcp")),
    ("turn:203.0.113.5?transport=udp", "203.0.113.5", 3478, ("udp",)),
    ("turn:203.0.113.5:80?transport=tcp", "203.0.113.5", 80, ("tcp",)),
    ("TURN:h.example?TRANSPORT=TCP", "h.example", 3478, ("tcp",)),
    ("turns:turn.example.org", "turn.example.org", 5349, ("tls",)),
    ("turns:turn.example.org:443?transport=tcp", "turn.example.org", 443, ("tls",)),
    ("turn:[2001:db8::1]:3478?transport=tcp", "2001:db8::1", 3478, ("tcp",)),
    ("turns:[::1]", "::1", 5349, ("tls",)),
])
def test_turn_urls_as_webrtc_users_write_them(
    text: str, host: str, port: int, transports: tuple[str, ...]
) -> None:
    url = parse_turn_url(text)
    assert (url.host, url.port, url.transports) == (host, port, transports)
    assert url.username is None and url.password is None


def test_the_older_user_pass_form_carries_its_credentials() -> None:
    url = parse_turn_url("alice:p@ss:w@rd@[::1]:3479")
    assert (url.host, url.port, url.username, url.password) == ("::1", 3479, "alice", "p@ss:w@rd")
    servers = url.servers("ignored", "ignored")
    assert [s.transport for s in servers] == ["udp", "tcp"]
    assert all((s.username, s.password) == ("alice", "p@ss:w@rd") for s in servers)


@pytest.mark.parametrize(("text", "says"), [
    ("turn://turn.example.org", "has no '//'"),
    ("turn:alice:secret@turn.example.org", "credentials do not go in the URL"),
    ("turn:h.example?transport=sctp", "?transport=udp or ?transport=tcp"),
    ("turn:h.example?foo=bar", "the only query"),
    ("turn:h.example?transport=", "the only query"),
    ("turns:h.example?transport=udp", "DTLS"),
    ("turn:h.example/path", "expected turn:HOST"),
    ("turn:h.example#frag", "expected turn:HOST"),
    ("turn:", "the host is empty"),
    ("turn::3478", "the host is empty"),
    ("turn:h.example:0", "between 1 and 65535"),
    ("turn:h.example:65536", "between 1 and 65535"),
    ("turn:h.example:x", "port must be a number"),
    ("turn:2001:db8::1:3478", "needs brackets"),
    ("turn:[2001:db8::1", "[IPv6]:PORT"),
    ("turn:h .example", "spaces or control characters"),
    ("turn:h.example\n--relay-only", "spaces or control characters"),
    ("turn:h\x00.example", "spaces or control characters"),
    ("turn:" + "a" * 600, "longer than 512"),
    ("http://turn.example.org", "expected turn:HOST"),
    ("turn.example.org:3478", "expected turn:HOST"),
    ("nouser@127.0.0.1:3478", "expected USER:PASS@HOST"),
    (":pw@127.0.0.1", "expected USER:PASS@HOST"),
])
def test_hostile_turn_urls_are_clear_errors(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_turn_url(text)
    assert says in str(info.value), str(info.value)


@pytest.mark.parametrize(("text", "expected"), [
    ("stun:stun.example.org", ("stun.example.org", 3478)),
    ("stun:stun.example.org:19302", ("stun.example.org", 19302)),
    ("stun.example.org:19302", ("stun.example.org", 19302)),
    ("[::1]", ("::1", 3478)),
    ("STUN:[2001:db8::2]:3480", ("2001:db8::2", 3480)),
])
def test_stun_servers(text: str, expected: tuple[str, int]) -> None:
    assert parse_stun_url(text) == expected


@pytest.mark.parametrize(("text", "says"), [
    ("stuns:stun.example.org", "not supported"),
    ("stun://stun.example.org", "expected stun:HOST"),
    ("stun:stun.example.org?transport=udp", "expected stun:HOST"),
    ("stun:", "the host is empty"),
    ("stun.example:", "port must be a number"),
    ("stun:h\tx", "spaces or control characters"),
])
def test_hostile_stun_servers_are_clear_errors(text: str, says: str) -> None:
    with pytest.raises(ValueError) as info:
        parse_stun_url(text)
    assert says in str(info.value), str(info.value)


def test_a_url_without_credentials_needs_them_from_somewhere() -> None:
    url = parse_turn_url("turn:h.example")
    with pytest.raises(ValueError, match=r"has no credentials.*--turn-password-file"):
        url.servers("alice", None)
    with pytest.raises(ValueError, match="no user name: give --turn-user"):
        url.servers(None, "pw")
    assert [s.username for s in url.servers("alice", "pw")] == ["alice", "alice"]


def test_rest_credentials_are_coturns_use_auth_secret_scheme() -> None:
    """username = expiry[:user], password = base64(HMAC-SHA1(secret, username))."""
    (server,) = parse_turn_url("turns:h.example").servers("alice", secret="s3cret")
    user, password = server.credentials(now=1_000_000)
    assert user == f"{1_000_000 + REST_CREDENTIAL_LIFETIME}:alice"
    mac = hmac.new(b"s3cret", user.encode(), hashlib.sha1).digest()
    assert password == base64.b64encode(mac).decode()
    (anonymous,) = parse_turn_url("turn:h.example?transport=tcp").servers(None, secret="s")
    assert anonymous.credentials(now=5)[0] == str(5 + REST_CREDENTIAL_LIFETIME)
    assert "s3cret" not in repr(server) and "secret=" not in repr(server)


def test_turn_server_checks_its_fields() -> None:
    with pytest.raises(ValueError, match="invalid TURN transport 'dtls'"):
        TurnServer("h", 3478, "u", "p", "dtls")  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="between 1 and 65535"):
        TurnServer("h", 0, "u", "p")
    with pytest.raises(ValueError, match="TLS servers only"):
        TurnServer("h", 3478, "u", "p", "tcp", ca_file="/etc/ssl/ca.pem")
    assert TurnServer("h", 3478, "u", "p").transport == "udp"  # the old four-field form
    assert TurnServer("::1", 5349, "u", "p", "tls").url == "turns:[::1]:5349"
    assert TurnUrl("h", 1, ("udp",)).describe() == "turn:h:1?transport=udp"


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_node_options(parser)
    return parser.parse_args(argv)


def test_cli_credentials_from_a_file_or_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pw = tmp_path / "pw"
    pw.write_text("from-file\n")
    monkeypatch.setenv(TURN_PASSWORD_ENV, "from-env")
    args = parse("--turn", "turn:a.example", "--turn", "turns:b.example:443",
                 "--turn-user", "alice", "--turn-password-file", str(pw))
    servers = turn_servers(args)
    assert [(s.host, s.port, s.transport) for s in servers] == [
        ("a.example", 3478, "udp"), ("a.example", 3478, "tcp"), ("b.example", 443, "tls")]
    assert {(s.username, s.password) for s in servers} == {("alice", "from-file")}
    args = parse("--turn", "turn:a.example?transport=tcp", "--turn-user", "alice")
    assert [s.password for s in turn_servers(args)] == ["from-env"]
    monkeypatch.delenv(TURN_PASSWORD_ENV)
    with pytest.raises(ValueError, match="no credentials"):
        turn_servers(args)


def test_cli_secret_file_makes_time_limited_credentials(tmp_path: Path) -> None:
    secret = tmp_path / "secret"
    secret.write_text("north-wind\n")
    args = parse("--turn", "turn:a.example?transport=udp", "--turn-secret-file", str(secret))
    (server,) = turn_servers(args)
    user, password = server.credentials(now=100)
    mac = hmac.new(b"north-wind", user.encode(), hashlib.sha1).digest()
    assert user == str(100 + REST_CREDENTIAL_LIFETIME)
    assert password == base64.b64encode(mac).decode()


@pytest.mark.parametrize("content", [b"", b"\n\n", b"\xff\xfe", b"x" * 5000, b"a\x1bb\n"])
def test_a_secret_file_without_one_line_of_text_is_a_usage_error(
    tmp_path: Path, content: bytes
) -> None:
    bad = tmp_path / "bad"
    bad.write_bytes(content)
    with pytest.raises(argparse.ArgumentTypeError, match="does not hold a secret"):
        secret_file(str(bad))
    with pytest.raises(argparse.ArgumentTypeError, match="cannot read"):
        secret_file(str(tmp_path / "missing"))


def test_a_ca_file_that_is_not_pem_is_a_usage_error(tmp_path: Path) -> None:
    bad = tmp_path / "ca.pem"
    bad.write_text("not a certificate")
    with pytest.raises(argparse.ArgumentTypeError, match="cannot load the TURN CA file"):
        ca_file(str(bad))


def test_a_password_in_a_turn_url_is_refused_without_echoing_it() -> None:
    """Credentials come from options, a file or the environment, not the URL: one put there
    is a usage error that does not repeat the password."""
    out = subprocess.run(
        [sys.executable, "-m", "tierlink.cli", "send", "ab" * 64, "hi", "--turn",
         "turn:alice:hunter2@h.example"],
        capture_output=True, text=True, timeout=60,
    )
    assert out.returncode == 2
    assert "credentials do not go in the URL" in out.stderr
    assert "hunter2" not in out.stderr


def test_errors_about_the_older_form_do_not_echo_its_password() -> None:
    with pytest.raises(ValueError) as info:
        parse_turn_url("alice:hunter2@[::1:3478")
    assert "hunter2" not in str(info.value) and "[::1:3478" in str(info.value)
