"""Small synthetic stores with planted, known features, built through the public store API.

Structure (all deterministic for a seed):
- tokens are common English filler words plus one trigger word per feature: `trigger_word(f)`;
- feature f fires only on its trigger word, on ~80% of its occurrences (so hard negatives exist: contexts
  holding the trigger where f stays silent), with values spread over 1..5 (so quantiles mean something);
- trigger frequencies fall off Zipf-like with the feature index, so densities differ;
- the last feature is sparse: its trigger appears in exactly `SPARSE_CONTEXTS` contexts;
- every `DUPLICATE_EVERY`-th context repeats the previous one (tokens and activations): near-duplicates.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa

from autointerp.store import Store
from autointerp.store.activations import append_chunk, create_source, finalize_source

FILLER_WORDS = (
    "the of and to in is was for on that with as by at it from this be are or an which have not "
    "but had they his her she he we you one all were there their been has when who will more no if "
    "out so said what up its about into than them can only other new some could time these two may "
    "then do first any my now such like our over man me even most made after also did many before "
    "must through back years where much your way well down should because each just those people"
).split()

TRIGGER_WORDS = (
    "dog river green seven kettle violin copper autumn lemon whisper harbor pencil thunder marble "
    "saddle orbit velvet canyon pepper lantern falcon cobalt meadow anchor tulip glacier compass "
    "ember walnut quartz"
).split()

FIRE_PROBABILITY = 0.8
SPARSE_CONTEXTS = 3
DUPLICATE_EVERY = 20
CHUNK_CONTEXTS = 1000


def trigger_word(feature: int) -> str:
    """The token that planted feature `feature` fires on."""
    return TRIGGER_WORDS[feature] if feature < len(TRIGGER_WORDS) else f"trigger{feature}"


def make_synthetic_store(
    path: str | Path,
    n_contexts: int = 400,
    n_features: int = 8,
    context_len: int = 16,
    seed: int = 0,
    source: str = "synthetic",
) -> Store:
    """Create (or extend) a store at `path` holding one finalized source with planted features."""
    if n_features < 2:
        raise ValueError("need at least 2 features (the last one is the sparse one)")
    rng = np.random.default_rng(seed)
    vocab = np.array(FILLER_WORDS + [trigger_word(f) for f in range(n_features)], dtype=object)
    n_filler = len(FILLER_WORDS)

    filler_p = 1.0 / np.arange(1, n_filler + 1)
    tokens = rng.choice(n_filler, size=(n_contexts, context_len), p=filler_p / filler_p.sum())
    # Dense features (all but the last): ~1.5 trigger insertions per context, Zipf over features.
    dense = n_features - 1
    feature_p = 1.0 / np.arange(1, dense + 1) ** 0.8
    n_inserts = int(1.5 * n_contexts)
    rows = rng.integers(0, n_contexts, n_inserts)
    cols = rng.integers(0, context_len, n_inserts)
    tokens[rows, cols] = n_filler + rng.choice(dense, size=n_inserts, p=feature_p / feature_p.sum())
    sparse_rows = rng.choice(n_contexts, size=min(SPARSE_CONTEXTS, n_contexts), replace=False)
    tokens[sparse_rows, rng.integers(0, context_len, len(sparse_rows))] = n_filler + dense

    trigger_feature = tokens - n_filler  # >= 0 where the token is a trigger
    fires = (trigger_feature >= 0) & (rng.random(tokens.shape) < FIRE_PROBABILITY)
    fires[sparse_rows] |= trigger_feature[sparse_rows] == dense  # the sparse feature always fires
    values = np.where(fires, 1.0 + 4.0 * rng.random(tokens.shape), 0.0).astype(np.float32)

    dup = np.arange(DUPLICATE_EVERY, n_contexts, DUPLICATE_EVERY)
    dup = dup[~np.isin(dup, sparse_rows) & ~np.isin(dup - 1, sparse_rows)]
    tokens[dup], values[dup], trigger_feature[dup] = tokens[dup - 1], values[dup - 1], trigger_feature[dup - 1]

    store = Store(path, create=True)
    with store.writing() as con:
        info = create_source(
            con,
            source,
            model="synthetic",
            hookpoint="planted",
            layer=0,
            feature_kind="synthetic",
            width=n_features,
            context_len=context_len,
            config={"seed": seed, "n_contexts": n_contexts, "n_features": n_features},
        )
    for chunk_index, start in enumerate(range(0, n_contexts, CHUNK_CONTEXTS)):
        stop = min(start + CHUNK_CONTEXTS, n_contexts)
        contexts, activations = _chunk_tables(vocab, tokens[start:stop], values[start:stop], trigger_feature[start:stop], start)
        with store.writing() as con:
            append_chunk(con, info.source_id, chunk_index, contexts, activations, (stop - start) * context_len, {"next": stop})
    with store.writing() as con:
        finalize_source(con, info.source_id)
    return store


def _chunk_tables(vocab, tokens, values, trigger_feature, first_context: int) -> tuple[pa.Table, pa.Table]:
    n, length = tokens.shape
    context_ids = np.arange(first_context, first_context + n, dtype=np.int64)
    offsets = pa.array(np.arange(0, n * length + 1, length, dtype=np.int32))
    contexts = pa.table(
        {
            "context_id": context_ids,
            "token_ids": pa.ListArray.from_arrays(offsets, pa.array(tokens.ravel().astype(np.int32))),
            "tokens": pa.ListArray.from_arrays(offsets, pa.array(vocab[tokens.ravel()].tolist(), pa.string())),
            "document_id": context_ids // 10,
            "doc_offset": ((context_ids % 10) * length).astype(np.int32),
        }
    )
    ctx, pos = np.nonzero(values)
    activations = pa.table(
        {
            "feature": trigger_feature[ctx, pos].astype(np.int32),
            "context_id": context_ids[ctx],
            "pos": pos.astype(np.int16),
            "value": values[ctx, pos],
        }
    )
    return contexts, activations
