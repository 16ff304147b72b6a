"""What a catalog holds, and taking it out again: list sources and labels, delete a source or a label.

Deleting a source removes its contexts, activations, statistics, labels and every row naming them; the
runs and the LLM call ledger stay (they record what was spent). Deleting a label removes it with its
scores, reviews and embedding. Both run in the caller's transaction (`with store.writing() as con:`).
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb

from autointerp.catalog import Label, label_history, load_labels
from autointerp.errors import AutointerpError, NotFound
from autointerp.store import catalog_queries as cq
from autointerp.store import inventory_queries as q
from autointerp.store.activations import SourceInfo, get_source, list_sources


@dataclass
class SourceSummary:
    source: SourceInfo
    n_contexts: int
    n_features_active: int  # features with statistics (that fired at least once)
    n_labels: int
    n_features_labeled: int


def sources(con: duckdb.DuckDBPyConnection) -> list[SourceSummary]:
    """Every source of the store with what it holds."""
    counts = q.source_summaries(con)
    return [SourceSummary(s, *counts[s.source_id][1:]) for s in list_sources(con)]


def source(con: duckdb.DuckDBPyConnection, name: str) -> SourceSummary:
    """One source with what it holds (an unknown name is an error listing the known ones)."""
    info = get_source(con, name)
    return SourceSummary(info, *q.source_summaries(con)[info.source_id][1:])


def labels(con: duckdb.DuckDBPyConnection, source: str | None = None, feature: int | None = None) -> list[Label]:
    """Labels of one feature (newest first), of one source, or of the whole store (by source and feature)."""
    if feature is not None:
        if source is None:
            raise AutointerpError("a feature number needs its source: name the source too")
        return label_history(con, source, feature)
    return load_labels(con, cq.explanation_ids(con, get_source(con, source).source_id if source else None))


def delete_source(con: duckdb.DuckDBPyConnection, name: str) -> dict[str, int]:
    """Delete a source and everything stored for it; return the rows deleted per table."""
    return q.delete_source_rows(con, get_source(con, name).source_id)


def delete_label(con: duckdb.DuckDBPyConnection, explanation_id: int) -> dict[str, int]:
    """Delete one label with its scores, reviews and embedding; return the rows deleted per table."""
    if not load_labels(con, [explanation_id]):
        raise NotFound(f"no label with explanation id {explanation_id} in this store")
    return q.delete_explanations(con, [explanation_id])
