"""A short fuzz run of every parser of untrusted bytes, and the attacks the fuzzer found.

The run uses the harness of ``make fuzz`` (fuzz/) with its seeded random engine: 1000
inputs per parser, the first one the valid encoding, most mutated and re-signed by an
attacker's key. Only TierlinkError may escape a parser. The CPU bound per input is the
fuzzer's own check (``make fuzz``), not asserted here.
"""

from __future__ import annotations

import json
import os
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from aiohttp import web

from fuzz.harness import Stats, run_one, run_random
from fuzz.targets import TARGETS, Target
from tests.test_hostile_dht import serve
from tierlink.dht import DhtClient
from tierlink.errors import DhtError, KeyFileError
from tierlink.identity import Identity

SHORT_RUNS = 1000


@pytest.mark.parametrize("name", list(TARGETS))
def test_a_short_fuzz_run_raises_nothing_but_tierlink_errors(name: str) -> None:
    stats = run_random(TARGETS[name], SHORT_RUNS, seed=1)
    assert stats.inputs == SHORT_RUNS
    crashes = [f for f in stats.findings.values() if f.kind != "slow"]
    assert not crashes, "\n".join(
        f"{f.kind} at {f.where}: {f.detail}\n  input: {f.parser_input[:400]}" for f in crashes
    )
    assert stats.outcomes["ok"] > 1, f"no mutated input was accepted: {stats.outcomes}"
    assert stats.build_failures < SHORT_RUNS // 10, stats.build_failures


def test_the_harness_reports_an_exception_that_is_not_a_tierlink_error() -> None:
    def parse(data: bytes) -> None:
        if data[:1] == b"\x07":
            raise KeyError("a bug")

    stats = Stats("bug")
    target = Target("bug", lambda draw: draw.raw(4), parse)
    run_one(target, b"\x01", stats)
    run_one(target, b"\x07abc", stats)
    assert stats.inputs == 2 and stats.outcomes == {"ok": 1, "FINDING": 1}
    [finding] = stats.findings.values()
    assert finding.kind == "KeyError" and finding.fuzz_input == b"\x07abc"


# -- regression tests of findings ---------------------------------------------------------
def key_file(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "identity.json"
    path.write_text(text)
    os.chmod(path, 0o600)
    return path


def test_a_key_file_with_an_integer_of_5000_digits_is_a_key_file_error(tmp_path: Path) -> None:
    good = Identity.generate()
    assert Identity.load(key_file(tmp_path, good.to_json())).fingerprint == good.fingerprint
    doc = json.loads(good.to_json())
    hostile = json.dumps(doc).replace('"version": 1', '"version": ' + "1" * 5000)
    with pytest.raises(KeyFileError, match="not a readable identity file"):
        Identity.load(key_file(tmp_path, hostile))


#: Parses with json's default recursion limit only by raising RecursionError.
NESTED_ANSWER = b'{"err": ' + b"[" * 100_000 + b"]" * 100_000 + b"}"


@pytest.fixture
async def answering_proxy() -> AsyncIterator[str]:
    """A proxy that answers a put with the body named by the key's first character."""
    bodies = {"a": b'{"ok": true}', "b": NESTED_ANSWER, "c": b"1" * 5000}

    async def put(request: web.Request) -> web.Response:
        return web.Response(body=bodies[request.match_info["key"][0]])

    app = web.Application()
    app.router.add_post("/key/{key}", put)
    async for url in serve(app):
        yield url


async def test_a_proxy_answering_a_put_with_hostile_json_is_a_dht_error(
    answering_proxy: str,
) -> None:
    async with DhtClient(answering_proxy) as client:
        await client.put("a" * 40, b"value")  # a good answer
        for key in ("b" * 40, "c" * 40):
            with pytest.raises(DhtError, match="unreadable answer to a put"):
                await client.put(key, b"value")
