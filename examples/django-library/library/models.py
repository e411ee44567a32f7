from django.conf import settings
from django.db import models
from django.db.models import Count, Q


class Book(models.Model):
    title = models.CharField(max_length=200)
    author = models.CharField(max_length=200)
    copies = models.PositiveIntegerField(default=1)

    class Meta:
        ordering = ["title"]

    def __str__(self) -> str:
        return self.title

    def active_loans(self):
        return self.loans.filter(returned_at__isnull=True)

    @property
    def available(self) -> int:
        return max(0, self.copies - self.active_loans().count())


class Loan(models.Model):
    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="loans")
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="loans")
    borrowed_at = models.DateTimeField(auto_now_add=True)
    due_at = models.DateTimeField()
    returned_at = models.DateTimeField(null=True, blank=True)
    # id of the overdue reminder scheduled on the ferrocast node (publish_at)
    reminder_id = models.CharField(max_length=64, blank=True)

    class Meta:
        ordering = ["-borrowed_at", "-id"]

    @property
    def active(self) -> bool:
        return self.returned_at is None

    def __str__(self) -> str:
        return f"{self.user} — {self.book}"


class Reservation(models.Model):
    WAITING, READY, FULFILLED, CANCELLED = "waiting", "ready", "fulfilled", "cancelled"
    STATUSES = [(s, s) for s in (WAITING, READY, FULFILLED, CANCELLED)]

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="reservations")
    book = models.ForeignKey(Book, on_delete=models.CASCADE, related_name="reservations")
    created_at = models.DateTimeField(auto_now_add=True)
    status = models.CharField(max_length=10, choices=STATUSES, default=WAITING)

    class Meta:
        ordering = ["created_at", "id"]

    def __str__(self) -> str:
        return f"{self.user} ⇢ {self.book} ({self.status})"


def leaderboard(size: int):
    """The most borrowed books of all time: [{"id", "title", "loans"}]."""
    rows = (
        Book.objects.annotate(n=Count("loans"))
        .filter(n__gt=0)
        .order_by("-n", "title")[:size]
    )
    return [{"id": b.id, "title": b.title, "loans": b.n} for b in rows]


def availability():
    """{book_id: copies on the shelf} for every book."""
    rows = Book.objects.annotate(out=Count("loans", filter=Q(loans__returned_at__isnull=True)))
    return {str(b.id): max(0, b.copies - b.out) for b in rows}


# -- what readers missed while offline (webhooks from the node + a digest e-mail) ------------------


class Notice(models.Model):
    """A notice on the reader's ``user:<id>`` channel, recorded in the transaction that caused it
    (published after its commit with ``publish_on_commit``). ``at`` is when the reader gets it:
    now, or the due time of an overdue reminder that the node delivers itself (``publish_at``).
    The digest e-mail lists the ones that came while the reader was offline."""

    user = models.ForeignKey(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="notices")
    kind = models.CharField(max_length=32)
    text = models.CharField(max_length=300)
    data = models.JSONField(default=dict)
    at = models.DateTimeField(db_index=True)
    # the loan of an overdue reminder (an early return deletes the reminder's notice)
    loan = models.ForeignKey(Loan, null=True, blank=True, on_delete=models.CASCADE, related_name="notices")
    digested_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["at", "id"]

    def __str__(self) -> str:
        return f"{self.user} · {self.text}"


class ReaderPresence(models.Model):
    """Online or not, anywhere in the fleet, as the node's user_online/user_offline webhooks say.
    ``changed_at`` is the time of the event that set it: an older event (a late retry) is ignored."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="presence")
    online = models.BooleanField(default=False)
    changed_at = models.DateTimeField()

    def __str__(self) -> str:
        return f"{self.user} {'online' if self.online else 'offline'} since {self.changed_at:%H:%M:%S}"


class PendingDigest(models.Model):
    """A reader who went offline: ``send_digests`` mails them the notices they missed since
    ``offline_since``, once ``not_before`` has passed (``DIGEST_DELAY_SECONDS``: a reader who is
    back by then sees them on the page). Deleted when the reader comes back online."""

    user = models.OneToOneField(settings.AUTH_USER_MODEL, on_delete=models.CASCADE, related_name="pending_digest")
    offline_since = models.DateTimeField()
    not_before = models.DateTimeField(db_index=True)

    def __str__(self) -> str:
        return f"{self.user} offline since {self.offline_since:%H:%M:%S}"


class WebhookEvent(models.Model):
    """Ids of the webhook events handled: the node sends a batch again (same ids) until it gets a
    2xx, so each event is acted on once. ``send_digests`` prunes the ones older than a day."""

    id = models.CharField(max_length=100, primary_key=True)
    name = models.CharField(max_length=32)
    time = models.DateTimeField()
    received_at = models.DateTimeField(auto_now_add=True, db_index=True)

    def __str__(self) -> str:
        return f"{self.name} {self.id}"
