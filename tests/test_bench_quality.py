"""The label-quality benchmark: tables, figures, controls, and a rerun answered by the call cache."""

from __future__ import annotations

import dataclasses
import math
import shutil

import pytest
from synthetic import make_synthetic_store

from autointerp.bench import report
from autointerp.bench.quality import (
    BASELINE,
    SHUFFLED_SUFFIX,
    ExplainerSetup,
    QualityConfig,
    config_from_dict,
    derangement,
    job_for,
    load_config,
    metric_rows,
    run_quality,
)
from autointerp.config import SamplingConfig
from autointerp.errors import AutointerpError
from autointerp.pipeline import run_label_job
from autointerp.store import Store
from autointerp.store.bench_queries import run_usage
from autointerp.store.jobs import list_runs

SMALL_SAMPLING = SamplingConfig(
    n_train_top=5, n_train_quantile=3, n_quantiles=3, n_valid_positives=3, n_valid_random_negatives=2,
    n_valid_hard_negatives=2, n_test_positives=8, n_test_random_negatives=4, n_test_hard_negatives=4,
)


def api_config(paid_api, **kwargs) -> QualityConfig:
    """3 features; LLMs (explainer and detection judge) on the paid-API double (tests/doubles/paid_api.py)."""
    defaults = dict(
        n_features=3, scorers=("embedding", "detection"), scorer_model="openai:gpt-4o-mini",
        base_url=paid_api.openai_base_url, sampling=SMALL_SAMPLING, n_bootstrap=50,
    )
    return QualityConfig(**{**defaults, **kwargs})


@pytest.fixture(scope="module")
def synthetic_db(tmp_path_factory):
    path = tmp_path_factory.mktemp("quality") / "synthetic.duckdb"
    make_synthetic_store(path, n_contexts=400, n_features=8).close()
    return path


def test_baseline_run_writes_tables_figures_and_controls(synthetic_db, tmp_path):
    cfg = QualityConfig(n_features=5, scorers=("embedding",), explainers=(), sampling=SMALL_SAMPLING)
    result = run_quality(synthetic_db, cfg, tmp_path / "out")
    names = {f.name for f in result.files}
    assert {"quality.md", "quality_summary.csv", "quality_labels.csv"} <= names
    for kind in ("distribution", "cost", "density"):
        png = tmp_path / "out" / f"quality_{kind}_embedding.png"
        assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert {r.setup for r in result.labels} == {BASELINE, BASELINE + SHUFFLED_SUFFIX}
    real = {r.feature: r for r in result.labels if r.setup == BASELINE}
    shuffled = [r for r in result.labels if r.setup.endswith(SHUFFLED_SUFFIX)]
    assert len(real) == 5 and len(shuffled) == 5
    assert all(r.label_from_feature != r.feature and r.label == real[r.label_from_feature].label for r in shuffled)
    # The planted trigger words make the baseline's labels right: they beat shuffled labels on average.
    mean = lambda rows: sum(r.headline("embedding") for r in rows) / len(rows)  # noqa: E731
    assert mean(real.values()) > mean(shuffled) + 0.1
    text = (tmp_path / "out" / "quality.md").read_text()
    assert "headroom" in text and "| baseline | embedding | auroc |" in text


def test_two_runs_with_an_llm_give_identical_results_the_second_from_the_cache(synthetic_db, tmp_path, paid_api):
    """The explainer and detection scorer are the paid-API double (tests/doubles/paid_api.py), not a real API."""
    db = tmp_path / "store.duckdb"
    shutil.copy(synthetic_db, db)
    cfg = api_config(paid_api, explainers=(ExplainerSetup("api-pairs", "openai:gpt-4o-mini", prompt="pairs"),), n_bootstrap=200)
    first = run_quality(db, cfg, tmp_path / "first")
    asked = len(paid_api.received)
    assert asked > 0
    second = run_quality(db, cfg, tmp_path / "second")
    assert len(paid_api.received) == asked  # every request answered by the ledger's cache
    assert second.usage["api-pairs"]["cached_calls"] == second.usage["api-pairs"]["calls"] > 0
    assert first.usage["api-pairs"]["cost_usd"] > 0
    for name in ("quality_summary.csv", "quality_labels.csv", "quality.md"):
        assert (tmp_path / "first" / name).read_text() == (tmp_path / "second" / name).read_text(), name
    assert first.usage["api-pairs"]["new_cost_usd"] > 0 and second.usage["api-pairs"]["new_cost_usd"] == 0
    with Store(db, read_only=True) as store:
        runs = {r.run_id: r for r in list_runs(store.con, kind="bench")}
    assert set(first.run_ids.values()) | set(second.run_ids.values()) <= set(runs)
    api_runs = [runs[first.run_ids["api-pairs"]], runs[second.run_ids["api-pairs"]]]
    assert all(r.status == "done" and r.n_total == 3 and r.n_done + r.n_failed == 3 for r in api_runs)
    assert api_runs[0].cost_usd > 0 and api_runs[0].prompt_tokens > 0  # the rerun was billed nothing:
    assert api_runs[1].cost_usd == 0 and api_runs[1].prompt_tokens == 0


