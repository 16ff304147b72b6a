"""A test double of the paid OpenAI and Anthropic HTTP APIs: NOT the real services.

An in-process HTTP server (uvicorn in a thread) that speaks enough of both wire formats for the SDKs:
POST /v1/chat/completions, /v1/completions (OpenAI) and /v1/messages (Anthropic). Tests script the next
replies (status, headers, body, delay) to provoke the failure modes, and read back every request received.
Without a script it answers with well-formed filler.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field
from typing import Any

from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autointerp.bench.latency_server import (
    BackgroundServer,
    anthropic_body,
    fake_chat_body,
    fake_completion_body,
)

FAKE_OPENAI_KEY = "sk-test-DOUBLEKEY-0123456789abcdef"
FAKE_ANTHROPIC_KEY = "sk-ant-test-DOUBLEKEY-0123456789abcdef"


@dataclass
class Reply:
    """One scripted answer. `body` None: the normal success body; `raw`: send these bytes instead of JSON."""

    status: int = 200
    body: dict[str, Any] | None = None
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    raw: str | bytes | None = None
    media_type: str = "application/json"


@dataclass
class Received:
    path: str
    headers: dict[str, str]
    body: dict[str, Any]


SUCCESS = {
    "/v1/chat/completions": fake_chat_body,
    "/v1/completions": fake_completion_body,
    "/v1/messages": anthropic_body,
}


class PaidAPIDouble(BackgroundServer):
    """`openai_base_url` and `anthropic_base_url` point the SDKs here; `script()` queues replies; `received` logs."""

    def __init__(self):
        self.replies: list[Reply] = []
        self.received: list[Received] = []
        super().__init__(Starlette(routes=[Route(path, self._handle, methods=["POST"]) for path in SUCCESS]))

    @property
    def openai_base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def anthropic_base_url(self) -> str:
        return self.url

    def script(self, *replies: Reply) -> None:
        self.replies.extend(replies)

    def calls(self, path: str | None = None) -> list[Received]:
        return [r for r in self.received if path is None or r.path == path]

    async def _handle(self, request: Request) -> Response:
        body = json.loads(await request.body())
        self.received.append(Received(request.url.path, dict(request.headers), body))
        reply = self.replies.pop(0) if self.replies else Reply()
        if reply.delay_s:
            await asyncio.sleep(reply.delay_s)
        if reply.raw is not None:
            return Response(reply.raw, status_code=reply.status, headers=reply.headers, media_type=reply.media_type)
        content = reply.body if reply.body is not None else SUCCESS[request.url.path](body)
        return JSONResponse(content, status_code=reply.status, headers=reply.headers)
