"""Output evidence: what a feature does to the subject model's next-token prediction, not what makes it fire.

Two views (Gur-Arieh et al. 2025, "Enhancing Automated Interpretability with Output-Centric Feature Descriptions"):
- the logit lens: the feature's write direction read through the final norm's weight and the unembedding, i.e.
  which tokens the direction itself promotes and suppresses (cheap: one matrix product; done at collection);
- amplification ("TokenChange"): add the feature at `factor` times its largest activation to block L's output on
  the neutral prompts and take the mean change of each next-token probability over the prompts (a forward pass
  of the subject model per prompt and feature; done by `autointerp effects`).
"""

from __future__ import annotations

import contextlib
import hashlib
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field

import torch
from torch import nn
from tqdm.auto import tqdm

from autointerp.collect.models import SubjectModel, load_subject_model, model_short_name
from autointerp.directions import (
    NEUTRAL_PROMPTS,
    FeatureDirections,
    amplified,
    feature_directions,
    neutral_prompts,
    require_directions,
    steering,
)
from autointerp.errors import AutointerpError, NotFound
from autointerp.records import OutputEffects, TokenEffect
from autointerp.resources import data_file
from autointerp.store import Store
from autointerp.store import output_evidence_queries as q
from autointerp.store.activations import get_source

__all__ = ["TokenEffect", "OutputEffects", "logit_lens", "amplification", "compute_effects", "EffectsReport"]

DEFAULT_K = 10  # tokens kept per side
AMPLIFY_FACTOR = 10.0  # times the feature's largest activation in the store
BATCH_SEQUENCES = 64  # prompt sequences per forward pass
LENS_CHUNK = 256  # features per logit-lens matrix product

# Where causal LMs keep the norm applied before the unembedding.
_FINAL_NORMS = ("model.norm", "transformer.ln_f", "gpt_neox.final_layer_norm", "model.decoder.final_layer_norm")


def logit_lens(model: SubjectModel, vectors: torch.Tensor, k: int = DEFAULT_K) -> list[OutputEffects]:
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
        logits = (directions @ unembedding.T).cpu()
    return top_effects(model, logits, k)


