"""A small labeled catalog built through the public store and catalog API: two sources with planted
features, labels (with real MiniLM embeddings), scores, a second label for some features, a run with
LLM calls, and hostile strings (script tags, attribute breakers) in contexts and in a label.
"""

from __future__ import annotations

import atexit
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

import numpy as np
import pyarrow as pa

from autointerp.catalog import write_label
from autointerp.records import Explanation, Score
from autointerp.store import Store, migrations
from autointerp.store.activations import append_chunk, create_source, finalize_source
from autointerp.store.db import migrate
from autointerp.store.jobs import create_run, update_run
from autointerp.store.llm_calls import LLMCall, insert_calls

SCRIPT = "<script>alert(1)</script>"
IMG = '"><img src=x onerror=alert(1)>'
HOSTILE_LABEL = f"markup {SCRIPT} and {IMG} injection"

FILLER = "the of and to in is was for on that with as by at it from this be are or an which have not".split()

# feature -> (trigger tokens, labels as (text, detection balanced accuracy)); the first label is the older one.
SOURCE_A = "toy-L0"
SOURCE_B = "toy-L1"
FEATURES_A: dict[int, tuple[list[str], list[tuple[str, float]]]] = {
    0: (["dog", "puppy"], [("dogs and puppies", 0.91)]),
    1: (["stock", "shares"], [("stock market shares and trading", 0.84)]),
    2: (["for", "range"], [("python for loops over a range", 0.62), ("loop keywords in code", 0.71)]),
    3: ([")", "]"], [("closing brackets and parentheses", 0.77)]),
    4: (["7", "42"], [("numbers written with digits", 0.55)]),
    5: (["river", "lake"], [("rivers lakes and streams", 0.80)]),
    6: ([SCRIPT, IMG], [(HOSTILE_LABEL, 0.66)]),
    7: (["red", "green"], [("colour words like red and green", 0.73)]),
    8: (["kettle"], [("kitchen kettle", 0.40), ("kettles and teapots", 0.45)]),
    9: (["violin"], [("violin", 0.58)]),
}
FEATURES_B: dict[int, tuple[list[str], list[tuple[str, float]]]] = {
    0: (["cat", "kitten"], [("cats and kittens", 0.88)]),
    1: (["bank"], [("banks and money deposits", 0.69)]),
}
RUN_ID = "run-test-1"
N_CONTEXTS = 80
CONTEXT_LEN = 12


def _source_tables(features: dict, seed: int) -> tuple[pa.Table, pa.Table]:
    rng = np.random.default_rng(seed)
    triggers = [(f, tok) for f, (toks, _) in features.items() for tok in toks]
    rows, acts = [], []
    for c in range(N_CONTEXTS):
        tokens = [str(w) for w in rng.choice(FILLER, CONTEXT_LEN)]
        for _ in range(2):  # two trigger tokens per context, features round-robin so each fires often
            f, tok = triggers[(c * 2 + _) % len(triggers)]
            tokens[int(rng.integers(0, CONTEXT_LEN))] = tok
        for pos, tok in enumerate(tokens):
            for f, (toks, _) in features.items():
                if tok in toks:
                    acts.append((f, c, pos, float(1.0 + 4.0 * rng.random())))
        rows.append(tokens)
    offsets = pa.array(np.arange(0, N_CONTEXTS * CONTEXT_LEN + 1, CONTEXT_LEN, dtype=np.int32))
    flat = [t for r in rows for t in r]
    contexts = pa.table(
        {
            "context_id": np.arange(N_CONTEXTS, dtype=np.int64),
            "token_ids": pa.ListArray.from_arrays(offsets, pa.array(np.zeros(len(flat), dtype=np.int32))),
            "tokens": pa.ListArray.from_arrays(offsets, pa.array(flat, pa.string())),
            "document_id": np.arange(N_CONTEXTS, dtype=np.int64),
            "doc_offset": np.zeros(N_CONTEXTS, dtype=np.int32),
        }
    )
    f, c, p, v = zip(*acts)
    activations = pa.table(
        {
            "feature": np.array(f, dtype=np.int32),
            "context_id": np.array(c, dtype=np.int64),
            "pos": np.array(p, dtype=np.int16),
            "value": np.array(v, dtype=np.float32),
        }
    )
    return contexts, activations


