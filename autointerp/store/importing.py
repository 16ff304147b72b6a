"""Import activations computed elsewhere from two Parquet files into a new source.

Parquet schema (paste into the README)
--------------------------------------
contexts.parquet, one row per context window:
    context_id  BIGINT (any integer type)        unique, not null
    tokens      LIST<VARCHAR>                    the token strings, not null, 1..32767 of them, no null elements
    token_ids   LIST<INTEGER> (optional)         same length as tokens
    document_id BIGINT (optional)                which document the window comes from
    doc_offset  INTEGER (optional)               token offset of the window inside its document

activations.parquet, one row per non-zero activation (zero rows are skipped):
    feature     INTEGER (any integer type)       >= 0, fits in INT32
    context_id  BIGINT (any integer type)        must exist in contexts.parquet
    pos         INTEGER (any integer type)       0 <= pos < len(tokens) of that context
    value       FLOAT or DOUBLE                  finite (no NaN, no inf)
    (feature, context_id, pos) is unique.

A file that breaks any rule is rejected with one error naming the rule and the first offending row
(0-based row number in the file); the store is left exactly as it was. Import validates in DuckDB SQL
straight over the Parquet files, writes everything in one transaction, and finalizes the source
(sorted activations, feature statistics, token tables).
"""

from __future__ import annotations

import time
from dataclasses import dataclass
from pathlib import Path

import duckdb
import pyarrow.parquet as pq

from autointerp.errors import AutointerpError
from autointerp.store.activations import (
    append_chunk,
    create_source,
    finalize_source,
    source_token_count,
)
from autointerp.store.db import Store

INTEGER_TYPES = {"TINYINT", "SMALLINT", "INTEGER", "BIGINT", "HUGEINT", "UTINYINT", "USMALLINT", "UINTEGER", "UBIGINT", "UHUGEINT"}
FLOAT_TYPES = {"FLOAT", "DOUBLE"}
MAX_CONTEXT_LEN = 32767  # positions are stored as SMALLINT


@dataclass
class ImportReport:
    source: str
    source_id: int
    n_contexts: int
    n_tokens: int
    n_activations: int
    n_features: int
    n_zero_skipped: int
    seconds: float


def _integer(t: str) -> bool:
    return t in INTEGER_TYPES


def _integer_list(t: str) -> bool:
    return t.endswith("[]") and t[:-2] in INTEGER_TYPES


COLUMN_RULES = {
    "contexts": {
        "required": {"context_id": (_integer, "an integer"), "tokens": (lambda t: t == "VARCHAR[]", "a list of strings")},
        "optional": {
            "token_ids": (_integer_list, "a list of integers"),
            "document_id": (_integer, "an integer"),
            "doc_offset": (_integer, "an integer"),
        },
    },
    "activations": {
        "required": {
            "feature": (_integer, "an integer"),
            "context_id": (_integer, "an integer"),
            "pos": (_integer, "an integer"),
            "value": (lambda t: t in FLOAT_TYPES, "FLOAT or DOUBLE"),
        },
        "optional": {},
    },
}


def _columns(con: duckdb.DuckDBPyConnection, path: Path, what: str) -> dict[str, str]:
    if not path.exists():
        raise AutointerpError(f"the {what} file {path} does not exist")
    if not path.is_file():
        raise AutointerpError(f"the {what} file {path} is not a file; give the path of a .parquet file")
    try:
        rows = con.execute("DESCRIBE SELECT * FROM read_parquet($1)", [str(path)]).fetchall()
    except duckdb.Error as exc:
        first_line = str(exc).splitlines()[0]
        raise AutointerpError(f"cannot read the {what} file {path} as Parquet ({first_line}); write it with pyarrow, pandas or DuckDB") from None
    return {name: ctype for name, ctype, *_ in rows}


def _check_columns(columns: dict[str, str], path: Path, what: str) -> None:
    rules = COLUMN_RULES[what]
    missing = [c for c in rules["required"] if c not in columns]
    if missing:
        raise AutointerpError(
            f"the {what} file {path} lacks column(s) {missing}; it has {list(columns)}; "
            f"required: {list(rules['required'])}"
        )
    for name, (ok, expected) in {**rules["required"], **rules["optional"]}.items():
        if name in columns and not ok(columns[name]):
            raise AutointerpError(f"column {name!r} of the {what} file {path} has type {columns[name]}; it must be {expected}")


def _reject(path: Path, row: tuple, columns: list[str], problem: str) -> AutointerpError:
    rn, *values = row
    shown = ", ".join(f"{c}={v!r}" for c, v in zip(columns, values))
    return AutointerpError(f"{path} row {rn} ({shown}): {problem}; fix the file and import again (nothing was stored)")


