"""SQL for listing what a store holds per source and for deleting a source or labels with everything
that hangs off them.

Deletion finds the tables to clean in the store's own catalog (every table with a `source_id` or an
`explanation_id` column), so a table a later migration adds is covered without editing this module.
Only table and column names read from `information_schema` are spliced into SQL; values are bound.
"""

from __future__ import annotations

from typing import Sequence

import duckdb

from autointerp.store.catalog_queries import _id_list, features_of_labels, refresh_best

DERIVED_TABLES = ("feature_best",)  # recomputed after a delete, not deleted from


def _tables_with(con: duckdb.DuckDBPyConnection, column: str) -> list[str]:
    rows = con.execute(
        """
        SELECT c.table_name FROM information_schema.columns c
        JOIN information_schema.tables t USING (table_catalog, table_schema, table_name)
        WHERE c.column_name = ? AND t.table_type = 'BASE TABLE' AND c.table_schema = 'main'
        ORDER BY c.table_name
        """,
        [column],
    ).fetchall()
    return [r[0] for r in rows if r[0] not in DERIVED_TABLES]


SOURCE_SUMMARY_FIELDS = ("source_id", "n_contexts", "n_features_active", "n_labels", "n_features_labeled")


def source_summaries(con: duckdb.DuckDBPyConnection) -> dict[int, tuple]:
    """source_id -> row in SOURCE_SUMMARY_FIELDS order, for every source."""
    rows = con.execute(
        """
        SELECT s.source_id,
               (SELECT count(*) FROM contexts c WHERE c.source_id = s.source_id),
               (SELECT count(*) FROM feature_stats f WHERE f.source_id = s.source_id),
               (SELECT count(*) FROM explanations e WHERE e.source_id = s.source_id),
               (SELECT count(DISTINCT feature) FROM explanations e WHERE e.source_id = s.source_id)
        FROM sources s ORDER BY s.source_id
        """
    ).fetchall()
    return {r[0]: r for r in rows}


def explanation_ids_of_source(con: duckdb.DuckDBPyConnection, source_id: int) -> list[int]:
    return [r[0] for r in con.execute("SELECT explanation_id FROM explanations WHERE source_id = ?", [source_id]).fetchall()]


def delete_explanations(con: duckdb.DuckDBPyConnection, explanation_ids: Sequence[int]) -> dict[str, int]:
    """Delete labels and every row that names them (scores, reviews, embeddings, job rows, ...); return the
    rows deleted per table."""
    deleted: dict[str, int] = {}
    for start in range(0, len(explanation_ids), 10_000):
        batch = explanation_ids[start : start + 10_000]
        features = features_of_labels(con, batch)
        id_list, params = _id_list(batch, "e")
        for table in _tables_with(con, "explanation_id"):
            n = con.execute(f'DELETE FROM "{table}" WHERE explanation_id IN ({id_list})', params).fetchone()[0]
            deleted[table] = deleted.get(table, 0) + int(n)
        refresh_best(con, features)
    return deleted


def delete_source_rows(con: duckdb.DuckDBPyConnection, source_id: int) -> dict[str, int]:
    """Delete a source, its labels and every row that names either; return the rows deleted per table."""
    deleted = delete_explanations(con, explanation_ids_of_source(con, source_id))
    for table in _tables_with(con, "source_id"):
        n = con.execute(f'DELETE FROM "{table}" WHERE source_id = ?', [source_id]).fetchone()[0]
        deleted[table] = deleted.get(table, 0) + int(n)
    return deleted
