"""The activation store: sources, contexts, sparse activations and the per-feature statistics built from them.

Writers append chunks (contexts + non-zero activations) into `activations_staging`; `finalize_source`
moves them into `activations` sorted by (feature, context_id, pos), so DuckDB's zonemaps let a per-feature
read touch only the few row groups that hold that feature, and builds the derived tables the sampler
uses (`feature_context_max`, `feature_stats`, `token_stats`, `token_postings`).
"""

from __future__ import annotations

import json
import random
import uuid
from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow as pa

from autointerp.errors import AutointerpError, NotFound

N_QUANTILE_EDGES = 11  # deciles of the per-context max, 0.0 ... 1.0
N_HIST_BINS = 20
POSTINGS_PER_TOKEN = 256
FCM_BATCH_ROWS = 4_000_000  # activation rows reduced per step when building feature_context_max and feature_stats


@dataclass
class SourceInfo:
    source_id: int
    name: str
    model: str | None
    hookpoint: str | None
    layer: int | None
    feature_kind: str
    width: int | None
    context_len: int | None
    config: dict
    status: str


@dataclass
class FeatureStats:
    source_id: int
    feature: int
    n_active_tokens: int
    n_active_contexts: int
    density: float  # active tokens / all tokens of the source
    max_value: float
    mean_value: float  # over active tokens
    quantile_edges: list[float]  # per-context max activation at quantiles 0.0, 0.1, ..., 1.0
    hist_edges: list[float]  # N_HIST_BINS + 1 edges from min(0, lowest value) to max_value, over active tokens
    hist_counts: list[int]


_SOURCE_COLUMNS = "source_id, name, model, hookpoint, layer, feature_kind, width, context_len, config, status"
_STATS_COLUMNS = (
    "source_id, feature, n_active_tokens, n_active_contexts, density, max_value, mean_value, "
    "quantile_edges, hist_edges, hist_counts"
)
_STATS_ORDER = {"feature", "density", "max_value", "mean_value", "n_active_tokens", "n_active_contexts"}


def _source_from_row(row: tuple) -> SourceInfo:
    *head, config, status = row
    return SourceInfo(*head, config=json.loads(config) if config else {}, status=status)


