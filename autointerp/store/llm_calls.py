"""Reads and writes of the LLM call ledger (`llm_calls`): one row per call, cache hits included."""

from __future__ import annotations

import itertools
import json
import secrets
from dataclasses import dataclass, field
from typing import Any

import duckdb

from autointerp.store.bulk import insert_rows


_UID_PREFIX = secrets.token_hex(8)  # this process's; a counter numbers its calls (no random draw per call)
_uid_counter = itertools.count()


def new_call_uid() -> str:
    return f"{_UID_PREFIX}{next(_uid_counter):016x}"


BODIES = ("request", "response")  # the JSON columns


@dataclass
class LLMCall:
    """One ledger row. `request` and `response` are the JSON bodies sent and received, never headers or keys."""

    cache_key: str
    provider: str
    model: str
    stage: str | None
    run_id: str | None
    request: dict[str, Any]
    response: dict[str, Any] | None
    prompt_tokens: int
    completion_tokens: int
    cost_usd: float
    latency_ms: float
    error: str | None = None
    cached: bool = False
    attempts: int = 1
    endpoint_host: str | None = None
    priced: bool = True
    call_uid: str = field(default_factory=new_call_uid)  # tells a row folded twice from two calls
    batch_key: str | None = None  # the provider batch that answered it (llm_batches), None when streamed

    def encoded(self, name: str) -> str | None:
        """The JSON text of `request` or `response`, made once (the journal line and the insert both need it)."""
        cache = self.__dict__.setdefault("_encoded", {})
        if name not in cache:
            value = getattr(self, name)
            cache[name] = None if value is None else value.text if hasattr(value, "text") else json.dumps(value)
        return cache[name]


_COLUMNS = (
    "cache_key, provider, model, stage, run_id, request, response, prompt_tokens, completion_tokens, "
    "cost_usd, latency_ms, error, cached, attempts, endpoint_host, priced, call_uid, batch_key"
)


def insert_calls(con: duckdb.DuckDBPyConnection, calls: list[LLMCall], skip_known: bool = False) -> None:
    """One INSERT for all the calls. skip_known: leave out rows whose call_uid is already stored (folding a
    journal that may hold them)."""
    names = [name.strip() for name in _COLUMNS.split(",")]
    rows = [[c.encoded(n) if n in BODIES else getattr(c, n) for n in names] for c in calls]
    where = (
        "WHERE call_uid NOT IN (SELECT call_uid FROM llm_calls WHERE call_uid IN (SELECT call_uid FROM {rows}))"
        if skip_known
        else ""
    )
    insert_rows(con, "llm_calls", names, rows, where)


def answer_counts(con: duckdb.DuckDBPyConnection, provider: str, model: str) -> dict[str, int]:
    """How many stored answers (successful, not themselves cache hits) each cache key has for one model."""
    rows = con.execute(
        "SELECT cache_key, count(*) FROM llm_calls "
        "WHERE provider = ? AND model = ? AND error IS NULL AND NOT coalesce(cached, false) GROUP BY cache_key",
        [provider, model],
    ).fetchall()
    return dict(rows)


def stored_answers(con: duckdb.DuckDBPyConnection, wanted: list[tuple[str, int]]) -> dict[tuple[str, int], dict[str, Any]]:
    """For each (cache_key, n): the response body of the n-th stored answer (0-based, oldest first)."""
    if not wanted:
        return {}
    keys = sorted({key for key, _ in wanted})
    rows = con.execute(
        """
        SELECT cache_key, n, response FROM (
            SELECT cache_key, response,
                   row_number() OVER (PARTITION BY cache_key ORDER BY call_id) - 1 AS n
            FROM llm_calls
            WHERE cache_key IN (SELECT unnest(?::VARCHAR[])) AND error IS NULL AND NOT coalesce(cached, false)
        )
        """,
        [keys],
    ).fetchall()
    want = set(wanted)
    return {(key, n): json.loads(response) for key, n, response in rows if (key, n) in want}


def list_calls(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[dict[str, Any]]:
    """Every ledger row (optionally of one run), oldest first, as dicts with JSON columns decoded."""
    where, params = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
    cur = con.execute(f"SELECT call_id, created_at, {_COLUMNS} FROM llm_calls {where} ORDER BY call_id", params)
    names = [d[0] for d in cur.description]
    out = []
    for row in cur.fetchall():
        item = dict(zip(names, row))
        for col in ("request", "response"):
            if item[col] is not None:
                item[col] = json.loads(item[col])
        out.append(item)
    return out


def spend(con: duckdb.DuckDBPyConnection, run_id: str | None = None) -> list[dict[str, Any]]:
    """Spend grouped by run, model, stage and whether a provider batch answered: calls, cache hits, errors, billed
    tokens (cache hits excluded), cost, and whether every call had a price."""
    where, params = ("WHERE run_id = ?", [run_id]) if run_id is not None else ("", [])
    cur = con.execute(
        f"""
        SELECT run_id AS run, provider || ':' || model AS model, stage, batch_key IS NOT NULL AS batched,
               count(*) AS calls,
               count(*) FILTER (WHERE cached) AS cached,
               count(*) FILTER (WHERE error IS NOT NULL) AS errors,
               coalesce(sum(prompt_tokens) FILTER (WHERE NOT cached), 0)::BIGINT AS prompt_tokens,
               coalesce(sum(completion_tokens) FILTER (WHERE NOT cached), 0)::BIGINT AS completion_tokens,
               coalesce(sum(cost_usd), 0)::DOUBLE AS cost_usd,
               bool_and(coalesce(priced, true)) AS priced,
               provider, model AS model_name
        FROM llm_calls {where}
        GROUP BY run_id, provider, model, stage, batched
        ORDER BY run NULLS FIRST, model, stage NULLS FIRST, batched
        """,
        params,
    )
    names = [d[0] for d in cur.description]
    return [dict(zip(names, row)) for row in cur.fetchall()]
