"""`autointerp costs`: what LLM calls cost, by run, model and stage, from the call ledger."""

from __future__ import annotations

import argparse
import json

from autointerp.llm.ledger import reprice, spend_summary
from autointerp.llm.prices import FREE_PROVIDERS, PriceTable
from autointerp.store import Store

NAME = "costs"
HELP = "Show LLM spend by run, model and stage, streamed or batched: calls, cache hits, tokens, cost and errors."

COLUMNS = ("run", "model", "stage", "batched", "calls", "cached", "errors", "prompt_tokens", "completion_tokens", "cost_usd")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the store file")
    parser.add_argument("--run", help="only this run id")
    parser.add_argument("--json", action="store_true", help="print JSON rows instead of a table")
    parser.add_argument(
        "--prices",
        metavar="TOML",
        help='recompute costs from token counts with the built-in prices overridden by this file '
        '(as_of = "..." and [prices."provider:model"] input = .., output = .. in USD per 1M tokens)',
    )


def run(args: argparse.Namespace) -> int:
    with Store(args.db, read_only=True) as store:
        rows = spend_summary(store, args.run)
    if args.prices:
        rows = reprice(rows, PriceTable.from_toml(args.prices))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    if not rows:
        print(f"no LLM calls recorded{' for run ' + args.run if args.run else ''} in {args.db}")
        return 0
    table = [[_cell(row[c]) for c in COLUMNS] for row in rows]
    table.append(["total", "", "", "", *(_cell(sum(row[c] for row in rows)) for c in COLUMNS[4:])])
    widths = [max(len(c), *(len(r[i]) for r in table)) for i, c in enumerate(COLUMNS)]
    numeric = set(range(4, len(COLUMNS)))
    for line in [list(COLUMNS), *table]:
        print("  ".join(cell.rjust(w) if i in numeric else cell.ljust(w) for i, (cell, w) in enumerate(zip(line, widths))))
    free = sorted({row["model"] for row in rows if row["provider"] in FREE_PROVIDERS})
    unpriced = sorted({row["model"] for row in rows if not row["priced"]})
    if free:
        print(f"free (runs on this machine): {', '.join(free)}")
    if unpriced:
        print(f"no price known, counted as $0: {', '.join(unpriced)} (give --prices FILE to count them)")
    return 0


def _cell(value) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "batch" if value else "-"
    if isinstance(value, float):
        return f"{value:.6f}"
    return str(value)