def _canonical(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def create_source(
    con: duckdb.DuckDBPyConnection,
    name: str,
    *,
    model: str | None,
    hookpoint: str | None,
    layer: int | None,
    feature_kind: str,
    width: int | None,
    context_len: int | None,
    config: dict,
) -> SourceInfo:
    """Create a source, or return the existing one of that name when it was made with the same settings (resume)."""
    wanted = dict(
        model=model, hookpoint=hookpoint, layer=layer, feature_kind=feature_kind, width=width, context_len=context_len
    )
    row = con.execute(f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE name = ?", [name]).fetchone()
    if row is not None:
        existing = _source_from_row(row)
        have = {k: getattr(existing, k) for k in wanted}
        if have != wanted or _canonical(existing.config) != _canonical(config):
            raise AutointerpError(
                f"a source named {name!r} already exists with different settings "
                f"({have}, config {_canonical(existing.config)}); "
                "choose another `source` name, or rerun with the original settings to resume it"
            )
        return existing
    row = con.execute(
        f"""
        INSERT INTO sources (name, model, hookpoint, layer, feature_kind, width, context_len, config)
        VALUES (?, ?, ?, ?, ?, ?, ?, ?)
        RETURNING {_SOURCE_COLUMNS}
        """,
        [name, model, hookpoint, layer, feature_kind, width, context_len, _canonical(config)],
    ).fetchone()
    return _source_from_row(row)


def list_sources(con: duckdb.DuckDBPyConnection) -> list[SourceInfo]:
    rows = con.execute(f"SELECT {_SOURCE_COLUMNS} FROM sources ORDER BY source_id").fetchall()
    return [_source_from_row(r) for r in rows]


def get_source(con: duckdb.DuckDBPyConnection, name: str) -> SourceInfo:
    row = con.execute(f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE name = ?", [name]).fetchone()
    if row is None:
        known = [s.name for s in list_sources(con)]
        hint = f"known sources: {', '.join(known)}" if known else "the store has no sources yet: run `autointerp collect` or `autointerp import`"
        raise NotFound(f"unknown source {name!r}; {hint}")
    return _source_from_row(row)


def _source_by_id(con: duckdb.DuckDBPyConnection, source_id: int) -> SourceInfo:
    row = con.execute(f"SELECT {_SOURCE_COLUMNS} FROM sources WHERE source_id = ?", [source_id]).fetchone()
    if row is None:
        raise NotFound(f"no source with id {source_id} in this store")
    return _source_from_row(row)


def collection_progress(con: duckdb.DuckDBPyConnection, source_id: int) -> tuple[int, int, dict | None]:
    """(next chunk index, next context id, resume_state of the last stored chunk) for resuming a collection."""
    row = con.execute(
        """
        SELECT chunk_index, resume_state FROM collection_chunks
        WHERE source_id = ? ORDER BY chunk_index DESC LIMIT 1
        """,
        [source_id],
    ).fetchone()
    next_chunk, state = (0, None) if row is None else (row[0] + 1, json.loads(row[1]) if row[1] else None)
    (max_context,) = con.execute("SELECT max(context_id) FROM contexts WHERE source_id = ?", [source_id]).fetchone()
    return next_chunk, 0 if max_context is None else max_context + 1, state


class _Registered:
    """An Arrow table visible to SQL under a unique name for the duration of a `with` block."""

    def __init__(self, con: duckdb.DuckDBPyConnection, table: pa.Table):
        self.con, self.table = con, table
        self.name = f"_arrow_{uuid.uuid4().hex}"

    def __enter__(self) -> str:
        self.con.register(self.name, self.table)
        return self.name

    def __exit__(self, *exc) -> None:
        self.con.unregister(self.name)


def _require_columns(table: pa.Table, what: str, columns: list[str]) -> None:
    missing = [c for c in columns if c not in table.column_names]
    if missing:
        raise AutointerpError(f"{what} table lacks column(s) {missing}; it has {table.column_names}")


def append_chunk(
    con: duckdb.DuckDBPyConnection,
    source_id: int,
    chunk_index: int,
    contexts: pa.Table,
    activations: pa.Table,
    n_tokens: int,
    resume_state: dict,
) -> None:
    """Store one chunk: contexts, staged activations and the chunk's bookkeeping row.

    contexts: context_id int64, token_ids list<int32> (nullable), tokens list<string>, document_id int64,
    doc_offset int32. activations: feature int32, context_id int64, pos int16, value float32 (non-zeros).
    Run it inside `store.writing()` so the chunk lands whole or not at all.
    """
    _require_columns(contexts, "contexts", ["context_id", "token_ids", "tokens", "document_id", "doc_offset"])
    _require_columns(activations, "activations", ["feature", "context_id", "pos", "value"])
    with _Registered(con, contexts) as ctx, _Registered(con, activations) as act:
        con.execute(
            f"""
            INSERT INTO contexts (source_id, context_id, token_ids, tokens, document_id, doc_offset)
            SELECT ?, context_id, token_ids, tokens, document_id, doc_offset FROM {ctx}
            """,
            [source_id],
        )
        con.execute(
            f"""
            INSERT INTO activations_staging (source_id, feature, context_id, pos, value)
            SELECT ?, feature, context_id, pos, value FROM {act}
            """,
            [source_id],
        )
        (first_context,) = con.execute(f"SELECT min(context_id) FROM {ctx}").fetchone()
    con.execute(
        """
        INSERT INTO collection_chunks
            (source_id, chunk_index, first_context_id, n_contexts, n_tokens, n_activations, resume_state)
        VALUES (?, ?, ?, ?, ?, ?, ?)
        """,
        [
            source_id,
            chunk_index,
            first_context if first_context is not None else -1,
            contexts.num_rows,
            n_tokens,
            activations.num_rows,
            json.dumps(resume_state, default=str),
        ],
    )


def finalize_source(con: duckdb.DuckDBPyConnection, source_id: int) -> None:
    """Move staged rows into the sorted `activations` table, rebuild the derived tables, mark the source ready.

    Idempotent; after more chunks it re-sorts the source's rows so they stay one ordered run.
    Run it inside `store.writing()`.
    """
    (n_staged,) = con.execute("SELECT count(*) FROM activations_staging WHERE source_id = ?", [source_id]).fetchone()
    (has_rows,) = con.execute(
        "SELECT count(*) > 0 FROM (SELECT 1 FROM activations WHERE source_id = ? LIMIT 1)", [source_id]
    ).fetchone()
    if n_staged and not has_rows:
        con.execute(
            """
            INSERT INTO activations
            SELECT source_id, feature, context_id, pos, value FROM activations_staging
            WHERE source_id = ? ORDER BY feature, context_id, pos
            """,
            [source_id],
        )
    elif n_staged:
        con.execute(
            """
            CREATE OR REPLACE TEMP TABLE _merged AS
            SELECT source_id, feature, context_id, pos, value FROM activations WHERE source_id = $1
            UNION ALL
            SELECT source_id, feature, context_id, pos, value FROM activations_staging WHERE source_id = $1
            """,
            [source_id],
        )
        con.execute("DELETE FROM activations WHERE source_id = ?", [source_id])
        con.execute("INSERT INTO activations SELECT * FROM _merged ORDER BY feature, context_id, pos")
        con.execute("DROP TABLE _merged")
    con.execute("DELETE FROM activations_staging WHERE source_id = ?", [source_id])
    _build_token_tables(con, source_id)
    _build_feature_tables(con, source_id)
    con.execute("UPDATE sources SET status = 'ready' WHERE source_id = ?", [source_id])


def group_maxima(starts: np.ndarray, pos: np.ndarray, value: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(max value, position of the max, row count) of each run of rows beginning at `starts`.

    Rows are sorted by position inside each run; ties on the max go to the first position.
    """
    if len(starts) == 0:
        return value[:0], pos[:0], np.zeros(0, dtype=np.int64)
    counts = np.diff(np.r_[starts, len(value)])
    maxima = np.maximum.reduceat(value, starts)
    at_max = np.flatnonzero(value == np.repeat(maxima, counts))
    run_of = np.searchsorted(starts, at_max, side="right") - 1
    first = np.flatnonzero(np.r_[True, run_of[1:] != run_of[:-1]])
    return maxima, pos[at_max[first]], counts


def _feature_ranges(features: np.ndarray, counts: np.ndarray, max_rows: int) -> list[tuple[int, int]]:
    """Consecutive feature ranges [lo, hi] of at most max_rows rows each (a single bigger feature stands alone)."""
    ranges: list[list[int]] = []
    rows = 0
    for f, n in zip(features.tolist(), counts.tolist()):
        if ranges and rows + n <= max_rows:
            ranges[-1][1] = f
            rows += n
        else:
            ranges.append([f, f])
            rows = n
    return [(lo, hi) for lo, hi in ranges]


def _build_feature_tables(con: duckdb.DuckDBPyConnection, source_id: int) -> None:
    """feature_context_max and feature_stats, computed in NumPy over feature ranges of the sorted table.

    A hash aggregate with one group per (feature, context) is ~20x slower than reducing runs of sorted rows.
    """
    con.execute("DELETE FROM feature_context_max WHERE source_id = ?", [source_id])
    con.execute("DELETE FROM feature_stats WHERE source_id = ?", [source_id])
    total_tokens = max(source_token_count(con, source_id), 1)
    per_feature = con.execute(
        "SELECT feature, count(*) AS n FROM activations WHERE source_id = ? GROUP BY feature ORDER BY feature", [source_id]
    ).fetchnumpy()
    for lo, hi in _feature_ranges(per_feature["feature"], per_feature["n"], FCM_BATCH_ROWS):
        r = con.execute(
            """
            SELECT feature, context_id, pos, value FROM activations
            WHERE source_id = ?::INTEGER AND feature BETWEEN ?::INTEGER AND ?::INTEGER
            """,
            [source_id, lo, hi],
        ).fetchnumpy()
        f, c, p, v = (np.asarray(r[k]) for k in ("feature", "context_id", "pos", "value"))
        if len(f) > 1 and not _sorted_rows(f, c, p):
            order = np.lexsort((p, c, f))
            f, c, p, v = f[order], c[order], p[order], v[order]
        starts = np.flatnonzero(np.r_[True, (f[1:] != f[:-1]) | (c[1:] != c[:-1])])
        maxima, max_pos, counts = group_maxima(starts, p, v)
        context_max = pa.table(
            {
                "feature": f[starts].astype(np.int32),
                "context_id": c[starts].astype(np.int64),
                "max_value": maxima.astype(np.float32),
                "max_pos": max_pos.astype(np.int16),
                "n_active": counts.astype(np.int16),
            }
        )
        stats = _stats_table(f, v, f[starts], maxima, total_tokens)
        with _Registered(con, context_max) as fcm, _Registered(con, stats) as fs:
            con.execute(
                f"INSERT INTO feature_context_max SELECT ?, feature, context_id, max_value, max_pos, n_active FROM {fcm}",
                [source_id],
            )
            con.execute(f"INSERT INTO feature_stats SELECT ?, * FROM {fs}", [source_id])


def _stats_table(f: np.ndarray, v: np.ndarray, context_feature: np.ndarray, context_max: np.ndarray, total_tokens: int) -> pa.Table:
    """One feature_stats row per feature present in rows f, v (sorted by feature) and their per-context maxima."""
    starts = np.flatnonzero(np.r_[True, f[1:] != f[:-1]])
    n_tokens = np.diff(np.r_[starts, len(f)])
    value = v.astype(np.float64)
    high = np.maximum.reduceat(value, starts)
    low = np.minimum(np.minimum.reduceat(value, starts), 0.0)
    index = np.repeat(np.arange(len(starts)), n_tokens)
    width = np.where(high > low, (high - low) / N_HIST_BINS, 1.0)
    bins = np.clip(((value - low[index]) / width[index]).astype(np.int64), 0, N_HIST_BINS - 1)
    hist = np.bincount(index * N_HIST_BINS + bins, minlength=len(starts) * N_HIST_BINS)
    edges = low[:, None] + width[:, None] * np.arange(N_HIST_BINS + 1)
    edges[:, -1] = np.where(high > low, high, edges[:, -1])

    # quantiles of the per-context maxima, linear interpolation as DuckDB's quantile_cont
    c_starts = np.flatnonzero(np.r_[True, context_feature[1:] != context_feature[:-1]])
    n_contexts = np.diff(np.r_[c_starts, len(context_feature)])
    group = np.repeat(np.arange(len(c_starts), dtype=np.uint16 if len(c_starts) < 2**16 else np.int64), n_contexts)
    by_value = np.argsort(context_max)  # then a stable (radix, for uint16) sort by feature: lexsort is much slower
    xs = context_max[by_value[np.argsort(group[by_value], kind="stable")]].astype(np.float64)
    h = (n_contexts - 1)[:, None] * np.linspace(0.0, 1.0, N_QUANTILE_EDGES)
    below = np.floor(h).astype(np.int64)
    above = np.minimum(below + 1, (n_contexts - 1)[:, None])
    x_below, x_above = xs[c_starts[:, None] + below], xs[c_starts[:, None] + above]
    quantiles = x_below + (h - below) * (x_above - x_below)

    def lists(matrix: np.ndarray, kind) -> pa.Array:
        offsets = np.arange(0, matrix.size + 1, matrix.shape[1], dtype=np.int32)
        return pa.ListArray.from_arrays(pa.array(offsets), pa.array(matrix.ravel(), kind))

    return pa.table(
        {
            "feature": f[starts].astype(np.int32),
            "n_active_tokens": n_tokens.astype(np.int64),
            "n_active_contexts": n_contexts.astype(np.int64),
            "density": n_tokens / total_tokens,
            "max_value": high,
            "mean_value": np.add.reduceat(value, starts) / n_tokens,
            "quantile_edges": lists(quantiles, pa.float64()),
            "hist_edges": lists(edges, pa.float64()),
            "hist_counts": lists(hist.reshape(len(starts), N_HIST_BINS), pa.int64()),
        }
    )


def _sorted_rows(f: np.ndarray, c: np.ndarray, p: np.ndarray) -> bool:
    df, dc, dp = f[1:] - f[:-1], c[1:] - c[:-1], p[1:].astype(np.int32) - p[:-1]
    return bool(np.all((df > 0) | ((df == 0) & ((dc > 0) | ((dc == 0) & (dp > 0))))))


def _build_token_tables(con: duckdb.DuckDBPyConnection, source_id: int) -> None:
    con.execute("DELETE FROM token_stats WHERE source_id = ?", [source_id])
    con.execute("DELETE FROM token_postings WHERE source_id = ?", [source_id])
    con.execute(
        """
        CREATE OR REPLACE TEMP TABLE _token_contexts AS
        SELECT token, context_id, count(*) AS n
        FROM (SELECT unnest(tokens) AS token, context_id FROM contexts WHERE source_id = ?)
        GROUP BY token, context_id
        """,
        [source_id],
    )
    con.execute(
        """
        INSERT INTO token_stats
        SELECT ?, token, sum(n), count(*) FROM _token_contexts GROUP BY token ORDER BY token
        """,
        [source_id],
    )
    # A capped, deterministic (hash-ordered) sample of the contexts holding each token.
    con.execute(
        f"""
        INSERT INTO token_postings
        SELECT ?, token, context_id FROM _token_contexts
        QUALIFY row_number() OVER (PARTITION BY token ORDER BY hash(context_id), context_id) <= {POSTINGS_PER_TOKEN}
        ORDER BY token, context_id
        """,
        [source_id],
    )
    con.execute("DROP TABLE _token_contexts")


def source_token_count(con: duckdb.DuckDBPyConnection, source_id: int) -> int:
    (n,) = con.execute("SELECT coalesce(sum(len(tokens)), 0) FROM contexts WHERE source_id = ?", [source_id]).fetchone()
    return int(n)


def _stats_from_row(row: tuple) -> FeatureStats:
    return FeatureStats(
        *row[:7],
        quantile_edges=list(row[7] or []),
        hist_edges=list(row[8] or []),
        hist_counts=list(row[9] or []),
    )


def feature_stats(con: duckdb.DuckDBPyConnection, source_id: int, feature: int) -> FeatureStats:
    row = con.execute(
        f"SELECT {_STATS_COLUMNS} FROM feature_stats WHERE source_id = ? AND feature = ?", [source_id, feature]
    ).fetchone()
    if row is None:
        raise NotFound(_unknown_feature_message(con, source_id, feature))
    return _stats_from_row(row)


def _unknown_feature_message(con: duckdb.DuckDBPyConnection, source_id: int, feature: int) -> str:
    source = _source_by_id(con, source_id)
    n, lo, hi = con.execute(
        "SELECT count(*), min(feature), max(feature) FROM feature_stats WHERE source_id = ?", [source_id]
    ).fetchone()
    if n == 0:
        state = "has not been finalized" if source.status != "ready" else "has no activations"
        return f"source {source.name!r} {state}; no feature statistics exist yet"
    width = f" (width {source.width})" if source.width else ""
    return (
        f"feature {feature} has no activations in source {source.name!r}{width}; "
        f"{n} features fire, numbered {lo}..{hi}: list them with `autointerp features`"
    )


def list_feature_stats(
    con: duckdb.DuckDBPyConnection,
    source_id: int,
    *,
    limit: int | None = None,
    offset: int = 0,
    order_by: str = "feature",
) -> list[FeatureStats]:
    """Stats of the features that fire; order_by is a column name, '-' in front for descending."""
    column = order_by.lstrip("-")
    if column not in _STATS_ORDER:
        raise AutointerpError(f"cannot order features by {order_by!r}; choose one of {sorted(_STATS_ORDER)} (prefix - for descending)")
    direction = "DESC" if order_by.startswith("-") else "ASC"
    rows = con.execute(
        f"""
        SELECT {_STATS_COLUMNS} FROM feature_stats WHERE source_id = ?
        ORDER BY {column} {direction}, feature LIMIT ? OFFSET ?
        """,
        [source_id, limit, offset],
    ).fetchall()
    return [_stats_from_row(r) for r in rows]


def select_features(
    con: duckdb.DuckDBPyConnection, source_id: int, n: int, seed: int, min_active_contexts: int, min_silent_contexts: int = 0
) -> list[int]:
    """n features active in >= min_active_contexts contexts and silent in >= min_silent_contexts (a feature
    firing almost everywhere leaves no random negatives to score it on), one from each of n equal-size
    density strata.

    Deterministic for a seed; returns fewer (all eligible ones) when fewer exist. Sorted by feature.
    """
    rows = con.execute(
        """
        SELECT feature FROM feature_stats
        WHERE source_id = $1 AND n_active_contexts >= $2
          AND n_active_contexts <= (SELECT count(*) FROM contexts WHERE source_id = $1) - $3
        ORDER BY density, feature
        """,
        [source_id, min_active_contexts, min_silent_contexts],
    ).fetchall()
    eligible = [r[0] for r in rows]
    if n <= 0 or not eligible:
        return []
    if n >= len(eligible):
        return sorted(eligible)
    rng = random.Random(seed)
    chosen = []
    for i in range(n):
        lo, hi = (i * len(eligible)) // n, ((i + 1) * len(eligible)) // n
        chosen.append(eligible[rng.randrange(lo, hi)])
    return sorted(chosen)
