"""`autointerp search`: find features by what their labels say."""

from __future__ import annotations

import argparse
import json

from autointerp.catalog import REVIEW_STATES
from autointerp.cli._types import non_negative_int
from autointerp.search import MODES, SearchFilters, SearchIndex, search
from autointerp.store import Store

# What the score column holds in each mode (an empty query lists features unscored).
SCORE_NAMES = {"hybrid": "rrf", "keyword": "bm25", "semantic": "cosine"}
NAME = "search"
HELP = "Search feature labels: keyword (BM25), semantic (embeddings) or hybrid (both, the default)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("query", help="words to look for (empty string: list labeled features)")
    parser.add_argument("--mode", choices=MODES, default="hybrid")
    parser.add_argument("--source", help="only this source")
    parser.add_argument("--model", help="only sources of this subject model")
    parser.add_argument("--layer", type=int, help="only sources at this layer")
    parser.add_argument("--min-score", metavar="SCORER[.METRIC]:VALUE", help="e.g. detection:0.7 or output.win_rate:0.6 (test split, all examples; input or output scorers)")
    parser.add_argument("--density-min", type=float)
    parser.add_argument("--density-max", type=float)
    parser.add_argument("--review", choices=REVIEW_STATES, help="only labels in this review state")
    parser.add_argument("--limit", type=non_negative_int, default=20)
    parser.add_argument("--offset", type=non_negative_int, default=0)
    parser.add_argument("--json", action="store_true", help="print the results as one JSON object")


def run(args: argparse.Namespace) -> int:
    filters = SearchFilters(
        source=args.source,
        model=args.model,
        layer=args.layer,
        min_score=args.min_score,
        density_min=args.density_min,
        density_max=args.density_max,
        review=args.review,
    )
    with Store(args.db, read_only=True) as store:
        results = search(
            store.con, SearchIndex(), args.query, mode=args.mode, filters=filters, limit=args.limit, offset=args.offset
        )
    if args.json:
        print(json.dumps(results.to_dict(), default=str))
        return 0
    if not results.hits:
        print(f"no labels match {args.query!r} ({results.n_labels} labels searched)")
        return 0
    scored = results.query.strip() != ""
    score_head = f" {SCORE_NAMES[results.mode]:>8}" if scored else ""
    print(f"{'rank':>5}{score_head} {'label id':>9}  feature · label")
    for rank, hit in enumerate(results.hits, start=args.offset + 1):
        score = f" {hit.score:8.3f}" if scored else ""
        review = "" if hit.review_state == "unreviewed" else f"  [{hit.review_state}]"
        both = f"  ({_headline('in', hit.input_score)}; {_headline('out', hit.output_score)})" if hit.output_score else ""
        print(f"{rank:>4}.{score} {hit.explanation_id:>9}  {hit.source}/{hit.feature} · {hit.label}{review}{both}")
    return 0


def _headline(side: str, score) -> str:
    """`in detection.auroc 0.81`: a hit's input or output headline, shown side by side when it has an output score."""
    if score is None or score.value is None:
        return f"{side} -"
    return f"{side} {score.scorer}.{score.metric} {score.value:.3g}" + (" (unreliable)" if score.unreliable else "")
