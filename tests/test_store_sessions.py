"""How a labeling job's store sessions (`pipeline._StoreSessions`) feed its workers and share the file."""

import asyncio
import threading

import pytest

from autointerp.pipeline import READER_GAP_S, _StoreSessions, session_delay
from autointerp.store import Store


class NoWrites:
    """The job's side of the writes (`pipeline._Writer`) for a job that finishes nothing."""

    def flush_ledgers(self) -> None:
        pass

    async def prepare(self, items) -> None:
        pass

    def write_batch(self, con, items) -> None:
        raise AssertionError("nothing was queued")

    def committed(self, items) -> None:
        pass

    def write_counts(self, con) -> None:
        pass


def test_a_session_serves_the_waiting_workers_and_leaves_a_full_queue_behind_them(tmp_path):
    """Sampling only what the waiting workers take left the queue empty: the job then ran in waves."""
    store = Store(tmp_path / "s.duckdb", create=True)
    batches = []

    def sample_batch(batch):
        batches.append(batch)
        return ((feature, f"examples of {feature}") for feature in batch)

    async def go():
        sessions = _StoreSessions(store, list(range(100)), sample_batch, NoWrites(), prefetch=8)
        got = await asyncio.gather(*(sessions.next_feature() for _ in range(5)))
        assert sorted(feature for feature, _ in got) == [0, 1, 2, 3, 4]
        await sessions.finish()
        assert batches == [list(range(13))]  # the 5 waiting, and 8 ready after them
        assert [await sessions.next_feature() for _ in range(8)] == [(f, f"examples of {f}") for f in range(5, 13)]

    asyncio.run(go())
    store.close()


def test_sessions_start_once_an_interval_and_leave_the_file_free_for_readers_in_between():
    assert session_delay(10.0, last_start=9.0, last_end=9.2, interval_s=1.0) == 0.0
    assert session_delay(9.5, last_start=9.0, last_end=9.2, interval_s=1.0) == 0.5
    # a session that took longer than the interval: the next waits for the readers' gap, not a whole interval
    assert session_delay(12.0, last_start=9.0, last_end=12.0, interval_s=1.0) == pytest.approx(READER_GAP_S)
    assert session_delay(0.0, last_start=float("-inf"), last_end=float("-inf"), interval_s=1.0) == 0.0


def test_the_held_connection_is_used_by_one_thread_at_a_time(tmp_path):
    """A job commits on its store thread while its event loop may read the LLM ledger through the same held
    connection: a read waits for the write transaction to end instead of running inside it."""
    store = Store(tmp_path / "s.duckdb", create=True)
    with store.writing() as con:
        con.execute("CREATE TABLE t (x INTEGER)")
    _ = store.con
    in_transaction, read_in_transaction, seen = threading.Event(), threading.Event(), []

    def read():
        with store.reading() as con:
            if in_transaction.is_set():
                read_in_transaction.set()
            seen.append(con.execute("SELECT count(*) FROM t").fetchone()[0])

    reader = threading.Thread(target=read)
    with store.writing() as con:
        con.execute("INSERT INTO t VALUES (1)")
        in_transaction.set()
        reader.start()
        read_in_transaction.wait(0.5)  # time for a read that did not wait to happen
        in_transaction.clear()
    reader.join()
    store.close()
    assert not read_in_transaction.is_set() and seen == [1]
