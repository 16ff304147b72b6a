"""Opening the DuckDB file: migrations, read-only readers, short write transactions.

DuckDB lets one process hold a file for writing, or many hold it read-only. Long jobs therefore write
in short transactions (`Store.writing()` opens, writes, commits, closes) and retry while another process
holds the lock, so that the catalog can be browsed while a job runs.

A writer kept out by readers says so: it holds an exclusive flock on the store's gate file (`WriterGate`)
while it retries. Readers that keep the file open across requests (the web catalog) let no new reader in
while the gate is taken, so the file falls free and the writer waits for the current reads only, not for
a stream of them. Readers kept out by a writer say so too (`ReaderQueue`): a writer about to open the file
waits for them first, so that a job writing in sessions lets them in after each one, however late their
retries come on a loaded machine.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import threading
import time
from pathlib import Path
from typing import Iterator

import duckdb

from autointerp.errors import AutointerpError, StoreBusy
from autointerp.store.journal import fold_journals, jobs_dir
from autointerp.store.migrations import MIGRATIONS

LOCK_WAIT_SECONDS = 30.0  # the default of how long an open waits for another process's lock
RETRY_MAX_SECONDS = 0.05  # a page waiting for a write transaction waits this much longer, at most
READER_TURN_SECONDS = 2.0  # the longest a writer about to open the file waits for the readers waiting for it


class StoreNotFound(AutointerpError):
    def __init__(self, path: Path):
        super().__init__(
            f"no store at {path}: check the path, or create a store by collecting activations (`autointerp collect`) "
            "or importing them (`autointerp import`; in Python, Store(path, create=True))"
        )


def _is_lock_error(exc: Exception) -> bool:
    text = str(exc).lower()
    return (
        "lock" in text or "conflicting" in text or "being used by another process" in text
        or "different configuration" in text
    )


def _is_write_failure(exc: Exception) -> bool:
    text = str(exc).lower()
    return any(
        why in text for why in ("could not write", "no space left", "file too large", "read-only file system", "disk quota")
    )


class _WaitFlag:
    """An flock on a file in the store's jobs folder by which processes waiting for the store file say so.
    Best effort: where the folder cannot be written there is no flag, and waiters just retry."""

    name = ""

    def __init__(self, store_path: str | Path):
        self.path = jobs_dir(store_path) / self.name
        self._fd: int | None = None

    def _open(self) -> int | None:
        if self._fd is None:
            try:
                self.path.parent.mkdir(exist_ok=True)
                self._fd = os.open(self.path, os.O_RDWR | os.O_CREAT, 0o644)
            except OSError:
                return None
        return self._fd

    def close(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # releases any flock taken through it
            self._fd = None

    def _raise(self, mode: int) -> None:
        fd = self._open()
        if fd is not None:
            with contextlib.suppress(OSError):
                fcntl.flock(fd, mode | fcntl.LOCK_NB)

    def _raised(self, probe: int) -> bool:
        """Whether another holds the flag: `probe` is the mode its holders' lock conflicts with."""
        if not self.path.exists():
            return False
        fd = self._open()
        if fd is None:
            return False
        try:
            fcntl.flock(fd, probe | fcntl.LOCK_NB)
        except OSError:
            return True
        fcntl.flock(fd, fcntl.LOCK_UN)
        return False


class WriterGate(_WaitFlag):
    """The flock a writer holds on `<store>.jobs/store.gate` while readers keep it out of the file; readers
    that share one open file (see `autointerp.web.access`) admit no new reader while it is held."""

    name = "store.gate"

    def want(self) -> None:
        """Writer: announce the wait (non-blocking; another waiting writer already announced it)."""
        self._raise(fcntl.LOCK_EX)

    def writer_waiting(self) -> bool:
        """Reader: whether a writer is waiting for the file now."""
        return self._raised(fcntl.LOCK_SH)


