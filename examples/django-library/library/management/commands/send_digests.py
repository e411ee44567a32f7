"""Mails readers the notices they missed while offline (library/digests.py). Run it from cron
every few minutes (`*/5 * * * * manage.py send_digests`); run.sh runs it with --every."""

import time

from django.core.management.base import BaseCommand

from library.digests import send_due_digests


class Command(BaseCommand):
    help = "E-mail a digest of missed notices to readers offline for DIGEST_DELAY_SECONDS or more."

    def add_arguments(self, parser):
        parser.add_argument("--every", type=float, default=0, metavar="SECONDS",
                            help="keep running, once every SECONDS (default: once, for cron)")

    def handle(self, *args, every=0, verbosity=1, **options):
        while True:
            sent = send_due_digests()
            if verbosity > 1 or (sent and verbosity > 0):
                self.stdout.write(f"{sent} digest e-mail{'s' if sent != 1 else ''} sent")
            if not every:
                return
            time.sleep(every)
