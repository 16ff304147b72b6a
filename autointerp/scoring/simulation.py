"""Simulation: from the label alone, the LLM predicts a 0-10 activation for every token of every test context;
the score is the Pearson correlation of predictions with the true activations (Bills et al. 2023).

Three ways to get predictions, best first:
- "echo": a completions endpoint with echo (vLLM, llama.cpp). One prompt lists several contexts, every token
  followed by a `<TAB>unknown` slot; the echoed prompt's top logprobs at each slot give a distribution over
  "0".."10" and so an expected value, in one request with no generation.
- "chat_logprobs": per context, the model answers `number: activation` lines; expected values come from
  the top logprobs at each answer (OpenAI-style chat).
- "json": per context, a JSON list of integers (providers without logprobs, e.g. Anthropic).
With tokenizers that split digits, "10" is read as its first digit; a slot whose alternatives hold no digit
counts as unparsed and leaves the statistics.
"""

from __future__ import annotations

import json
import re
from typing import Any

import numpy as np
from pydantic import NonNegativeInt, PositiveInt

from autointerp import render
from autointerp.errors import AutointerpError
from autointerp.llm.base import LLM, LLMResponse, constrained
from autointerp.prompts import load_prompt
from autointerp.records import Example, Explanation, FeatureExamples, ItemJudgement, Score
from autointerp.scoring import items, metrics
from autointerp.scoring.common import NEGATIVE_SUBSETS, gather_limited, judged_item, rng_for, scoring_split
from autointerp.scoring.llm_output import (
    ACTIVATION_VALUES,
    answer_slots,
    echo_slot_tops,
    expected_value,
    json_list_grammar,
    numbered_lines_grammar,
)

MODES = ("echo", "chat_logprobs", "json")
SLOT_WORD = "unknown"
SUBSETS = ("all", *NEGATIVE_SUBSETS, "positives", "top_and_random")
_SUBSET_GROUPS = {
    "all": ("positives", *NEGATIVE_SUBSETS),
    "random_negatives": ("positives", "random_negatives"),
    "hard_negatives": ("positives", "hard_negatives"),
    "positives": ("positives",),
    "top_and_random": ("positives", "random_negatives"),
}
_JSON_LIST = re.compile(r"\[[^\[\]]*\]")


def simulation_mode(llm: LLM) -> str:
    if getattr(llm, "supports_echo", False) and getattr(llm, "supports_logprobs", False):
        return "echo"
    return "chat_logprobs" if getattr(llm, "supports_logprobs", False) else "json"


def parse_json_predictions(text: str, n_tokens: int) -> list[float] | None:
    """The first JSON list of exactly n integers 0-10 in the text; None if there is none."""
    for match in _JSON_LIST.finditer(text):
        try:
            values = json.loads(match.group(0))
        except json.JSONDecodeError:
            continue
        if (
            isinstance(values, list)
            and len(values) == n_tokens
            and all(isinstance(v, int) and not isinstance(v, bool) and v in ACTIVATION_VALUES for v in values)
        ):
            return [float(v) for v in values]
    return None


