"""Binary judgements by an LLM over shuffled batches of numbered excerpts (detection and fuzzing share this)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from autointerp.llm.base import LLM, LLMResponse, constrained
from autointerp.prompts import load_prompt
from autointerp.records import Example, ItemJudgement
from autointerp.scoring.common import gather_limited, judged_item
from autointerp.scoring.llm_output import (
    BINARY_VALUES,
    answer_slots,
    answer_values,
    digit_distribution,
    numbered_lines_grammar,
)

TOP_LOGPROBS = 5


@dataclass
class JudgeItem:
    text: str
    truth: int  # 1: the label should fit
    group: str
    example: Example  # the context the text comes from


async def judge(
    llm: LLM,
    template_name: str,
    label: str,
    items: list[JudgeItem],
    *,
    batch_size: int,
    rng: np.random.Generator,
    stage: str,
    concurrency: int,
) -> tuple[list[ItemJudgement], dict[str, Any]]:
    """Ask about `items` in shuffled batches; answers are `number: 1|0` lines, P(1) read from logprobs if offered."""
    template = load_prompt(template_name)
    order = rng.permutation(len(items))
    batches = [order[i : i + batch_size] for i in range(0, len(order), batch_size)]
    use_logprobs = bool(getattr(llm, "supports_logprobs", False))

    async def ask(batch: np.ndarray) -> LLMResponse:
        contexts = "\n".join(f"{j}. {items[i].text}" for j, i in enumerate(batch, 1))
        messages = template.render_messages(label=label, contexts=contexts)
        return await llm.chat(
            messages,
            max_tokens=6 * len(batch) + 8,
            temperature=0.0,
            top_logprobs=TOP_LOGPROBS if use_logprobs else None,
            stage=stage,
            **constrained(llm, numbered_lines_grammar(len(batch), BINARY_VALUES)),
        )

    responses = await gather_limited([lambda b=b: ask(b) for b in batches], concurrency)
    predictions: list[int | None] = [None] * len(items)
    probabilities: list[float | None] = [None] * len(items)
    for batch, response in zip(batches, responses):
        values = answer_values(response.text)
        slots = answer_slots(response.logprobs) if (use_logprobs and response.logprobs) else {}
        for j, i in enumerate(batch, 1):
            if values.get(j) in BINARY_VALUES:
                predictions[i] = values[j]
            dist = digit_distribution(slots[j], BINARY_VALUES) if j in slots else None
            if dist is not None:
                probabilities[i] = dist.get(1, 0.0)
    unparsed_outputs = [r.text[:200] for b, r in zip(batches, responses) if any(predictions[i] is None for i in b)]
    judged = [
        judged_item(stage, k, it.example, it.group, truth=it.truth, prediction=predictions[k], probability=probabilities[k])
        for k, it in enumerate(items)
    ]
    details = {
        "prompt_name": template.name,
        "prompt_hash": template.sha256,
        "batch_size": batch_size,
        "n_calls": len(batches),
        "usage": {
            "prompt_tokens": sum(r.usage.prompt_tokens for r in responses),
            "completion_tokens": sum(r.usage.completion_tokens for r in responses),
        },
        "probabilities": "logprobs" if use_logprobs else "none",
        "output_grammar": bool(constrained(llm, "")),
        "unparsed_outputs": unparsed_outputs[:3],
    }
    return judged, details