class ReaderQueue(_WaitFlag):
    """The shared flocks readers kept out by a writer hold on `<store>.jobs/store.readers`: a writer about to
    open the file lets them in first (up to READER_TURN_SECONDS). Without it a job that reopens the file soon
    after closing it let a reader in only when one of the reader's retries (every 50-100 ms, later on a
    loaded machine) fell in the gap; the reader then gave up after LOCK_WAIT_SECONDS."""

    name = "store.readers"

    def join(self) -> None:
        """Reader: say that it waits (again at each retry: a writer's look may have kept the first one out)."""
        self._raise(fcntl.LOCK_SH)

    def readers_waiting(self) -> bool:
        """Writer: whether a reader of another handle waits for the file now."""
        return self._raised(fcntl.LOCK_EX)


def _let_waiting_readers_in(path: Path) -> None:
    queue = ReaderQueue(path)
    try:
        deadline = time.monotonic() + READER_TURN_SECONDS
        while queue.readers_waiting() and time.monotonic() < deadline:
            time.sleep(0.01)
    finally:
        queue.close()


def connect(path: str | Path, read_only: bool = False, wait: float | None = None) -> duckdb.DuckDBPyConnection:
    """Open the file, waiting up to `wait` seconds (default LOCK_WAIT_SECONDS) while another process holds a
    conflicting lock, then raise StoreBusy. A writer first lets in the readers waiting in the `ReaderQueue`,
    and announces its own wait through the `WriterGate`; both retry often."""
    path = Path(path)
    wait = LOCK_WAIT_SECONDS if wait is None else wait
    if read_only and not path.exists():
        raise StoreNotFound(path)
    if not read_only:
        _let_waiting_readers_in(path)
    deadline = time.monotonic() + wait
    delay = 0.02
    gate: WriterGate | ReaderQueue | None = None
    try:
        while True:
            try:
                con = duckdb.connect(str(path), read_only=read_only)
                break
            except (duckdb.IOException, duckdb.ConnectionException) as exc:
                # ConnectionException: this process has the file open with the other mode (the web
                # catalog's shared reads, say); it closes it for a writer that waits at the gate
                if not _is_lock_error(exc) or time.monotonic() > deadline:
                    if _is_lock_error(exc):
                        raise StoreBusy(
                            f"the store {path} is held by another process for writing; "
                            "wait for it to finish or stop it, then run again"
                        ) from None
                    if _is_write_failure(exc):  # opening replays a write-ahead log into the file
                        raise write_error(path, exc) from None
                    raise AutointerpError(f"cannot open the store {path}: {exc}") from None
            except duckdb.Error as exc:
                raise AutointerpError(
                    f"{path} is not a readable DuckDB file ({exc}); give the path of an autointerp store, or of a new one"
                ) from None
            if read_only:
                gate = gate or ReaderQueue(path)
                gate.join()
            elif gate is None:
                gate = WriterGate(path)
                gate.want()
            time.sleep(delay * (1 + random.random()))
            delay = min(delay * 2, RETRY_MAX_SECONDS)
    finally:
        if gate is not None:
            gate.close()
    if not read_only:
        try:
            with _disk_errors(path):
                _rebuild_indexes_after_replay(con, path)
        except AutointerpError:
            con.close()
            raise
    return con


@contextlib.contextmanager
def _disk_errors(path: Path) -> Iterator[None]:
    """A write that the disk refuses (full, a size limit, read-only) as the one clear error that says what to do."""
    try:
        yield
    except duckdb.Error as exc:
        if _is_write_failure(exc):
            raise write_error(path, exc) from None
        raise


def write_error(path: Path, exc: Exception) -> AutointerpError:
    return AutointerpError(
        f"cannot write to the store {path} ({exc}): free disk space or make the file writable, then run "
        "the command again; everything written before this transaction is kept"
    )


