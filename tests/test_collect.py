"""Collecting MLP neuron activations of the bundled model into a real store: values, resume, CLI."""

import contextlib
import itertools

import numpy as np
import pytest
import torch

from autointerp.cli import main
from autointerp.collect.collector import (
    CollectConfig,
    TokenPieces,
    collect,
    iter_contexts,
)
from autointerp.collect.models import load_subject_model
from autointerp.errors import AutointerpError
from autointerp.store import Store

LAYER = 6
SMALL = dict(layer=LAYER, dataset="stdlib-docs", tokens=256, context_len=32, batch_size=4, chunk_tokens=64)


def stored(store):
    con = store.con
    contexts = con.execute(
        "SELECT context_id, token_ids, tokens, document_id, doc_offset FROM contexts ORDER BY context_id"
    ).fetchall()
    acts = con.execute("SELECT context_id, pos, feature, value FROM activations ORDER BY ALL").fetchall()
    return contexts, acts


class _Enough(Exception):
    pass


def reference_neurons(subject, token_ids, batch_size):
    """Neuron activations computed directly, act(gate(x)) * up(x), from the MLP's input in a plain forward pass.

    The pass stops after the layer only to keep the test fast; nothing after it affects these values.
    """
    mlp = subject.model.model.layers[LAYER].mlp
    seen = []

    def keep_input_and_stop(module, args):
        seen.append(args[0])
        raise _Enough

    handle = mlp.register_forward_pre_hook(keep_input_and_stop)
    try:
        with torch.no_grad():
            for b in range(0, len(token_ids), batch_size):
                with contextlib.suppress(_Enough):
                    subject.model(torch.tensor(token_ids[b : b + batch_size]))
            x = torch.cat(seen)
            return (mlp.act_fn(mlp.gate_proj(x)) * mlp.up_proj(x)).numpy()
    finally:
        handle.remove()


@pytest.mark.parametrize("top_k", [32, 1000, 0])  # 1000 of 1536: the top k holds negative values too
def test_neuron_values_equal_a_direct_forward_pass(tmp_path, subject, top_k):
    store = Store(tmp_path / "s.duckdb", create=True)
    report = collect(store, CollectConfig(**SMALL, top_k_per_token=top_k), subject=subject, progress=False)
    assert (report.n_contexts, report.n_tokens, report.new_tokens) == (8, 256, 256)
    contexts, acts = stored(store)
    assert [c[0] for c in contexts] == list(range(8))
    token_ids = [c[1] for c in contexts]
    assert all(len(t) == 32 for t in token_ids)
    assert [c[2] for c in contexts] == [TokenPieces(subject.tokenizer)(t) for t in token_ids]

    want = reference_neurons(subject, token_ids, batch_size=4)  # [contexts, pos, neurons]
    if top_k:
        kth = -np.sort(-want, axis=-1)[..., top_k - 1 : top_k]
        want = np.where((want >= kth) & (want > 0), want, 0)
    else:
        want = np.where(want > 0, want, 0)
    got = np.zeros_like(want)
    ctx, pos, feat, val = (np.array(col) for col in zip(*acts))
    got[ctx, pos, feat] = val
    assert len(acts) == (want > 0).sum()
    np.testing.assert_array_equal(got > 0, want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)
    if top_k:
        assert np.all((got > 0).sum(-1) <= top_k)
    if top_k == 32:
        assert (got > 0).sum() > 0.9 * 256 * top_k


def test_contexts_are_non_overlapping_windows_of_each_document(subject):
    docs = [(0, "alpha beta gamma delta " * 20), (3, "short"), (5, "one two three four five six seven " * 10)]
    contexts = list(iter_contexts(iter(docs), subject.tokenizer, 16))
    for doc_id, text in docs:
        ids = subject.tokenizer(text, add_special_tokens=False).input_ids
        mine = [c for c in contexts if c.document_id == doc_id]
        assert [c.doc_offset for c in mine] == list(range(0, len(ids) - 15, 16))
        assert all(c.token_ids == ids[c.doc_offset : c.doc_offset + 16] for c in mine)
    resumed = list(iter_contexts(iter(docs), subject.tokenizer, 16, start=(0, 32)))
    assert resumed == [c for c in contexts if (c.document_id, c.doc_offset) >= (0, 32)]
    with_bos = list(itertools.islice(iter_contexts(iter(docs), subject.tokenizer, 16, bos=True), 3))
    assert all(c.token_ids[0] == subject.tokenizer.bos_token_id and len(c.token_ids) == 16 for c in with_bos)
    assert [c.doc_offset for c in with_bos] == [0, 15, 30]


