"""Exceptions raised by the ferrocast server-API clients."""

from __future__ import annotations

from typing import Optional

# Protocol error codes (docs/protocol.md §8).
INTERNAL = 100
UNAUTHORIZED = 101
UNKNOWN_CHANNEL = 102
PERMISSION_DENIED = 103
METHOD_NOT_FOUND = 104
ALREADY_SUBSCRIBED = 105
LIMIT_EXCEEDED = 106
BAD_REQUEST = 107
NOT_AVAILABLE = 108
TOKEN_EXPIRED = 109
TOO_MANY_REQUESTS = 110
UNRECOVERABLE_POSITION = 112


class FerrocastError(Exception):
    """An error answer of the server API, or a failure to get one.

    ``code`` is the protocol error code from ``{"error": {"code", "message"}}`` (branch on it, not
    on ``message``), ``status`` the HTTP status (``None`` when no HTTP answer came back).
    """

    def __init__(self, code: int, message: str, status: Optional[int] = None):
        super().__init__(code, message, status)
        self.code = code
        self.message = message
        self.status = status

    def __str__(self) -> str:  # e.g. "102 unknown channel (HTTP 400)"
        where = f" (HTTP {self.status})" if self.status is not None else ""
        return f"{self.code} {self.message}{where}"

    def __repr__(self) -> str:
        return f"{type(self).__name__}(code={self.code!r}, message={self.message!r}, status={self.status!r})"


class FerrocastUnavailable(FerrocastError):
    """The node can't serve the call now: HTTP 503 / code 108 (broker unavailable, presence or
    history off in the namespace), any other 5xx without a ferrocast error body, a refused or
    reset connection, or a timeout. ``retry_after`` holds the ``Retry-After`` header in seconds
    when the server sent one."""

    def __init__(
        self,
        code: int,
        message: str,
        status: Optional[int] = None,
        retry_after: Optional[float] = None,
    ):
        super().__init__(code, message, status)
        self.retry_after = retry_after


def error_from_response(status: int, body: bytes, retry_after: Optional[str] = None) -> FerrocastError:
    """Turns a non-2xx HTTP answer into the matching exception."""
    import json

    code: Optional[int] = None
    message = ""
    try:
        doc = json.loads(body.decode("utf-8")) if body else None
        err = doc.get("error") if isinstance(doc, dict) else None
        if isinstance(err, dict) and isinstance(err.get("code"), int):
            code = err["code"]
            message = str(err.get("message", ""))
    except (ValueError, UnicodeDecodeError):
        pass
    ra: Optional[float] = None
    if retry_after:
        try:
            ra = float(retry_after)
        except ValueError:
            ra = None
    if code is None:
        # No ferrocast error body: a proxy in front of the node, or the bare 503 that the node
        # sends when too many handshakes are pending.
        code = NOT_AVAILABLE if status >= 500 else (UNAUTHORIZED if status == 401 else INTERNAL)
        snippet = body[:200].decode("utf-8", "replace").strip()
        message = f"HTTP {status}" + (f": {snippet}" if snippet else "")
    if status == 503 or code == NOT_AVAILABLE or (status >= 500 and code != INTERNAL):
        return FerrocastUnavailable(code, message, status, ra)
    return FerrocastError(code, message, status)
