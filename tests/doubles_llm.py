"""A scripted LLM double: answers chosen by a test function, for testing arithmetic and parsing only.

Real model behaviour is tested against the bundled SmolLM2 behind llama.cpp (the `local_llm` fixture).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from autointerp.llm.base import LLMResponse, TokenLogprob, Usage


@dataclass
class Call:
    kind: str  # chat | complete
    stage: str | None
    messages: list[dict[str, str]] | None = None
    prompt: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)

    def text(self) -> str:
        return self.prompt if self.prompt is not None else "\n".join(m["content"] for m in self.messages or [])


Reply = str | LLMResponse


class ScriptedLLMDouble:
    """`reply(call)` returns the text (or a whole LLMResponse) the double answers; every call is kept."""

    def __init__(
        self,
        reply: Callable[[Call], Reply],
        *,
        name: str = "double:scripted",
        supports_logprobs: bool = False,
        supports_echo: bool = False,
        supports_grammar: bool = False,
        supports_seed: bool = False,
    ):
        self.reply = reply
        self.name = name
        self.supports_logprobs = supports_logprobs
        self.supports_echo = supports_echo
        self.supports_grammar = supports_grammar
        self.supports_seed = supports_seed
        self.calls: list[Call] = []

    def _answer(self, call: Call) -> LLMResponse:
        self.calls.append(call)
        out = self.reply(call)
        if isinstance(out, LLMResponse):
            return out
        return LLMResponse(text=out, model=self.name, usage=Usage(len(call.text()) // 4, len(out) // 4))

    async def chat(
        self, messages, *, max_tokens=256, temperature=0.0, top_logprobs=None, stage=None, grammar=None, seed=None
    ) -> LLMResponse:
        kwargs = {
            "max_tokens": max_tokens, "temperature": temperature, "top_logprobs": top_logprobs, "grammar": grammar, "seed": seed,
        }
        return self._answer(Call("chat", stage, messages=messages, kwargs=kwargs))

    async def complete(
        self, prompt, *, max_tokens=16, temperature=0.0, logprobs=None, echo=False, stage=None
    ) -> LLMResponse:
        kwargs = {"max_tokens": max_tokens, "temperature": temperature, "logprobs": logprobs, "echo": echo}
        return self._answer(Call("complete", stage, prompt=prompt, kwargs=kwargs))


def tokens_with_top(pieces: list[tuple[str, dict[str, float]]]) -> list[TokenLogprob]:
    """Logprob tokens from (token, top alternatives); the token's own logprob is taken from `top` if present."""
    return [TokenLogprob(token=t, logprob=top.get(t), top=top) for t, top in pieces]
