"""What a new user trips on, as separate ``tierlink`` processes: every bad input is one line on
stderr with a non-zero exit, nothing half-sent, never a traceback."""

from __future__ import annotations

import importlib
import os
from pathlib import Path

import pytest

from tests.cli_runs import one_line_error, run

FP = "ab" * 64


@pytest.mark.parametrize("argv", [
    ("send", "abc", "hi"),
    ("send", FP),
    ("lookup", "zz" * 64),
    ("run", "--bootstrap", "127.0.0.1:99999"),
    ("mailbox", "serve", "--quota-mb", "lots"),
    ("demo", "--messages", "x"),
])
def test_a_bad_argument_is_one_line_not_a_usage_dump(argv: tuple[str, ...]) -> None:
    """The README: every failure is one line on stderr, exit 2 for bad arguments; the usage
    (nine lines for ``send``) is one ``--help`` away instead of burying the error."""
    line = one_line_error(run(*argv), 2)
    assert "error: " in line and "--help" in line, line


def test_every_message_is_checked_before_any_is_stored(tmp_path: Path) -> None:
    """``send FP ok BAD``: a bad message anywhere refuses the whole command up front, so
    ``ok`` is neither stored nor delivered behind an error the user would answer by sending
    it again."""
    key = tmp_path / "a.json"
    assert run("id", "new", "--out", str(key)).returncode == 0
    data = tmp_path / "a"
    node = ["--identity", str(key), "--data-dir", str(data), "--dht-proxy",
            "http://127.0.0.1:9/"]
    empty = one_line_error(run("send", FP, "ok", "", *node), 2)
    assert "empty message" in empty
    big = one_line_error(run("send", FP, "ok", "x" * 51037, *node), 2)
    assert "51037 bytes is over the limit of 51036" in big
    assert not (data / "tierlink.db").exists()  # no node started, nothing stored


def test_a_message_is_sent_as_the_bytes_the_shell_passed() -> None:
    """Text that is not UTF-8 (a latin-1 terminal) is sent as given, not refused with an
    encoder's error."""
    from tierlink.cli.argtypes import message
    from tierlink.wire.envelope import MAX_PAYLOAD

    assert message(os.fsdecode(b"caf\xe9")) == b"caf\xe9"
    assert message("h\u00e9") == "h\u00e9".encode()
    assert len(message("x" * MAX_PAYLOAD)) == MAX_PAYLOAD


@pytest.mark.parametrize(("argv", "option"), [
    (("send", FP, "hi", "--timeout", "nan"), "--timeout"),
    (("send", FP, "hi", "--timeout", "-1"), "--timeout"),
    (("send", FP, "hi", "--timeout", "inf"), "--timeout"),
    (("lookup", FP, "--timeout", "1e308"), "--timeout"),
    (("send", FP, "hi", "--wait", "nan"), "--wait"),
    (("mailbox", "serve", "--retention-days", "nan"), "--retention-days"),
    (("mailbox", "serve", "--retention-days", "0"), "--retention-days"),
    (("mailbox", "serve", "--quota-mb", "-1"), "--quota-mb"),
    (("mailbox", "serve", "--per-sender-quota-mb", "inf"), "--per-sender-quota-mb"),
    (("mailbox", "serve", "--record-lifetime", "0"), "--record-lifetime"),
    (("mailbox", "serve", "--record-lifetime", "90000"), "--record-lifetime"),
    (("mailbox", "serve", "--descriptor-interval", "nan"), "--descriptor-interval"),
    (("demo", "--messages", "-1"), "--messages"),
    (("lab", "--ice-timeout", "nan"), "--ice-timeout"),
])
def test_numbers_out_of_range_are_refused_before_anything_starts(
    argv: tuple[str, ...], option: str, tmp_path: Path
) -> None:
    """NaN, infinite, negative or out-of-range numbers never reach a node (``--timeout nan``
    otherwise crashes the delivery loop with a traceback and leaves the command hanging)."""
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path))  # no identity: nothing could start
    line = one_line_error(run(*argv, env=env), 2)
    assert f"argument {option}: invalid value" in line, line