def _rebuild_indexes_after_replay(con: duckdb.DuckDBPyConnection, path: Path) -> None:
    """A writer that opened the file with a write-ahead log left behind (a killed process) has just replayed it:
    rebuild the secondary (non-unique) indexes from the table rows. DuckDB 1.5.5 buffers the replayed entries of
    such an index until a query happens to load it, and a checkpoint before that (this connection's close)
    drops them: lookups like `scores WHERE explanation_id = ?` then miss stored rows (tests/test_killed_store.py).
    One index build per unclean stop (2M scores and 0.5M ledger rows: ~6.5 s at load average 5). The drop and
    the creation are two transactions (one aborts DuckDB 1.5.5); a kill between them leaves the index missing:
    lookups slower, still right."""
    wal = path.with_name(path.name + ".wal")
    if not wal.exists() or wal.stat().st_size == 0:
        return
    indexes = con.execute(
        "SELECT index_name, sql FROM duckdb_indexes() "
        "WHERE database_name = current_database() AND NOT is_unique AND NOT is_primary"
    ).fetchall()
    try:
        for name, sql in indexes:
            con.execute(f'DROP INDEX "{name}"')
            con.execute(sql)
    except duckdb.Error as exc:  # a full disk, say: nothing stored is lost, the next writer tries again
        with contextlib.suppress(duckdb.Error):
            con.close()
        raise write_error(path, exc) from None


def migrate(con: duckdb.DuckDBPyConnection) -> list[str]:
    """Apply every migration not yet recorded; return the names applied now."""
    con.execute(
        "CREATE TABLE IF NOT EXISTS _migrations (name VARCHAR PRIMARY KEY, applied_at TIMESTAMP DEFAULT current_timestamp)"
    )
    done = {row[0] for row in con.execute("SELECT name FROM _migrations").fetchall()}
    applied = []
    for name, fn in MIGRATIONS:
        if name in done:
            continue
        con.execute("BEGIN TRANSACTION")
        try:
            fn(con)
            con.execute("INSERT INTO _migrations (name) VALUES (?)", [name])
            con.execute("COMMIT")
        except Exception:
            con.execute("ROLLBACK")
            raise
        applied.append(name)
    return applied


def _rollback(con: duckdb.DuckDBPyConnection) -> None:
    """Roll back if a transaction is still open (a failed COMMIT has already ended it)."""
    with contextlib.suppress(duckdb.TransactionException):
        con.execute("ROLLBACK")


def applied_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    return [row[0] for row in con.execute("SELECT name FROM _migrations ORDER BY applied_at, name").fetchall()]


def pending_migrations(con: duckdb.DuckDBPyConnection) -> list[str]:
    try:
        done = set(applied_migrations(con))
    except duckdb.CatalogException:  # not written by autointerp, or before its first migration
        done = set()
    return [name for name, _ in MIGRATIONS if name not in done]


