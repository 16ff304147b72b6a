"""The batch driver (provider batch APIs) end to end on a small synthetic store, against the paid-API double
(tests/doubles/paid_api.py and autointerp/bench/batch_double.py: test doubles of OpenAI's and Anthropic's
APIs, not the real services)."""

from __future__ import annotations

import asyncio

import pytest
from synthetic import make_synthetic_store

from doubles.paid_api import Reply

from autointerp import batch_job
from autointerp.batch_job import BatchLimits, cancel_batches, run_batch_job
from autointerp.bench.batch_double import Outcome
from autointerp.cli import main
from autointerp.config import JobConfig, SamplingConfig, load_job_config
from autointerp.errors import AutointerpError
from autointerp.llm import PriceTable, Usage
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


@pytest.fixture
def streamed_reference(tmp_path_factory, labeling_api):
    """What the streaming job gives for job_for(..., "openai"): the reference for every batched variant."""
    store = make_db(tmp_path_factory.mktemp("ref") / "ref.duckdb")
    summary = run_label_job(store, job_for(labeling_api), progress=False)
    labeling_api.received.clear()
    return labels_and_scores(summary.results)


class Killed(BaseException):
    """A kill -9 stand-in: not an Exception, so nothing in the job handles it."""


@pytest.mark.parametrize(
    ("boundary", "hit", "provider"),  # hit: the how-many-th time the boundary is reached (2: in a later phase)
    [("reconciled", 1, "openai"), ("collected", 1, "openai"), ("staged", 1, "openai"), ("staged", 2, "openai"),
     ("intent_recorded", 1, "openai"), ("batch_created", 1, "openai"), ("batch_created", 2, "openai"),
     ("batch_created", 1, "anthropic"), ("intent_recorded", 2, "anthropic")],
)
def test_resume_after_a_kill_at_every_phase_boundary(
    tmp_path, labeling_api, streamed_reference, monkeypatch, boundary, hit, provider
):
    seen = {"n": 0}

    def killing(name):
        if name == boundary:
            seen["n"] += 1
            if seen["n"] == hit:
                raise Killed(name)

    monkeypatch.setattr(batch_job, "checkpoint", killing)
    store = make_db(tmp_path / "b.duckdb")
    job = job_for(labeling_api, provider)
    with pytest.raises(Killed):
        run_to_end(store, job)
    store.close()
    monkeypatch.setattr(batch_job, "checkpoint", lambda name: None)
    state = run_to_end(Store(tmp_path / "b.duckdb"), job)
    if provider == "openai":
        assert labels_and_scores(state.results) == streamed_reference
    assert [r.status for r in state.results].count("done") == 3
    assert labeling_api.received == []  # nothing streamed
    sent = [line["custom_id"].rsplit("-", 1)[0] for b in labeling_api.batches.created() for line in b.lines]
    recorded = rows(store, "SELECT provider_batch_id, batch_key FROM llm_batches WHERE provider_batch_id IS NOT NULL")
    assert len(recorded) == len(labeling_api.batches.created())  # a batch created before the kill was adopted, not sent again
    requests = rows(store, "SELECT DISTINCT cache_key, occurrence FROM llm_batch_requests r JOIN llm_batches b USING (batch_key) "
                    "WHERE b.provider_batch_id IS NOT NULL")
    assert len(sent) == len(requests)  # no request went to the provider twice


def test_errored_lines_go_again_in_the_next_batch(tmp_path, labeling_api, streamed_reference):
    labeling_api.batches.plan(Outcome(error_every=3))
    store = make_db(tmp_path / "b.duckdb")
    state = run_to_end(store, job_for(labeling_api))
    assert labels_and_scores(state.results) == streamed_reference
    first, second, *_ = labeling_api.batches.created()
    errored = [r["line"]["body"] for r in first.results if r["kind"] == "errored"]
    assert errored and all(body in [line["body"] for line in second.lines] for body in errored)
    assert rows(store, "SELECT count(*) FROM llm_batch_requests WHERE state = 'errored'")[0][0] == len(errored)


