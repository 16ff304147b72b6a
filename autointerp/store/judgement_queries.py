"""SQL of per-item judgements (`score_items`): written with a label's scores, read to recompute metrics."""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from autointerp.records import ItemJudgement
from autointerp.store.bulk import insert_rows

_COLUMNS = (
    "scorer", "item", "context_id", "item_group", "kind", "quantile", "truth", "prediction", "probability",
    "true_activations", "predicted_activations",
)
_FIELDS = (
    "scorer", "item", "context_id", "group", "kind", "quantile", "truth", "prediction", "probability",
    "true_activations", "predicted_activations",
)


def insert_items(
    con: duckdb.DuckDBPyConnection, judged: Sequence[tuple[int, str, Sequence[ItemJudgement], str | None]]
) -> None:
    """The judged items of several explanations: (explanation_id, split, items, run_id) each, rows in that order."""
    insert_rows(
        con,
        "score_items",
        ("explanation_id", "split", "run_id", *_COLUMNS),
        [
            [explanation_id, split, run_id, *(getattr(i, f) for f in _FIELDS)]
            for explanation_id, split, items, run_id in judged
            for i in items
        ],
    )


def items_of(
    con: duckdb.DuckDBPyConnection, explanation_id: int, scorer: str | None, split: str
) -> list[ItemJudgement]:
    rows = con.execute(
        f"""
        SELECT {', '.join(_COLUMNS)} FROM score_items
        WHERE explanation_id = $id AND split = $split AND ($scorer IS NULL OR scorer = $scorer)
        ORDER BY scorer, item
        """,
        {"id": int(explanation_id), "split": split, "scorer": scorer},
    ).fetchall()
    return [ItemJudgement(**dict(zip(_FIELDS, row))) for row in rows]
