"""The empty-query listing of the catalog: near pages (found from the first labels, without grouping every
label by feature) are the same pages the general query gives, never short, never overlapping."""

from __future__ import annotations

import pytest

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


@pytest.mark.parametrize("limit", [1, 3, 5, 50])
def test_near_pages_equal_the_general_listing(con, monkeypatch, limit):
    near = pages(con, limit)
    monkeypatch.setattr(q, "NEAR_PAGE_LIMIT", 0)  # every page through the general query
    general = pages(con, limit)
    assert near == general
    listed = [(s, f) for page in near for s, f, _ in page]
    expected = [(SOURCE_A, f) for f in sorted(FEATURES_A)] + [(SOURCE_B, f) for f in sorted(FEATURES_B)]
    assert listed == expected  # every labeled feature once, by source name and feature
    assert all(len(page) == limit for page in near[:-1])


def test_a_feature_with_several_labels_is_listed_by_its_best(con):
    hits = {(h.source, h.feature): h.label for h in search(con, SearchIndex(), "", limit=50).hits}
    assert hits[(SOURCE_A, 2)] == "loop keywords in code"  # 0.71 beats 0.62
    assert hits[(SOURCE_A, 8)] == "kettles and teapots"
