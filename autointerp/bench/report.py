"""Benchmark reports: summary statistics with confidence intervals, Markdown/CSV tables and matplotlib PNGs.

Statistics are plain functions of arrays, built on `autointerp.scoring.metrics`. Intervals are 95%: Wilson for
proportions, percentile bootstrap resampling features (fixed seed: a rerun prints the same figures) otherwise.
"""

from __future__ import annotations

import csv
import math
from pathlib import Path
from typing import Any, Sequence

import numpy as np

from autointerp import ranking
from autointerp.records import Score
from autointerp.scoring import metrics

Z95 = 1.959963984540054
N_BOOTSTRAP = metrics.N_RESAMPLES


def wilson_interval(successes: float, n: int, z: float = Z95) -> tuple[float | None, float | None]:
    """Wilson score interval for a proportion; `successes` may be fractional (ties counted as half)."""
    if n <= 0:
        return None, None
    p = successes / n
    denom = 1 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * math.sqrt(p * (1 - p) / n + z * z / (4 * n * n)) / denom
    return max(0.0, centre - half), min(1.0, centre + half)


def _item_counts(n_items: int, n_boot: int, seed: int) -> np.ndarray:
    """[n_boot, n_items] draw counts of a bootstrap over items (features)."""
    return metrics.resample_counts(np.zeros(n_items), n_boot, seed)


def mean_with_ci(values: Sequence[float | None], n_boot: int = N_BOOTSTRAP, seed: int = metrics.SEED) -> dict[str, Any]:
    """Mean, median, bootstrap CI of the mean and n over the values that are defined."""
    x = np.array([v for v in values if _finite(v)], dtype=float)
    if len(x) == 0:
        return {"mean": None, "median": None, "ci_low": None, "ci_high": None, "n": 0}
    lo, hi = metrics.bootstrap_mean(x, n_boot, seed)
    return {"mean": float(x.mean()), "median": float(np.median(x)), "ci_low": lo, "ci_high": hi, "n": len(x)}


def win_rate(true_scores: Sequence[float | None], decoy_scores: Sequence[float | None]) -> dict[str, Any]:
    """How often the paired true score beats the decoy score (ties count half), with a Wilson interval."""
    pairs = [(t, d) for t, d in zip(true_scores, decoy_scores) if _finite(t) and _finite(d)]
    wins = sum(1.0 if t > d else 0.5 if t == d else 0.0 for t, d in pairs)
    lo, hi = wilson_interval(wins, len(pairs))
    return {"rate": wins / len(pairs) if pairs else None, "ci_low": lo, "ci_high": hi, "n": len(pairs)}


def grouped_auroc_with_ci(
    true_by_item: Sequence[float | None],
    decoys_by_item: Sequence[Sequence[float | None]],
    n_boot: int = N_BOOTSTRAP,
    seed: int = metrics.SEED,
) -> dict[str, Any]:
    """AUROC of true-label scores against decoy scores pooled over items; the CI resamples whole items."""
    items, y_true, y_score = [], [], []
    for i, (t, decoys) in enumerate(zip(true_by_item, decoys_by_item)):
        if not _finite(t):
            continue
        for truth, value in [(1, t), *((0, d) for d in decoys if _finite(d))]:
            items.append(i)
            y_true.append(truth)
            y_score.append(value)
    n_items = len({*items})
    value = metrics.auroc(y_true, y_score) if items else None
    lo = hi = None
    if value is not None and n_items >= 2:
        unit = np.unique(items, return_inverse=True)[1]
        counts = _item_counts(n_items, n_boot, seed)[:, unit]
        lo, hi = metrics.percentile_interval(metrics.auroc_replicates(y_true, y_score, counts))
    return {"auroc": value, "ci_low": lo, "ci_high": hi, "n": n_items}


def spearman_with_ci(
    x: Sequence[float | None], y: Sequence[float | None], n_boot: int = N_BOOTSTRAP, seed: int = metrics.SEED
) -> dict[str, Any]:
    """Spearman rank correlation over the pairs where both are defined, with a bootstrap CI over pairs."""
    from scipy.stats import spearmanr

    pairs = np.asarray([(a, b) for a, b in zip(x, y) if _finite(a) and _finite(b)], dtype=float).reshape(-1, 2)

    def rho(a: np.ndarray, b: np.ndarray) -> float:
        if len(a) < 3 or np.ptp(a) == 0 or np.ptp(b) == 0:
            return math.nan
        return float(spearmanr(a, b).statistic)

    value = rho(pairs[:, 0], pairs[:, 1])
    lo = hi = None
    if not math.isnan(value):
        replicates = []
        for counts in _item_counts(len(pairs), n_boot, seed):
            idx = np.repeat(np.arange(len(pairs)), counts)
            replicates.append(rho(pairs[idx, 0], pairs[idx, 1]))
        lo, hi = metrics.percentile_interval(np.array(replicates))
    return {"rho": None if math.isnan(value) else value, "ci_low": lo, "ci_high": hi, "n": len(pairs)}


def headline(scorer: str, scores: list[Score]) -> Score | None:
    """The score a scorer is ranked by: its headline metric on all test contexts (`autointerp.ranking`);
    unreliable ones included, since a benchmark reports every label's score with its n."""
    return ranking.headline(scores, scorer, reliable_only=False)


