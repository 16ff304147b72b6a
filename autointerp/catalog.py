"""The feature catalog: label write-back, the best label per feature, label history and human reviews.

Reviews are append-only rows in `reviews`; the latest review of an explanation is its review state.
An edit is stored twice on purpose: a review row (verdict "edit", the old explanation, the edited text and
note) and a new explanation written by `author="human"` whose details hold `edited_from` (the old id) and
which is itself accepted. The edited label therefore has its own history entry, embedding and search
hit, and the old label keeps its scores and provenance.

Best label of a feature: the rule lives in `autointerp.ranking` (accepted first; otherwise labels compared
on a reliable score they share; rejected or edited labels only when nothing else is left). A best label
carries `why_best`, the reason in words and numbers.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from typing import Any, Sequence

import duckdb
import numpy as np

from autointerp import ranking
from autointerp.embeddings import EMBEDDING_MODEL, embed_texts
from autointerp.errors import AutointerpError, NotFound
from autointerp.judgements import write_judgements
from autointerp.ranking import BestReason
from autointerp.records import Explanation, OutputEvidence, Score
from autointerp.store import catalog_queries as q
from autointerp.store.activations import FeatureStats, SourceInfo, feature_stats, get_source
from autointerp.store.jobs import Failure, Run, require_run, run_failures
from autointerp.store.llm_calls import spend
from autointerp.store.output_evidence_queries import load_output_evidence

VERDICTS = ("accept", "reject", "edit")
REVIEW_STATES = ("accepted", "rejected", "edited", "unreviewed")


@dataclass
class NewLabel:
    """A label to store with its scores (and their judged items), provenance and embedding."""

    explanation: Explanation
    scores: list[Score]
    run_id: str | None
    config_hash: str | None
    sampling_config: dict | None
    seed: int | None
    embedding: Sequence[float] | np.ndarray | None = None  # None: computed with the offline MiniLM model


def write_label(
    con: duckdb.DuckDBPyConnection,
    explanation: Explanation,
    scores: list[Score],
    *,
    run_id: str | None,
    config_hash: str | None,
    sampling_config: dict | None,
    seed: int | None,
    embedding: Sequence[float] | np.ndarray | None = None,
) -> int:
    """Store a label with its scores, their per-item judgements and its embedding; return the explanation id.

    Runs inside the caller's transaction (`with store.writing() as con:`): it neither begins nor commits.
    The embedding is computed with the offline MiniLM model unless `embedding` is given.
    """
    return write_labels(con, [NewLabel(explanation, scores, run_id, config_hash, sampling_config, seed, embedding)])[0]


def write_labels(con: duckdb.DuckDBPyConnection, labels: Sequence[NewLabel]) -> list[int]:
    """`write_label` for many labels in one statement per table (a labeling job stores a transaction's labels
    together); the explanation ids, in order, are those one `write_label` call per label would have given.
    Their features' stored best labels (`feature_best`) are recomputed once, for all of them."""
    if not labels:
        return []
    source_ids = {name: get_source(con, name).source_id for name in dict.fromkeys(lab.explanation.source for lab in labels)}
    missing = [i for i, lab in enumerate(labels) if lab.embedding is None]
    computed = dict(zip(missing, embed_texts([labels[i].explanation.label for i in missing]))) if missing else {}
    ids = q.new_explanation_ids(con, len(labels))
    q.insert_explanations(
        con,
        [
            q.ExplanationRow(eid, source_ids[lab.explanation.source], lab.explanation, lab.sampling_config, lab.seed,
                             lab.run_id, lab.config_hash)
            for eid, lab in zip(ids, labels)
        ],
    )
    scored = [(eid, lab.scores, lab.run_id) for eid, lab in zip(ids, labels)]
    q.insert_scores(con, scored)
    write_judgements(con, scored)
    q.insert_label_embeddings(
        con, EMBEDDING_MODEL,
        [(eid, computed[i] if lab.embedding is None else lab.embedding) for i, (eid, lab) in enumerate(zip(ids, labels))],
    )
    q.refresh_best(con, [(source_ids[lab.explanation.source], lab.explanation.feature) for lab in labels])
    return ids