def _first_duplicate(con: duckdb.DuckDBPyConnection, path: Path, keys: list[str]) -> tuple | None:
    """(row, *key values, first row) of the earliest repeated key, or None. Aggregates first: cheap when clean."""
    key = ", ".join(keys)
    (n_dup_groups,) = con.execute(
        f"SELECT count(*) FROM (SELECT 1 FROM read_parquet($1) GROUP BY {key} HAVING count(*) > 1)", [str(path)]
    ).fetchone()
    if not n_dup_groups:
        return None
    return con.execute(
        f"""
        SELECT file_row_number, {key}, first_row FROM (
            SELECT file_row_number, {key}, min(file_row_number) OVER (PARTITION BY {key}) AS first_row
            FROM read_parquet($1, file_row_number = true)
        ) WHERE file_row_number > first_row ORDER BY file_row_number LIMIT 1
        """,
        [str(path)],
    ).fetchone()


def _validate(con: duckdb.DuckDBPyConnection, contexts: Path, activations: Path, ctx_cols: dict[str, str]) -> None:
    c, a = str(contexts), str(activations)
    token_ids_check = "token_ids IS NOT NULL AND len(token_ids) <> len(tokens)" if "token_ids" in ctx_cols else "false"
    if not con.execute("SELECT count(*) FROM read_parquet($1)", [c]).fetchone()[0]:
        raise AutointerpError(f"the contexts file {contexts} has no rows; nothing to import")
    row = con.execute(
        f"""
        SELECT file_row_number, context_id, len(tokens), CASE
                 WHEN context_id IS NULL THEN 'context_id is null'
                 WHEN context_id > 9223372036854775807 THEN 'context_id does not fit in BIGINT'
                 WHEN tokens IS NULL OR len(tokens) = 0 THEN 'tokens is null or empty'
                 WHEN len(tokens) > {MAX_CONTEXT_LEN} THEN 'more than {MAX_CONTEXT_LEN} tokens'
                 WHEN list_contains(list_transform(tokens, lambda t: t IS NULL), true) THEN 'a token is null'
                 ELSE 'token_ids and tokens have different lengths' END
        FROM read_parquet($1, file_row_number = true)
        WHERE context_id IS NULL OR context_id > 9223372036854775807 OR tokens IS NULL OR len(tokens) = 0
           OR len(tokens) > {MAX_CONTEXT_LEN} OR list_contains(list_transform(tokens, lambda t: t IS NULL), true)
           OR {token_ids_check}
        ORDER BY file_row_number LIMIT 1
        """,
        [c],
    ).fetchone()
    if row:
        raise _reject(contexts, row[:3], ["context_id", "n_tokens"], row[3])
    row = _first_duplicate(con, contexts, ["context_id"])
    if row:
        raise _reject(contexts, row[:2], ["context_id"], f"duplicate context_id (first seen at row {row[2]})")
    row = con.execute(
        """
        SELECT a.file_row_number, a.feature, a.context_id, a.pos, a.value, CASE
                 WHEN a.feature IS NULL OR a.context_id IS NULL OR a.pos IS NULL OR a.value IS NULL THEN 'a null value'
                 WHEN isnan(a.value) THEN 'value is NaN'
                 WHEN isinf(a.value) THEN 'value is infinite'
                 WHEN abs(a.value) > 3.4e38 THEN 'value does not fit in FLOAT'
                 WHEN a.feature < 0 OR a.feature > 2147483647 THEN 'feature must be between 0 and 2147483647'
                 WHEN c.n IS NULL THEN 'context_id is not in the contexts file'
                 WHEN a.pos < 0 THEN 'pos is negative'
                 ELSE 'pos is past the end of its context (' || c.n || ' tokens)' END
        FROM read_parquet($1, file_row_number = true) a
        LEFT JOIN (SELECT context_id, len(tokens) AS n FROM read_parquet($2)) c ON a.context_id = c.context_id
        WHERE a.feature IS NULL OR a.context_id IS NULL OR a.pos IS NULL OR a.value IS NULL
           OR isnan(a.value) OR isinf(a.value) OR abs(a.value) > 3.4e38 OR a.feature < 0 OR a.feature > 2147483647
           OR c.n IS NULL OR a.pos < 0 OR a.pos >= c.n
        ORDER BY a.file_row_number LIMIT 1
        """,
        [a, c],
    ).fetchone()
    if row:
        raise _reject(activations, row[:5], ["feature", "context_id", "pos", "value"], row[5])
    row = _first_duplicate(con, activations, ["feature", "context_id", "pos"])
    if row:
        raise _reject(
            activations, row[:4], ["feature", "context_id", "pos"], f"duplicate (feature, context_id, pos) (first seen at row {row[4]})"
        )


