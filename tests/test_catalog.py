"""The catalog on a real DuckDB file: write-back, best label, reviews, history, feature pages, export/import."""

from __future__ import annotations

import dataclasses
import json
import math

import numpy as np
import pyarrow.parquet as pq
import pytest

from autointerp import catalog, ranking
from autointerp.cli import main as cli
from autointerp.embeddings import EMBEDDING_MODEL, embed_texts
from autointerp.errors import AutointerpError
from autointerp.exchange import export_labels, import_labels
from autointerp.records import Explanation, ItemJudgement, Score
from autointerp.store import Store
from catalog_fixtures import (
    FEATURES_A, HOSTILE_LABEL, RUN_ID, SCRIPT, SOURCE_A, SOURCE_B, catalog_copy, store_of_an_older_version,
)


@pytest.fixture()
def store(tmp_path):
    with Store(catalog_copy(tmp_path)) as s:
        yield s


def _count(con, table: str) -> int:
    return con.execute(f"SELECT count(*) FROM {table}").fetchone()[0]


def test_write_label_stores_label_scores_provenance_and_embedding(store):
    score = Score("detection", "balanced_accuracy", 0.8, 0.7, 0.9, 40, scorer_model="m", details={"k": 1})
    with store.writing() as con:
        eid = catalog.write_label(
            con,
            Explanation(SOURCE_A, 9, "string instruments", explainer_model="openai:gpt", prompt_name="p.v2",
                        prompt_hash="h2", details={"candidates": 3}),
            [score],
            run_id="r9", config_hash="c9", sampling_config={"n_train_top": 5}, seed=7,
        )
    label = catalog.load_labels(store.con, [eid])[0]
    assert (label.source, label.feature, label.label, label.author) == (SOURCE_A, 9, "string instruments", "llm")
    assert (label.explainer_model, label.prompt_name, label.prompt_hash) == ("openai:gpt", "p.v2", "h2")
    assert (label.run_id, label.config_hash, label.seed, label.sampling_config) == ("r9", "c9", 7, {"n_train_top": 5})
    assert label.details == {"candidates": 3} and label.review_state == "unreviewed"
    assert label.scores == [score]
    (vector,) = store.con.execute(
        "SELECT vector FROM label_embeddings WHERE explanation_id = ? AND model = ?", [eid, EMBEDDING_MODEL]
    ).fetchone()
    assert np.allclose(vector, embed_texts(["string instruments"])[0], atol=1e-5)
    assert abs(np.linalg.norm(vector) - 1) < 1e-4


def test_write_labels_stores_what_one_write_label_per_label_stores(tmp_path):
    """The job writes a transaction's labels together: same ids, rows and vectors as one call per label."""
    items = [ItemJudgement("detection", i, 100 + i, "positives", "top", 0, 1, i % 2, 0.25 * i) for i in range(3)]
    both = [Score("detection", "f1", 0.5, 0.4, 0.6, 3, details={"k": 1}, items=items),
            Score("detection", "f1", 0.2, 0.1, 0.3, 2, subset="positives", items=items)]
    labels = [
        catalog.NewLabel(Explanation(SOURCE_A, 3, "quoted names", details={"c": 2}), both, "r1", "c1", {"n": 5}, 7,
                         np.ones(384, dtype=np.float32) / np.sqrt(384)),
        catalog.NewLabel(Explanation(SOURCE_B, 4, "dates and times"), [], None, None, None, None),  # embedded here
        catalog.NewLabel(Explanation(SOURCE_A, 5, "code comments", author="human"), both[1:], "r1", "c1", None, 1,
                         embed_texts(["code comments"])[0]),
    ]
    tables = {
        "explanations": "* EXCLUDE (created_at)", "scores": "* EXCLUDE (created_at)", "score_items": "*",
        "label_embeddings": "*",
    }
    stored = []
    for name, write in (("one", lambda con: [catalog.write_label(con, lab.explanation, lab.scores, run_id=lab.run_id,
                                                                 config_hash=lab.config_hash,
                                                                 sampling_config=lab.sampling_config, seed=lab.seed,
                                                                 embedding=lab.embedding) for lab in labels]),
                        ("many", lambda con: catalog.write_labels(con, labels))):
        (tmp_path / name).mkdir()
        with Store(catalog_copy(tmp_path / name)) as s:
            with s.writing() as con:
                ids = write(con)
            stored.append((ids, {t: s.con.execute(f"SELECT {cols} FROM {t} ORDER BY ALL").fetchall()
                                 for t, cols in tables.items()}))
    (one_ids, one_rows), (many_ids, many_rows) = stored
    assert many_ids == one_ids and len(set(one_ids)) == 3 and one_ids == sorted(one_ids)
    assert many_rows == one_rows
    assert len(many_rows["score_items"]) == 6 and sum(row[1] in many_ids for row in many_rows["scores"]) == 3


