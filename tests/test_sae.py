"""SAE loading and encoding against numpy references, on real residual activations of the bundled model.

The references follow SAELens (standard/ReLU, TopK then ReLU, JumpReLU) and sparsify (ReLU then TopK);
the random SAEs are written to disk in each library's file format.
"""

import itertools
import json

import numpy as np
import pytest
import torch
from safetensors.numpy import save_file

from autointerp.collect.collector import CollectConfig, collect, iter_contexts
from autointerp.collect.corpora import iter_documents
from autointerp.collect.features import load_sae
from autointerp.errors import AutointerpError
from autointerp.store import Store

LAYER = 3
D_SAE = 96
K = 8


@pytest.fixture(scope="module")
def resid(subject):
    """Residual stream after LAYER for 8 contexts of 32 tokens, from a plain full forward pass."""
    contexts = list(itertools.islice(iter_contexts(iter_documents("stdlib-docs"), subject.tokenizer, 32), 8))
    ids = torch.tensor([c.token_ids for c in contexts])
    with torch.no_grad():
        hidden = subject.model(ids, output_hidden_states=True).hidden_states[LAYER + 1]
    return hidden.reshape(-1, subject.d_model).numpy()


@pytest.fixture(scope="module")
def weights(resid):
    """Random SAE weights scaled to the real activations, so that some latents fire and most do not."""
    rng = np.random.default_rng(0)
    d = resid.shape[1]
    b_dec = resid.mean(0).astype(np.float32)
    W_enc = (rng.normal(size=(d, D_SAE)) / np.sqrt(d) / resid.std()).astype(np.float32)
    pre_std = ((resid - b_dec) @ W_enc).std()
    return {
        "W_enc": W_enc,
        "b_enc": (rng.normal(size=D_SAE) * pre_std - pre_std).astype(np.float32),
        "W_dec": rng.normal(size=(D_SAE, d)).astype(np.float32),
        "b_dec": b_dec,
        "threshold": np.abs(rng.normal(size=D_SAE) * pre_std).astype(np.float32),
    }


def top_k_positive(pre, k):
    out = np.zeros_like(pre)
    idx = np.argpartition(-pre, k - 1, axis=-1)[:, :k]
    np.put_along_axis(out, idx, np.maximum(np.take_along_axis(pre, idx, -1), 0), -1)
    return out


def saelens_reference(x, w, architecture, *, k=None, apply_b_dec=True, rescale=False):
    x = x.astype(np.float64)
    pre = (x - w["b_dec"] if apply_b_dec else x) @ w["W_enc"] + w["b_enc"]
    if architecture == "standard":
        return np.maximum(pre, 0)
    if architecture == "jumprelu":
        return np.maximum(pre, 0) * (pre > np.maximum(w["threshold"], 0))
    if rescale:
        pre = pre * np.linalg.norm(w["W_dec"].astype(np.float64), axis=-1)
    return top_k_positive(pre, k)


def sparsify_reference(x, w, k):
    pre = np.maximum((x.astype(np.float64) - w["b_dec"]) @ w["W_enc"] + w["b_enc"], 0)
    return top_k_positive(pre, k)


def write_saelens(folder, w, cfg, names=("W_enc", "b_enc", "W_dec", "b_dec")):
    folder.mkdir(parents=True)
    save_file({n: w[n] for n in names}, str(folder / "sae_weights.safetensors"))
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def saelens_cfg(architecture, hook_name=f"blocks.{LAYER}.hook_resid_post", **extra):
    """A config as SAELens 6 saves it: SAE fields at the top, where it was trained under metadata."""
    return {
        "architecture": architecture,
        "d_in": 576,
        "d_sae": D_SAE,
        "dtype": "float32",
        "device": "cpu",
        "apply_b_dec_to_input": True,
        "normalize_activations": "none",
        "reshape_activations": "none",
        "metadata": {"model_name": "smollm2", "hook_name": hook_name, "sae_lens_version": "6.12.1"},
        **extra,
    }


def write_sparsify(folder, w, k=K, **cfg_extra):
    """sparsify's layout: nn.Linear encoder ([latents, d_in]), W_dec, b_dec; folder named after the hookpoint."""
    folder.mkdir(parents=True)
    tensors = {"encoder.weight": np.ascontiguousarray(w["W_enc"].T), "encoder.bias": w["b_enc"], "W_dec": w["W_dec"], "b_dec": w["b_dec"]}
    save_file(tensors, str(folder / "sae.safetensors"))
    cfg = {"activation": "topk", "expansion_factor": 32, "normalize_decoder": True, "num_latents": D_SAE, "k": k,
           "multi_topk": False, "skip_connection": False, "transcode": False, "d_in": 576, **cfg_extra}
    (folder / "cfg.json").write_text(json.dumps(cfg))
    return folder


