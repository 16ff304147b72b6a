"""What every provider adapter shares: the cache lookup, limits, retries, the ledger row and the cost.

An adapter subclasses ProviderLLM and supplies `_make_client` (its SDK client), `_chat_request` /
`_complete_request` (the JSON body), `_send` (one HTTP attempt, raising SendError / MalformedResponse) and
`_parse` (body -> LLMResponse, raising MalformedResponse).

Caching: a request at temperature 0 is answered by any earlier identical answer. At temperature > 0 the
n-th identical request made through this object is answered by the n-th stored answer, so that k samples
stay k different samples on a rerun, and a rerun still makes no repeated paid call.
"""

from __future__ import annotations

import asyncio
import time
from collections import Counter
from typing import Any
from urllib.parse import urlsplit

from autointerp.llm.base import LLMResponse, Usage
from autointerp.llm.errors import LLMCallError, MalformedResponse, SendError, redact
from autointerp.llm.ledger import EncodedRequest, Ledger
from autointerp.llm.limits import RateLimiter, RateLimits, estimate_tokens
from autointerp.llm.prices import PriceTable
from autointerp.llm.retry import Retries, with_retries
from autointerp.stage_clock import stage as cpu_stage
from autointerp.store.db import Store
from autointerp.store.llm_calls import LLMCall


def sdk_arguments(request: dict[str, Any], named: tuple[str, ...]) -> dict[str, Any]:
    """The request as SDK keyword arguments: `named` fields by name, the rest through extra_body, so that
    the JSON sent is exactly `request` whichever parameters this SDK version declares."""
    kwargs = {k: v for k, v in request.items() if k in named}
    extra = {k: v for k, v in request.items() if k not in named}
    if extra:
        kwargs["extra_body"] = extra
    return kwargs


def url_host(url: str | None) -> str | None:
    """scheme://host:port of a URL, without any user:password part."""
    if not url:
        return None
    parts = urlsplit(url)
    host = parts.hostname or ""
    return f"{parts.scheme}://{host}{':' + str(parts.port) if parts.port else ''}"


