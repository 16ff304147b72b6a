"""The empty-query listing of the catalog: pages read from the stored best label of each feature are the
ranking over every label, at any depth, never short, never overlapping."""

from __future__ import annotations

import pytest

from autointerp import ranking
from autointerp.search import SearchIndex, search
from autointerp.store import Store
from autointerp.store import catalog_queries as q
from catalog_fixtures import FEATURES_A, FEATURES_B, SOURCE_A, SOURCE_B, catalog_copy


@pytest.fixture(scope="module")
def con(tmp_path_factory):
    with Store(catalog_copy(tmp_path_factory.mktemp("listing")), read_only=True) as store:
        yield store.con


def pages(con, limit: int) -> list[list[tuple[str, int, str]]]:
    out, offset = [], 0
    while True:
        hits = search(con, SearchIndex(), "", limit=limit, offset=offset).hits
        if not hits:
            return out
        out.append([(h.source, h.feature, h.label) for h in hits])
        offset += limit


def ranked_listing(con) -> list[tuple[str, int, str]]:
    """Every feature's best label ranked afresh over all labels, by source name and feature."""
    names = dict(con.execute("SELECT source_id, name FROM sources").fetchall())
    rows = q.best_explanation_rows(con, ranking.sql_parameters())
    labels = dict(con.execute("SELECT explanation_id, label FROM explanations").fetchall())
    return sorted((names[r[0]], r[1], labels[r[2]]) for r in rows)


@pytest.mark.parametrize("block_bits", [0, 1, 2, q.LISTING_BLOCK_BITS])
@pytest.mark.parametrize("limit", [1, 3, 5, 50])
def test_pages_are_the_ranking_over_every_label(con, monkeypatch, limit, block_bits):
    monkeypatch.setattr(q, "LISTING_BLOCK_BITS", block_bits)  # small blocks: pages span blocks and sources
    listed = pages(con, limit)
    assert [hit for page in listed for hit in page] == ranked_listing(con)
    expected = [(SOURCE_A, f) for f in sorted(FEATURES_A)] + [(SOURCE_B, f) for f in sorted(FEATURES_B)]
    assert [(s, f) for page in listed for s, f, _ in page] == expected  # every labeled feature once
    assert all(len(page) == limit for page in listed[:-1])


def test_a_feature_with_several_labels_is_listed_by_its_best(con):
    hits = {(h.source, h.feature): h.label for h in search(con, SearchIndex(), "", limit=50).hits}
    assert hits[(SOURCE_A, 2)] == "loop keywords in code"  # 0.71 beats 0.62
    assert hits[(SOURCE_A, 8)] == "kettles and teapots"
