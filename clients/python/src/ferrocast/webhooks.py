"""Receiving the node's webhooks (``[webhooks]`` in its config): signature check and typed events.

The node POSTs batches of lifecycle events with the header
``X-Ferrocast-Signature: sha256=<hex HMAC-SHA256(secret, raw body)>``::

    {"time_ms": 1764960000000, "node": "edge-1", "events": [
      {"id": "...", "name": "user_offline", "user": "17", "time_ms": 1764960000000}, ...]}

In a Django view::

    from ferrocast import webhooks

    @csrf_exempt
    @require_POST
    def ferrocast_webhook(request):
        try:
            payload = webhooks.verify(request.body, request.headers.get(webhooks.SIGNATURE_HEADER),
                                      settings.FERROCAST_WEBHOOK_SECRET)
        except webhooks.WebhookError as e:
            return HttpResponseBadRequest(str(e))
        for event in webhooks.parse(payload).events:
            ...  # deduplicate by event.id: a batch that got no 2xx is sent again, same ids
        return HttpResponse(status=204)

Pass the **raw** body (``request.body``), never a re-serialized one: the signature covers bytes.
"""

from __future__ import annotations

import hashlib
import hmac
import json
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from typing import Any, List, Mapping, Optional, Union

__all__ = [
    "SIGNATURE_HEADER",
    "WebhookError",
    "InvalidSignature",
    "StaleWebhook",
    "MalformedWebhook",
    "verify",
    "sign",
    "parse",
    "Batch",
    "Event",
    "UserOnline",
    "UserOffline",
    "ChannelOccupied",
    "ChannelVacated",
    "ClientPublish",
    "UnknownEvent",
]

SIGNATURE_HEADER = "X-Ferrocast-Signature"
_PREFIX = "sha256="
DEFAULT_TOLERANCE = 300  # seconds: the node's clock and ours may differ by this much (replays beyond)

Secret = Union[str, bytes]


class WebhookError(ValueError):
    """A webhook request that must not be acted on (answer it with a 4xx)."""


class InvalidSignature(WebhookError):
    """No ``X-Ferrocast-Signature`` header, a malformed one, or a signature that doesn't match the
    body (wrong secret, or the body was altered)."""


class StaleWebhook(WebhookError):
    """Correctly signed, but the batch's ``time_ms`` is further from our clock than the tolerance:
    a replayed old request (or a clock that is far off)."""


class MalformedWebhook(WebhookError):
    """Correctly signed, but not a webhook batch (not JSON, no ``time_ms``/``events``)."""


def _key(secret: Secret) -> bytes:
    if not secret:
        raise ValueError("the webhook secret must not be empty")
    return secret.encode("utf-8") if isinstance(secret, str) else bytes(secret)


def _raw(body: Any) -> bytes:
    if isinstance(body, (bytes, bytearray, memoryview)):
        return bytes(body)
    raise TypeError(
        f"body must be the raw request body as bytes (Django: request.body), not {type(body).__name__}"
    )


def sign(body: bytes, secret: Secret) -> str:
    """The ``X-Ferrocast-Signature`` value the node sends for ``body``: ``sha256=<hex>``
    (for tests and fixtures)."""
    return _PREFIX + hmac.new(_key(secret), _raw(body), hashlib.sha256).hexdigest()


def verify(
    body: bytes,
    signature_header: Optional[str],
    secret: Secret,
    tolerance: Union[int, float, timedelta, None] = DEFAULT_TOLERANCE,
    *,
    now: Optional[float] = None,
) -> dict:
    """Checks a webhook request and returns its decoded JSON body.

    ``body`` is the raw request body (bytes), ``signature_header`` the ``X-Ferrocast-Signature``
    header (``None`` when missing), ``secret`` the node's ``webhooks.secret``. The HMAC-SHA256
    of the body is compared in constant time; then the batch's ``time_ms`` must lie within
    ``tolerance`` (seconds or a ``timedelta``; ``None`` = no check) of ``now`` (Unix seconds,
    default the current time), which turns away replays of old requests.

    Raises :class:`InvalidSignature`, :class:`StaleWebhook` or :class:`MalformedWebhook` (all
    :class:`WebhookError`, a ``ValueError``). The signature is checked before the body is parsed.
    """
    raw = _raw(body)
    key = _key(secret)
    if not signature_header:
        raise InvalidSignature(f"no {SIGNATURE_HEADER} header")
    header = signature_header.strip()
    if not header.startswith(_PREFIX):
        raise InvalidSignature(f"{SIGNATURE_HEADER} must be 'sha256=<hex>'")
    given = header[len(_PREFIX):].strip().lower()
    want = hmac.new(key, raw, hashlib.sha256).hexdigest()
    # compare_digest on ASCII str is constant-time for equal lengths; a non-ASCII header can't match
    if not given.isascii() or not hmac.compare_digest(want, given):
        raise InvalidSignature("signature does not match the body (wrong secret or altered body)")
    try:
        payload = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError) as e:
        raise MalformedWebhook(f"body is not JSON: {e}") from None
    if not isinstance(payload, dict):
        raise MalformedWebhook("body is not a JSON object")
    sent = payload.get("time_ms")
    if not isinstance(sent, int) or isinstance(sent, bool):
        raise MalformedWebhook("no integer time_ms in the batch")
    if not isinstance(payload.get("events"), list):
        raise MalformedWebhook("no events list in the batch")
    if tolerance is not None:
        limit = tolerance.total_seconds() if isinstance(tolerance, timedelta) else float(tolerance)
        current = time.time() if now is None else now
        skew = abs(current * 1000.0 - sent) / 1000.0
        if skew > limit:
            raise StaleWebhook(f"batch time_ms is {skew:.0f}s from our clock (tolerance {limit:.0f}s)")
    return payload


