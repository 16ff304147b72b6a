"""The notebook API: each CLI verb as one function over a Store (or a store path), results as dataclasses.

    import autointerp as ai
    store = ai.Store("demo/demo.duckdb")
    ai.list_features(store, "smollm2-L6-neurons", order_by="-density", limit=5)
    summary = ai.label_features(store, source="smollm2-L6-neurons", features="0-9", scorers=["embedding"])
    ai.to_pandas(summary.results)

Settings are the job file's keys (`features`, `scorers`, `sampling`, ...), checked by autointerp.config.
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from autointerp.config import JobConfig, from_dict, load_job_config
from autointerp.errors import AutointerpError
from autointerp.store.db import Store


def _store(store: Store | str | Path, read_only: bool = False) -> Store:
    return store if isinstance(store, Store) else Store(store, read_only=read_only)


def collect_activations(
    store: Store | str | Path, *, ray: str | None = None, workers: int | None = None, progress: bool = False,
    **settings: Any,
):
    """Record a subject model's activations into the store (created when missing; a rerun resumes).
    Settings are CollectConfig fields: model, layer, features, dataset, tokens, context_len, ...
    `ray`: a Ray cluster's address, or "auto" for a local one, to spread the forward passes over `workers`."""
    from autointerp.collect.collector import CollectConfig, collect
    from autointerp.collect.ray_collect import collect_on_ray

    if ray is None and workers is not None:
        raise AutointerpError("`workers` needs `ray`")
    target = store if isinstance(store, Store) else Store(store, create=True)
    cfg = from_dict(CollectConfig, settings, "collect settings")
    if ray is None:
        return collect(target, cfg, progress=progress)
    return collect_on_ray(target, cfg, address=ray, workers=workers, progress=progress)


def list_sources(store: Store | str | Path) -> list:
    from autointerp.store.activations import list_sources as sources

    with _store(store, read_only=True).reading() as con:
        return sources(con)


def list_features(
    store: Store | str | Path, source: str, *, order_by: str = "feature", limit: int | None = None, offset: int = 0
) -> list:
    """Per-feature statistics (firing counts, density, max, quantile edges); order_by "-density" for descending."""
    from autointerp.store.activations import get_source, list_feature_stats

    with _store(store, read_only=True).reading() as con:
        return list_feature_stats(con, get_source(con, source).source_id, limit=limit, offset=offset, order_by=order_by)


def job_config(config: str | Path | None = None, **settings: Any) -> JobConfig:
    """A labeling job from an optional TOML file and keyword settings (settings win); `seed` sets the sampling seed."""
    return load_job_config(config, **settings)


def label_features(store: Store | str | Path, config: str | Path | None = None, *, progress: bool = False, **settings: Any):
    """Run the labeling job (resumable: a rerun skips features already done) and return its JobSummary."""
    from autointerp.pipeline import run_label_job

    return run_label_job(_store(store), job_config(config, **settings), progress=progress)


def score_label(store: Store | str | Path, source: str, feature: int, label: str, config: str | Path | None = None, **settings: Any):
    """Score a label you propose on the feature's held-out test split; stored as a human label."""
    from autointerp.pipeline import score_label as score

    return score(_store(store), job_config(config, source=source, **settings), feature, label)


def search_labels(
    store: Store | str | Path, query: str = "", *, mode: str = "hybrid", limit: int = 20, offset: int = 0, **filters: Any
):
    """One page of features whose labels match `query`; filters are SearchFilters fields (source, min_score, ...)."""
    from autointerp.search import SearchFilters, SearchIndex, search

    with _store(store, read_only=True).reading() as con:
        return search(con, SearchIndex(), query, mode=mode, filters=SearchFilters(**filters), limit=limit, offset=offset)


def list_runs(store: Store | str | Path, limit: int = 20) -> list:
    from autointerp.store.jobs import list_runs as runs

    with _store(store, read_only=True).reading() as con:
        return runs(con, limit)


def export_labels(
    store: Store | str | Path, path: str | Path, fmt: str | None = None, *, source: str | None = None, best_only: bool = False
) -> int:
    """Write labels with provenance and scores to .csv, .parquet or Neuronpedia .jsonl; returns how many."""
    from autointerp.exchange import export_labels as export

    with _store(store, read_only=True).reading() as con:
        return export(con, path, fmt, source=source, best_only=best_only)


def to_arrow(results: Any):
    """A pyarrow Table from results: a list of dataclasses or dicts (one row each), or an object holding such a
    list (SearchResults.hits, JobSummary.results, FeatureExamples' splits as one row per example)."""
    import pyarrow as pa

    return pa.Table.from_pylist([_row(r) for r in _rows(results)])


def to_pandas(results: Any):
    """A pandas DataFrame from results (see to_arrow)."""
    return to_arrow(results).to_pandas()


def _rows(results: Any) -> list:
    for attr in ("hits", "results"):
        if hasattr(results, attr) and isinstance(getattr(results, attr), list):
            return getattr(results, attr)
    if all(hasattr(results, split) for split in ("train", "valid", "test")):
        return [
            {"split": name, "group": group, **dataclasses.asdict(ex), "max_value": ex.max_value}
            for name in ("train", "valid", "test")
            for group in ("positives", "random_negatives", "hard_negatives")
            for ex in getattr(getattr(results, name), group)
        ]
    return list(results)


def _row(item: Any) -> dict:
    if dataclasses.is_dataclass(item) and not isinstance(item, type):
        return dataclasses.asdict(item)
    return dict(item)
