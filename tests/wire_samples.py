"""Sample values the wire-format tests share: candidates of every type, in lab address ranges."""

from __future__ import annotations

from tierlink.wire.records import CandidateInfo

#: host, server-reflexive, relay and a second host candidate.
CANDIDATES = (
    CandidateInfo("1a2b", 1, "udp", 2130706431, "198.18.1.2", 40000, "host"),
    CandidateInfo("3c4d", 1, "udp", 1694498815, "203.0.113.10", 50000, "srflx", "198.18.1.2", 4),
    CandidateInfo("5e6f", 1, "udp", 16777215, "198.51.100.7", 3478, "relay", "203.0.113.10", 5),
    CandidateInfo("7a8b", 1, "udp", 2130706175, "198.18.2.9", 40001, "host"),
)