class SimulationScorer:
    name = "simulation"
    stage = "simulation"

    def __init__(
        self,
        llm: LLM,
        *,
        mode: str | None = None,
        whole_records: bool = False,
        contexts_per_prompt: PositiveInt = 4,
        before: NonNegativeInt = 16,
        after: NonNegativeInt = 7,
        top_logprobs: NonNegativeInt = 20,
        concurrency: PositiveInt = 4,
        n_resamples: PositiveInt = metrics.N_RESAMPLES,
        seed: NonNegativeInt = metrics.SEED,
    ):
        self.llm = llm
        self.mode = mode or simulation_mode(llm)
        if self.mode not in MODES:
            raise AutointerpError(f"unknown simulation mode {self.mode!r}; choose one of {', '.join(MODES)}")
        self.whole_records = whole_records
        self.contexts_per_prompt = contexts_per_prompt
        self.before, self.after = before, after
        self.top_logprobs = top_logprobs
        self.concurrency = concurrency
        self.n_resamples, self.seed = n_resamples, seed

    async def score(self, explanation: Explanation, examples: FeatureExamples, split: str = "test") -> list[Score]:
        chosen = scoring_split(examples, split)
        rng = rng_for(examples, split, self.seed, self.name)
        contexts = chosen.all()
        windows = [
            (e.tokens, e.activations)
            if self.whole_records
            else render.window(e, render.window_center(e, examples.characteristic_tokens, rng), self.before, self.after)
            for e in contexts
        ]
        predict = {"echo": self._predict_echo, "chat_logprobs": self._predict_chat, "json": self._predict_json}
        predictions, responses, template = await predict[self.mode](explanation.label, [t for t, _ in windows])
        details = {
            "mode": self.mode,
            "prompt_name": template.name,
            "prompt_hash": template.sha256,
            "window": "whole records" if self.whole_records else self.before + 1 + self.after,
            "n_calls": len(responses),
            "usage": {
                "prompt_tokens": sum(r.usage.prompt_tokens for r in responses),
                "completion_tokens": sum(r.usage.completion_tokens for r in responses),
            },
        }
        return self._scores(contexts, [a for _, a in windows], predictions, split, details)

    async def _predict_echo(self, label: str, token_lists: list[list[str]]):
        template = load_prompt("simulation_echo")
        batches = [
            list(range(i, min(i + self.contexts_per_prompt, len(token_lists))))
            for i in range(0, len(token_lists), self.contexts_per_prompt)
        ]

        async def ask(batch: list[int]) -> LLMResponse:
            blocks = [
                "\n".join(
                    [
                        "<start>",
                        *(f"{render.one_line(t)}\t{SLOT_WORD}" for t in render.display_tokens(token_lists[i])),
                        "<end>",
                    ]
                )
                for i in batch
            ]
            prompt = template.render_text(label=label, contexts="\n".join(blocks))
            return await self.llm.complete(
                prompt, max_tokens=1, temperature=0.0, logprobs=self.top_logprobs, echo=True, stage=self.stage
            )

        responses = await gather_limited([lambda b=b: ask(b) for b in batches], self.concurrency)
        predictions: list[list[float | None] | None] = [None] * len(token_lists)
        for batch, response in zip(batches, responses):
            tops = echo_slot_tops(response.logprobs or [], SLOT_WORD)
            if len(tops) != sum(len(token_lists[i]) for i in batch):
                continue  # the echo does not line up with the prompt: the whole batch is unparsed
            offset = 0
            for i in batch:
                n = len(token_lists[i])
                predictions[i] = [expected_value(top) for top in tops[offset : offset + n]]
                offset += n
        return predictions, responses, template

    async def _predict_chat(self, label: str, token_lists: list[list[str]]):
        template = load_prompt("simulation_chat")

        async def ask(tokens: list[str]) -> LLMResponse:
            listing = "\n".join(f"{j}\t{render.one_line(t)}" for j, t in enumerate(render.display_tokens(tokens), 1))
            return await self.llm.chat(
                template.render_messages(label=label, tokens=listing),
                max_tokens=6 * len(tokens) + 8,
                temperature=0.0,
                top_logprobs=self.top_logprobs,
                stage=self.stage,
                **constrained(self.llm, numbered_lines_grammar(len(tokens), ACTIVATION_VALUES)),
            )

        responses = await gather_limited([lambda t=t: ask(t) for t in token_lists], self.concurrency)
        predictions = []
        for tokens, response in zip(token_lists, responses):
            slots = answer_slots(response.logprobs or [])
            predictions.append([expected_value(slots[j]) if j in slots else None for j in range(1, len(tokens) + 1)])
        return predictions, responses, template

    async def _predict_json(self, label: str, token_lists: list[list[str]]):
        template = load_prompt("simulation_json")

        async def ask(tokens: list[str]) -> LLMResponse:
            listing = "\n".join(f"{j}\t{render.one_line(t)}" for j, t in enumerate(render.display_tokens(tokens), 1))
            return await self.llm.chat(
                template.render_messages(label=label, tokens=listing, n_tokens=len(tokens)),
                max_tokens=4 * len(tokens) + 8,
                temperature=0.0,
                stage=self.stage,
                **constrained(self.llm, json_list_grammar(len(tokens), ACTIVATION_VALUES)),
            )

        responses = await gather_limited([lambda t=t: ask(t) for t in token_lists], self.concurrency)
        predictions = [parse_json_predictions(r.text, len(t)) for t, r in zip(token_lists, responses)]
        return predictions, responses, template

    def _scores(
        self,
        contexts: list[Example],
        true_acts: list[list[float]],
        predictions: list[list[float | None] | None],
        split: str,
        details: dict[str, Any],
    ) -> list[Score]:
        """Pooled correlation per subset over the tokens that got a prediction; unparsed tokens are counted."""
        judged = [
            judged_item(
                self.name,
                k,
                e,
                true_activations=[float(a) for a in acts],
                predicted_activations=list(preds) if preds is not None else [None] * len(acts),
            )
            for k, (e, acts, preds) in enumerate(zip(contexts, true_acts, predictions))
        ]
        scores = []
        for subset in SUBSETS:
            mask = items.subset_mask(judged, subset)
            chosen = [j for j, m in zip(judged, mask) if m]
            got = items.compute("ev_correlation", chosen, self.n_resamples, self.seed)
            kept = [_answered(j) for j in chosen]
            groups = sorted({j.group for j in chosen})
            row = {
                **details,
                "groups": groups,
                "n_unparsed": len(chosen) - got.n,
                "n_unparsed_tokens": sum(len(j.true_activations) - int(ok.sum()) for j, ok in zip(chosen, kept)),
                "n_tokens": int(sum(ok.sum() for ok in kept)),
                "by_quantile": items.by_quantile("ev_correlation", chosen, self.n_resamples, self.seed),
            }
            if subset == "top_and_random":
                row["reference"] = "Bills et al. 2023 top-and-random: top-quantile positives + random contexts"
            missing = [g for g in _SUBSET_GROUPS[subset] if g not in groups]
            if missing:
                row["note"] = f"no {' or '.join(g.replace('_', ' ') for g in missing)} in the {split} split"
            if got.value is None:
                t = [np.asarray(j.true_activations)[ok] for j, ok in zip(chosen, kept) if ok.any()]
                p = [np.array([v for v in j.predicted_activations if v is not None]) for j, ok in zip(chosen, kept) if ok.any()]
                row["note"] = "; ".join(filter(None, [row.get("note"), _undefined_reason(t, p)]))
            scores.append(
                Score(
                    scorer=self.name,
                    metric="ev_correlation",
                    value=got.value,
                    ci_low=got.ci_low,
                    ci_high=got.ci_high,
                    n=got.n,
                    subset=subset,
                    split=split,
                    scorer_model=self.llm.name,
                    details=row,
                    items=judged,
                )
            )
        return scores


def _answered(item: ItemJudgement) -> np.ndarray:
    return np.array([p is not None for p in item.predicted_activations], dtype=bool)


def _undefined_reason(true_acts: list[np.ndarray], preds: list[np.ndarray]) -> str:
    if not true_acts or sum(len(x) for x in true_acts) < 2:
        return "too few parsed predictions: correlation undefined"
    if np.ptp(np.concatenate(preds)) == 0:
        return "constant predictions: correlation undefined"
    return "constant true activations in this subset: correlation undefined"
