"""Ingest throughput: activation rows/s into the store via append_chunk + finalize_source, and via import_parquet.

    python -m autointerp.bench.ingest [--rows 10_000_000] [--dir DIR]

Also home of the synthetic activation generator the sampling benchmark builds its store with: a vocabulary of
pseudo-words with Zipf frequencies, 64-token contexts, and features whose densities are log-uniform between
1e-5 and 2e-2 (about 86 active features per token on average), each firing half the time on its own
trigger token and half the time anywhere.
"""

from __future__ import annotations

import argparse
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq

from autointerp.store import Store
from autointerp.store.activations import append_chunk, create_source, finalize_source
from autointerp.store.importing import import_parquet

SYLLABLES = "ka lo mi nu pe ra si to vu ze ba do fi gu he jo ki le mo ne".split()


@dataclass
class SyntheticSource:
    contexts: pa.Table
    n_tokens: int
    n_features: int
    blocks: Iterator[pa.Table]  # activations, grouped in blocks of consecutive features


def _vocab(n: int) -> np.ndarray:
    words = []
    for i in range(n):
        syl = []
        while True:
            i, r = divmod(i, len(SYLLABLES))
            syl.append(SYLLABLES[r])
            if i == 0:
                break
        words.append(" " + "".join(syl))
    return np.array(words, dtype=object)


def synthetic_source(
    rows: int, n_features: int = 32768, context_len: int = 64, vocab_size: int = 20000, seed: int = 0, block_features: int = 2048
) -> SyntheticSource:
    """About `rows` activation rows; contexts sized so that the densities produce that many."""
    rng = np.random.default_rng(seed)
    density = np.exp(rng.uniform(np.log(1e-5), np.log(2e-2), n_features))
    n_contexts = max(1, int(np.ceil(rows / density.sum() / context_len)))
    n_tokens = n_contexts * context_len
    zipf = 1.0 / (np.arange(vocab_size) + 2.7)
    token_ids = rng.choice(vocab_size, size=n_tokens, p=zipf / zipf.sum()).astype(np.int32)
    vocab = _vocab(vocab_size)
    offsets = pa.array(np.arange(0, n_tokens + 1, context_len, dtype=np.int32))
    context_ids = np.arange(n_contexts, dtype=np.int64)
    contexts = pa.table(
        {
            "context_id": context_ids,
            "token_ids": pa.ListArray.from_arrays(offsets, pa.array(token_ids)),
            "tokens": pa.ListArray.from_arrays(offsets, pa.array(vocab[token_ids].tolist(), pa.string())),
            "document_id": context_ids // 16,
            "doc_offset": ((context_ids % 16) * context_len).astype(np.int32),
        }
    )
    by_token = np.argsort(token_ids, kind="stable")
    token_start = np.searchsorted(token_ids[by_token], np.arange(vocab_size + 1))
    triggers = rng.integers(0, min(vocab_size, 5000), n_features)

    def blocks() -> Iterator[pa.Table]:
        for first in range(0, n_features, block_features):
            feats, positions = [], []
            for f in range(first, min(first + block_features, n_features)):
                k = min(rng.binomial(n_tokens, density[f]), n_tokens)
                at_trigger = by_token[token_start[triggers[f]] : token_start[triggers[f] + 1]]
                k_trigger = min(k // 2, len(at_trigger))
                pos = np.unique(
                    np.concatenate([rng.choice(at_trigger, k_trigger, replace=False), rng.integers(0, n_tokens, k - k_trigger)])
                )
                feats.append(np.full(len(pos), f, dtype=np.int32))
                positions.append(pos)
            pos = np.concatenate(positions)
            yield pa.table(
                {
                    "feature": np.concatenate(feats),
                    "context_id": (pos // context_len).astype(np.int64),
                    "pos": (pos % context_len).astype(np.int16),
                    "value": (rng.exponential(1.0, len(pos)) + 0.05).astype(np.float32),
                }
            )

    return SyntheticSource(contexts=contexts, n_tokens=n_tokens, n_features=n_features, blocks=blocks())


def build_store(path: Path, rows: int, seed: int = 0, source: str = "bench") -> dict[str, float]:
    """Write a synthetic source through append_chunk (contexts with the first block) and finalize it; timings."""
    data = synthetic_source(rows, seed=seed)
    store = Store(path, create=True)
    _ = store.con  # hold one connection, as a collection job does, so each chunk is one transaction and no reopen
    with store.writing() as con:
        sid = create_source(
            con, source, model="synthetic", hookpoint="bench", layer=0, feature_kind="synthetic",
            width=data.n_features, context_len=64, config={"rows": rows, "seed": seed},
        ).source_id
    empty_contexts = data.contexts.slice(0, 0)
    n_rows, append_s, generate_s = 0, 0.0, 0.0
    t = time.perf_counter()
    for i, block in enumerate(data.blocks):
        generate_s += time.perf_counter() - t
        t = time.perf_counter()
        with store.writing() as con:
            append_chunk(con, sid, i, data.contexts if i == 0 else empty_contexts, block, data.n_tokens if i == 0 else 0, {"block": i})
        append_s += time.perf_counter() - t
        n_rows += block.num_rows
        t = time.perf_counter()
    t = time.perf_counter()
    with store.writing() as con:
        finalize_source(con, sid)
    finalize_s = time.perf_counter() - t
    store.close()
    return {"rows": n_rows, "contexts": data.contexts.num_rows, "generate_s": generate_s, "append_s": append_s, "finalize_s": finalize_s}


def write_parquet(directory: Path, rows: int, seed: int = 0) -> tuple[Path, Path, int]:
    data = synthetic_source(rows, seed=seed)
    contexts, activations = directory / "contexts.parquet", directory / "activations.parquet"
    pq.write_table(data.contexts.select(["context_id", "tokens", "token_ids"]), contexts)
    n = 0
    with pq.ParquetWriter(activations, pa.schema([("feature", pa.int32()), ("context_id", pa.int64()), ("pos", pa.int16()), ("value", pa.float32())])) as writer:
        for block in data.blocks:
            writer.write_table(block)
            n += block.num_rows
    return contexts, activations, n


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=lambda s: int(s.replace("_", "")), default=10_000_000)
    parser.add_argument("--dir", type=Path, default=None, help="work folder (default: a temporary one, removed after)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory(dir=args.dir) as tmp:
        tmp = Path(tmp)
        r = build_store(tmp / "append.duckdb", args.rows)
        total = r["append_s"] + r["finalize_s"]
        print(f"append_chunk + finalize_source: {r['rows']:,} rows, {r['contexts']:,} contexts")
        print(f"  append_chunk      {r['append_s']:8.2f} s  {r['rows'] / r['append_s'] / 1e6:7.2f} M rows/s")
        print(f"  finalize_source   {r['finalize_s']:8.2f} s  {r['rows'] / r['finalize_s'] / 1e6:7.2f} M rows/s")
        print(f"  together          {total:8.2f} s  {r['rows'] / total / 1e6:7.2f} M rows/s")
        contexts, activations, _ = write_parquet(tmp, args.rows)
        t = time.perf_counter()
        with Store(tmp / "import.duckdb", create=True) as store:
            report = import_parquet(store, "bench", contexts, activations)
        seconds = time.perf_counter() - t
        print(f"import_parquet (validate + load + finalize): {report.n_activations:,} rows")
        print(f"  import_parquet    {seconds:8.2f} s  {report.n_activations / seconds / 1e6:7.2f} M rows/s")
        print(f"  ratio import / append+finalize time: {seconds / total:.2f}")


if __name__ == "__main__":
    main()
