"""Labeling on a real local Ray cluster (no mocks): the same labels, scores and judged items as in process,
a worker killed mid-feature, an unreachable cluster. Ray is a test dependency (`make test` installs the `ray`
extra): without it this module fails to import, it never skips.
"""

import dataclasses
import json
import math
import os
import signal
import socket

import pytest
import ray  # noqa: F401  (a missing Ray fails this module loudly)
from test_pipeline import N_FEATURES, rows, synthetic_db, tiny_job

from autointerp.bench.latency_server import BackgroundServer, latency_app
from autointerp.cli import main
from autointerp.errors import AutointerpError
from autointerp.pipeline import run_label_job
from autointerp.ray_label import label_on_ray
from autointerp.store import Store

DENSE = N_FEATURES - 1  # the synthetic store's last feature is too sparse to label


def catalog(db: str) -> dict[str, list[tuple]]:
    """What a labeling job stores, without ids, run ids and times."""
    return {
        "explanations": rows(
            db,
            "SELECT feature, label, author, explainer_model, prompt_name, prompt_hash, sampling_config, seed, config_hash, "
            "details FROM explanations ORDER BY feature",
        ),
        "scores": rows(
            db,
            "SELECT e.feature, s.scorer, s.metric, s.subset, s.split, s.value, s.ci_low, s.ci_high, s.n, s.scorer_model, "
            "s.details FROM scores s JOIN explanations e USING (explanation_id) ORDER BY ALL",
        ),
        "score_items": rows(
            db,
            "SELECT e.feature, i.scorer, i.split, i.item, i.context_id, i.item_group, i.kind, i.quantile, i.truth, "
            "i.prediction, i.probability, i.true_activations, i.predicted_activations "
            "FROM score_items i JOIN explanations e USING (explanation_id) ORDER BY ALL",
        ),
        "feature_jobs": rows(db, "SELECT feature, status, error FROM feature_jobs ORDER BY feature"),
        "failures": rows(db, "SELECT feature, stage, error, raw_output FROM failures ORDER BY ALL"),
    }


def same(a, b) -> bool:
    """Equal, floats up to 1e-6: the embedding model sums in another order with a Ray worker's one thread
    (Ray sets OMP_NUM_THREADS=1) than with this process's threads, which moves its cosines in the 8th digit."""
    if isinstance(a, float) and isinstance(b, float):
        return math.isclose(a, b, rel_tol=1e-6, abs_tol=1e-6)
    if isinstance(a, (list, tuple)) and isinstance(b, (list, tuple)):
        return len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
    if isinstance(a, str) and isinstance(b, str) and a[:1] in "{[" and a != b:  # JSON columns
        return same(json.loads(a), json.loads(b))
    return a == b


@pytest.mark.slow
def test_ray_labeling_through_the_cli_equals_the_in_process_job(ray_cluster, local_llm_server, tmp_path, capsys):
    """The bundled model at temperature 0 behind one llama.cpp server: the in-process job and `label --ray` on
    two workers store the same labels, scores and judged items; a rerun on Ray calls nothing.

    Opt-in (`-m slow`): it pays every call of the job twice on the bundled model. The default suite checks the
    same on the fast provider below (test_a_worker_killed_mid_feature_is_retried_without_paying_twice: equal
    catalogs in process and on Ray, then `label --ray` through the CLI answered from the ledger alone)."""
    here = synthetic_db(tmp_path / "here.duckdb")
    there = synthetic_db(tmp_path / "there.duckdb")
    summary = run_label_job(Store(here), tiny_job(base_url=local_llm_server), progress=False)
    assert len(summary.with_status("done")) >= 1, "no feature labeled in process: the comparison proves little"

    argv = ["label", "--db", there, "--source", "synthetic", "--features", f"0-{DENSE}", "--scorers", "detection,embedding",
            "--base-url", local_llm_server, "--quiet", "--ray", "--ray-workers", "2"]
    job_file = tmp_path / "job.toml"
    job_file.write_text(_toml(tiny_job()))
    assert main([*argv, "--config", str(job_file)]) in (0, 1)
    out = capsys.readouterr().out
    assert "run label-" in out and "too sparse" in out
    assert same(catalog(there), catalog(here))
    [(calls, fresh)] = rows(there, "SELECT count(*), count(*) FILTER (WHERE NOT cached) FROM llm_calls")
    assert (calls, fresh) == (summary.usage.calls, summary.usage.calls - summary.usage.cached)
    assert rows(there, "SELECT kind, status, n_total, n_done FROM runs") == rows(here, "SELECT kind, status, n_total, n_done FROM runs")

    again = label_on_ray(Store(there), tiny_job(base_url=local_llm_server, ray="auto", ray_workers=2), progress=False)
    assert {r.status for r in again.results} <= {"already_done", "skipped_sparse", "failed"}
    assert rows(there, "SELECT count(*) FROM llm_calls WHERE run_id = ? AND NOT cached", [again.run_id]) == [(0,)]
    after, before = catalog(there), catalog(here)
    assert after.pop("failures") == sorted(before.pop("failures") * 2)  # failed features tried again, failing the same way
    assert same(after, before)


def _toml(job) -> str:
    lines = ["[sampling]", *(f"{k} = {v!r}" for k, v in dataclasses.asdict(job.sampling).items())]
    lines += ["[scorer_options.detection]", f"batch_size = {job.scorer_options['detection']['batch_size']}"]
    return "\n".join(lines) + "\n"


