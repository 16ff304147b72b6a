"""`autointerp features`: per-feature statistics of a source."""

from __future__ import annotations

import argparse
import dataclasses
import json

from autointerp.cli._types import non_negative_int
from autointerp.store import Store
from autointerp.store.activations import get_source, list_feature_stats

NAME = "features"
HELP = "List a source's features with their firing counts, density and activation range."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("--source", required=True, help="source name")
    parser.add_argument("--limit", type=non_negative_int, default=None, help="show at most N features")
    parser.add_argument("--offset", type=non_negative_int, default=0)
    parser.add_argument(
        "--order-by", default="feature", help="feature, density, max_value, mean_value, n_active_tokens or n_active_contexts; prefix - for descending"
    )
    parser.add_argument("--json", action="store_true", help="print JSON lines with every statistic")


def run(args: argparse.Namespace) -> int:
    with Store(args.db, read_only=True) as store:
        source = get_source(store.con, args.source)
        stats = list_feature_stats(store.con, source.source_id, limit=args.limit, offset=args.offset, order_by=args.order_by)
    if args.json:
        for s in stats:
            print(json.dumps({"source": source.name, **dataclasses.asdict(s)}))
        return 0
    print(f"{'feature':>8} {'tokens':>10} {'contexts':>9} {'density':>10} {'max':>9} {'mean':>9}  per-context max p10/p50/p90")
    for s in stats:
        edges = s.quantile_edges
        q = "/".join(f"{edges[i]:.3g}" for i in (1, 5, 9)) if len(edges) == 11 else ""
        print(
            f"{s.feature:>8} {s.n_active_tokens:>10} {s.n_active_contexts:>9} {s.density:>10.3e} "
            f"{s.max_value:>9.3g} {s.mean_value:>9.3g}  {q}"
        )
    return 0
