"""Many rows in one INSERT: each column sent as one typed list parameter and unnested. DuckDB's executemany
runs one statement per row (~100 ms for a feature's 40 judged items on a loaded 2-core machine), an Arrow
table registered per insert costs ~6-12 ms of CPU; this costs ~1.5 ms for the same rows."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import duckdb

_types: dict[str, dict[str, str]] = {}  # table -> column -> SQL type (column types never change once shipped)


def _column_types(con: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    if table not in _types:
        rows = con.execute(
            "SELECT column_name, data_type FROM information_schema.columns WHERE table_name = ?", [table]
        ).fetchall()
        _types[table] = dict(rows)
    return _types[table]


def insert_rows(
    con: duckdb.DuckDBPyConnection, table: str, columns: Sequence[str], rows: Sequence[Sequence[Any]], where: str = ""
) -> None:
    """INSERT INTO table (columns) the rows (each a value per column, in order); `where` filters them (a WHERE
    clause over the columns, e.g. to skip rows already stored, in which `{rows}` names the new rows)."""
    if not rows:
        return
    types = _column_types(con, table)
    unnested = ", ".join(f"unnest(?::{types[name]}[]) AS {name}" for name in columns)
    listed = ", ".join(columns)
    con.execute(
        f"INSERT INTO {table} ({listed}) WITH _new_rows AS (SELECT {unnested}) "
        f"SELECT {listed} FROM _new_rows {where.replace('{rows}', '_new_rows')}",
        [list(values) for values in zip(*rows)],
    )
