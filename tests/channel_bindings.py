"""A fixed channel binding for tests that open channels without a dial (both sides agree)."""

from __future__ import annotations

from tierlink.wire.channel_frames import ChannelBinding

#: What a dial would derive from its offer secret; any fixed value serves two test peers.
BINDING = ChannelBinding(bytes(range(32)), bytes(range(16)), b"\xaa" * 64, b"\xbb" * 64)
