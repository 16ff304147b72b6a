"""Output scorer: does steering the subject model along the feature's direction make its text match the label?

On the shipped neutral prompts, the feature's direction (its `amplified` write direction, at the factor that moves
the next-token distribution by `target_kl`) is added to its block's output and short greedy continuations are
generated. Per prompt, the label's MiniLM cosine with the steered continuation is compared to its cosine with the
unsteered one (paired). A shuffled-label control (another feature's label) is scored on the same continuations:
a label that only describes "the text changed" moves as much as the control does. With `judge`, an LLM is
shown both continuations of each prompt and asked which one was steered toward the label.
"""

from __future__ import annotations

import asyncio
import hashlib
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from pydantic import NonNegativeInt, PositiveFloat, PositiveInt

from autointerp.collect.models import SubjectModel
from autointerp.directions import amplified, feature_directions, neutral_prompts
from autointerp.embeddings import EMBEDDING_MODEL, embed_texts
from autointerp.errors import AutointerpError
from autointerp.llm.base import LLM
from autointerp.prompts import load_prompt
from autointerp.records import Explanation, FeatureExamples, ItemJudgement, Score
from autointerp.scoring import items as item_metrics
from autointerp.scoring import metrics
from autointerp.scoring.common import SCORABLE_SPLITS, gather_limited
from autointerp.steered import Calibration, calibrate, continuations
from autointerp.store.activations import SourceInfo

JUDGE_PROMPT = "output_judge.v1"
METRICS = ("delta_cosine", "win_rate")


@dataclass
class OutputContext:
    """What the output scorer needs besides a label: the source's subject model and directions, and other
    features' labels for the shuffled-label control (feature -> label; grows as the scorer sees labels)."""

    source: SourceInfo
    model: SubjectModel
    other_labels: dict[int, str] = field(default_factory=dict)
    steered: dict[tuple, tuple[Calibration, list[str]]] = field(default_factory=dict)  # per feature and settings


def output_context(store: Any, source: SourceInfo, model: SubjectModel | None = None) -> OutputContext:
    """The context for a collected source: its subject model (loaded unless given) and the labels already
    stored for its features."""
    from autointerp.collect.models import load_subject_model
    from autointerp.store.catalog_queries import existing_labels

    if model is None:
        if not source.model:
            raise AutointerpError(f"source {source.name!r} names no subject model; the output scorer needs one to steer")
        model = load_subject_model(source.model)
    labels: dict[int, str] = {}
    for feature, label in sorted(existing_labels(store.con, source.source_id)):
        labels.setdefault(int(feature), label)
    return OutputContext(source, model, labels)


@dataclass
class SteeredText:
    prompts: list[str]
    unsteered: list[str]
    steered: list[str]
    calibration: Calibration
    max_activation: float