def _add_source(store: Store, name: str, layer: int, features: dict, seed: int) -> None:
    with store.writing() as con:
        info = create_source(
            con, name, model="toy", hookpoint=f"layers.{layer}.mlp", layer=layer, feature_kind="neurons",
            width=len(features), context_len=CONTEXT_LEN, config={"seed": seed},
        )
    contexts, activations = _source_tables(features, seed)
    with store.writing() as con:
        append_chunk(con, info.source_id, 0, contexts, activations, N_CONTEXTS * CONTEXT_LEN, {})
        finalize_source(con, info.source_id)


def _scores(value: float) -> list[Score]:
    return [
        Score("detection", "balanced_accuracy", value, value - 0.1, min(value + 0.1, 1.0), 40, scorer_model="local:smollm2"),
        Score("detection", "balanced_accuracy", value - 0.05, value - 0.2, value + 0.05, 20, subset="hard_negatives"),
        Score("embedding", "auroc", 1.0 - value / 2, 0.3, 0.9, 40),
    ]


def build_catalog(path: str | Path, labels: bool = True) -> Store:
    """Create the catalog at `path` and return its Store (not holding a connection).
    labels=False: the sources only, as a target for importing labels."""
    store = Store(path, create=True)
    _add_source(store, SOURCE_A, 0, FEATURES_A, seed=1)
    _add_source(store, SOURCE_B, 1, FEATURES_B, seed=2)
    if not labels:
        return store
    with store.writing() as con:
        create_run(con, RUN_ID, "label", {"explainer": "local"}, "cfg-hash", n_total=12)
        for source, features in ((SOURCE_A, FEATURES_A), (SOURCE_B, FEATURES_B)):
            for feature, (_, labels) in features.items():
                for text, value in labels:
                    write_label(
                        con,
                        Explanation(source, feature, text, explainer_model="local:smollm2", prompt_name="highlight.v1",
                                    prompt_hash="abc123"),
                        _scores(value),
                        run_id=RUN_ID,
                        config_hash="cfg-hash",
                        sampling_config={"n_train_top": 10},
                        seed=0,
                    )
        insert_calls(
            con,
            [
                LLMCall("k1", "local", "smollm2", "explain", RUN_ID, {"prompt": SCRIPT}, {"text": IMG}, 120, 15, 0.0, 80.0),
                LLMCall("k2", "openai", "gpt-test", "detection", RUN_ID, {}, {}, 300, 5, 0.0021, 120.0),
            ],
        )
        update_run(con, RUN_ID, status="done", n_done=12, prompt_tokens=420, completion_tokens=20, cost_usd=0.0021, ended=True)
    return store


_built: dict[bool, Path] = {}


def catalog_copy(directory: str | Path, labels: bool = True) -> Path:
    """A fresh copy of the catalog in `directory`; built once per test session, then copied (fast)."""
    if labels not in _built:
        folder = Path(tempfile.mkdtemp(prefix="autointerp-catalog-"))
        atexit.register(shutil.rmtree, folder, True)
        _built[labels] = folder / "catalog.duckdb"
        build_catalog(_built[labels], labels=labels)
    target = Path(directory) / ("catalog.duckdb" if labels else "sources.duckdb")
    shutil.copy(_built[labels], target)
    return target


@contextmanager
def store_of_an_older_version(path: str | Path, monkeypatch, first_missing: str) -> Iterator[duckdb.DuckDBPyConnection]:
    """A connection to a new store at `path` with the migrations before `first_missing` only, as an older
    version left it; after the block it is closed and the whole migration list is back."""
    before = [m for m in migrations.MIGRATIONS if m[0] < first_missing]
    monkeypatch.setattr(migrations, "MIGRATIONS", before)
    monkeypatch.setattr("autointerp.store.db.MIGRATIONS", before)
    con = duckdb.connect(str(path))
    try:
        migrate(con)
        yield con
    finally:
        con.close()
        monkeypatch.undo()
