"""import-labels: every bad row is refused with one message naming it and the store unchanged; imported
scores are the file's claims (never ranked, dropped when the label text changed); the Neuronpedia export
loads with Neuronpedia's own client."""

from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.csv as pa_csv
import pyarrow.parquet as pq
import pytest
from neuronpedia.np_explanation import Explanation as NeuronpediaExplanation

from autointerp import catalog
from autointerp.cli import main as cli
from autointerp.errors import AutointerpError
from autointerp.exchange import export_labels, import_labels
from autointerp.records import Score
from autointerp.store import Store
from catalog_fixtures import FEATURES_A, SOURCE_A, SOURCE_B, catalog_copy

TABLES = ("explanations", "scores", "label_embeddings", "runs", "reviews")


def _counts(path) -> dict[str, int]:
    with Store(path, read_only=True) as s:
        return {t: s.con.execute(f"SELECT count(*) FROM {t}").fetchone()[0] for t in TABLES}


def _write(path, fmt: str, rows: list[dict]) -> None:
    if fmt == "neuronpedia":
        path.write_text("".join(json.dumps({"modelId": "toy", "layer": r["source"], "index": r["feature"],
                                            "description": r["label"]}) + "\n" for r in rows))
        return
    try:
        table = pa.Table.from_pylist(rows)
    except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed types in a column: write them as text
        table = pa.Table.from_pylist([{k: str(v) for k, v in r.items()} for r in rows])
    (pa_csv.write_csv if fmt == "csv" else pq.write_table)(table, path)


@pytest.mark.parametrize("fmt, suffix, where", [("csv", ".csv", "row 2"), ("parquet", ".parquet", "row 2"),
                                                ("neuronpedia", ".jsonl", "line 2")])
@pytest.mark.parametrize(
    "feature, label, message",
    [
        (999999, "far away", "feature 999999 is outside source 'toy-L0', which has 10 features (0 to 9)"),
        (-4, "negative", "feature -4 is negative"),
        (5.5, "half", "feature '5.5' is not a whole number"),
        ("five", "spelled", "feature 'five' is not a whole number"),
        (3, "", "the label is empty"),
        (3, "   ", "the label is empty"),
    ],
)
def test_bad_rows_are_refused_naming_the_row_and_nothing_is_written(tmp_path, fmt, suffix, where, feature, label, message):
    db = catalog_copy(tmp_path)
    path = tmp_path / f"labels{suffix}"
    _write(path, fmt, [{"source": SOURCE_A, "feature": 1, "label": "fine"},
                       {"source": SOURCE_A, "feature": feature, "label": label}])
    before = _counts(db)
    with Store(db) as store, pytest.raises(AutointerpError) as caught:
        import_labels(store, path)
    assert str(caught.value).startswith(f"{path} {where}") and message in str(caught.value)
    assert _counts(db) == before
    assert cli(["import-labels", "--db", str(db), str(path)]) == 2  # the CLI prints the one message
    assert _counts(db) == before


def test_imported_scores_never_outrank_measured_ones(tmp_path):
    db = catalog_copy(tmp_path)
    path = tmp_path / "claims.csv"
    claim = Score("detection", "balanced_accuracy", 0.99, 0.98, 1.0, 400)
    _write(path, "csv", [{"source": SOURCE_A, "feature": 4, "label": "claimed to be great",
                          "scores": json.dumps([claim.__dict__ | {"unreliable": None}])}])
    with Store(db) as store:
        import_labels(store, path)
        history = catalog.label_history(store.con, SOURCE_A, 4)
        imported = history[0]
        assert imported.label == "claimed to be great" and imported.scores[0].imported
        assert imported.scores[0].value == 0.99 and imported.scores[0].unreliable.startswith("imported")
        best = catalog.best_label(store.con, SOURCE_A, 4)  # measured 0.55 beats the file's claimed 0.99
        assert best.label == FEATURES_A[4][1][0][0] and best.why_best.n_ranked == 1


def test_scores_are_not_copied_onto_a_label_whose_text_changed(tmp_path):
    source_db, target_db = catalog_copy(tmp_path), catalog_copy(tmp_path, labels=False)
    out = tmp_path / "labels.csv"
    with Store(source_db, read_only=True) as s:
        export_labels(s.con, out, source=SOURCE_B)
    text = out.read_text()
    assert "cats and kittens" in text
    out.write_text(text.replace("cats and kittens", "cats, kittens and lions"))
    with Store(target_db) as store:
        import_labels(store, out)
        edited, kept = catalog.label_history(store.con, SOURCE_B, 0)[0], catalog.label_history(store.con, SOURCE_B, 1)[0]
    assert edited.label == "cats, kittens and lions" and edited.scores == []
    assert edited.details["imported_from"]["scores_dropped"] == "3 scores: the label text changed after it was scored"
    assert kept.label == "banks and money deposits" and len(kept.scores) == 3 and all(s.imported for s in kept.scores)


def test_neuronpedia_export_loads_with_neuronpedias_client(tmp_path):
    db = catalog_copy(tmp_path)
    out = tmp_path / "np.jsonl"
    with Store(db, read_only=True) as s:
        n = export_labels(s.con, out, source=SOURCE_B, neuronpedia_model="gpt2-small", neuronpedia_source="6-res-jb")
        labels = {l.feature: l.label for l in catalog.best_labels(s.con, SOURCE_B)}
    parsed = [NeuronpediaExplanation.from_np_db_json(json.loads(line)) for line in out.read_text().splitlines()]
    assert n == len(parsed) == 2
    assert {(e.modelId, e.source, e.index, e.text, e.method, e.explainer_model) for e in parsed} == {
        ("gpt2-small", "6-res-jb", f, labels[f], "highlight.v1", "local:smollm2") for f in (0, 1)
    }
    plain = tmp_path / "plain.jsonl"
    assert cli(["export", "--db", str(db), "--out", str(plain)]) == 0
    for line in plain.read_text().splitlines():  # without ids given: our model and source names
        e = NeuronpediaExplanation.from_np_db_json(json.loads(line))
        assert e.modelId == "toy" and e.source in (SOURCE_A, SOURCE_B)
    assert cli(["export", "--db", str(db), "--out", str(plain), "--neuronpedia-source", "6-res-jb"]) == 2
    assert cli(["export", "--db", str(db), "--out", str(tmp_path / "x.csv"), "--neuronpedia-model", "m"]) == 2
    target = catalog_copy(tmp_path, labels=False)
    with Store(target) as store:  # and it imports back, onto the source named
        assert import_labels(store, out, source=SOURCE_B).n_imported == 2
