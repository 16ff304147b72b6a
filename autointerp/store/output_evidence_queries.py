"""SQL for output evidence: per feature and method, the promoted and suppressed tokens and their provenance."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Sequence
from typing import Any

import duckdb
import pyarrow as pa

from autointerp.records import OutputEffects, OutputEvidence, TokenEffect
from autointerp.store.activations import _Registered
from autointerp.store.catalog_queries import _id_list

LOGIT_LENS = "logit_lens"
AMPLIFICATION = "amplification"
METHODS = (LOGIT_LENS, AMPLIFICATION)
_READ_BATCH = 10_000  # features per IN list


def save_output_effects(
    con: duckdb.DuckDBPyConnection,
    source_id: int,
    method: str,
    features: Sequence[int],
    effects: Sequence[OutputEffects],
    provenance: Sequence[dict[str, Any]],
) -> None:
    """Store (or replace) one method's effects for `features`, one effects and provenance per feature."""
    if method not in METHODS:
        raise ValueError(f"unknown output evidence method {method!r}")
    tokens = lambda effs: json.dumps([dataclasses.asdict(e) for e in effs], ensure_ascii=False)  # noqa: E731
    table = pa.table(
        {
            "feature": pa.array([int(f) for f in features], pa.int32()),
            "promoted": [tokens(e.promoted) for e in effects],
            "suppressed": [tokens(e.suppressed) for e in effects],
            "provenance": [json.dumps(p, sort_keys=True, default=str) for p in provenance],
        }
    )
    with _Registered(con, table) as name:
        con.execute(
            f"""
            INSERT OR REPLACE INTO output_evidence (source_id, feature, method, promoted, suppressed, provenance, created_at)
            SELECT $source_id, feature, $method, promoted::JSON, suppressed::JSON, provenance::JSON, current_timestamp
            FROM {name}
            """,
            {"source_id": source_id, "method": method},
        )


def _effects(text: str) -> list[TokenEffect]:
    return [TokenEffect(**e) for e in json.loads(text)]


def load_output_evidence(
    con: duckdb.DuckDBPyConnection, source_id: int, source: str, features: Sequence[int]
) -> dict[int, OutputEvidence]:
    """The stored evidence of those of `features` that have any, by feature."""
    found: dict[int, OutputEvidence] = {}
    wanted = sorted({int(f) for f in features})
    for start in range(0, len(wanted), _READ_BATCH):
        id_list, params = _id_list(wanted[start : start + _READ_BATCH], "f")
        rows = con.execute(
            f"""
            SELECT feature, method, promoted, suppressed, provenance FROM output_evidence
            WHERE source_id = $source_id AND feature IN ({id_list})
            """,
            {"source_id": source_id, **params},
        ).fetchall()
        for feature, method, promoted, suppressed, provenance in rows:
            evidence = found.setdefault(feature, OutputEvidence(source, feature))
            setattr(evidence, method, OutputEffects(_effects(promoted), _effects(suppressed)))
            evidence.provenance[method] = json.loads(provenance)
    return found


def features_with(con: duckdb.DuckDBPyConnection, source_id: int, method: str) -> set[int]:
    """The features of a source that have `method`'s evidence stored."""
    rows = con.execute(
        "SELECT feature FROM output_evidence WHERE source_id = ? AND method = ?", [source_id, method]
    ).fetchall()
    return {r[0] for r in rows}


def feature_maxima(con: duckdb.DuckDBPyConnection, source_id: int, features: Sequence[int] | None) -> dict[int, float]:
    """Each firing feature's largest activation (all of the source's firing features when `features` is None)."""
    if features is None:
        rows = con.execute("SELECT feature, max_value FROM feature_stats WHERE source_id = ?", [source_id]).fetchall()
        return dict(rows)
    found: dict[int, float] = {}
    wanted = sorted({int(f) for f in features})
    for start in range(0, len(wanted), _READ_BATCH):
        id_list, params = _id_list(wanted[start : start + _READ_BATCH], "f")
        rows = con.execute(
            f"SELECT feature, max_value FROM feature_stats WHERE source_id = $source_id AND feature IN ({id_list})",
            {"source_id": source_id, **params},
        ).fetchall()
        found.update(rows)
    return found