def test_write_label_joins_the_callers_transaction(store):
    before = _count(store.con, "explanations"), _count(store.con, "scores"), _count(store.con, "label_embeddings")
    with pytest.raises(RuntimeError):
        with store.writing() as con:
            catalog.write_label(con, Explanation(SOURCE_A, 1, "x"), [], run_id=None, config_hash=None,
                                sampling_config=None, seed=None, embedding=np.ones(384) / np.sqrt(384))
            raise RuntimeError("the job fails after writing")
    after = _count(store.con, "explanations"), _count(store.con, "scores"), _count(store.con, "label_embeddings")
    assert after == before
    with pytest.raises(AutointerpError, match="unknown source"):
        with store.writing() as con:
            catalog.write_label(con, Explanation("nope", 1, "x"), [], run_id=None, config_hash=None,
                                sampling_config=None, seed=None, embedding=np.zeros(384))


def test_best_label_is_the_highest_test_score_then_an_accepted_one(store):
    con = store.con
    assert catalog.best_label(con, SOURCE_A, 2).label == "loop keywords in code"  # 0.71 beats 0.62
    # Ranked by the embedding scorer's auroc (1 - v/2 in the fixture) the older label wins.
    assert catalog.best_label(con, SOURCE_A, 2, "embedding", "auroc").label == "python for loops over a range"
    older = next(l for l in catalog.label_history(con, SOURCE_A, 2) if l.label.startswith("python"))
    with store.writing() as w:
        catalog.review_label(w, older.explanation_id, "accept", note="matches the contexts")
    best = catalog.best_label(con, SOURCE_A, 2)
    assert best.explanation_id == older.explanation_id and best.review_state == "accepted"
    with store.writing() as w:
        catalog.review_label(w, older.explanation_id, "reject")
    assert catalog.best_label(con, SOURCE_A, 2).label == "loop keywords in code"
    assert [r.verdict for r in catalog.load_labels(con, [older.explanation_id])[0].reviews] == ["accept", "reject"]


def test_best_labels_lists_one_per_feature(store):
    best = catalog.best_labels(store.con)
    assert len(best) == len({(b.source, b.feature) for b in best}) == 12
    assert {b.label for b in best if b.source == SOURCE_A and b.feature == 8} == {"kettles and teapots"}
    assert [b.feature for b in catalog.best_labels(store.con, SOURCE_B)] == [0, 1]


def test_edit_creates_a_linked_accepted_human_label(store):
    old = catalog.best_label(store.con, SOURCE_A, 0)
    with store.writing() as con:
        new = catalog.review_label(con, old.explanation_id, "edit", edited_label="dog words", note="shorter")
    assert (new.label, new.author, new.review_state) == ("dog words", "human", "accepted")
    assert new.details == {"edited_from": old.explanation_id, "note": "shorter"}
    history = catalog.label_history(store.con, SOURCE_A, 0)
    assert [h.explanation_id for h in history] == [new.explanation_id, old.explanation_id]
    assert history[1].review_state == "edited"
    assert (history[1].reviews[0].edited_label, history[1].reviews[0].note) == ("dog words", "shorter")
    assert catalog.best_label(store.con, SOURCE_A, 0).explanation_id == new.explanation_id


