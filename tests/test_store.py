"""The activation store: migrations, sources, chunks, finalize and the statistics it builds."""

from __future__ import annotations

import duckdb
import numpy as np
import pyarrow as pa
import pytest
from synthetic import make_synthetic_store

from autointerp.errors import AutointerpError
from autointerp.store import Store, activations
from autointerp.store.activations import (
    _feature_ranges,
    append_chunk,
    collection_progress,
    create_source,
    feature_stats,
    finalize_source,
    get_source,
    list_feature_stats,
    list_sources,
    select_features,
)
from autointerp.store.db import applied_migrations
from autointerp.store.migrations import MIGRATIONS

SOURCE_ARGS = dict(model="m", hookpoint="h", layer=3, feature_kind="neurons", width=8, context_len=4, config={"a": 1})


def contexts_table(first_id: int, tokens: list[list[str]]) -> pa.Table:
    ids = list(range(first_id, first_id + len(tokens)))
    return pa.table(
        {
            "context_id": pa.array(ids, pa.int64()),
            "token_ids": pa.array([None] * len(ids), pa.list_(pa.int32())),
            "tokens": pa.array(tokens, pa.list_(pa.string())),
            "document_id": pa.array(ids, pa.int64()),
            "doc_offset": pa.array([0] * len(ids), pa.int32()),
        }
    )


def activations_table(rows: list[tuple[int, int, int, float]]) -> pa.Table:
    feature, context_id, pos, value = zip(*rows) if rows else ([], [], [], [])
    return pa.table(
        {
            "feature": pa.array(feature, pa.int32()),
            "context_id": pa.array(context_id, pa.int64()),
            "pos": pa.array(pos, pa.int16()),
            "value": pa.array(value, pa.float32()),
        }
    )


# Two chunks, 3 contexts x 4 tokens = 12 tokens. Feature 2 fires 3 times in 2 contexts, feature 5 once.
CHUNK0 = (
    [["a", "b", "c", "d"], ["a", "x", "y", "z"]],
    [(2, 0, 1, 1.0), (2, 0, 2, 3.0), (5, 1, 0, 0.5)],
)
CHUNK1 = ([["b", "b", "q", "a"]], [(2, 2, 3, 2.0)])


@pytest.fixture
def store(tmp_path):
    with Store(tmp_path / "s.duckdb", create=True) as s:
        yield s


def write_chunk(store: Store, source_id: int, index: int, first_id: int, chunk) -> None:
    tokens, rows = chunk
    with store.writing() as con:
        append_chunk(con, source_id, index, contexts_table(first_id, tokens), activations_table(rows), 4 * len(tokens), {"i": index})


def tiny_source(store: Store) -> int:
    with store.writing() as con:
        sid = create_source(con, "tiny", **SOURCE_ARGS).source_id
    write_chunk(store, sid, 0, 0, CHUNK0)
    write_chunk(store, sid, 1, 2, CHUNK1)
    with store.writing() as con:
        finalize_source(con, sid)
    return sid


def test_migrations_fresh_then_reopen_applies_nothing_twice(tmp_path):
    path = tmp_path / "m.duckdb"
    with Store(path, create=True) as s:
        assert applied_migrations(s.con) == [name for name, _ in MIGRATIONS]
        tiny_source(s)
    with Store(path) as s:  # reopening runs migrate() again: nothing new, data kept
        assert applied_migrations(s.con) == [name for name, _ in MIGRATIONS]
        (n,) = s.con.execute("SELECT count(*) FROM _migrations").fetchone()
        assert n == len(MIGRATIONS)
        assert [x.name for x in list_sources(s.con)] == ["tiny"]
        assert s.con.execute("SELECT count(*) FROM activations").fetchone()[0] == 4


def test_create_source_resumes_same_config_and_rejects_different(store):
    with store.writing() as con:
        first = create_source(con, "s", **SOURCE_ARGS)
        again = create_source(con, "s", **SOURCE_ARGS)
        assert again == first
        with pytest.raises(AutointerpError, match="already exists with different settings"):
            create_source(con, "s", **{**SOURCE_ARGS, "config": {"a": 2}})
        with pytest.raises(AutointerpError, match="already exists with different settings"):
            create_source(con, "s", **{**SOURCE_ARGS, "layer": 4})
    assert get_source(store.con, "s").config == {"a": 1}


def test_get_source_unknown_lists_known(store):
    with store.writing() as con:
        create_source(con, "alpha", **SOURCE_ARGS)
    with pytest.raises(AutointerpError, match="unknown source 'beta'; known sources: alpha"):
        get_source(store.con, "beta")


def test_collection_progress_and_chunk_is_all_or_nothing(store):
    with store.writing() as con:
        sid = create_source(con, "s", **SOURCE_ARGS).source_id
    assert collection_progress(store.con, sid) == (0, 0, None)
    write_chunk(store, sid, 0, 0, CHUNK0)
    assert collection_progress(store.con, sid) == (1, 2, {"i": 0})
    with pytest.raises(duckdb.Error):  # chunk index 0 again: the primary key refuses it, nothing lands
        write_chunk(store, sid, 0, 2, CHUNK1)
    assert store.con.execute("SELECT count(*) FROM contexts").fetchone()[0] == 2
    assert store.con.execute("SELECT count(*) FROM activations_staging").fetchone()[0] == 3
    assert collection_progress(store.con, sid) == (1, 2, {"i": 0})