class Store:
    """A handle on one store file. Cheap to create; connections are opened on demand.

    `Store(path)` opens an existing store and applies pending migrations; a missing file is an error, so a
    typo never leaves an empty store behind. `Store(path, create=True)` makes a new one, but only at the
    first write, so a command that fails before writing leaves no file. Readers use `read_only=True`.
    """

    def __init__(
        self, path: str | Path, read_only: bool = False, create: bool = False, lock_wait: float | None = None
    ):
        self.path = Path(path)
        self.read_only = read_only
        self.lock_wait = lock_wait  # seconds an open waits for another process's lock (None: LOCK_WAIT_SECONDS)
        self._con: duckdb.DuckDBPyConnection | None = None
        # the held connection's users take turns: a labeling job commits on its store thread while its event
        # loop may read the LLM ledger (a DuckDB connection is not for two threads at once)
        self._turn = threading.RLock()
        self._upgraded = False
        self._created = self.path.exists()
        if not self._created and (read_only or not create):
            raise StoreNotFound(self.path)
        if self._created and not read_only:
            self._migrate()

    def _migrate(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        con = connect(self.path, wait=self.lock_wait)
        try:
            with _disk_errors(self.path):
                migrate(con)
                fold_journals(con, self.path)  # LLM answers a killed process had journaled, not yet stored
        finally:
            con.close()
        self._created = True

    @property
    def con(self) -> duckdb.DuckDBPyConnection:
        """A connection held open until `close()`: for readers and single-process jobs."""
        with self._turn:
            if self._con is None:
                if not self._created:
                    self._migrate()
                self._con = self._open_reader() if self.read_only else connect(self.path, wait=self.lock_wait)
            return self._con

    def _open_reader(self) -> duckdb.DuckDBPyConnection:
        """A read-only connection to a store whose schema is current: a store written by an older version
        is upgraded first (a short writable open), so a reader never meets a table that is not there yet."""
        con = connect(self.path, read_only=True, wait=self.lock_wait)
        if self._upgraded or not pending_migrations(con):
            self._upgraded = True
            return con
        con.close()
        self._migrate()
        self._upgraded = True
        return connect(self.path, read_only=True, wait=self.lock_wait)

    def close(self) -> None:
        with self._turn:
            if self._con is not None:
                self._con.close()
                self._con = None

    def __enter__(self) -> "Store":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    @contextlib.contextmanager
    def writing(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """One transaction: commits on success, rolls back on any error, so a failure stores nothing (and a
        store that this first write was to create is removed again).

        Uses the held connection when there is one; otherwise opens the file for this transaction only
        and closes it afterwards, leaving the file free for other processes between writes.
        """
        if self.read_only:
            raise AutointerpError(f"the store {self.path} was opened read-only; open it for writing to change it")
        with self._turn, self._transaction() as con:
            yield con

    @contextlib.contextmanager
    def _transaction(self) -> Iterator[duckdb.DuckDBPyConnection]:
        own = self._con is None
        fresh = own and not self._created
        if fresh:
            self._migrate()
        con = connect(self.path, wait=self.lock_wait) if own else self._con
        failed = False
        try:
            con.execute("BEGIN TRANSACTION")
            try:
                yield con
            except duckdb.IOException as exc:
                _rollback(con)
                failed = True
                raise write_error(self.path, exc) from None
            except BaseException:
                _rollback(con)
                failed = True
                raise
            try:
                con.execute("COMMIT")
            except duckdb.Error as exc:  # a full disk, a file made read-only: this transaction is lost, no more
                _rollback(con)
                failed = True
                raise write_error(self.path, exc) from None
        finally:
            if own:
                con.close()
            if fresh and failed:  # the store this write was to create holds nothing: leave no file
                for path in (self.path, self.path.with_name(self.path.name + ".wal")):
                    path.unlink(missing_ok=True)
                self._created = False

    @contextlib.contextmanager
    def reading(self) -> Iterator[duckdb.DuckDBPyConnection]:
        """A connection for reads: the held one, or a short-lived read-only one."""
        with self._turn:
            if self._con is not None:
                yield self._con
                return
            if not self._created:
                self._migrate()
            con = self._open_reader()
            try:
                yield con
            finally:
                con.close()


@contextlib.contextmanager
def job_lock(
    store_path: str | Path, what: str, name: str = "job.lock", rerun: str = "; a rerun continues where it stopped"
) -> Iterator[None]:
    """Held while a labeling job (or another job of kind `name`: an index rebuild) runs on the store, so that
    a second one refuses at once instead of doing the same work. An flock: the kernel releases it when the
    holder dies, so a killed job leaves no stale lock."""
    folder = jobs_dir(store_path)
    try:
        folder.mkdir(exist_ok=True)
        fd = os.open(folder / name, os.O_RDWR | os.O_CREAT, 0o644)
    except OSError as exc:
        raise AutointerpError(f"cannot write {folder} ({exc.strerror}): the store's folder must be writable") from None
    try:
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
            raise AutointerpError(
                f"{holder} is already running on the store {store_path}: wait for it to finish (or stop it), "
                f"then run again{rerun}"
            ) from None
        os.ftruncate(fd, 0)
        os.pwrite(fd, f"a {what} (pid {os.getpid()})".encode(), 0)
        try:
            yield
        finally:
            os.ftruncate(fd, 0)
    finally:
        os.close(fd)
