"""The OpenAI adapter, for api.openai.com and any compatible server (vLLM, Ollama, llama.cpp, OpenRouter).

Requests to api.openai.com, or through a proxy from the environment, go through the official SDK; to other
servers through the lean client of `autointerp.llm.http` (the same JSON, a fraction of the client CPU).
"""

from __future__ import annotations

import asyncio
import urllib.request
from typing import Any

import openai

from autointerp import __version__
from autointerp.llm.base import LLMResponse, TokenLogprob, Usage
from autointerp.llm.client import ProviderLLM, sdk_arguments, url_host
from autointerp.llm.errors import MalformedResponse, SendError, connection_error, json_object
from autointerp.llm.http import JsonHttpClient

OPENAI_HOST = "https://api.openai.com"


class OpenAICompatibleLLM(ProviderLLM):
    provider = "openai"
    key_env = "OPENAI_API_KEY"
    default_base_url = "https://api.openai.com/v1"
    supports_seed = True

    # True / False: always / never the lean HTTP client; None: decided by `uses_lean_http()`
    lean_http: bool | None = None

    def __init__(self, model: str, **kwargs: Any):
        super().__init__(model, **kwargs)
        self._http: JsonHttpClient | None = None
        self._http_loop: asyncio.AbstractEventLoop | None = None

    def _before_connect(self) -> None:
        """Called before a client is made (the local model starts its server here)."""

    def _make_client(self) -> openai.AsyncOpenAI:
        self._before_connect()
        return openai.AsyncOpenAI(
            api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.retries.timeout_s
        )

    def uses_lean_http(self) -> bool:
        """The lean client for compatible servers; the SDK for api.openai.com and where a proxy is set."""
        if self.lean_http is None:
            self.lean_http = self._lean_by_default()
        return self.lean_http

    def _lean_by_default(self) -> bool:
        url = self.base_url or self.default_base_url
        if not url or url_host(url) == OPENAI_HOST:
            return False
        host = url_host(url).split("://", 1)[-1]
        return not (urllib.request.getproxies_environment() and not urllib.request.proxy_bypass_environment(host))

    def http_client(self) -> JsonHttpClient:
        """The lean client for the running event loop (one per loop, like `sdk_client`)."""
        loop = asyncio.get_running_loop()
        if self._http is None or self._http_loop is not loop:
            self._before_connect()
            headers = {"User-Agent": f"autointerp/{__version__}"}
            if self._api_key:
                headers["Authorization"] = f"Bearer {self._api_key}"
            self._http = JsonHttpClient(self.base_url or self.default_base_url, headers, self.retries.timeout_s)
            self._http_loop = loop
        return self._http

    async def aclose(self) -> None:
        http, self._http = self._http, None
        if http is not None and self._http_loop is asyncio.get_running_loop():
            await http.close()
        await super().aclose()

    def _max_tokens_field(self) -> str:
        # api.openai.com wants max_completion_tokens (newer models reject max_tokens); compatible servers know max_tokens
        return "max_completion_tokens" if self._endpoint_host() == OPENAI_HOST else "max_tokens"

    def _chat_request(self, messages, max_tokens, temperature, top_logprobs) -> dict[str, Any]:
        request: dict[str, Any] = {
            "model": self.model,
            "messages": [dict(m) for m in messages],
            self._max_tokens_field(): max_tokens,
            "temperature": temperature,
        }
        if top_logprobs is not None:
            request.update(logprobs=True, top_logprobs=top_logprobs)
        return request

    def _complete_request(self, prompt, max_tokens, temperature, logprobs, echo) -> dict[str, Any]:
        request: dict[str, Any] = {"model": self.model, "prompt": prompt, "max_tokens": max_tokens, "temperature": temperature}
        if logprobs is not None:
            request["logprobs"] = logprobs
        if echo:
            request["echo"] = True
        return request

    async def _send(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        if self.uses_lean_http():
            return await self.http_client().post_json("/chat/completions" if endpoint == "chat" else "/completions", request)
        client = self.sdk_client()
        if endpoint == "chat":
            api, named = client.chat.completions, ("model", "messages")
        else:
            api, named = client.completions, ("model", "prompt")
        try:
            raw = await api.with_raw_response.create(**sdk_arguments(request, named))
        except openai.APIStatusError as exc:
            raise SendError.from_status(exc.status_code, exc.response.headers, exc.message) from None
        except openai.APITimeoutError:
            raise SendError("timeout") from None
        except openai.APIConnectionError as exc:
            raise connection_error(exc) from None
        return json_object(raw.content)

    def _parse(self, endpoint: str, body: dict[str, Any]) -> LLMResponse:
        try:
            return parse_chat(body) if endpoint == "chat" else parse_completion(body)
        except (KeyError, IndexError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(f"{type(exc).__name__}: {exc}", body) from None


def _usage(body: dict[str, Any]) -> Usage:
    usage = body.get("usage") or {}
    return Usage(int(usage.get("prompt_tokens") or 0), int(usage.get("completion_tokens") or 0))


def parse_chat(body: dict[str, Any]) -> LLMResponse:
    choice = body["choices"][0]
    text = choice["message"]["content"] or ""
    content = (choice.get("logprobs") or {}).get("content")
    logprobs = None
    if content is not None:
        logprobs = [
            TokenLogprob(t["token"], t["logprob"], {alt["token"]: alt["logprob"] for alt in t.get("top_logprobs") or []})
            for t in content
        ]
    return LLMResponse(text=text, model=body.get("model") or "", usage=_usage(body), logprobs=logprobs)


def parse_completion(body: dict[str, Any]) -> LLMResponse:
    choice = body["choices"][0]
    text = choice["text"]
    if not isinstance(text, str):
        raise TypeError("choices[0].text is not a string")
    lp = choice.get("logprobs")
    logprobs = None
    if lp:
        tops = lp.get("top_logprobs") or [None] * len(lp["tokens"])
        logprobs = [
            TokenLogprob(token, logprob, dict(top or {}))
            for token, logprob, top in zip(lp["tokens"], lp["token_logprobs"], tops, strict=True)
        ]
    return LLMResponse(text=text, model=body.get("model") or "", usage=_usage(body), logprobs=logprobs)
