"""`autointerp sample`: show the examples the sampler picks for one feature, activations in brackets."""

from __future__ import annotations

import argparse
import dataclasses
import json

from autointerp.cli._types import non_negative_int
from autointerp.config import SamplingConfig
from autointerp.records import Example
from autointerp.render import display_tokens, one_line
from autointerp.sampling import sample
from autointerp.store import Store

NAME = "sample"
HELP = "Show one feature's train / valid / test examples with their activations."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("--source", required=True, help="source name")
    parser.add_argument("--feature", type=non_negative_int, required=True)
    parser.add_argument("--seed", type=non_negative_int, default=SamplingConfig.seed)
    parser.add_argument("--json", action="store_true", help="print the examples as JSON")


def render(example: Example) -> str:
    """The context as one line of text, each firing token shown as [token value]."""
    parts = []
    for text, value in zip(display_tokens(example.tokens), example.activations):
        lead = text[: len(text) - len(text.lstrip())]
        parts.append(f"{lead}[{text.strip()} {value:.3g}]" if value else text)
    return one_line("".join(parts))


def run(args: argparse.Namespace) -> int:
    cfg = dataclasses.replace(SamplingConfig(), seed=args.seed)
    with Store(args.db, read_only=True) as store:
        examples = sample(store, args.source, args.feature, cfg)
    if args.json:
        print(json.dumps(dataclasses.asdict(examples)))
        return 0
    print(f"feature {examples.feature} of {examples.source}: max activation {examples.max_activation:.3g}")
    print(f"characteristic tokens: {', '.join(map(repr, examples.characteristic_tokens)) or '-'}")
    for note in examples.notes:
        print(f"note: {note}")
    for split_name in ("train", "valid", "test"):
        split = getattr(examples, split_name)
        for group in ("positives", "random_negatives", "hard_negatives"):
            items = getattr(split, group)
            if not items:
                continue
            print(f"\n== {split_name} {group.replace('_', ' ')} ({len(items)})")
            for ex in items:
                tag = ex.kind if ex.quantile is None else f"{ex.kind} q{ex.quantile}"
                print(f"  #{ex.context_id} {tag} max {ex.max_value:.3g}: {render(ex)}")
    return 0