def dense(sparse, n_rows):
    out = np.zeros((n_rows, D_SAE))
    out[sparse.rows.numpy(), sparse.features.numpy()] = sparse.values.numpy()
    return out


CASES = {
    "saelens-relu": (lambda d, w: write_saelens(d, w, saelens_cfg("standard")), dict(architecture="standard")),
    "saelens-relu-no-b_dec": (
        lambda d, w: write_saelens(d, w, saelens_cfg("standard", apply_b_dec_to_input=False)),
        dict(architecture="standard", apply_b_dec=False),
    ),
    "saelens-jumprelu": (
        lambda d, w: write_saelens(d, w, saelens_cfg("jumprelu"), names=("W_enc", "b_enc", "W_dec", "b_dec", "threshold")),
        dict(architecture="jumprelu"),
    ),
    "saelens-topk": (lambda d, w: write_saelens(d, w, saelens_cfg("topk", k=K)), dict(architecture="topk", k=K)),
    "saelens-topk-rescaled": (
        lambda d, w: write_saelens(d, w, saelens_cfg("topk", k=K, rescale_acts_by_decoder_norm=True)),
        dict(architecture="topk", k=K, rescale=True),
    ),
    # SAELens < 6: TopK as a standard SAE with activation_fn_str, hook names at the top level.
    "saelens-topk-pre6": (
        lambda d, w: write_saelens(
            d,
            w,
            {"architecture": "standard", "activation_fn_str": "topk", "activation_fn_kwargs": {"k": K},
             "hook_name": f"blocks.{LAYER + 1}.hook_resid_pre", "hook_layer": LAYER + 1, "d_in": 576,
             "d_sae": D_SAE, "apply_b_dec_to_input": False, "normalize_activations": "none"},
        ),
        dict(architecture="topk", k=K, apply_b_dec=False),
    ),
}


@pytest.mark.parametrize("case", sorted(CASES))
def test_saelens_encoding_matches_reference(case, tmp_path, resid, weights):
    write, ref_kwargs = CASES[case]
    folder = write(tmp_path / case, weights)
    sae = load_sae(folder, d_model=576)
    assert (sae.layer, sae.width, sae.file_format) == (LAYER, D_SAE, "saelens")
    got = dense(sae.encode(torch.from_numpy(resid)), len(resid))
    want = saelens_reference(resid, weights, **ref_kwargs)
    assert 0.01 < (want > 0).mean() < 0.6, "the random SAE should fire sometimes, not always"
    np.testing.assert_array_equal(got > 0, want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_sparsify_encoding_matches_reference(tmp_path, resid, weights):
    sae = load_sae(write_sparsify(tmp_path / f"layers.{LAYER}", weights), d_model=576)
    assert (sae.layer, sae.width, sae.k, sae.file_format) == (LAYER, D_SAE, K, "sparsify")
    got = dense(sae.encode(torch.from_numpy(resid)), len(resid))
    want = sparsify_reference(resid, weights, K)
    np.testing.assert_array_equal(got > 0, want > 0)
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)


def test_collected_sae_activations_match_reference(tmp_path, subject, weights):
    """End to end: the hook reads the output of the SAE's layer, and every stored row is a reference non-zero."""
    folder = write_saelens(tmp_path / "jr", weights, saelens_cfg("jumprelu"), names=("W_enc", "b_enc", "W_dec", "b_dec", "threshold"))
    cfg = CollectConfig(features=f"sae:{folder}", dataset="stdlib-docs", tokens=256, context_len=32, batch_size=4, chunk_tokens=128)
    store = Store(tmp_path / "s.duckdb", create=True)
    report = collect(store, cfg, subject=subject, progress=False)
    assert report.source == f"smollm2-L{LAYER}-sae-jr" and report.n_tokens == 256
    con = store.con
    ids = torch.tensor([r[0] for r in con.execute("SELECT token_ids FROM contexts ORDER BY context_id").fetchall()])
    with torch.no_grad():
        hidden = subject.model(ids, output_hidden_states=True).hidden_states[LAYER + 1].reshape(-1, 576).numpy()
    want = saelens_reference(hidden, weights, "jumprelu").reshape(len(ids), 32, D_SAE)
    rows = con.execute("SELECT context_id, pos, feature, value FROM activations").fetchnumpy()
    got = np.zeros_like(want)
    got[rows["context_id"], rows["pos"], rows["feature"]] = rows["value"]
    assert len(rows["value"]) == (want > 0).sum() > 0
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-4)
    (kind, width, hookpoint, layer) = con.execute("SELECT feature_kind, width, hookpoint, layer FROM sources").fetchone()
    assert (kind, width, hookpoint, layer) == ("sae", D_SAE, f"model.layers.{LAYER}:output", LAYER)


