"""The library's ferrocast side against a real node: what each action publishes, read back with
the server API (every namespace the app publishes to keeps history).

    .venv/bin/python manage.py test library      (examples/django-library; run.sh venv makes .venv)
"""

from __future__ import annotations

import base64
import json
import os
import socket
import subprocess
import tempfile
import time
import urllib.request
import uuid
from datetime import timedelta
from pathlib import Path
from unittest import mock

from django.conf import settings
from django.contrib.auth import get_user_model
from django.core import mail
from django.core.management import call_command
from django.db import DatabaseError, transaction
from django.test import Client as DjangoClient
from django.core.servers.basehttp import WSGIServer
from django.test import LiveServerTestCase, TestCase, override_settings
from django.test.testcases import LiveServerThread
from django.utils import timezone

from ferrocast import Client, FerrocastError, decode_token, make_token, webhooks

from . import realtime
from .models import Book, Loan, Notice, PendingDigest, ReaderPresence, Reservation, WebhookEvent

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
    # the node's webhooks go to the live server of WebhookLiveTests (on this port)
    hook_port = _free_port()
    log = tempfile.NamedTemporaryFile(prefix="ferrocast-django-", suffix=".log", delete=False)
    env = {
        **os.environ,
        "FERROCAST_LISTEN__PUBLIC": f"127.0.0.1:{public}",
        "FERROCAST_LISTEN__ADMIN": f"127.0.0.1:{admin}",
        "FERROCAST_WEBHOOKS__URL": f"http://127.0.0.1:{hook_port}/ferrocast/webhook/",
        "FERROCAST_WEBHOOKS__OFFLINE_DELAY": "300ms",
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
    _node.update(proc=proc, url=f"http://127.0.0.1:{public}", public=public, hook_port=hook_port, log=log.name)
    WebhookLiveTests.port = hook_port


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
        with self.assertLogs("library.realtime", "WARNING"), self.assertLogs("ferrocast", "WARNING") as logs:
            with self.captureOnCommitCallbacks(execute=True):
                r = self.client.post(f"/books/{Book.objects.get(title='Dune').id}/borrow")
        # the notice went through publish_on_commit(robust=True): logged, not raised
        self.assertIn(f"publish to user:{alice.id} after commit failed", logs.output[0])
        self.assertEqual(r.status_code, 200)
        self.assertEqual(Loan.objects.filter(user=alice).count(), 1)
        with self.assertLogs("library.realtime", "WARNING"):
            self.assertEqual(self.client.get("/online.json").status_code, 503)


# -- webhooks, missed notices and the digest e-mail ------------------------------------------------


def _ms(when=None) -> int:
    return int((when or timezone.now()).timestamp() * 1000)


def _event(name: str, user, when=None, id=None) -> dict:
    return {"id": id or uuid.uuid4().hex, "name": name, "user": str(user.id), "time_ms": _ms(when)}


class WebhookDigestTests(TestCase):
    """The webhook endpoint (signed requests as the node sends them) and the digest of missed
    notices, with notices published to the real node."""

    @classmethod
    def setUpClass(cls):
        super().setUpClass()
        cls.settings_override = override_settings(
            FERROCAST={**settings.FERROCAST, "API_URL": _node["url"]}, DIGEST_DELAY_SECONDS=0, LOAN_SECONDS=2
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
        self.dune = Book.objects.get(title="Dune")
        self.neuromancer = Book.objects.get(title="Neuromancer")
        # the node checks no CSRF token: the endpoint must not want one
        self.hook = DjangoClient(enforce_csrf_checks=True)

    def deliver(self, *events, secret=None, time_ms=None, signature=None, body=None):
        body = body or json.dumps({"time_ms": time_ms or _ms(), "node": "test-node", "events": list(events)}).encode()
        if signature is None:
            signature = webhooks.sign(body, secret or settings.FERROCAST["WEBHOOK_SECRET"])
        return self.hook.post("/ferrocast/webhook/", body, content_type="application/json",
                              HTTP_X_FERROCAST_SIGNATURE=signature)

    def post(self, user, url):
        self.client.force_login(user)
        with self.captureOnCommitCallbacks(execute=True):
            r = self.client.post(url)
        self.assertLess(r.status_code, 500)
        return r

    def digests(self):
        with self.captureOnCommitCallbacks(execute=True):
            call_command("send_digests", stdout=open(os.devnull, "w"))
        return mail.outbox

    def test_webhook_signature_rejected_when_wrong_or_old(self):
        offline = _event("user_offline", self.alice)
        with self.assertLogs("library.digests", "WARNING") as logs:
            for r in (
                self.deliver(offline, secret="not-the-secret"),
                self.deliver(offline, signature=""),
                self.deliver(offline, signature="sha256=" + "0" * 64),
                self.deliver(offline, time_ms=_ms(timezone.now() - timedelta(minutes=6))),  # a replay
                self.deliver(offline, time_ms=_ms(timezone.now() + timedelta(minutes=6))),
            ):
                self.assertEqual(r.status_code, 403, r.content)
            # altered after signing
            body = json.dumps({"time_ms": _ms(), "node": "n", "events": [offline]}).encode()
            sig = webhooks.sign(body, settings.FERROCAST["WEBHOOK_SECRET"])
            altered = body.replace(b"user_offline", b"user_online_")
            self.assertEqual(self.deliver(body=altered, signature=sig).status_code, 403)
            # signed but not a batch
            self.assertEqual(self.deliver(body=b'{"hello": 1}').status_code, 400)
        self.assertEqual(len(logs.output), 7)
        self.assertIn("360s from our clock", logs.output[3])
        self.assertEqual(self.hook.get("/ferrocast/webhook/").status_code, 405)
        self.assertFalse(WebhookEvent.objects.exists())
        self.assertFalse(ReaderPresence.objects.exists() or PendingDigest.objects.exists())
        # and the right one is accepted
        r = self.deliver(offline)
        self.assertEqual((r.status_code, r.json()), (200, {"handled": 1, "duplicates": 0}))
        self.assertFalse(ReaderPresence.objects.get(user=self.alice).online)

    def test_user_offline_gets_a_digest_of_the_missed_notices(self):
        # before going offline: bob has Dune, alice reserves it and borrows Neuromancer (due in 2 s)
        self.post(self.bob, f"/books/{self.dune.id}/borrow")
        self.post(self.alice, f"/books/{self.dune.id}/reserve")
        self.post(self.alice, f"/books/{self.neuromancer.id}/borrow")
        self.assertEqual(self.deliver(_event("user_online", self.alice)).status_code, 200)
        self.assertEqual(self.deliver(_event("user_offline", self.alice)).status_code, 200)
        self.assertEqual(self.digests(), [], "nothing missed yet")
        # while she is away: Dune comes back (ready for her) and Neuromancer falls due
        loan = Loan.objects.get(user=self.bob, book=self.dune)
        self.post(self.bob, f"/loans/{loan.id}/return")
        due = Loan.objects.get(user=self.alice).due_at
        time.sleep(max(0.0, (due - timezone.now()).total_seconds()) + 0.1)
        (email,) = self.digests()
        self.assertEqual(email.to, ["alice@library.example"])
        self.assertEqual(email.subject, "You missed 2 notices at the library")
        self.assertIn("《Dune》 is ready for you", email.body)
        self.assertIn("《Neuromancer》 is due — please bring it back", email.body)
        self.assertLess(email.body.index("ready for you"), email.body.index("is due"))
        for seen in ("reserved《Dune》", "borrowed《Neuromancer》"):  # she was online for those
            self.assertNotIn(seen, email.body)
        # the notice really went to her channel (recorded and published after the commit)
        pubs = self.api.history(realtime.user_channel(self.alice.id))["publications"]
        self.assertIn("《Dune》 is ready for you", [p["data"]["text"] for p in pubs])
        # mailed once; bob (never reported offline) gets nothing
        self.assertEqual(len(self.digests()), 1)
        # a new notice while she is still away: the next run mails just that one
        self.post(self.alice, f"/loans/{Loan.objects.get(user=self.alice).id}/return")
        self.assertEqual(len(self.digests()), 2)
        self.assertEqual(mail.outbox[1].subject, "You missed 1 notice at the library")
        self.assertIn("returned《Neuromancer》", mail.outbox[1].body)

    def test_user_online_resets_and_the_delay_is_respected(self):
        with override_settings(DIGEST_DELAY_SECONDS=60):
            self.deliver(_event("user_offline", self.alice))
        realtime.notify(self.alice.id, "reservation_ready", "《Dune》 is ready for you")
        self.assertEqual(self.digests(), [], "offline for less than DIGEST_DELAY_SECONDS")
        self.deliver(_event("user_online", self.alice))
        self.assertTrue(ReaderPresence.objects.get(user=self.alice).online)
        self.assertFalse(PendingDigest.objects.exists())
        with override_settings(DIGEST_DELAY_SECONDS=0):
            self.assertEqual(self.digests(), [], "back online: she sees it on the page")

    def test_a_duplicate_delivery_is_handled_once(self):
        offline = _event("user_offline", self.alice, when=timezone.now() - timedelta(seconds=5))
        first = self.deliver(offline)
        with self.assertLogs("library.digests", "INFO"):
            again = self.deliver(offline)  # the node retries a batch it got no 2xx for: same ids
        self.assertEqual(first.json(), {"handled": 1, "duplicates": 0})
        self.assertEqual(again.json(), {"handled": 0, "duplicates": 1})
        realtime.notify(self.alice.id, "reservation_ready", "《Dune》 is ready for you")
        self.assertEqual(len(self.digests()), 1)
        # she comes back; then the old offline event arrives once more (a retried batch with
        # a newer event too): it must not make her offline again nor mail her twice
        self.deliver(_event("user_online", self.alice))
        stale = _event("user_offline", self.alice, when=timezone.now() - timedelta(seconds=2))
        with self.assertLogs("library.digests", "INFO") as logs:
            r = self.deliver(offline, stale)
        self.assertIn("already handled", logs.output[0])
        self.assertIn("ignoring user_offline", logs.output[1])
        self.assertEqual(r.json(), {"handled": 1, "duplicates": 1})
        self.assertTrue(ReaderPresence.objects.get(user=self.alice).online, "an older event doesn't win")
        realtime.notify(self.alice.id, "returned", "returned《Dune》")
        self.assertEqual(len(self.digests()), 1)
        self.assertEqual(WebhookEvent.objects.count(), 3)

    def test_rollback_publishes_no_notice(self):
        ch = realtime.user_channel(self.alice.id)
        mark = self.api.history(ch)["offset"]
        self.deliver(_event("user_offline", self.alice))
        # a borrow that fails after its notice was recorded: 500, nothing published or kept
        self.client.force_login(self.alice)
        with self.captureOnCommitCallbacks(execute=True) as callbacks:
            with mock.patch.object(realtime, "record_overdue", side_effect=DatabaseError("disk full")):
                with self.assertRaises(DatabaseError), self.assertLogs("django.request", "ERROR"):
                    self.client.post(f"/books/{self.dune.id}/borrow")
            # and a rolled-back block inside a transaction that commits
            with transaction.atomic():
                try:
                    with transaction.atomic():
                        realtime.notify(self.alice.id, "borrowed", "borrowed《Nothing》")
                        raise RuntimeError("changed my mind")
                except RuntimeError:
                    pass
        self.assertEqual(callbacks, [])
        self.assertFalse(Loan.objects.exists() or Notice.objects.exists())
        time.sleep(0.3)
        self.assertEqual(self.api.history(ch)["offset"], mark)
        self.assertEqual(self.digests(), [])


def _ws_open(port: int, token: str) -> socket.socket:
    """A bare WebSocket connection (the handshake only: the reader is online while it is open)."""
    s = socket.create_connection(("127.0.0.1", port), timeout=5)
    key = base64.b64encode(os.urandom(16)).decode()
    s.sendall(
        f"GET /ws?token={token} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\n"
        f"Connection: Upgrade\r\nSec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\n\r\n".encode()
    )
    head = b""
    while b"\r\n\r\n" not in head:
        chunk = s.recv(4096)
        if not chunk:
            raise ConnectionError(f"closed during the handshake: {head!r}")
        head += chunk
    if b" 101 " not in head.split(b"\r\n", 1)[0]:
        raise ConnectionError(head.split(b"\r\n", 1)[0].decode())
    return s


class _OneRequestPerConnection(WSGIServer):
    """Requests handled in the server thread itself, each answered with ``Connection: close``
    (Django does that for a server without threads): no thread left holding the node's
    keep-alive connection, and the test database, when the test ends."""

    def __init__(self, *args, connections_override=None, **kwargs):
        super().__init__(*args, **kwargs)


class _LiveServerThread(LiveServerThread):
    server_class = _OneRequestPerConnection


class WebhookLiveTests(LiveServerTestCase):
    """The real node sends its webhooks to this live Django server (FERROCAST_WEBHOOKS__URL,
    offline_delay 300ms): a reader's page connects and goes away, Django learns it from the
    node, and what is published meanwhile (after real commits) ends up in the digest."""

    port = 0  # set by setUpModule: the port the node's [webhooks] url points at
    server_thread_class = _LiveServerThread

    def setUp(self):
        call_command("seed_library", stdout=open(os.devnull, "w"))
        self.alice = get_user_model().objects.get(username="alice")
        self.settings_override = override_settings(
            FERROCAST={**settings.FERROCAST, "API_URL": _node["url"]}, DIGEST_DELAY_SECONDS=0
        )
        self.settings_override.enable()
        realtime.client.cache_clear()
        self.api = Client(_node["url"], settings.FERROCAST["API_KEY"])

    def tearDown(self):
        self.settings_override.disable()
        realtime.client.cache_clear()
        self.api.close()

    def wait_until(self, pred, what, timeout=10.0):
        deadline = time.monotonic() + timeout
        while not pred():
            if time.monotonic() > deadline:
                self.fail(f"timed out waiting for {what}; node log:\n" + Path(_node["log"]).read_text()[-3000:])
            time.sleep(0.05)

    def test_reader_goes_offline_and_gets_the_digest(self):
        token = make_token(settings.FERROCAST["TOKEN_SECRET"], self.alice.id, ttl=60)
        page = _ws_open(_node["public"], token)
        presence = ReaderPresence.objects.filter(user=self.alice, online=True)
        self.wait_until(presence.exists, "the user_online webhook")
        self.assertFalse(PendingDigest.objects.exists())
        page.close()
        self.wait_until(PendingDigest.objects.filter(user=self.alice).exists, "the user_offline webhook")
        self.assertFalse(ReaderPresence.objects.get(user=self.alice).online)
        ch = realtime.user_channel(self.alice.id)
        mark = self.api.history(ch)["offset"]
        # real transactions: the committed notice is published, the rolled-back one is not
        with transaction.atomic():
            realtime.notify(self.alice.id, "reservation_ready", "《Dune》 is ready for you")
        with self.assertRaises(RuntimeError):
            with transaction.atomic():
                realtime.notify(self.alice.id, "reservation_ready", "《Solaris》 is ready for you")
                raise RuntimeError("rolled back")
        texts = [p["data"]["text"] for p in self.api.history(ch)["publications"] if p["offset"] > mark]
        self.assertEqual(texts, ["《Dune》 is ready for you"])
        call_command("send_digests", stdout=open(os.devnull, "w"))
        (email,) = mail.outbox
        self.assertEqual(email.to, ["alice@library.example"])
        self.assertIn("《Dune》 is ready for you", email.body)
        self.assertNotIn("Solaris", email.body)
        # every event came signed by the node and was recorded once
        self.assertEqual(set(WebhookEvent.objects.values_list("name", flat=True)), {"user_online", "user_offline"})