def _finite(value: Any) -> bool:
    return value is not None and not (isinstance(value, float) and math.isnan(value))


# ---------------------------------------------------------------- tables

def fmt(value: Any, digits: int = 3) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:.{digits}f}"
    return str(value)


def fmt_ci(value: Any, lo: Any, hi: Any, digits: int = 3) -> str:
    """"0.812 [0.701, 0.900]" or just the value where there is no interval."""
    if lo is None or hi is None:
        return fmt(value, digits)
    return f"{fmt(value, digits)} [{fmt(lo, digits)}, {fmt(hi, digits)}]"


def markdown_table(rows: list[dict[str, Any]], columns: list[str] | None = None) -> str:
    if not rows:
        return "_(no rows)_\n"
    columns = columns or list(dict.fromkeys(k for row in rows for k in row))  # rows may add columns (controls)
    lines = ["| " + " | ".join(columns) + " |", "|" + "|".join("---" for _ in columns) + "|"]
    for row in rows:
        lines.append("| " + " | ".join(fmt(row.get(c)).replace("|", "\\|") for c in columns) + " |")
    return "\n".join(lines) + "\n"


def write_csv(rows: list[dict[str, Any]], path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    columns = list(dict.fromkeys(c for row in rows for c in row))
    with path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=columns)
        writer.writeheader()
        for row in rows:
            writer.writerow({c: "" if row.get(c) is None else row.get(c) for c in columns})
    return path


# ---------------------------------------------------------------- figures

def _pyplot():
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def plot_distributions(groups: dict[str, list[float]], ylabel: str, title: str, path: Path) -> Path:
    """Box plot with the individual points over it, one box per group (configuration, label kind...)."""
    plt = _pyplot()
    names = list(groups)
    data = [[v for v in groups[n] if _finite(v)] for n in names]
    fig, ax = plt.subplots(figsize=(max(5.0, 1.2 * len(names) + 2), 4))
    ax.boxplot([d if d else [np.nan] for d in data], showfliers=False)
    ax.set_xticks(range(1, len(names) + 1), names)
    rng = np.random.default_rng(0)
    for i, d in enumerate(data, start=1):
        ax.scatter(i + rng.uniform(-0.12, 0.12, len(d)), d, s=10, alpha=0.6)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.tick_params(axis="x", labelrotation=20)
    return _save(fig, plt, path)


def plot_points_with_ci(
    points: list[dict[str, Any]], xkey: str, ykey: str, xlabel: str, ylabel: str, title: str, path: Path,
    log_x: bool = False,
) -> Path:
    """One labelled point per row with vertical CI bars (`ci_low`/`ci_high` when present)."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    for p in points:
        x, y = p.get(xkey), p.get(ykey)
        if not (_finite(x) and _finite(y)):
            continue
        lo, hi = p.get("ci_low"), p.get("ci_high")
        yerr = [[y - lo], [hi - y]] if _finite(lo) and _finite(hi) else None
        ax.errorbar([x], [y], yerr=yerr, fmt="o", capsize=3)
        ax.annotate(str(p.get("name", "")), (x, y), textcoords="offset points", xytext=(4, 4), fontsize=8)
    if log_x:
        ax.set_xscale("symlog", linthresh=1e-6)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    return _save(fig, plt, path)


def plot_scatter_groups(
    groups: dict[str, list[tuple[float, float]]], xlabel: str, ylabel: str, title: str, path: Path, log_x: bool = False
) -> Path:
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(6, 4))
    plotted = False
    for name, pts in groups.items():
        pts = [(x, y) for x, y in pts if _finite(x) and _finite(y)]
        if pts:
            ax.scatter([x for x, _ in pts], [y for _, y in pts], s=14, alpha=0.7, label=name)
            plotted = True
    if log_x:
        ax.set_xscale("log")
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    if plotted:
        ax.legend(fontsize=7)
    return _save(fig, plt, path)


def plot_grouped_bars(
    bars: dict[str, dict[str, tuple[float | None, float | None, float | None]]], ylabel: str, title: str, path: Path,
    reference: float | None = None,
) -> Path:
    """bars[group][series] = (value, ci_low, ci_high): grouped bars with CI whiskers, e.g. scorer x decoy."""
    plt = _pyplot()
    groups = list(bars)
    series = list(dict.fromkeys(s for g in groups for s in bars[g]))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(max(5.0, 1.6 * len(groups) + 2), 4))
    for j, s in enumerate(series):
        xs, ys, errs = [], [], [[], []]
        for i, g in enumerate(groups):
            value, lo, hi = bars[g].get(s, (None, None, None))
            if not _finite(value):
                continue
            xs.append(i + (j - (len(series) - 1) / 2) * width)
            ys.append(value)
            errs[0].append(value - lo if _finite(lo) else 0.0)
            errs[1].append(hi - value if _finite(hi) else 0.0)
        ax.bar(xs, ys, width=width, yerr=errs, capsize=3, label=s)
    if reference is not None:
        ax.axhline(reference, color="grey", linestyle="--", linewidth=1)
    ax.set_xticks(range(len(groups)), groups)
    ax.set_ylim(0, 1.05)
    ax.set_ylabel(ylabel)
    ax.set_title(title)
    ax.legend(fontsize=8)
    return _save(fig, plt, path)


def _save(fig, plt, path: Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path
