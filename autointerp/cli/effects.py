"""`autointerp effects`: compute and store a source's output evidence (logit lens, amplification)."""

from __future__ import annotations

import argparse

from autointerp.cli._types import positive_float, positive_int
from autointerp.errors import AutointerpError

NAME = "effects"
HELP = "Compute the output evidence of a collected source's features: logit-lens tokens and amplification changes."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("--source", required=True, help="a source collected from neurons or an SAE")
    parser.add_argument("--features", help="a range (0-99) or list (1,5,9); default: every feature that fires")
    parser.add_argument("--factor", type=positive_float, default=None, help="amplify at this many times the feature's max activation (default 10)")
    parser.add_argument("--k", type=positive_int, default=None, help="tokens kept per side (default 10)")
    parser.add_argument("--no-amplify", action="store_true", help="the logit lens only (no forward passes)")
    parser.add_argument("--device", help="auto (CUDA when present), cpu, cuda or cuda:N")


def run(args: argparse.Namespace) -> int:
    from autointerp.output_evidence import AMPLIFY_FACTOR, DEFAULT_K, compute_effects
    from autointerp.pipeline import parse_feature_spec
    from autointerp.store import Store

    features = None
    if args.features:
        n_auto, features = parse_feature_spec(args.features)
        if n_auto is not None:
            raise AutointerpError("`features` takes a range (0-99) or a list (1,5,9) here")
    with Store(args.db) as store:
        report = compute_effects(
            store,
            args.source,
            features,
            amplify=not args.no_amplify,
            factor=args.factor or AMPLIFY_FACTOR,
            k=args.k or DEFAULT_K,
            device=args.device,
            progress=True,
        )
    print(f"stored output evidence of {report.n_features} features of {report.source} ({', '.join(report.methods)}) on {report.device}")
    for method in report.methods:
        wall, cpu = report.per_feature(method)
        print(f"  {method}: {wall * 1000:.1f} ms per feature ({cpu * 1000:.1f} ms CPU)")
    return 0
