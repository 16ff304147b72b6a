"""Collection throughput against a bare forward pass through the same layers on the same batches.

    python -m autointerp.bench.collection [--tokens 32768] [--layer 6] [--features neurons] [--repeats 3]

The bare pass runs the subject model up to the hooked layer and discards the result. The collection runs
`collect()` into a fresh store: tokenizing, the same forward passes, sparse extraction, Arrow tables and one
transaction per chunk. Its loop time is compared with the bare time (target: at most 15% overhead); the
finalize step (sorting, statistics) is reported apart because it runs once per source, not per token.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from pathlib import Path

import torch

from autointerp.collect.collector import (
    CollectConfig,
    LayerReader,
    collect,
    iter_contexts,
    load_features,
    prepends_bos,
)
from autointerp.collect.corpora import iter_documents
from autointerp.collect.models import SubjectModel, load_subject_model
from autointerp.store import Store


def bare_forward_seconds(subject: SubjectModel, cfg: CollectConfig) -> tuple[float, float]:
    """(wall, process CPU) seconds to run the batches `collect` would run, up to the hooked layer, keeping nothing."""
    features = load_features(cfg, subject)
    documents = iter_documents(cfg.dataset, text_column=cfg.text_column)
    contexts = iter_contexts(documents, subject.tokenizer, cfg.context_len, bos=prepends_bos(subject.tokenizer))
    ids = torch.tensor([c.token_ids for c in itertools.islice(contexts, cfg.tokens // cfg.context_len)])
    batches = [b.to(subject.device) for b in ids.split(cfg.batch_size)]
    with LayerReader(subject, features) as reader:
        reader(batches[0])  # warm-up, as collect's own first batch is not
        _sync(subject)
        start, cpu_start = time.perf_counter(), time.process_time()
        for batch in batches:
            reader(batch)
        _sync(subject)
        return time.perf_counter() - start, time.process_time() - cpu_start


def _sync(subject: SubjectModel) -> None:
    if subject.device.type == "cuda":
        torch.cuda.synchronize(subject.device)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", default="smollm2")
    parser.add_argument("--layer", type=int, default=6)
    parser.add_argument("--features", default="neurons")
    parser.add_argument("--dataset", default="stdlib-docs")
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--context-len", type=int, default=64)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--chunk-tokens", type=int, default=16384)
    parser.add_argument("--top-k-per-token", type=int, default=32)
    parser.add_argument("--device", default=None)
    parser.add_argument("--dtype", default=None)
    parser.add_argument("--repeats", type=int, default=1, help="alternate bare and collect runs; medians are printed")
    args = parser.parse_args(argv)
    cfg = CollectConfig(
        model=args.model,
        layer=args.layer,
        features=args.features,
        dataset=args.dataset,
        tokens=args.tokens,
        context_len=args.context_len,
        batch_size=args.batch_size,
        chunk_tokens=args.chunk_tokens,
        top_k_per_token=args.top_k_per_token,
        device=args.device,
        dtype=args.dtype,
    )
    subject = load_subject_model(cfg.model, cfg.device, cfg.dtype)
    print(
        f"model {cfg.model} ({subject.dtype}, {subject.device}, {torch.get_num_threads()} threads), "
        f"layer {cfg.layer} {cfg.features}, {cfg.tokens} tokens of {cfg.dataset}, "
        f"batches of {cfg.batch_size}x{cfg.context_len}, chunks of {cfg.chunk_tokens} tokens"
    )
    tokens = cfg.tokens // cfg.context_len * cfg.context_len
    bare, bare_cpu, loop, loop_cpu, final = [], [], [], [], []
    for i in range(args.repeats):
        wall, cpu = bare_forward_seconds(subject, cfg)
        bare.append(wall)
        bare_cpu.append(cpu)
        with tempfile.TemporaryDirectory() as tmp:
            report = collect(Store(Path(tmp) / "bench.duckdb", create=True), cfg, subject=subject, progress=False)
        loop.append(report.seconds)
        loop_cpu.append(report.cpu_seconds)
        final.append(report.finalize_seconds)
        print(
            f"  run {i + 1}: bare {tokens / wall:,.0f} tok/s, collect {report.tokens_per_second:,.0f} tok/s "
            f"(wall ratio {report.seconds / wall:.3f}, CPU-time ratio {report.cpu_seconds / cpu:.3f}), "
            f"{report.new_activations:,} activations, finalize {report.finalize_seconds:.2f} s"
        )
    bare_s, loop_s, final_s = statistics.median(bare), statistics.median(loop), statistics.median(final)
    cpu_ratio = statistics.median(c / b for c, b in zip(loop_cpu, bare_cpu))
    print(f"bare forward to layer {cfg.layer}:  {tokens / bare_s:>10,.0f} tokens/s")
    print(f"collection (loop):           {tokens / loop_s:>10,.0f} tokens/s")
    print(f"collection incl. finalize:   {tokens / (loop_s + final_s):>10,.0f} tokens/s")
    print(f"overhead, wall time:         {loop_s / bare_s:.3f}x ({(loop_s / bare_s - 1) * 100:+.1f}%; target <= +15%)")
    print(f"overhead, CPU time:          {cpu_ratio:.3f}x ({(cpu_ratio - 1) * 100:+.1f}%; steadier on a shared machine)")


if __name__ == "__main__":
    main()
