"""The labeling job end to end on a small synthetic store, with the real bundled model behind llama.cpp.

The paid-API double (tests/doubles/paid_api.py) stands in for OpenAI only where a test needs an explainer
that deterministically answers something unparsable.
"""

from __future__ import annotations

import dataclasses
import json

import pytest
from doubles.paid_api import FAKE_OPENAI_KEY, Reply
from synthetic import make_synthetic_store

from autointerp import ranking, render
from autointerp.bench.latency_server import fake_chat_body
from autointerp.cli import main
from autointerp.config import JobConfig, SamplingConfig, load_job_config
from autointerp.errors import AutointerpError
from autointerp.explain import explainer_messages
from autointerp.pipeline import job_config_hash, parse_feature_spec, run_label_job
from autointerp.prompts import load_prompt
from autointerp.sampling import sample
from autointerp.store import Store
from autointerp.store.catalog_queries import best_explanation_rows
from autointerp.store.llm_calls import list_calls

N_FEATURES = 4  # 0..2 dense, 3 too sparse to label
TINY_SAMPLING = SamplingConfig(
    n_train_top=4,
    n_train_quantile=4,
    n_train_hard_negatives=2,
    n_quantiles=2,
    n_valid_positives=2,
    n_valid_random_negatives=1,
    n_valid_hard_negatives=1,
    n_test_positives=4,
    n_test_random_negatives=2,
    n_test_hard_negatives=2,
    min_active_contexts=8,
    # the train split as before top contexts were shared with valid/test: on the interleaved top contexts of
    # this store the bundled 135M model echoes the prompt's example label for every feature (no usable label)
    top_share=0.0,
)
TEST_SIZE = TINY_SAMPLING.n_test_positives + TINY_SAMPLING.n_test_random_negatives + TINY_SAMPLING.n_test_hard_negatives
ONE_DETECTION_CALL = {"detection": {"batch_size": TEST_SIZE}}  # the bundled model is slow with logprobs
LEAK_WINDOW = 8  # tokens of a test context that must never show up in an explainer prompt


def synthetic_db(path) -> str:
    make_synthetic_store(path, n_contexts=300, n_features=N_FEATURES, context_len=16, seed=1).close()
    return str(path)


def tiny_job(**overrides) -> JobConfig:
    fields = {
        "source": "synthetic",
        "features": f"0-{N_FEATURES - 1}",
        "explainer": "local",
        "scorers": ("detection", "embedding"),
        "sampling": TINY_SAMPLING,
        "scorer_options": ONE_DETECTION_CALL,
        "concurrency": 2,
    }
    return JobConfig(**{**fields, **overrides})


def rows(db: str, sql: str, params=()) -> list[tuple]:
    with Store(db, read_only=True) as store:
        return store.con.execute(sql, list(params)).fetchall()


def test_feature_specs():
    assert parse_feature_spec("auto:5") == (5, [])
    assert parse_feature_spec("0-3") == (None, [0, 1, 2, 3])
    assert parse_feature_spec("9,1,5,1") == (None, [1, 5, 9])
    assert parse_feature_spec(" 0-2, 7 ") == (None, [0, 1, 2, 7])
    for bad in ("", "auto:0", "auto:x", "3-1", "a,b", "-2"):
        with pytest.raises(AutointerpError, match="`features`"):
            parse_feature_spec(bad)


def test_config_hash_covers_what_changes_results_and_nothing_else():
    base = job_config_hash(tiny_job())
    for same in ({"concurrency": 64}, {"features": "auto:3"}, {"base_url": "http://x/v1"}, {"rpm": 10.0}):
        assert job_config_hash(tiny_job(**same)) == base, same
    changed = [
        {"k": 3},
        {"prompt": "pairs"},
        {"explainer": "openai:gpt-4o-mini"},
        {"scorers": ("embedding",)},
        {"sampling": dataclasses.replace(TINY_SAMPLING, seed=1)},
        {"scorer_options": {"detection": {"batch_size": 4}}},
        {"simulator": "openai:gpt-4o"},
        {"evidence": True},
    ]
    hashes = {job_config_hash(tiny_job(**c)) for c in changed}
    assert base not in hashes and len(hashes) == len(changed)
    assert job_config_hash(tiny_job(scorers=("embedding", "detection"))) == base  # order does not change results


