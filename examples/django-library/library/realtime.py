"""Everything the library tells browsers goes through this module, via the ferrocast server API
(clients/python). The database stays the source of truth: a node that is down makes a
notification go missing, never a borrow fail (errors are logged).

Notices are recorded (``Notice``) in the transaction that causes them and published with
``publish_on_commit``: a borrow that rolls back announces nothing. The recorded notices are what
the digest e-mail lists when a reader missed them (library/digests.py).

In a bigger deployment these functions are what you'd wrap in Celery tasks
(``@shared_task def notify(...)``): they take plain ids and strings.

Channels (their namespaces are configured in examples/django-library/ferrocast.toml):

| channel | who | what |
| --- | --- | --- |
| ``user:<id>`` | that user, every device | notices: borrowed, returned, reserved, reservation ready, overdue |
| ``chat:user-<id>`` | that user + librarians (private namespace, granted by the token's ``channels``) | chat with the librarian |
| ``online:library`` | every logged-in page | presence → the online counter |
| ``public:leaderboard`` | anyone, anonymous pages too | top books + copies on the shelf |
"""

from __future__ import annotations

import logging
from functools import lru_cache
from typing import Any, Optional
from urllib.parse import urlsplit

from django.conf import settings
from django.contrib.auth import get_user_model
from django.utils import timezone

from ferrocast import Client, FerrocastError, make_token

from . import models

log = logging.getLogger("library.realtime")

ONLINE = "online:library"
LEADERBOARD = "public:leaderboard"


def user_channel(user_id: Any) -> str:
    return f"user:{user_id}"


def chat_channel(user_id: Any) -> str:
    return f"chat:user-{user_id}"


@lru_cache(maxsize=None)
def client() -> Client:
    cfg = settings.FERROCAST
    return Client(cfg["API_URL"], cfg["API_KEY"], timeout=cfg["TIMEOUT"])


def _safely(what: str, fn, *args, **kwargs) -> Optional[dict]:
    try:
        return fn(*args, **kwargs)
    except FerrocastError as e:
        log.warning("ferrocast %s failed: %s", what, e)
        return None


# -- tokens ----------------------------------------------------------------------------------------


def ws_url(request) -> str:
    url = settings.FERROCAST["WS_URL"]
    if url:
        return url
    api = urlsplit(settings.FERROCAST["API_URL"])
    scheme = "wss" if api.scheme == "https" else "ws"
    host = request.get_host().rsplit(":", 1)[0] if request else api.hostname
    return f"{scheme}://{host}:{api.port or (443 if scheme == 'wss' else 80)}/ws"


def token_for(user) -> dict:
    """A client token for ``user`` (anonymous when not logged in): its user id, the chat channels
    it may join (the ``chat`` namespace is private), and its name for presence."""
    cfg = settings.FERROCAST
    if not user.is_authenticated:
        return {
            "token": make_token(cfg["TOKEN_SECRET"], "", ttl=cfg["TOKEN_TTL"]),
            "user": "",
            "channels": [],
        }
    if user.is_staff:  # librarians talk with every reader
        readers = get_user_model().objects.filter(is_staff=False).values_list("id", flat=True)
        channels = [chat_channel(i) for i in readers]
    else:
        channels = [chat_channel(user.id)]
    info = {"name": user.get_username(), "librarian": bool(user.is_staff)}
    return {
        "token": make_token(cfg["TOKEN_SECRET"], user.id, ttl=cfg["TOKEN_TTL"], channels=channels, info=info),
        "user": str(user.id),
        "channels": channels,
    }


# -- publications ----------------------------------------------------------------------------------


def notify(user_id: Any, kind: str, text: str, **extra: Any) -> "models.Notice":
    """A notice on every device of the user, recorded now and published once the surrounding
    transaction commits (at once outside one; nothing if it rolls back). A node that is down is
    logged on the ``ferrocast`` logger (``robust=True``), it doesn't fail the request."""
    data = {"type": kind, "text": text, **extra}
    notice = models.Notice.objects.create(user_id=user_id, kind=kind, text=text, data=data, at=timezone.now())
    client().publish_on_commit(user_channel(user_id), data, robust=True)
    return notice


def overdue_data(loan: "models.Loan") -> dict:
    return {
        "type": "overdue",
        "text": f"《{loan.book.title}》 is due — please bring it back",
        "loan": loan.id,
        "book": loan.book_id,
    }


def record_overdue(loan: "models.Loan") -> None:
    """The overdue reminder as a notice dated at the due time (the node delivers it then, see
    ``schedule_overdue``), so that a reader offline at that time finds it in their digest."""
    data = overdue_data(loan)
    models.Notice.objects.create(user_id=loan.user_id, kind="overdue", text=data["text"], data=data,
                                 at=loan.due_at, loan=loan)


def drop_overdue(loan: "models.Loan") -> None:
    """The book came back before its due time: its reminder won't be delivered, nor digested."""
    loan.notices.filter(kind="overdue", at__gt=timezone.now()).delete()


def schedule_overdue(loan: "models.Loan") -> Optional[str]:
    """The overdue reminder, delivered by the node itself at the due time (``publish_at``). A book
    returned early cancels it (``cancel_overdue``); should the cancel lose the race with the due
    time, the page still asks /loans/<id>.json whether the loan is open before showing it. The
    idempotency key makes a retried call schedule it once. It needs the scheduled id back, so
    it runs in an ``on_commit`` callback rather than through ``publish_on_commit``."""
    data = overdue_data(loan)
    res = _safely(
        "publish_at",
        client().publish_at,
        user_channel(loan.user_id),
        data,
        loan.due_at,
        idempotency_key=f"overdue-loan-{loan.id}-{loan.due_at.timestamp():.0f}",
    )
    return res.get("scheduled") if res else None


def cancel_overdue(reminder_id: Optional[str]) -> None:
    """The book came back: its overdue reminder must not arrive. 404 = already delivered."""
    if not reminder_id:
        return
    try:
        client().cancel(reminder_id)
    except FerrocastError as e:
        if e.status != 404:
            log.warning("ferrocast cancel failed: %s", e)


def leaderboard_payload() -> dict:
    return {
        "type": "leaderboard",
        "leaderboard": models.leaderboard(settings.LEADERBOARD_SIZE),
        "availability": models.availability(),
        "at": timezone.now().isoformat(timespec="seconds"),
    }


def publish_leaderboard() -> None:
    """Top books and shelf counts to every page, anonymous ones included. Sent with
    ``broadcast`` so more channels (a kiosk screen, a per-branch channel) can be added to the list."""
    res = _safely("broadcast", client().broadcast, [LEADERBOARD], leaderboard_payload())
    for r in res or []:
        if "error" in r:
            log.warning("leaderboard broadcast: %s", r["error"])


def online_stats() -> Optional[dict]:
    """``{"clients", "users"}`` of the logged-in pages open right now (presence)."""
    return _safely("presence_stats", client().presence_stats, ONLINE)
