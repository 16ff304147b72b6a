"""Per-item judgements in the store: written with a label's scores (same transaction), and any metric
recomputed from them later without calling the model, the way delphi keeps its judged samples.

    with Store("store.duckdb", read_only=True) as store:
        items = load_judgements(store.con, explanation_id, "detection")
        recompute(store.con, explanation_id, "detection", "f1", subset="random_negatives").value
"""

from __future__ import annotations

from collections.abc import Sequence

import duckdb

from autointerp.records import ItemJudgement, Score
from autointerp.scoring import items as item_metrics
from autointerp.scoring import metrics
from autointerp.store import judgement_queries as q


def write_judgements(
    con: duckdb.DuckDBPyConnection, scored: Sequence[tuple[int, Sequence[Score], str | None]]
) -> int:
    """Store the items behind the scores of several explanations, (explanation_id, scores, run_id) each, in one
    statement: once per explanation, scorer and split (its rows share one list); return how many."""
    judged = []
    for explanation_id, scores, run_id in scored:
        seen: set[tuple[str, str]] = set()
        for s in scores:
            if s.items and (s.scorer, s.split) not in seen:
                seen.add((s.scorer, s.split))
                judged.append((explanation_id, s.split, s.items, run_id))
    q.insert_items(con, judged)
    return sum(len(items) for _, _, items, _ in judged)


def load_judgements(
    con: duckdb.DuckDBPyConnection, explanation_id: int, scorer: str | None = None, split: str = "test"
) -> list[ItemJudgement]:
    return q.items_of(con, explanation_id, scorer, split)


def recompute(
    con: duckdb.DuckDBPyConnection,
    explanation_id: int,
    scorer: str,
    metric: str,
    subset: str = "all",
    *,
    split: str = "test",
    quantile: str | None = None,
    n_resamples: int = metrics.N_RESAMPLES,
    seed: int = metrics.SEED,
) -> item_metrics.MetricValue:
    """A metric (balanced_accuracy, f1, auroc, ev_correlation) with its bootstrap CI from stored items, on a
    subset and optionally one activation quantile ("0", "1", ..., "top"), as the scorer computed it."""
    judged = load_judgements(con, explanation_id, scorer, split)
    chosen = [j for j, m in zip(judged, item_metrics.subset_mask(judged, subset)) if m]
    if quantile is not None:
        chosen = [j for j, m in zip(chosen, item_metrics.quantile_mask(chosen, quantile)) if m]
    return item_metrics.compute(metric, chosen, n_resamples, seed)
