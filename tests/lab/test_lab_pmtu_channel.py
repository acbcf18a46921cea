"""The secure channel across the ``pmtu-blackhole`` preset (a WAN hop of MTU 1280 whose ICMP
"fragmentation needed" is dropped): path MTU probing must settle on packets that fit the hop,
and 4000-byte messages (several full packets each) must all arrive, through a Connection and
through ``node.send``."""

from __future__ import annotations

import json

import pytest

from tierlink.lab.faultrun import PMTU_SETTINGS, pmtu_channel_check
from tierlink.lab.topology import Lab
from tierlink.lab.worlds import BLACK_HOLE_MTU
from tierlink.protocol.pmtu import DEFAULT_SIZES
from tierlink.transport.quic_setup import MAX_DATAGRAM_SIZE

pytestmark = pytest.mark.lab

IP_UDP_HEADERS = 28  # IPv4 (20) + UDP (8)
#: The largest packet size probing can pick that crosses the 1280 hop (the ladder's sizes
#: above the base size; none of them fits, so the base size).
FITS = max(s for s in (*DEFAULT_SIZES, MAX_DATAGRAM_SIZE)
           if s <= BLACK_HOLE_MTU - IP_UDP_HEADERS)


@pytest.mark.parametrize("api", ["connection", "send"])
def test_channel_settles_below_the_black_hole(api: str) -> None:
    with Lab(dht=True, turn=True) as lab:  # coturn is also the STUN server
        row = pmtu_channel_check(lab, api)
    summary = json.dumps(row)
    assert row["error"] is None, summary
    assert row["sent"] == PMTU_SETTINGS.count, summary
    assert row["lost"] == 0 and row["duplicates"] == 0, summary
    assert row["delivered"] == PMTU_SETTINGS.count, summary
    assert row["path_after"] in ("host", "srflx", "prflx"), summary  # direct: probed
    assert row["max_packet_size"] == FITS, summary
