"""The library's ferrocast side against a real node: what each action publishes, read back with
the server API (every namespace the app publishes to keeps history).

    .venv/bin/python manage.py test library      (examples/django-library; run.sh venv makes .venv)
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import tempfile
import time

from ferrocast import FerrocastError
import urllib.request
from pathlib import Path

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core.management import call_command
from django.test import TestCase, override_settings

from ferrocast import Client, decode_token

from . import realtime
from .models import Book, Loan, Reservation

EXAMPLE = Path(__file__).resolve().parent.parent
REPO = EXAMPLE.parent.parent
_node = {}


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _binary() -> Path:
    if os.environ.get("FERROCAST_BIN"):
        return Path(os.environ["FERROCAST_BIN"])
    found = [p for p in (REPO / "target/release/ferrocast", REPO / "target/debug/ferrocast") if p.exists()]
    if not found:
        raise RuntimeError("no ferrocast binary: run `cargo build` in the repository root")
    return max(found, key=lambda p: p.stat().st_mtime)


def setUpModule():
    public, admin = _free_port(), _free_port()
    log = tempfile.NamedTemporaryFile(prefix="ferrocast-django-", suffix=".log", delete=False)
    env = {
        **os.environ,
        "FERROCAST_LISTEN__PUBLIC": f"127.0.0.1:{public}",
        "FERROCAST_LISTEN__ADMIN": f"127.0.0.1:{admin}",
    }
    proc = subprocess.Popen(
        [str(_binary()), "serve", "--config", str(EXAMPLE / "ferrocast.toml")], stdout=log, stderr=subprocess.STDOUT, env=env
    )
    deadline = time.monotonic() + 20
    while True:
        try:
            urllib.request.urlopen(f"http://127.0.0.1:{admin}/health/ready", timeout=1)
            break
        except OSError:
            if proc.poll() is not None or time.monotonic() > deadline:
                proc.kill()
                raise RuntimeError("ferrocast did not start: " + Path(log.name).read_text())
            time.sleep(0.05)
    _node.update(proc=proc, url=f"http://127.0.0.1:{public}", log=log.name)


def tearDownModule():
    proc = _node.get("proc")
    if proc:
        proc.terminate()
        proc.wait(10)
        os.unlink(_node["log"])


class LibraryRealtimeTests(TestCase):
    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.settings_override = override_settings(
            FERROCAST={**settings.FERROCAST, "API_URL": _node["url"]}, LOAN_SECONDS=2
        )
        cls.settings_override.enable()
        realtime.client.cache_clear()
        cls.api = Client(_node["url"], settings.FERROCAST["API_KEY"])

    @classmethod
    def tearDownClass(cls):
        cls.settings_override.disable()
        realtime.client.cache_clear()
        cls.api.close()
        super().tearDownClass()

    def setUp(self):
        call_command("seed_library", stdout=open(os.devnull, "w"))
        User = get_user_model()
        self.alice = User.objects.get(username="alice")
        self.bob = User.objects.get(username="bob")
        self.librarian = User.objects.get(username="librarian")
        self.dune = Book.objects.get(title="Dune")
        # streams outlive test transactions (ids repeat): remember where each channel is now
        self.marks = {}
        for u in (self.alice, self.bob):
            ch = realtime.user_channel(u.id)
            self.marks[ch] = self.api.history(ch)["offset"]

    def notices(self, user, wait_for=0, timeout=5.0):
        """The data published to the user's channel since setUp (waits for at least `wait_for`)."""
        ch = realtime.user_channel(user.id)
        deadline = time.monotonic() + timeout
        while True:
            h = self.api.history(ch)
            got = [p["data"] for p in h["publications"] if p["offset"] > self.marks[ch]]
            if len(got) >= wait_for or time.monotonic() > deadline:
                return got
            time.sleep(0.05)

    def post(self, user, url):
        self.client.force_login(user)
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(url)
        return r, r.json()

    def test_borrow_notifies_every_device_and_schedules_the_reminder(self):
        before = time.time()
        r, body = self.post(self.alice, f"/books/{self.dune.id}/borrow")
        self.assertEqual(r.status_code, 200, body)
        (notice,) = self.notices(self.alice, 1)
        self.assertEqual(notice["type"], "borrowed")
        self.assertEqual(notice["text"], "borrowed《Dune》")
        loan = Loan.objects.get(id=body["loan"]["id"])
        self.assertTrue(loan.reminder_id, "publish_at gave no scheduled id")
        # the reminder is published by the node at the due time (LOAN_SECONDS=2)
        got = self.notices(self.alice, 2, timeout=6)
        self.assertEqual(got[1]["type"], "overdue")
        self.assertEqual(got[1]["loan"], loan.id)
        self.assertGreaterEqual(time.time(), before + 2 - 0.05)
        # the leaderboard went to the public channel
        board = self.api.history(realtime.LEADERBOARD)["publications"][-1]["data"]
        self.assertEqual(board["leaderboard"][0]["title"], "Dune")
        self.assertEqual(board["availability"][str(self.dune.id)], 0)

    def test_an_early_return_cancels_the_overdue_reminder(self):
        r, body = self.post(self.alice, f"/books/{self.dune.id}/borrow")
        loan = Loan.objects.get(id=body["loan"]["id"])
        self.post(self.alice, f"/loans/{loan.id}/return")
        time.sleep(2.5)  # past the due time (LOAN_SECONDS=2)
        kinds = [n["type"] for n in self.notices(self.alice, 2)]
        self.assertEqual(kinds, ["borrowed", "returned"], "no overdue reminder after an early return")
        with self.assertRaises(FerrocastError) as e:
            self.api.cancel(loan.reminder_id)
        self.assertEqual(e.exception.status, 404)

    def test_return_makes_the_next_reservation_ready(self):
        self.post(self.alice, f"/books/{self.dune.id}/borrow")
        r, body = self.post(self.bob, f"/books/{self.dune.id}/borrow")
        self.assertEqual(r.status_code, 409)
        r, body = self.post(self.bob, f"/books/{self.dune.id}/reserve")
        self.assertEqual((r.status_code, body["position"]), (200, 1))
        self.assertEqual(self.notices(self.bob, 1)[0]["type"], "reserved")
        loan = Loan.objects.get(user=self.alice, book=self.dune)
        r, body = self.post(self.alice, f"/loans/{loan.id}/return")
        self.assertEqual(body["next_reservation"], Reservation.objects.get(user=self.bob).id)
        bob_notices = self.notices(self.bob, 2)
        self.assertEqual(bob_notices[1]["type"], "reservation_ready")
        self.assertEqual(bob_notices[1]["text"], "《Dune》 is ready for you")
        self.assertEqual(self.notices(self.alice, 2)[1]["text"], "returned《Dune》")
        # the copy is held for bob: carol can't take it, bob can
        carol = get_user_model().objects.get(username="carol")
        self.assertEqual(self.post(carol, f"/books/{self.dune.id}/borrow")[0].status_code, 409)
        self.assertEqual(self.post(self.bob, f"/books/{self.dune.id}/borrow")[0].status_code, 200)
        self.assertEqual(Reservation.objects.get(user=self.bob).status, Reservation.FULFILLED)
        # the overdue check the page makes before showing a reminder
        self.client.force_login(self.alice)
        self.assertFalse(self.client.get(f"/loans/{loan.id}.json").json()["active"])

    def test_tokens(self):
        self.client.force_login(self.alice)
        t = self.client.get("/token.json").json()
        claims = decode_token(t["token"], settings.FERROCAST["TOKEN_SECRET"])
        self.assertEqual(claims["sub"], str(self.alice.id))
        self.assertEqual(claims["channels"], [f"chat:user-{self.alice.id}"])
        self.assertEqual(claims["info"], {"name": "alice", "librarian": False})
        self.assertTrue(t["ws_url"].startswith("ws://") and t["ws_url"].endswith("/ws"))
        self.client.force_login(self.librarian)
        claims = decode_token(self.client.get("/token.json").json()["token"])
        readers = get_user_model().objects.filter(is_staff=False)
        self.assertEqual(sorted(claims["channels"]), sorted(f"chat:user-{u.id}" for u in readers))
        self.client.logout()
        self.assertEqual(decode_token(self.client.get("/token.json").json()["token"])["sub"], "")

    def test_pages_render(self):
        self.assertContains(self.client.get("/"), "Most borrowed")
        self.client.force_login(self.alice)
        page = self.client.get("/")
        self.assertContains(page, "Ask the librarian")
        config = json.loads(page.content.split(b'id="library-config" type="application/json">')[1].split(b"</script>")[0])
        self.assertEqual(config["channels"]["chat"], f"chat:user-{self.alice.id}")
        self.client.force_login(self.librarian)
        self.assertRedirects(self.client.get("/"), "/librarian/")
        self.assertContains(self.client.get("/librarian/"), "presence_stats")
        self.assertEqual(self.client.get("/online.json").json(), {"clients": 0, "users": 0})


@override_settings(FERROCAST={**settings.FERROCAST, "API_URL": "http://127.0.0.1:9", "TIMEOUT": 0.5})
class NodeDownTests(TestCase):
    """The database is the source of truth: a node that is down loses notices, not borrows."""

    def setUp(self):
        realtime.client.cache_clear()
        call_command("seed_library", stdout=open(os.devnull, "w"))

    def tearDown(self):
        realtime.client.cache_clear()

    def test_borrow_works_without_the_node(self):
        alice = get_user_model().objects.get(username="alice")
        self.client.force_login(alice)
        with self.assertLogs("library.realtime", "WARNING"):
            with self.captureOnCommitCallbacks(execute=True):
                r = self.client.post(f"/books/{Book.objects.get(title='Dune').id}/borrow")
        self.assertEqual(r.status_code, 200)
        self.assertEqual(Loan.objects.filter(user=alice).count(), 1)
        with self.assertLogs("library.realtime", "WARNING"):
            self.assertEqual(self.client.get("/online.json").status_code, 503)