def test_stats_on_a_tiny_handmade_source(store):
    sid = tiny_source(store)
    assert get_source(store.con, "tiny").status == "ready"
    s2 = feature_stats(store.con, sid, 2)
    assert (s2.n_active_tokens, s2.n_active_contexts) == (3, 2)
    assert s2.density == pytest.approx(3 / 12)
    assert s2.max_value == pytest.approx(3.0)
    assert s2.mean_value == pytest.approx(2.0)
    # per-context maxes are 3.0 (context 0) and 2.0 (context 2)
    assert s2.quantile_edges[0] == pytest.approx(2.0) and s2.quantile_edges[-1] == pytest.approx(3.0)
    assert s2.quantile_edges[5] == pytest.approx(2.5)
    assert len(s2.hist_edges) == len(s2.hist_counts) + 1 and sum(s2.hist_counts) == 3
    assert s2.hist_edges[0] == 0 and s2.hist_edges[-1] == pytest.approx(3.0)
    s5 = feature_stats(store.con, sid, 5)
    assert (s5.n_active_tokens, s5.n_active_contexts, s5.density) == (1, 1, pytest.approx(1 / 12))

    fcm = store.con.execute(
        "SELECT feature, context_id, max_value, max_pos, n_active FROM feature_context_max ORDER BY ALL"
    ).fetchall()
    assert fcm == [(2, 0, 3.0, 2, 2), (2, 2, 2.0, 3, 1), (5, 1, 0.5, 0, 1)]
    token_stats = {
        t: (n, c) for t, n, c in store.con.execute("SELECT token, n_occurrences, n_contexts FROM token_stats").fetchall()
    }
    assert token_stats["a"] == (3, 3) and token_stats["b"] == (3, 2) and token_stats["q"] == (1, 1)
    postings = store.con.execute("SELECT context_id FROM token_postings WHERE token = 'a' ORDER BY 1").fetchall()
    assert postings == [(0,), (1,), (2,)]


def test_activations_are_sorted_and_finalize_is_idempotent(store):
    sid = tiny_source(store)
    rows = store.con.execute("SELECT feature, context_id, pos, value FROM activations").fetchall()
    assert rows == sorted(rows)
    before = [feature_stats(store.con, sid, f) for f in (2, 5)]
    with store.writing() as con:
        finalize_source(con, sid)
    assert [feature_stats(store.con, sid, f) for f in (2, 5)] == before
    assert store.con.execute("SELECT count(*) FROM activations").fetchone()[0] == 4
    assert store.con.execute("SELECT count(*) FROM activations_staging").fetchone()[0] == 0


def test_finalize_again_after_more_chunks_merges_in_order(store):
    sid = tiny_source(store)
    write_chunk(store, sid, 2, 3, ([["z", "z", "z", "a"]], [(2, 3, 0, 9.0), (1, 3, 1, 1.0)]))
    with store.writing() as con:
        finalize_source(con, sid)
    rows = store.con.execute("SELECT feature, context_id, pos, value FROM activations").fetchall()
    assert rows == sorted(rows) and len(rows) == 6
    s2 = feature_stats(store.con, sid, 2)
    assert (s2.n_active_tokens, s2.n_active_contexts, s2.max_value) == (4, 3, 9.0)
    assert s2.density == pytest.approx(4 / 16)
    assert feature_stats(store.con, sid, 1).n_active_tokens == 1


def test_unknown_feature_names_the_ones_that_exist(store):
    sid = tiny_source(store)
    with pytest.raises(AutointerpError, match=r"feature 3 has no activations .*2 features fire, numbered 2\.\.5"):
        feature_stats(store.con, sid, 3)


def test_list_feature_stats_orders_and_pages(store):
    sid = tiny_source(store)
    assert [s.feature for s in list_feature_stats(store.con, sid)] == [2, 5]
    assert [s.feature for s in list_feature_stats(store.con, sid, order_by="-density")] == [2, 5]
    assert [s.feature for s in list_feature_stats(store.con, sid, order_by="max_value")] == [5, 2]
    assert [s.feature for s in list_feature_stats(store.con, sid, limit=1, offset=1)] == [5]
    with pytest.raises(AutointerpError, match="cannot order features by"):
        list_feature_stats(store.con, sid, order_by="value; DROP TABLE sources")