@pytest.fixture
def fake_provider():
    """An OpenAI-compatible server answering deterministic filler after 20 ms, every chat answer opening with a
    `Label:` line: (base URL, a function returning how many requests it answered)."""
    with BackgroundServer(latency_app(0.02, label_first=True)) as server:
        yield f"{server.url}/v1", lambda: server.app.state.requests


def test_a_worker_killed_mid_feature_is_retried_without_paying_twice(ray_cluster, fake_provider, tmp_path, capsys):
    """One worker kills its own process as feature 1 enters its detection scoring (its explanation already
    answered): Ray restarts the worker and runs the feature again, whose explanation then comes from the answer
    book. The server answers exactly as many requests as for the in-process job, every feature is labeled once,
    and the stored catalog equals the in-process one. Then `label --ray` finds every answer it needs in the store."""
    base_url, answered = fake_provider
    job = tiny_job(explainer="openai:fake", base_url=base_url, concurrency=1)
    here = synthetic_db(tmp_path / "here.duckdb")
    reference = run_label_job(Store(here), job, progress=False)
    assert len(reference.with_status("done")) == DENSE
    paid_in_process = answered()

    there = synthetic_db(tmp_path / "there.duckdb")
    marker = tmp_path / "killed-once"

    def die_once(feature, stage):
        if feature == 1 and stage == "score:detection" and not marker.exists():
            marker.write_text(str(os.getpid()))
            os.kill(os.getpid(), signal.SIGKILL)

    ray_job = dataclasses.replace(job, ray="auto", ray_workers=2)
    summary = label_on_ray(Store(there), ray_job, on_stage=die_once, progress=False)
    assert marker.exists(), "the worker was never killed: the test proves nothing"
    assert answered() - paid_in_process == paid_in_process, "a retried feature paid twice (or a call was lost)"
    assert [r.status for r in summary.results] == ["done"] * DENSE + ["skipped_sparse"]
    assert same(catalog(there), catalog(here))
    assert rows(there, "SELECT count(*), count(DISTINCT feature) FROM explanations") == [(DENSE, DENSE)]
    assert rows(there, "SELECT count(*) = count(DISTINCT call_uid) FROM llm_calls") == [(True,)]
    # every answer the server gave is in the ledger once; the retried explanation is there as a cache hit
    assert rows(there, "SELECT count(*) FROM llm_calls WHERE NOT cached AND error IS NULL") == [(paid_in_process,)]
    assert rows(there, "SELECT max(n) FROM (SELECT count(*) n FROM llm_calls WHERE NOT cached GROUP BY cache_key)") == [(1,)]
    assert rows(there, "SELECT count(*) FROM llm_calls WHERE cached AND stage = 'explain'") == [(1,)]

    # answers already in the store are the workers' too: `label --ray` under another configuration asking the
    # same requests (detection alone) labels every feature again from the ledger, the server asked nothing
    paid = answered()
    job_file = tmp_path / "job.toml"
    job_file.write_text(_toml(job))
    argv = ["label", "--db", here, "--source", "synthetic", "--features", f"0-{DENSE}", "--scorers", "detection",
            "--explainer", "openai:fake", "--base-url", base_url, "--concurrency", "1", "--config", str(job_file),
            "--quiet", "--ray", "--ray-workers", "2"]
    assert main(argv) == 0
    out = capsys.readouterr().out
    assert "run label-" in out and "too sparse" in out
    assert answered() == paid
    [(again,)] = rows(here, "SELECT run_id FROM runs WHERE run_id <> ? ORDER BY started_at DESC LIMIT 1", [reference.run_id])
    assert dict(rows(here, "SELECT feature, label FROM explanations WHERE run_id = ?", [again])) == {
        r.feature: r.label for r in reference.results if r.label
    }
    [(calls, cached)] = rows(here, "SELECT count(*), count(*) FILTER (WHERE cached) FROM llm_calls WHERE run_id = ?", [again])
    assert calls == cached > 0


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_an_unreachable_cluster_is_one_clear_error_and_stores_nothing(tmp_path, capsys):
    db = synthetic_db(tmp_path / "s.duckdb")
    before = rows(db, "SELECT count(*) FROM runs")
    address = f"127.0.0.1:{_free_port()}"
    with pytest.raises(AutointerpError, match=r"cannot reach the Ray cluster at '127\.0\.0\.1:\d+'.*ray start --head.*`ray`"):
        label_on_ray(Store(db), tiny_job(ray=address), progress=False)
    assert main(["label", "--db", db, "--source", "synthetic", "--features", "0", "--ray", address]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: cannot reach the Ray cluster") and "Traceback" not in err
    assert "as `--ray`" in err  # the setting is named as the command's flag
    assert rows(db, "SELECT count(*) FROM runs") == before


def test_settings_that_do_not_fit_are_refused_before_anything_runs(ray_cluster, tmp_path, capsys):
    db = synthetic_db(tmp_path / "s.duckdb")
    with pytest.raises(AutointerpError, match=r"`ray_workers` \(3\) is more than the cluster's 2 CPUs"):
        label_on_ray(Store(db), tiny_job(ray="auto", ray_workers=3), progress=False)
    assert main(["label", "--db", db, "--source", "synthetic", "--ray-workers", "2"]) == 2
    assert "`--ray-workers` needs `--ray`" in capsys.readouterr().err
    assert main(["label", "--db", db, "--source", "synthetic", "--ray", "--batch"]) == 2
    assert "`--ray` and `--batch` do not go together" in capsys.readouterr().err
    assert rows(db, "SELECT count(*) FROM runs") == [(0,)]
