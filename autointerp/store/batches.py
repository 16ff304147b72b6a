"""All SQL of provider batch jobs: `llm_batches`, their request lines, and per-feature stage state in `feature_jobs`."""

from __future__ import annotations

import json
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb
import pyarrow as pa

# llm_batches.status values of a batch whose lines may still be answered
OPEN_STATUSES = ("creating", "open")


@dataclass
class BatchRow:
    batch_key: str
    job_key: str
    run_id: str | None
    provider: str
    model: str
    endpoint: str
    provider_batch_id: str | None
    input_file_id: str | None
    status: str
    provider_status: str | None
    n_requests: int
    n_succeeded: int
    n_errored: int
    n_unfinished: int
    bytes: int | None
    error: str | None
    created_at: datetime | None
    updated_at: datetime | None
    ended_at: datetime | None


@dataclass
class BatchLine:
    custom_id: str
    cache_key: str
    occurrence: int
    stage: str | None
    request: dict[str, Any]


_BATCH_COLUMNS = (
    "batch_key, job_key, run_id, provider, model, endpoint, provider_batch_id, input_file_id, status, provider_status, "
    "n_requests, n_succeeded, n_errored, n_unfinished, bytes, error, created_at, updated_at, ended_at"
)


def record_intent(
    con: duckdb.DuckDBPyConnection,
    batch: BatchRow,
    lines: list[BatchLine],
) -> None:
    """The batch and its lines, status 'creating', before anything is sent to the provider."""
    con.execute(
        "INSERT INTO llm_batches (batch_key, job_key, run_id, provider, model, endpoint, status, n_requests, bytes) "
        "VALUES (?, ?, ?, ?, ?, ?, 'creating', ?, ?)",
        [batch.batch_key, batch.job_key, batch.run_id, batch.provider, batch.model, batch.endpoint, len(lines), batch.bytes],
    )
    table = pa.table(
        {
            "custom_id": [line.custom_id for line in lines],
            "batch_key": [batch.batch_key] * len(lines),
            "cache_key": [line.cache_key for line in lines],
            "occurrence": pa.array([line.occurrence for line in lines], pa.int32()),
            "stage": [line.stage for line in lines],
            "request": [json.dumps(line.request) for line in lines],
        }
    )
    con.register("_batch_lines", table)
    try:
        con.execute(
            "INSERT INTO llm_batch_requests (custom_id, batch_key, cache_key, occurrence, stage, request, state) "
            "SELECT custom_id, batch_key, cache_key, occurrence, stage, request, 'submitted' FROM _batch_lines"
        )
    finally:
        con.unregister("_batch_lines")


def update_batch(con: duckdb.DuckDBPyConnection, batch_key: str, *, ended: bool = False, **fields: Any) -> None:
    """Set the given llm_batches columns and touch updated_at; `ended` stamps ended_at."""
    sets = [f"{name} = ?" for name in fields] + ["updated_at = current_timestamp"]
    if ended:
        sets.append("ended_at = current_timestamp")
    con.execute(f"UPDATE llm_batches SET {', '.join(sets)} WHERE batch_key = ?", [*fields.values(), batch_key])


def batches(
    con: duckdb.DuckDBPyConnection, job_key: str | None = None, run_id: str | None = None, statuses: tuple[str, ...] = ()
) -> list[BatchRow]:
    where, params = ["true"], []
    if job_key is not None:
        where.append("job_key = ?")
        params.append(job_key)
    if run_id is not None:
        where.append("run_id = ?")
        params.append(run_id)
    if statuses:
        where.append("status IN (SELECT unnest(?::VARCHAR[]))")
        params.append(list(statuses))
    rows = con.execute(
        f"SELECT {_BATCH_COLUMNS} FROM llm_batches WHERE {' AND '.join(where)} ORDER BY created_at, batch_key", params
    ).fetchall()
    return [BatchRow(*row) for row in rows]


def batch_lines(con: duckdb.DuckDBPyConnection, batch_key: str, state: str | None = None) -> list[BatchLine]:
    where, params = ("AND state = ?", [batch_key, state]) if state else ("", [batch_key])
    rows = con.execute(
        f"SELECT custom_id, cache_key, occurrence, stage, request FROM llm_batch_requests WHERE batch_key = ? {where} "
        "ORDER BY custom_id",
        params,
    ).fetchall()
    return [BatchLine(c, k, int(o), s, json.loads(r)) for c, k, o, s, r in rows]


