"""The one way to talk to LLMs: an async protocol that every provider adapter implements."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Protocol


@dataclass
class TokenLogprob:
    token: str
    logprob: float | None
    top: dict[str, float] = field(default_factory=dict)  # alternative token -> logprob


@dataclass
class Usage:
    prompt_tokens: int = 0
    completion_tokens: int = 0


@dataclass
class LLMResponse:
    text: str
    model: str
    usage: Usage = field(default_factory=Usage)
    logprobs: list[TokenLogprob] | None = None  # generated tokens (or prompt + generated when echoed)
    cost_usd: float = 0.0
    cached: bool = False
    raw: dict[str, Any] | None = None


class LLM(Protocol):
    """`name` is "provider:model". Providers without a capability raise AutointerpError when it is asked for."""

    name: str
    supports_logprobs: bool
    supports_echo: bool
    supports_grammar: bool  # chat() honours `grammar` (GBNF); others ignore it
    supports_seed: bool  # chat() honours `seed` (a sampled answer is reproducible); others ignore it

    async def chat(
        self,
        messages: list[dict[str, str]],
        *,
        max_tokens: int = 256,
        temperature: float = 0.0,
        top_logprobs: int | None = None,
        stage: str | None = None,
        grammar: str | None = None,
        seed: int | None = None,
    ) -> LLMResponse: ...

    async def complete(
        self,
        prompt: str,
        *,
        max_tokens: int = 16,
        temperature: float = 0.0,
        logprobs: int | None = None,
        echo: bool = False,
        stage: str | None = None,
    ) -> LLMResponse: ...


def constrained(llm: LLM, grammar: str) -> dict[str, Any]:
    """The keyword arguments that ask `llm` for an answer in `grammar` (GBNF): none for models that cannot."""
    return {"grammar": grammar} if getattr(llm, "supports_grammar", False) else {}


def seeded(llm: LLM, seed: int | None) -> dict[str, Any]:
    """The keyword arguments that fix the sampling seed of `llm`'s answer: none for no seed or a model that cannot."""
    return {"seed": seed} if seed is not None and getattr(llm, "supports_seed", False) else {}
