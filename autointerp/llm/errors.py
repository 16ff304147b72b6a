"""Why an LLM call failed for good, as a kind that callers can act on (abort the job, skip one feature...)."""

from __future__ import annotations

import re

from autointerp.errors import AutointerpError

RETRYABLE = frozenset({"rate_limit", "server", "timeout", "connection"})


class LLMCallError(AutointerpError):
    """A call that failed after retries, or could not be made.

    kind: auth | rate_limit | server | timeout | connection | bad_request | malformed | unsupported.
    `auth` means every later call fails too; the others concern this call.
    """

    def __init__(self, message: str, kind: str):
        super().__init__(message)
        self.kind = kind


class SendError(Exception):
    """One failed attempt, as a provider adapter reports it to the retry loop."""

    def __init__(self, kind: str, status: int | None = None, detail: str = "", retry_after: float | None = None):
        super().__init__(f"{kind} {status or ''} {detail}".strip())
        self.kind = kind
        self.status = status
        self.detail = detail
        self.retry_after = retry_after

    @property
    def retryable(self) -> bool:
        return self.kind in RETRYABLE

    @classmethod
    def from_status(cls, status: int, headers, detail: str) -> SendError:
        if status in (401, 403):
            kind = "auth"
        elif status == 429:
            kind = "rate_limit"
        elif status == 408:
            kind = "timeout"
        elif status >= 500:
            kind = "server"
        else:
            kind = "bad_request"
        return cls(kind, status, detail, retry_after_seconds(headers))


class MalformedResponse(Exception):
    """A 2xx answer whose body is not what the endpoint promises; `body` is what came (dict or raw text)."""

    def __init__(self, detail: str, body):
        super().__init__(detail)
        self.body = body


def retry_after_seconds(headers) -> float | None:
    """Seconds the server asks us to wait: `retry-after-ms` (OpenAI) or `retry-after` in seconds."""
    if not headers:
        return None
    for name, scale in (("retry-after-ms", 0.001), ("retry-after", 1.0)):
        value = headers.get(name)
        if value is None:
            continue
        try:
            return max(0.0, float(value) * scale)
        except ValueError:
            continue  # an HTTP date: fall back to our own backoff
    return None


_KEY_LIKE = re.compile(r"\b(sk-[A-Za-z0-9_\-*]{6,}|sk-ant-[A-Za-z0-9_\-*]{6,})")


def redact(text: str, secrets: list[str]) -> str:
    """Remove API keys (the ones we hold, and anything shaped like one that a server echoes) from a message."""
    for secret in secrets:
        if secret and len(secret) >= 4:
            text = text.replace(secret, "[redacted]")
    return _KEY_LIKE.sub("[redacted]", text)
