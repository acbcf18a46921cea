"""Link profiles: networks as users think of them, and each WAN link's share of them.

A profile's figures are what two peers on it see end to end. A packet from one peer to the
other crosses two emulated WAN links (the sender's uplink, the receiver's downlink), so a round
trip crosses four link directions; each link direction gets:

* delay ``rtt / 4`` plus a jitter drawn per packet, uniform on ``[-jitter/2, +jitter/2]``: the
  one-way delay then lies within ``rtt/2 +- jitter`` (triangular), and the RTT has a standard
  deviation of ``jitter / sqrt(3)`` (four independent uniforms);
* a loss probability ``1 - sqrt(1 - loss)``, so a one-way trip loses ``loss`` of its packets;
* the profile's rate (TBF) in each direction, when it has one.

Delay and jitter come from :mod:`tierlink.lab.linkemu` (user space: no netem in this kernel),
loss from nftables ``numgen random`` rules, rate from TBF. Packets are not reordered unless a
profile says ``reorder``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass


@dataclass(frozen=True)
class LinkProfile:
    """End-to-end figures of a network between two peers (see the module doc)."""

    name: str
    rtt_ms: float
    jitter_ms: float
    loss: float  # one-way fraction, 0..1
    rate_mbit: float | None
    description: str
    reorder: bool = False

    @property
    def link_delay_ms(self) -> float:
        """Mean delay added by one link direction."""
        return self.rtt_ms / 4

    @property
    def link_jitter_ms(self) -> float:
        """Half-width of the uniform jitter of one link direction."""
        return self.jitter_ms / 2

    @property
    def link_loss(self) -> float:
        """Drop probability of one link direction (two of them make one one-way trip)."""
        return 1 - math.sqrt(1 - self.loss)

    @property
    def rtt_stdev_ms(self) -> float:
        """Expected standard deviation of the RTT (four uniform jitters)."""
        return self.jitter_ms / math.sqrt(3)

    @property
    def round_trip_loss(self) -> float:
        """Expected fraction of echo requests that get no reply."""
        return 1 - (1 - self.loss) ** 2


PROFILES: dict[str, LinkProfile] = {
    p.name: p
    for p in (
        LinkProfile("lan", 0.2, 0.0, 0.0, None, "same building: ~0.2 ms RTT"),
        LinkProfile("broadband", 20.0, 0.0, 0.001, 50.0,
                    "home broadband: 20 ms RTT, 0.1 % loss, 50 Mbit/s"),
        LinkProfile("mobile", 80.0, 20.0, 0.01, 10.0,
                    "mobile data: 80 ms RTT, +-20 ms jitter, 1 % loss, 10 Mbit/s"),
        LinkProfile("intercontinental", 250.0, 0.0, 0.0, None,
                    "peers on two continents: 250 ms RTT"),
        LinkProfile("satellite", 600.0, 0.0, 0.005, 20.0,
                    "geostationary satellite: 600 ms RTT, 0.5 % loss, 20 Mbit/s"),
        LinkProfile("lossy", 30.0, 0.0, 0.05, None, "bad Wi-Fi: 30 ms RTT, 5 % loss"),
    )
}


def loss_threshold(probability: float, scale: int = 1_000_000) -> int:
    """``numgen random mod scale < N`` drops ``probability`` of the packets: N."""
    return round(probability * scale)
