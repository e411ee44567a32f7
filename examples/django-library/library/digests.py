"""A digest e-mail of the notices a reader missed while offline.

The node tells Django when a reader's last connection anywhere is gone (``user_offline`` webhook,
after its ``offline_delay``, so a page reload doesn't count) and when they are back
(``user_online``). Going offline opens a ``PendingDigest``; coming back deletes it.
``manage.py send_digests`` (cron, every few minutes) mails each reader offline for at least
``DIGEST_DELAY_SECONDS`` the notices recorded for them since they left and not mailed yet —
at most one e-mail per reader per run, nothing when nothing was missed.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta
from datetime import timezone as dt_timezone
from typing import Optional

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.mail import EmailMessage
from django.db import transaction
from django.utils import timezone
from ferrocast import webhooks

from .models import Notice, PendingDigest, ReaderPresence, WebhookEvent

log = logging.getLogger("library.digests")

EPOCH = datetime(1970, 1, 1, tzinfo=dt_timezone.utc)


def handle_once(event: webhooks.Event) -> bool:
    """Acts on ``event`` unless its id was seen before (returns False then). The id is stored in
    the same transaction as what the event changes: a failure leaves both undone, and the
    node's retry does it again."""
    with transaction.atomic():
        _, created = WebhookEvent.objects.get_or_create(id=event.id, defaults={"name": event.name, "time": event.time})
        if not created:
            log.info("webhook event %s (%s) already handled", event.id, event.name)
            return False
        if isinstance(event, (webhooks.UserOnline, webhooks.UserOffline)):
            _presence(event)
        return True


def _presence(event) -> None:
    user = get_user_model().objects.filter(pk=int(event.user)).first() if event.user.isdigit() else None
    if user is None:
        return
    online = isinstance(event, webhooks.UserOnline)
    presence, _ = ReaderPresence.objects.select_for_update().get_or_create(
        user=user, defaults={"online": False, "changed_at": EPOCH}
    )
    if event.time < presence.changed_at:  # older than what we know: a late delivery
        log.info("ignoring %s of %s at %s: presence changed at %s", event.name, user, event.time, presence.changed_at)
        return
    presence.online, presence.changed_at = online, event.time
    presence.save(update_fields=["online", "changed_at"])
    if online:
        PendingDigest.objects.filter(user=user).delete()
    else:
        # get_or_create: a second offline (no online between) keeps the earlier start
        PendingDigest.objects.get_or_create(
            user=user,
            defaults={
                "offline_since": event.time,
                "not_before": event.time + timedelta(seconds=settings.DIGEST_DELAY_SECONDS),
            },
        )


def missed(pending: PendingDigest, now: datetime):
    return Notice.objects.filter(
        user_id=pending.user_id, at__gte=pending.offline_since, at__lte=now, digested_at__isnull=True
    ).order_by("at", "id")


def digest_message(user, notices) -> EmailMessage:
    n = len(notices)
    lines = [f"Hello {user.get_username()},", "", "While you were away from the library:", ""]
    for notice in notices:
        lines.append(f"  • {timezone.localtime(notice.at):%d %b %H:%M}  {notice.text}")
    lines += ["", f"See your loans and reservations: {settings.SITE_URL}/", ""]
    return EmailMessage(
        subject=f"You missed {n} notice{'s' if n != 1 else ''} at the library",
        body="\n".join(lines),
        to=[user.email],
    )


def send_due_digests(now: Optional[datetime] = None) -> int:
    """Mails every reader offline past the delay what they missed; returns how many e-mails
    went out. Each digest is its own transaction: the notices are marked as mailed only when
    the e-mail was handed to the backend (an SMTP error leaves them for the next run)."""
    now = now or timezone.now()
    sent = 0
    for pending_id in PendingDigest.objects.filter(not_before__lte=now).values_list("id", flat=True):
        with transaction.atomic():
            pending = PendingDigest.objects.select_for_update().select_related("user").filter(id=pending_id).first()
            if pending is None:  # back online meanwhile
                continue
            notices = list(missed(pending, now).select_for_update())
            if not notices:
                continue
            if not pending.user.email:
                log.info("no e-mail address for %s: %d missed notices not mailed", pending.user, len(notices))
            else:
                digest_message(pending.user, notices).send()
                sent += 1
            Notice.objects.filter(id__in=[n.id for n in notices]).update(digested_at=now)
    # ids are only needed while the node may still retry a batch
    WebhookEvent.objects.filter(received_at__lt=now - timedelta(days=1)).delete()
    return sent
