"""Keeping a catalog's search index fresh without making a search wait for it, and the recovery rebuild.

`IndexKeeper` runs beside a server: a background thread looks at the store file every `interval` seconds
(a stat of the file and its write-ahead log; the store is opened only when they changed) and brings the
index up to date with `SearchIndex.update` (incremental; an index without it is rebuilt). Searches use `keeper.index`, the last good index,
meanwhile. A full build (the first one, or after an update failed) makes a new index beside the one in
use and swaps it in; only a search that arrives before any index exists waits, for the first build.

`rebuild` is `autointerp index --rebuild`; `rebuild_in_background` runs it as a detached process that
writes its progress to a log beside the store.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, ContextManager

import duckdb

from autointerp import search
from autointerp.errors import AutointerpError
from autointerp.search import SearchIndex
from autointerp.store import Store
from autointerp.store.catalog_queries import refresh_best
from autointerp.store.db import job_lock
from autointerp.store.journal import jobs_dir

INTERVAL_SECONDS = 1.0
FIRST_BUILD_WAIT_SECONDS = 600.0

Reading = Callable[[], ContextManager[duckdb.DuckDBPyConnection]]


def _file_state(path: Path) -> tuple:
    """What changes when a transaction commits: size and mtime of the file and of its write-ahead log."""
    out = []
    for p in (path, path.with_name(path.name + ".wal")):
        try:
            st = p.stat()
            out.append((st.st_size, st.st_mtime_ns))
        except FileNotFoundError:
            out.append(None)
    return tuple(out)


class IndexKeeper:
    """The search index of one store, kept fresh by a background thread (`start` / `stop`)."""

    def __init__(
        self,
        path: str | Path,
        reading: Reading,
        interval: float = INTERVAL_SECONDS,
        make_index: Callable[[], SearchIndex] = SearchIndex,
    ):
        self.path = Path(path)
        self.reading = reading
        self.interval = interval
        self.make_index = make_index
        self.index: SearchIndex | None = None
        self.updates = 0  # index updates done (incremental or not)
        self.builds = 0  # new indexes made: the first (opened from its files or built), and rebuilds
        self.error: str | None = None  # the last update's failure, shown by the server; cleared by a success
        self._ready = threading.Event()
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._seen: tuple | None = None
        self._full = False

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._loop, name=f"index-keeper {self.path.name}", daemon=True)
            self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join()
            self._thread = None

    def request_rebuild(self) -> None:
        """Build a new index from scratch in the background (recovery); searches use the current one meanwhile."""
        self._full = True
        self._wake.set()

    def poke(self) -> None:
        """Look at the store now instead of at the next interval."""
        self._wake.set()

    def current(self, wait: float = FIRST_BUILD_WAIT_SECONDS) -> SearchIndex:
        """The last good index; before the first build is done, wait for it (up to `wait` seconds)."""
        if self.index is None:
            self.start()
            if not self._ready.wait(wait):
                raise AutointerpError(
                    f"the search index of {self.path} is still being built; try again in a minute"
                    + (f" (last attempt failed: {self.error})" if self.error else "")
                )
        return self.index

    def step(self) -> bool:
        """One look at the store: update the index if the store changed. Returns whether it looked."""
        state = _file_state(self.path)
        if state == self._seen and self.index is not None and not self._full:
            return False
        requested, self._full = self._full, False
        fresh = snapshot = None
        with self.reading() as con:
            if requested or self.index is None or self.error is not None:
                fresh = self.make_index()  # made beside the index in use, then swapped in
                if self.index is None and not requested and fresh.load_files(con):
                    fresh.update(con)  # the files beside the store, brought up to date
                else:
                    snapshot = fresh.read_store(con)  # built below, once the store is let go for writers
            elif self.index.is_stale(con):
                self.index.update(con)
        if snapshot is not None:
            fresh.build_from(snapshot)
        if fresh is not None:
            self.index = fresh
            self.builds += 1
        self.updates += 1
        self._seen = state
        self.error = None
        self._ready.set()
        return True

    def _loop(self) -> None:
        while not self._stop.is_set():
            try:
                self.step()
            except Exception as exc:  # noqa: BLE001 - the server keeps the last good index and says why
                self.error = f"{type(exc).__name__}: {exc}"
            self._wake.wait(self.interval)
            self._wake.clear()


# ---- the recovery rebuild ----------------------------------------------------------------------------


@dataclass
class Rebuilt:
    labels: int
    seconds: float
    folder: Path | None  # where the index files are


def rebuild(store_path: str | Path) -> Rebuilt:
    """Rebuild the search index files of a store from its labels (the store stays the record; the files
    are derived from it), and each feature's stored best label (one short write transaction). One rebuild
    per store at a time: a second one is refused."""
    store = Store(store_path, read_only=True)  # a missing store: an error, and no lock file
    with job_lock(store_path, "search index rebuild", name="index.lock", rerun=f" (its log: {rebuild_log(store_path)})"):
        snapshot, seconds = search.rebuild_from_store(store)
        with Store(store_path) as writer, writer.writing() as con:
            refresh_best(con)  # each feature's stored best label: derived from the store like the files
    return Rebuilt(labels=snapshot.version[0], seconds=seconds, folder=snapshot.folder)


@dataclass
class Checked:
    labels: int
    loaded: bool  # read from the files beside the store (else built: they were missing or damaged)
    folder: Path | None


def check(store_path: str | Path) -> Checked:
    """Open a store's search index as a server would (its files, or a build when they are unusable) and
    catch it up with the store."""
    with Store(store_path, read_only=True) as store:
        index = SearchIndex()
        index.open(store.con)  # reads the files and catches up with the store, or builds
        return Checked(index.n_labels, index.loaded_from is not None, search.index_folder(store.con))


def rebuild_log(store_path: str | Path) -> Path:
    return jobs_dir(store_path) / "index-rebuild.log"


@dataclass
class BackgroundRebuild:
    pid: int
    log: Path


def rebuild_in_background(store_path: str | Path) -> BackgroundRebuild:
    """Start `autointerp index` in a detached process (it outlives this one); its output goes to `log`."""
    store_path = Path(store_path)
    Store(store_path, read_only=True).close()  # a missing store is an error now, not in the log
    log = rebuild_log(store_path)
    try:
        log.parent.mkdir(exist_ok=True)
        out = open(log, "w")
    except OSError as exc:
        raise AutointerpError(f"cannot write {log} ({exc.strerror}): the store's folder must be writable") from None
    with out:
        argv = [sys.executable, "-m", "autointerp.cli", "index", "--db", str(store_path), "--rebuild"]
        proc = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT,
                                start_new_session=True)
    return BackgroundRebuild(pid=proc.pid, log=log)
