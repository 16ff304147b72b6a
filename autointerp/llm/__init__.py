"""One async client interface for every LLM; `make_llm("openai:gpt-4o-mini" | "anthropic:<model>" | "local")`.

Every call goes through the ledger (llm_calls: cache + cost) when a store is given.
"""

from __future__ import annotations

import os

from autointerp.errors import AutointerpError
from autointerp.llm.base import LLM, LLMResponse, TokenLogprob, Usage
from autointerp.llm.client import ProviderLLM
from autointerp.llm.errors import LLMCallError
from autointerp.llm.limits import RateLimits
from autointerp.llm.local import LocalServer
from autointerp.llm.prices import Price, PriceTable
from autointerp.llm.retry import Retries
from autointerp.store.db import Store

__all__ = [
    "LLM", "LLMCallError", "LLMResponse", "LocalServer", "Price", "PriceTable", "ProviderLLM", "RateLimits",
    "Retries", "TokenLogprob", "Usage", "make_llm",
]

LOCAL_LIMITS = RateLimits(max_concurrency=2)  # llama.cpp's server answers one request at a time anyway
LOCAL_RETRIES = Retries(max_attempts=3, timeout_s=600.0)  # logprobs over a 49k vocabulary are slow on CPU


def make_llm(
    spec: str,
    *,
    store: Store | None = None,
    run_id: str | None = None,
    base_url: str | None = None,
    limits: RateLimits | None = None,
    prices: PriceTable | None = None,
    retries: Retries | None = None,
    cache: bool = True,
) -> ProviderLLM:
    """An LLM for `spec`: "openai:<model>", "anthropic:<model>" or "local" (the bundled SmolLM2).

    openai: key from OPENAI_API_KEY, endpoint from `base_url` or OPENAI_BASE_URL (any compatible server;
    one that needs no key may go without when a base URL is given). anthropic: ANTHROPIC_API_KEY, endpoint
    from `base_url` or ANTHROPIC_BASE_URL. local: starts the bundled model's server on first use, or uses
    the running one at `base_url`. Close with `await llm.aclose()` (or `async with`) to flush the ledger.
    """
    provider, _, model = spec.partition(":")
    common = {"store": store, "run_id": run_id, "limits": limits, "prices": prices, "retries": retries, "cache": cache}
    if provider == "openai" and model:
        from autointerp.llm.openai_client import OpenAICompatibleLLM

        base_url = base_url or os.environ.get("OPENAI_BASE_URL") or None
        key = os.environ.get("OPENAI_API_KEY")
        if not key:
            if base_url is None:
                raise AutointerpError(
                    f"set OPENAI_API_KEY to use {spec}, or give a base URL (--base-url / OPENAI_BASE_URL) "
                    "of a compatible server that needs no key"
                )
            key = "no-key-needed"
        return OpenAICompatibleLLM(model, api_key=key, base_url=base_url, **common)
    if provider == "anthropic" and model:
        from autointerp.llm.anthropic_client import AnthropicLLM

        key = os.environ.get("ANTHROPIC_API_KEY")
        if not key:
            raise AutointerpError(f"set ANTHROPIC_API_KEY to use {spec}")
        base_url = base_url or os.environ.get("ANTHROPIC_BASE_URL") or None
        return AnthropicLLM(model, api_key=key, base_url=base_url, **common)
    if provider == "local" and model in ("", "smollm2"):
        from autointerp.llm.local import LocalLLM

        common["limits"] = limits or LOCAL_LIMITS
        common["retries"] = retries or LOCAL_RETRIES
        return LocalLLM(base_url=base_url, **common)
    raise AutointerpError(f"unknown LLM {spec!r}: use openai:<model>, anthropic:<model> or local")
