"""Creates the demo users and books (idempotent: run it as often as you like)."""

from django.contrib.auth import get_user_model
from django.core.management.base import BaseCommand

from library.models import Book

BOOKS = [
    ("Dune", "Frank Herbert", 1),
    ("The Left Hand of Darkness", "Ursula K. Le Guin", 2),
    ("Neuromancer", "William Gibson", 1),
    ("Snow Crash", "Neal Stephenson", 2),
    ("The Dispossessed", "Ursula K. Le Guin", 1),
    ("Foundation", "Isaac Asimov", 3),
    ("Hyperion", "Dan Simmons", 1),
    ("Solaris", "Stanisław Lem", 1),
]

# username, password, librarian?
USERS = [
    ("librarian", "librarian", True),
    ("alice", "alice", False),
    ("bob", "bob", False),
    ("carol", "carol", False),
]


class Command(BaseCommand):
    help = "Create the demo users (librarian/librarian, alice/alice, bob/bob, carol/carol) and books."

    def handle(self, *args, **options):
        User = get_user_model()
        for username, password, staff in USERS:
            user, created = User.objects.get_or_create(username=username)
            if created:
                user.set_password(password)
                user.is_staff = staff
                user.is_superuser = staff  # the librarian may also use /admin/
                user.save()
                self.stdout.write(f"user {username} / {password}" + (" (librarian)" if staff else ""))
            if not user.email:  # where digest e-mails go
                user.email = f"{username}@library.example"
                user.save(update_fields=["email"])
        for title, author, copies in BOOKS:
            _, created = Book.objects.get_or_create(title=title, defaults={"author": author, "copies": copies})
            if created:
                self.stdout.write(f"book 《{title}》 x{copies}")
        self.stdout.write(self.style.SUCCESS("seeded"))
