"""Output evidence: what a feature does to the subject model's next-token prediction, not what makes it fire.

Two views (Gur-Arieh et al. 2025, "Enhancing Automated Interpretability with Output-Centric Feature Descriptions"):
- the logit lens: the feature's write direction read through the final norm's weight and the unembedding, i.e.
  which tokens the direction itself promotes and suppresses;
- amplification ("TokenChange"): add the feature at a multiple of its largest activation to block L's output on
  neutral prompts and see which next-token probabilities change most, on average over the prompts.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

from autointerp.collect.models import SubjectModel
from autointerp.errors import AutointerpError

# Where causal LMs keep the norm applied before the unembedding.
_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")


@dataclass
class TokenEffect:
    token: str  # the token decoded on its own, as a reader sees it
    token_id: int
    value: float


@dataclass
class OutputEffects:
    promoted: list[TokenEffect]  # largest value first
    suppressed: list[TokenEffect]  # most negative value first


def logit_lens(model: SubjectModel, vectors: torch.Tensor, k: int = 10) -> list[OutputEffects]:
    """The top-k promoted and suppressed tokens of each row of `vectors` ([n, d_model]).

    Each direction is multiplied by the final norm's weight and projected onto the unembedding: the logit change
    it would cause if it reached the output unchanged, up to the norm's per-position scale (which does not change
    the ranking). The norm's bias, where it has one, adds the same to every direction and is left out.
    """
    if vectors.dim() != 2 or vectors.shape[1] != model.d_model:
        raise AutointerpError(f"logit_lens needs vectors of shape [n, {model.d_model}], got {list(vectors.shape)}")
    gain = final_norm_weight(model)
    unembedding = output_embedding_weight(model)  # [vocab, d_model]
    with torch.no_grad():
        directions = vectors.to(device=unembedding.device, dtype=torch.float32) * gain
        logits = directions @ unembedding.T
    return [top_effects(model, row, k) for row in logits.cpu()]


def top_effects(model: SubjectModel, values: torch.Tensor, k: int) -> OutputEffects:
    """The k largest and k most negative entries of a vocabulary-sized vector, as decoded tokens."""
    k = min(k, values.shape[0])
    top = torch.topk(values, k)
    bottom = torch.topk(-values, k)
    return OutputEffects(
        promoted=_effects(model, top.indices, values),
        suppressed=_effects(model, bottom.indices, values),
    )


def _effects(model: SubjectModel, ids: torch.Tensor, values: torch.Tensor) -> list[TokenEffect]:
    return [TokenEffect(token=model.tokenizer.decode([int(i)]), token_id=int(i), value=float(values[i])) for i in ids]


def final_norm_weight(model: SubjectModel) -> torch.Tensor:
    """The final norm's per-dimension gain as float32 ([d_model]); ones for a norm without a weight."""
    norm = _final_norm(model)
    weight = getattr(norm, "weight", None)
    if weight is None:
        return torch.ones(model.d_model, device=model.device)
    return weight.detach().float()


def output_embedding_weight(model: SubjectModel) -> torch.Tensor:
    """The unembedding as float32 [vocab, d_model]."""
    head = model.model.get_output_embeddings()
    if head is None:
        raise AutointerpError(f"{model.name} has no output embedding (unembedding); output evidence needs a causal LM head")
    return head.weight.detach().float()


def _final_norm(model: SubjectModel) -> nn.Module:
    for path in _FINAL_NORMS:
        module: object = model.model
        for part in path.split("."):
            module = getattr(module, part, None)
        if isinstance(module, nn.Module):
            return module
    raise AutointerpError(f"cannot find the final norm of {model.name} (looked for {', '.join(_FINAL_NORMS)})")
