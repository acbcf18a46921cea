"""What a new user trips on with nodes running: a mailbox and a node of one identity, Ctrl-C
in ``send``, a running node that stops under a request, the README's Python examples."""

from __future__ import annotations

import asyncio
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
from pathlib import Path

from tests.cli_runs import TIERLINK, interrupt, one_line_error, run, start_serve
from tests.test_cli_user_trial import FP
from tests.waiting import eventually


def test_a_mailbox_claims_its_identity_like_run(tmp_path: Path) -> None:
    """``mailbox serve`` is a node of its identity: a second ``mailbox serve`` or a ``run``
    of it is refused (two nodes would share one database and publish over each other), and
    ``lookup`` of that identity goes through the serving node instead of starting another."""

    key = tmp_path / "m.json"
    fp = run("id", "new", "--out", str(key)).stdout.strip()
    dht, port, _, _ = start_serve("--port", "0")
    node = ["--identity", str(key), "--data-dir", str(tmp_path / "m"), "--bootstrap",
            f"127.0.0.1:{port}", "--no-rate-limit", "--host-address", "127.0.0.1"]
    serve = subprocess.Popen([*TIERLINK, "mailbox", "serve", *node, "--json"],
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert serve.stdout is not None
        online = serve.stdout.readline()
        assert f'"fingerprint": "{fp}"' in online, serve.stderr.read() if serve.stderr else ""
        for argv in (("mailbox", "serve", *node), ("run", *node)):
            line = one_line_error(run(*argv, timeout=30), 1)
            assert "a node of this identity already runs" in line, line
        look = run("lookup", fp, "--json", *node, timeout=30)
        assert look.returncode == 0 and "no running node" not in look.stderr, look.stderr
        assert f'"fingerprint": "{fp}"' in look.stdout
    finally:
        interrupt((serve, dht))


async def test_ctrl_c_in_send_says_where_the_message_is(tmp_path: Path) -> None:
    """Ctrl-C while ``send`` waits for a live path: exit 130, one line telling the user the
    stored message stays in the outbox (no traceback), and it does."""

    key = tmp_path / "a.json"
    assert run("id", "new", "--out", str(key)).returncode == 0
    data = tmp_path / "a"
    dht, port, _, _ = start_serve("--port", "0")
    try:
        send = subprocess.Popen(
            [*TIERLINK, "send", FP, "wait for me", "--identity", str(key), "--data-dir",
             str(data), "--bootstrap", f"127.0.0.1:{port}", "--no-rate-limit",
             "--host-address", "127.0.0.1", "--timeout", "60"],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)

        def pending() -> list[str]:
            if not (data / "tierlink.db").exists():
                return []
            box = run("outbox", "--data-dir", str(data), "--json")
            return [e["state"] for e in json.loads(box.stdout)] if box.returncode == 0 else []

        async def stored() -> bool:
            return bool(await asyncio.to_thread(pending))

        await eventually(stored, 30, "message stored")
        send.send_signal(signal.SIGINT)
        _, err = send.communicate(timeout=30)
        assert send.returncode == 130 and "Traceback" not in err, err
        last = err.strip().splitlines()[-1]
        assert last.startswith("interrupted; a message stored before that stays in the outbox")
        assert pending() == ["pending"]
    finally:
        dht.send_signal(signal.SIGINT)
        dht.wait(15)


async def record_found(fp: str, *node: str) -> None:
    """Wait until ``fp``'s record can be looked up (a node just started may not be found at
    once: its record is still on its way through the DHT)."""
    async def found() -> bool:
        return (await asyncio.to_thread(run, "lookup", fp, *node)).returncode == 0

    await eventually(found, 60, f"the record of {fp[:16]}… in the DHT")


async def test_unregistering_from_a_node_that_is_no_mailbox_says_so(tmp_path: Path) -> None:
    """``mailbox unregister FP`` where FP is an ordinary ``tierlink run``: one line asking
    whether it is a mailbox, not a bare "the peer closed the channel"."""

    keys = {name: tmp_path / f"{name}.json" for name in ("x", "b")}
    fps = {name: run("id", "new", "--out", str(k)).stdout.strip() for name, k in keys.items()}
    dht, port, _, _ = start_serve("--port", "0")
    common = ["--bootstrap", f"127.0.0.1:{port}", "--no-rate-limit", "--host-address",
              "127.0.0.1"]
    x = subprocess.Popen([*TIERLINK, "run", "--identity", str(keys["x"]), "--data-dir",
                          str(tmp_path / "x"), "--json", *common],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert x.stdout is not None and '"online"' in x.stdout.readline()
        await record_found(fps["x"], "--identity", str(keys["b"]), "--data-dir",
                           str(tmp_path / "b"), *common)
        proc = run("mailbox", "unregister", fps["x"], "--identity", str(keys["b"]),
                   "--data-dir", str(tmp_path / "b"), "--timeout", "10", *common)
        line = one_line_error(proc, 1)
        assert f"{fps['x'][:16]}… did not take the unregistration" in line, line
        assert "is it a mailbox?" in line
    finally:
        interrupt((x, dht))


def _readme_python_examples() -> list[str]:
    readme = (Path(__file__).resolve().parent.parent / "README.md").read_text()
    section = readme[readme.index("## Python API"):readme.index("## How it works")]
    return re.findall(r"```python\n(.*?)```", section, re.S)


async def test_the_readme_python_examples_run_as_written(tmp_path: Path) -> None:
    """Both README examples, against a ``tierlink run`` on a local DHT (its port in place of
    4222): every message they send reaches the peer, the async one reports the delivery."""

    examples = _readme_python_examples()
    assert len(examples) == 2
    b_fp = run("id", "new", "--out", str(tmp_path / "b.json")).stdout.strip()
    assert run("id", "new", "--out", str(tmp_path / "a.json")).returncode == 0
    dht, port, _, _ = start_serve("--port", "0")
    b = subprocess.Popen([*TIERLINK, "run", "--identity", str(tmp_path / "b.json"), "--json",
                          "--data-dir", str(tmp_path / "b"), "--bootstrap", f"127.0.0.1:{port}",
                          "--no-rate-limit", "--host-address", "127.0.0.1"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    procs = [b, dht]
    try:
        assert b.stdout is not None and '"online"' in b.stdout.readline()
        await record_found(b_fp, "--identity", str(tmp_path / "a.json"), "--data-dir",
                           str(tmp_path / "look"), "--bootstrap", f"127.0.0.1:{port}",
                           "--no-rate-limit", "--host-address", "127.0.0.1")
        env = dict(os.environ, XDG_DATA_HOME=str(tmp_path / "data"))  # the examples' outbox
        scripts = []
        for i, code in enumerate(examples):
            assert code.count('("127.0.0.1", 4222)') == 1, code
            script = tmp_path / f"example{i}.py"
            script.write_text(code.replace('("127.0.0.1", 4222)', f'("127.0.0.1", {port})'))
            scripts.append(script)
        a = subprocess.Popen([sys.executable, str(scripts[0]), b_fp], cwd=tmp_path, env=env,
                             stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        procs.insert(0, a)
        assert a.stdout is not None
        lines = [await asyncio.wait_for(asyncio.to_thread(a.stdout.readline), 60)
                 for _ in range(2)]
        assert "'local'" in lines[0] and lines[1] == "delivered via direct\n", lines
        a.send_signal(signal.SIGINT)  # it waits for incoming messages until Ctrl-C
        a.communicate(timeout=30)
        blocking = subprocess.run([sys.executable, str(scripts[1]), b_fp], cwd=tmp_path,
                                  env=env, capture_output=True, text=True, timeout=60)
        assert blocking.returncode == 0, blocking.stderr
    finally:
        for proc in procs:
            if proc.poll() is None:
                proc.send_signal(signal.SIGINT)
        out, _ = b.communicate(timeout=30)
        for proc in procs:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
    texts = [json.loads(line)["text"] for line in out.splitlines()
             if json.loads(line).get("event") == "message"]
    assert texts == ["hello", "one", "two", "three", "see you", "hello"], texts


def test_a_send_without_any_dht_to_join_is_warned_about(tmp_path: Path) -> None:
    """Forgetting ``--bootstrap``: the own node's DHT is a network of one, and the user is
    told so up front instead of only seeing the message stay pending."""
    key = tmp_path / "a.json"
    assert run("id", "new", "--out", str(key)).returncode == 0
    proc = run("send", FP, "hi", "--identity", str(key), "--data-dir", str(tmp_path / "a"),
               "--host-address", "127.0.0.1", "--timeout", "0", "--wait", "0")
    assert proc.returncode == 1 and "Traceback" not in proc.stderr, proc.stderr
    assert "warning: no --bootstrap or --dht-proxy" in proc.stderr, proc.stderr
    assert "is pending: kept in the outbox" in proc.stdout  # the message is kept


def test_a_running_node_that_stops_under_a_send_points_at_the_outbox(tmp_path: Path) -> None:
    """The running node takes the request, stores the message and stops before answering
    (Ctrl-C in its terminal): ``send`` says the message stays in the outbox instead of only
    that the node closed."""
    from tierlink import control

    key = tmp_path / "a.json"
    fp = run("id", "new", "--out", str(key)).stdout.strip()
    runtime = Path(tempfile.mkdtemp(prefix="tl-", dir="/tmp"))  # a socket path <= 107 bytes
    env = dict(os.environ, XDG_RUNTIME_DIR=str(runtime))
    try:
        path = control.socket_path(fp, runtime / "tierlink")
        control.make_private_dir(path.parent)
        with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as server:
            server.bind(str(path))
            server.listen(1)
            node = threading.Thread(target=_read_one_request_and_hang_up, args=(server,))
            node.start()
            proc = run("send", FP, "hi", "--identity", str(key), env=env, timeout=30)
            node.join(10)
        line = one_line_error(proc, 1)
        assert line.startswith("tierlink: the node on ") and line.endswith(
            "; a message it stored stays in the outbox and goes out with the next 'tierlink "
            "run' or 'tierlink send' of this identity ('tierlink outbox' lists it)"), line
    finally:
        shutil.rmtree(runtime)


def _read_one_request_and_hang_up(server: socket.socket) -> None:
    conn, _ = server.accept()
    with conn:
        data = b""
        while not data.endswith(b"\n"):
            chunk = conn.recv(65536)
            if not chunk:
                break
            data += chunk


async def test_run_whose_output_goes_away_stops_and_shows_what_it_took(tmp_path: Path) -> None:
    """``tierlink run | head -1``: once nobody reads its output, a message it took (and so
    acknowledged) is shown on stderr, not dropped, and the node stops (exit 1) instead of
    taking messages nobody sees."""
    keys = {name: tmp_path / f"{name}.json" for name in ("a", "b")}
    fps = {name: run("id", "new", "--out", str(k)).stdout.strip() for name, k in keys.items()}
    dht, port, _, _ = start_serve("--port", "0")
    common = ["--bootstrap", f"127.0.0.1:{port}", "--no-rate-limit", "--host-address",
              "127.0.0.1"]
    b = subprocess.Popen([*TIERLINK, "run", "--identity", str(keys["b"]), "--data-dir",
                          str(tmp_path / "b"), *common],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert b.stdout is not None and b.stdout.readline().startswith("online as")
        assert b.stdout.readline().startswith("(embedded DHT")
        assert b.stdout.readline().startswith("(send, outbox and lookup")
        b.stdout.close()  # the reader goes away, as `head` does
        a_node = ["--identity", str(keys["a"]), "--data-dir", str(tmp_path / "a"), *common]

        await record_found(fps["b"], *a_node)
        sent = await asyncio.to_thread(run, "send", fps["b"], "nobody reads this", *a_node)
        assert sent.returncode == 0, sent.stderr  # delivered live, or queued for B to fetch
        assert await asyncio.to_thread(b.wait, 60) == 1
        assert b.stderr is not None
        err = b.stderr.read()
        assert "Traceback" not in err and "Exception ignored" not in err, err
        assert re.search(r"^tierlink: standard output failed \(Broken pipe\) printing: "
                         rf"{fps['a'][:16]}… \[\w+\]: nobody reads this$", err, re.M), err
        assert err.strip().endswith("messages not yet taken stay with their senders"), err
    finally:
        interrupt((b, dht))
