"""``tierlink outbox remove ID``: an undelivered message leaves the outbox, so no tier sends
it (again); through the running node when one runs, else directly in the database. A
delivered or unknown id is one clear error line."""

from __future__ import annotations

import asyncio
import json
import subprocess
from pathlib import Path

from tests.cli_runs import TIERLINK, interrupt, one_line_error, run, start_serve
from tierlink import control
from tierlink.identity import Identity
from tierlink.offline import Outbox
from tierlink.offline.store import STORE_FILE

FP = "ab" * 64


def _outbox_with(data: Path, *ids: bytes) -> dict[str, bytes]:
    """An outbox database in ``data`` holding a pending message per id (the first two also
    queued, resp. delivered)."""
    data.mkdir()
    with Outbox(data / STORE_FILE) as box:
        mids = [box.add(FP, b"hello", message_id=mid) for mid in ids]
        box.mark_queued(mids[1], b"envelope")
        box.mark_delivered(mids[2], "direct")
    return {"pending": mids[0], "queued": mids[1], "delivered": mids[2]}


def _listed(*args: str) -> list[str]:
    proc = run("outbox", "--all", "--json", *args)
    assert proc.returncode == 0, proc.stderr
    return [e["message_id"] for e in json.loads(proc.stdout)]


def test_remove_without_a_node_edits_the_database(tmp_path: Path) -> None:
    data = tmp_path / "a"
    mids = _outbox_with(data, bytes(16), b"\x01" + bytes(15), b"\x02" + bytes(15))
    where = ("--data-dir", str(data))

    proc = run("outbox", "remove", mids["pending"].hex()[:12], *where)
    assert proc.returncode == 0, proc.stderr
    shown = mids["pending"].hex()[:12]
    assert proc.stdout.startswith(f"removed {shown} (pending, to "), proc.stdout
    proc = run("outbox", *where, "--json", "remove", mids["queued"].hex())  # options before it
    assert proc.returncode == 0, proc.stderr
    removed = json.loads(proc.stdout)
    assert (removed["event"], removed["message_id"], removed["state"], removed["node"]) == (
        "removed", mids["queued"].hex(), "queued_dht", "none")
    assert _listed(*where) == [mids["delivered"].hex()]

    line = one_line_error(run("outbox", "remove", mids["delivered"].hex()[:8], *where), 1)
    assert f"message {mids['delivered'].hex()} is delivered" in line, line
    line = one_line_error(run("outbox", "remove", mids["pending"].hex(), *where), 1)
    assert f"no message {mids['pending'].hex()} in the outbox" in line, line
    line = one_line_error(run("outbox", "remove", "0x12", *where), 1)
    assert "a message id is 8 to 32 hex digits, not '0x12'" in line, line
    assert _listed(*where) == [mids["delivered"].hex()]  # the refusals changed nothing


def test_an_id_prefix_must_name_one_message(tmp_path: Path) -> None:
    data = tmp_path / "a"
    mids = _outbox_with(data, bytes(16), bytes(15) + b"\x01", b"\x02" + bytes(15))
    line = one_line_error(run("outbox", "remove", "00000000", "--data-dir", str(data)), 1)
    assert "more than one message id starts with 00000000" in line, line
    assert len(_listed("--data-dir", str(data))) == 3
    assert run("outbox", "remove", mids["pending"].hex(), "--data-dir",
               str(data)).returncode == 0


def test_remove_goes_through_the_running_node(tmp_path: Path) -> None:
    """With a ``run`` of the identity up, ``outbox remove`` asks it (the node's control
    counters show the request) and the message is gone from its outbox, which its worker
    reads before every send."""
    key = tmp_path / "a.json"
    fp = run("id", "new", "--out", str(key)).stdout.strip()
    data = tmp_path / "a"
    mids = _outbox_with(data, bytes(16), b"\x01" + bytes(15), b"\x02" + bytes(15))
    dht, port, _, _ = start_serve("--port", "0")
    node = subprocess.Popen(
        [*TIERLINK, "run", "--identity", str(key), "--data-dir", str(data), "--json",
         "--bootstrap", f"127.0.0.1:{port}", "--no-rate-limit", "--host-address", "127.0.0.1",
         "--timeout", "1"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert node.stdout is not None and '"online"' in node.stdout.readline()
        own = ("--identity", str(key))
        proc = run("outbox", "remove", mids["pending"].hex()[:12], "--json", *own)
        assert proc.returncode == 0, proc.stderr
        removed = json.loads(proc.stdout)
        assert (removed["message_id"], removed["node"]) == (mids["pending"].hex(), "running")
        line = one_line_error(run("outbox", "remove", mids["delivered"].hex(), *own), 1)
        assert "is delivered: only an undelivered message can be removed" in line, line
        assert mids["pending"].hex() not in _listed(*own)
        path = control.socket_path(Identity.load(key).fingerprint)
        stats = asyncio.run(control.request(path, control.StatsRequest()))
        assert stats["node"]["fingerprint"] == fp
        assert stats["control"]["requests"]["remove"] == 1
        assert stats["control"]["rejections"]["failed"] == 1
    finally:
        interrupt((node, dht))
    with Outbox(data / STORE_FILE) as box:
        assert box.get(mids["pending"]) is None  # and the stopped node did not bring it back
