"""Feature sources: what is read from the subject model at a layer and how it becomes sparse activations.

- MLP neurons: the input of layer L's MLP output projection (for gated MLPs, act(gate) * up). Neurons are
  dense and signed; each token keeps its `top_k` largest positive values (0 keeps every positive value).
- Residual-stream SAEs on the output of layer L, from a folder in the SAELens format (cfg.json +
  sae_weights.safetensors; standard/ReLU, TopK, JumpReLU) or the EleutherAI sparsify format (cfg.json +
  sae.safetensors; TopK). Every non-zero latent is kept.

Encodings follow the reference implementations: SAELens `sae_lens/saes/{standard,topk,jumprelu}_sae.py`
(x - b_dec when apply_b_dec_to_input, pre = x @ W_enc + b_enc; ReLU, TopK then ReLU, or ReLU masked by
pre > threshold) and sparsify `sparsify/sparse_coder.py` (pre = relu((x - b_dec) @ encoder.weight.T +
encoder.bias), TopK).
"""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from autointerp.errors import AutointerpError

NEURONS = "neurons"
SAE_PREFIX = "sae:"
SAELENS_WEIGHTS = "sae_weights.safetensors"
SPARSIFY_WEIGHTS = "sae.safetensors"
CFG = "cfg.json"

# Where a source reads the model: the MLP output projection's input, or the decoder block's output.
MLP_IN = "mlp_in"
RESID_OUT = "resid_out"

SAE_ENCODE_ROWS = 4096  # tokens encoded at once, bounding the dense [rows, d_sae] pre-activation block


@dataclass
class SparseActs:
    """Non-zero activations of a block of tokens: row (token index in the block), feature, value."""

    rows: torch.Tensor  # int64
    features: torch.Tensor  # int64
    values: torch.Tensor  # float32


@dataclass
class NeuronFeatures:
    layer: int
    width: int
    top_k: int = 32
    kind: str = NEURONS
    capture: str = MLP_IN

    def describe(self) -> dict[str, Any]:
        return {"features": NEURONS, "top_k_per_token": self.top_k}

    def encode(self, acts: torch.Tensor) -> SparseActs:
        acts = acts.float()
        if self.top_k and self.top_k < acts.shape[-1]:
            values, features = torch.topk(acts, self.top_k, dim=-1, sorted=False)
            rows = torch.arange(acts.shape[0], device=acts.device).unsqueeze(1).expand_as(features)
            keep = values > 0
            return SparseActs(rows[keep], features[keep], values[keep])
        rows, features = torch.nonzero(acts > 0, as_tuple=True)
        return SparseActs(rows, features, acts[rows, features])


@dataclass
class SaeFeatures:
    """A residual-stream sparse autoencoder's encoder, in one form for both file formats."""

    layer: int
    width: int
    architecture: str  # relu | topk | jumprelu
    W_enc: torch.Tensor  # [d_in, width]
    b_enc: torch.Tensor  # [width]
    b_dec_in: torch.Tensor | None  # subtracted from the input before encoding, or None
    k: int | None = None
    threshold: torch.Tensor | None = None  # jumprelu
    pre_scale: torch.Tensor | None = None  # multiplies pre-activations (SAELens rescale_acts_by_decoder_norm)
    file_format: str = "saelens"
    path: str = ""
    kind: str = "sae"
    capture: str = RESID_OUT

    def describe(self) -> dict[str, Any]:
        return {
            "features": f"{SAE_PREFIX}{self.path}",
            "sae_format": self.file_format,
            "architecture": self.architecture,
            "k": self.k,
        }

    def to(self, device: torch.device) -> SaeFeatures:
        for name in ("W_enc", "b_enc", "b_dec_in", "threshold", "pre_scale"):
            value = getattr(self, name)
            if value is not None:
                setattr(self, name, value.to(device))
        return self

    def encode(self, acts: torch.Tensor) -> SparseActs:
        parts = [self._encode_block(acts[i : i + SAE_ENCODE_ROWS], i) for i in range(0, acts.shape[0], SAE_ENCODE_ROWS)]
        return SparseActs(*(torch.cat([getattr(p, f) for p in parts]) for f in ("rows", "features", "values")))

    def _encode_block(self, x: torch.Tensor, row_offset: int) -> SparseActs:
        x = x.float()
        if self.b_dec_in is not None:
            x = x - self.b_dec_in
        pre = x @ self.W_enc + self.b_enc
        if self.pre_scale is not None:
            pre = pre * self.pre_scale
        if self.architecture == "topk":
            values, features = torch.topk(pre, self.k, dim=-1, sorted=False)
            rows = torch.arange(pre.shape[0], device=pre.device).unsqueeze(1).expand_as(features)
            keep = values > 0
            return SparseActs(rows[keep] + row_offset, features[keep], values[keep])
        active = pre > 0
        if self.architecture == "jumprelu":
            active &= pre > self.threshold.clamp(min=0)
        rows, features = torch.nonzero(active, as_tuple=True)
        return SparseActs(rows + row_offset, features, pre[rows, features])