@pytest.mark.parametrize(
    "eid, verdict, kwargs, message",
    [
        (1, "maybe", {}, "unknown review verdict"),
        (10**6, "accept", {}, "no label with explanation id"),
        (1, "edit", {}, "needs the new label text"),
        (1, "reject", {"edited_label": "x"}, "goes with verdict 'edit'"),
    ],
)
def test_review_errors_say_what_to_do(store, eid, verdict, kwargs, message):
    with pytest.raises(AutointerpError, match=message):
        with store.writing() as con:
            catalog.review_label(con, eid, verdict, **kwargs)
    assert _count(store.con, "reviews") == 0


def test_feature_view_has_stats_contexts_and_history(store):
    view = catalog.feature_view(store.con, SOURCE_A, 6)
    assert view.best.label == HOSTILE_LABEL and view.stats.n_active_contexts > 0
    top = [c for c in view.contexts if c.kind == "top"]
    assert len(top) == min(10, view.stats.n_active_contexts)
    assert [c.max_value for c in top] == sorted((c.max_value for c in top), reverse=True)
    for c in top:
        assert len(c.tokens) == len(c.activations) and max(c.activations) == pytest.approx(c.max_value)
        assert all(t in FEATURES_A[6][0] for t, v in zip(c.tokens, c.activations) if v > 0)
    bands = {c.band for c in view.contexts if c.kind == "quantile"}
    assert bands == {1, 2, 3, 4, 5}
    assert len([c for c in view.contexts if c.kind == "random"]) == 5
    assert any(SCRIPT in c.tokens for c in top)


def test_feature_view_of_an_imported_label_without_activations(store):
    with store.writing() as con:
        catalog.write_label(con, Explanation(SOURCE_B, 40, "imported only"), [], run_id=None, config_hash=None,
                            sampling_config=None, seed=None, embedding=np.zeros(384))
    view = catalog.feature_view(store.con, SOURCE_B, 40)
    assert view.stats is None and view.best.label == "imported only"
    assert {c.kind for c in view.contexts} == {"random"} and all(c.max_value == 0 for c in view.contexts)
    with pytest.raises(AutointerpError, match="no activations"):
        catalog.feature_view(store.con, SOURCE_B, 41)


def test_run_view_reports_progress_tokens_and_cost(store):
    view = catalog.run_view(store.con, RUN_ID)
    assert (view.run.status, view.run.n_done, view.n_labels) == ("done", 12, 14)
    assert sum(s["cost_usd"] for s in view.spend) == pytest.approx(0.0021)
    assert sum(s["prompt_tokens"] for s in view.spend) == 420
    with pytest.raises(AutointerpError, match="no run"):
        catalog.run_view(store.con, "nope")


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_export_then_import_keeps_labels_scores_and_provenance(tmp_path, store, suffix):
    out = tmp_path / f"labels{suffix}"
    assert export_labels(store.con, out) == 14
    store.close()
    target = Store(catalog_copy(tmp_path, labels=False))
    report = import_labels(target, out)
    assert (report.n_read, report.n_imported, report.n_skipped) == (14, 14, 0)
    assert import_labels(target, out).n_imported == 0  # a second import adds nothing
    with target:
        originals = {(l.source, l.feature, l.label): l for l in catalog.best_labels(Store(store.path, read_only=True).con)}
        imported = catalog.best_labels(target.con)
        assert len(imported) == 12
        for label in imported:
            src = originals[(label.source, label.feature, label.label)]
            assert label.author == "import" and label.run_id == report.run_id
            origin = label.details["imported_from"]
            assert origin["file"] == out.name
            if suffix == ".jsonl":
                assert label.scores == [] and origin["authorId"] == "autointerp:llm" and origin["layer"] == label.source
                assert json.loads(origin["notes"])["scores"][0]["value"] == src.scores[0].value
            else:
                # the file's scores are kept as its claims: marked imported, never ranked
                assert label.scores == [dataclasses.replace(s, imported=True) for s in src.scores]
                assert all(s.unreliable.startswith("imported") for s in label.scores) and origin["run_id"] == RUN_ID
                assert (label.explainer_model, label.prompt_hash, label.seed) == (src.explainer_model, src.prompt_hash, src.seed)
            assert label.explainer_model == src.explainer_model
        assert catalog.run_view(target.con, report.run_id).run.kind == "import"


