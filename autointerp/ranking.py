"""The one rule for "the best label" of a feature and for when a score may rank at all.

A score ranks only when it is reliable: measured here (not an imported file's claim), on the test split
over all examples, with a value, at least MIN_N parsed items, and at most MAX_UNPARSED_FRACTION of its
answers unparsed. Unreliable scores are still stored and shown, flagged with the reason.

Best label of a feature:
1. the most recently accepted label, when a reviewer accepted one;
2. otherwise, among the unreviewed labels (the rejected or edited ones only when nothing else is left),
   labels are compared on one score they share: the (scorer, metric) that the most of them hold reliably,
   ties broken by PREFERRED order. The highest value wins; labels without that score come after those with
   it, newest first. A label is never compared with another on a score the other lacks.
   Output scores (UNRANKED: what steering along the feature does to the text) never pick the best label
   unless asked for by name: a label states what makes the feature fire, and the input scorers test that
   claim on held-out contexts; the output score tests a different claim (the feature's effect), on
   ~24 neutral prompts at one calibrated strength. Input and output scores are shown side by side and
   search filters on either (`--min-score output:0.05`).

The rule runs in SQL (`autointerp.store.catalog_queries.best_explanation_rows`) so that a whole store is
ranked without loading it; this module holds its parameters, the per-score check and the reason text.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Sequence

MIN_N = 10  # parsed items a score needs before it may rank
MAX_UNPARSED_FRACTION = 0.5  # more unparsed answers than this and the score does not rank
PREFERRED_SCORERS = ("detection", "fuzzing", "simulation", "embedding")
# Each scorer's metrics, most telling first; the first present is its headline.
HEADLINE_METRICS = {
    "detection": ("auroc", "balanced_accuracy"),
    "fuzzing": ("auroc", "balanced_accuracy"),
    "simulation": ("ev_correlation",),
    "embedding": ("auroc",),
    "output": ("delta_cosine", "win_rate", "judge_accuracy"),
}
OUTPUT_SCORERS = ("output",)  # score what the feature does to the model's output, not what makes it fire
UNRANKED = OUTPUT_SCORERS
PREFERRED = tuple(f"{s}.{m}" for s in (*PREFERRED_SCORERS, *OUTPUT_SCORERS) for m in HEADLINE_METRICS[s])


def preference(scorer: str, metric: str) -> tuple[int, str, str]:
    """Sort key of a (scorer, metric): PREFERRED order, then unknown pairs by name."""
    key = f"{scorer}.{metric}"
    return (PREFERRED.index(key) if key in PREFERRED else len(PREFERRED), scorer, metric)


def unreliable_reason(value: float | None, n: int, n_unparsed: int = 0, imported: bool = False) -> str | None:
    """Why a score may not rank labels, or None when it may (mirrored by `catalog_queries._RELIABLE`).
    Only test scores over all examples rank at all; this is about whether the number can be trusted."""
    if imported:
        return "imported: the file's claim, not measured here"
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "no value"
    if n < MIN_N:
        return f"n={n} is below the minimum of {MIN_N}"
    if n_unparsed > MAX_UNPARSED_FRACTION * (n + n_unparsed):
        return f"{n_unparsed} of {n + n_unparsed} answers unparsed"
    return None


def sql_parameters() -> dict[str, Any]:
    """The rule's parameters, bound into the SQL that applies it."""
    return {"min_n": MIN_N, "max_unparsed": MAX_UNPARSED_FRACTION, "preferred": list(PREFERRED), "unranked": list(UNRANKED)}


def headline(
    scores: Sequence[Any], scorer: str | None = None, reliable_only: bool = True, split: str = "test"
) -> Any | None:
    """A label's headline score: its most preferred score over all examples of the split (of one scorer, when
    given), among the reliable ones unless `reliable_only` is False; None if there is none."""
    usable = [
        s for s in scores
        if s.subset == "all" and s.split == split and (scorer is None or s.scorer == scorer)
        and not (reliable_only and s.unreliable)
    ]
    return min(usable, key=lambda s: preference(s.scorer, s.metric), default=None)


def side_by_side(scores: Sequence[Any], reliable_only: bool = False) -> dict[str, Any | None]:
    """A label's input headline (what makes the feature fire) and output headline (what steering along it
    does to the text), each None when the label has none."""
    inputs = [s for s in scores if s.scorer not in OUTPUT_SCORERS]
    outputs = [s for s in scores if s.scorer in OUTPUT_SCORERS]
    return {"input": headline(inputs, reliable_only=reliable_only), "output": headline(outputs, reliable_only=reliable_only)}


@dataclass
class BestReason:
    """Why a label is its feature's best."""

    rule: str  # accepted | score | unranked
    ranked_by: tuple[str, str] | None  # the shared (scorer, metric) compared, when rule is "score"
    value: float | None  # the best label's value on it
    n: int | None
    n_ranked: int  # labels holding a reliable ranked_by score
    n_competing: int  # labels that competed (the accepted ones, else the unreviewed, else the rest)
    text: str


def best_reason(
    tier: int, scorer: str | None, metric: str | None, value: float | None, n: int | None, n_ranked: int, n_competing: int
) -> BestReason:
    """The reason for one row of `best_explanation_rows` (tier 0 accepted, 1 unreviewed, 2 rejected or edited)."""
    if tier == 0:
        return BestReason("accepted", None, None, None, 0, n_competing, "accepted by a reviewer (the latest acceptance)")
    pool = "unreviewed labels" if tier == 1 else "labels, all rejected or edited,"
    if scorer is None or value is None:
        why = "no reliable score" if scorer is None else f"no reliable {scorer} {metric} score"
        text = "the only label" if n_competing == 1 else f"newest of {n_competing} {pool} ({why} to compare them on)"
        if n_competing == 1 and tier == 2:
            text = "the only label (rejected or edited)"
        return BestReason("unranked", (scorer, metric) if scorer else None, None, None, n_ranked, n_competing, text)
    if n_competing == 1:
        text = f"the only label; {scorer} {metric} {value:.3g} (n={n})"
    else:
        text = f"highest {scorer} {metric}: {value:.3g} (n={n}) among {n_ranked} of {n_competing} {pool} holding it"
    return BestReason("score", (scorer, metric), value, n, n_ranked, n_competing, text)