# -- typed events ----------------------------------------------------------------------------------


def _dt(ms: int) -> datetime:
    return datetime.fromtimestamp(ms / 1000.0, tz=timezone.utc)


@dataclass(frozen=True)
class Event:
    """One event of a batch. ``id`` is unique per event and stays the same when the batch is
    sent again: deduplicate on it. ``raw`` is the event's JSON object as received."""

    id: str
    name: str
    time_ms: int
    raw: Mapping[str, Any] = field(repr=False, compare=False)

    @property
    def time(self) -> datetime:
        """``time_ms`` as an aware UTC ``datetime``."""
        return _dt(self.time_ms)


@dataclass(frozen=True)
class UserOnline(Event):
    """The user's first connection anywhere in the fleet."""

    user: str = ""


@dataclass(frozen=True)
class UserOffline(Event):
    """The user's last connection is gone (after ``offline_delay``; not sent when they came back)."""

    user: str = ""


@dataclass(frozen=True)
class ChannelOccupied(Event):
    """The channel's first subscriber anywhere."""

    channel: str = ""


@dataclass(frozen=True)
class ChannelVacated(Event):
    """The channel's last subscriber is gone (after ``vacate_delay``)."""

    channel: str = ""


@dataclass(frozen=True)
class ClientPublish(Event):
    """A client published to the channel (only when ``client_publish`` is in ``webhooks.events``)."""

    channel: str = ""
    user: str = ""
    client: str = ""
    data: Any = None


@dataclass(frozen=True)
class UnknownEvent(Event):
    """An event name this version of the library doesn't know (a newer node): keep or ignore it."""


_KINDS = {
    "user_online": (UserOnline, ("user",)),
    "user_offline": (UserOffline, ("user",)),
    "channel_occupied": (ChannelOccupied, ("channel",)),
    "channel_vacated": (ChannelVacated, ("channel",)),
    "client_publish": (ClientPublish, ("channel", "user", "client")),
}


@dataclass(frozen=True)
class Batch:
    """One webhook request: when and by which node it was sent, and its events in order."""

    time_ms: int
    node: str
    events: List[Event]

    @property
    def time(self) -> datetime:
        return _dt(self.time_ms)


def _event(obj: Any) -> Event:
    if not isinstance(obj, dict):
        raise MalformedWebhook("an event is not a JSON object")
    eid, name, ms = obj.get("id"), obj.get("name"), obj.get("time_ms")
    if not isinstance(eid, str) or not eid:
        raise MalformedWebhook("an event has no id")
    if not isinstance(name, str) or not name:
        raise MalformedWebhook(f"event {eid} has no name")
    if not isinstance(ms, int) or isinstance(ms, bool):
        raise MalformedWebhook(f"event {eid} has no integer time_ms")
    kind = _KINDS.get(name)
    if kind is None:
        return UnknownEvent(id=eid, name=name, time_ms=ms, raw=obj)
    cls, fields = kind
    values = {}
    for f in fields:
        v = obj.get(f, "")
        if not isinstance(v, str):
            raise MalformedWebhook(f"event {eid} ({name}): {f} is not a string")
        values[f] = v
    if cls is ClientPublish:
        values["data"] = obj.get("data")
    return cls(id=eid, name=name, time_ms=ms, raw=obj, **values)


def parse(payload: Union[Mapping[str, Any], bytes]) -> Batch:
    """The typed form of a batch: ``verify()``'s answer (or, in tests, raw JSON bytes — which
    skips the signature check: use ``verify`` on requests). Events are :class:`UserOnline`,
    :class:`UserOffline`, :class:`ChannelOccupied`, :class:`ChannelVacated`,
    :class:`ClientPublish`, or :class:`UnknownEvent` for names added later; each has ``id``,
    ``name``, ``time_ms``/``time`` and ``raw``. Raises :class:`MalformedWebhook`."""
    if isinstance(payload, (bytes, bytearray, memoryview)):
        try:
            payload = json.loads(bytes(payload).decode("utf-8"))
        except (ValueError, UnicodeDecodeError) as e:
            raise MalformedWebhook(f"body is not JSON: {e}") from None
    if not isinstance(payload, Mapping):
        raise MalformedWebhook("a batch is a JSON object")
    ms, events = payload.get("time_ms"), payload.get("events")
    if not isinstance(ms, int) or isinstance(ms, bool) or not isinstance(events, list):
        raise MalformedWebhook("a batch has time_ms and events")
    node = payload.get("node", "")
    return Batch(time_ms=ms, node=node if isinstance(node, str) else str(node), events=[_event(e) for e in events])
