"""An asyncio client for OpenDHT's REST proxy API (``dhtnode --proxyserver PORT``).

The API (OpenDHT 2.4):

* ``POST /key/<k>`` with ``{"data": "<base64>", "permanent": bool}`` puts a value;
* ``GET /key/<k>`` returns the values under ``k`` as JSON lines ``{"data", "id", "type"}``;
* ``GET /key/<k>/listen`` streams values as JSON lines (``"expired": true`` marks an expiry)
  until the connection closes, which cancels the listen on the node.

``<k>`` is the 40-hex InfoHash from :mod:`tierlink.wire.dhtkeys`. Every call has a deadline and
fails with :class:`~tierlink.errors.DhtUnavailable` when the node cannot be reached.

Anyone can write through a proxy, so its lines are untrusted: they are read and decoded by
:mod:`tierlink.dht.proxy_lines`; a skipped line is counted in :attr:`DhtClient.skipped_lines`
and never ends a get or a listen.
"""

from __future__ import annotations

import asyncio
import base64
import contextlib
import logging
from collections import Counter, OrderedDict
from collections.abc import AsyncGenerator, AsyncIterator, Callable
from types import TracebackType
from typing import Any

import aiohttp

from tierlink.dht.proxy_lines import (
    MAX_LINE_BYTES,
    SkippedLine,
    bounded_lines,
    decode_proxy_json,
    decode_proxy_line,
)
from tierlink.errors import DhtError, DhtUnavailable

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 10.0
#: ``DhtClient.trace``: called with (event, key, value) at ``put`` (before the request),
#: ``get`` (request sent), ``got`` (answer read, value empty), ``listen`` (stream asked for)
#: and ``value`` (each new value a listen delivers); for measurements, never on by default.
Trace = Callable[[str, str, bytes], None]
#: HTTP connections one client keeps open to its proxy at once (aiohttp's pool limit). Each
#: dial in flight holds one for its answer listen and one for its offer put; requests past
#: the limit wait for a free connection.
DEFAULT_CONNECTIONS = 64
#: After a put the node reported failed was found stored (a node without peers), the same
#: report is taken as stored for this long without reading back (seconds).
LONE_NODE_TRUST_S = 30.0


def _check_key(key: str) -> str:
    if len(key) != 40 or any(c not in "0123456789abcdef" for c in key):
        raise ValueError(f"DHT key must be 40 lowercase hex characters, got {key!r}")
    return key


#: The most value bytes one get returns: what one OpenDHT node stores at most (64 MiB, its
#: default storage limit), so every value a node can hold under a key fits.
MAX_GET_BYTES = 64 * 1024 * 1024
#: Value bytes one get keeps unfiltered; past them only values its ``keep`` accepts.
UNFILTERED_GET_BYTES = 8 * 1024 * 1024


async def _mark_sent(session: aiohttp.ClientSession, ctx: Any, params: Any) -> None:
    """aiohttp trace hook: resolve a put's ``sent`` future (its trace_request_ctx)."""
    sent = ctx.trace_request_ctx
    if isinstance(sent, asyncio.Future) and not sent.done():
        sent.set_result(None)