class OutputScorer:
    """Paired per prompt: cosine(label, steered continuation) - cosine(label, unsteered continuation).

    Metrics (subset `all`): `delta_cosine`, the mean difference, and `win_rate`, the share of prompts where the
    steered continuation is closer to the label (ties half), both with bootstrap CIs over prompts; n is the
    number of prompts. Subset `control`: the same for another feature's label on the same continuations. With
    `judge`: `judge_accuracy`, how often the LLM picks the steered continuation (chance 0.5).
    """

    name = "output"

    def __init__(
        self,
        llm: LLM | None = None,
        context: OutputContext | None = None,
        *,
        n_prompts: PositiveInt = 24,
        max_new_tokens: PositiveInt = 16,
        target_kl: PositiveFloat = 2.0,
        min_factor: PositiveFloat = 0.002,
        max_factor: PositiveFloat = 64.0,
        calibration_steps: PositiveInt = 8,
        judge: bool = False,
        concurrency: PositiveInt = 4,
        n_resamples: PositiveInt = metrics.N_RESAMPLES,
        seed: NonNegativeInt = metrics.SEED,
    ):
        if context is None:
            raise AutointerpError(
                "the output scorer steers the subject model: score through a labeling job or `autointerp score`, "
                "or give it an OutputContext (autointerp.scoring.output.output_context)"
            )
        if judge and llm is None:
            raise AutointerpError("the output scorer's judge needs an LLM: give a `simulator` model or set judge = false")
        if min_factor >= max_factor:
            raise AutointerpError(f"min_factor ({min_factor}) must be below max_factor ({max_factor})")
        self.llm, self.context = llm, context
        self.n_prompts, self.max_new_tokens = n_prompts, max_new_tokens
        self.target_kl, self.min_factor, self.max_factor = target_kl, min_factor, max_factor
        self.calibration_steps = calibration_steps
        self.judge, self.concurrency = judge, concurrency
        self.n_resamples, self.seed = n_resamples, seed

    def steered_text(self, feature: int, max_activation: float) -> SteeredText:
        """The feature's steered and the unsteered continuations (computed once per feature and settings)."""
        ctx = self.context
        prompts = neutral_prompts()[: self.n_prompts]
        key = (feature, self.n_prompts, self.max_new_tokens, self.target_kl, self.min_factor, self.max_factor,
               self.calibration_steps)
        if key not in ctx.steered:
            if not max_activation > 0:
                raise AutointerpError(f"feature {feature} never fires (max activation {max_activation}): nothing to steer by")
            directions = feature_directions(ctx.source, [feature], ctx.model)
            direction = amplified(directions, [max_activation], 1.0)[0]
            cal = calibrate(
                ctx.model, directions.layer, direction, prompts,
                target_kl=self.target_kl, min_factor=self.min_factor, max_factor=self.max_factor,
                steps=self.calibration_steps,
            )
            steered = continuations(ctx.model, prompts, self.max_new_tokens, directions.layer, cal.factor * direction)
            ctx.steered[key] = (cal, steered)
        cal, steered = ctx.steered[key]
        unsteered = continuations(ctx.model, prompts, self.max_new_tokens)
        return SteeredText(prompts, unsteered, steered, cal, max_activation)

    def control_label(self, feature: int, label: str) -> tuple[int, str] | None:
        """Another feature's label, fixed by (seed, feature); None when the store holds no other label yet."""
        others = sorted((f, text) for f, text in self.context.other_labels.items() if f != feature and text != label)
        if not others:
            return None
        return others[int(np.random.default_rng([self.seed, feature]).integers(len(others)))]

    async def score(self, explanation: Explanation, examples: FeatureExamples, split: str = "test") -> list[Score]:
        if split not in SCORABLE_SPLITS:
            raise AutointerpError(f"cannot score on split {split!r}: use 'test' (reported scores) or 'valid' (selection)")
        text = await asyncio.to_thread(self.steered_text, examples.feature, examples.max_activation)
        control = self.control_label(examples.feature, explanation.label)
        labels = [explanation.label] + ([control[1]] if control else [])
        vectors = await asyncio.to_thread(embed_texts, labels + text.steered + text.unsteered)
        n = len(text.prompts)
        label_vecs, steered_vecs, unsteered_vecs = vectors[: len(labels)], vectors[len(labels) : len(labels) + n], vectors[len(labels) + n :]
        judged = _items(label_vecs[0], steered_vecs, unsteered_vecs, "")
        if control:
            judged += _items(label_vecs[1], steered_vecs, unsteered_vecs, item_metrics.CONTROL_PREFIX, offset=len(judged))
        self.context.other_labels.setdefault(examples.feature, explanation.label)
        cal = text.calibration
        details: dict[str, Any] = {
            "embedding_model": EMBEDDING_MODEL,
            "layer": self.context.source.layer,
            "steering": {
                "factor": cal.factor, "kl": cal.kl, "target_kl": cal.target_kl, "capped": cal.capped,
                "max_activation": text.max_activation, "strength": cal.factor * text.max_activation,
            },
            "n_prompts": n,
            "max_new_tokens": self.max_new_tokens,
            "prompts_hash": hashlib.sha256("\n".join(text.prompts).encode()).hexdigest(),
            "control_feature": control[0] if control else None,
            "control_label": control[1] if control else None,
        }
        if not control:
            details["note_control"] = "no other feature's label in the store to control with"
        scores = self._scores(judged, split, details)
        if control:
            scores[0].details["over_control"] = _over_control(judged, self.n_resamples, self.seed)
        scores[0].details["continuations"] = [
            {"prompt": p, "steered": s, "unsteered": u} for p, s, u in zip(text.prompts, text.steered, text.unsteered)
        ]
        if self.judge:
            scores.append(await self._judge(explanation.label, text, split, details))
        return scores

    def _scores(self, judged: list[ItemJudgement], split: str, details: dict[str, Any]) -> list[Score]:
        out = []
        for subset in ("all", "control"):
            chosen = [j for j, m in zip(judged, item_metrics.subset_mask(judged, subset)) if m]
            if not chosen:
                continue
            for metric in METRICS:
                got = item_metrics.compute(metric, chosen, self.n_resamples, self.seed)
                out.append(
                    Score(
                        scorer=self.name, metric=metric, value=got.value, ci_low=got.ci_low, ci_high=got.ci_high,
                        n=got.n, subset=subset, split=split, scorer_model=EMBEDDING_MODEL, details=dict(details),
                        items=judged,
                    )
                )
        return out

    async def _judge(self, label: str, text: SteeredText, split: str, details: dict[str, Any]) -> Score:
        """Which of two continuations (order random per prompt) was steered toward the label? Answers that name
        neither are counted as unparsed, never guessed."""
        template = load_prompt(JUDGE_PROMPT)
        rng = np.random.default_rng([self.seed, sum(map(ord, label))])
        steered_first = rng.random(len(text.prompts)) < 0.5

        async def ask(i: int) -> str:
            a, b = (text.steered[i], text.unsteered[i]) if steered_first[i] else (text.unsteered[i], text.steered[i])
            messages = template.render_messages(label=label, prompt=text.prompts[i], a=a.strip(), b=b.strip())
            response = await self.llm.chat(messages, max_tokens=4, temperature=0.0, stage="output")
            return response.text

        answers = await gather_limited([lambda i=i: ask(i) for i in range(len(text.prompts))], self.concurrency)
        picks = [_pick(a) for a in answers]
        correct = [None if p is None else float((p == "A") == bool(first)) for p, first in zip(picks, steered_first)]
        answered = np.array([c for c in correct if c is not None], dtype=float)
        value = float(answered.mean()) if len(answered) else None
        low, high = metrics.bootstrap_mean(answered, self.n_resamples, self.seed)
        return Score(
            scorer=self.name, metric="judge_accuracy", value=value, ci_low=low, ci_high=high, n=len(answered),
            subset="all", split=split, scorer_model=self.llm.name,
            details={
                **details, "n_unparsed": len(correct) - len(answered), "prompt_name": template.name,
                "prompt_hash": template.sha256, "unparsed_outputs": [a[:80] for a, p in zip(answers, picks) if p is None][:3],
            },
        )


