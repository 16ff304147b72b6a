"""A job killed (SIGKILL) mid-write leaves its session's write-ahead log; the next open replays it. Every stored
score and ledger row must then be found by its indexed lookups: DuckDB 1.5.5 dropped the replayed entries of
the secondary indexes (`scores(explanation_id)`, `llm_calls(cache_key)`) at the first checkpoint after a replay
(the reopening writer's close), so `WHERE explanation_id = ?` found none of those rows."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from autointerp.catalog import load_labels, write_label
from autointerp.records import Explanation, Score
from autointerp.store import Store
from autointerp.store.activations import create_source, get_source
from autointerp.store.jobs import mark_feature
from autointerp.store.llm_calls import LLMCall, insert_calls, stored_answers

REPO = Path(__file__).resolve().parent.parent
SOURCE = "killed"
METRICS = ("auroc", "balanced_accuracy", "f1")
COMMITTED_BEFORE_KILL = 40  # features committed in the killed session before the kill


def write_until_killed(db: str, progress: str, first_feature: str) -> None:
    """The child: a labeling job's store session (one held connection, one transaction per finished feature with
    its label, scores, job row and ledger rows), writing until it is killed; `progress` holds the count committed."""
    store = Store(db)
    source_id = get_source(store.con, SOURCE).source_id
    feature = int(first_feature)
    committed = 0
    while True:
        with store.writing() as con:
            scores = [Score("detection", m, 0.5 + feature / 1e4, 0.4, 0.6, 20) for m in METRICS]
            eid = write_label(con, Explanation(SOURCE, feature, f"label {feature}"), scores, run_id="r", config_hash="h",
                              sampling_config=None, seed=None, embedding=[0.0] * 384)
            mark_feature(con, "h", source_id, feature, "done", run_id="r", explanation_id=eid)
            insert_calls(con, [
                LLMCall(f"key-{feature}-{stage}", "local", "m", stage, "r", {"feature": feature, "stage": stage},
                        {"answer": feature}, 10, 2, 0.0, 1.0)
                for stage in ("explain", "detection")
            ])
        feature += 1
        committed += 1
        Path(progress + ".tmp").write_text(str(committed))
        os.replace(progress + ".tmp", progress)


def kill_mid_session(db: Path, first_feature: int) -> int:
    """Run the child until it has committed COMMITTED_BEFORE_KILL features, SIGKILL it while it writes more;
    return how many it had committed by then (at least)."""
    progress = db.with_suffix(".progress")
    progress.unlink(missing_ok=True)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(REPO), str(REPO / "tests")])}
    code = "import sys; from test_killed_store import write_until_killed; write_until_killed(*sys.argv[1:])"
    child = subprocess.Popen([sys.executable, "-c", code, str(db), str(progress), str(first_feature)], cwd=REPO, env=env,
                             stderr=subprocess.PIPE)
    try:
        deadline = time.monotonic() + 300
        while not progress.exists() or int(progress.read_text()) < COMMITTED_BEFORE_KILL:
            assert child.poll() is None, f"the writer died: {child.stderr.read().decode()[-2000:]}"
            assert time.monotonic() < deadline, "the writer made no progress"
            time.sleep(0.02)
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=60) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
    return int(progress.read_text())


def assert_every_row_found_by_its_lookups(db: Path) -> int:
    with Store(db, read_only=True) as store:
        con = store.con
        ids = [eid for (eid,) in con.execute("SELECT explanation_id FROM explanations ORDER BY 1").fetchall()]
        stored = dict(con.execute("SELECT explanation_id, count(*) FROM scores GROUP BY ALL").fetchall())
        assert stored == {eid: len(METRICS) for eid in ids}
        missed = [eid for eid in ids if con.execute(
            "SELECT count(*) FROM scores WHERE explanation_id = ?", [eid]).fetchone()[0] != len(METRICS)]
        assert missed == [], f"{len(missed)} of {len(ids)} labels' scores not found by explanation id"
        assert [len(label.scores) for label in load_labels(con, ids)] == [len(METRICS)] * len(ids)

        keys = [k for (k,) in con.execute("SELECT cache_key FROM llm_calls ORDER BY call_id").fetchall()]
        assert len(keys) == 2 * len(ids)
        missed = [k for k in keys if con.execute("SELECT count(*) FROM llm_calls WHERE cache_key = ?", [k]).fetchone()[0] != 1]
        assert missed == [], f"{len(missed)} of {len(keys)} ledger rows not found by their key"
        assert len(stored_answers(con, [(k, 0) for k in keys])) == len(keys)
        jobs = con.execute("SELECT count(*) FROM feature_jobs WHERE explanation_id IN (SELECT explanation_id FROM explanations)")
        assert jobs.fetchone()[0] == len(ids)
    return len(ids)


def test_rows_a_killed_session_committed_are_found_by_their_indexed_lookups_after_reopening(tmp_path):
    db = tmp_path / "store.duckdb"
    with Store(db, create=True).writing() as con:
        create_source(con, SOURCE, model=None, hookpoint=None, layer=None, feature_kind="imported", width=100_000,
                      context_len=8, config={})
    wal = Path(f"{db}.wal")
    labeled = 0
    for _ in range(2):  # the second kill's log is replayed onto indexes rebuilt after the first
        committed = kill_mid_session(db, first_feature=labeled)
        assert wal.exists() and wal.stat().st_size > 0, "the kill left no write-ahead log: the test proves nothing"
        Store(db).close()  # a rerun's open: migrations and journals on the replayed log, then a checkpoint at close
        labeled = assert_every_row_found_by_its_lookups(db)
        assert labeled >= committed