def test_a_line_that_keeps_failing_in_batches_is_streamed_then_the_feature_fails(tmp_path, labeling_api):
    labeling_api.batches.plan(*[Outcome(error_every=1)] * batch_job.MAX_BATCH_ATTEMPTS)
    store = make_db(tmp_path / "b.duckdb")
    state = run_to_end(store, job_for(labeling_api, k=1, scorers=("embedding",)))
    assert len(labeling_api.calls("/v1/chat/completions")) == 3  # each explain request streamed once, after 2 batches
    assert [r.status for r in state.results].count("done") == 3
    # a request that also fails when streamed fails its feature, without looping
    labeling_api.batches.plan(*[Outcome(error_every=1)] * batch_job.MAX_BATCH_ATTEMPTS)
    labeling_api.script(*[Reply(400, body={"error": {"message": "bad request (double)"}})] * 3)
    state = run_to_end(make_db(tmp_path / "c.duckdb"), job_for(labeling_api, k=1, scorers=("embedding",)))
    failed = [r for r in state.results if r.status == "failed"]
    assert len(failed) == 3 and all("when sent alone" in r.error and r.stage == "explain" for r in failed)


def test_an_expired_batch_has_its_unfinished_remainder_resubmitted(tmp_path, labeling_api, streamed_reference):
    labeling_api.batches.plan(Outcome(expire_after=2))
    store = make_db(tmp_path / "b.duckdb")
    state = run_to_end(store, job_for(labeling_api))
    assert labels_and_scores(state.results) == streamed_reference
    first, second, *_ = labeling_api.batches.created()
    assert first.status == "expired"
    assert [line["body"] for line in first.lines[2:]] == [line["body"] for line in second.lines[: len(first.lines) - 2]]


def test_a_batch_in_progress_is_polled_until_it_ends(tmp_path, labeling_api, streamed_reference):
    labeling_api.batches.polls_in_progress = 2
    store = make_db(tmp_path / "b.duckdb")
    first = run_batch_job(store, job_for(labeling_api), progress=False)
    assert first.submitted > 0 and not first.done
    polled = run_batch_job(store, job_for(labeling_api), progress=False)
    assert polled.collected == polled.submitted == 0
    assert [b.provider_status for b in polled.open_batches()] == ["in_progress"]
    assert labels_and_scores(run_to_end(store, job_for(labeling_api)).results) == streamed_reference


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_cancelled_batches_keep_what_finished_and_the_rerun_continues(tmp_path, labeling_api, provider):
    labeling_api.batches.polls_in_progress = 5
    store = make_db(tmp_path / "b.duckdb")
    job = job_for(labeling_api, provider)
    state = run_batch_job(store, job, progress=False)
    cancelled = asyncio.run(cancel_batches(store, state.run_id))
    assert len(cancelled) == 1
    assert rows(store, "SELECT status FROM runs WHERE run_id = ?", [state.run_id]) == [("cancelled",)]
    (batch,) = labeling_api.batches.created(provider)
    after = run_batch_job(store, job, progress=False)
    assert after.collected == len(batch.lines) // 2
    states = dict(rows(store, "SELECT state, count(*) FROM llm_batch_requests GROUP BY state"))
    assert states["cancelled"] == len(batch.lines) - len(batch.lines) // 2
    labeling_api.batches.polls_in_progress = 0
    assert run_to_end(store, job).done
    assert labeling_api.received == []


@pytest.mark.parametrize("provider", ["openai", "anthropic"])
def test_a_rejected_batch_gives_one_clear_error_and_loses_nothing(tmp_path, labeling_api, provider):
    labeling_api.batches.plan(Outcome(reject="request 3 is too large (double)"))
    store = make_db(tmp_path / "b.duckdb")
    job = job_for(labeling_api, provider)
    with pytest.raises(BatchRejected, match="too large.*Nothing is lost.*run the same command again"):
        run_to_end(store, job)
    assert rows(store, "SELECT count(*) FROM llm_batches WHERE status = 'rejected'") == [(1,)]
    assert run_to_end(store, job).done


def test_requests_are_split_at_the_batch_limits(tmp_path, labeling_api, streamed_reference):
    store = make_db(tmp_path / "b.duckdb")
    state = run_to_end(store, job_for(labeling_api), limits=BatchLimits(max_requests=4))
    assert labels_and_scores(state.results) == streamed_reference
    sizes = [len(b.lines) for b in labeling_api.batches.created()]
    assert max(sizes) == 4 and len(sizes) > 2
    line_bytes = max(len(line) for b in labeling_api.batches.created() for line in map(str, b.lines))
    state2 = run_to_end(make_db(tmp_path / "c.duckdb"), job_for(labeling_api, features="0-1"), limits=BatchLimits(max_bytes=2 * line_bytes + 200))
    assert state2.done


