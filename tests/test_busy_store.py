"""A store held by another process: a clear StoreBusy after the wait, answered 503 with Retry-After by the web
catalog (pages and API alike, bad input stays 400), the CLI's message and exit code as before, nothing lost."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from autointerp.cli import main as cli
from autointerp.errors import StoreBusy
from autointerp.store import Store, connect
from autointerp.store import db as store_db
from autointerp.web import create_app
from autointerp.web.access import CatalogAccess
from catalog_fixtures import SOURCE_B, catalog_copy

REPO = Path(__file__).resolve().parents[1]
SAFETY = 120  # seconds: a hung test fails instead of hanging; no test asserts on time
WAIT = 0.2  # the lock wait of the code under test: short, so that giving up comes soon
HELD = "is held by another process for writing; wait for it to finish or stop it, then run again"

HOLDER = """
import sys, duckdb
con = duckdb.connect(sys.argv[1])
print("held", flush=True)
sys.stdin.read()
"""


@pytest.fixture()
def db(tmp_path):
    return catalog_copy(tmp_path)


@contextlib.contextmanager
def held_for_writing(path):
    """The store opened for writing by a child process (plain duckdb) until the block ends."""
    holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(path)], stdin=subprocess.PIPE,
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        line = holder.stdout.readline()
        assert line.strip() == "held", holder.stderr.read()
        yield
    finally:
        holder.stdin.close()
        holder.wait(timeout=SAFETY)


def n_labels(path) -> int:
    with Store(path, read_only=True) as store:
        return store.con.execute("SELECT count(*) FROM explanations").fetchone()[0]


def test_an_open_gives_up_on_a_store_held_for_writing_with_store_busy_and_loses_nothing(db):
    before = n_labels(db)
    with held_for_writing(db):
        for opening in (lambda: connect(db, read_only=True, wait=WAIT), lambda: connect(db, wait=WAIT),
                        lambda: Store(db, lock_wait=WAIT), lambda: Store(db, read_only=True, lock_wait=WAIT).con):
            with pytest.raises(StoreBusy, match=HELD):
                opening()
    assert n_labels(db) == before


def test_the_cli_says_the_store_is_held_and_exits_2_as_before(db, monkeypatch, capsys):
    monkeypatch.setattr(store_db, "LOCK_WAIT_SECONDS", WAIT)
    with held_for_writing(db):
        assert cli(["sources", "--db", str(db)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: the store ") and HELD in err and "Traceback" not in err


def test_a_busy_store_is_answered_503_with_retry_after_in_pages_and_the_api(db):
    client = TestClient(create_app(db, lock_wait=WAIT))  # no lifespan: no index keeper reading in the background
    with held_for_writing(db):
        page = client.get(f"/features/{SOURCE_B}/0")
        api = client.get(f"/api/features/{SOURCE_B}/0")
        listing = client.get("/search", params={"q": ""})
        review = client.post("/api/explanations/1/reviews", json={"verdict": "accept"})
    for response in (page, api, listing, review):
        assert response.status_code == 503, response.text
        assert response.headers["retry-after"] == "1"
    assert HELD in api.json()["detail"] and HELD in review.json()["detail"]
    assert page.headers["content-type"].startswith("text/html")
    assert HELD in page.text and "tries again in 1 s" in page.text
    assert '<meta http-equiv="refresh" content="1">' in page.text  # the browser retries by itself
    # once the holder is gone the same requests are served, and bad input is still the client's fault
    assert client.get(f"/features/{SOURCE_B}/0").status_code == 200
    assert client.get(f"/api/features/{SOURCE_B}/0").status_code == 200
    bad = client.get("/search", params={"layer": "six"})
    assert bad.status_code == 400 and "retry-after" not in bad.headers and "refresh" not in bad.text


def test_a_write_that_gives_up_on_the_reads_in_progress_leaves_the_catalog_readable(db):
    access = CatalogAccess(db, lock_wait=WAIT)
    reading, release = threading.Event(), threading.Event()

    def hold():
        with access.reading():
            reading.set()
            release.wait(SAFETY)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert reading.wait(SAFETY)
        with pytest.raises(StoreBusy, match="stayed busy"):
            with access.writing():
                pass
    finally:
        release.set()
        holder.join()
    with access.reading() as con:  # reads are not kept waiting for the write that gave up
        assert con.execute("SELECT count(*) FROM explanations").fetchone()[0] == n_labels(db)
    access.close()


JOB_IN_SESSIONS = """
import sys, time
from autointerp.store import db
from autointerp.store.db import ReaderQueue, connect

path, k = sys.argv[1], int(sys.argv[2])
db.READER_TURN_SECONDS = float(sys.argv[3])  # however slow the reader's retries: here a hang fails the test
con = connect(path)
con.execute("CREATE TABLE sessions (i INTEGER)")
print("held", flush=True)
queue = ReaderQueue(path)
while not queue.readers_waiting():  # the reader of the test is kept out now
    time.sleep(0.01)
for i in range(k):
    con.execute("INSERT INTO sessions VALUES (?)", [i])
    con.close()
    con = connect(path)  # reopened at once: no gap a retrying reader could fall in
    time.sleep(0.05)
con.close()
print("done", flush=True)
"""


def test_a_job_that_reopens_the_store_at_once_lets_a_waiting_reader_in_between_its_sessions(db):
    """The reader says it waits, and the writer's next open lets it in first: the reader gets in after the
    first session that ends while it waits, however late its retries come (before, it got in only when a retry
    happened to fall in the short gap between two sessions: after 2 to all 20 of them here, at load 2 to 5)."""
    k = 20
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's code
    job = subprocess.Popen([sys.executable, "-c", JOB_IN_SESSIONS, str(db), str(k), str(SAFETY)], stdout=subprocess.PIPE,
                           stderr=subprocess.PIPE, text=True, env=env)
    try:
        assert job.stdout.readline().strip() == "held", job.stderr.read()
        con = connect(db, read_only=True, wait=SAFETY)
        try:
            sessions_before_the_read = con.execute("SELECT count(*) FROM sessions").fetchone()[0]
        finally:
            con.close()
        out, err = job.communicate(timeout=SAFETY)
    finally:
        job.kill()
    assert job.returncode == 0 and out.strip() == "done", err
    assert sessions_before_the_read == 1
    with Store(db, read_only=True) as store:
        assert store.con.execute("SELECT count(*) FROM sessions").fetchone()[0] == k