def set_line_states(con: duckdb.DuckDBPyConnection, states: dict[str, tuple[str, str | None]]) -> None:
    """custom_id -> (state, error)."""
    if not states:
        return
    table = pa.table(
        {
            "custom_id": list(states),
            "state": [s for s, _ in states.values()],
            "error": [e for _, e in states.values()],
        }
    )
    con.register("_line_states", table)
    try:
        con.execute(
            "UPDATE llm_batch_requests SET state = s.state, error = s.error FROM _line_states s "
            "WHERE llm_batch_requests.custom_id = s.custom_id"
        )
    finally:
        con.unregister("_line_states")


def slot_history(con: duckdb.DuckDBPyConnection, job_key: str) -> dict[tuple[str, int], tuple[int, bool]]:
    """Per (cache_key, occurrence) of the job's batches: (failed submissions: errored or unfinished, in an open batch now)."""
    rows = con.execute(
        """
        SELECT r.cache_key, r.occurrence,
               count(*) FILTER (WHERE r.state IN ('errored', 'unfinished'))::INTEGER,
               bool_or(r.state = 'submitted' AND b.status IN ('creating', 'open'))
        FROM llm_batch_requests r JOIN llm_batches b USING (batch_key)
        WHERE b.job_key = ?
        GROUP BY r.cache_key, r.occurrence
        """,
        [job_key],
    ).fetchall()
    return {(k, int(o)): (int(n), bool(open_)) for k, o, n, open_ in rows}


def last_line_errors(con: duckdb.DuckDBPyConnection, job_key: str) -> dict[tuple[str, int], str]:
    rows = con.execute(
        """
        SELECT r.cache_key, r.occurrence, last(r.error ORDER BY b.created_at)
        FROM llm_batch_requests r JOIN llm_batches b USING (batch_key)
        WHERE b.job_key = ? AND r.error IS NOT NULL
        GROUP BY r.cache_key, r.occurrence
        """,
        [job_key],
    ).fetchall()
    return {(k, int(o)): e for k, o, e in rows}


# --- per-feature stage state -----------------------------------------------------------------------------


def set_stage(
    con: duckdb.DuckDBPyConnection,
    config_hash: str,
    source_id: int,
    features: list[int],
    stage: str,
    states: list[dict[str, Any] | None],
    run_id: str,
) -> None:
    """Mark features in progress at `stage`, each with its state JSON."""
    if not features:
        return
    table = pa.table(
        {
            "feature": pa.array(features, pa.int32()),
            "state": [None if s is None else json.dumps(s) for s in states],
        }
    )
    con.register("_stages", table)
    try:
        con.execute(
            """
            INSERT OR REPLACE INTO feature_jobs (config_hash, source_id, feature, status, run_id, stage, state, updated_at)
            SELECT ?, ?, feature, 'in_progress', ?, ?, state, current_timestamp FROM _stages
            """,
            [config_hash, source_id, run_id, stage],
        )
    finally:
        con.unregister("_stages")


def stage_states(con: duckdb.DuckDBPyConnection, config_hash: str, source_id: int) -> dict[int, tuple[str, dict[str, Any] | None]]:
    """feature -> (stage, state) for the features in progress."""
    rows = con.execute(
        "SELECT feature, stage, state FROM feature_jobs WHERE config_hash = ? AND source_id = ? AND status = 'in_progress'",
        [config_hash, source_id],
    ).fetchall()
    return {int(f): (s, None if j is None else json.loads(j)) for f, s, j in rows}


def batch_run(con: duckdb.DuckDBPyConnection, config_hash: str) -> str | None:
    """The unfinished batch run of this job configuration, if any (a rerun of the command continues it)."""
    row = con.execute(
        "SELECT run_id FROM runs WHERE kind = 'batch' AND config_hash = ? AND ended_at IS NULL "
        "ORDER BY started_at DESC LIMIT 1",
        [config_hash],
    ).fetchone()
    return None if row is None else row[0]