@pytest.mark.parametrize("argv", [("outbox",), ("mailbox", "status")])
def test_a_mistyped_data_dir_is_an_error_not_an_empty_listing(
    argv: tuple[str, ...], tmp_path: Path
) -> None:
    """``outbox --data-dir typo`` must not answer "no undelivered messages": the user would
    believe every message was delivered."""
    line = one_line_error(run(*argv, "--data-dir", str(tmp_path / "typo")), 1)
    assert "database at" in line and "typo" in line, line


@pytest.mark.parametrize("url", ["notaurl", "ftp://proxy/", "http://", "http://h:99999/",
                                 "127.0.0.1:8080"])
def test_a_bad_proxy_url_is_a_usage_error(url: str, tmp_path: Path) -> None:
    """``--dht-proxy notaurl`` is named as a bad URL at once, not reported later as an
    unreachable proxy at ``notaurl/key/<hash>``."""
    env = dict(os.environ, XDG_DATA_HOME=str(tmp_path))
    line = one_line_error(run("send", FP, "hi", "--dht-proxy", url, env=env), 2)
    assert "argument --dht-proxy: invalid proxy URL" in line, line


@pytest.mark.parametrize("argv", [("send", FP, "hi"), ("dht", "serve", "--port", "0")])
def test_an_unknown_bootstrap_host_is_named_at_once(argv: tuple[str, ...],
                                                    tmp_path: Path) -> None:
    """A bootstrap name that does not resolve is said so before any dhtnode starts, not
    after a 10 s join timeout blamed on a firewall blocking UDP."""
    key = tmp_path / "a.json"
    assert run("id", "new", "--out", str(key)).returncode == 0
    extra = ("--identity", str(key), "--data-dir", str(tmp_path / "a")) if argv[0] == "send" else ()
    proc = run(*argv, *extra, "--bootstrap", "no-such-host.invalid:4222", timeout=30)
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "cannot resolve the bootstrap host 'no-such-host.invalid'" in line, line
    assert "UDP" not in proc.stderr


def test_the_mailbox_a_message_waits_in_is_shortened_like_every_fingerprint() -> None:
    """As the README shows it: ``queued 770a6bb11fe5 in mailbox 8548e4365604cbbf…``, not the
    whole 128-character fingerprint in the middle of the sentence."""
    from tierlink.cli.output import sent_line

    line = sent_line({"message_id": "770a6bb11fe5" + "0" * 20, "state": "in_mailbox",
                      "tier": None, "bytes": 31, "mailboxes": ["8548e4365604cbbf" * 8]})
    assert line.startswith("queued 770a6bb11fe5 in mailbox 8548e4365604cbbf…; the recipient")
    assert "8548e4365604cbbf" * 2 not in line


def test_options_that_do_not_go_together_are_a_usage_error() -> None:
    """``bench --profile`` without ``--dht-many`` is a bad argument (exit 2), like any other."""
    line = one_line_error(run("bench", "--profile", "lan"), 2)
    assert line == ("tierlink bench: error: --profile goes with --dht-many "
                    "(see 'tierlink bench --help')"), line


def test_revoking_a_stranger_is_not_reported_as_done(tmp_path: Path) -> None:
    """``mailbox revoke`` of a fingerprint that never registered (a typo) says so instead of
    "registration revoked; 0 held messages dropped"."""
    from tierlink.mailbox import MailboxStore

    (tmp_path / "m").mkdir()
    MailboxStore(tmp_path / "m" / "mailbox.db").close()
    line = one_line_error(run("mailbox", "revoke", FP, "--data-dir", str(tmp_path / "m")), 1)
    assert "abababababababab… is not registered with this mailbox" in line, line


def test_an_os_error_is_path_and_reason(tmp_path: Path) -> None:
    """A data directory that cannot be created reads ``tierlink: PATH: reason``, without
    Python's ``[Errno 20]``."""
    key = tmp_path / "a.json"
    assert run("id", "new", "--out", str(key)).returncode == 0
    (tmp_path / "file").write_text("not a directory")
    proc = run("send", FP, "hi", "--identity", str(key), "--data-dir",
               str(tmp_path / "file" / "d"), "--dht-proxy", "http://127.0.0.1:9/")
    line = proc.stderr.strip().splitlines()[-1]
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert line == f"tierlink: {tmp_path / 'file' / 'd'}: Not a directory", line


