"""Does one label beat another on a feature? A paired bootstrap of their embedding-AUROC difference.

Both labels are scored on the same test items (the split `autointerp score` uses), and each bootstrap
replicate resamples those items once for both labels, so the interval is of the difference itself: when
it excludes 0, the ranking is not a tie.

    python -m autointerp.bench.label_pair --db D --source S --feature N --label "A" --label "B" [--config job.toml]
"""

from __future__ import annotations

import argparse
import asyncio

import numpy as np

from autointerp.config import load_job_config
from autointerp.sampling import sample
from autointerp.scoring import metrics
from autointerp.scoring.embedding import EmbeddingScorer
from autointerp.store import Store


def compare(store: Store, source: str, feature: int, first: str, second: str, sampling) -> dict:
    """AUROC of each label and of their difference (first - second), with a paired 95% bootstrap CI."""
    examples = sample(store, source, feature, sampling)
    scorer = EmbeddingScorer()
    contexts, a = asyncio.run(scorer.cosines(first, examples))
    _, b = asyncio.run(scorer.cosines(second, examples))
    truth = np.array([int(e.is_positive) for e in contexts])
    counts = metrics.resample_counts(truth, scorer.n_resamples, scorer.seed)
    diff = metrics.auroc_replicates(truth, a, counts) - metrics.auroc_replicates(truth, b, counts)
    low, high = metrics.percentile_interval(diff)
    return {
        "auroc": (metrics.auroc(truth, a), metrics.auroc(truth, b)),
        "difference": metrics.auroc(truth, a) - metrics.auroc(truth, b),
        "ci": (low, high),
        "n": len(truth),
        "test_positive_bands": sorted(e.quantile for e in contexts if e.is_positive),
    }


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--db", required=True)
    parser.add_argument("--source", required=True)
    parser.add_argument("--feature", type=int, required=True)
    parser.add_argument("--label", action="append", required=True, help="give it twice: the two labels")
    parser.add_argument("--config", help="a labeling job file whose [sampling] to use")
    args = parser.parse_args(argv)
    if len(args.label) != 2:
        parser.error("give --label exactly twice")
    with Store(args.db, read_only=True) as store:
        r = compare(store, args.source, args.feature, *args.label, load_job_config(args.config).sampling)
    (a, b), (low, high) = r["auroc"], r["ci"]
    verdict = "excludes a tie" if low > 0 or high < 0 else "includes a tie: the two labels are not told apart"
    print(f"embedding AUROC {a:.3f} ({args.label[0]!r}) vs {b:.3f} ({args.label[1]!r}) on {r['n']} test contexts")
    print(f"difference {r['difference']:+.3f}, paired 95% CI [{low:+.3f}, {high:+.3f}]: {verdict}")
    print(f"test positives by band (top band = {max(r['test_positive_bands'], default=0)}): {r['test_positive_bands']}")


if __name__ == "__main__":
    main()
