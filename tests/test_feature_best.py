"""Each feature's stored best label (table `feature_best`) stays equal to the ranking computed afresh over
every label, through ties, reviews (accepted, rejected, edited), deleted labels and sources, a job writing
new labels, bulk loads, an upgraded old store and `autointerp index --rebuild`; and the listing and
`best_labels` that read it equal that ranking."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pytest

from autointerp import catalog, indexing, inventory, ranking
from autointerp.exchange import import_labels
from autointerp.records import Explanation, Score
from autointerp.search import SearchIndex, search
from autointerp.store import Store
from autointerp.store import catalog_queries as q
from autointerp.store.activations import create_source
from catalog_fixtures import SOURCE_A, SOURCE_B, catalog_copy, store_of_an_older_version

VECTOR = np.eye(384, dtype=np.float32)[0]  # labels' embeddings do not matter here: no MiniLM per write


@pytest.fixture()
def store(tmp_path):
    with Store(catalog_copy(tmp_path)) as s:
        yield s


def fresh(con) -> list[tuple]:
    """The ranking over every label, computed now (BEST_FIELDS rows by source and feature)."""
    return q.best_explanation_rows(con, ranking.sql_parameters())


def assert_current(con) -> None:
    """The stored table, the listing and best_labels all equal the ranking computed afresh."""
    expected = fresh(con)
    stored = con.execute(f"SELECT {', '.join(q.BEST_FIELDS)} FROM feature_best ORDER BY source_id, feature").fetchall()
    assert stored == expected
    best = catalog.best_labels(con)
    assert [(l.explanation_id, l.why_best) for l in best] == [(r[2], ranking.best_reason(*r[3:])) for r in expected]
    names = dict(con.execute("SELECT source_id, name FROM sources").fetchall())
    listed, offset = [], 0
    while hits := search(con, SearchIndex(), "", limit=3, offset=offset).hits:
        listed += [(h.source, h.feature, h.explanation_id) for h in hits]
        offset += 3
    assert listed == sorted((names[r[0]], r[1], r[2]) for r in expected)


def write(con, source: str, feature: int, text: str, value: float | None, **kw) -> int:
    scores = [] if value is None else [Score("detection", "balanced_accuracy", value, None, None, 40)]
    return catalog.write_label(con, Explanation(source, feature, text), scores, run_id=kw.get("run_id"),
                               config_hash=None, sampling_config=None, seed=None, embedding=VECTOR)


def source_id(con, name: str) -> int:
    return con.execute("SELECT source_id FROM sources WHERE name = ?", [name]).fetchone()[0]


def best_id(con, source: str, feature: int) -> int:
    return catalog.best_label(con, source, feature).explanation_id


def test_the_built_catalog_is_current(store):
    assert store.con.execute("SELECT count(*) FROM feature_best").fetchone()[0] == 12
    assert_current(store.con)


def test_ties_go_to_the_newest_label(store):
    with store.writing() as con:
        first = write(con, SOURCE_A, 20, "first of a tie", 0.8)
        second = write(con, SOURCE_A, 20, "second of a tie", 0.8)
        unscored = write(con, SOURCE_B, 20, "no score", None)
        newest_unscored = write(con, SOURCE_B, 20, "no score either", None)
    assert best_id(store.con, SOURCE_A, 20) == second != first
    assert best_id(store.con, SOURCE_B, 20) == newest_unscored != unscored
    assert_current(store.con)


def test_reviews_accept_reject_and_edit_move_the_best(store):
    con = store.con
    weaker, stronger = [l.explanation_id for l in catalog.label_history(con, SOURCE_A, 2)][::-1]
    assert best_id(con, SOURCE_A, 2) == stronger
    with store.writing() as w:
        catalog.review_label(w, weaker, "accept")
    assert best_id(con, SOURCE_A, 2) == weaker
    assert_current(con)
    with store.writing() as w:
        catalog.review_label(w, weaker, "reject")
    assert best_id(con, SOURCE_A, 2) == stronger
    assert_current(con)
    with store.writing() as w:
        edited = catalog.review_label(w, stronger, "edit", edited_label="loops in code", embedding=VECTOR)
    assert best_id(con, SOURCE_A, 2) == edited.explanation_id
    assert_current(con)
    only = catalog.label_history(con, SOURCE_B, 1)[0].explanation_id
    with store.writing() as w:
        catalog.review_label(w, only, "reject")  # a rejected label is still best when nothing else is left
    assert best_id(con, SOURCE_B, 1) == only
    assert_current(con)


def test_deleted_labels_and_sources_leave_the_table_current(store):
    con = store.con
    best = best_id(con, SOURCE_A, 8)
    with store.writing() as w:
        inventory.delete_label(w, best)
    assert best_id(con, SOURCE_A, 8) != best
    assert_current(con)
    with store.writing() as w:
        inventory.delete_label(w, catalog.label_history(con, SOURCE_A, 9)[0].explanation_id)  # its only label
    assert catalog.best_label(con, SOURCE_A, 9) is None
    assert_current(con)
    with store.writing() as w:
        inventory.delete_source(w, SOURCE_B)
    assert con.execute("SELECT count(*) FROM feature_best WHERE source_id = 2").fetchone()[0] == 0
    assert_current(con)


def test_a_job_writing_labels_keeps_it_current(store):
    con = store.con
    with store.writing() as w:  # as the labeling job writes: one transaction per feature, with its run id
        for feature in range(3, 6):
            write(w, SOURCE_A, feature, f"rewritten feature {feature}", 0.99, run_id="job-2")
        write(w, SOURCE_A, 30, "a feature labeled for the first time", 0.5, run_id="job-2")
    assert catalog.best_label(con, SOURCE_A, 4).label == "rewritten feature 4"
    assert_current(con)


def test_a_failed_write_leaves_the_table_as_it_was(store):
    before = fresh(store.con)
    with pytest.raises(RuntimeError), store.writing() as w:
        write(w, SOURCE_A, 0, "never stored", 1.0)
        raise RuntimeError("the job failed after writing")
    assert fresh(store.con) == before
    assert_current(store.con)


def test_bulk_loads_keep_it_current(store):
    sid = source_id(store.con, SOURCE_B)
    table = pa.table({
        "feature": np.array([1, 40, 41], dtype=np.int32), "label": ["bulk a", "bulk b", "bulk c"],
        "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.tile(VECTOR, 3)), 384),
        "scorer": ["detection"] * 3, "metric": ["balanced_accuracy"] * 3,
        "value": [0.99, 0.5, 0.6], "n": np.full(3, 40, dtype=np.int32),
    })
    with store.writing() as w:
        q.bulk_insert_labels(w, sid, table, "m", "bench")
    assert catalog.best_label(store.con, SOURCE_B, 1).label == "bulk a"
    assert_current(store.con)


@pytest.mark.parametrize("read_only", [False, True], ids=["writer", "reader"])
def test_an_old_store_is_filled_when_upgraded(tmp_path, monkeypatch, read_only):
    """A reader first (`autointerp search` on a store an older version wrote) upgrades it too."""
    path = tmp_path / "old.duckdb"
    with store_of_an_older_version(path, monkeypatch, "m180") as con:
        con.execute("INSERT INTO sources (name, feature_kind, width, config) VALUES ('old', 'neurons', 4, '{}')")
        con.execute("INSERT INTO explanations (source_id, feature, label, author) VALUES "
                    "(1, 0, 'a', 'llm'), (1, 0, 'b', 'llm'), (1, 1, 'c', 'llm'), (1, 2, 'd', 'llm')")
        con.execute("INSERT INTO scores (explanation_id, scorer, metric, value, n) VALUES (1, 'detection', 'auroc', 0.7, 40), "
                    "(2, 'detection', 'auroc', 0.6, 40), (3, 'detection', 'auroc', 0.6, 40)")
        con.execute("INSERT INTO reviews (explanation_id, verdict) VALUES (4, 'reject')")
    with Store(path, read_only=read_only) as store:
        assert [r[2] for r in store.con.execute("SELECT * FROM feature_best ORDER BY feature").fetchall()] == [1, 3, 4]
        assert [label.label for label in catalog.best_labels(store.con)] == ["a", "c", "d"]
        assert_current(store.con)


def test_rebuild_recomputes_a_damaged_table(store):
    with store.writing() as w:
        w.execute("UPDATE feature_best SET explanation_id = -1")
        w.execute("DELETE FROM feature_best WHERE feature = 0")
    store.close()
    indexing.rebuild(store.path)
    with Store(store.path, read_only=True) as s:
        assert_current(s.con)


def test_imported_labels_keep_it_current(store, tmp_path):
    path = tmp_path / "labels.csv"
    path.write_text(f"source,feature,label\n{SOURCE_A},0,imported dogs\n{SOURCE_A},9,imported violins\n"
                    f"{SOURCE_B},0,imported cats\n")
    store.close()
    import_labels(Store(store.path), path)
    with Store(store.path, read_only=True) as s:
        assert catalog.best_label(s.con, SOURCE_A, 9).why_best.n_competing == 2
        assert_current(s.con)


def test_a_write_leaves_other_sources_features_of_the_same_number_as_stored(store):
    """The refresh deletes the stored rows of its feature numbers in every source (the index it uses is on
    the number alone) and puts back those of other sources as they were."""
    con = store.con
    with store.writing() as w:  # a mark on source B's feature 1 that only a recomputation would erase
        w.execute("UPDATE feature_best SET n_ranked = 99 FROM sources s "
                  "WHERE s.source_id = feature_best.source_id AND s.name = ? AND feature = 1", [SOURCE_B])
    with store.writing() as w:
        write(w, SOURCE_A, 1, "shares on the stock market", 0.99)
    assert best_id(con, SOURCE_A, 1) == catalog.label_history(con, SOURCE_A, 1)[0].explanation_id
    assert con.execute("SELECT n_ranked FROM feature_best JOIN sources USING (source_id) WHERE name = ? AND feature = 1",
                       [SOURCE_B]).fetchone() == (99,)
    with store.writing() as w:
        q.refresh_best(w, [(source_id(con, SOURCE_B), 1)])
    assert_current(con)


def test_many_features_matched_by_one_scan_keep_it_current(store, monkeypatch):
    """Past MAX_LISTED_IDS, the features' labels, scores and stored rows are matched by scans, not lookups."""
    monkeypatch.setattr(q, "MAX_LISTED_IDS", 1)
    con = store.con
    with store.writing() as w:
        write(w, SOURCE_A, 1, "stock tickers", 0.99)
        write(w, SOURCE_B, 1, "bank tellers", 0.1)
    with store.writing() as w:
        catalog.review_label(w, catalog.label_history(con, SOURCE_A, 8)[-1].explanation_id, "accept")
        inventory.delete_label(w, catalog.label_history(con, SOURCE_A, 9)[0].explanation_id)
        a, b = source_id(con, SOURCE_A), source_id(con, SOURCE_B)
        q.refresh_best(w, [(a, f) for f in range(12)] + [(b, 0), (b, 1), (b, 5)])
    assert_current(con)


