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
