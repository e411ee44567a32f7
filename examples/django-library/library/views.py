from __future__ import annotations

from datetime import timedelta

from django.conf import settings
from django.contrib.auth import get_user_model
from django.contrib.auth.decorators import login_required, user_passes_test
from django.db import transaction
from django.http import HttpResponseRedirect, JsonResponse
from django.shortcuts import get_object_or_404, render
from django.utils import timezone
from django.views.decorators.csrf import csrf_exempt
from django.views.decorators.http import require_GET, require_POST
from ferrocast import webhooks

from . import digests, realtime
from .models import Book, Loan, Reservation, availability, leaderboard


def _loan_json(loan: Loan) -> dict:
    return {
        "id": loan.id,
        "book": loan.book_id,
        "title": loan.book.title,
        "borrowed_at": loan.borrowed_at.isoformat(),
        "due_at": loan.due_at.isoformat(),
        "returned_at": loan.returned_at.isoformat() if loan.returned_at else None,
        "overdue": loan.returned_at is None and loan.due_at <= timezone.now(),
    }


def _state(user) -> dict:
    """What a page shows; the same JSON is embedded at first render and served by /state.json."""
    shelf = availability()
    books = [
        {"id": b.id, "title": b.title, "author": b.author, "copies": b.copies, "available": shelf[str(b.id)]}
        for b in Book.objects.all()
    ]
    state = {
        "books": books,
        "leaderboard": leaderboard(settings.LEADERBOARD_SIZE),
        "loans": [],
        "reservations": [],
        "loan_seconds": settings.LOAN_SECONDS,
    }
    if user.is_authenticated:
        state["loans"] = [_loan_json(l) for l in user.loans.filter(returned_at__isnull=True).select_related("book")]
        state["reservations"] = [
            {"id": r.id, "book": r.book_id, "title": r.book.title, "status": r.status}
            for r in user.reservations.filter(status__in=[Reservation.WAITING, Reservation.READY]).select_related("book")
        ]
    return state


def _page_config(request) -> dict:
    user = request.user
    User = get_user_model()
    if user.is_authenticated and user.is_staff:
        people = User.objects.all()
    elif user.is_authenticated:
        people = User.objects.filter(is_staff=True) | User.objects.filter(id=user.id)
    else:
        people = User.objects.none()
    return {
        "user": str(user.id) if user.is_authenticated else "",
        "username": user.get_username() if user.is_authenticated else "",
        "librarian": bool(user.is_authenticated and user.is_staff),
        "names": {str(u.id): u.get_username() for u in people},
        "channels": {
            "user": realtime.user_channel(user.id) if user.is_authenticated else None,
            "chat": realtime.chat_channel(user.id) if user.is_authenticated and not user.is_staff else None,
            "online": realtime.ONLINE if user.is_authenticated else None,
            "leaderboard": realtime.LEADERBOARD,
        },
    }


@require_GET
def index(request):
    if request.user.is_authenticated and request.user.is_staff:
        return HttpResponseRedirect("/librarian/")
    return render(request, "library/index.html", {"state": _state(request.user), "config": _page_config(request)})


@require_GET
@login_required
@user_passes_test(lambda u: u.is_staff)
def librarian(request):
    readers = get_user_model().objects.filter(is_staff=False).order_by("username")
    config = _page_config(request)
    config["readers"] = [
        {"id": str(r.id), "name": r.get_username(), "chat": realtime.chat_channel(r.id)} for r in readers
    ]
    loans = Loan.objects.filter(returned_at__isnull=True).select_related("book", "user")
    return render(
        request,
        "library/librarian.html",
        {
            "config": config,
            "state": _state(request.user),
            "loans": loans,
            # server-side presence through the API; the page keeps it live with the JS client
            "online": realtime.online_stats(),
        },
    )


@require_GET
def token(request):
    """The logged-in user's client token (anonymous when logged out), for the JS client's
    ``token``/``getToken``."""
    t = realtime.token_for(request.user)
    t["ws_url"] = realtime.ws_url(request)
    t["ttl"] = settings.FERROCAST["TOKEN_TTL"]
    return JsonResponse(t, headers={"Cache-Control": "no-store"})


@require_GET
def state(request):
    return JsonResponse(_state(request.user))


@require_GET
def online(request):
    stats = realtime.online_stats()
    return JsonResponse(stats if stats is not None else {"error": "ferrocast unavailable"}, status=200 if stats else 503)


def _error(message: str, status: int = 409) -> JsonResponse:
    return JsonResponse({"ok": False, "error": message}, status=status)


def _shelf_for(book: Book, user) -> int:
    """Copies this user may take now: copies held for readers whose reservation is ready don't
    count, except the user's own."""
    held = book.reservations.filter(status=Reservation.READY).exclude(user=user).count()
    return book.copies - book.active_loans().count() - held