FeatureSource = NeuronFeatures | SaeFeatures


def load_feature_source(spec: str, *, d_model: int, d_mlp: int | None, layer: int | None, top_k: int = 32) -> FeatureSource:
    """`neurons` or `sae:PATH`; the layer comes from `layer`, or for SAEs from their config when it names one."""
    if spec == NEURONS:
        if layer is None:
            raise AutointerpError("`layer` is required when `features` is neurons")
        if d_mlp is None:
            raise AutointerpError("this model has no MLP output projection to read neurons from; use `features` sae:PATH")
        if top_k < 0:
            raise AutointerpError("`top_k_per_token` must be 0 (all positive values) or more")
        return NeuronFeatures(layer=layer, width=d_mlp, top_k=top_k)
    if spec.startswith(SAE_PREFIX):
        return load_sae(spec[len(SAE_PREFIX):], d_model=d_model, layer=layer)
    raise AutointerpError(f"unknown `features` {spec!r}: use `neurons` or `sae:PATH` (a SAELens or sparsify folder)")


def load_sae(path: str | Path, *, d_model: int, layer: int | None = None) -> SaeFeatures:
    """Load a residual-stream SAE folder, detecting its format from the files in it."""
    folder = Path(path).expanduser()
    if not folder.is_dir():
        raise AutointerpError(f"SAE folder {folder} does not exist")
    files = sorted(p.name for p in folder.iterdir())
    if CFG not in files:
        raise AutointerpError(f"{folder} has no {CFG}; {_layout_hint(folder, files)}")
    try:
        cfg = json.loads((folder / CFG).read_text())
    except json.JSONDecodeError as exc:
        raise AutointerpError(f"{folder / CFG} is not valid JSON: {exc}") from None
    if SAELENS_WEIGHTS in files:
        sae = _saelens(folder, cfg, layer)
    elif SPARSIFY_WEIGHTS in files:
        sae = _sparsify(folder, cfg, layer)
    else:
        raise AutointerpError(f"{folder} has {CFG} but no weights; {_layout_hint(folder, files)}")
    d_in = sae.W_enc.shape[0]
    if d_in != d_model:
        raise AutointerpError(
            f"the SAE in {folder} reads vectors of size {d_in}, but the model's residual stream has size {d_model}: "
            "it was trained on another model"
        )
    return sae


def _layout_hint(folder: Path, files: list[str]) -> str:
    subfolders = sorted(p.name for p in folder.iterdir() if p.is_dir() and (p / CFG).exists())
    if subfolders:
        return f"it holds one SAE per hookpoint: point at one of them, e.g. sae:{folder / subfolders[0]} ({', '.join(subfolders)})"
    return (
        f"expected {CFG} with {SAELENS_WEIGHTS} (SAELens) or {SPARSIFY_WEIGHTS} (sparsify); "
        f"found {', '.join(files) or 'nothing'}"
    )