class ProviderLLM:
    provider: str = ""
    key_env: str | None = None  # the environment variable holding the API key, named in auth errors
    default_base_url: str = ""
    supports_logprobs: bool = True
    supports_echo: bool = True
    supports_grammar: bool = False  # the server takes a GBNF `grammar` that constrains the answer (llama.cpp)
    supports_seed: bool = False  # the server takes a sampling `seed` (OpenAI-compatible servers)

    def __init__(
        self,
        model: str,
        *,
        base_url: str | None = None,
        api_key: str | None = None,
        store: Store | None = None,
        run_id: str | None = None,
        limits: RateLimits | None = None,
        prices: PriceTable | None = None,
        retries: Retries | None = None,
        cache: bool = True,
    ):
        self.model = model
        self.name = f"{self.provider}:{model}"
        self.base_url = base_url
        self.run_id = run_id
        self.limits = limits or RateLimits()
        self.retries = retries or Retries()
        self.prices = prices or PriceTable.default()
        self.cache = cache
        self._api_key = api_key
        self._limiter = RateLimiter(self.limits)
        self.ledger = Ledger(store, provider=self.provider, model=model, endpoint_host=self._endpoint_host())
        self._occurrences: Counter[str] = Counter()
        self._inflight: dict[tuple[str, int], asyncio.Event] = {}
        self._client: Any = None
        self._client_loop: asyncio.AbstractEventLoop | None = None
        # set by a batch driver: a request the ledger cannot answer goes to deferral(...) instead of the server
        self.deferral: Any = None
        self.record_cache_hits = True

    # --- what adapters supply -------------------------------------------------------------------------
    def _make_client(self) -> Any:
        raise NotImplementedError

    def _chat_request(self, messages, max_tokens, temperature, top_logprobs) -> dict[str, Any]:
        raise NotImplementedError

    def _complete_request(self, prompt, max_tokens, temperature, logprobs, echo) -> dict[str, Any]:
        raise NotImplementedError

    async def _send(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        raise NotImplementedError

    def _parse(self, endpoint: str, body: dict[str, Any]) -> LLMResponse:
        raise NotImplementedError

    # --- the protocol ---------------------------------------------------------------------------------
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
    ) -> LLMResponse:
        """`grammar` (GBNF) constrains the answer where the provider supports it (`supports_grammar`), `seed`
        fixes a sampled answer (`supports_seed`); both are part of the request, hence of the cache key.
        Elsewhere they are left out and the caller's parser decides."""
        if top_logprobs is not None and not self.supports_logprobs:
            raise LLMCallError(
                f"{self.name} gives no token logprobs; use an OpenAI-compatible model (openai:<model> or local) for this step",
                "unsupported",
            )
        request = self._chat_request(messages, max_tokens, temperature, top_logprobs)
        if grammar is not None and self.supports_grammar:
            request["grammar"] = grammar
        if seed is not None and self.supports_seed:
            request["seed"] = seed
        prompt_chars = sum(len(str(m.get("content", ""))) for m in messages)
        return await self._call("chat", request, temperature, stage, estimate_tokens(prompt_chars, max_tokens))

    async def complete(
        self,
        prompt: str,
        *,
        max_tokens: int = 16,
        temperature: float = 0.0,
        logprobs: int | None = None,
        echo: bool = False,
        stage: str | None = None,
    ) -> LLMResponse:
        if logprobs is not None and not self.supports_logprobs:
            raise LLMCallError(f"{self.name} gives no token logprobs; use an OpenAI-compatible model", "unsupported")
        if echo and not self.supports_echo:
            raise LLMCallError(
                f"{self.name} cannot echo prompt logprobs; use a completions server such as vLLM or llama.cpp", "unsupported"
            )
        request = self._complete_request(prompt, max_tokens, temperature, logprobs, echo)
        return await self._call("complete", request, temperature, stage, estimate_tokens(len(prompt), max_tokens))

    async def aclose(self) -> None:
        """Write the ledger's pending rows and close the HTTP client."""
        self.ledger.close()
        client, self._client = self._client, None
        if client is not None and self._client_loop is asyncio.get_running_loop():
            await client.close()

    async def __aenter__(self):
        return self

    async def __aexit__(self, *exc) -> None:
        await self.aclose()

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name} at {self.base_url or self.default_base_url}>"

    # --- the machinery --------------------------------------------------------------------------------
    def _endpoint_host(self) -> str | None:
        return url_host(self.base_url or self.default_base_url)

    def sdk_client(self) -> Any:
        """The SDK client for the running event loop (HTTP connections cannot cross loops: one per loop)."""
        loop = asyncio.get_running_loop()
        if self._client is None or self._client_loop is not loop:
            self._client = self._make_client()
            self._client_loop = loop
        return self._client

    async def _call(
        self, endpoint: str, request: dict[str, Any], temperature: float, stage: str | None, est_tokens: int
    ) -> LLMResponse:
        with cpu_stage("llm"):
            return await self._cached_or_sent(endpoint, EncodedRequest(request), temperature, stage, est_tokens)

    async def _cached_or_sent(
        self, endpoint: str, request: dict[str, Any], temperature: float, stage: str | None, est_tokens: int
    ) -> LLMResponse:
        key = self.ledger.key(endpoint, request)
        occurrence = 0
        if temperature != 0:
            occurrence = self._occurrences[key]
            self._occurrences[key] += 1
        slot = (key, occurrence)
        while (busy := self._inflight.get(slot)) is not None:  # the same request is on its way: reuse its answer
            await busy.wait()
        if self.cache:
            answer = await self.ledger.answer(key, occurrence)
            if answer is not None:
                return self._answer_from_cache(endpoint, request, key, stage, answer)
        if self.deferral is not None:
            return self.deferral.defer(self, endpoint, request, key, occurrence, stage)
        done = self._inflight[slot] = asyncio.Event()
        try:
            return await self._call_server(endpoint, request, key, stage, est_tokens)
        finally:
            del self._inflight[slot]
            done.set()

    def _answer_from_cache(self, endpoint, request, key, stage, body) -> LLMResponse:
        response = self._parse(endpoint, body)
        response.cached = True
        response.raw = body
        if self.record_cache_hits:
            self._record(key, stage, request, usage=response.usage, cached=True, attempts=0)
        return response

    async def _call_server(self, endpoint, request, key, stage, est_tokens) -> LLMResponse:
        attempts = 0

        async def attempt() -> dict[str, Any]:
            nonlocal attempts
            attempts += 1
            async with self._limiter.slot(est_tokens):
                return await self._send(endpoint, request)

        started = time.perf_counter()
        body: Any = None
        try:
            body = await with_retries(attempt, self.retries)
            response = self._parse(endpoint, body)
        except SendError as exc:
            message = self._failure_message(exc, attempts)
            kept = {"unparsed_body": exc.detail} if exc.kind == "bad_body" else None
            self._record(key, stage, request, body=kept, started=started, error=message, attempts=attempts)
            raise LLMCallError(message, exc.kind) from None
        except MalformedResponse as exc:
            body = exc.body if isinstance(exc.body, dict) else {"unparsed_body": str(exc.body)[:20000]}
            message = (
                f"{self._where()} sent a response for {self.name} that is not a valid {endpoint} answer "
                f"({redact(str(exc), self._secrets())}); the body is kept in llm_calls"
            )
            self._record(key, stage, request, body=body, started=started, error=message, attempts=attempts)
            raise LLMCallError(message, "malformed") from None
        except Exception as exc:  # an SDK surprise: still one ledger row, then the original error
            message = redact(f"{type(exc).__name__}: {exc}", self._secrets())
            self._record(key, stage, request, started=started, error=message, attempts=attempts)
            raise
        cost, priced = self.prices.cost(self.provider, self.model, response.usage)
        response.cost_usd = cost
        response.raw = body
        self._limiter.settle(est_tokens, response.usage.prompt_tokens + response.usage.completion_tokens)
        self._record(
            key, stage, request, body=body, usage=response.usage, cost=cost, priced=priced, started=started, attempts=attempts
        )
        return response

    def _record(
        self,
        key: str,
        stage: str | None,
        request: dict[str, Any],
        *,
        body: dict[str, Any] | None = None,
        usage: Usage | None = None,
        cost: float = 0.0,
        priced: bool = True,
        started: float | None = None,
        error: str | None = None,
        cached: bool = False,
        attempts: int = 1,
    ) -> None:
        usage = usage or Usage()
        self.ledger.record(
            LLMCall(
                cache_key=key,
                provider=self.provider,
                model=self.model,
                stage=stage,
                run_id=self.run_id,
                request=request,
                response=body,
                prompt_tokens=usage.prompt_tokens,
                completion_tokens=usage.completion_tokens,
                cost_usd=cost,
                latency_ms=(time.perf_counter() - started) * 1000 if started is not None else 0.0,
                error=error,
                cached=cached,
                attempts=attempts,
                endpoint_host=self.ledger.endpoint_host,
                priced=priced,
            )
        )

    def _secrets(self) -> list[str]:
        return [self._api_key] if self._api_key else []

    def _where(self) -> str:
        return self.base_url or self.default_base_url

    def _failure_message(self, exc: SendError, attempts: int) -> str:
        detail = redact(exc.detail, self._secrets())
        where = self._where()
        tries = f"after {attempts} attempt{'s' if attempts != 1 else ''}"
        if exc.kind == "auth":
            if self.key_env:
                return (
                    f"{where} refused {self.key_env} (HTTP {exc.status}): check that {self.key_env} holds a valid key "
                    f"with access to {self.model}"
                )
            return f"{where} refused the request (HTTP {exc.status}): the server needs credentials"
        if exc.kind == "connection":
            return f"cannot reach {where} (connection refused or unknown host): is the server running? set --base-url"
        if exc.kind == "dropped":
            return f"{where} kept dropping the connection {tries}: {detail}"
        if exc.kind == "bad_body":
            return (
                f"{where} kept answering {self.name} with a body that is not JSON {tries} (truncated, not UTF-8, or "
                "an error page); the last body is kept in llm_calls"
            )
        if exc.kind == "timeout":
            return (
                f"{self.name} at {where} did not answer within {self.retries.timeout_s:g} s ({tries}): "
                "raise the timeout or lower the concurrency"
            )
        if exc.kind == "rate_limit":
            return f"{self.name} is still rate limited (HTTP 429) {tries}: lower the concurrency or rpm/tpm limits, or try later"
        if exc.kind == "server":
            return f"{where} kept failing with HTTP {exc.status} {tries}: {detail}"
        return f"{where} rejected the request for {self.name} (HTTP {exc.status}): {detail}"
