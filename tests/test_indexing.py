"""Serving the catalog while it changes: reads side by side, a writer of another process let in between
them, the search index kept fresh in the background (searches never wait for a rebuild), and the
recovery rebuild command."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import numpy as np
import pytest

from autointerp import indexing
from autointerp.catalog import write_label
from autointerp.cli import main as cli
from autointerp.embeddings import EMBEDDING_MODEL
from autointerp.errors import AutointerpError
from autointerp.indexing import IndexKeeper
from autointerp.records import Explanation
from autointerp.search import SearchIndex, search
from autointerp.store import Store
from autointerp.store.db import job_lock
from autointerp.store import catalog_queries as q
from autointerp.web.access import CatalogAccess
from catalog_fixtures import SOURCE_B, catalog_copy

REPO = Path(__file__).resolve().parents[1]
SAFETY = 120  # seconds: a hung test fails instead of hanging; no test asserts on time


@pytest.fixture()
def db(tmp_path):
    return catalog_copy(tmp_path)


def add_label(path, feature: int, text: str) -> int:
    """A label as a job writes it, with its MiniLM embedding."""
    with Store(path).writing() as con:
        return write_label(con, Explanation(SOURCE_B, feature, text), [], run_id="test", config_hash=None,
                           sampling_config=None, seed=None)


def n_labels(con) -> int:
    return q.index_version(con, EMBEDDING_MODEL)[0]


def test_reads_run_side_by_side(db):
    access = CatalogAccess(db)
    first_in, release = threading.Event(), threading.Event()

    def hold():
        with access.reading() as con:
            n_labels(con)
            first_in.set()
            release.wait(SAFETY)

    holder = threading.Thread(target=hold)
    holder.start()
    try:
        assert first_in.wait(SAFETY)
        with access.reading() as con:  # would wait for `hold` if reads took turns
            assert n_labels(con) == 14
        assert holder.is_alive()
    finally:
        release.set()
        holder.join()
        access.close()


def test_an_own_write_waits_for_reads_and_the_next_read_sees_it(db):
    access = CatalogAccess(db)
    order: list[str] = []
    reading, release = threading.Event(), threading.Event()

    def hold():
        with access.reading() as con:
            reading.set()
            release.wait(SAFETY)
            order.append(f"read {n_labels(con)}")

    def write():
        with access.writing() as con:
            order.append("write")
            write_label(con, Explanation(SOURCE_B, 5, "harpsichord"), [], run_id=None, config_hash=None,
                        sampling_config=None, seed=None, embedding=np.ones(384, dtype=np.float32) / np.sqrt(384))

    holder = threading.Thread(target=hold)
    holder.start()
    assert reading.wait(SAFETY)
    writer = threading.Thread(target=write)
    writer.start()
    release.set()
    holder.join()
    writer.join()
    with access.reading() as con:
        order.append(f"read {n_labels(con)}")
    access.close()
    assert order == ["read 14", "write", "read 15"]


WRITER = textwrap.dedent(
    """
    import sys
    import numpy as np
    from autointerp.catalog import write_label
    from autointerp.records import Explanation
    from autointerp.store import Store

    with Store(sys.argv[1]).writing() as con:
        write_label(con, Explanation("toy-L1", 7, "harpsichord from another process"), [], run_id="job",
                    config_hash=None, sampling_config=None, seed=None, embedding=np.ones(384, dtype=np.float32))
    print("wrote")
    """
)


def test_a_writer_of_another_process_gets_in_between_overlapping_reads(db, tmp_path):
    """Two readers whose reads always overlap (and the linger) keep the file open; the waiting writer's gate
    makes them let it in, and they go on reading, the new label included."""
    access = CatalogAccess(db)
    script = tmp_path / "writer.py"
    script.write_text(WRITER)
    stop = threading.Event()
    seen: list[int] = []
    errors: list[Exception] = []

    def reader():
        while not stop.is_set():
            try:
                with access.reading() as con:
                    seen.append(n_labels(con))
                    time.sleep(0.05)
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)
                return

    readers = [threading.Thread(target=reader) for _ in range(2)]
    readers[0].start()
    while not seen:
        time.sleep(0.01)
    readers[1].start()
    env = {**os.environ, "PYTHONPATH": str(REPO)}  # this checkout's code, not the installed one
    writer = subprocess.Popen([sys.executable, str(script), str(db)], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                              text=True, env=env)
    try:
        out, err = writer.communicate(timeout=SAFETY)
        after = len(seen)
        while len(seen) < after + 4 and not errors:
            time.sleep(0.01)
    finally:
        stop.set()
        for r in readers:
            r.join()
        access.close()
    assert writer.returncode == 0, err
    assert out.strip() == "wrote"
    assert not errors
    assert seen[0] == 14 and seen[-1] == 15 and set(seen) == {14, 15}


class GatedIndex(SearchIndex):
    """A real index whose builds after the first wait for `gate`: a slow rebuild, on cue."""

    gate = threading.Event()
    built = 0

    def build_from(self, snapshot):
        GatedIndex.built += 1
        if GatedIndex.built > 1:
            assert GatedIndex.gate.wait(SAFETY)
        return super().build_from(snapshot)


def test_searches_use_the_last_good_index_while_a_new_one_builds(db):
    access = CatalogAccess(db)
    keeper = IndexKeeper(db, access.reading, interval=0.05, make_index=GatedIndex)
    keeper.start()
    try:
        old = keeper.current()
        keeper.request_rebuild()
        while GatedIndex.built < 2:
            time.sleep(0.01)
        with access.reading() as con:  # the rebuild is under way (and stays so until the gate opens)
            dogs = search(con, keeper.current(), "dogs", mode="keyword")
        assert keeper.current() is old and [h.label for h in dogs.hits] == ["dogs and puppies"]
        GatedIndex.gate.set()
        deadline = time.monotonic() + SAFETY
        while keeper.current() is old and time.monotonic() < deadline:
            time.sleep(0.01)
        with access.reading() as con:
            after = search(con, keeper.current(), "dogs", mode="keyword")
        assert keeper.current() is not old and [h.label for h in after.hits] == ["dogs and puppies"]
        assert keeper.error is None and keeper.builds == 2
    finally:
        keeper.stop()
        access.close()


def test_a_label_written_by_a_job_is_found_within_seconds_without_a_rebuild(db):
    access = CatalogAccess(db)
    keeper = IndexKeeper(db, access.reading, interval=0.05)
    keeper.start()
    try:
        index = keeper.current()
        built_at = index.built_at
        add_label(db, 6, "harpsichord toccatas")
        found, deadline = [], time.monotonic() + SAFETY
        while not found and time.monotonic() < deadline:
            with access.reading() as con:
                found = search(con, keeper.current(), "toccatas", mode="keyword").hits
            time.sleep(0.05)
        assert [h.label for h in found] == ["harpsichord toccatas"]
        with access.reading() as con:
            assert [h.label for h in search(con, keeper.current(), "toccatas", mode="semantic", limit=1).hits] == [
                "harpsichord toccatas"]  # its embedding is in too
        assert keeper.current() is index and index.built_at == built_at and keeper.builds == 1  # updated, not rebuilt
    finally:
        keeper.stop()
        access.close()


def test_the_keeper_opens_the_store_only_when_it_changed(db):
    access = CatalogAccess(db)
    keeper = IndexKeeper(db, access.reading)
    try:
        assert keeper.step() is True  # the first build
        assert keeper.step() is False  # nothing written since: not even opened
        add_label(db, 4, "harpsichord sonatas")
        assert keeper.step() is True
        with access.reading() as con:
            assert [h.label for h in search(con, keeper.current(), "sonatas", mode="keyword").hits] == [
                "harpsichord sonatas"]
    finally:
        access.close()


def test_index_command_rebuilds_in_the_foreground_and_in_the_background(db, capsys):
    assert cli(["index", "--db", str(db)]) == 0
    assert "14 labels, built into" in capsys.readouterr().out
    assert cli(["index", "--db", str(db)]) == 0
    assert "14 labels, opened from" in capsys.readouterr().out
    add_label(db, 8, "harpsichord fugues")
    assert cli(["index", "--db", str(db)]) == 0
    out = capsys.readouterr().out
    assert "15 labels, opened from" in out and "caught up" in out
    (db.parent / (db.name + ".search") / "manifest.json").write_text("{damaged")
    assert cli(["index", "--db", str(db), "--rebuild"]) == 0
    out = capsys.readouterr().out
    assert "15 labels" in out
    assert cli(["index", "--db", str(db), "--rebuild", "--background"]) == 0
    out = capsys.readouterr().out
    log = indexing.rebuild_log(db)
    assert str(log) in out and "pid" in out
    pid = int(re.search(r"pid (\d+)", out).group(1))
    deadline = time.monotonic() + SAFETY
    while _alive(pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert "15 labels" in log.read_text(), log.read_text()


def _alive(pid: int) -> bool:
    try:
        waited, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False
    return waited == 0


def test_a_second_rebuild_of_one_store_is_refused(db):
    with job_lock(db, "search index rebuild", name="index.lock"):
        with pytest.raises(AutointerpError, match="already running"):
            indexing.rebuild(db)
    assert indexing.rebuild(db).labels == 14


@pytest.mark.parametrize("flags", [[], ["--rebuild"], ["--rebuild", "--background"]])
def test_index_command_on_a_missing_store_says_so_and_leaves_nothing(tmp_path, capsys, flags):
    assert cli(["index", "--db", str(tmp_path / "nope.duckdb"), *flags]) == 2
    assert "no store at" in capsys.readouterr().err
    assert list(tmp_path.iterdir()) == []


JOB = textwrap.dedent(
    """
    import sys, time
    from autointerp.catalog import write_label
    from autointerp.embeddings import embed_texts
    from autointerp.records import Explanation, Score
    from autointerp.store import Store

    path, n = sys.argv[1], int(sys.argv[2])
    for i in range(n):
        label = f"harpsichord job label {i}"
        embedding = embed_texts([label])[0]  # before the file is opened, as the labeling job does (MiniLM loads)
        with Store(path).writing() as con:
            write_label(con, Explanation("toy-L1", 200 + i, label),
                        [Score("detection", "balanced_accuracy", 0.5, 0.4, 0.6, 10)],
                        run_id="job", config_hash=None, sampling_config=None, seed=None, embedding=embedding)
        time.sleep(0.05)
    print("wrote", n)
    """
)


def test_two_readers_browse_through_the_web_app_while_a_job_writes(db, tmp_path):
    """Every page is served (a reader told 503 comes back after Retry-After, as a browser does: a slow machine
    can keep the job's transaction longer than a request waits) and is one consistent snapshot."""
    from fastapi.testclient import TestClient

    from autointerp.web import create_app

    script = tmp_path / "job.py"
    script.write_text(JOB)
    n = 8
    problems: list[str] = []
    seen: set[int] = set()
    with TestClient(create_app(db, index_interval=0.05)) as client:
        client.app.state.index_keeper.current()

        def get(url, params):
            while True:
                response = client.get(url, params=params)
                if response.status_code != 503:
                    return response
                if "held by another process" not in response.text or "retry-after" not in response.headers:
                    return response
                time.sleep(int(response.headers["retry-after"]))

        env = {**os.environ, "PYTHONPATH": str(REPO)}
        job = subprocess.Popen([sys.executable, str(script), str(db), str(n)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, env=env)

        def browse():
            while True:  # a round at least, however soon the job ends
                for url, params in (("/api/search", {"q": "harpsichord job", "mode": "keyword", "limit": 50}),
                                    (f"/api/features/{SOURCE_B}/0", {}), ("/search", {"q": ""})):
                    response = get(url, params)
                    if response.status_code != 200:
                        problems.append(f"{url}: {response.status_code} {response.text[:200]}")
                    elif url == "/api/search":
                        hits = response.json()["hits"]
                        seen.update(h["feature"] for h in hits)
                        # a page is one snapshot: every hit is a label the job wrote, each feature once
                        if any(not h["label"].startswith("harpsichord job label") for h in hits) or (
                                len({h["feature"] for h in hits}) != len(hits)):
                            problems.append(f"inconsistent page: {hits}")
                if job.poll() is not None:
                    return

        readers = [threading.Thread(target=browse) for _ in range(2)]
        for r in readers:
            r.start()
        try:
            out, err = job.communicate(timeout=SAFETY)
        finally:
            job.kill()  # a hung job fails the test; its readers stop with it
            for r in readers:
                r.join()
        assert job.returncode == 0, err
        found: set = set()
        deadline = time.monotonic() + SAFETY
        while found != set(range(200, 200 + n)) and time.monotonic() < deadline:
            hits = get("/api/search", {"q": "harpsichord job", "mode": "keyword", "limit": 50}).json()["hits"]
            found = {h["feature"] for h in hits}
    assert not problems, problems[:3]
    assert found == set(range(200, 200 + n)) and seen <= found
