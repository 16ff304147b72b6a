"""Steered text: greedy continuations of prompts with a vector added to one block's output, and the steering
strength that moves the next-token distribution by a target KL.

Calibrating to a KL rather than using a fixed factor puts features with strong and weak directions on the same
footing: each is pushed until the model's next-token distribution on the neutral prompts has moved by the same
amount, so a label is judged on what the feature does to the text, not on how loud its direction is.
"""

from __future__ import annotations

import contextlib
import hashlib
import math
from dataclasses import dataclass

import torch

from autointerp.collect.models import SubjectModel
from autointerp.directions import steering

_UNSTEERED: dict[tuple, list[str]] = {}  # (model, prompts, max_new_tokens) -> continuations


@dataclass
class Calibration:
    factor: float  # multiplies the feature's amplified direction
    kl: float  # mean KL(unsteered || steered) of the next token on the prompts at that factor
    target_kl: float
    capped: bool  # the target was not reached inside [min_factor, max_factor]; the nearer bound was used
    steps: int


def _batch(subject: SubjectModel, prompts: list[str]) -> dict[str, torch.Tensor]:
    tok = subject.tokenizer
    pad = tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id
    encoded = [tok(p)["input_ids"] for p in prompts]
    width = max(map(len, encoded))
    ids = torch.full((len(encoded), width), pad, dtype=torch.long)
    mask = torch.zeros((len(encoded), width), dtype=torch.long)
    for row, seq in enumerate(encoded):  # left padding: every prompt ends at the last position
        ids[row, width - len(seq):] = torch.tensor(seq)
        mask[row, width - len(seq):] = 1
    return {"input_ids": ids.to(subject.device), "attention_mask": mask.to(subject.device)}


def next_token_logprobs(
    subject: SubjectModel, prompts: list[str], layer: int | None = None, vector: torch.Tensor | None = None
) -> torch.Tensor:
    """[len(prompts), vocab] log-probabilities of the next token, steered by `vector` at `layer` when given."""
    batch = _batch(subject, prompts)
    with torch.no_grad(), steering(subject, layer, vector) if vector is not None else contextlib.nullcontext():
        logits = subject.model(**batch).logits[:, -1, :]
    return torch.log_softmax(logits.float(), dim=-1).cpu()


def mean_kl(base: torch.Tensor, steered: torch.Tensor) -> float:
    """Mean over prompts of KL(base || steered), in nats."""
    return float((base.exp() * (base - steered)).sum(-1).mean())


def calibrate(
    subject: SubjectModel,
    layer: int,
    direction: torch.Tensor,
    prompts: list[str],
    *,
    target_kl: float,
    min_factor: float,
    max_factor: float,
    steps: int = 8,
) -> Calibration:
    """The factor in [min_factor, max_factor] whose steering by `factor * direction` moves the next-token
    distribution by `target_kl` on average (bisection on log factor; KL grows with the factor)."""
    base = next_token_logprobs(subject, prompts)

    def kl(factor: float) -> float:
        return mean_kl(base, next_token_logprobs(subject, prompts, layer, factor * direction))

    kl_high = kl(max_factor)
    if kl_high <= target_kl:
        return Calibration(max_factor, kl_high, target_kl, True, 1)
    kl_low = kl(min_factor)
    if kl_low >= target_kl:
        return Calibration(min_factor, kl_low, target_kl, True, 2)
    lo, hi = math.log(min_factor), math.log(max_factor)
    best = (max_factor, kl_high)
    for _ in range(steps):
        mid = (lo + hi) / 2
        value = kl(math.exp(mid))
        if abs(value - target_kl) < abs(best[1] - target_kl):
            best = (math.exp(mid), value)
        lo, hi = (mid, hi) if value < target_kl else (lo, mid)
    return Calibration(best[0], best[1], target_kl, False, steps + 2)


def continuations(
    subject: SubjectModel,
    prompts: list[str],
    max_new_tokens: int,
    layer: int | None = None,
    vectors: torch.Tensor | None = None,
) -> list[str]:
    """Greedy continuations of `prompts` in one batch (steered by `vectors` at `layer` when given).

    Unsteered ones are cached per model, prompt set and length: every feature's steered text is compared to them.
    """
    key = (subject.name, id(subject.model), _digest(prompts), max_new_tokens)
    if vectors is None and key in _UNSTEERED:
        return list(_UNSTEERED[key])
    batch = _batch(subject, prompts)
    tok = subject.tokenizer
    with torch.no_grad(), steering(subject, layer, vectors) if vectors is not None else contextlib.nullcontext():
        out = subject.model.generate(
            **batch,
            max_new_tokens=max_new_tokens,
            do_sample=False,
            pad_token_id=tok.pad_token_id if tok.pad_token_id is not None else tok.eos_token_id,
        )
    texts = tok.batch_decode(out[:, batch["input_ids"].shape[1]:], skip_special_tokens=True)
    if vectors is None:
        _UNSTEERED[key] = list(texts)
    return texts


def _digest(prompts: list[str]) -> str:
    return hashlib.sha256("\n".join(prompts).encode()).hexdigest()
