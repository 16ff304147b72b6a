"""The batch driver (provider batch APIs) end to end on a small synthetic store, against the paid-API double
(tests/doubles/paid_api.py and autointerp/bench/batch_double.py: test doubles of OpenAI's and Anthropic's
APIs, not the real services)."""

from __future__ import annotations

import asyncio
import dataclasses

import pytest
from synthetic import make_synthetic_store

from autointerp import batch_job
from autointerp.batch_job import BatchLimits, cancel_batches, run_batch_job
from autointerp.bench.batch_double import Outcome
from autointerp.config import JobConfig, SamplingConfig
from autointerp.errors import AutointerpError
from autointerp.llm.batches import BatchRejected
from autointerp.pipeline import run_label_job
from autointerp.store import Store

N_FEATURES = 4  # 0..2 dense, 3 too sparse to label
SAMPLING = SamplingConfig(
    n_train_top=4, n_train_quantile=4, n_train_hard_negatives=2, n_quantiles=2, n_valid_positives=2,
    n_valid_random_negatives=1, n_valid_hard_negatives=1, n_test_positives=4, n_test_random_negatives=2,
    n_test_hard_negatives=2, min_active_contexts=8,
)
MODELS = {"openai": "openai:gpt-4o-mini", "anthropic": "anthropic:claude-3-5-haiku"}


def make_db(path) -> Store:
    make_synthetic_store(path, n_contexts=300, n_features=N_FEATURES, context_len=16, seed=1).close()
    return Store(path)


def job_for(paid_api, provider: str = "openai", **overrides) -> JobConfig:
    base_url = paid_api.openai_base_url if provider == "openai" else paid_api.anthropic_base_url
    fields = dict(
        source="synthetic", features=f"0-{N_FEATURES - 1}", explainer=MODELS[provider], scorers=("detection", "embedding"),
        sampling=SAMPLING, scorer_options={"detection": {"batch_size": 4}}, k=2, concurrency=2, base_url=base_url,
    )
    return JobConfig(**{**fields, **overrides})


def run_to_end(store, job, steps: int = 12, **kwargs):
    for _ in range(steps):
        state = run_batch_job(store, job, progress=False, **kwargs)
        if state.done:
            return state
    raise AssertionError(f"not done after {steps} steps: {state.features}")


def labels_and_scores(results):
    return {
        r.feature: (r.status, r.label, sorted((s.scorer, s.metric, s.subset, s.value, s.ci_low, s.ci_high, s.n) for s in r.scores))
        for r in results
    }


def rows(store, sql, params=()):
    with store.reading() as con:
        return con.execute(sql, list(params)).fetchall()


@pytest.fixture
def labeling_api(paid_api):
    paid_api.label_first = True
    return paid_api


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_batched_job_equals_the_streaming_job_at_half_the_cost(tmp_path, labeling_api, provider):
    job = job_for(labeling_api, provider)
    streamed = run_label_job(make_db(tmp_path / "s.duckdb"), job, progress=False)
    n_streamed = len(labeling_api.received)
    assert n_streamed > 0
    store = make_db(tmp_path / "b.duckdb")
    batched = run_to_end(store, job)
    assert len(labeling_api.received) == n_streamed  # nothing streamed: every answer came from a batch
    assert labels_and_scores(batched.results) == labels_and_scores(streamed.results)
    assert [r.status for r in batched.results].count("done") == 3
    created = labeling_api.batches.created(provider)
    assert created and sum(len(b.lines) for b in created) == n_streamed  # each request sent once
    (streamed_cost,) = rows(Store(tmp_path / "s.duckdb"), "SELECT sum(cost_usd) FROM llm_calls WHERE NOT cached")[0]
    batch_cost, n_batched, n_rows = rows(
        store, "SELECT sum(cost_usd), count(batch_key), count(*) FROM llm_calls WHERE NOT coalesce(cached, false)"
    )[0]
    assert n_batched == n_rows == n_streamed
    assert batch_cost == pytest.approx(streamed_cost * 0.5)