def test_a_setup_is_the_labeling_job_same_requests_labels_and_scores(synthetic_db, tmp_path, paid_api):
    """The bench runs the job's stages: the streaming job for the same setup asks nothing new of the
    paid-API double (tests/doubles/paid_api.py) and stores the bench's labels and scores."""
    paid_api.label_first = True  # explanations parse
    db = tmp_path / "store.duckdb"
    shutil.copy(synthetic_db, db)
    setup = ExplainerSetup("api-k2", "openai:gpt-4o-mini", prompt="pairs", k=2)
    cfg = api_config(paid_api, explainers=(setup,), shuffled_control=False)
    result = run_quality(db, cfg)
    asked = len(paid_api.received)
    summary = run_label_job(Store(db), job_for(cfg, result.source, setup), progress=False)
    assert len(paid_api.received) == asked > 0  # every request of the job was one the bench made
    bench = {r.feature: r for r in result.labels if r.setup == "api-k2"}
    done = {r.feature: r for r in summary.results if r.status == "done"}
    assert sorted(done) == sorted(bench) == result.features
    assert not [f for f in result.failures if f["stage"] == "explain"]
    for feature, row in bench.items():
        assert done[feature].label == row.label
        job_scores = {(s.scorer, s.metric, s.subset): s.value for s in done[feature].scores}
        bench_scores = {(name, s["metric"], s["subset"]): s["value"] for name, e in row.scores.items() for s in e["all"]}
        assert job_scores == bench_scores


def test_the_shuffled_control_is_billed_on_its_own_line(synthetic_db, tmp_path, paid_api):
    """The control scores other features' labels with the same scorer: its calls are not the setup's cost.
    The detection judge is the paid-API double (tests/doubles/paid_api.py); the labels are the baseline's."""
    db = tmp_path / "store.duckdb"
    shutil.copy(synthetic_db, db)
    cfg = api_config(paid_api, scorers=("detection",), explainers=())
    result = run_quality(db, cfg, tmp_path / "out")
    control = BASELINE + SHUFFLED_SUFFIX
    with Store(db, read_only=True) as store:
        real_usage = run_usage(store.con, result.run_ids[BASELINE])
        control_usage = run_usage(store.con, result.run_ids[control])
    assert [sum(1 for r in result.labels if r.setup == s) for s in (BASELINE, control)] == [3, 3]
    assert set(real_usage) == set(control_usage) == {"detection"}
    assert real_usage["detection"].n_calls == control_usage["detection"].n_calls > 0  # same splits, same batches
    billed = real_usage["detection"].prompt_tokens + real_usage["detection"].completion_tokens
    assert result.usage[BASELINE]["score_tokens"] == pytest.approx(billed / 3)
    assert result.usage[control]["cost_usd"] > 0
    rows = {(r["setup"], r["metric"]): r for r in metric_rows(result) if r["subset"] == "all"}
    for setup in (BASELINE, control):
        assert rows[(setup, "balanced_accuracy")]["cost_usd_per_feature"] == result.usage[setup]["cost_usd"]


def test_derangement_never_keeps_a_label_and_is_fixed_by_seed():
    items = list(range(10, 20))
    lender = derangement(items, seed=3)
    assert sorted(lender) == items and sorted(lender.values()) == items
    assert all(k != v for k, v in lender.items())
    assert derangement(items, seed=3) == lender
    assert derangement([5], seed=0) == {}


def test_bench_config_file_loads_and_rejects_unknown_keys():
    cfg = load_config()
    assert cfg.setups()[0].explainer == BASELINE and len(cfg.setups()) >= 2
    with pytest.raises(AutointerpError, match="unknown key"):
        config_from_dict({"explainers": [{"name": "x", "model": "local"}]})
    with pytest.raises(AutointerpError, match="repeat"):
        config_from_dict({"explainers": [{"name": "a"}, {"name": "a"}]})


def test_statistics_match_hand_computed_values():
    lo, hi = report.wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-3) and hi == pytest.approx(0.9433, abs=1e-3)
    assert report.win_rate([0.9, 0.5, 0.7], [0.1, 0.5, 0.8])["rate"] == pytest.approx(0.5)
    grouped = report.grouped_auroc_with_ci([0.9, 0.8], [[0.1, 0.85], [0.2, 0.3]], n_boot=200)
    assert grouped["auroc"] == pytest.approx(7 / 8)
    rho = report.spearman_with_ci([1, 2, 3, 4, 5], [2, 4, 6, 8, 11], n_boot=200)
    assert rho["rho"] == pytest.approx(1.0) and rho["n"] == 5
    assert report.spearman_with_ci([1, 1, 1], [1, 2, 3])["rho"] is None
    stats = report.mean_with_ci([1.0, 2.0, None, float("nan"), 3.0], n_boot=200)
    assert stats["mean"] == 2.0 and stats["n"] == 3 and stats["ci_low"] <= 2.0 <= stats["ci_high"]
    assert not math.isnan(stats["median"])


@pytest.mark.slow
def test_quality_bench_with_the_bundled_model_twice(synthetic_db, tmp_path, local_llm_server):
    db = tmp_path / "store.duckdb"
    shutil.copy(synthetic_db, db)
    cfg = QualityConfig(
        n_features=2, scorers=("embedding", "detection"), base_url=local_llm_server,
        explainers=(ExplainerSetup("local-pairs", "local", prompt="pairs"),),
        sampling=dataclasses.replace(SMALL_SAMPLING, n_test_positives=4, n_test_random_negatives=2, n_test_hard_negatives=2),
    )
    run_quality(db, cfg, tmp_path / "a")
    second = run_quality(db, cfg, tmp_path / "b")
    assert all(u["cached_calls"] == u["calls"] for u in second.usage.values())
    assert (tmp_path / "a" / "quality_labels.csv").read_text() == (tmp_path / "b" / "quality_labels.csv").read_text()