@dataclass
class Review:
    review_id: int
    explanation_id: int
    verdict: str  # accept | reject | edit
    edited_label: str | None
    note: str | None
    created_at: Any
    reviewer: str | None = None  # who: the web catalog's reviewer name for the token used, or the CLI user


@dataclass
class Label:
    """One stored explanation with its provenance, scores and reviews."""

    explanation_id: int
    source: str
    feature: int
    label: str
    author: str
    explainer_model: str | None
    prompt_name: str | None
    prompt_hash: str | None
    sampling_config: dict | None
    seed: int | None
    run_id: str | None
    config_hash: str | None
    details: dict
    created_at: Any
    review_state: str  # accepted | rejected | edited | unreviewed
    scores: list[Score] = field(default_factory=list)
    reviews: list[Review] = field(default_factory=list)
    why_best: BestReason | None = None  # set on the labels best_label(s) return

    @property
    def headlines(self) -> dict[str, Score | None]:
        """Input and output headline scores side by side (`autointerp.ranking.side_by_side`)."""
        return ranking.side_by_side(self.scores)

    def score(self, scorer: str, metric: str, subset: str = "all", split: str = "test") -> Score | None:
        matches = [s for s in self.scores if (s.scorer, s.metric, s.subset, s.split) == (scorer, metric, subset, split)]
        return matches[-1] if matches else None


def resolve_metric(con: duckdb.DuckDBPyConnection, scorer: str, metric: str | None = None) -> tuple[str, str]:
    """A (scorer, metric) a user named, checked against the test scores in the store; the scorer's headline
    metric (see `autointerp.ranking`) when the metric is not named."""
    present = q.scorer_metrics(con)
    scorers = sorted({s for s, _ in present})
    metrics = sorted({m for s, m in present if s == scorer}, key=lambda m: ranking.preference(scorer, m))
    if not metrics:
        known = ", ".join(scorers) or "none yet"
        raise AutointerpError(f"no test scores from scorer {scorer!r} in this store; scorers with scores: {known}")
    if metric is None:
        return scorer, metrics[0]
    if metric not in metrics:
        raise AutointerpError(f"scorer {scorer!r} has no {metric!r} scores in this store; its metrics: {', '.join(metrics)}")
    return scorer, metric


def _loads(text: str | None) -> Any:
    return json.loads(text) if text else None


def load_labels(con: duckdb.DuckDBPyConnection, explanation_ids: Sequence[int]) -> list[Label]:
    """Labels with scores and reviews, in the order of the ids given (unknown ids are skipped)."""
    ids = [int(i) for i in explanation_ids]
    return _labels_from_rows(con, q.explanation_rows(con, ids), order=ids)


def _labels_from_rows(con: duckdb.DuckDBPyConnection, rows: list[tuple], order: list[int] | None = None) -> list[Label]:
    labels = {}
    for row in rows:
        data = dict(zip(q.EXPLANATION_FIELDS, row))
        data["sampling_config"] = _loads(data["sampling_config"])
        data["details"] = _loads(data["details"]) or {}
        labels[data["explanation_id"]] = Label(**data)
    for explanation_id, scores in scores_by_label(con, list(labels)).items():
        labels[explanation_id].scores = scores
    for row in q.reviews_of(con, list(labels)):
        labels[row[1]].reviews.append(Review(*row))
    keys = order if order is not None else [r[0] for r in rows]
    return [labels[i] for i in keys if i in labels]


def scores_by_label(
    con: duckdb.DuckDBPyConnection, explanation_ids: Sequence[int], details: bool = True
) -> dict[int, list[Score]]:
    """The stored scores of each label (without their items), in store order; without `details`, each
    score's details hold only what its reliability needs (`n_unparsed`): enough for a headline."""
    out: dict[int, list[Score]] = {}
    for row in q.scores_of(con, explanation_ids, details):
        d = dict(zip(q.SCORE_FIELDS, row))
        out.setdefault(d["explanation_id"], []).append(
            Score(
                scorer=d["scorer"], metric=d["metric"], value=d["value"], ci_low=d["ci_low"], ci_high=d["ci_high"],
                n=d["n"], subset=d["subset"], split=d["split"], scorer_model=d["scorer_model"],
                details=_loads(d["details"]) or {}, imported=bool(d["imported"]),
            )
        )
    return out


