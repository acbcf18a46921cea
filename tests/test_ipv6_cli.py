"""Every command-line option that reads an address takes IPv6: ``[v6]:port`` for the
host:port ones (DHT bootstrap, STUN, TURN), a bare or bracketed literal for
``--host-address``, all through the one parser (:mod:`tierlink.hostport`)."""

from __future__ import annotations

import pytest

from tierlink.cli.dispatch import build_parser
from tierlink.cli.node_options import node_config
from tierlink.identity import Identity


def test_node_options_take_bracketed_ipv6_everywhere() -> None:
    args = build_parser().parse_args([
        "run", "--bootstrap", "[2001:db8::10]:4222", "--bootstrap", "[2001:db8::11]",
        "--stun", "stun:[2001:db8::1]:3478", "--stun", "[2001:db8::2]",
        "--turn", "turn:[2001:db8::1]?transport=udp", "--turn", "turns:[2001:db8::1]:443",
        "--turn-user", "u", "--host-address", "[2001:DB8:1::2]", "--host-address", "2001:db8:1::3",
        "--host-address", "198.18.1.2",
    ])
    args.turn_password = "p"
    config = node_config(args, Identity.generate())
    assert config.bootstrap == [("2001:db8::10", 4222), ("2001:db8::11", 4222)]
    assert config.stun_servers == [("2001:db8::1", 3478), ("2001:db8::2", 3478)]
    assert [(t.host, t.port, t.transport) for t in config.turn_servers] == [
        ("2001:db8::1", 3478, "udp"), ("2001:db8::1", 443, "tls")]
    assert [t.url for t in config.turn_servers] == ["turn:[2001:db8::1]:3478?transport=udp",
                                                    "turns:[2001:db8::1]:443"]
    assert config.host_addresses == ["2001:db8:1::2", "2001:db8:1::3", "198.18.1.2"]


def test_dht_serve_bootstrap_takes_bracketed_ipv6() -> None:
    args = build_parser().parse_args(["dht", "serve", "--bootstrap", "[::1]:4300"])
    assert args.bootstrap == [("::1", 4300)]


@pytest.mark.parametrize("argv", [
    ["run", "--host-address", "fe80::1"],           # link-local: no peer elsewhere reaches it
    ["run", "--host-address", "[2001:db8::1]:80"],  # an address, not an endpoint
    ["run", "--stun", "2001:db8::1:3478"],          # ambiguous without brackets
    ["run", "--bootstrap", "2001:db8::1:4222"],
    ["run", "--turn", "turn:2001:db8::1:3478"],
])
def test_ambiguous_or_unusable_ipv6_is_a_usage_error(
    argv: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        build_parser().parse_args(argv)
    assert exit_info.value.code == 2
    assert "error:" in capsys.readouterr().err
