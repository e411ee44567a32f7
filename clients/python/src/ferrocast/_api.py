"""What both clients share: the URL, the request bodies of each call, and answer decoding."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from typing import Any, Iterable, Mapping, Optional, Tuple, Union
from urllib.parse import urlsplit

from .errors import INTERNAL, FerrocastError, error_from_response

DEFAULT_TIMEOUT = 5.0
USER_AGENT = "ferrocast-python/0.1"

When = Union[datetime, str]


class Endpoint:
    """``http://host:port[/prefix]`` split into what a connection needs."""

    def __init__(self, url: str):
        parts = urlsplit(url if "://" in url else "http://" + url)
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"unsupported URL scheme {parts.scheme!r}: use http:// or https://")
        if not parts.hostname:
            raise ValueError(f"no host in URL {url!r}")
        self.scheme = parts.scheme
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        prefix = parts.path.rstrip("/")
        if prefix.endswith("/api"):
            prefix = prefix[: -len("/api")]
        self.prefix = prefix
        default_port = self.port == (443 if self.scheme == "https" else 80)
        host = f"[{self.host}]" if ":" in self.host else self.host
        self.host_header = host if default_port else f"{host}:{self.port}"

    def path(self, method: str) -> str:
        return f"{self.prefix}/api/{method}"

    def __repr__(self) -> str:
        return f"{self.scheme}://{self.host_header}{self.prefix}"


def headers(api_key: str, length: int, endpoint: Endpoint) -> dict:
    return {
        "Host": endpoint.host_header,
        "Authorization": f"apikey {api_key}",
        "Content-Type": "application/json",
        "Accept": "application/json",
        "Content-Length": str(length),
        "User-Agent": USER_AGENT,
    }


def rfc3339(when: When) -> str:
    """An aware ``datetime`` as RFC 3339 in UTC (millisecond precision); a string is passed as is."""
    if isinstance(when, str):
        return when
    if not isinstance(when, datetime):
        raise TypeError("deliver_at must be a datetime or an RFC 3339 string")
    if when.tzinfo is None or when.tzinfo.utcoffset(when) is None:
        raise ValueError(
            "deliver_at must be timezone-aware (e.g. datetime.now(timezone.utc) or "
            "django.utils.timezone.now()): a naive datetime is ambiguous"
        )
    return when.astimezone(timezone.utc).isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _position(since: Any) -> Optional[dict]:
    if since is None:
        return None
    if isinstance(since, Mapping):
        return {"offset": int(since["offset"]), "epoch": str(since["epoch"])}
    if isinstance(since, tuple) and len(since) == 2:
        return {"offset": int(since[0]), "epoch": str(since[1])}
    if hasattr(since, "offset") and hasattr(since, "epoch"):
        return {"offset": int(since.offset), "epoch": str(since.epoch)}
    raise TypeError("since must be {'offset', 'epoch'}, an (offset, epoch) tuple, or have .offset/.epoch")


# --- request bodies, one per call -----------------------------------------------------------------

Call = Tuple[str, dict]


def publish(channel: str, data: Any, deliver_at: Optional[When] = None, idempotency_key: Optional[str] = None) -> Call:
    body: dict = {"channel": channel, "data": data}
    if deliver_at is not None:
        body["deliver_at"] = rfc3339(deliver_at)
    # The node treats "" as a key like any other (every keyless-looking call after the first
    # would be dropped for 5 minutes): an empty key means "no key" here.
    if idempotency_key is not None and str(idempotency_key) != "":
        body["idempotency_key"] = str(idempotency_key)
    return "publish", body


def broadcast(channels: Iterable[str], data: Any) -> Call:
    if isinstance(channels, str):
        raise TypeError("channels must be a list of channel names, not one string")
    return "broadcast", {"channels": list(channels), "data": data}


def disconnect(user: Any, code: Optional[int] = None, reason: Optional[str] = None) -> Call:
    body: dict = {"user": str(user)}
    if code is not None:
        body["code"] = int(code)
    if reason is not None:
        body["reason"] = str(reason)
    return "disconnect", body


def cancel(scheduled_id: str) -> Call:
    if not isinstance(scheduled_id, str) or not scheduled_id:
        raise TypeError("scheduled_id must be the non-empty id publish_at returned")
    return "cancel", {"id": scheduled_id}


def unsubscribe(user: Any, channel: str) -> Call:
    return "unsubscribe", {"user": str(user), "channel": channel}


def subscribe_user(user: Any, channel: str) -> Call:
    return "subscribe", {"user": str(user), "channel": channel}


def presence(channel: str) -> Call:
    return "presence", {"channel": channel}


def presence_stats(channel: str) -> Call:
    return "presence_stats", {"channel": channel}


def history(channel: str, limit: Optional[int] = None, since: Any = None) -> Call:
    body: dict = {"channel": channel}
    if limit is not None:
        body["limit"] = int(limit)
    pos = _position(since)
    if pos is not None:
        body["since"] = pos
    return "history", body


def info() -> Call:
    return "info", {}


def encode(body: dict) -> bytes:
    try:
        # allow_nan=False: NaN/Infinity are not JSON, the node would answer 107
        return json.dumps(body, separators=(",", ":"), ensure_ascii=False, allow_nan=False).encode("utf-8")
    except (TypeError, ValueError) as e:
        raise TypeError(f"data is not JSON-serializable: {e}") from e


def decode(status: int, body: bytes, retry_after: Optional[str] = None) -> Any:
    """The JSON answer of a call, or the exception for an error answer."""
    if not 200 <= status < 300:
        raise error_from_response(status, body, retry_after)
    try:
        return json.loads(body.decode("utf-8")) if body.strip() else {}
    except (ValueError, UnicodeDecodeError) as e:
        raise FerrocastError(INTERNAL, f"answer is not JSON: {e}", status) from None