def label_history(con: duckdb.DuckDBPyConnection, source: str, feature: int) -> list[Label]:
    """Every label of a feature, newest first, with provenance, scores and reviews."""
    return _history(con, get_source(con, source).source_id, feature)


def _history(con: duckdb.DuckDBPyConnection, source_id: int, feature: int) -> list[Label]:
    return _labels_from_rows(con, q.feature_explanation_rows(con, source_id, feature))


def _ranked(con: duckdb.DuckDBPyConnection, scorer: str | None, metric: str | None) -> tuple[str | None, str | None]:
    if scorer is None:
        if metric is not None:
            raise AutointerpError("a metric to rank by needs its scorer too (e.g. detection.auroc)")
        return None, None
    return resolve_metric(con, scorer, metric)


def _with_reasons(labels: list[Label], rows: list[tuple]) -> list[Label]:
    by_id = {l.explanation_id: l for l in labels}
    out = []
    for row in rows:
        d = dict(zip(q.BEST_FIELDS, row))
        label = by_id[d["explanation_id"]]
        label.why_best = ranking.best_reason(
            d["tier"], d["scorer"], d["metric"], d["value"], d["n"], d["n_ranked"], d["n_competing"]
        )
        out.append(label)
    return out


def _best_of(
    con: duckdb.DuckDBPyConnection, source_id: int, labels: list[Label], scorer: str | None = None,
    metric: str | None = None,
) -> Label | None:
    """The best of one feature's labels (its whole history), by the rule of `autointerp.ranking`: the stored
    best (`feature_best`) unless a score to rank by is named."""
    if not labels:
        return None
    ids = [l.explanation_id for l in labels]
    rows = q.stored_best_rows(con, source_id=source_id, feature=labels[0].feature) if scorer is None else []
    if not rows or rows[0][2] not in ids:  # ranked by a named score, or a label written since (no hook ran)
        rows = q.best_explanation_rows(con, ranking.sql_parameters(), scorer, metric, explanation_ids=ids)
    return _with_reasons(labels, rows)[0]


def best_label(
    con: duckdb.DuckDBPyConnection, source: str, feature: int, scorer: str | None = None, metric: str | None = None
) -> Label | None:
    """The feature's best label (see `autointerp.ranking`), or None when it has no label. With a scorer (and
    metric), labels are compared on that score only."""
    sid = get_source(con, source).source_id
    return _best_of(con, sid, _history(con, sid, feature), *_ranked(con, scorer, metric))