class DhtClient:
    """Put, get and listen through one OpenDHT proxy."""

    def __init__(
        self, base_url: str, *, timeout: float = DEFAULT_TIMEOUT,
        max_get_bytes: int = MAX_GET_BYTES, unfiltered_get_bytes: int = UNFILTERED_GET_BYTES,
        connections: int = DEFAULT_CONNECTIONS,
    ) -> None:
        if connections < 1:
            raise ValueError(f"a DHT client needs at least 1 HTTP connection, not {connections}")
        self.connections = connections
        self.base_url = base_url.rstrip("/")
        self.timeout = timeout
        self.max_get_bytes = max_get_bytes
        self.unfiltered_get_bytes = unfiltered_get_bytes
        self._session: aiohttp.ClientSession | None = None
        self._listeners: set[DhtListener] = set()
        self._lone_until = 0.0  # loop time until which "Put failed" means stored
        self.skipped_lines: Counter[str] = Counter()
        """Proxy lines skipped, by reason (``oversized``, ``json``, ``shape``, ``base64``)."""
        self.capped_gets = 0
        """Gets cut at :attr:`max_get_bytes` or by the timeout (the key held more)."""
        self.filtered_values = 0
        """Values a get skipped past its unfiltered bytes because ``keep`` refused them."""
        self.renewals = 0
        """Times every connection was dropped by :meth:`renew_connections`."""
        self.trace: Trace | None = None
        """Called at each put, get and listened value (see :data:`Trace`); None: off."""

    def _trace(self, event: str, key: str, value: bytes = b"") -> None:
        if self.trace is not None:
            self.trace(event, key, value)

    def _read_line(self, line: bytes | None) -> tuple[str, bytes, bool] | None:
        """(value id, data, expired) from one proxy line (None: an oversized line); None if
        it holds no value (a skipped line is counted by reason in :attr:`skipped_lines`)."""
        try:
            if line is None:
                raise SkippedLine("oversized")
            return decode_proxy_line(line)
        except SkippedLine as skip:
            self.skipped_lines[skip.reason] += 1
            log.debug("skipping a proxy line (%s): %r", skip.reason, (line or b"")[:80])
            return None

    async def __aenter__(self) -> DhtClient:
        return self

    async def __aexit__(
        self, t: type[BaseException] | None, e: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.close()

    @property
    def session(self) -> aiohttp.ClientSession:
        """The shared HTTP session (created lazily on the running loop)."""
        if self._session is None or self._session.closed:
            trace = aiohttp.TraceConfig()
            trace.on_request_chunk_sent.append(_mark_sent)
            trace.on_request_end.append(_mark_sent)
            trace.on_request_exception.append(_mark_sent)
            self._session = aiohttp.ClientSession(
                connector=aiohttp.TCPConnector(limit=self.connections, force_close=False),
                trace_configs=[trace],
            )
        return self._session

    def _url(self, key: str, suffix: str = "") -> str:
        return f"{self.base_url}/key/{_check_key(key)}{suffix}"

    async def _request(self, method: str, url: str, ok: tuple[int, ...] = (), **kw: Any) -> bytes:
        timeout = aiohttp.ClientTimeout(total=kw.pop("timeout", None) or self.timeout)
        try:
            async with self.session.request(method, url, timeout=timeout, **kw) as resp:
                body = await resp.read()
                if resp.status >= 400 and resp.status not in ok:
                    raise DhtError(f"DHT proxy answered {resp.status} to {method} {url}")
                return body
        except (aiohttp.ClientError, OSError) as exc:
            raise DhtUnavailable(f"DHT proxy {self.base_url} unreachable: {exc}") from None
        except TimeoutError:
            raise DhtUnavailable(
                f"DHT proxy {self.base_url} did not answer within {timeout.total:.1f} s"
            ) from None

    async def info(self) -> dict[str, Any]:
        """The node's status object (node id, public IP, connectivity counts)."""
        body = await self._request("GET", self.base_url + "/")
        obj = decode_proxy_json(body, f"status from {self.base_url}")
        if not isinstance(obj, dict):
            raise DhtError(f"DHT proxy {self.base_url} sent an unexpected status")
        return obj

    async def put(
        self, key: str, value: bytes, *, permanent: bool = False,
        sent: asyncio.Future[None] | None = None,
    ) -> None:
        """Store ``value`` under ``key``.

        A node with no peers answers ``{"err": "Put failed"}`` although it keeps the value;
        in that case we read the key back and accept the put if the value is there, and for
        ``LONE_NODE_TRUST_S`` seconds after such a check accept that answer without one.
        ``sent`` gets its result once the request is written (or has failed): a caller
        with CPU work to do meanwhile waits for it, so its work does not delay the put.
        """
        self._trace("put", key, value)
        payload = {"data": base64.b64encode(value).decode()}
        if permanent:
            payload["permanent"] = True  # type: ignore[assignment]
        # A failed put is HTTP 502 with {"err": "Put failed"}: handled below.
        try:
            body = await self._request(
                "POST", self._url(key), ok=(502,), json=payload, trace_request_ctx=sent
            )
        finally:
            if sent is not None and not sent.done():
                sent.set_result(None)
        answer = decode_proxy_json(body, "answer to a put") if body.strip() else {}
        if isinstance(answer, dict) and ("err" in answer or "err:" in answer):
            loop = asyncio.get_running_loop()
            if loop.time() < self._lone_until:
                return  # a lone node: it kept the value, as it did a moment ago
            if value in await self.get(key):
                log.debug("put reported failure but the value is stored locally (lone node?)")
                # Checked again LONE_NODE_TRUST_S from now: a read-back per put would
                # cost every dial a request in flight while its answer comes in.
                self._lone_until = loop.time() + LONE_NODE_TRUST_S
                return
            raise DhtError(f"DHT put failed: {answer}")

    async def get(self, key: str, *, keep: Callable[[bytes], bool] | None = None) -> list[bytes]:
        """The values currently stored under ``key`` (possibly none).

        The answer is read line by line. The first :attr:`unfiltered_get_bytes` of values
        are kept as they come; past them, only values ``keep`` accepts (the rest are counted
        in :attr:`filtered_values`), so a flood of other values cannot push the ones a
        caller wants past the end; the get is cut before :attr:`max_get_bytes`, or when
        ``timeout`` runs out after some values arrived (the rest is not read; both counted
        in :attr:`capped_gets`).
        """
        max_bytes, unfiltered_bytes = self.max_get_bytes, self.unfiltered_get_bytes
        out: list[bytes] = []
        size = 0
        try:
            async for value in self._streamed(key):
                if size + len(value) > unfiltered_bytes and keep is not None \
                        and not keep(value):
                    self.filtered_values += 1
                    continue
                size += len(value)
                if size > max_bytes:
                    self.capped_gets += 1
                    break
                out.append(value)
        except TimeoutError:  # aiohttp's socket timeouts are TimeoutErrors too
            if out:  # a huge answer: what arrived in time is still the key's values
                self.capped_gets += 1
                return out
            raise self._no_answer() from None
        self._trace("got", key)
        return out

    async def values(self, key: str) -> AsyncGenerator[bytes, None]:
        """The values under ``key`` one by one, as the proxy streams its get: OpenDHT hands
        each over as soon as a node returns it, long before the search completes (which
        waits out every unanswering node). Stop iterating to stop reading; the stream ends
        when the search completes, after :attr:`max_get_bytes`, or after the timeout
        (:class:`DhtUnavailable` if nothing came)."""
        size = 0
        try:
            async for value in self._streamed(key):
                size += len(value)
                if size > self.max_get_bytes:
                    self.capped_gets += 1
                    return
                yield value
        except TimeoutError:
            if not size:
                raise self._no_answer() from None

    def _no_answer(self) -> DhtUnavailable:
        return DhtUnavailable(
            f"DHT proxy {self.base_url} did not answer within {self.timeout:.1f} s")

    async def _streamed(self, key: str) -> AsyncGenerator[bytes, None]:
        """Each value of a get as its line arrives (skipped lines counted); TimeoutError
        when the client's timeout runs out."""
        url = self._url(key)
        self._trace("get", key)
        try:
            async with self.session.get(url, timeout=aiohttp.ClientTimeout(total=self.timeout)) \
                    as resp:
                if resp.status >= 400:
                    raise DhtError(f"DHT proxy answered {resp.status} to GET {url}")
                async for line in bounded_lines(resp.content.iter_any(), MAX_LINE_BYTES):
                    item = self._read_line(line)
                    if item is not None and not item[2]:
                        yield item[1]
        except TimeoutError:  # aiohttp's timeouts are ClientErrors too: the caller decides
            raise
        except (aiohttp.ClientError, OSError) as exc:
            raise DhtUnavailable(f"DHT proxy {self.base_url} unreachable: {exc}") from None

    @property
    def listening(self) -> list[str]:
        """The keys of this client's open listens (one entry per listen)."""
        return sorted(listener.key for listener in self._listeners)

    def listen(self, key: str, *, reconnect: bool = True) -> DhtListener:
        """An async iterator of new values under ``key`` (existing ones first)."""
        listener = DhtListener(self, key, reconnect=reconnect)
        self._listeners.add(listener)
        return listener

    async def renew_connections(self) -> None:
        """Drop every HTTP connection, pooled or streaming a listen, and start afresh.

        For when this host's address changed: a TCP connection bound to a vanished address
        hangs silently until its timeouts. Listens reconnect at once from the new address; a
        request in flight fails with :class:`DhtUnavailable` and its caller retries.
        """
        self.renewals += 1
        old, self._session = self._session, None
        if old is not None:
            await old.close()

    async def close(self) -> None:
        """Cancel every listen and close the HTTP session."""
        for listener in list(self._listeners):
            await listener.aclose()
        if self._session is not None:
            await self._session.close()
            self._session = None


class DhtListener:
    """Values arriving under one key; reconnects if the stream drops; ``aclose`` cancels.

    Values are de-duplicated by their DHT value id (a reconnect refetches existing values).
    If the node stays unreachable for ``client.timeout`` seconds the iterator raises
    :class:`DhtUnavailable` instead of hanging.
    """

    MAX_REMEMBERED = 4096

    def __init__(self, client: DhtClient, key: str, *, reconnect: bool = True) -> None:
        self._client = client
        self.key = key
        self._url = client._url(key, "/listen")
        self._reconnect = reconnect
        self._seen: OrderedDict[str, None] = OrderedDict()
        self._closed = False
        self._resp: aiohttp.ClientResponse | None = None
        self._gen: AsyncIterator[bytes] | None = None

    def __aiter__(self) -> DhtListener:
        return self

    async def __anext__(self) -> bytes:
        if self._gen is None:
            self._gen = self._values()
        value = await self._gen.__anext__()
        self._client._trace("value", self.key, value)
        return value

    async def _open(self) -> aiohttp.ClientResponse:
        deadline = asyncio.get_running_loop().time() + self._client.timeout
        delay = 0.1
        self._client._trace("listen", self.key)
        while True:
            try:
                resp = await self._client.session.get(
                    self._url,
                    timeout=aiohttp.ClientTimeout(
                        total=None, connect=self._client.timeout, sock_read=None
                    ),
                )
                if resp.status >= 400:
                    resp.release()
                    raise DhtError(f"DHT proxy answered {resp.status} to listen")
                return resp
            except (aiohttp.ClientError, OSError, TimeoutError) as exc:
                if self._closed:
                    raise StopAsyncIteration from None
                if asyncio.get_running_loop().time() + delay > deadline:
                    raise DhtUnavailable(
                        f"DHT proxy {self._client.base_url} unreachable for listen: {exc}"
                    ) from None
                await asyncio.sleep(delay)
                delay = min(delay * 2, 1.0)

    async def _values(self) -> AsyncIterator[bytes]:
        while not self._closed:
            self._resp = await self._open()
            try:
                lines = bounded_lines(self._resp.content.iter_any(), MAX_LINE_BYTES)
                async for line in lines:
                    item = self._client._read_line(line)
                    if item is None or item[2]:
                        continue
                    vid, data, _ = item
                    if vid in self._seen:
                        continue
                    self._seen[vid] = None
                    if len(self._seen) > self.MAX_REMEMBERED:
                        self._seen.popitem(last=False)
                    yield data
            except (aiohttp.ClientError, OSError) as exc:
                log.debug("listen stream dropped: %s", exc)
            finally:
                if self._resp is not None:
                    self._resp.close()
                    self._resp = None
            if self._closed:
                break
            if not self._reconnect:
                raise DhtUnavailable("DHT listen stream ended")

    async def aclose(self) -> None:
        """Cancel the listen on the node (closes the HTTP stream)."""
        self._closed = True
        self._client._listeners.discard(self)
        if self._resp is not None:
            self._resp.close()
            self._resp = None
        if self._gen is not None:
            gen, self._gen = self._gen, None
            with contextlib.suppress(RuntimeError, StopAsyncIteration):
                await gen.aclose()  # type: ignore[attr-defined]
