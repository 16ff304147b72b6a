"""How the web app shares its store file with itself and with a labeling job in another process.

Reads share one read-only DuckDB database, opened by the first and each given its own connection, so they
run side by side; opening the file costs tens of ms at scale, so it stays open LINGER_SECONDS after the
last read. A writer of another process that finds the file held announces it (`WriterGate`): then no new
read starts on the open file, it closes as soon as the reads in progress end, and the next reads wait for
that writer's transaction and open the file again (they then see its writes). This app's own writes
(reviews, deletes) take turns the same way: they wait for the reads in progress, and reads wait for them.
A request waits for the store `lock_wait` seconds in all, then gets StoreBusy (the app answers 503).
"""

from __future__ import annotations

import contextlib
import threading
import time
from pathlib import Path
from typing import Iterator

import duckdb

from autointerp.errors import StoreBusy
from autointerp.store import Store, connect
from autointerp.store.db import LOCK_WAIT_SECONDS, WriterGate

LINGER_SECONDS = 0.5


class CatalogAccess:
    """The store file as the web app uses it: shared short reads, exclusive short writes."""

    def __init__(self, path: str | Path, linger: float = LINGER_SECONDS, lock_wait: float = LOCK_WAIT_SECONDS):
        self.path = Path(path)
        self.linger = linger
        self.lock_wait = lock_wait
        self._cond = threading.Condition()
        self._db: duckdb.DuckDBPyConnection | None = None  # the open read-only database, while there is one
        self._readers = 0
        self._writing = False
        self._draining = False  # a writer waits: no new read on the open file
        self._last_read = 0.0
        self._gate = WriterGate(self.path)
        self._closer: threading.Timer | None = None

    @contextlib.contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for one request's reads (it sees every write committed before it started)."""
        con = self._start_read()
        try:
            yield con
        finally:
            con.close()
            self._end_read()

    @contextlib.contextmanager
    def writing(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One write transaction, after the reads in progress; reads wait for it."""
        deadline = time.monotonic() + self.lock_wait
        with self._cond:
            self._wait(lambda: not self._writing, deadline)
            self._writing = True
            try:
                self._wait(lambda: self._readers == 0, deadline)
            except StoreBusy:
                self._writing = False
                self._cond.notify_all()
                raise
            self._close_db()
        try:
            with Store(self.path, lock_wait=_left(deadline)).writing() as con:
                yield con
        finally:
            with self._cond:
                self._writing = False
                self._cond.notify_all()

    def close(self) -> None:
        with self._cond:
            self._wait(lambda: self._readers == 0, time.monotonic() + self.lock_wait)
            self._close_db()

    def _start_read(self) -> duckdb.DuckDBPyConnection:
        deadline = time.monotonic() + self.lock_wait
        with self._cond:
            while True:
                self._wait(lambda: not self._writing and not (self._draining and self._db is not None), deadline)
                if self._gate.writer_waiting() and time.monotonic() < deadline:
                    # let it in: drain the open file (the last read closes it), or wait while it connects
                    self._draining = self._db is not None
                    if self._db is not None and self._readers == 0:
                        self._close_db()
                    self._cond.wait(0.01)
                    continue
                if self._db is None:
                    # connect waits while another process writes; no read of ours holds the file meanwhile
                    self._db = connect(self.path, read_only=True, wait=_left(deadline))
                self._draining = False
                self._readers += 1
                return self._db.cursor()

    def _end_read(self) -> None:
        with self._cond:
            self._readers -= 1
            self._last_read = time.monotonic()
            if self._readers == 0:
                if self._draining or self._writing:
                    self._close_db()
                elif self._closer is None:
                    self._closer = threading.Timer(self.linger, self._close_if_idle)
                    self._closer.daemon = True
                    self._closer.start()
            self._cond.notify_all()

    def _close_if_idle(self) -> None:
        with self._cond:
            self._closer = None
            if self._readers == 0:
                idle = time.monotonic() - self._last_read
                if idle >= self.linger or self._gate.writer_waiting():
                    self._close_db()
                else:
                    self._closer = threading.Timer(self.linger - idle, self._close_if_idle)
                    self._closer.daemon = True
                    self._closer.start()

    def _close_db(self) -> None:
        if self._db is not None:
            self._db.close()
            self._db = None
        self._draining = False
        self._cond.notify_all()

    def _wait(self, ready, deadline: float) -> None:
        """Wait on the condition (held) until ready(), up to the deadline; a stuck store is an error, not a hang."""
        if not self._cond.wait_for(ready, timeout=_left(deadline)):
            raise StoreBusy(
                f"the store {self.path} stayed busy for {self.lock_wait:.3g} s; try again when the writing job pauses"
            )


def _left(deadline: float) -> float:
    return max(0.0, deadline - time.monotonic())