def best_labels(
    con: duckdb.DuckDBPyConnection,
    source: str | None = None,
    scorer: str | None = None,
    metric: str | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[Label]:
    """The best label of every labeled feature (of one source, or all), ordered by source and feature."""
    sid = get_source(con, source).source_id if source else None
    scorer, metric = _ranked(con, scorer, metric)
    if scorer is None:
        rows = q.stored_best_rows(con, source_id=sid, limit=limit, offset=offset)
    else:
        rows = q.best_explanation_rows(
            con, ranking.sql_parameters(), scorer, metric, source_id=sid, limit=limit, offset=offset
        )
    return _with_reasons(load_labels(con, [r[2] for r in rows]), rows)


def review_label(
    con: duckdb.DuckDBPyConnection,
    explanation_id: int,
    verdict: str,
    *,
    note: str | None = None,
    edited_label: str | None = None,
    embedding: Sequence[float] | np.ndarray | None = None,
    reviewer: str | None = None,
) -> Label:
    """Record a human verdict on a label; return the label the verdict leaves as current.

    accept / reject: one review row, the same label returned. edit: a review row "edit" on the old label
    (with the new text and note) and a new human label (details.edited_from = old id) that is accepted at
    once; the new label is returned. Runs inside the caller's transaction.
    """
    if verdict not in VERDICTS:
        raise AutointerpError(f"unknown review verdict {verdict!r}; use one of {', '.join(VERDICTS)}")
    found = load_labels(con, [explanation_id])
    if not found:
        raise NotFound(f"no label with explanation id {explanation_id} in this store")
    old = found[0]
    if verdict != "edit":
        if edited_label:
            raise AutointerpError("an edited label goes with verdict 'edit', not with accept or reject")
        q.insert_review(con, explanation_id, verdict, None, note, reviewer)
        q.refresh_best(con, q.features_of_labels(con, [explanation_id]))
        return load_labels(con, [explanation_id])[0]
    text = (edited_label or "").strip()
    if not text:
        raise AutointerpError("an edit needs the new label text")
    q.insert_review(con, explanation_id, "edit", text, note, reviewer)
    new_id = write_label(
        con,
        Explanation(
            source=old.source,
            feature=old.feature,
            label=text,
            author="human",
            details={"edited_from": old.explanation_id, "note": note},
        ),
        [],
        run_id=None,
        config_hash=None,
        sampling_config=None,
        seed=None,
        embedding=embedding,
    )
    q.insert_review(con, new_id, "accept", None, note, reviewer)
    q.refresh_best(con, q.features_of_labels(con, [new_id]))
    return load_labels(con, [new_id])[0]


@dataclass
class ContextView:
    """A context window with the feature's activation at each token, for display."""

    context_id: int
    kind: str  # top | quantile | random
    tokens: list[str]
    activations: list[float]
    max_value: float
    band: int | None = None  # quantile band, 1 = lowest


@dataclass
class FeatureView:
    source: SourceInfo
    feature: int
    stats: FeatureStats | None
    best: Label | None
    history: list[Label]
    contexts: list[ContextView]
    ranked_by: tuple[str, str] | None  # the score the best label won on; None when accepted or unranked
    output: OutputEvidence | None = None  # what it does to the next token (`autointerp effects`), when stored


def feature_view(
    con: duckdb.DuckDBPyConnection,
    source: str,
    feature: int,
    *,
    n_top: int = 10,
    n_bands: int = 5,
    per_band: int = 2,
    n_random: int = 5,
    seed: int = 0,
    scorer: str | None = None,
    metric: str | None = None,
) -> FeatureView:
    """Everything the feature page shows: stats, best label, label history, top / quantile / random contexts
    (input evidence) and the stored output evidence."""
    info = get_source(con, source)
    history = _history(con, info.source_id, feature)
    try:
        stats = feature_stats(con, info.source_id, feature)
    except AutointerpError:
        if not history:
            raise
        stats = None  # labels imported for a feature this store has no activations for
    best = _best_of(con, info.source_id, history, *_ranked(con, scorer, metric))
    ranked_by = best.why_best.ranked_by if best and best.why_best.rule == "score" else None
    picks = q.feature_context_picks(con, info.source_id, feature, n_top, n_bands, per_band, n_random, seed)
    found = q.contexts_with_activations(con, info.source_id, feature, sorted({p[1] for p in picks}))
    contexts = []
    for kind, context_id, max_value, band in picks:
        tokens, positions, values = found.get(context_id, ([], [], []))
        activations = [0.0] * len(tokens)
        for pos, value in zip(positions, values):
            activations[pos] = float(value)
        contexts.append(ContextView(context_id, kind, tokens, activations, float(max_value), band))
    output = load_output_evidence(con, info.source_id, info.name, [feature]).get(feature)
    return FeatureView(info, feature, stats, best, history, contexts, ranked_by, output)


@dataclass
class RunView:
    run: Run
    spend: list[dict[str, Any]]  # per model and stage: calls, cached, errors, tokens, cost
    n_labels: int
    recent: list[tuple[str, int, int, str]]  # (source, feature, explanation_id, label), newest first
    failures: list[Failure]


def run_view(con: duckdb.DuckDBPyConnection, run_id: str, n_recent: int = 50) -> RunView:
    return RunView(
        run=require_run(con, run_id),
        spend=spend(con, run_id),
        n_labels=q.run_explanation_count(con, run_id),
        recent=q.run_features(con, run_id, n_recent),
        failures=run_failures(con, run_id),
    )
