"""A labeling job meeting faults: transient LLM failures tried again later in the same run, a run that ends
with failures says so in its exit status, and a second job on the same store refuses.

The paid-API double (tests/doubles/paid_api.py) stands in for OpenAI: it answers what a test scripts."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest
from doubles.paid_api import Reply
from synthetic import make_synthetic_store

import autointerp.llm.client
from autointerp.bench.latency_server import fake_chat_body
from autointerp.cli import main
from autointerp.llm import Retries
from autointerp.llm.local import free_port
from autointerp.store import Store
from autointerp.store.db import job_lock

FEATURES = 3  # three dense features, explained with one call each (embedding scorer: no more LLM calls)
ERROR_500 = Reply(500, body={"error": {"message": "internal"}})
LABEL = Reply(body=fake_chat_body({"messages": [], "max_tokens": 5}, label_first=True))  # parses as a label


@pytest.fixture
def quick_retries(monkeypatch):
    """Three attempts per call with millisecond waits (the default waits seconds between attempts)."""
    fast = Retries(max_attempts=3, min_wait_s=0.001, max_wait_s=0.01, timeout_s=10)
    monkeypatch.setattr(autointerp.llm.client, "Retries", lambda: fast)


def label(db, paid_api) -> list[str]:
    return ["label", "--db", db, "--source", "synthetic", "--features", f"0-{FEATURES - 1}", "--explainer",
            "openai:gpt-4o-mini", "--scorers", "embedding", "--base-url", paid_api.openai_base_url,
            "--concurrency", "1", "--quiet"]  # fmt: skip


def stored(db, sql):
    with Store(db, read_only=True) as store:
        return store.con.execute(sql).fetchall()


@pytest.fixture
def db(tmp_path):
    make_synthetic_store(tmp_path / "x.duckdb", n_contexts=300, n_features=FEATURES + 1, context_len=16, seed=1).close()
    return str(tmp_path / "x.duckdb")


def test_features_failing_for_a_transient_cause_are_tried_again_in_the_same_run(db, paid_api, quick_retries, capsys):
    paid_api.script(*[ERROR_500] * 3 * FEATURES, *[LABEL] * FEATURES)  # every feature's first call fails 3 attempts
    assert main(label(db, paid_api)) == 0
    assert len(paid_api.received) == 3 * FEATURES + FEATURES
    assert stored(db, "SELECT count(*), count(DISTINCT feature) FROM explanations") == [(FEATURES, FEATURES)]
    assert stored(db, "SELECT n_done, n_failed FROM runs") == [(FEATURES, 0)]
    assert "failed (" not in capsys.readouterr().out


def test_a_run_ending_with_failures_exits_1_and_prints_the_command_that_continues(db, paid_api, quick_retries, capsys):
    paid_api.script(*[ERROR_500] * 3 * 3 * FEATURES)  # three tries of three attempts for every feature
    command = label(db, paid_api)
    assert main(command) == 1
    out = capsys.readouterr().out
    assert f"{FEATURES} feature(s) failed for a cause a rerun may not meet again (exit status 1)" in out
    assert "autointerp label --db " + db in out and "--base-url " + paid_api.openai_base_url in out
    assert stored(db, "SELECT count(*) FROM explanations") == [(0,)]
    assert len(paid_api.received) == 3 * 3 * FEATURES
    paid_api.script(*[LABEL] * FEATURES)
    assert main(command) == 0  # the printed command, once the server answers
    assert stored(db, "SELECT count(*), count(DISTINCT feature) FROM explanations") == [(FEATURES, FEATURES)]


def test_answers_that_do_not_parse_are_listed_as_failures_but_leave_the_exit_status_at_0(db, paid_api, capsys):
    """A rerun would get the same answers from the ledger: the failures are final for this configuration."""
    body = fake_chat_body({"messages": [], "max_tokens": 5})
    body["choices"][0]["message"]["content"] = ""  # an empty answer: no label in it
    unusable = Reply(body=body)
    paid_api.script(*[unusable] * 10 * FEATURES)
    assert main(label(db, paid_api)) == 0
    out = capsys.readouterr().out
    assert f"failed ({FEATURES}; no label stored" in out and "exit status 1" not in out
    assert stored(db, "SELECT count(*) FROM explanations") == [(0,)]
    assert stored(db, "SELECT n_failed FROM runs") == [(FEATURES,)]


def test_a_second_job_on_the_same_store_refuses_with_a_clear_message(db, paid_api, capsys):
    paid_api.script(*[LABEL] * FEATURES)
    with job_lock(db, "label job"):
        assert main(label(db, paid_api)) == 2
    err = capsys.readouterr().err
    assert "a label job (pid" in err and "is already running on the store" in err and "wait for it to finish" in err
    assert stored(db, "SELECT count(*) FROM runs") == [(0,)] and paid_api.received == []
    assert main(label(db, paid_api)) == 0  # the lock goes with its holder


FULL_DISK = """
import resource, signal, sys
from autointerp.cli import main
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))  # no file grows past 20 kB: the disk is full
sys.exit(main(sys.argv[1:]))
"""


def test_a_full_disk_stops_the_job_with_a_clear_message_and_loses_nothing(db, paid_api):
    paid_api.script(*[LABEL] * 2 * FEATURES)
    child = subprocess.run([sys.executable, "-c", FULL_DISK, *label(db, paid_api)], capture_output=True, text=True)
    assert child.returncode == 2, child.stderr
    assert "cannot write to the store" in child.stderr and "free disk space" in child.stderr
    assert "Traceback" not in child.stderr
    answered = [json.dumps(r.body, sort_keys=True) for r in paid_api.received]
    assert answered
    assert main(label(db, paid_api)) == 0  # space again: the same command finishes the job
    assert stored(db, "SELECT count(*), count(DISTINCT feature) FROM explanations") == [(FEATURES, FEATURES)]
    # what was answered before the disk filled is not asked again (where the job stopped depends on timing)
    rerun = [json.dumps(r.body, sort_keys=True) for r in paid_api.received[len(answered):]]
    assert set(rerun).isdisjoint(answered)


OPEN_ON_A_FULL_DISK = """
import resource, signal, sys
from autointerp.store import Store
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
resource.setrlimit(resource.RLIMIT_FSIZE, (20000, 20000))
try:
    Store(sys.argv[1]).con
