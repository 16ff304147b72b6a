"""Stopping a labeling job (Ctrl-C, then SIGKILL) and running it again: the same labels and scores as an
uninterrupted job, no duplicate rows, and no LLM request asked again once its answer was stored.

Runs the real CLI in a subprocess against the real bundled model (the session's llama.cpp server).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import pytest
from test_pipeline import N_FEATURES, rows, synthetic_db, tiny_job

from autointerp.pipeline import run_label_job
from autointerp.store import Store

DENSE = N_FEATURES - 1
SCORERS = ("embedding",)  # one LLM call per feature keeps the test short; the scoring path is the same
REPO = Path(__file__).resolve().parent.parent


def cli_args(db: str, base_url: str) -> list[str]:
    job = tiny_job()
    sampling = [f"{k} = {v}" for k, v in vars(job.sampling).items()]
    config = Path(f"{db}.toml")
    config.write_text("[sampling]\n" + "\n".join(sampling) + "\n")
    return [
        sys.executable,
        "-c",
        "import sys; from autointerp.cli import main; sys.exit(main())",
        "label",
        "--db",
        db,
        "--source",
        job.source,
        "--features",
        job.features,
        "--explainer",
        "local",
        "--scorers",
        ",".join(SCORERS),
        "--config",
        str(config),
        "--concurrency",
        "1",
        "--base-url",
        base_url,
        "--quiet",
    ]


def n_finished(db: str) -> int:
    try:
        return rows(db, "SELECT count(*) FROM feature_jobs WHERE status IN ('done', 'failed')")[0][0]
    except Exception:  # noqa: BLE001 - the job holds the file for a moment: ask again
        return -1


def _deliverable_sigint() -> None:
    signal.signal(signal.SIGINT, signal.SIG_DFL)
    signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGINT})


def started_as_from_a_terminal(args: list[str], **popen) -> subprocess.Popen:
    """Start `args` with SIGINT as a terminal's foreground job has it (default, unblocked), whatever this pytest
    process has, so that a Ctrl-C sent to it arrives.

    A suite started as a background job of a non-interactive shell (`make test &`, `nohup pytest ... &` from a
    script) has SIGINT ignored: POSIX shells ignore it for asynchronous commands when job control is off, Python
    then leaves it ignored, and every child inherits that across exec (as it would a blocked signal mask). The
    job then never saw its Ctrl-C and ran to its end (exit 0). No test or library start-up in the suite changes
    SIGINT (checked after every test of a whole run: Ray, uvicorn in a thread, llama.cpp's server, torch).
    """
    return subprocess.Popen(args, preexec_fn=_deliverable_sigint, **popen)


def stop_after(db: str, args: list[str], finished: int, sig: int, timeout: float = 300) -> int:
    """Start the job, send `sig` once more than `finished` features are finished; return its exit code."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    process = started_as_from_a_terminal(args, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    deadline = time.monotonic() + timeout
    try:
        while n_finished(db) <= finished:
            assert process.poll() is None, (
                f"the job ended before it was stopped: {process.stderr.read().decode()[-2000:]}"
            )
            assert time.monotonic() < deadline, "the job made no progress"
            time.sleep(0.2)
        process.send_signal(sig)
        return process.wait(timeout=120)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()


def stored_answers(db: str) -> set[str]:
    return {k for (k,) in rows(db, "SELECT cache_key FROM llm_calls WHERE error IS NULL AND NOT cached")}


def labels_and_scores(db: str) -> dict[int, tuple]:
    out = {}
    for feature, label, eid in rows(db, "SELECT feature, label, explanation_id FROM explanations ORDER BY feature"):
        scores = rows(
            db,
            "SELECT scorer, metric, subset, value, ci_low, ci_high, n FROM scores WHERE explanation_id = ? ORDER BY ALL",
            [eid],
        )
        out[feature] = (label, [tuple(round(v, 9) if isinstance(v, float) else v for v in s) for s in scores])
    return out


def test_stopped_job_resumes_to_the_same_result_without_repeating_calls(tmp_path, local_llm_server):
    reference = synthetic_db(tmp_path / "reference.duckdb")
    run_label_job(Store(reference), tiny_job(scorers=SCORERS, base_url=local_llm_server), progress=False)

    db = synthetic_db(tmp_path / "stopped.duckdb")
    args = cli_args(db, local_llm_server)
    assert stop_after(db, args, 0, signal.SIGINT) == 130  # Ctrl-C: the run is marked, the ledger flushed
    (first,) = rows(db, "SELECT run_id, status, ended_at FROM runs")
    assert first[1] == "interrupted" and first[2] is not None
    done_after_ctrl_c = n_finished(db)
    assert 1 <= done_after_ctrl_c < DENSE

    if done_after_ctrl_c < DENSE - 1:
        assert stop_after(db, args, done_after_ctrl_c, signal.SIGKILL) == -signal.SIGKILL
        killed = rows(db, "SELECT status FROM runs WHERE run_id <> ?", [first[0]])
        assert killed == [("running",)]  # nobody was left to mark it

    before = stored_answers(db)
    done_before = {f for (f,) in rows(db, "SELECT feature FROM feature_jobs WHERE status = 'done'")}
    summary = run_label_job(Store(db), tiny_job(scorers=SCORERS, base_url=local_llm_server), progress=False)
    assert summary.status == "done"
    assert {r.feature for r in summary.with_status("already_done")} == done_before

    # the same labels and scores as the job that was never stopped, and no duplicates
    assert labels_and_scores(db) == labels_and_scores(reference)
    assert rows(db, "SELECT feature, count(*) FROM explanations GROUP BY feature HAVING count(*) > 1") == []
    assert rows(db, "SELECT feature, status FROM feature_jobs ORDER BY feature") == rows(
        reference, "SELECT feature, status FROM feature_jobs ORDER BY feature"
    )

    # no request whose answer was stored before the rerun was sent again
    fresh = {
        k for (k,) in rows(db, "SELECT cache_key FROM llm_calls WHERE run_id = ? AND NOT cached", [summary.run_id])
    }
    assert not fresh & before


@contextmanager
def sigint_in_this_process(state: str) -> Iterator[None]:
    """SIGINT ignored (as a shell leaves it for `pytest ... &`) or blocked in this thread, restored after."""
    if state == "ignored":
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            yield
        finally:
            signal.signal(signal.SIGINT, previous)
    else:
        previous_mask = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT})
        try:
            yield
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, previous_mask)


@pytest.mark.parametrize("state", ["ignored", "blocked"])
def test_a_started_job_gets_its_ctrl_c_however_pytest_was_started(state):
    """The Ctrl-C test above holds whether the suite runs in a terminal or as a background job."""
    probe = "import signal; signal.raise_signal(signal.SIGINT); print('SIGINT did not arrive')"
    with sigint_in_this_process(state):
        child = started_as_from_a_terminal([sys.executable, "-c", probe], stdout=subprocess.PIPE,
                                           stderr=subprocess.PIPE, text=True)
    out, err = child.communicate()
    assert child.returncode == -signal.SIGINT, (child.returncode, out, err[-500:])
    assert "KeyboardInterrupt" in err  # Python's own handler ran: the CLI's `except KeyboardInterrupt` would too