def test_a_killed_run_resumes_to_the_same_rows(tmp_path, subject):
    cfg = CollectConfig(**SMALL)
    whole = Store(tmp_path / "whole.duckdb", create=True)
    collect(whole, cfg, subject=subject, progress=False)

    def kill_after_first_chunk(index):
        if index == 0:
            raise KeyboardInterrupt

    resumed = Store(tmp_path / "resumed.duckdb", create=True)
    with pytest.raises(KeyboardInterrupt):
        collect(resumed, cfg, subject=subject, on_chunk=kill_after_first_chunk, progress=False)
    assert resumed.con.execute("SELECT count(*), max(chunk_index) FROM collection_chunks").fetchone() == (1, 0)
    assert resumed.con.execute("SELECT status FROM sources").fetchone() == ("collecting",)
    resumed.close()

    report = collect(resumed, cfg, subject=subject, progress=False)
    assert (report.already_complete, report.new_tokens, report.n_tokens) == (False, 192, 256)
    assert stored(resumed) == stored(whole)
    con = resumed.con
    assert con.execute("SELECT list(chunk_index ORDER BY chunk_index) FROM collection_chunks").fetchone() == ([0, 1, 2, 3],)
    assert con.execute(
        "SELECT count(*) = count(DISTINCT (context_id, pos, feature)) FROM activations"
    ).fetchone() == (True,)
    assert con.execute("SELECT status FROM sources").fetchone() == ("ready",)
    assert con.execute("SELECT count(*) FROM feature_stats").fetchone()[0] > 100

    again = collect(resumed, cfg, subject=subject, progress=False)
    assert (again.already_complete, again.new_tokens) == (True, 0)


def test_a_short_corpus_stops_when_exhausted(tmp_path, subject):
    path = tmp_path / "tiny.txt"
    path.write_text(("The cat sat on the mat. " * 12 + "\n\n") * 3)
    store = Store(tmp_path / "s.duckdb", create=True)
    cfg = CollectConfig(layer=LAYER, dataset=str(path), tokens=10_000, context_len=32, chunk_tokens=64)
    report = collect(store, cfg, subject=subject, progress=False)
    assert 3 <= report.n_contexts < 10_000 // 32
    assert store.con.execute("SELECT count(DISTINCT document_id) FROM contexts").fetchone() == (3,)
    again = collect(store, cfg, subject=subject, progress=False)
    assert again.already_complete and again.n_contexts == report.n_contexts


def test_user_errors(tmp_path, subject, monkeypatch):
    store = Store(tmp_path / "s.duckdb", create=True)
    with pytest.raises(AutointerpError, match=r"layer 99 does not exist.*0\.\.29"):
        collect(store, CollectConfig(**{**SMALL, "layer": 99}), subject=subject, progress=False)
    with pytest.raises(AutointerpError, match="`layer` is required"):
        collect(store, CollectConfig(**{**SMALL, "layer": None}), subject=subject, progress=False)
    with pytest.raises(AutointerpError, match="unknown `features`"):
        collect(store, CollectConfig(**SMALL, features="heads"), subject=subject, progress=False)
    with pytest.raises(AutointerpError, match="`context_len`"):
        collect(store, CollectConfig(**{**SMALL, "tokens": 16}), subject=subject, progress=False)
    with pytest.raises(AutointerpError, match="does not exist"):
        collect(store, CollectConfig(**{**SMALL, "dataset": str(tmp_path / "none.txt")}), subject=subject, progress=False)
    assert store.con.execute("SELECT count(*) FROM sources").fetchone() == (0,)  # no half-made source left behind
    store.close()
    collect(store, CollectConfig(**{**SMALL, "tokens": 64}), subject=subject, progress=False)
    with pytest.raises(AutointerpError, match="already exists with different settings"):
        collect(store, CollectConfig(**{**SMALL, "tokens": 96}), subject=subject, progress=False)
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    with pytest.raises(AutointerpError, match="smollm2"):
        load_subject_model("some-org/some-model")


def test_cli_collects_then_says_complete(tmp_path, capsys):
    db = tmp_path / "cli.duckdb"
    args = ["collect", "--db", str(db), "--model", "smollm2", "--layer", "2", "--features", "neurons",
            "--dataset", "stdlib-docs", "--tokens", "128", "--context-len", "32", "--top-k-per-token", "4"]
    assert main(args) == 0
    assert "source 'smollm2-L2-neurons': 128 tokens in 4 contexts" in capsys.readouterr().out
    assert main(args) == 0
    assert "already complete" in capsys.readouterr().out
    assert main([*args[:-2], "--top-k-per-token", "-1"]) == 2
    assert "`--top-k-per-token` must be 0" in capsys.readouterr().err