def test_neuronpedia_export_uses_neuronpedia_field_names(tmp_path, store):
    out = tmp_path / "np.jsonl"
    export_labels(store.con, out, best_only=True)
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert len(rows) == 12
    hostile = next(r for r in rows if r["description"] == HOSTILE_LABEL)
    assert {"modelId", "layer", "index", "description", "explanationModelName", "typeName", "authorId", "createdAt",
            "notes"} <= set(hostile)
    assert (hostile["modelId"], hostile["layer"], hostile["index"]) == ("toy", SOURCE_A, "6")
    assert hostile["explanationModelName"] == "local:smollm2" and hostile["typeName"] == "highlight.v1"


def test_parquet_export_has_typed_headline_scores(tmp_path, store):
    out = tmp_path / "labels.parquet"
    export_labels(store.con, out, source=SOURCE_B)
    table = pq.read_table(out).to_pylist()
    assert [(r["feature"], r["label"], r["headline_metric"], r["headline_value"], r["headline_n"], r["is_best"]) for r in table] == [
        (0, "cats and kittens", "balanced_accuracy", 0.88, 40, True),
        (1, "banks and money deposits", "balanced_accuracy", 0.69, 40, True),
    ]
    assert table[0]["best_reason"] == "the only label; detection balanced_accuracy 0.88 (n=40)"


def test_import_errors_say_what_to_do(tmp_path, store):
    bad = tmp_path / "bad.jsonl"
    bad.write_text('{"modelId": "m", "layer": "elsewhere", "index": "1", "description": "x"}\n')
    with pytest.raises(AutointerpError, match="unknown source 'elsewhere'"):
        import_labels(store, bad)
    bad.write_text("not json\n")
    with pytest.raises(AutointerpError, match="line 1 is not a Neuronpedia explanation"):
        import_labels(store, bad)
    with pytest.raises(AutointerpError, match="cannot tell the format"):
        import_labels(store, tmp_path / "bad.jsonl.txt") if (tmp_path / "bad.jsonl.txt").write_text("x") else None
    good = tmp_path / "np.jsonl"
    good.write_text('{"modelId": "gpt2-small", "layer": "6-res-jb", "index": "1", "description": "kittens"}\n')
    report = import_labels(store, good, source=SOURCE_B)
    assert report.n_imported == 1
    assert catalog.label_history(store.con, SOURCE_B, 1)[0].label == "kittens"


def test_cli_review_export_and_import(tmp_path, capsys):
    db = catalog_copy(tmp_path)
    assert cli(["review", "--db", str(db), "1", "edit", "--label", "dog nouns", "--note", "tighter"]) == 0
    assert "is accepted: dog nouns" in capsys.readouterr().out
    assert cli(["review", "--db", str(db), "999999", "accept"]) == 2
    assert "no label with explanation id" in capsys.readouterr().err
    out = tmp_path / "x.csv"
    assert cli(["export", "--db", str(db), "--out", str(out), "--best-only"]) == 0
    assert "wrote 12 labels" in capsys.readouterr().out
    target = catalog_copy(tmp_path, labels=False)
    assert cli(["import-labels", "--db", str(target), str(out)]) == 0
    assert "imported 12 of 12 labels" in capsys.readouterr().out
    with Store(target, read_only=True) as s:
        assert catalog.best_label(s.con, SOURCE_A, 0).label == "dog nouns"