class Fetched:
    def __init__(self, rows):
        self.rows = rows

    def fetchall(self):
        return [tuple(r.values()) for r in self.rows.to_pylist()]

    def fetchnumpy(self):
        return {c: self.rows[c].to_numpy() for c in self.rows.column_names}


class Profiled:
    """A connection that keeps, per statement it runs, the rows each scan of a stored table read."""

    def __init__(self, con, folder):
        self.con, self.path, self.scans = con, folder / "profile.json", []
        con.execute("PRAGMA enable_profiling = 'json'")
        con.execute(f"PRAGMA profiling_output = '{self.path}'")

    def execute(self, sql, params=None):
        rows = self.con.execute(sql, params).to_arrow_table()  # the profile is written once the result is read
        self.scans += [(" ".join(sql.split())[:60], table, n) for table, n in self._scans(json.loads(self.path.read_text()))]
        return Fetched(rows)

    def _scans(self, node):
        table = node.get("extra_info", {}).get("Table")
        if table:
            yield table, node.get("operator_rows_scanned", 0)
        for child in node.get("children", []):
            yield from self._scans(child)


def test_refreshing_a_few_features_reads_their_rows_not_the_catalog(tmp_path):
    """A write's refresh reads its features' labels, those labels' scores and reviews, and their stored
    rows, through indexes: no scan of every label, score or feature, whatever the catalog's size."""
    n = 3000
    with Store(tmp_path / "big.duckdb", create=True) as s:
        with s.writing() as con:
            sid = create_source(con, "big", model=None, hookpoint=None, layer=0, feature_kind="neurons", width=n,
                                context_len=None, config={}).source_id
            q.bulk_insert_labels(con, sid, pa.table({
                "feature": np.arange(n, dtype=np.int32), "label": [f"label {f}" for f in range(n)],
                "vector": pa.FixedSizeListArray.from_arrays(pa.array(np.tile(VECTOR, n)), 384),
                "scorer": ["detection"] * n, "metric": ["auroc"] * n,
                "value": np.linspace(0, 1, n), "n": np.full(n, 40, dtype=np.int32),
            }), "m", "bench")
            q.insert_review(con, 5, "accept", None, None)
        with s.writing() as con:
            write(con, "big", 4, "a second label", 0.9)
            profiled = Profiled(con, tmp_path)
            q.refresh_best(profiled, [(sid, 4), (sid, 1500), (sid, 2999)])
            con.execute("PRAGMA disable_profiling")
        assert {t.split(".")[-1] for _, t, _ in profiled.scans} >= {"explanations", "scores", "feature_best", "reviews"}
        assert [(sql, t, rows) for sql, t, rows in profiled.scans if rows > 10 and not t.endswith("reviews")] == []
        assert_current(s.con)