except Exception as exc:
    print(type(exc).__name__, exc)
"""


def test_a_store_that_cannot_take_its_write_ahead_log_on_opening_says_the_disk_is_full(tmp_path):
    """Opening a store replays the log a writer left into the file: on a full disk the job's next session
    then failed with DuckDB's own words ("cannot open the store ...: IO Error ...") instead of what to do."""
    import duckdb

    db = tmp_path / "s.duckdb"
    Store(db, create=True).close()
    con = duckdb.connect(str(db))
    con.execute("PRAGMA disable_checkpoint_on_shutdown")
    con.execute("CREATE TABLE filler AS SELECT range AS i, repeat('x', 100) AS s FROM range(5000)")
    con.close()  # the rows stay in the write-ahead log
    child = subprocess.run([sys.executable, "-c", OPEN_ON_A_FULL_DISK, str(db)], capture_output=True, text=True)
    assert child.stdout.startswith("AutointerpError cannot write to the store"), child.stdout + child.stderr
    assert "free disk space" in child.stdout
    assert stored(db, "SELECT count(*) FROM filler") == [(5000,)]  # nothing lost: with space, the log is replayed


def test_an_unreachable_base_url_stops_the_job_at_once_with_one_clear_message(db, capsys):
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    command = ["label", "--db", db, "--source", "synthetic", "--features", "0-2", "--explainer", "openai:m",
               "--scorers", "embedding", "--base-url", base_url, "--quiet"]  # fmt: skip
    assert main(command) == 2
    err = capsys.readouterr().err
    assert f"cannot reach {base_url} (connection refused or unknown host): is the server running?" in err
    assert "Traceback" not in err
    assert set(stored(db, "SELECT attempts FROM llm_calls")) == {(1,)}  # no retries with backoff


def test_finished_features_share_a_commit_but_a_failing_write_loses_none_of_the_others(tmp_path):
    """The job stores finished features in transactions of many; when one write fails, the others of its
    transaction are still stored (each on its own), and what was queued after it stays queued."""
    import asyncio

    from autointerp.pipeline import _Finished, _StoreSessions
    from autointerp.store import jobs

    store = Store(tmp_path / "s.duckdb", create=True)
    committed = []

    class FailureWriter:
        """The job's side of the writes (`pipeline._Writer`), reduced to failure rows; an item without one
        fails its write the way a full disk does."""

        def flush_ledgers(self) -> None:
            pass

        async def prepare(self, items) -> None:
            pass

        def write_batch(self, con, items) -> None:
            for item in items:
                if item.failure is None:
                    raise OSError("No space left on device")
                jobs.record_failure(con, **item.failure)

        def committed(self, items) -> None:
            committed.extend(item.failure["feature"] for item in items)

        def write_counts(self, con) -> None:
            pass

    def failure_row(feature):
        return _Finished(None, failure={"run_id": "r", "source_id": None, "feature": feature, "stage": "t", "error": "e"})

    async def go():
        sessions = _StoreSessions(store, [], lambda batch: iter(()), FailureWriter(), prefetch=2)
        for feature in (0, 1, 2):
            sessions.write(failure_row(feature))
        sessions.write(_Finished(None))
        sessions.write(failure_row(9))
        sessions._handle.cancel()  # no timed session: this test runs the writes itself
        with pytest.raises(OSError, match="No space"):
            await sessions._write_queued()
        assert committed == [0, 1, 2]
        await sessions._write_queued()  # the write queued after the failing one is still there
        assert committed == [0, 1, 2, 9]

    asyncio.run(go())
    store.close()
    assert sorted(r[0] for r in stored(tmp_path / "s.duckdb", "SELECT feature FROM failures")) == [0, 1, 2, 9]