@require_POST
@login_required
def borrow(request, book_id: int):
    user = request.user
    with transaction.atomic():
        book = get_object_or_404(Book.objects.select_for_update(), id=book_id)
        if book.active_loans().filter(user=user).exists():
            return _error(f"you already have 《{book.title}》")
        if _shelf_for(book, user) <= 0:
            return _error(f"no copy of 《{book.title}》 on the shelf — reserve it")
        now = timezone.now()
        loan = Loan.objects.create(user=user, book=book, due_at=now + timedelta(seconds=settings.LOAN_SECONDS))
        book.reservations.filter(user=user, status__in=[Reservation.WAITING, Reservation.READY]).update(
            status=Reservation.FULFILLED
        )
        # recorded now, published after the commit (publish_on_commit)
        realtime.notify(user.id, "borrowed", f"borrowed《{book.title}》", loan=loan.id, book=book.id,
                        due_at=loan.due_at.isoformat())
        realtime.record_overdue(loan)

        def after_commit():
            rid = realtime.schedule_overdue(loan)
            if rid:
                Loan.objects.filter(id=loan.id).update(reminder_id=rid)
            realtime.publish_leaderboard()

        transaction.on_commit(after_commit)
    return JsonResponse({"ok": True, "loan": _loan_json(loan)})


@require_POST
@login_required
def reserve(request, book_id: int):
    user = request.user
    with transaction.atomic():
        book = get_object_or_404(Book.objects.select_for_update(), id=book_id)
        if book.active_loans().filter(user=user).exists():
            return _error(f"you already have 《{book.title}》")
        if book.reservations.filter(user=user, status__in=[Reservation.WAITING, Reservation.READY]).exists():
            return _error(f"you already reserved 《{book.title}》")
        if _shelf_for(book, user) > 0:
            return _error(f"《{book.title}》 is on the shelf — borrow it")
        r = Reservation.objects.create(user=user, book=book)
        position = book.reservations.filter(status=Reservation.WAITING, id__lte=r.id).count()
        realtime.notify(user.id, "reserved", f"reserved《{book.title}》 (#{position} in line)",
                        book=book.id, reservation=r.id)
    return JsonResponse({"ok": True, "reservation": r.id, "position": position})


@require_POST
@login_required
def return_loan(request, loan_id: int):
    with transaction.atomic():
        loan = get_object_or_404(Loan.objects.select_for_update().select_related("book"), id=loan_id, user=request.user)
        if loan.returned_at is not None:
            return _error("already returned")
        loan.returned_at = timezone.now()
        loan.save(update_fields=["returned_at"])
        book = loan.book
        # The copy goes to the first reader in line, if any: their reservation becomes "ready".
        nxt = book.reservations.filter(status=Reservation.WAITING).order_by("created_at", "id").first()
        if nxt is not None:
            nxt.status = Reservation.READY
            nxt.save(update_fields=["status"])
        realtime.drop_overdue(loan)
        realtime.notify(loan.user_id, "returned", f"returned《{book.title}》", loan=loan.id, book=book.id)
        if nxt is not None:
            realtime.notify(nxt.user_id, "reservation_ready", f"《{book.title}》 is ready for you",
                            book=book.id, reservation=nxt.id)

        def after_commit():
            realtime.cancel_overdue(loan.reminder_id)
            realtime.publish_leaderboard()

        transaction.on_commit(after_commit)
    return JsonResponse({"ok": True, "loan": _loan_json(loan), "next_reservation": nxt.id if nxt else None})


@require_GET
@login_required
def loan_status(request, loan_id: int):
    """Lets a page check that an overdue reminder (scheduled at borrow time) still applies."""
    loan = get_object_or_404(Loan, id=loan_id, user=request.user)
    return JsonResponse(_loan_json(loan) | {"active": loan.returned_at is None})


@csrf_exempt  # the node signs its requests (X-Ferrocast-Signature); it has no CSRF token
@require_POST
def ferrocast_webhook(request):
    """The node's webhooks (``[webhooks] url`` in ferrocast.toml): user_online / user_offline
    drive the digest of missed notices (library/digests.py). Each event is handled once, in its
    own transaction, keyed by its id (a batch that got no 2xx comes again with the same ids)."""
    try:
        payload = webhooks.verify(
            request.body, request.headers.get(webhooks.SIGNATURE_HEADER), settings.FERROCAST["WEBHOOK_SECRET"]
        )
        batch = webhooks.parse(payload)
    except (webhooks.InvalidSignature, webhooks.StaleWebhook) as e:
        digests.log.warning("webhook refused: %s", e)
        return JsonResponse({"error": str(e)}, status=403)
    except webhooks.WebhookError as e:
        digests.log.warning("webhook refused: %s", e)
        return JsonResponse({"error": str(e)}, status=400)
    handled = duplicates = 0
    for event in batch.events:
        if digests.handle_once(event):
            handled += 1
        else:
            duplicates += 1
    return JsonResponse({"handled": handled, "duplicates": duplicates})
