"""The Anthropic adapter (messages API). Anthropic gives no token logprobs, so scorers that need them refuse it."""

from __future__ import annotations

from typing import Any

import anthropic

from autointerp.llm.base import LLMResponse, Usage
from autointerp.llm.client import ProviderLLM, sdk_arguments
from autointerp.llm.errors import MalformedResponse, SendError, connection_error, json_object


class AnthropicLLM(ProviderLLM):
    provider = "anthropic"
    key_env = "ANTHROPIC_API_KEY"
    default_base_url = "https://api.anthropic.com"
    supports_logprobs = False
    supports_echo = False

    def _make_client(self) -> anthropic.AsyncAnthropic:
        return anthropic.AsyncAnthropic(
            api_key=self._api_key, base_url=self.base_url, max_retries=0, timeout=self.retries.timeout_s
        )

    def _chat_request(self, messages, max_tokens, temperature, top_logprobs) -> dict[str, Any]:
        system = "\n\n".join(m["content"] for m in messages if m["role"] == "system")
        request: dict[str, Any] = {
            "model": self.model,
            "max_tokens": max_tokens,
            "temperature": temperature,
            "messages": [{"role": m["role"], "content": m["content"]} for m in messages if m["role"] != "system"],
        }
        if system:
            request["system"] = system
        return request

    def _complete_request(self, prompt, max_tokens, temperature, logprobs, echo) -> dict[str, Any]:
        """A plain completion becomes one user message (the messages API has no raw-text endpoint)."""
        return self._chat_request([{"role": "user", "content": prompt}], max_tokens, temperature, None)

    async def _send(self, endpoint: str, request: dict[str, Any]) -> dict[str, Any]:
        client = self.sdk_client()
        try:
            raw = await client.messages.with_raw_response.create(
                **sdk_arguments(request, ("model", "max_tokens", "messages"))
            )
        except anthropic.APIStatusError as exc:
            raise SendError.from_status(exc.status_code, exc.response.headers, exc.message) from None
        except anthropic.APITimeoutError:
            raise SendError("timeout") from None
        except anthropic.APIConnectionError as exc:
            raise connection_error(exc) from None
        return json_object(await raw.read())  # this SDK's raw response reads its body asynchronously

    def _parse(self, endpoint: str, body: dict[str, Any]) -> LLMResponse:
        try:
            blocks = body["content"]
            text = "".join(block["text"] for block in blocks if block.get("type") == "text")
            usage = body.get("usage") or {}
            return LLMResponse(
                text=text,
                model=body.get("model") or "",
                usage=Usage(int(usage.get("input_tokens") or 0), int(usage.get("output_tokens") or 0)),
            )
        except (KeyError, TypeError, ValueError, AttributeError) as exc:
            raise MalformedResponse(f"{type(exc).__name__}: {exc}", body) from None
