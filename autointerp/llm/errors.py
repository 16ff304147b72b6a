"""Why an LLM call failed for good, as a kind that callers can act on (abort the job, skip one feature...)."""

from __future__ import annotations

import json
import re
import socket

from autointerp.errors import AutointerpError

# Kinds worth another attempt: the same request may well succeed. A refused connection ("connection") is not:
# nothing listens there, and waiting will not change that; a connection dropped mid-call ("dropped") is.
RETRYABLE = frozenset({"rate_limit", "server", "timeout", "dropped", "bad_body"})
# Kinds for which a feature that still failed is worth trying again later in the same job.
TRANSIENT = RETRYABLE


class LLMCallError(AutointerpError):
    """A call that failed after retries, or could not be made.

    kind: auth | rate_limit | server | timeout | connection | dropped | bad_body | bad_request | malformed |
    unsupported. `auth` and `connection` (nothing listens at the address) mean every later call fails too;
    the others concern this call. `bad_body`: a 2xx answer that is not JSON (truncated, invalid UTF-8, an
    HTML page), transient like a 5xx; `malformed`: JSON of the wrong shape, which asking again will not fix.
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


def unreadable_body(content: bytes) -> SendError:
    """A 2xx body that cannot be read as a JSON object: retried like a 5xx, the text kept for the ledger."""
    return SendError("bad_body", 200, content[:20000].decode("utf-8", errors="replace"))


def json_object(content: bytes) -> dict:
    """The body as a JSON object, or SendError("bad_body") when it is not UTF-8 JSON (truncated, an HTML page)."""
    try:
        body = json.loads(content.decode("utf-8"))
    except ValueError:  # UnicodeDecodeError is a ValueError
        raise unreadable_body(content) from None
    if not isinstance(body, dict):
        raise unreadable_body(content)
    return body


def connection_error(exc: BaseException) -> SendError:
    """An SDK's connection error: "connection" when no connection was made (refused, unknown host: fail fast),
    "dropped" when one was reset or closed mid-call (retried)."""
    cause: BaseException | None = exc
    while cause is not None:  # by class name: SDKs may bundle their own copy of httpx
        if type(cause).__name__ == "ConnectError" or isinstance(cause, (ConnectionRefusedError, socket.gaierror)):
            return SendError("connection", detail=str(cause) or type(cause).__name__)
        cause = cause.__cause__ or cause.__context__
    return SendError("dropped", detail=str(exc))


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