def test_job_file_and_flags(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text(
        'source = "s"\nscorers = ["embedding"]\nk = 2\n[sampling]\nn_test_positives = 6\n[scorer_options.embedding]\nbefore = 4\n'
    )
    job = load_job_config(path, k=3, seed=7, explainer=None)
    assert (job.source, job.scorers, job.k, job.explainer) == ("s", ("embedding",), 3, "local")
    assert (job.sampling.n_test_positives, job.sampling.seed, job.scorer_options) == (
        6,
        7,
        {"embedding": {"before": 4}},
    )
    path.write_text('source = "s"\nevidence = true\n')
    assert load_job_config(path).evidence is True and load_job_config(path, evidence=False).evidence is False
    path.write_text('source = "s"\nevidence = "yes"\n')
    with pytest.raises(AutointerpError, match="evidence"):
        load_job_config(path)
    path.write_text('source = "s"\nk = true\n')
    with pytest.raises(AutointerpError, match="k = True: Input should be a valid integer"):
        load_job_config(path)
    path.write_text("sorce = 's'\n")
    with pytest.raises(AutointerpError, match="unknown key"):
        load_job_config(path)


@pytest.fixture(scope="module")
def labeled(tmp_path_factory, local_llm_server):
    """One real job over the synthetic store: (db path, summary)."""
    db = synthetic_db(tmp_path_factory.mktemp("pipeline") / "job.duckdb")
    summary = run_label_job(Store(db), tiny_job(base_url=local_llm_server), progress=False)
    return db, summary


def test_job_labels_scores_and_stores_provenance(labeled):
    db, summary = labeled
    job = tiny_job()
    assert summary.status == "done"
    by_feature = {r.feature: r for r in summary.results}
    assert sorted(by_feature) == list(range(N_FEATURES))
    assert by_feature[N_FEATURES - 1].status == "skipped_sparse"
    done = summary.with_status("done")
    assert done, f"the bundled model gave no usable label at all: {summary.results}"
    assert {r.status for r in summary.results} <= {"done", "failed", "skipped_sparse"}

    prompt = load_prompt("explain_highlight")
    for r in done:
        (row,) = rows(
            db,
            "SELECT label, author, explainer_model, prompt_name, prompt_hash, sampling_config, seed, run_id, config_hash "
            "FROM explanations WHERE explanation_id = ?",
            [r.explanation_id],
        )
        label, author, model, prompt_name, prompt_hash, sampling_config, seed, run_id, chash = row
        assert (label, author, model) == (r.label, "llm", "local:smollm2")
        assert (prompt_name, prompt_hash) == (prompt.name, prompt.sha256)
        assert json.loads(sampling_config) == dataclasses.asdict(TINY_SAMPLING) and seed == TINY_SAMPLING.seed
        assert (run_id, chash) == (summary.run_id, job_config_hash(job))
        stored = rows(
            db,
            "SELECT scorer, metric, subset, n, ci_low, value, ci_high FROM scores WHERE explanation_id = ?",
            [r.explanation_id],
        )
        assert {s[0] for s in stored} == {"detection", "embedding"}
        embedding_all = [s for s in stored if s[:3] == ("embedding", "auroc", "all")]
        assert embedding_all and embedding_all[0][3] == TEST_SIZE
        for *_, low, value, high in stored:
            if value is not None and low is not None:
                assert low - 1e-9 <= value <= high + 1e-9
        assert rows(db, "SELECT count(*) FROM label_embeddings WHERE explanation_id = ?", [r.explanation_id]) == [(1,)]
        (details,) = rows(db, "SELECT details FROM explanations WHERE explanation_id = ?", [r.explanation_id])[0]
        baseline = json.loads(details)["baseline"]  # the non-LLM label beside the LLM's, on the same test split
        assert baseline["label"] and baseline == r.baseline.to_details()
        assert (baseline["score"]["scorer"], baseline["score"]["subset"], baseline["score"]["n"]) == ("embedding", "all", TEST_SIZE)
    for r in summary.with_status("failed"):
        assert r.baseline is not None and r.baseline.label
    compared = summary.versus_baseline()
    assert compared["wins"]["n"] == len(done)

    jobs_rows = rows(db, "SELECT feature, status, explanation_id FROM feature_jobs ORDER BY feature")
    assert [(f, s) for f, s, _ in jobs_rows] == [(r.feature, r.status) for r in summary.results]
    assert all((e is not None) == (s == "done") for _, s, e in jobs_rows)
    for r in summary.with_status("failed"):  # the bundled model's unparsable answers: recorded, never a label
        assert rows(db, "SELECT count(*) FROM explanations WHERE feature = ?", [r.feature]) == [(0,)]
        assert rows(
            db, "SELECT count(*) FROM failures WHERE feature = ? AND run_id = ?", [r.feature, summary.run_id]
        ) == [(1,)]

    (run,) = rows(db, "SELECT status, n_total, n_done, n_failed, n_skipped, prompt_tokens, ended_at FROM runs")
    counts = summary.counts()
    assert run[:5] == ("done", N_FEATURES, counts["done"], counts["failed"], counts["skipped_sparse"])
    assert run[5] == summary.usage.prompt_tokens > 0 and run[6] is not None
    ledger = rows(
        db, "SELECT coalesce(sum(prompt_tokens), 0) FROM llm_calls WHERE run_id = ? AND NOT cached", [summary.run_id]
    )
    assert ledger == [(summary.usage.prompt_tokens,)]


def _without_markup(text: str) -> str:
    return text.replace(render.HIGHLIGHT_OPEN, "").replace(render.HIGHLIGHT_CLOSE, "")


def test_no_test_context_reaches_an_explainer_prompt(labeled):
    db, summary = labeled
    with Store(db) as store:
        calls = [c for c in list_calls(store.con, summary.run_id) if c["stage"] == "explain"]
        examples = {
            r.feature: sample(store, "synthetic", r.feature, TINY_SAMPLING)
            for r in summary.results
            if r.status != "skipped_sparse"
        }
    assert calls
    unmatched = list(calls)
    for feature, fe in examples.items():
        first = explainer_messages(fe, "highlight", 0)[0]
        sent = [c for c in calls if c["request"]["messages"][: len(first)] == first]
        assert sent, f"no explainer request of feature {feature} in the ledger"
        leaks = []
        for example in fe.test.all():
            center = render.window_center(example, fe.characteristic_tokens)
            text = render.plain_text(render.window(example, center, LEAK_WINDOW // 2, LEAK_WINDOW // 2 - 1)[0])
            for call in sent:
                if any(text in _without_markup(m["content"]) for m in call["request"]["messages"]):
                    leaks.append((example.context_id, text))
        assert not leaks, f"feature {feature}: test contexts shown to the explainer: {leaks}"
        unmatched = [c for c in unmatched if c not in sent]
    assert not unmatched, "explainer requests that belong to no labeled feature"


def test_the_job_keeps_each_features_stored_best_label_current(labeled):
    db, summary = labeled
    with Store(db, read_only=True) as store:
        stored = store.con.execute("SELECT * FROM feature_best ORDER BY source_id, feature").fetchall()
        assert stored == best_explanation_rows(store.con, ranking.sql_parameters())
    assert [r[1] for r in stored] == sorted(r.feature for r in summary.with_status("done"))


def test_rerun_skips_finished_features_and_calls_nothing(labeled, local_llm_server):
    db, first = labeled
    again = run_label_job(Store(db), tiny_job(base_url=local_llm_server), progress=False)
    done_before = {r.feature for r in first.with_status("done")}
    assert {r.feature for r in again.with_status("already_done")} == done_before
    assert {r.feature: r.label for r in again.with_status("already_done")} == {
        r.feature: r.label for r in first.with_status("done")
    }
    assert again.with_status("skipped_sparse")[0].feature == N_FEATURES - 1
    # failed features are tried again, answered from the ledger: no fresh call
    assert rows(db, "SELECT count(*) FROM llm_calls WHERE run_id = ? AND NOT cached", [again.run_id]) == [(0,)]
    assert again.usage.prompt_tokens == 0
    assert rows(db, "SELECT count(*) FROM explanations") == [(len(done_before),)]
    assert rows(db, "SELECT count(*) FROM feature_jobs") == [(N_FEATURES,)]


def test_parse_failure_is_recorded_and_never_a_label(tmp_path, paid_api):
    db = synthetic_db(tmp_path / "fail.duckdb")
    # The double answers with filler far longer than a label: every explanation fails to parse.
    job = tiny_job(explainer="openai:gpt-4o-mini", scorers=("embedding",), base_url=paid_api.openai_base_url)
    summary = run_label_job(Store(db), job, progress=False)
    assert summary.status == "done"
    assert [r.status for r in summary.results] == ["failed"] * (N_FEATURES - 1) + ["skipped_sparse"]
    assert rows(db, "SELECT count(*) FROM explanations") == [(0,)]
    failures = rows(db, "SELECT feature, stage, error, raw_output FROM failures ORDER BY feature")
    assert [(f, s) for f, s, *_ in failures] == [(f, "explain") for f in range(N_FEATURES - 1)]
    answers = {
        fake_chat_body(c.body)["choices"][0]["message"]["content"] for c in paid_api.calls("/v1/chat/completions")
    }
    for _, _, error, raw in failures:
        assert "no usable label" in error
        assert raw and set(json.loads(raw)) <= answers  # what the model said, kept for inspection
    assert rows(db, "SELECT DISTINCT status FROM feature_jobs WHERE feature < ?", [N_FEATURES - 1]) == [("failed",)]
    assert rows(db, "SELECT n_failed, n_done FROM runs") == [(N_FEATURES - 1, 0)]

    n_requests = len(paid_api.received)
    again = run_label_job(Store(db), job, progress=False)  # failed features are retried, from the ledger
    assert len(paid_api.received) == n_requests
    assert [r.status for r in again.results] == [r.status for r in summary.results]
    assert again.usage.calls > 0 and again.usage.cached == again.usage.calls


def test_score_stores_a_human_label_on_the_job_test_split(labeled, local_llm_server, capsys):
    db, _ = labeled
    job_file = f"{db}.toml"
    with open(job_file, "w") as fh:
        fh.write("[sampling]\n" + "".join(f"{k} = {v}\n" for k, v in dataclasses.asdict(TINY_SAMPLING).items()))
        fh.write(f"[scorer_options.detection]\nbatch_size = {TEST_SIZE}\n")
    code = main(
        [
            "score",
            "--db",
            db,
            "--source",
            "synthetic",
            "--feature",
            "0",
            "--label",
            "the word 'dog'",
            "--config",
            job_file,
            "--scorers",
            "detection,embedding",
            "--base-url",
            local_llm_server,
            "--json",
        ]
    )
    assert code == 0
    out = json.loads(capsys.readouterr().out)
    (row,) = rows(
        db,
        "SELECT label, author, run_id, sampling_config FROM explanations WHERE explanation_id = ?",
        [out["explanation_id"]],
    )
    assert row[:2] == ("the word 'dog'", "human") and json.loads(row[3]) == dataclasses.asdict(TINY_SAMPLING)
    assert rows(db, "SELECT kind, status FROM runs WHERE run_id = ?", [row[2]]) == [("score", "done")]
    stored = rows(db, "SELECT scorer, metric, subset, n FROM scores WHERE explanation_id = ?", [out["explanation_id"]])
    assert {s[0] for s in stored} == {"detection", "embedding"}
    assert ("embedding", "auroc", "all", TEST_SIZE) in stored
    # per-quantile scores beside the pooled one; the judged items are in the store, not repeated per row
    quantiles = rows(
        db,
        "SELECT DISTINCT quantile FROM score_items WHERE explanation_id = ? AND item_group = 'positives' ORDER BY 1",
        [out["explanation_id"]],
    )
    assert quantiles and all(q is not None for (q,) in quantiles)
    for score in out["scores"]:
        assert "items" not in score
        assert list(score["details"]["by_quantile"]) == [str(q) for (q,) in quantiles]
    n_items = rows(db, "SELECT scorer, count(*) FROM score_items WHERE explanation_id = ? GROUP BY 1", [out["explanation_id"]])
    assert sorted(n_items) == [("detection", TEST_SIZE), ("embedding", TEST_SIZE)]
    code = main(["score", "--db", db, "--source", "synthetic", "--feature", "0", "--label", "dogs", "--config", job_file,
                 "--scorers", "embedding"])
    table = capsys.readouterr().out
    assert code == 0 and "by activation quantile" in table
    assert all(f"q{q} " in table for (q,) in quantiles)


def test_dry_run_calls_no_model(tmp_path, capsys, monkeypatch):
    db = synthetic_db(tmp_path / "dry.duckdb")
    monkeypatch.delenv("OPENAI_API_KEY", raising=False)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    code = main(
        [
            "label",
            "--db",
            db,
            "--source",
            "synthetic",
            "--features",
            "0-2",
            "--explainer",
            "openai:gpt-4o-mini",
            "--scorers",
            "detection,embedding",
            "--dry-run",
        ]
    )
    assert code == 0
    out = capsys.readouterr().out
    assert "no model was called" in out and "explain" in out and "detection" in out and "$" in out
    assert rows(db, "SELECT count(*) FROM llm_calls") == [(0,)]
    assert rows(db, "SELECT count(*) FROM runs") == [(0,)]


def test_user_errors_are_clear(tmp_path, capsys):
    db = synthetic_db(tmp_path / "err.duckdb")
    assert main(["label", "--db", str(tmp_path / "missing.duckdb"), "--source", "synthetic"]) == 2
    assert "no store at" in capsys.readouterr().err
    assert main(["label", "--db", db, "--source", "nope", "--dry-run"]) == 2
    assert "unknown source" in capsys.readouterr().err
    assert main(["label", "--db", db, "--source", "synthetic", "--features", "0-99", "--dry-run"]) == 2
    assert "does not exist" in capsys.readouterr().err
    assert main(["label", "--db", db, "--source", "synthetic", "--scorers", "detection,nope", "--dry-run"]) == 2
    assert "unknown scorer" in capsys.readouterr().err
    assert main(["label", "--db", db, "--source", "synthetic", "--prompt", "poem", "--dry-run"]) == 2
    assert "unknown explainer prompt" in capsys.readouterr().err


def test_a_refused_api_key_stops_the_job_with_a_clear_message(tmp_path, paid_api, capsys):
    db = synthetic_db(tmp_path / "auth.duckdb")
    paid_api.script(*[Reply(401, body={"error": {"message": "invalid api key"}})] * 4)
    code = main(
        ["label", "--db", db, "--source", "synthetic", "--features", "0-2", "--explainer", "openai:gpt-4o-mini",
         "--scorers", "embedding", "--base-url", paid_api.openai_base_url, "--concurrency", "1", "--quiet"]
    )  # fmt: skip
    assert code == 2
    err = capsys.readouterr().err
    assert "the job stopped" in err and "OPENAI_API_KEY" in err and FAKE_OPENAI_KEY not in err
    assert rows(db, "SELECT status, ended_at IS NOT NULL FROM runs") == [("failed", True)]
    assert rows(db, "SELECT stage FROM failures") == [("job",)]
    assert rows(db, "SELECT count(*) FROM explanations") == [(0,)]
    assert len(paid_api.received) == 1  # no feature after the first refusal


def test_a_job_collects_garbage_less_often_and_restores_the_callers_thresholds(tmp_path, paid_api, monkeypatch):
    import gc

    from autointerp import pipeline, stages

    db = synthetic_db(tmp_path / "gc.duckdb")
    seen = []
    explain_and_score = stages.explain_and_score

    async def watched(*args, **kwargs):
        seen.append(gc.get_threshold())
        return await explain_and_score(*args, **kwargs)

    monkeypatch.setattr(stages, "explain_and_score", watched)
    previous = gc.get_threshold()
    gc.set_threshold(123, 4, 5)
    try:
        job = tiny_job(explainer="openai:gpt-4o-mini", scorers=("embedding",), base_url=paid_api.openai_base_url)
        run_label_job(Store(db), job, progress=False)
        after = gc.get_threshold()
    finally:
        gc.set_threshold(*previous)
    assert seen and set(seen) == {pipeline.JOB_GC_THRESHOLD}
    assert after == (123, 4, 5)