# ---- the ranking rule (autointerp.ranking) ---------------------------------------------------------------

UNIT = np.ones(384) / np.sqrt(384)


def _add(con, feature: int, text: str, scores: list[Score], source: str = SOURCE_A) -> int:
    return catalog.write_label(con, Explanation(source, feature, text), scores, run_id=None, config_hash=None,
                               sampling_config=None, seed=None, embedding=UNIT)


def _emb(value: float, n: int = 40) -> Score:
    return Score("embedding", "auroc", value, value - 0.1, value + 0.1, n)


def test_a_newer_label_with_a_lower_shared_score_does_not_become_best(store):
    """The issue's example: no label of the feature has a detection score, so they are compared on the
    embedding score they share, not handed to the newest."""
    with store.writing() as con:
        old = _add(con, 9, "string instruments", [_emb(0.575)], source=SOURCE_B)
        _add(con, 9, "recipes for chocolate cake and baking", [_emb(0.51)], source=SOURCE_B)
    best = catalog.best_label(store.con, SOURCE_B, 9)
    assert best.explanation_id == old
    assert best.why_best.rule == "score" and best.why_best.ranked_by == ("embedding", "auroc")
    assert best.why_best.text == "highest embedding auroc: 0.575 (n=40) among 2 of 2 unreviewed labels holding it"
    assert catalog.feature_view(store.con, SOURCE_A, 2).ranked_by == ("detection", "balanced_accuracy")
    assert [b.explanation_id for b in catalog.best_labels(store.con, SOURCE_B) if b.feature == 9] == [old]


def test_an_unreliable_score_is_flagged_and_never_ranks(store):
    """A detection score with n=2 and 18 of 20 answers unparsed must not rank, however high."""
    shaky = Score("detection", "auroc", 0.99, 0.5, 1.0, 2, details={"n_unparsed": 18})
    assert shaky.unreliable == "n=2 is below the minimum of 10"
    assert Score("detection", "auroc", 0.9, 0.8, 1.0, 12, details={"n_unparsed": 15}).unreliable == "15 of 27 answers unparsed"
    with store.writing() as con:
        steady = _add(con, 1, "loans and bank accounts", [_emb(0.6)], source=SOURCE_B)
        _add(con, 1, "everything financial", [shaky, _emb(0.55)], source=SOURCE_B)
    best = catalog.best_label(store.con, SOURCE_B, 1)
    # three labels hold a reliable embedding score: the fixture's (0.655), steady (0.6) and the shaky one's
    assert best.why_best.ranked_by == ("embedding", "auroc") and best.why_best.n_ranked == 3
    assert best.label == "banks and money deposits"
    assert steady != best.explanation_id
    with store.writing() as con:
        only_shaky = _add(con, 3, "the shaky one", [shaky], source=SOURCE_B)
        _add(con, 3, "no scores at all", [], source=SOURCE_B)
    best = catalog.best_label(store.con, SOURCE_B, 3)
    assert best.label == "no scores at all" and best.why_best.rule == "unranked"  # newest; nothing to compare on
    assert "no reliable score" in best.why_best.text
    flagged = catalog.load_labels(store.con, [only_shaky])[0].scores[0]
    assert flagged.unreliable == "n=2 is below the minimum of 10"


