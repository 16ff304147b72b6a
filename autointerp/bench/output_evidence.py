"""Time per feature of computing output evidence on the bundled model (CUDA when present).

    python -m autointerp.bench.output_evidence [--features 16] [--layer 6] [--tokens 4096] [--device auto]

Collects a small neuron source into a temporary store (which stores the logit lens of every firing feature, as
every collection does), then times `compute_effects` on it: the logit lens of every firing neuron, and the
amplification of `--features` neurons on the shipped neutral prompts. Wall and process CPU time per feature
are printed with the machine's load, since both depend on what else runs.
"""

from __future__ import annotations

import argparse
import os
import tempfile
from pathlib import Path

import torch

from autointerp.collect.collector import CollectConfig, collect
from autointerp.collect.models import load_subject_model
from autointerp.directions import neutral_prompts
from autointerp.output_evidence import AMPLIFY_FACTOR, compute_effects
from autointerp.store import Store
from autointerp.store.output_evidence_queries import AMPLIFICATION, LOGIT_LENS, feature_maxima
from autointerp.store.activations import get_source


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=16, help="neurons to amplify")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--tokens", type=int, default=4096, help="tokens collected for the source")
    parser.add_argument("--factor", type=float, default=AMPLIFY_FACTOR)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args(argv)

    subject = load_subject_model("smollm2", args.device)
    with tempfile.TemporaryDirectory(prefix="bench-effects-") as tmp:
        store = Store(Path(tmp) / "bench.duckdb", create=True)
        cfg = CollectConfig(layer=args.layer, tokens=args.tokens, context_len=64, batch_size=16)
        source = collect(store, cfg, subject=subject, progress=False).source
        with store.reading() as con:
            firing = sorted(feature_maxima(con, get_source(con, source).source_id, None))
        store.close()
        lens = compute_effects(store, source, firing, model=subject, amplify=False)
        amplified = compute_effects(store, source, firing[: args.features], model=subject, factor=args.factor)
        store.close()

    load = os.getloadavg()
    print(
        f"smollm2 layer {args.layer} neurons on {amplified.device} ({subject.dtype}), torch threads "
        f"{torch.get_num_threads()}, load average {load[0]:.1f} on {os.cpu_count()} cores"
    )
    print(f"{'method':14} {'features':>9} {'ms/feature wall':>16} {'ms/feature CPU':>15}")
    for report, method in ((lens, LOGIT_LENS), (amplified, AMPLIFICATION)):
        wall, cpu = report.per_feature(method)
        print(f"{method:14} {report.n_features:9d} {wall * 1000:16.1f} {cpu * 1000:15.1f}")
    print(
        f"amplification: {len(neutral_prompts())} neutral prompts x {amplified.n_features} features, factor {args.factor:g}; "
        "its per-feature cost is a forward pass of the whole model per prompt"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