def validate_files(con: duckdb.DuckDBPyConnection, contexts: Path, activations: Path) -> dict[str, str]:
    """Check both files against every rule above; return the contexts file's columns and their types."""
    ctx_cols = _columns(con, contexts, "contexts")
    _check_columns(ctx_cols, contexts, "contexts")
    _check_columns(_columns(con, activations, "activations"), activations, "activations")
    _validate(con, contexts, activations, ctx_cols)
    return ctx_cols


def import_chunk(
    store: Store,
    source_id: int,
    chunk_index: int,
    contexts_path: str | Path,
    activations_path: str | Path,
    n_tokens: int,
    resume_state: dict,
) -> int:
    """Validate one shard's two files (the rules above) and append them as the next chunk of a source being
    collected, in one transaction with its resume state; `finalize_source` makes it readable. Returns the
    number of activation rows. A chunk index already stored is an error, so a shard can never land twice.
    """
    contexts, activations = Path(contexts_path), Path(activations_path)
    with store.writing() as con:
        validate_files(con, contexts, activations)
        if con.execute(
            "SELECT 1 FROM collection_chunks WHERE source_id = ? AND chunk_index = ?", [source_id, chunk_index]
        ).fetchone():
            raise AutointerpError(f"chunk {chunk_index} of source {source_id} is already stored; nothing was added")
        contexts_table = pq.read_table(contexts, columns=["context_id", "token_ids", "tokens", "document_id", "doc_offset"])
        activations_table = pq.read_table(activations, columns=["feature", "context_id", "pos", "value"])
        append_chunk(con, source_id, chunk_index, contexts_table, activations_table, n_tokens, resume_state)
    return activations_table.num_rows


def import_parquet(store: Store, source: str, contexts_path: str | Path, activations_path: str | Path) -> ImportReport:
    """Validate both files, then store them as a new, finalized source named `source` in one transaction."""
    started = time.monotonic()
    contexts, activations = Path(contexts_path), Path(activations_path)
    with store.writing() as con:
        if con.execute("SELECT 1 FROM sources WHERE name = ?", [source]).fetchone():
            raise AutointerpError(f"a source named {source!r} already exists in {store.path}; import under another `source` name")
        ctx_cols = validate_files(con, contexts, activations)
        (n_features, context_len, n_zero) = con.execute(
            """
            SELECT (SELECT max(feature) + 1 FROM read_parquet($1)),
                   (SELECT max(len(tokens)) FROM read_parquet($2)),
                   (SELECT count(*) FROM read_parquet($1) WHERE value = 0)
            """,
            [str(activations), str(contexts)],
        ).fetchone()
        info = create_source(
            con,
            source,
            model=None,
            hookpoint=None,
            layer=None,
            feature_kind="imported",
            width=n_features,
            context_len=context_len,
            config={"contexts": str(contexts.resolve()), "activations": str(activations.resolve())},
        )
        optional = {
            name: (name if name in ctx_cols else "NULL")
            for name in ("token_ids", "document_id", "doc_offset")
        }
        con.execute(
            f"""
            INSERT INTO contexts (source_id, context_id, token_ids, tokens, document_id, doc_offset)
            SELECT $1, context_id, {optional['token_ids']}, tokens, {optional['document_id']}, {optional['doc_offset']}
            FROM read_parquet($2)
            """,
            [info.source_id, str(contexts)],
        )
        # Straight into the sorted table: finalize_source then only builds the derived tables.
        con.execute(
            """
            INSERT INTO activations (source_id, feature, context_id, pos, value)
            SELECT $1, feature, context_id, pos, value FROM read_parquet($2)
            WHERE value <> 0 ORDER BY feature, context_id, pos
            """,
            [info.source_id, str(activations)],
        )
        finalize_source(con, info.source_id)
        (n_contexts,) = con.execute("SELECT count(*) FROM contexts WHERE source_id = ?", [info.source_id]).fetchone()
        (n_activations, n_firing) = con.execute(
            "SELECT coalesce(sum(n_active_tokens), 0), count(*) FROM feature_stats WHERE source_id = ?", [info.source_id]
        ).fetchone()
        n_tokens = source_token_count(con, info.source_id)
    return ImportReport(
        source=source,
        source_id=info.source_id,
        n_contexts=n_contexts,
        n_tokens=n_tokens,
        n_activations=n_activations,
        n_features=n_firing,
        n_zero_skipped=n_zero or 0,
        seconds=time.monotonic() - started,
    )
