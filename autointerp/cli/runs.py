"""`autointerp runs`: the labeling and scoring runs stored in a file, or one run's spend and failures."""

from __future__ import annotations

import argparse
import dataclasses
import json
import textwrap

from autointerp.catalog import run_view
from autointerp.cli._types import non_negative_int
from autointerp.cli.label import print_table
from autointerp.store import Store
from autointerp.store.jobs import list_runs

NAME = "runs"
HELP = "List labeling runs (status, counts, tokens, cost), or show one run's spend and failures."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the store file")
    parser.add_argument("--run", help="show this run: spend by model and stage, and its failures with raw output")
    parser.add_argument("--limit", type=non_negative_int, default=20, help="most recent runs to list (default 20)")
    parser.add_argument("--json", action="store_true", help="print JSON (a list of runs, or the one run's view)")


def run(args: argparse.Namespace) -> int:
    with Store(args.db, read_only=True) as store:
        if args.run:
            view = run_view(store.con, args.run)
        else:
            runs = list_runs(store.con, args.limit)
    if args.json:
        print(json.dumps(dataclasses.asdict(view) if args.run else [dataclasses.asdict(r) for r in runs], indent=2, default=str))
        return 0
    if not args.run:
        if not runs:
            print(f"no runs in {args.db} yet: start one with `autointerp label`")
            return 0
        print_table(
            ["run", "kind", "status", "features", "done", "failed", "sparse", "tokens", "cost", "started"],
            [
                [
                    r.run_id,
                    r.kind,
                    r.status,
                    str(r.n_total),
                    str(r.n_done),
                    str(r.n_failed),
                    str(r.n_skipped),
                    f"{r.prompt_tokens + r.completion_tokens:,}",
                    f"${r.cost_usd:.4f}",
                    f"{r.started_at:%Y-%m-%d %H:%M}",
                ]
                for r in runs
            ],
        )
        return 0
    r = view.run
    print(
        f"run {r.run_id} ({r.kind}) {r.status}: {r.n_done}/{r.n_total} done, {r.n_failed} failed, {r.n_skipped} too sparse"
    )
    print(f"{view.n_labels} labels stored; config hash {r.config_hash}")
    if view.spend:
        print_table(
            ["model", "stage", "calls", "cached", "errors", "prompt tokens", "completion tokens", "cost"],
            [
                [
                    s["model"],
                    str(s["stage"]),
                    str(s["calls"]),
                    str(s["cached"]),
                    str(s["errors"]),
                    f"{s['prompt_tokens']:,}",
                    f"{s['completion_tokens']:,}",
                    f"${s['cost_usd']:.4f}",
                ]
                for s in view.spend
            ],
        )
    for f in view.failures:
        where = "job" if f.feature is None else f"feature {f.feature}"
        print(f"failed: {where} at {f.stage}: {f.error}")
        if f.raw_output:
            print(textwrap.indent(textwrap.shorten(f.raw_output, 400), "    raw: "))
    return 0