def _saelens(folder: Path, cfg: dict, layer: int | None) -> SaeFeatures:
    meta = cfg.get("metadata") or cfg.get("meta") or {}
    hook_name = meta.get("hook_name") or cfg.get("hook_name") or cfg.get("hook_point")
    hook_layer = meta.get("hook_layer", cfg.get("hook_layer"))
    layer = _resolve_layer(folder, _saelens_hook_layer(folder, hook_name, hook_layer), layer)
    activation = cfg.get("activation_fn") or cfg.get("activation_fn_str") or "relu"
    architecture = cfg.get("architecture", "standard")
    k = cfg.get("k") or (cfg.get("activation_fn_kwargs") or {}).get("k")
    if architecture == "standard" and activation == "topk":  # SAELens < 6 expressed TopK this way
        architecture = "topk"
    elif architecture == "standard" and activation != "relu":
        raise AutointerpError(f"{folder}: unsupported activation_fn {activation!r} for a standard SAE (only relu)")
    if architecture not in ("standard", "topk", "jumprelu"):
        raise AutointerpError(
            f"{folder}: unsupported SAELens architecture {architecture!r}; supported: standard (ReLU), topk, jumprelu"
        )
    normalize = cfg.get("normalize_activations")
    if normalize not in (None, False, "none"):
        raise AutointerpError(
            f"{folder}: normalize_activations={normalize!r} is not supported; fold the normalisation into "
            "the weights (SAELens fold_activation_norm_scaling_factor) and save the SAE again"
        )
    weights = _read_safetensors(folder / SAELENS_WEIGHTS)
    W_enc = _tensor(weights, "W_enc", folder, ndim=2)
    d_in, width = W_enc.shape
    b_enc = _tensor(weights, "b_enc", folder, shape=(width,))
    b_dec = _tensor(weights, "b_dec", folder, shape=(d_in,))
    _check_declared(folder, cfg, d_in, width)
    sae = SaeFeatures(
        layer=layer,
        width=width,
        architecture="relu" if architecture == "standard" else architecture,
        W_enc=W_enc,
        b_enc=b_enc,
        b_dec_in=b_dec if cfg.get("apply_b_dec_to_input", True) else None,
        file_format="saelens",
        path=str(folder.resolve()),
    )
    if architecture == "topk":
        sae.k = _positive_k(folder, k, width)
        if cfg.get("rescale_acts_by_decoder_norm"):
            sae.pre_scale = _tensor(weights, "W_dec", folder, shape=(width, d_in)).norm(dim=-1)
    elif architecture == "jumprelu":
        if "threshold" in weights:
            sae.threshold = _tensor(weights, "threshold", folder, shape=(width,))
        elif "log_threshold" in weights:
            sae.threshold = _tensor(weights, "log_threshold", folder, shape=(width,)).exp()
        else:
            raise AutointerpError(f"{folder / SAELENS_WEIGHTS} lacks the JumpReLU tensor 'threshold' of shape ({width},)")
    return sae


def _sparsify(folder: Path, cfg: dict, layer: int | None) -> SaeFeatures:
    if cfg.get("transcode"):
        raise AutointerpError(f"{folder} is a transcoder; only residual-stream SAEs are supported")
    activation = cfg.get("activation", "topk")
    if activation != "topk":
        raise AutointerpError(f"{folder}: unsupported sparsify activation {activation!r}; supported: topk")
    layer = _resolve_layer(folder, _sparsify_hook_layer(folder), layer)
    weights = _read_safetensors(folder / SPARSIFY_WEIGHTS)
    encoder = _tensor(weights, "encoder.weight", folder, ndim=2)
    width, d_in = encoder.shape
    b_enc = _tensor(weights, "encoder.bias", folder, shape=(width,))
    b_dec = _tensor(weights, "b_dec", folder, shape=(d_in,))
    _check_declared(folder, cfg, d_in, cfg.get("num_latents") or None)
    return SaeFeatures(
        layer=layer,
        width=width,
        architecture="topk",
        W_enc=encoder.T.contiguous(),
        b_enc=b_enc,
        b_dec_in=b_dec,
        k=_positive_k(folder, cfg.get("k"), width),
        file_format="sparsify",
        path=str(folder.resolve()),
    )


