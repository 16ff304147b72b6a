"""Provider batch APIs through the official SDKs: OpenAI's Files + Batches and Anthropic's Message Batches.

Each adapter turns ledger requests (the same JSON bodies the streaming adapters send) into batch lines,
submits them, reads a batch's state and its per-line results, finds a batch again from its key alone (after a
kill between creating it and recording it) and cancels it. Bodies of successful lines are exactly what the
streaming endpoint returns, so the ledger stores them under the same cache keys.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

import anthropic
import openai

from autointerp.errors import AutointerpError
from autointerp.llm.client import ProviderLLM
from autointerp.llm.errors import redact


class BatchRejected(AutointerpError):
    """The provider refused a batch (its file, its size, a line's shape); nothing it held is lost."""


@dataclass
class BatchState:
    provider_status: str
    ended: bool  # no line will change any more
    rejected: str | None = None  # why the provider refused the whole batch
    counts: dict[str, int] = field(default_factory=dict)


@dataclass
class LineResult:
    custom_id: str
    body: dict[str, Any] | None  # the endpoint's answer, when the line succeeded
    error: str | None = None
    unfinished: bool = False  # expired or cancelled before it ran


class BatchAPI:
    """What a provider's batch adapter offers; `llm` is the streaming adapter it shares a client and key with."""

    provider = ""
    max_requests = 0
    max_bytes = 0

    def __init__(self, llm: ProviderLLM):
        self.llm = llm

    def line(self, custom_id: str, endpoint: str, request: dict[str, Any]) -> bytes:
        raise NotImplementedError

    async def submit(self, batch_key: str, endpoint: str, lines: list[bytes]) -> tuple[str, str | None]:
        """(provider batch id, input file id or None)."""
        raise NotImplementedError

    async def find(self, batch_key: str, n_requests: int, since: datetime, claimed: set[str]) -> str | None:
        raise NotImplementedError

    async def state(self, batch_id: str) -> BatchState:
        raise NotImplementedError

    async def results(self, batch_id: str) -> list[LineResult]:
        raise NotImplementedError

    async def cancel(self, batch_id: str) -> None:
        raise NotImplementedError

    def _refused(self, what: str, exc: Exception) -> BatchRejected:
        detail = redact(getattr(exc, "message", None) or str(exc), self.llm._secrets())
        return BatchRejected(f"{self.llm.name}: the provider refused {what}: {detail}")


OPENAI_URLS = {"chat": "/v1/chat/completions", "complete": "/v1/completions"}
OPENAI_ENDED = frozenset({"completed", "failed", "expired", "cancelled"})


class OpenAIBatches(BatchAPI):
    """One JSONL file per batch (purpose "batch"), one endpoint per batch, the batch key in its metadata."""

    provider = "openai"
    max_requests = 50_000
    max_bytes = 200 * 1024 * 1024

    def line(self, custom_id: str, endpoint: str, request: dict[str, Any]) -> bytes:
        item = {"custom_id": custom_id, "method": "POST", "url": OPENAI_URLS[endpoint], "body": request}
        return json.dumps(item, separators=(",", ":")).encode() + b"\n"

    async def submit(self, batch_key: str, endpoint: str, lines: list[bytes]) -> tuple[str, str | None]:
        client = self.llm.sdk_client()
        try:
            file = await client.files.create(file=(f"{batch_key}.jsonl", b"".join(lines)), purpose="batch")
        except openai.APIStatusError as exc:
            raise self._refused(f"the batch file {batch_key}.jsonl", exc) from None
        try:
            batch = await client.batches.create(
                input_file_id=file.id,
                endpoint=OPENAI_URLS[endpoint],
                completion_window="24h",
                metadata={"autointerp_batch": batch_key},
            )
        except openai.APIStatusError as exc:
            raise self._refused(f"batch {batch_key} (file {file.id})", exc) from None
        return batch.id, file.id

    async def find(self, batch_key: str, n_requests: int, since: datetime, claimed: set[str]) -> str | None:
        client = self.llm.sdk_client()
        oldest = since.timestamp() - 300
        async for batch in client.batches.list(limit=100):
            if (batch.metadata or {}).get("autointerp_batch") == batch_key:
                return batch.id
            if batch.created_at < oldest:  # newest first: nothing older can be ours
                return None
        return None

    async def state(self, batch_id: str) -> BatchState:
        batch = await self.llm.sdk_client().batches.retrieve(batch_id)
        rejected = None
        if batch.status == "failed":
            errors = (batch.errors.data if batch.errors else None) or []
            rejected = "; ".join(
                f"{e.message}" + (f" (line {e.line})" if e.line is not None else "") for e in errors[:5]
            ) or "the batch failed validation"
        counts = batch.request_counts.model_dump() if batch.request_counts else {}
        return BatchState(batch.status, batch.status in OPENAI_ENDED, rejected, counts)

    async def results(self, batch_id: str) -> list[LineResult]:
        client = self.llm.sdk_client()
        batch = await client.batches.retrieve(batch_id)
        out: list[LineResult] = []
        for file_id in (batch.output_file_id, batch.error_file_id):
            if not file_id:
                continue
            content = await client.files.content(file_id)
            for text in content.text.splitlines():
                if text.strip():
                    out.append(_openai_line(json.loads(text)))
        return out

    async def cancel(self, batch_id: str) -> None:
        await self.llm.sdk_client().batches.cancel(batch_id)


def _openai_line(item: dict[str, Any]) -> LineResult:
    custom_id = item["custom_id"]
    response = item.get("response") or {}
    error = item.get("error")
    if response.get("status_code") == 200 and not error:
        return LineResult(custom_id, response["body"])
    if error and error.get("code") in ("batch_expired", "batch_cancelled"):
        return LineResult(custom_id, None, error.get("message") or error["code"], unfinished=True)
    body = response.get("body") or {}
    message = (error or {}).get("message") or (body.get("error") or {}).get("message") or json.dumps(body)[:500]
    return LineResult(custom_id, None, f"HTTP {response.get('status_code')}: {message}")


class AnthropicBatches(BatchAPI):
    """Message Batches: the requests go in the create call; the batch key is the prefix of every custom id."""

    provider = "anthropic"
    max_requests = 100_000
    max_bytes = 256 * 1024 * 1024

    def line(self, custom_id: str, endpoint: str, request: dict[str, Any]) -> bytes:
        return json.dumps({"custom_id": custom_id, "params": request}, separators=(",", ":")).encode()

    async def submit(self, batch_key: str, endpoint: str, lines: list[bytes]) -> tuple[str, str | None]:
        try:
            batch = await self.llm.sdk_client().messages.batches.create(requests=[json.loads(line) for line in lines])
        except anthropic.APIStatusError as exc:
            raise self._refused(f"batch {batch_key}", exc) from None
        return batch.id, None

    async def find(self, batch_key: str, n_requests: int, since: datetime, claimed: set[str]) -> str | None:
        """Message batches carry no metadata: a batch created since the intent with as many requests, not claimed
        by another record, is ours; once it has ended its custom ids confirm it."""
        client = self.llm.sdk_client()
        oldest = since.astimezone(UTC).timestamp() - 300
        async for batch in client.messages.batches.list(limit=100):
            created = batch.created_at.timestamp()
            if created < oldest:
                return None
            counts = batch.request_counts
            total = counts.processing + counts.succeeded + counts.errored + counts.canceled + counts.expired
            if batch.id in claimed or total != n_requests:
                continue
            if batch.processing_status == "ended":
                first = next(iter(await self.results(batch.id)), None)
                if first is None or not first.custom_id.startswith(f"{batch_key}-"):
                    continue
            return batch.id
        return None

    async def state(self, batch_id: str) -> BatchState:
        batch = await self.llm.sdk_client().messages.batches.retrieve(batch_id)
        return BatchState(batch.processing_status, batch.processing_status == "ended", None, batch.request_counts.model_dump())

    async def results(self, batch_id: str) -> list[LineResult]:
        out: list[LineResult] = []
        async for item in await self.llm.sdk_client().messages.batches.results(batch_id):
            result = item.result
            if result.type == "succeeded":
                out.append(LineResult(item.custom_id, result.message.to_dict()))
            elif result.type == "errored":
                error = result.error.error
                out.append(LineResult(item.custom_id, None, f"{error.type}: {error.message}"))
            else:
                out.append(LineResult(item.custom_id, None, result.type, unfinished=True))
        return out

    async def cancel(self, batch_id: str) -> None:
        await self.llm.sdk_client().messages.batches.cancel(batch_id)


def batch_api(llm: ProviderLLM) -> BatchAPI:
    if llm.provider == "openai":
        return OpenAIBatches(llm)
    if llm.provider == "anthropic":
        return AnthropicBatches(llm)
    raise AutointerpError(f"{llm.name} has no batch API: --batch works with openai:<model> and anthropic:<model>")


def split_lines(lines: list[bytes], max_requests: int, max_bytes: int) -> list[list[int]]:
    """Indices of `lines` in consecutive chunks of at most max_requests lines and max_bytes bytes."""
    chunks: list[list[int]] = []
    current: list[int] = []
    size = 0
    for i, line in enumerate(lines):
        if len(line) > max_bytes:
            raise BatchRejected(f"one batch request is {len(line):,} bytes, over the provider's {max_bytes:,} per batch")
        if current and (len(current) >= max_requests or size + len(line) > max_bytes):
            chunks.append(current)
            current, size = [], 0
        current.append(i)
        size += len(line)
    if current:
        chunks.append(current)
    return chunks