def test_dht_serve_proxy_host_is_an_address() -> None:
    line = one_line_error(run("dht", "serve", "--port", "0", "--proxy-host", "notahost"), 2)
    assert "argument --proxy-host: invalid address 'notahost'" in line, line


def test_one_data_dir_holds_one_identity(tmp_path: Path) -> None:
    """``--data-dir shared`` for two identities: the second is refused, or its node would send
    the first one's pending messages under its own name."""
    keys = [tmp_path / "c.json", tmp_path / "a.json"]
    fps = [run("id", "new", "--out", str(k)).stdout.strip() for k in keys]
    shared = ["--data-dir", str(tmp_path / "shared"), "--dht-proxy", "http://127.0.0.1:9/"]
    first = run("send", FP, "from c", "--identity", str(keys[0]), *shared)
    assert "DHT proxy" in first.stderr and "another identity" not in first.stderr
    again = run("send", FP, "from c", "--identity", str(keys[0]), *shared)
    assert "another identity" not in again.stderr, again.stderr
    refused = run("send", FP, "from a", "--identity", str(keys[1]), *shared)
    assert refused.returncode == 1 and "Traceback" not in refused.stderr, refused.stderr
    line = refused.stderr.strip().splitlines()[-1]  # after "no running node ...: starting one"
    assert line == (f"tierlink: {tmp_path / 'shared'} holds the messages of another identity "
                    f"({fps[0][:16]}…); give each identity its own data directory"), line


def test_a_host_address_this_host_does_not_have_is_refused(tmp_path: Path) -> None:
    """``run --host-address 192.0.2.1`` (not on this host) fails at once instead of coming
    "online" to fail every dial."""
    key = tmp_path / "a.json"
    assert run("id", "new", "--out", str(key)).returncode == 0
    line = one_line_error(run("run", "--identity", str(key), "--data-dir", str(tmp_path / "a"),
                              "--dht-proxy", "http://127.0.0.1:9/", "--host-address",
                              "192.0.2.1"), 1)
    assert line == ("tierlink: --host-address 192.0.2.1: Cannot assign requested address (it "
                    "must be an address of this host)"), line


def test_ctrl_c_while_the_command_line_is_read_is_no_traceback(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """Ctrl-C right after Enter lands while the parser is built (it loads the lab and bench
    option lists): exit 130 with one line, as later."""
    cli_main = importlib.import_module("tierlink.cli.dispatch")

    def interrupted() -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_main, "build_parser", interrupted)
    assert cli_main.execute(["id", "show"]) == 130
    assert capsys.readouterr().err == "interrupted\n"


@pytest.mark.parametrize("argv", [("id", "show", "{dir}"), ("id", "new", "--out", "{dir}"),
                                  ("id", "new", "--out", "{dir}", "--force"),
                                  ("send", FP, "hi", "--identity", "{dir}"),
                                  ("outbox", "--identity", ""), ("id", "show", "")])
def test_a_key_file_path_is_a_file(argv: tuple[str, ...], tmp_path: Path) -> None:
    """A directory is named as one (not "accessible by others (mode 0755)", nor a temp file's
    error), and an empty path is refused instead of meaning the default identity."""
    line = one_line_error(run(*(a.replace("{dir}", str(tmp_path)) for a in argv)), 2)
    assert "is a directory, not a key file" in line or "empty path" in line, line


def test_a_node_is_not_its_own_mailbox(tmp_path: Path) -> None:
    """``run --mailbox`` with the node's own fingerprint would come online and silently
    register nowhere."""
    key = tmp_path / "a.json"
    fp = run("id", "new", "--out", str(key)).stdout.strip()
    line = one_line_error(run("run", "--identity", str(key), "--mailbox", fp, "--dht-proxy",
                              "http://127.0.0.1:9/"), 2)
    assert "--mailbox names this node's own identity" in line, line

