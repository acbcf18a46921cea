"""The lab internet's services: coturn (STUN + TURN over UDP, TCP and TLS), an OpenDHT node
with its REST proxy (also on TCP 80, for LANs that only let TCP 80/443 out), and the UDP probe
server. Each runs in the internet namespace as a child of the lab run.

TLS: :func:`make_lab_ca` creates a CA for the run (in its workdir) and a server certificate
for the TURN address signed by it; clients trust ``<workdir>/lab-ca.pem`` only.
"""

from __future__ import annotations

import datetime
import ipaddress
import json
import subprocess
import time
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from tierlink.dht.launcher import DhtNodeCommand, wait_started
from tierlink.errors import DhtError
from tierlink.lab.netns import LabError, Run, ns_cmd, python_argv, run

TURN_USER = "lab"
TURN_PASSWORD = "labpass"
TURN_REALM = "lab.test"
TURN_PORT = 3478
TURN_TLS_PORT = 443
DHT_PORT = 4222
DHT_PROXY_PORT = 8080
#: The DHT proxy's second door: TCP 80 on the same address (nftables redirect to 8080).
DHT_PROXY_WEB_PORT = 80
CA_FILE = "lab-ca.pem"
PROBE_PORTS = (40001, 40002)


def make_lab_ca(workdir: Path, server_ip: str) -> tuple[Path, Path, Path]:
    """A CA for this run and a certificate for ``server_ip`` signed by it (P-256, one day).

    Returns (CA certificate, server certificate, server key) paths in ``workdir``.
    """
    now = datetime.datetime.now(datetime.UTC)
    ca_key = ec.generate_private_key(ec.SECP256R1())
    ca_name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "tierlink lab CA")])
    ca = (x509.CertificateBuilder().subject_name(ca_name).issuer_name(ca_name)
          .public_key(ca_key.public_key()).serial_number(x509.random_serial_number())
          .not_valid_before(now - datetime.timedelta(minutes=5))
          .not_valid_after(now + datetime.timedelta(days=1))
          .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
          .sign(ca_key, hashes.SHA256()))
    key = ec.generate_private_key(ec.SECP256R1())
    cert = (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, server_ip)]))
            .issuer_name(ca_name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - datetime.timedelta(minutes=5))
            .not_valid_after(now + datetime.timedelta(days=1))
            .add_extension(x509.SubjectAlternativeName(
                [x509.IPAddress(ipaddress.ip_address(server_ip))]), critical=False)
            .sign(ca_key, hashes.SHA256()))
    paths = (workdir / CA_FILE, workdir / "turn-cert.pem", workdir / "turn-key.pem")
    paths[0].write_bytes(ca.public_bytes(serialization.Encoding.PEM))
    paths[1].write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    paths[2].write_bytes(key.private_bytes(serialization.Encoding.PEM,
                                           serialization.PrivateFormat.PKCS8,
                                           serialization.NoEncryption()))
    paths[2].chmod(0o600)
    return paths


def coturn_config(workdir: Path, listen_ip: str, listen_ip6: str | None = None) -> str:
    """coturn 4.6 configuration: lab address only, static user, UDP and TCP on 3478, TLS on
    443 (certificate from :func:`make_lab_ca`), no DTLS, no CLI.

    ``denied-peer-ip`` covers the LAN ranges and the CGN inside (shared address space):
    without it coturn closes a client's whole allocation when relaying to an unroutable LAN
    host candidate fails. ``listen_ip6``: also listen and relay on this IPv6 address.
    """
    v6 = [f"listening-ip={listen_ip6}", f"relay-ip={listen_ip6}"] if listen_ip6 else []
    return "\n".join([
        f"listening-ip={listen_ip}",
        f"relay-ip={listen_ip}",
        *v6,
        f"listening-port={TURN_PORT}",
        f"tls-listening-port={TURN_TLS_PORT}",
        f"cert={workdir / 'turn-cert.pem'}",
        f"pkey={workdir / 'turn-key.pem'}",
        "min-port=49152",
        "max-port=49999",
        "lt-cred-mech",
        f"user={TURN_USER}:{TURN_PASSWORD}",
        f"realm={TURN_REALM}",
        "fingerprint",
        "no-dtls",
        "no-cli",
        "no-multicast-peers",
        "denied-peer-ip=198.18.0.0-198.19.255.255",
        "denied-peer-ip=100.64.0.0-100.127.255.255",
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


def start_coturn(
    lab: Run, ns: str, listen_ip: str, listen_ip6: str | None = None
) -> subprocess.Popen[str]:
    """Start coturn in the foreground (so we own its pid) and wait for its UDP, TCP and TLS
    ports (and UDP on ``listen_ip6``, if given)."""
    make_lab_ca(lab.workdir, listen_ip)
    conf = lab.workdir / "turnserver.conf"
    conf.write_text(coturn_config(lab.workdir, listen_ip, listen_ip6))
    log = (lab.workdir / "turnserver.out").open("w")
    proc = lab.spawn(ns, ["turnserver", "-c", str(conf)], stdout=log, stderr=subprocess.STDOUT)
    log.close()
    wait_listening(ns, "udp", f"{listen_ip}:{TURN_PORT}", proc)
    wait_listening(ns, "tcp", f"{listen_ip}:{TURN_PORT}", proc)
    wait_listening(ns, "tcp", f"{listen_ip}:{TURN_TLS_PORT}", proc)
    if listen_ip6:
        wait_listening(ns, "udp", f"[{listen_ip6}]:{TURN_PORT}", proc)
    return proc


def web_door_rules(listen_ip: str) -> str:
    """TCP 80 on ``listen_ip`` redirected to the DHT proxy's port (internet namespace)."""
    return f"""
table ip web {{
    chain pre {{
        type nat hook prerouting priority dstnat;
        ip daddr {listen_ip} tcp dport {DHT_PROXY_WEB_PORT} redirect to :{DHT_PROXY_PORT}
    }}
}}
"""


def start_dhtnode(
    lab: Run, ns: str, listen_ip: str, *, web_door: bool = True
) -> subprocess.Popen[str]:
    """Start a lone OpenDHT node (no rate limit) with its REST proxy, through the launcher's
    command line, and wait until the proxy listens; ``web_door``: also redirect TCP 80 to the
    proxy (once per lab)."""
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
    if web_door:
        lab.nft(ns, web_door_rules(listen_ip))
    return proc


def start_probe_server(lab: Run, ns: str, ips: tuple[str, ...]) -> subprocess.Popen[str]:
    """Start the UDP probe server on every internet address (IPv4 and IPv6) x both probe
    ports."""
    binds = [f"[{ip}]:{port}" if ":" in ip else f"{ip}:{port}" for ip in ips
             for port in PROBE_PORTS]
    args = python_argv("tierlink.lab.probe", "server")
    for b in binds:
        args += ["--bind", b]
    proc = lab.spawn(ns, args)
    assert proc.stdout is not None
    line = proc.stdout.readline()
    if not line or "ready" not in json.loads(line):
        raise LabError(f"probe server did not start: {proc.stderr.read() if proc.stderr else ''}")
    return proc
