from django.urls import path

from . import views

urlpatterns = [
    path("", views.index, name="index"),
    path("librarian/", views.librarian, name="librarian"),
    path("token.json", views.token, name="token"),
    path("state.json", views.state, name="state"),
    path("online.json", views.online, name="online"),
    path("books/<int:book_id>/borrow", views.borrow, name="borrow"),
    path("books/<int:book_id>/reserve", views.reserve, name="reserve"),
    path("loans/<int:loan_id>/return", views.return_loan, name="return"),
    path("loans/<int:loan_id>.json", views.loan_status, name="loan-status"),
    path("ferrocast/webhook/", views.ferrocast_webhook, name="ferrocast-webhook"),
]