def amplification(
    model: SubjectModel,
    directions: FeatureDirections,
    max_activations: Sequence[float],
    *,
    factor: float = AMPLIFY_FACTOR,
    prompts: Sequence[str] | None = None,
    k: int = DEFAULT_K,
    batch_sequences: int = BATCH_SEQUENCES,
) -> list[OutputEffects]:
    """Per feature: the tokens whose next-token probability rises and falls most, on average over `prompts`
    (default: the shipped neutral prompts), when the feature is added at `factor` x its max activation.

    Prompts of equal token length run together (no padding, so nothing but the steering differs from a plain
    forward pass), several features per forward pass, one steering vector per sequence.
    """
    prompts = neutral_prompts() if prompts is None else list(prompts)
    if not prompts:
        raise AutointerpError("amplification needs at least one prompt")
    vectors = amplified(directions, max_activations, factor)
    groups = _length_groups(model, prompts)
    base = [_next_token_probs(model, ids) for ids in groups]
    per_pass = max(1, batch_sequences // max(len(ids) for ids in groups))
    effects: list[OutputEffects] = []
    for start in range(0, len(vectors), per_pass):
        chunk = vectors[start : start + per_pass]
        n = len(chunk)
        total = torch.zeros(n, base[0].shape[-1])
        for ids, p0 in zip(groups, base):
            g = len(ids)
            with steering(model, directions.layer, chunk.repeat_interleave(g, dim=0)):
                probs = _next_token_probs(model, ids.repeat(n, 1))
            total += (probs.view(n, g, -1) - p0).sum(dim=1)
        effects += top_effects(model, total / len(prompts), k)
    return effects


def _length_groups(model: SubjectModel, prompts: list[str]) -> list[torch.Tensor]:
    """The prompts' token ids, grouped by length: one [n_prompts_of_that_length, length] tensor per length."""
    by_length: dict[int, list[list[int]]] = {}
    for prompt in prompts:
        ids = model.tokenizer(prompt)["input_ids"]
        by_length.setdefault(len(ids), []).append(ids)
    return [torch.tensor(by_length[n]) for n in sorted(by_length)]


def _next_token_probs(model: SubjectModel, ids: torch.Tensor) -> torch.Tensor:
    with torch.no_grad():
        logits = model.model(input_ids=ids.to(model.device), logits_to_keep=1).logits[:, -1]
    return logits.float().softmax(dim=-1).cpu()


def top_effects(model: SubjectModel, values: torch.Tensor, k: int) -> list[OutputEffects]:
    """The k largest and k most negative entries of each row of `values` ([n, vocab]), as decoded tokens."""
    k = min(k, values.shape[1])
    top = torch.topk(values, k, dim=1)
    bottom = torch.topk(values, k, dim=1, largest=False)
    return [
        OutputEffects(promoted=_effects(model, ids, vals), suppressed=_effects(model, low_ids, low_vals))
        for ids, vals, low_ids, low_vals in zip(
            top.indices.tolist(), top.values.tolist(), bottom.indices.tolist(), bottom.values.tolist()
        )
    ]


def _effects(model: SubjectModel, ids: list[int], values: list[float]) -> list[TokenEffect]:
    return [TokenEffect(token=model.tokenizer.decode([i]), token_id=i, value=v) for i, v in zip(ids, values)]


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


# --- computing and storing a source's evidence ----------------------------------------------------------


@dataclass
class EffectsReport:
    source: str
    n_features: int
    methods: list[str]
    device: str
    seconds: dict[str, float] = field(default_factory=dict)  # per method, wall clock
    cpu_seconds: dict[str, float] = field(default_factory=dict)  # per method, process CPU time (all threads)

    def per_feature(self, method: str) -> tuple[float, float]:
        """(wall, CPU) seconds per feature of one method."""
        n = max(self.n_features, 1)
        return self.seconds.get(method, 0.0) / n, self.cpu_seconds.get(method, 0.0) / n


def prompts_sha256(prompts: Sequence[str] | None) -> str:
    """The neutral prompt file's sha256 (None: the shipped file), else the sha256 of the given prompts, one a line."""
    data = data_file(NEUTRAL_PROMPTS).read_bytes() if prompts is None else "\n".join(prompts).encode()
    return hashlib.sha256(data).hexdigest()


def compute_effects(
    store: Store,
    source: str,
    features: Sequence[int] | None = None,
    *,
    model: SubjectModel | None = None,
    amplify: bool = True,
    factor: float = AMPLIFY_FACTOR,
    prompts: Sequence[str] | None = None,
    k: int = DEFAULT_K,
    device: str | None = None,
    progress: bool = False,
) -> EffectsReport:
    """Compute and store the output evidence of `features` (default: every feature that fires) of a collected
    source: the logit lens, and with `amplify` the mean next-token probability change on the neutral prompts.

    Stored per chunk of features, so an interrupted run keeps what it finished. Raises AutointerpError for an
    imported source, a feature outside the source, or (amplify) a feature that never fired: amplification
    scales by the feature's largest activation in the store.
    """
    with store.reading() as con:
        info = get_source(con, source)
        checked = require_directions(info, features or [])
        wanted = checked if features is not None else None
        if info.status != "ready":
            raise AutointerpError(f"source {source!r} is not finalized (status {info.status!r}); finish its collection first")
        maxima = q.feature_maxima(con, info.source_id, wanted)
    if wanted is None:
        wanted = sorted(maxima)
        if not wanted:
            raise AutointerpError(f"no feature of source {source!r} fires in the store; nothing to compute")
    elif amplify and (silent := [f for f in wanted if f not in maxima]):
        raise NotFound(
            f"feature {silent[0]} of source {source!r} never fires in the store, so it has no largest activation to "
            "amplify it at; leave it out, or compute its logit lens alone (--no-amplify)"
        )
    if model is not None and model.name != model_short_name(info.model or ""):
        raise AutointerpError(f"source {source!r} was collected from {info.model!r}, not from the loaded {model.name!r}")
    model = model or load_subject_model(info.model, device)
    n_prompts = len(neutral_prompts() if prompts is None else prompts)
    report = EffectsReport(source, len(wanted), [q.LOGIT_LENS] + ([q.AMPLIFICATION] if amplify else []), str(model.device))
    base = {"model": info.model, "layer": info.layer, "k": k, "dtype": str(model.dtype).removeprefix("torch.")}
    chunk = LENS_CHUNK if not amplify else max(1, BATCH_SEQUENCES // 4)
    with tqdm(total=len(wanted), unit="feature", desc=f"effects {source}", disable=not progress) as bar:
        for start in range(0, len(wanted), chunk):
            part = wanted[start : start + chunk]
            directions = feature_directions(info, part, model)
            rows: list[tuple[str, list[OutputEffects], list[dict]]] = []
            with _timed(report, q.LOGIT_LENS):
                lens = logit_lens(model, directions.vectors, k)
            rows.append((q.LOGIT_LENS, lens, [{**base, "value": "logit change, final norm weight x unembedding"}] * len(part)))
            if amplify:
                with _timed(report, q.AMPLIFICATION):
                    amp = amplification(model, directions, [maxima[f] for f in part], factor=factor, prompts=prompts, k=k)
                provenance = {
                    **base,
                    "value": "mean change in next-token probability over the prompts",
                    "factor": factor,
                    "prompts": NEUTRAL_PROMPTS if prompts is None else "custom",
                    "prompts_sha256": prompts_sha256(prompts),
                    "n_prompts": n_prompts,
                }
                rows.append((q.AMPLIFICATION, amp, [{**provenance, "max_activation": maxima[f]} for f in part]))
            with store.writing() as con:
                for method, effects, prov in rows:
                    q.save_output_effects(con, info.source_id, method, part, effects, prov)
            bar.update(len(part))
    return report


@contextlib.contextmanager
def _timed(report: EffectsReport, method: str) -> Iterator[None]:
    t0, c0 = time.perf_counter(), time.process_time()
    try:
        yield
    finally:
        report.seconds[method] = report.seconds.get(method, 0.0) + time.perf_counter() - t0
        report.cpu_seconds[method] = report.cpu_seconds.get(method, 0.0) + time.process_time() - c0


def store_logit_lens(store: Store, source: str, model: SubjectModel) -> None:
    """At collection: the logit lens of every firing feature of a just-finalized neuron or SAE source."""
    with store.reading() as con:
        firing = sorted(q.feature_maxima(con, get_source(con, source).source_id, None))
    if firing:
        compute_effects(store, source, firing, model=model, amplify=False)
