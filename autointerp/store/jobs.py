"""All SQL of labeling jobs: the `runs` rows, per-feature job state (`feature_jobs`) and `failures`."""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import duckdb

from autointerp.errors import NotFound

# feature_jobs statuses a rerun under the same configuration does not repeat
FINISHED_STATUSES = ("done", "skipped_sparse")


@dataclass
class Run:
    run_id: str
    kind: str
    status: str
    config_hash: str | None
    config: dict[str, Any] | None
    n_total: int
    n_done: int
    n_failed: int
    n_skipped: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    started_at: datetime | None
    updated_at: datetime | None
    ended_at: datetime | None


@dataclass
class Failure:
    run_id: str | None
    feature: int | None
    stage: str
    error: str
    raw_output: str | None


_RUN_COLUMNS = (
    "run_id, kind, status, config_hash, config, n_total, n_done, n_failed, n_skipped, "
    "prompt_tokens, completion_tokens, cost_usd, started_at, updated_at, ended_at"
)


def _run(row: tuple) -> Run:
    values = list(row)
    values[4] = json.loads(values[4]) if values[4] else None
    return Run(*values)


def create_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    kind: str,
    config: dict[str, Any],
    config_hash: str | None,
    n_total: int,
) -> None:
    con.execute(
        "INSERT INTO runs (run_id, kind, config, config_hash, status, n_total) VALUES (?, ?, ?, ?, 'running', ?)",
        [run_id, kind, json.dumps(config, sort_keys=True, default=str), config_hash, n_total],
    )


def update_run(
    con: duckdb.DuckDBPyConnection,
    run_id: str,
    *,
    status: str | None = None,
    n_done: int | None = None,
    n_failed: int | None = None,
    n_skipped: int | None = None,
    prompt_tokens: int | None = None,
    completion_tokens: int | None = None,
    cost_usd: float | None = None,
    ended: bool = False,
) -> None:
    """Set the given fields (None leaves a field as it is) and touch updated_at; `ended` stamps ended_at."""
    fields = {
        "status": status,
        "n_done": n_done,
        "n_failed": n_failed,
        "n_skipped": n_skipped,
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "cost_usd": cost_usd,
    }
    sets = [f"{name} = ?" for name, value in fields.items() if value is not None]
    params = [value for value in fields.values() if value is not None]
    sets.append("updated_at = current_timestamp")
    if ended:
        sets.append("ended_at = current_timestamp")
    con.execute(f"UPDATE runs SET {', '.join(sets)} WHERE run_id = ?", [*params, run_id])


def get_run(con: duckdb.DuckDBPyConnection, run_id: str) -> Run | None:
    row = con.execute(f"SELECT {_RUN_COLUMNS} FROM runs WHERE run_id = ?", [run_id]).fetchone()
    return None if row is None else _run(row)


class RunNotFound(NotFound):
    def __init__(self, run_id: str):
        super().__init__(f"no run {run_id!r} in this store; `autointerp runs` lists the runs it holds")


def require_run(con: duckdb.DuckDBPyConnection, run_id: str) -> Run:
    run = get_run(con, run_id)
    if run is None:
        raise RunNotFound(run_id)
    return run


def list_runs(con: duckdb.DuckDBPyConnection, limit: int = 20, kind: str | None = None) -> list[Run]:
    where, params = ("WHERE kind = ?", [kind]) if kind else ("", [])
    rows = con.execute(
        f"SELECT {_RUN_COLUMNS} FROM runs {where} ORDER BY started_at DESC, run_id DESC LIMIT ?", [*params, limit]
    ).fetchall()
    return [_run(r) for r in rows]


def feature_statuses(con: duckdb.DuckDBPyConnection, config_hash: str, source_id: int) -> dict[int, str]:
    rows = con.execute(
        "SELECT feature, status FROM feature_jobs WHERE config_hash = ? AND source_id = ?", [config_hash, source_id]
    ).fetchall()
    return {int(f): s for f, s in rows}


def feature_explanation_ids(con: duckdb.DuckDBPyConnection, config_hash: str, source_id: int) -> dict[int, int]:
    rows = con.execute(
        "SELECT feature, explanation_id FROM feature_jobs "
        "WHERE config_hash = ? AND source_id = ? AND status = 'done' AND explanation_id IS NOT NULL",
        [config_hash, source_id],
    ).fetchall()
    return {int(f): int(e) for f, e in rows}


@dataclass
class FeatureMark:
    """A feature's row in `feature_jobs`: where a job with this configuration left it."""

    config_hash: str
    source_id: int
    feature: int
    status: str
    run_id: str
    explanation_id: int | None = None
    error: str | None = None


def mark_feature(
    con: duckdb.DuckDBPyConnection,
    config_hash: str,
    source_id: int,
    feature: int,
    status: str,
    *,
    run_id: str,
    explanation_id: int | None = None,
    error: str | None = None,
) -> None:
    mark_features(con, [FeatureMark(config_hash, source_id, feature, status, run_id, explanation_id, error)])


def mark_features(con: duckdb.DuckDBPyConnection, marks: Sequence[FeatureMark]) -> None:
    """Set many features' rows in one statement (a feature marked twice keeps its last mark)."""
    latest = list({(m.config_hash, m.source_id, m.feature): m for m in marks}.values())
    if not latest:
        return
    con.execute(
        """
        INSERT OR REPLACE INTO feature_jobs (config_hash, source_id, feature, status, explanation_id, run_id, error, updated_at)
        SELECT *, current_timestamp FROM (
            SELECT unnest(?::VARCHAR[]), unnest(?::INTEGER[]), unnest(?::INTEGER[]), unnest(?::VARCHAR[]),
                   unnest(?::BIGINT[]), unnest(?::VARCHAR[]), unnest(?::VARCHAR[])
        )
        """,
        [
            [m.config_hash for m in latest], [m.source_id for m in latest], [m.feature for m in latest],
            [m.status for m in latest], [m.explanation_id for m in latest], [m.run_id for m in latest],
            [m.error for m in latest],
        ],
    )


def record_failure(
    con: duckdb.DuckDBPyConnection,
    *,
    run_id: str | None,
    source_id: int | None,
    feature: int | None,
    stage: str,
    error: str,
    raw_output: str | None = None,
) -> None:
    con.execute(
        "INSERT INTO failures (run_id, source_id, feature, stage, error, raw_output) VALUES (?, ?, ?, ?, ?, ?)",
        [run_id, source_id, feature, stage, error, raw_output],
    )


def run_failures(con: duckdb.DuckDBPyConnection, run_id: str) -> list[Failure]:
    rows = con.execute(
        "SELECT run_id, feature, stage, error, raw_output FROM failures WHERE run_id = ? ORDER BY created_at, feature",
        [run_id],
    ).fetchall()
    return [Failure(*r) for r in rows]


def firing_features(con: duckdb.DuckDBPyConnection, source_id: int, features: list[int]) -> set[int]:
    """Those of `features` that fire at all in the source (have statistics)."""
    rows = con.execute(
        "SELECT feature FROM feature_stats WHERE source_id = ? AND feature IN (SELECT unnest(?::INTEGER[]))",
        [source_id, features],
    ).fetchall()
    return {int(f) for (f,) in rows}
