"""The OpenAI adapter, for api.openai.com and any compatible server (vLLM, Ollama, llama.cpp, OpenRouter)."""

from __future__ import annotations

from typing import Any

import openai

from autointerp.llm.base import LLMResponse, TokenLogprob, Usage
from autointerp.llm.client import ProviderLLM, sdk_arguments
from autointerp.llm.errors import MalformedResponse, SendError, connection_error, json_object


class OpenAICompatibleLLM(ProviderLLM):
    provider = "openai"
    key_env = "OPENAI_API_KEY"
    default_base_url = "https://api.openai.com/v1"
    supports_seed = True

    def _make_client(self) -> openai.AsyncOpenAI:
        return openai.AsyncOpenAI(
            api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.retries.timeout_s
        )

    def _max_tokens_field(self) -> str:
        # api.openai.com wants max_completion_tokens (newer models reject max_tokens); compatible servers know max_tokens
        return "max_completion_tokens" if self._endpoint_host() == "https://api.openai.com" else "max_tokens"

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
