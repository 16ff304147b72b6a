"""A feature's write direction in the residual stream, and steering the subject model along it.

Neuron i of layer L writes `act * down_proj.weight[:, i]` into the residual stream at the end of block L; an SAE
latent's decoder row is its contribution to the reconstruction of block L's output. Both are directions added to
block L's output, which is where `steering` adds them. Output evidence (logit lens, amplification) and the output
scorer both start from here.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

from autointerp.collect.features import CFG, NEURONS, SAE_PREFIX, SAELENS_WEIGHTS, SPARSIFY_WEIGHTS, _read_safetensors, _tensor
from autointerp.collect.models import SubjectModel
from autointerp.errors import AutointerpError
from autointerp.resources import data_file
from autointerp.store.activations import SourceInfo

NEUTRAL_PROMPTS = "neutral_prompts.txt"


@dataclass
class FeatureDirections:
    layer: int  # added to the output of this decoder block
    features: list[int]
    vectors: torch.Tensor  # [len(features), d_model], float32, on CPU, not normalised


def feature_directions(source: SourceInfo, features: Sequence[int], model: SubjectModel) -> FeatureDirections:
    """The write directions of `features` of a collected source (neurons or a residual-stream SAE)."""
    features = require_directions(source, features)
    spec = source.config.get("features", NEURONS)
    if spec == NEURONS:
        weight = model.mlp_out_proj(source.layer).weight  # [d_model, d_mlp]
        vectors = weight.detach()[:, features].T
    elif spec.startswith(SAE_PREFIX):
        vectors = decoder_rows(Path(spec[len(SAE_PREFIX):]), features)
    else:
        raise AutointerpError(f"source {source.name!r} has an unknown features spec {spec!r}")
    if vectors.shape[-1] != model.d_model:
        raise AutointerpError(
            f"source {source.name!r} writes vectors of size {vectors.shape[-1]}, but {model.name}'s residual stream "
            f"has size {model.d_model}: it was collected from another model"
        )
    return FeatureDirections(layer=source.layer, features=features, vectors=vectors.float().cpu().contiguous())


def require_directions(source: SourceInfo, features: Sequence[int]) -> list[int]:
    """`features` as ints, or one clear error when the source has no write directions or lacks a feature;
    callers that load a model first can check with this before they do."""
    if source.layer is None or source.feature_kind not in ("neurons", "sae"):
        raise AutointerpError(
            f"source {source.name!r} holds {source.feature_kind} features without a known write direction; "
            "output evidence and steering need a source collected from neurons or an SAE"
        )
    features = [int(f) for f in features]
    if source.width is not None and any(not 0 <= f < source.width for f in features):
        bad = next(f for f in features if not 0 <= f < source.width)
        raise AutointerpError(f"feature {bad} is not in source {source.name!r} (features 0..{source.width - 1})")
    return features


def decoder_rows(folder: Path, features: Sequence[int]) -> torch.Tensor:
    """Rows of an SAE's decoder (SAELens `W_dec` or sparsify `W_dec`, both [width, d_in])."""
    if not (folder / CFG).exists():
        raise AutointerpError(f"the SAE folder {folder} this source was collected from is gone; restore it to read its decoder")
    name = SAELENS_WEIGHTS if (folder / SAELENS_WEIGHTS).exists() else SPARSIFY_WEIGHTS
    weights = _read_safetensors(folder / name)
    W_dec = _tensor(weights, "W_dec", folder, ndim=2)
    return W_dec[list(features)]


def neutral_prompts() -> list[str]:
    """The shipped neutral prompts (data/neutral_prompts.txt) that amplification and steering start from."""
    lines = data_file(NEUTRAL_PROMPTS).read_text().splitlines()
    return [line for line in lines if line.strip() and not line.startswith("#")]


def amplified(directions: FeatureDirections, max_activations: Sequence[float], factor: float) -> torch.Tensor:
    """Steering vectors that add each feature at `factor` times its largest activation in the store.

    Scaling by the feature's own maximum keeps the strength in the units the feature actually writes at, so one
    factor means the same for a neuron and an SAE latent with differently normed directions.
    """
    scale = torch.tensor([float(m) for m in max_activations], dtype=torch.float32)
    if scale.shape[0] != directions.vectors.shape[0] or not torch.isfinite(scale).all():
        raise AutointerpError("need one finite max activation per feature to scale its direction")
    return directions.vectors * (factor * scale)[:, None]


@contextlib.contextmanager
def steering(model: SubjectModel, layer: int, vectors: torch.Tensor) -> Iterator[None]:
    """Add `vectors` to block `layer`'s output at every position while the context is open.

    `vectors` is [d_model] (the same for every sequence) or [batch, d_model] (one per sequence in the batch),
    already multiplied by the steering strength.
    """
    delta = vectors.to(device=model.device, dtype=model.dtype)
    if delta.dim() == 2:
        delta = delta[:, None, :]

    def add(_module, _inputs, output):
        if isinstance(output, tuple):
            return (output[0] + delta, *output[1:])
        return output + delta

    handle = model.layer(layer).register_forward_hook(add)
    try:
        yield
    finally:
        handle.remove()