def test_layer_comes_from_the_sae_and_must_agree_with_layer(tmp_path, weights):
    folder = write_saelens(tmp_path / "a", weights, saelens_cfg("standard"))
    assert load_sae(folder, d_model=576, layer=LAYER).layer == LAYER
    with pytest.raises(AutointerpError, match=f"output of layer {LAYER}, but `layer` is 5"):
        load_sae(folder, d_model=576, layer=5)
    unnamed = write_sparsify(tmp_path / "my-sae", weights)
    assert load_sae(unnamed, d_model=576, layer=7).layer == 7
    with pytest.raises(AutointerpError, match="give the `layer`"):
        load_sae(unnamed, d_model=576)


MALFORMED = {
    "unknown architecture": (lambda d, w: write_saelens(d, w, saelens_cfg("gated")), "unsupported SAELens architecture 'gated'"),
    "not the residual stream": (
        lambda d, w: write_saelens(d, w, saelens_cfg("standard", hook_name="blocks.3.hook_mlp_out")),
        "only the residual stream",
    ),
    "missing tensor": (lambda d, w: write_saelens(d, w, saelens_cfg("standard"), names=("W_enc", "W_dec", "b_dec")), "lack tensor 'b_enc'"),
    "jumprelu without threshold": (lambda d, w: write_saelens(d, w, saelens_cfg("jumprelu")), "'threshold'"),
    "topk without k": (lambda d, w: write_saelens(d, w, saelens_cfg("topk")), "needs k"),
    "bias shape": (
        lambda d, w: write_saelens(d, {**w, "b_enc": w["b_enc"][:-1]}, saelens_cfg("standard")),
        r"'b_enc' has shape \(95,\), expected \(96,\)",
    ),
    "other model": (
        lambda d, w: write_saelens(d, {**w, "W_enc": w["W_enc"][:100], "b_dec": w["b_dec"][:100]}, saelens_cfg("standard", d_in=100)),
        "size 100, but the model's residual stream has size 576",
    ),
    "cfg disagrees with weights": (lambda d, w: write_saelens(d, w, saelens_cfg("standard", d_sae=128)), "d_sae=128"),
    "normalisation": (
        lambda d, w: write_saelens(d, w, saelens_cfg("standard", normalize_activations="expected_average_only_in")),
        "normalize_activations",
    ),
    "transcoder": (lambda d, w: write_sparsify(d / f"layers.{LAYER}", w, transcode=True), "transcoder"),
    "mlp hookpoint": (lambda d, w: write_sparsify(d / f"layers.{LAYER}.mlp", w), "only the residual stream"),
    "groupmax": (lambda d, w: write_sparsify(d / f"layers.{LAYER}", w, activation="groupmax"), "unsupported sparsify activation"),
}


@pytest.mark.parametrize("case", sorted(MALFORMED))
def test_malformed_sae_folders_say_what_is_wrong(case, tmp_path, weights):
    write, message = MALFORMED[case]
    folder = write(tmp_path / "sae", weights)
    with pytest.raises(AutointerpError, match=message):
        load_sae(folder, d_model=576)


def test_missing_files_and_folders(tmp_path, weights):
    with pytest.raises(AutointerpError, match="does not exist"):
        load_sae(tmp_path / "absent", d_model=576)
    (tmp_path / "empty").mkdir()
    with pytest.raises(AutointerpError, match="no cfg.json.*sae_weights.safetensors.*sae.safetensors"):
        load_sae(tmp_path / "empty", d_model=576)
    (tmp_path / "cfg-only").mkdir()
    (tmp_path / "cfg-only" / "cfg.json").write_text("{}")
    with pytest.raises(AutointerpError, match="no weights"):
        load_sae(tmp_path / "cfg-only", d_model=576)
    (tmp_path / "bad-json").mkdir()
    (tmp_path / "bad-json" / "cfg.json").write_text("{nope")
    with pytest.raises(AutointerpError, match="not valid JSON"):
        load_sae(tmp_path / "bad-json", d_model=576)
    write_sparsify(tmp_path / "repo" / "layers.2", weights)
    write_sparsify(tmp_path / "repo" / "layers.3", weights)
    with pytest.raises(AutointerpError, match=r"point at one of them.*layers\.2, layers\.3"):
        load_sae(tmp_path / "repo", d_model=576)
