"""The datagram search's receiver CPU figure, on scripted workers (no sockets, no speed)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from typing import Any, cast

from tierlink.bench.base import JsonDict
from tierlink.bench.datagram_trials import DATAGRAM_HEADER, DatagramCounter
from tierlink.bench.harness import Pair, Plan
from tierlink.bench.measure import CPU_FIGURE_MIN_DATAGRAMS, measure_datagrams


class ScriptedReceiver:
    """A callee whose receiver keeps up to ``ceiling``/s and spends ``cost_us`` per datagram."""

    def __init__(self, ceiling: float, cost_us: Callable[[float], float]) -> None:
        self.ceiling = ceiling
        self.cost_us = cost_us
        self.sent: dict[int, tuple[float, int]] = {}

    async def dialer_call(self, cmd: str, timeout: float, **p: Any) -> JsonDict:
        assert cmd == "dg_send"
        self.sent[int(p["trial"])] = (float(p["rate"]), int(p["count"]))
        return {"t0": 0.0, "t_end": p["count"] / p["rate"], "sent": p["count"]}

    async def callee_call(self, cmd: str, timeout: float, **p: Any) -> JsonDict:
        if cmd == "dg_listen":
            return {}
        rate, count = self.sent[int(p["trial"])]
        received = count if rate <= self.ceiling else int(count * self.ceiling / rate)
        return {"received": received, "t_last": count / rate, "queue_drops": None,
                "cpu_s": received * self.cost_us(rate) / 1e6}


class _Side:
    def __init__(self, call: Callable[..., Any]) -> None:
        self.call = call


def _pair(receiver: ScriptedReceiver) -> Pair:
    fake = type("FakePair", (), {})()
    fake.dialer = _Side(receiver.dialer_call)
    fake.callee = _Side(receiver.callee_call)
    return cast(Pair, fake)


def test_the_cpu_figure_is_the_least_per_datagram_cost_of_trials_large_enough() -> None:
    # a receiver that sleeps between datagrams at low rates pays more per datagram; the
    # smallest trials (fewer than CPU_FIGURE_MIN_DATAGRAMS) would say 99 us and are left out
    def cost(rate: float) -> float:
        return 99.0 if rate * 0.25 < CPU_FIGURE_MIN_DATAGRAMS else 30.0 - rate / 10_000

    receiver = ScriptedReceiver(ceiling=50_000, cost_us=cost)
    plan = Plan(dg_trial_s=0.25, dg_bisect_steps=1, dg_attempts=1)
    result = asyncio.run(measure_datagrams(_pair(receiver), plan, sink="native",
                                           prefix="datagram_native"))
    trials = result["datagram_native_trials"]
    assert [t["rate"] for t in trials][:6] == [2000, 4000, 8000, 16000, 32000, 64000]
    assert trials[0]["receiver_cpu_us_per_msg"] == 99.0
    # the fastest trial (64k, overloaded: 50k of it received) costs least
    assert result["datagram_native_receiver_cpu_us"] == round(30.0 - 6.4, 2)
    assert result["datagram_native_msgs_per_s"] <= 50_000


def test_no_cpu_figure_when_every_trial_is_small() -> None:
    receiver = ScriptedReceiver(ceiling=3_000, cost_us=lambda rate: 10.0)
    plan = Plan(dg_trial_s=0.25, dg_bisect_steps=1, dg_attempts=1)
    result = asyncio.run(measure_datagrams(_pair(receiver), plan))
    assert "datagram_receiver_cpu_us" not in result
    assert all(t["receiver_cpu_us_per_msg"] == 10.0 for t in result["datagram_trials"])


def test_the_counter_reports_cpu_from_the_first_arrival_of_its_trial() -> None:
    counter = DatagramCounter()

    class Conn:
        def start_native_datagram_sink(self, handler: Callable[[bytes], None]) -> Any:
            self.handler = handler
            return lambda: None

        def receive_queue_drops(self) -> None:
            return None

    async def run() -> tuple[JsonDict, JsonDict]:
        conn = Conn()
        counter.listen(conn, "native")  # type: ignore[arg-type]
        for seq in range(100):
            conn.handler(DATAGRAM_HEADER.pack(7, seq) + bytes(8))
        sum(range(200_000))  # some CPU after the first arrival
        seen = await counter.collect(conn, 7, 0.01)  # type: ignore[arg-type]
        unseen = await counter.collect(conn, 8, 0.01)  # type: ignore[arg-type]
        return seen, unseen

    seen, unseen = asyncio.run(run())
    assert seen["received"] == 100 and seen["cpu_s"] > 0
    assert unseen["received"] == 0 and unseen["cpu_s"] is None
