"""`autointerp score`: score a label a person proposes, on the same held-out test split a labeling job uses."""

from __future__ import annotations

import argparse
import dataclasses
import json

from autointerp.cli.label import print_table, score_cell
from autointerp.config import load_job_config
from autointerp.pipeline import score_label
from autointerp.records import Score
from autointerp.store import Store

NAME = "score"
HELP = "Score a label you propose for a feature on its held-out test contexts, and store it as a human label."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the store file")
    parser.add_argument("--source", required=True, help="source name")
    parser.add_argument("--feature", type=int, required=True)
    parser.add_argument("--label", required=True, help="the label to score, e.g. \"the word 'river'\"")
    parser.add_argument(
        "--scorers", help="comma list of simulation, detection, fuzzing, embedding, output (default detection,embedding)"
    )
    parser.add_argument(
        "--simulator", help="model for the LLM scorers: local | openai:<model> | anthropic:<model> (default local)"
    )
    parser.add_argument("--base-url", help="endpoint of the simulator model")
    parser.add_argument(
        "--config",
        metavar="TOML",
        help="a labeling job file: score with its sampling (test split), scorers and simulator",
    )
    parser.add_argument("--seed", type=int, help="sampling seed (default 0, as for `autointerp label`)")
    parser.add_argument("--json", action="store_true", help="print the stored label and its scores as JSON")


def run(args: argparse.Namespace) -> int:
    job = load_job_config(
        args.config,
        source=args.source,
        scorers=[s.strip() for s in args.scorers.split(",") if s.strip()] if args.scorers else None,
        simulator=args.simulator,
        base_url=args.base_url,
        seed=args.seed,
    )
    result = score_label(Store(args.db), job, args.feature, args.label)
    if args.json:
        out = dataclasses.asdict(result)
        for score in out["scores"]:
            score.pop("items")  # stored per item in the store (autointerp.judgements), not repeated per row
        print(json.dumps(out, default=str))
        return 0
    print(f"stored human label #{result.explanation_id} for feature {result.feature}: {result.label}")
    print_table(
        ["scorer", "subset", "score (95% CI)", "by activation quantile"],
        [[s.scorer, s.subset, score_cell(s), quantile_cell(s)] for s in result.scores],
    )
    return 0


def quantile_cell(score: Score) -> str:
    """`q0 0.40 q1 0.90 top 0.90`: the metric on each quantile's positives against the subset's negatives."""
    by_quantile = score.details.get("by_quantile") or {}
    return " ".join(
        f"{'' if key == 'top' else 'q'}{key} {'-' if row['value'] is None else format(row['value'], '.2f')}"
        for key, row in by_quantile.items()
    )