def test_a_batched_answer_serves_a_streaming_rerun_and_the_reverse(tmp_path, labeling_api):
    store = make_db(tmp_path / "b.duckdb")
    run_to_end(store, job_for(labeling_api, scorers=("detection", "embedding")))
    summary = run_label_job(store, job_for(labeling_api, scorers=("embedding",)), progress=False)
    assert [r.status for r in summary.results].count("done") == 3
    assert labeling_api.received == []  # every explainer request answered by a batched answer
    other = make_db(tmp_path / "c.duckdb")
    run_label_job(other, job_for(labeling_api, scorers=("embedding",)), progress=False)
    assert labeling_api.received
    assert run_to_end(other, job_for(labeling_api, scorers=("detection", "embedding"))).done
    assert rows(other, "SELECT DISTINCT stage FROM llm_batch_requests") == [("detection",)]  # explain came from the ledger


def test_a_provider_without_batches_is_refused_before_anything_is_sent(tmp_path):
    store = make_db(tmp_path / "b.duckdb")
    with pytest.raises(AutointerpError, match="local has no batch API: --batch works with openai"):
        run_batch_job(store, JobConfig(source="synthetic", features="0-1", explainer="local"), progress=False)
    assert rows(store, "SELECT count(*) FROM runs") == [(0,)]


def test_the_cli_runs_a_batch_job_step_by_step_and_shows_its_batches(tmp_path, labeling_api, capsys):
    db = str(tmp_path / "b.duckdb")
    make_db(db).close()
    argv = ["label", "--db", db, "--source", "synthetic", "--features", f"0-{N_FEATURES - 1}", "--explainer",
            MODELS["openai"], "--scorers", "embedding", "--base-url", labeling_api.openai_base_url, "--batch", "--quiet"]
    assert main([*argv, "--dry-run"]) == 0
    assert "with --batch" in capsys.readouterr().out
    assert main(argv) == 0
    out = capsys.readouterr().out
    (batch,) = labeling_api.batches.created()
    assert batch.id in out and "run the same command again" in out
    run_id = out.split("batch run ")[1].split()[0]
    assert main(["runs", "--db", db]) == 0
    assert f"{run_id}: open provider batches {batch.id}" in capsys.readouterr().out
    assert main(["batches", "list", "--db", db]) == 0
    assert batch.id in capsys.readouterr().out
    assert main([*argv, "--wait", "--poll", "0"]) == 0
    out = capsys.readouterr().out
    assert f"batch run {run_id} done: 3 labeled" in out
    assert main(["runs", "--db", db, "--run", run_id]) == 0
    out = capsys.readouterr().out
    assert batch.id in out and "collected" in out and "batch" in out
    assert main(["costs", "--db", db, "--run", run_id]) == 0
    assert " batch " in capsys.readouterr().out
    assert main(["batches", "cancel", "label-x", "--db", db]) == 2
    assert "no batch run" in capsys.readouterr().err
    assert main([*argv[:-2], "--wait"]) == 2  # --wait without --batch


def test_batch_prices_are_half_the_list_price_unless_the_table_says_otherwise():
    usage = Usage(1_000_000, 100_000)
    table = PriceTable.default()
    assert table.cost("openai", "gpt-4o-mini", usage, batch=True)[0] == pytest.approx(table.cost("openai", "gpt-4o-mini", usage)[0] / 2)
    custom = table.with_overrides({"openai:gpt-4o-mini": {"input": 0.15, "output": 0.6, "batch_input": 0.1, "batch_output": 0.2}})
    assert custom.cost("openai", "gpt-4o-mini", usage, batch=True)[0] == pytest.approx(0.1 + 0.02)
    with pytest.raises(AutointerpError, match="batch_input"):
        table.with_overrides({"openai:x": {"input": 1, "output": 2, "batch": 1}})


def test_a_job_file_can_ask_for_batches(tmp_path):
    (path := tmp_path / "job.toml").write_text('source = "s"\nexplainer = "openai:gpt-4o-mini"\nbatch = true\n')
    assert load_job_config(path).batch is True
    assert load_job_config(path).batch != load_job_config(None).batch
    path.write_text('batch = "yes"\n')
    with pytest.raises(AutointerpError, match="batch = 'yes'"):
        load_job_config(path)