_RESID_POST = re.compile(r"^blocks\.(\d+)\.hook_resid_post$")
_RESID_PRE = re.compile(r"^blocks\.(\d+)\.hook_resid_pre$")
_BLOCK_OUT = re.compile(r"^(?:.*\.)?(?:layers|h)\.(\d+)$")  # HF / sparsify module names: layers.6, model.layers.6
_INSIDE_BLOCK = re.compile(r"^(?:.*\.)?(?:layers|h)\.\d+\.")  # layers.6.mlp and the like


def _saelens_hook_layer(folder: Path, hook_name: str | None, hook_layer: int | None) -> int | None:
    if not hook_name:
        return None if hook_layer is None else int(hook_layer)
    if m := _RESID_POST.match(hook_name) or _BLOCK_OUT.match(hook_name):
        return int(m.group(1))
    if (m := _RESID_PRE.match(hook_name)) and int(m.group(1)) > 0:
        return int(m.group(1)) - 1  # the input of block L is the output of block L-1
    raise _unsupported_hook(folder, hook_name)


def _sparsify_hook_layer(folder: Path) -> int | None:
    """sparsify names each SAE's folder after the module it reads; other folder names leave it to --layer."""
    if m := _BLOCK_OUT.match(folder.name):
        return int(m.group(1))
    if _INSIDE_BLOCK.match(folder.name):
        raise _unsupported_hook(folder, folder.name)
    return None


def _unsupported_hook(folder: Path, hook_name: str) -> AutointerpError:
    return AutointerpError(
        f"{folder}: the SAE reads hookpoint {hook_name!r}; only the residual stream after a layer is supported "
        "(blocks.L.hook_resid_post, blocks.L.hook_resid_pre with L > 0, layers.L)"
    )


def _resolve_layer(folder: Path, sae_layer: int | None, layer: int | None) -> int:
    """The layer whose output the SAE reads, checked against `layer` when both are known."""
    if sae_layer is not None and layer is not None and sae_layer != layer:
        raise AutointerpError(f"{folder} was trained on the output of layer {sae_layer}, but `layer` is {layer}")
    if sae_layer is None and layer is None:
        raise AutointerpError(f"{folder} does not say which layer it reads: give the `layer` L (the SAE reads its output)")
    return layer if layer is not None else sae_layer


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path), device="cpu")
    except (SafetensorError, OSError) as exc:
        raise AutointerpError(f"cannot read {path}: {exc}") from None


def _tensor(
    weights: dict[str, torch.Tensor], name: str, folder: Path, *, shape: tuple | None = None, ndim: int | None = None
) -> torch.Tensor:
    if name not in weights:
        raise AutointerpError(f"{folder}: the weights lack tensor {name!r}; they hold {sorted(weights)}")
    tensor = weights[name].float()
    if (shape is not None and tuple(tensor.shape) != shape) or (ndim is not None and tensor.ndim != ndim):
        expected = shape if shape is not None else f"{ndim} dimensions"
        raise AutointerpError(f"{folder}: tensor {name!r} has shape {tuple(tensor.shape)}, expected {expected}")
    return tensor


def _check_declared(folder: Path, cfg: dict, d_in: int, width: int | None) -> None:
    declared = {"d_in": cfg.get("d_in"), "d_sae": cfg.get("d_sae"), "num_latents": cfg.get("num_latents")}
    actual = {"d_in": d_in, "d_sae": width, "num_latents": width}
    for key, value in declared.items():
        if value and actual[key] and int(value) != actual[key]:
            raise AutointerpError(f"{folder}: {CFG} says {key}={value}, but the weights have {actual[key]}")


def _positive_k(folder: Path, k: Any, width: int) -> int:
    if not isinstance(k, int) or not 0 < k <= width:
        raise AutointerpError(f"{folder}: a TopK SAE needs k between 1 and {width} in {CFG}; found {k!r}")
    return k
