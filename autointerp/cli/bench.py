"""`autointerp bench quality|planted`: the label-quality benchmarks (arguments and output are the bench modules' own)."""

from __future__ import annotations

import argparse

NAME = "bench"
HELP = "Benchmark label quality: explainer setups on a frozen feature set, or scorers on planted features."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from autointerp.bench import planted, quality

    sub = parser.add_subparsers(dest="bench", required=True, metavar="BENCH")
    for module, help_ in (
        (quality, "compare explainer setups (model, prompt, k) with controls and scorer agreement"),
        (planted, "score true and decoy labels of rule-based planted features"),
    ):
        p = sub.add_parser(module.__name__.rsplit(".", 1)[-1], help=help_, description=module.__doc__.splitlines()[0])
        module.add_arguments(p)
        p.set_defaults(_bench=module.run_from_args)


def run(args: argparse.Namespace) -> int:
    return args._bench(args)