def _items(
    label_vec: np.ndarray, steered: np.ndarray, unsteered: np.ndarray, prefix: str, offset: int = 0
) -> list[ItemJudgement]:
    """Two items per prompt (context_id = prompt index): the steered continuation (truth 1) and the unsteered
    one (truth 0), each with its cosine to the label as `probability`."""
    out = []
    for i, (s, u) in enumerate(zip(steered @ label_vec, unsteered @ label_vec)):
        for truth, cosine, group in ((1, s, "steered"), (0, u, "unsteered")):
            out.append(
                ItemJudgement(
                    scorer="output", item=offset + len(out), context_id=i, group=prefix + group, kind="neutral_prompt",
                    truth=truth, probability=float(cosine),
                )
            )
    return out


def _over_control(judged: list[ItemJudgement], n_resamples: int, seed: int) -> dict[str, Any]:
    """Per prompt, the label's steered-minus-unsteered cosine minus the control label's: mean and 95% CI."""
    label = item_metrics.paired_differences([j for j in judged if not j.group.startswith(item_metrics.CONTROL_PREFIX)])
    control = item_metrics.paired_differences([j for j in judged if j.group.startswith(item_metrics.CONTROL_PREFIX)])
    diffs = np.array([label[c] - control[c] for c in label if c in control], dtype=float)
    low, high = metrics.bootstrap_mean(diffs, n_resamples, seed)
    return {"value": float(diffs.mean()) if len(diffs) else None, "ci_low": low, "ci_high": high, "n": len(diffs)}


def _pick(answer: str) -> str | None:
    """'A' or 'B' when the answer names exactly one of them first, else None."""
    for ch in answer.strip().upper():
        if ch in "AB":
            return ch
        if ch.isalnum():
            return None
    return None
