"""SQL of the benchmarks: what a benchmark run's LLM calls consumed, read from the ledger (`llm_calls`)."""

from __future__ import annotations

from dataclasses import dataclass

import duckdb


@dataclass
class StageUsage:
    """One run's calls of one stage. `cost_usd` prices cache hits at what the original answer cost, so a rerun
    answered from the cache reports the same figure; `new_cost_usd` is what this run actually spent."""

    stage: str
    n_calls: int
    n_cached: int
    n_errors: int
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    new_cost_usd: float


def run_usage(con: duckdb.DuckDBPyConnection, run_id: str) -> dict[str, StageUsage]:
    rows = con.execute(
        """
        WITH original AS (
            SELECT cache_key, arg_min(cost_usd, call_id) AS cost_usd
            FROM llm_calls WHERE error IS NULL AND NOT coalesce(cached, false)
            GROUP BY cache_key
        )
        SELECT coalesce(c.stage, '?'), count(*),
               count(*) FILTER (WHERE coalesce(c.cached, false)),
               count(*) FILTER (WHERE c.error IS NOT NULL),
               coalesce(sum(c.prompt_tokens), 0), coalesce(sum(c.completion_tokens), 0),
               coalesce(sum(CASE WHEN coalesce(c.cached, false) THEN coalesce(o.cost_usd, 0) ELSE c.cost_usd END), 0),
               coalesce(sum(CASE WHEN coalesce(c.cached, false) THEN 0 ELSE c.cost_usd END), 0)
        FROM llm_calls c LEFT JOIN original o USING (cache_key)
        WHERE c.run_id = ?
        GROUP BY 1 ORDER BY 1
        """,
        [run_id],
    ).fetchall()
    return {r[0]: StageUsage(*r[:4], int(r[4]), int(r[5]), float(r[6]), float(r[7])) for r in rows}


@dataclass
class LabelCounts:
    """For the chaos benchmark: labels stored per feature (features without one absent), features found too
    sparse to label, and answers kept in the ledger (successful calls that were not cache hits)."""

    labels: dict[int, int]
    sparse: set[int]
    answers_kept: int


def label_counts(con: duckdb.DuckDBPyConnection, source: str, features: list[int]) -> LabelCounts:
    wanted = [source, features]
    labels = con.execute(
        "SELECT e.feature, count(*) FROM explanations e JOIN sources s USING (source_id) "
        "WHERE s.name = ? AND e.feature IN (SELECT unnest(?::INTEGER[])) GROUP BY e.feature",
        wanted,
    ).fetchall()
    sparse = con.execute(
        "SELECT DISTINCT j.feature FROM feature_jobs j JOIN sources s USING (source_id) "
        "WHERE s.name = ? AND j.feature IN (SELECT unnest(?::INTEGER[])) AND j.status = 'skipped_sparse'",
        wanted,
    ).fetchall()
    (kept,) = con.execute("SELECT count(*) FROM llm_calls WHERE error IS NULL AND NOT coalesce(cached, false)").fetchone()
    return LabelCounts({int(f): int(n) for f, n in labels}, {int(f) for (f,) in sparse}, int(kept))
