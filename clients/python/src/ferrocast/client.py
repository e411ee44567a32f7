"""Synchronous server-API client (stdlib ``http.client``; safe to share between threads)."""

from __future__ import annotations

import http.client
import logging
import os
import socket
import ssl
import threading
import weakref
from datetime import datetime
from typing import Any, Iterable, List, Optional

from . import _api
from .errors import NOT_AVAILABLE, FerrocastError, FerrocastUnavailable

log = logging.getLogger("ferrocast")

# A reused keep-alive connection that the server had already closed fails with one of these
# before any byte of an answer arrives: such a request is sent again once on a fresh connection.
_STALE = (http.client.RemoteDisconnected, ConnectionResetError, BrokenPipeError, ConnectionAbortedError)


class _Slot:
    """A thread's connection. Closed when the thread ends (its thread-local storage goes)."""

    __slots__ = ("conn", "pid")

    def __init__(self, conn: http.client.HTTPConnection):
        self.conn: Optional[http.client.HTTPConnection] = conn
        self.pid = os.getpid()

    def __del__(self) -> None:
        try:
            if self.conn is not None:
                self.conn.close()
        except Exception:
            pass


class Client:
    """Calls a node's server API (``POST /api/*``).

    ``url`` is the node's public listener, e.g. ``http://127.0.0.1:8080`` (a path prefix such as
    ``https://edge.example.com/ferrocast`` is kept). Each thread keeps one keep-alive connection;
    after ``os.fork()`` (Celery prefork workers, gunicorn) a child opens its own.

    Every call returns the server's JSON answer as a dict, and raises
    :class:`~ferrocast.FerrocastError` (:class:`~ferrocast.FerrocastUnavailable` for 503/108,
    other 5xx, refused connections and timeouts) otherwise.
    """

    def __init__(
        self,
        url: str,
        api_key: str,
        timeout: float = _api.DEFAULT_TIMEOUT,
        ssl_context: Optional[ssl.SSLContext] = None,
    ):
        self.endpoint = _api.Endpoint(url)
        self.api_key = api_key
        self.timeout = timeout
        self._ssl_context = ssl_context
        self._local = threading.local()
        self._lock = threading.Lock()
        self._all: "weakref.WeakSet[http.client.HTTPConnection]" = weakref.WeakSet()

    def __repr__(self) -> str:
        return f"Client({self.endpoint!r})"

    # -- calls -------------------------------------------------------------------------------------

    def publish(
        self,
        channel: str,
        data: Any,
        deliver_at: Optional[_api.When] = None,
        idempotency_key: Optional[str] = None,
    ) -> dict:
        """Publishes ``data`` to ``channel``: ``{"offset", "epoch"}``, or ``{"scheduled": id}``
        with ``deliver_at`` (an aware ``datetime`` or an RFC 3339 string)."""
        return self._call(*_api.publish(channel, data, deliver_at, idempotency_key))

    def publish_at(
        self, channel: str, data: Any, when: datetime, idempotency_key: Optional[str] = None
    ) -> dict:
        """Schedules ``data`` for ``channel`` at ``when`` (timezone-aware): ``{"scheduled": id}``."""
        return self._call(*_api.publish(channel, data, when, idempotency_key))

    def publish_on_commit(
        self,
        channel: str,
        data: Any,
        using: Optional[str] = None,
        *,
        deliver_at: Optional[_api.When] = None,
        idempotency_key: Optional[str] = None,
        robust: bool = False,
    ) -> None:
        """Publishes ``data`` to ``channel`` once the surrounding Django ``transaction.atomic()``
        block of database ``using`` (default: ``"default"``) commits, through
        ``django.db.transaction.on_commit``. Nothing is sent when it rolls back, including a
        rolled-back inner ``atomic()`` (savepoint) inside a transaction that commits. Outside a
        transaction (autocommit) it publishes at once, as ``on_commit`` runs its callback at once.

        ``data`` is serialized now: a value that isn't JSON raises ``TypeError`` here, inside the
        transaction, and changing ``data`` afterwards doesn't change what is sent.
        ``deliver_at``/``idempotency_key`` are those of :meth:`publish`.

        A failure to publish after the commit (node down, ...) raises from the commit, like any
        ``on_commit`` callback, and the callbacks registered after it don't run; with
        ``robust=True`` it is logged on the ``ferrocast`` logger (WARNING) and swallowed instead.
        Needs Django (``RuntimeError`` otherwise). Returns ``None``: the answer comes later.
        """
        method, body = _api.publish(channel, data, deliver_at, idempotency_key)
        payload = _api.encode(body)
        on_commit = _django_on_commit()

        def send() -> None:
            try:
                self._send(method, payload)
            except FerrocastError as e:
                if not robust:
                    raise
                log.warning("ferrocast: publish to %s after commit failed: %s", channel, e)

        on_commit(send, using=using)

    def cancel(self, scheduled_id: str) -> dict:
        """Cancels a scheduled publication still waiting (the id ``publish_at`` returned).
        Raises ``FerrocastError`` (status 404, code 107) when it was delivered or is unknown."""
        return self._call(*_api.cancel(scheduled_id))

    def broadcast(self, channels: Iterable[str], data: Any) -> List[dict]:
        """Publishes ``data`` to each channel. Returns one entry per channel, in order:
        ``{"result": {"offset", "epoch"}}`` or ``{"error": {"code", "message"}}``."""
        return self._call(*_api.broadcast(channels, data))["responses"]

    def disconnect(self, user: Any, code: Optional[int] = None, reason: Optional[str] = None) -> dict:
        """Closes every connection of ``user`` (close ``code``, 4000-4999, default 4000)."""
        return self._call(*_api.disconnect(user, code, reason))

    def unsubscribe(self, user: Any, channel: str) -> dict:
        """Unsubscribes every connection of ``user`` from ``channel``."""
        return self._call(*_api.unsubscribe(user, channel))

    def subscribe_user(self, user: Any, channel: str) -> dict:
        """Subscribes every live connection of ``user`` (on every node, WebSocket and SSE) to
        ``channel``, whatever its token allows: the backend decides. Each connection gets a
        ``{"channel", "subscribe": {"offset", "epoch"}}`` push. Returns ``{}``; raises
        ``FerrocastError`` 102 for an unknown namespace. Connections opened later are not
        subscribed: list such channels in the token's ``subs`` (``make_token(subs=...)``)."""
        return self._call(*_api.subscribe_user(user, channel))

    def presence(self, channel: str) -> dict:
        """``{"clients": {client_id: {"user", "info"?}}}``."""
        return self._call(*_api.presence(channel))

    def presence_stats(self, channel: str) -> dict:
        """``{"clients": n, "users": n}``."""
        return self._call(*_api.presence_stats(channel))

    def history(self, channel: str, limit: Optional[int] = None, since: Any = None) -> dict:
        """``{"publications": [...], "offset", "epoch"}``. ``since`` is ``{"offset", "epoch"}``
        (or an ``(offset, epoch)`` tuple)."""
        return self._call(*_api.history(channel, limit, since))

    def info(self) -> dict:
        """``{"nodes": [{"id", "name", "version", "connections", ...}]}``."""
        return self._call(*_api.info())

    # -- transport ---------------------------------------------------------------------------------

    def close(self) -> None:
        """Closes the keep-alive connections of every thread. The client stays usable."""
        with self._lock:
            conns = list(self._all)
            self._all = weakref.WeakSet()
        for c in conns:
            c.close()
        self._local = threading.local()

    def __enter__(self) -> "Client":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def _connection(self):
        slot = getattr(self._local, "slot", None)
        if slot is not None and slot.conn is not None and slot.pid == os.getpid():
            return slot.conn, True
        ep = self.endpoint
        if ep.scheme == "https":
            ctx = self._ssl_context or ssl.create_default_context()
            conn = http.client.HTTPSConnection(ep.host, ep.port, timeout=self.timeout, context=ctx)
        else:
            conn = http.client.HTTPConnection(ep.host, ep.port, timeout=self.timeout)
        self._local.slot = _Slot(conn)
        with self._lock:
            self._all.add(conn)
        return conn, False

    def _drop(self) -> None:
        slot = getattr(self._local, "slot", None)
        if slot is not None and slot.conn is not None:
            slot.conn.close()
            slot.conn = None

    def _call(self, method: str, body: dict) -> Any:
        return self._send(method, _api.encode(body))

    def _send(self, method: str, payload: bytes) -> Any:
        path = self.endpoint.path(method)
        hdrs = _api.headers(self.api_key, len(payload), self.endpoint)
        for attempt in range(2):
            conn, reused = self._connection()
            try:
                conn.request("POST", path, body=payload, headers=hdrs)
                resp = conn.getresponse()
                data = resp.read()
            except _STALE as e:
                self._drop()
                if reused and attempt == 0:
                    continue
                raise FerrocastUnavailable(NOT_AVAILABLE, f"connection to {self.endpoint!r} lost: {e}") from e
            except (socket.timeout, TimeoutError) as e:
                self._drop()
                raise FerrocastUnavailable(
                    NOT_AVAILABLE, f"no answer from {self.endpoint!r} within {self.timeout}s"
                ) from e
            except (OSError, http.client.HTTPException) as e:
                self._drop()
                raise FerrocastUnavailable(NOT_AVAILABLE, f"cannot reach {self.endpoint!r}: {e}") from e
            if resp.will_close:
                self._drop()
            return _api.decode(resp.status, data, resp.getheader("Retry-After"))
        raise AssertionError("unreachable")


def _django_on_commit():
    try:
        from django.db import transaction
    except ImportError:
        raise RuntimeError(
            "publish_on_commit() needs Django (it hooks django.db.transaction.on_commit); "
            "without Django, call publish() after your own commit"
        ) from None
    return transaction.on_commit