@pytest.mark.parametrize(
    "n, n_unparsed, value, imported",
    [(40, 0, 0.9, False), (10, 10, 0.9, False), (9, 0, 0.9, False), (10, 11, 0.9, False), (2, 18, 0.9, False),
     (40, 0, None, False), (40, 0, math.nan, False), (40, 0, 0.9, True)],
)
def test_sql_and_python_agree_on_which_scores_rank(store, n, n_unparsed, value, imported):
    """The older label's detection score ranks (and wins, 0.9 over 0.6) exactly when Python calls it reliable."""
    score = Score("detection", "auroc", value, None, None, n, details={"n_unparsed": n_unparsed}, imported=imported)
    with store.writing() as con:
        older = _add(con, 9, "older", [score], source=SOURCE_B)
        _add(con, 9, "newer", [Score("detection", "auroc", 0.6, 0.5, 0.7, 40)], source=SOURCE_B)
    assert (catalog.best_label(store.con, SOURCE_B, 9).explanation_id == older) == (score.unreliable is None)


def test_labels_are_compared_on_the_score_most_of_them_share(store):
    with store.writing() as con:
        a = _add(con, 9, "a", [Score("detection", "auroc", 0.95, 0.9, 1.0, 40), _emb(0.6)], source=SOURCE_B)
        b = _add(con, 9, "b", [_emb(0.7)], source=SOURCE_B)
    best = catalog.best_label(store.con, SOURCE_B, 9)
    assert best.explanation_id == b and best.why_best.ranked_by == ("embedding", "auroc")
    # with detection named, only detection is compared: b has none, so a wins
    assert catalog.best_label(store.con, SOURCE_B, 9, "detection", "auroc").explanation_id == a
    with pytest.raises(AutointerpError, match="has no 'auroc_typo' scores in this store; its metrics: auroc"):
        catalog.best_label(store.con, SOURCE_B, 9, "detection", "auroc_typo")


def test_headline_skips_unreliable_scores():
    scores = [Score("detection", "auroc", 0.99, None, None, 2), Score("embedding", "auroc", 0.6, 0.5, 0.7, 40)]
    assert ranking.headline(scores).scorer == "embedding"
    assert ranking.headline(scores, reliable_only=False).scorer == "detection"


def test_export_headline_is_the_score_the_feature_is_ranked_by(tmp_path, store):
    with store.writing() as con:
        old = _add(con, 9, "string instruments", [_emb(0.575)], source=SOURCE_B)
        _add(con, 9, "recipes for chocolate cake and baking", [_emb(0.51), Score("detection", "auroc", 0.9, None, None, 2)],
             source=SOURCE_B)
    out = tmp_path / "labels.parquet"
    export_labels(store.con, out, source=SOURCE_B)
    rows = {r["label"]: r for r in pq.read_table(out).to_pylist() if r["feature"] == 9}
    assert {k: (r["headline_scorer"], r["headline_metric"], r["headline_value"], r["is_best"]) for k, r in rows.items()} == {
        "string instruments": ("embedding", "auroc", 0.575, True),
        "recipes for chocolate cake and baking": ("embedding", "auroc", 0.51, False),  # detection n=2 is no headline
    }
    assert rows["string instruments"]["explanation_id"] == old
    assert rows["string instruments"]["best_reason"].startswith("highest embedding auroc: 0.575")
    assert rows["recipes for chocolate cake and baking"]["best_reason"] is None


def test_a_store_scored_before_m020_upgrades_and_its_scores_still_rank(tmp_path, monkeypatch):
    path = tmp_path / "old.duckdb"
    with store_of_an_older_version(path, monkeypatch, "m020") as con:
        con.execute("INSERT INTO sources (name, feature_kind, width, config) VALUES ('old', 'neurons', 4, '{}')")
        con.execute("INSERT INTO explanations (source_id, feature, label, author) VALUES (1, 0, 'a', 'llm'), (1, 0, 'b', 'llm')")
        con.execute("INSERT INTO scores (explanation_id, scorer, metric, value, n) VALUES (1, 'embedding', 'auroc', 0.7, 40), "
                    "(2, 'embedding', 'auroc', 0.6, 40)")
    with Store(path) as store:
        best = catalog.best_label(store.con, "old", 0)
        assert best.label == "a" and best.scores[0].imported is False and best.scores[0].unreliable is None