def test_select_features_stratified_and_deterministic(store):
    with store.writing() as con:
        sid = create_source(con, "many", **SOURCE_ARGS).source_id
    rng = np.random.default_rng(0)
    n_ctx, n_feat = 40, 30
    tokens = [["t"] * 4 for _ in range(n_ctx)]
    rows = []
    for f in range(n_feat):  # feature f fires in f + 1 contexts: densities spread evenly
        for c in rng.choice(n_ctx, size=f + 1, replace=False):
            rows.append((f, int(c), 0, 1.0))
    with store.writing() as con:
        append_chunk(con, sid, 0, contexts_table(0, tokens), activations_table(rows), n_ctx * 4, {})
        finalize_source(con, sid)
    chosen = select_features(store.con, sid, 5, seed=1, min_active_contexts=6)
    assert chosen == select_features(store.con, sid, 5, seed=1, min_active_contexts=6)
    assert len(chosen) == 5 and all(f >= 5 for f in chosen)  # features 0-4 fire in < 6 contexts
    # one per density stratum of the 25 eligible features (5..29): strata of 5
    assert sorted((f - 5) // 5 for f in chosen) == [0, 1, 2, 3, 4]
    assert any(select_features(store.con, sid, 5, seed=s, min_active_contexts=6) != chosen for s in range(2, 8))
    assert select_features(store.con, sid, 100, seed=0, min_active_contexts=29) == [28, 29]
    # feature f is silent in 40 - (f + 1) contexts: 15 silent ones leave features up to 24
    assert select_features(store.con, sid, 100, seed=0, min_active_contexts=6, min_silent_contexts=15) == list(range(5, 25))


REFERENCE_FCM = """
    SELECT feature, context_id, max(value), arg_max(pos, (value, -pos)), count(*)
    FROM activations GROUP BY feature, context_id ORDER BY feature, context_id
"""


@pytest.mark.parametrize("batch_rows, force_resort", [(4_000_000, False), (7, False), (7, True)])
def test_feature_context_max_matches_a_sql_aggregate(tmp_path, monkeypatch, batch_rows, force_resort):
    monkeypatch.setattr(activations, "FCM_BATCH_ROWS", batch_rows)
    if force_resort:
        monkeypatch.setattr(activations, "_sorted_rows", lambda *a: False)
    with make_synthetic_store(tmp_path / "s.duckdb", n_contexts=300, n_features=6) as s:
        stored = s.con.execute(
            "SELECT feature, context_id, max_value, max_pos, n_active FROM feature_context_max ORDER BY feature, context_id"
        ).fetchall()
        assert stored == s.con.execute(REFERENCE_FCM).fetchall() and len(stored) > 100


def test_feature_ranges_cap_rows():
    features, counts = np.array([0, 1, 2, 5, 9]), np.array([3, 3, 10, 1, 1])
    assert _feature_ranges(features, counts, 6) == [(0, 1), (2, 2), (5, 9)]
    assert _feature_ranges(features, counts, 100) == [(0, 9)]


@pytest.mark.parametrize("batch_rows", [4_000_000, 50])
def test_feature_stats_match_sql_references(tmp_path, monkeypatch, batch_rows):
    monkeypatch.setattr(activations, "FCM_BATCH_ROWS", batch_rows)
    with make_synthetic_store(tmp_path / "s.duckdb", n_contexts=300, n_features=6) as s:
        sid = get_source(s.con, "synthetic").source_id
        total = s.con.execute("SELECT sum(len(tokens)) FROM contexts").fetchone()[0]
        reference = s.con.execute(
            """
            SELECT a.feature, a.n, c.n, a.mx, a.mean, c.q FROM
              (SELECT feature, count(*) n, max(value) mx, avg(value) mean FROM activations GROUP BY feature) a
            JOIN (SELECT feature, count(*) n, quantile_cont(max_value, [0, 0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 1])
                  AS q FROM feature_context_max GROUP BY feature) c USING (feature)
            ORDER BY feature
            """
        ).fetchall()
        stats = list_feature_stats(s.con, sid)
        assert [x.feature for x in stats] == [r[0] for r in reference]
        for x, (_, n_tok, n_ctx, mx, mean, q) in zip(stats, reference):
            assert (x.n_active_tokens, x.n_active_contexts) == (n_tok, n_ctx)
            assert x.density == pytest.approx(n_tok / total)
            assert (x.max_value, x.mean_value) == (pytest.approx(mx), pytest.approx(mean))
            assert x.quantile_edges == pytest.approx(q)
            values = np.array(
                [v for (v,) in s.con.execute("SELECT value FROM activations WHERE feature = ?", [x.feature]).fetchall()]
            )
            assert x.hist_counts == np.histogram(values, bins=x.hist_edges)[0].tolist()


def test_histogram_covers_negative_values(store):
    with store.writing() as con:
        sid = create_source(con, "neg", **SOURCE_ARGS).source_id
        rows = [(0, 0, 0, -2.0), (0, 0, 1, 1.0), (0, 1, 3, 2.0)]
        append_chunk(con, sid, 0, contexts_table(0, [["a"] * 4, ["b"] * 4]), activations_table(rows), 8, {})
        finalize_source(con, sid)
    s = feature_stats(store.con, sid, 0)
    assert s.hist_edges[0] == -2.0 and s.hist_edges[-1] == 2.0 and sum(s.hist_counts) == 3
    assert s.hist_counts[0] == 1 and s.hist_counts[-1] == 1
    assert s.mean_value == pytest.approx(1 / 3) and s.quantile_edges == pytest.approx([1.0 + 0.1 * i for i in range(11)])
