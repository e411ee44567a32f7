"""asyncio server-API client on stdlib streams (no third-party HTTP library).

It speaks just the HTTP/1.1 the node needs: ``POST`` with a JSON body, answers framed by
``Content-Length``, ``Transfer-Encoding: chunked`` or connection close, and keep-alive
connections kept in a small pool.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from datetime import datetime
from typing import Any, Deque, Iterable, List, Optional, Tuple

from . import _api
from .errors import NOT_AVAILABLE, FerrocastUnavailable

_Conn = Tuple[asyncio.StreamReader, asyncio.StreamWriter]
_MAX_HEADER = 64 * 1024


class _Stale(Exception):
    """The connection closed before any byte of the answer (a keep-alive the server dropped)."""


class AsyncClient:
    """The asyncio twin of :class:`ferrocast.Client`: same calls, same answers and exceptions,
    each a coroutine. Use it as ``async with AsyncClient(url, key) as fc: await fc.publish(...)``
    or call :meth:`aclose` when done. It may be used from several event loops one after
    the other (``asyncio.run`` per Celery task): connections of an earlier loop are dropped.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: float = _api.DEFAULT_TIMEOUT,
        ssl_context: Optional[ssl.SSLContext] = None,
        max_idle: int = 8,
    ):
        self.endpoint = _api.Endpoint(url)
        self.api_key = api_key
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._max_idle = max_idle
        self._idle: Deque[_Conn] = deque()
        self._loop: Optional[asyncio.AbstractEventLoop] = None

    def __repr__(self) -> str:
        return f"AsyncClient({self.endpoint!r})"

    # -- calls -------------------------------------------------------------------------------------

    async def publish(
        self,
        channel: str,
        data: Any,
        deliver_at: Optional[_api.When] = None,
        idempotency_key: Optional[str] = None,
    ) -> dict:
        return await self._call(*_api.publish(channel, data, deliver_at, idempotency_key))

    async def publish_at(
        self, channel: str, data: Any, when: datetime, idempotency_key: Optional[str] = None
    ) -> dict:
        return await self._call(*_api.publish(channel, data, when, idempotency_key))

    async def cancel(self, scheduled_id: str) -> dict:
        return await self._call(*_api.cancel(scheduled_id))

    async def broadcast(self, channels: Iterable[str], data: Any) -> List[dict]:
        return (await self._call(*_api.broadcast(channels, data)))["responses"]

    async def disconnect(self, user: Any, code: Optional[int] = None, reason: Optional[str] = None) -> dict:
        return await self._call(*_api.disconnect(user, code, reason))

    async def unsubscribe(self, user: Any, channel: str) -> dict:
        return await self._call(*_api.unsubscribe(user, channel))

    async def subscribe_user(self, user: Any, channel: str) -> dict:
        return await self._call(*_api.subscribe_user(user, channel))

    async def presence(self, channel: str) -> dict:
        return await self._call(*_api.presence(channel))

    async def presence_stats(self, channel: str) -> dict:
        return await self._call(*_api.presence_stats(channel))

    async def history(self, channel: str, limit: Optional[int] = None, since: Any = None) -> dict:
        return await self._call(*_api.history(channel, limit, since))

    async def info(self) -> dict:
        return await self._call(*_api.info())

    # -- transport ---------------------------------------------------------------------------------

    async def aclose(self) -> None:
        """Closes the pooled connections. The client stays usable."""
        same_loop = self._loop is asyncio.get_running_loop()
        while self._idle:
            _, w = self._idle.popleft()
            if same_loop:
                await _close(w)
            else:
                _discard(w)

    async def __aenter__(self) -> "AsyncClient":
        return self

    async def __aexit__(self, *exc: Any) -> None:
        await self.aclose()

    async def _connection(self) -> Tuple[_Conn, bool]:
        loop = asyncio.get_running_loop()
        if self._loop is not loop:
            # Streams belong to the loop that made them; an earlier loop's are unusable.
            for _, w in self._idle:
                _discard(w)
            self._idle.clear()
            self._loop = loop
        while self._idle:
            r, w = self._idle.pop()
            if not w.is_closing() and not r.at_eof():
                return (r, w), True
            await _close(w)
        ep = self.endpoint
        ctx = None
        if ep.scheme == "https":
            ctx = self._ssl_context or ssl.create_default_context()
        r, w = await asyncio.open_connection(ep.host, ep.port, ssl=ctx, limit=_MAX_HEADER)
        return (r, w), False

    async def _call(self, method: str, body: dict) -> Any:
        payload = _api.encode(body)
        hdrs = _api.headers(self.api_key, len(payload), self.endpoint)
        head = f"POST {self.endpoint.path(method)} HTTP/1.1\r\n" + "".join(
            f"{k}: {v}\r\n" for k, v in hdrs.items()
        ) + "\r\n"
        request = head.encode("latin-1") + payload
        try:
            return await asyncio.wait_for(self._exchange(request), self.timeout)
        except asyncio.TimeoutError:
            raise FerrocastUnavailable(
                NOT_AVAILABLE, f"no answer from {self.endpoint!r} within {self.timeout}s"
            ) from None

    async def _exchange(self, request: bytes) -> Any:
        for attempt in range(2):
            try:
                (r, w), reused = await self._connection()
            except (OSError, ssl.SSLError) as e:
                raise FerrocastUnavailable(NOT_AVAILABLE, f"cannot reach {self.endpoint!r}: {e}") from e
            try:
                w.write(request)
                await w.drain()
                status, headers, data, keep = await _read_response(r)
            except (_Stale, ConnectionError) as e:
                await _close(w)
                if reused and attempt == 0:
                    continue
                raise FerrocastUnavailable(NOT_AVAILABLE, f"connection to {self.endpoint!r} lost: {e}") from e
            except (OSError, ValueError, asyncio.IncompleteReadError, asyncio.LimitOverrunError) as e:
                await _close(w)
                raise FerrocastUnavailable(NOT_AVAILABLE, f"bad answer from {self.endpoint!r}: {e!r}") from e
            except BaseException:
                # Cancelled or timed out mid-exchange: the connection's state is unknown.
                w.transport.abort()
                raise
            if keep and len(self._idle) < self._max_idle:
                self._idle.append((r, w))
            else:
                await _close(w)
            return _api.decode(status, data, headers.get("retry-after"))
        raise AssertionError("unreachable")


