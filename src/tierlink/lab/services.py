"""The lab internet's services: coturn (STUN + TURN), an OpenDHT node with its REST proxy, and
the UDP probe server. Each runs in the internet namespace as a child of the lab run."""

from __future__ import annotations

import json
import subprocess
import time
from pathlib import Path

from tierlink.dht.launcher import DhtNodeCommand, wait_started
from tierlink.errors import DhtError
from tierlink.lab.netns import LabError, Run, ns_cmd, python_argv, run

TURN_USER = "lab"
TURN_PASSWORD = "labpass"
TURN_REALM = "lab.test"
TURN_PORT = 3478
DHT_PORT = 4222
DHT_PROXY_PORT = 8080
PROBE_PORTS = (40001, 40002)


def coturn_config(workdir: Path, listen_ip: str) -> str:
    """coturn 4.6 configuration: lab address only, static user, no TLS/DTLS/CLI.

    ``denied-peer-ip`` covers the LAN range: without it coturn closes a client's whole
    allocation when relaying to an unroutable LAN host candidate fails.
    """
    return "\n".join([
        f"listening-ip={listen_ip}",
        f"relay-ip={listen_ip}",
        f"listening-port={TURN_PORT}",
        "min-port=49152",
        "max-port=49999",
        "lt-cred-mech",
        f"user={TURN_USER}:{TURN_PASSWORD}",
        f"realm={TURN_REALM}",
        "fingerprint",
        "no-tls",
        "no-dtls",
        "no-cli",
        "no-multicast-peers",
        "denied-peer-ip=198.18.0.0-198.19.255.255",
        f"pidfile={workdir / 'turnserver.pid'}",
        f"userdb={workdir / 'turndb'}",
        f"log-file={workdir / 'turnserver.log'}",
        "simple-log",
        "",
    ])


def _listening(ns: str, proto: str, address: str) -> bool:
    out = run(ns_cmd(ns, "ss", "-H", "-ln", "-" + proto[0]), check=False)
    return any(address in line for line in out.splitlines())


def wait_listening(
    ns: str, proto: str, address: str, proc: subprocess.Popen[str], timeout: float = 10.0
) -> None:
    """Wait until ``address`` (``ip:port``) is bound in ``ns``; LabError if ``proc`` died."""
    end = time.monotonic() + timeout
    while time.monotonic() < end:
        if proc.poll() is not None:
            raise LabError(f"{proc.args!r} exited with {proc.returncode} before listening")
        if _listening(ns, proto, address):
            return
        time.sleep(0.1)
    raise LabError(f"nothing listening on {proto} {address} in {ns} after {timeout} s")


def start_coturn(lab: Run, ns: str, listen_ip: str) -> subprocess.Popen[str]:
    """Start coturn in the foreground (so we own its pid) and wait for its UDP port."""
    conf = lab.workdir / "turnserver.conf"
    conf.write_text(coturn_config(lab.workdir, listen_ip))
    log = (lab.workdir / "turnserver.out").open("w")
    proc = lab.spawn(ns, ["turnserver", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_listening(ns, "udp", f"{listen_ip}:{TURN_PORT}", proc)
    return proc


def start_dhtnode(lab: Run, ns: str, listen_ip: str) -> subprocess.Popen[str]:
    """Start a lone OpenDHT node (no rate limit) with its REST proxy, through the launcher's
    command line, and wait until the proxy listens."""
    command = DhtNodeCommand(port=DHT_PORT, proxy_port=DHT_PROXY_PORT, proxy_host=listen_ip,
                             no_rate_limit=True)
    try:
        argv = command.argv()
    except DhtError as exc:
        raise LabError(str(exc)) from None
    log = (lab.workdir / "dhtnode.out").open("w")
    proc = lab.spawn(ns, argv, stdout=log, stderr=subprocess.STDOUT)
    log.close()
    try:
        wait_started(proc, DHT_PROXY_PORT)
    except DhtError as exc:
        raise LabError(f"the lab's dhtnode in {ns}: {exc}") from None
    return proc


def start_probe_server(lab: Run, ns: str, ips: tuple[str, str]) -> subprocess.Popen[str]:
    """Start the UDP probe server on both internet addresses x both probe ports."""
    binds = [f"{ip}:{port}" for ip in ips for port in PROBE_PORTS]
    args = python_argv("tierlink.lab.probe", "server")
    for b in binds:
        args += ["--bind", b]
    proc = lab.spawn(ns, args)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line or "ready" not in json.loads(line):
        raise LabError(f"probe server did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc
