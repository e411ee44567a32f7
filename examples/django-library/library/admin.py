from django.contrib import admin

from .models import Book, Loan, Notice, PendingDigest, ReaderPresence, Reservation, WebhookEvent

admin.site.register(Book)
admin.site.register(Loan)
admin.site.register(Reservation)
admin.site.register(Notice)
admin.site.register(ReaderPresence)
admin.site.register(PendingDigest)
admin.site.register(WebhookEvent)