def _discard(w: asyncio.StreamWriter) -> None:
    """Closes a connection whose event loop may be gone (``asyncio.run`` returned): the
    transport can't schedule its own close on a closed loop, so the socket is closed directly."""
    try:
        w.transport.abort()
        return
    except Exception:
        pass
    transport = w.transport
    sock = getattr(transport, "_sock", None)  # selector transports (the default loop on Unix)
    if sock is not None:
        try:
            sock.close()
            transport._sock = None  # closed: nothing left for the transport's __del__ to warn about
        except (OSError, AttributeError):
            pass


async def _close(w: asyncio.StreamWriter) -> None:
    try:
        w.close()
        await w.wait_closed()
    except Exception:
        pass


async def _read_response(r: asyncio.StreamReader):
    """Reads one HTTP/1.1 answer: (status, lower-cased headers, body, keep_alive)."""
    try:
        line = await r.readuntil(b"\r\n")
    except asyncio.IncompleteReadError as e:
        if not e.partial:
            raise _Stale("closed before the answer") from None
        raise
    parts = line.decode("latin-1").split(" ", 2)
    if len(parts) < 2 or not parts[0].startswith("HTTP/1."):
        raise ValueError(f"bad status line {line!r}")
    status = int(parts[1])
    version = parts[0]
    headers: dict = {}
    size = 0
    while True:
        line = await r.readuntil(b"\r\n")
        size += len(line)
        if size > _MAX_HEADER:
            raise ValueError("answer headers too large")
        if line == b"\r\n":
            break
        name, _, value = line.decode("latin-1").partition(":")
        headers[name.strip().lower()] = value.strip()
    conn = headers.get("connection", "").lower()
    keep = ("close" not in conn) if version == "HTTP/1.1" else ("keep-alive" in conn)
    if status in (204, 304) or 100 <= status < 200:
        return status, headers, b"", keep
    if "chunked" in headers.get("transfer-encoding", "").lower():
        chunks = []
        while True:
            size_line = await r.readuntil(b"\r\n")
            n = int(size_line.split(b";")[0].strip(), 16)
            if n == 0:
                while (await r.readuntil(b"\r\n")) != b"\r\n":  # trailers
                    pass
                break
            chunks.append(await r.readexactly(n))
            await r.readexactly(2)
        return status, headers, b"".join(chunks), keep
    if "content-length" in headers:
        return status, headers, await r.readexactly(int(headers["content-length"])), keep
    return status, headers, await r.read(), False
