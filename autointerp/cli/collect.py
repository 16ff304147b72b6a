"""`autointerp collect`: record a subject model's activations on a corpus into the store."""

from __future__ import annotations

import argparse

from autointerp.collect.collector import CollectConfig, collect
from autointerp.collect.ray_collect import collect_on_ray
from autointerp.errors import AutointerpError
from autointerp.ray_cluster import AUTO
from autointerp.store import Store

NAME = "collect"
HELP = "Record activations of MLP neurons or SAE latents at one layer over a text corpus (resumable)."

_DEFAULTS = CollectConfig()


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="the store file (created when missing)")
    parser.add_argument(
        "--model",
        default=_DEFAULTS.model,
        help="subject model: `smollm2` (bundled, offline), a local Hugging Face model folder, or a hub name (online)",
    )
    parser.add_argument(
        "--layer", type=int, help="layer index (0-based); required for neurons, SAEs default to the layer they name"
    )
    parser.add_argument(
        "--features",
        default=_DEFAULTS.features,
        help="`neurons` (the MLP's hidden activations at --layer) or `sae:PATH` (a residual-stream SAE folder in "
        "SAELens or sparsify format, read at the output of its layer)",
    )
    parser.add_argument(
        "--dataset",
        default=_DEFAULTS.dataset,
        help="`stdlib-docs` (bundled), a local .txt/.jsonl/.parquet file, or hub:NAME[:split] (online)",
    )
    parser.add_argument("--text-column", default=_DEFAULTS.text_column, help="text column of .jsonl/.parquet/hub datasets")
    parser.add_argument("--tokens", type=int, default=_DEFAULTS.tokens, help="number of tokens to record (default %(default)s)")
    parser.add_argument(
        "--context-len", type=int, default=_DEFAULTS.context_len, help="tokens per context window, non-overlapping (default %(default)s)"
    )
    parser.add_argument(
        "--source", help="source name in the store (default: MODEL-LLAYER-neurons or MODEL-LLAYER-sae-FOLDER)"
    )
    parser.add_argument(
        "--top-k-per-token",
        type=int,
        default=_DEFAULTS.top_k_per_token,
        help="neurons only: neurons are dense and signed, so each token keeps only its K largest positive "
        "activations (default %(default)s; 0 keeps every positive one); negative values are never stored. "
        "SAEs keep every non-zero",
    )
    parser.add_argument("--batch-size", type=int, default=_DEFAULTS.batch_size, help="contexts per forward pass (default %(default)s)")
    parser.add_argument(
        "--chunk-tokens",
        type=int,
        default=_DEFAULTS.chunk_tokens,
        help="tokens per stored chunk (default %(default)s); a killed run resumes from the last whole chunk",
    )
    parser.add_argument("--device", default=None, help="auto (CUDA when present), cpu, cuda, cuda:N")
    parser.add_argument(
        "--dtype", default=None, help="model dtype: auto (bfloat16 on CUDA, float32 on CPU), float32, bfloat16, float16"
    )
    parser.add_argument(
        "--ray",
        dest="address",
        nargs="?",
        const=AUTO,
        metavar="ADDRESS",
        help="record on the workers of a Ray cluster (needs `pip install 'autointerp[ray]'`): a running cluster's "
        f"HOST:PORT or ray://HOST:PORT, or `{AUTO}` (the default when ADDRESS is left out) for a local cluster; "
        "the store is written by this process only",
    )
    parser.add_argument(
        "--ray-workers", dest="workers", type=int, help="Ray workers, one model each (default: one per GPU of the cluster, else one per CPU)"
    )


def run(args: argparse.Namespace) -> int:
    cfg = CollectConfig(
        model=args.model,
        layer=args.layer,
        features=args.features,
        dataset=args.dataset,
        tokens=args.tokens,
        context_len=args.context_len,
        source=args.source,
        text_column=args.text_column,
        top_k_per_token=args.top_k_per_token,
        batch_size=args.batch_size,
        chunk_tokens=args.chunk_tokens,
        device=args.device,
        dtype=args.dtype,
    )
    if args.address is None:
        if args.workers is not None:
            raise AutointerpError("`workers` needs `address`")
        report = collect(Store(args.db, create=True), cfg)
    else:
        report = collect_on_ray(Store(args.db, create=True), cfg, address=args.address, workers=args.workers)
    if report.already_complete:
        print(f"source {report.source!r} is already complete: {report.n_tokens:,} tokens in {args.db}")
        return 0
    print(
        f"source {report.source!r}: {report.n_tokens:,} tokens in {report.n_contexts:,} contexts "
        f"({report.new_tokens:,} new, {report.new_activations:,} activations, "
        f"{report.tokens_per_second:,.0f} tokens/s; finalised in {report.finalize_seconds:.1f} s) -> {args.db}"
    )
    if report.n_tokens < cfg.tokens - cfg.tokens % cfg.context_len:
        print(f"the dataset ran out after {report.n_tokens:,} of the {cfg.tokens:,} tokens asked for")
    return 0
