"""Client.publish_on_commit with real Django transactions (SQLite files, settings configured here)
against the real node, with a real WebSocket subscriber watching what arrives."""

from __future__ import annotations

import logging
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

django = pytest.importorskip("django")
from django.conf import settings  # noqa: E402

from conftest import API_KEY  # noqa: E402
from ferrocast import Client, FerrocastUnavailable  # noqa: E402

SRC = Path(__file__).resolve().parents[1] / "src"


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    if not settings.configured:
        d = tmp_path_factory.mktemp("django-db")
        settings.configure(
            DATABASES={
                "default": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(d / "default.sqlite3")},
                "other": {"ENGINE": "django.db.backends.sqlite3", "NAME": str(d / "other.sqlite3")},
            },
            INSTALLED_APPS=[],
            USE_TZ=True,
        )
        django.setup()
    from django.db import connections

    for alias in ("default", "other"):
        with connections[alias].cursor() as c:
            c.execute("CREATE TABLE IF NOT EXISTS loan (id INTEGER PRIMARY KEY AUTOINCREMENT, title TEXT)")
    yield connections
    connections.close_all()


@pytest.fixture
def fc(node):
    c = Client(node.url, API_KEY)
    yield c
    c.close()


def uniq(prefix: str) -> str:
    return f"{prefix}{uuid.uuid4().hex[:10]}"


def insert(title: str, using: str = "default") -> None:
    from django.db import connections

    with connections[using].cursor() as c:
        c.execute("INSERT INTO loan (title) VALUES (%s)", [title])


def titles(using: str = "default") -> list:
    from django.db import connections

    with connections[using].cursor() as c:
        c.execute("SELECT title FROM loan ORDER BY id")
        return [r[0] for r in c.fetchall()]


def offset(fc, ch) -> int:
    return fc.history(ch)["offset"]


def test_commit_publishes_after_the_commit(db, fc, ws):
    from django.db import transaction

    ch = uniq("room:commit-")
    sub = ws("alice")
    sub.subscribe(ch)
    tag = uniq("dune-")
    with transaction.atomic():
        insert(tag)
        assert fc.publish_on_commit(ch, {"text": "borrowed《Dune》", "tag": tag}) is None
        # nothing is sent while the transaction is open
        with pytest.raises(TimeoutError):
            sub.publication(ch, timeout=0.3)
        assert offset(fc, ch) == 0
    pub = sub.publication(ch)
    assert pub == {"offset": 1, "data": {"text": "borrowed《Dune》", "tag": tag}}
    assert tag in titles()


def test_rollback_publishes_nothing(db, fc, ws):
    from django.db import transaction

    ch = uniq("room:rollback-")
    sub = ws("alice")
    sub.subscribe(ch)
    tag = uniq("lost-")
    with pytest.raises(RuntimeError):
        with transaction.atomic():
            insert(tag)
            fc.publish_on_commit(ch, {"text": "never"})
            raise RuntimeError("the borrow failed")
    with transaction.atomic():  # marked for rollback without an exception
        fc.publish_on_commit(ch, {"text": "never either"})
        transaction.set_rollback(True)
    with pytest.raises(TimeoutError):
        sub.publication(ch, timeout=0.6)
    assert offset(fc, ch) == 0
    assert tag not in titles()


def test_a_rolled_back_savepoint_drops_only_its_own_publications(db, fc, ws):
    from django.db import transaction

    ch = uniq("room:savepoint-")
    sub = ws("alice")
    sub.subscribe(ch)
    with transaction.atomic():
        fc.publish_on_commit(ch, "outer before")
        try:
            with transaction.atomic():  # a savepoint
                insert("inner")
                fc.publish_on_commit(ch, "inner")
                with transaction.atomic():
                    fc.publish_on_commit(ch, "innermost")
                raise ValueError("inner block fails")
        except ValueError:
            pass
        with transaction.atomic():  # a savepoint that is released: its publication goes out
            fc.publish_on_commit(ch, "inner kept")
        fc.publish_on_commit(ch, "outer after")
        assert offset(fc, ch) == 0
    got = [sub.publication(ch)["data"] for _ in range(3)]
    assert got == ["outer before", "inner kept", "outer after"]
    with pytest.raises(TimeoutError):
        sub.publication(ch, timeout=0.4)
    assert offset(fc, ch) == 3


