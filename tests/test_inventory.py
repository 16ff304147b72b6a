"""Listing and deleting sources and labels on a real store file: library and CLI."""

from __future__ import annotations

import pytest

from autointerp import catalog, inventory
from autointerp.cli import main as cli
from autointerp.errors import AutointerpError
from autointerp.store import Store
from autointerp.store.activations import get_source
from autointerp.store.jobs import mark_feature, record_failure
from catalog_fixtures import SOURCE_A, SOURCE_B, catalog_copy

# every table with a source_id or explanation_id column, as the deletion finds them
PER_SOURCE = ("contexts", "activations", "feature_context_max", "feature_stats", "explanations", "feature_jobs",
              "failures", "collection_chunks", "token_stats", "token_postings")
PER_LABEL = ("scores", "reviews", "label_embeddings", "score_items")


def _rows(con, source_id: int) -> dict[str, int]:
    found = {t: con.execute(f"SELECT count(*) FROM {t} WHERE source_id = ?", [source_id]).fetchone()[0] for t in PER_SOURCE}
    for t in PER_LABEL:
        found[t] = con.execute(
            f"SELECT count(*) FROM {t} WHERE explanation_id IN (SELECT explanation_id FROM explanations WHERE source_id = ?)",
            [source_id],
        ).fetchone()[0]
    return found


@pytest.fixture()
def store(tmp_path):
    with Store(catalog_copy(tmp_path)) as s:
        yield s


def test_sources_and_labels_are_listed(store):
    found = inventory.sources(store.con)
    assert [(s.source.name, s.n_contexts, s.n_labels, s.n_features_labeled) for s in found] == [
        (SOURCE_A, 80, 12, 10), (SOURCE_B, 80, 2, 2)]
    assert len(inventory.labels(store.con)) == 14 and len(inventory.labels(store.con, SOURCE_B)) == 2
    assert [l.label for l in inventory.labels(store.con, SOURCE_A, 8)] == ["kettles and teapots", "kitchen kettle"]
    with pytest.raises(AutointerpError, match="needs its source"):
        inventory.labels(store.con, feature=8)


def test_deleting_a_source_removes_every_row_naming_it_and_nothing_else(store):
    a, b = get_source(store.con, SOURCE_A).source_id, get_source(store.con, SOURCE_B).source_id
    with store.writing() as con:
        eid = catalog.best_label(con, SOURCE_B, 0).explanation_id
        catalog.review_label(con, eid, "accept")
        mark_feature(con, "cfg", b, 0, "done", run_id="r", explanation_id=eid)
        record_failure(con, run_id="r", source_id=b, feature=1, stage="explain", error="x")
    before_a = _rows(store.con, a)
    assert all(_rows(store.con, b)[t] for t in ("contexts", "activations", "explanations", "scores", "reviews",
                                                "label_embeddings", "feature_jobs", "failures"))
    with store.writing() as con:
        deleted = inventory.delete_source(con, SOURCE_B)
    assert deleted["sources"] == 1 and deleted["explanations"] == 2 and deleted["reviews"] == 1
    assert not any(_rows(store.con, b).values())
    assert store.con.execute("SELECT count(*) FROM reviews").fetchone()[0] == 0
    assert _rows(store.con, a) == before_a
    with pytest.raises(AutointerpError, match="unknown source 'toy-L1'"):
        inventory.source(store.con, SOURCE_B)


def test_deleting_a_label_keeps_the_features_other_labels(store):
    newer, older = inventory.labels(store.con, SOURCE_A, 2)
    with store.writing() as con:
        catalog.review_label(con, newer.explanation_id, "reject")
        deleted = inventory.delete_label(con, newer.explanation_id)
    assert deleted == {"explanations": 1, "feature_jobs": 0, "label_embeddings": 1, "reviews": 1, "score_items": 0,
                       "scores": 3}
    assert [l.explanation_id for l in inventory.labels(store.con, SOURCE_A, 2)] == [older.explanation_id]
    assert len(catalog.load_labels(store.con, [older.explanation_id])[0].scores) == 3
    with pytest.raises(AutointerpError, match="no label with explanation id"), store.writing() as con:
        inventory.delete_label(con, newer.explanation_id)


def test_cli_sources_and_labels(tmp_path, capsys):
    db = str(catalog_copy(tmp_path))
    assert cli(["sources", "--db", db]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["source", "model", "layer", "width", "contexts", "labels", "labeled"]
    assert out[1].split() == [SOURCE_A, "toy", "0", "10", "80", "12", "10"]
    assert cli(["labels", "--db", db, "--source", SOURCE_A, "--feature", "2"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert len(out) == 3 and "detection.balanced_accuracy 0.710 n=40" in out[1] and out[1].endswith("loop keywords in code")
    newer = int(out[1].split()[0])
    assert cli(["labels", "--db", db, "--delete", str(newer)]) == 0
    assert "deleted label" in capsys.readouterr().out
    assert cli(["labels", "--db", db, "--delete", str(newer)]) == 2
    assert "no label with explanation id" in capsys.readouterr().err
    assert cli(["sources", "--db", db, "--delete", SOURCE_B]) == 1  # not without --yes
    assert "rerun with --yes" in capsys.readouterr().out
    assert cli(["sources", "--db", db, "--delete", "typo"]) == 2
    assert "unknown source 'typo'" in capsys.readouterr().err
    assert cli(["sources", "--db", db, "--delete", SOURCE_B, "--yes"]) == 0
    assert "1 sources" in capsys.readouterr().out
    assert cli(["sources", "--db", db, "--json"]) == 0
    assert SOURCE_B not in capsys.readouterr().out