def test_outside_a_transaction_it_publishes_at_once(db, fc, ws):
    ch = uniq("room:autocommit-")
    sub = ws("alice")
    sub.subscribe(ch)
    fc.publish_on_commit(ch, {"now": True})
    assert offset(fc, ch) == 1  # sent before publish_on_commit returned
    assert sub.publication(ch)["data"] == {"now": True}


def test_using_picks_the_database_whose_commit_counts(db, fc):
    from django.db import transaction

    ch = uniq("room:using-")
    with transaction.atomic():  # "default" is in a transaction, "other" is not
        fc.publish_on_commit(ch, "other is in autocommit", using="other")
        assert offset(fc, ch) == 1
        fc.publish_on_commit(ch, "default commits", using="default")
        assert offset(fc, ch) == 1
    assert offset(fc, ch) == 2
    with pytest.raises(KeyError):
        with transaction.atomic(using="other"):
            insert("x", using="other")
            fc.publish_on_commit(ch, "rolled back", using="other")
            raise KeyError("x")
    assert offset(fc, ch) == 2


def test_data_is_checked_and_captured_at_call_time(db, fc, ws):
    from django.db import transaction

    ch = uniq("room:snapshot-")
    sub = ws("alice")
    sub.subscribe(ch)
    with transaction.atomic():
        data = {"items": ["Dune"]}
        fc.publish_on_commit(ch, data)
        data["items"].append("changed after the call")
        with pytest.raises(TypeError):  # raised here, inside the transaction
            fc.publish_on_commit(ch, {"when": object()})
        with pytest.raises(ValueError):
            from datetime import datetime

            fc.publish_on_commit(ch, 1, deliver_at=datetime(2030, 1, 1))  # naive
    assert sub.publication(ch)["data"] == {"items": ["Dune"]}


def test_publish_arguments_pass_through(db, fc, ws):
    from datetime import datetime, timedelta, timezone

    from django.db import transaction

    ch = uniq("room:args-")
    sub = ws("alice")
    sub.subscribe(ch)
    key = uniq("k-")
    for _ in range(2):  # a retried job: one publication
        with transaction.atomic():
            fc.publish_on_commit(ch, "once", idempotency_key=key)
    assert sub.publication(ch)["data"] == "once"
    with transaction.atomic():
        fc.publish_on_commit(ch, "later", deliver_at=datetime.now(timezone.utc) + timedelta(seconds=0.6))
    with pytest.raises(TimeoutError):
        sub.publication(ch, timeout=0.3)
    assert sub.publication(ch, timeout=3)["data"] == "later"
    assert offset(fc, ch) == 2


def test_a_failed_publish_after_commit(db, caplog):
    from django.db import transaction

    down = Client("http://127.0.0.1:9", API_KEY, timeout=0.5)
    tag = uniq("kept-")
    ran = []
    # like any on_commit callback: the error comes out of the commit, the data is committed
    with pytest.raises(FerrocastUnavailable):
        with transaction.atomic():
            insert(tag)
            down.publish_on_commit("room:x", 1)
            transaction.on_commit(lambda: ran.append("not reached"))
    assert tag in titles() and ran == []
    # robust=True: logged on the "ferrocast" logger, the next callbacks still run
    tag2 = uniq("kept-")
    with caplog.at_level(logging.WARNING, logger="ferrocast"):
        with transaction.atomic():
            insert(tag2)
            down.publish_on_commit("room:x", 1, robust=True)
            transaction.on_commit(lambda: ran.append("next callback"))
    assert tag2 in titles() and ran == ["next callback"]
    (rec,) = [r for r in caplog.records if r.name == "ferrocast"]
    assert rec.levelno == logging.WARNING and "room:x" in rec.getMessage()


def test_importable_without_django_and_a_clear_error():
    code = (
        "import sys; sys.modules['django'] = None\n"  # as if Django were not installed
        "import ferrocast\n"
        "c = ferrocast.Client('http://127.0.0.1:9', 'k')\n"
        "try:\n"
        "    c.publish_on_commit('room:1', {})\n"
        "except RuntimeError as e:\n"
        "    print('RuntimeError:', e)\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, env={"PYTHONPATH": str(SRC)}
    ).stdout
    assert out.startswith("RuntimeError: publish_on_commit() needs Django"), out
