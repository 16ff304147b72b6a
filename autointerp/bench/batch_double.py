"""A test double of the providers' batch APIs: NOT the real services.

OpenAI Files + Batches (POST /v1/files, GET /v1/files/{id}/content, POST/GET /v1/batches, GET
/v1/batches/{id}, POST /v1/batches/{id}/cancel) and Anthropic Message Batches (POST/GET /v1/messages/batches,
GET /v1/messages/batches/{id}, .../cancel, .../results), with the shapes of the installed SDKs' types
(openai.types.Batch, FileObject; anthropic.types.messages.MessageBatch, MessageBatchIndividualResponse).
Every line is answered by `answer(path, body)`, the same function the double's streaming endpoints use, so
a batched job and a streaming one see the same answers. Used by the tests (tests/doubles/paid_api.py mounts
it) and by `python -m autointerp.bench.batch`.

A batch stays in progress for `polls_in_progress` retrievals, then ends according to the next planned
`Outcome` (default: every line succeeds).
"""

from __future__ import annotations

import email.parser
import itertools
import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from starlette.requests import Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

Answer = Callable[[str, dict[str, Any]], dict[str, Any]]  # (endpoint path, request body) -> response body


@dataclass
class Outcome:
    """How the next batch ends. error_every: every n-th line errors (HTTP 500); expire_after: lines after the
    first n expire; reject: the provider refuses it (OpenAI: status failed at validation; Anthropic: HTTP 400
    at create)."""

    error_every: int | None = None
    expire_after: int | None = None
    reject: str | None = None


@dataclass
class _Batch:
    id: str
    provider: str
    endpoint: str
    lines: list[dict[str, Any]]  # openai: {custom_id, method, url, body}; anthropic: {custom_id, params}
    outcome: Outcome
    created_at: float
    metadata: dict[str, str] | None = None
    input_file_id: str | None = None
    polls: int = 0
    status: str = "in_progress"
    cancelled: bool = False
    results: list[dict[str, Any]] | None = None
    output_file_id: str | None = None
    error_file_id: str | None = None
    counts: dict[str, int] = field(default_factory=dict)


class BatchAPIDouble:
    """The batch endpoints' state; `routes()` for a Starlette app; `plan()` scripts outcomes; `created` counts."""

    def __init__(self, answer: Answer, base_url: Callable[[], str]):
        self.answer = answer
        self.base_url = base_url
        self.polls_in_progress = 0
        self.outcomes: list[Outcome] = []
        self.files: dict[str, bytes] = {}
        self.batches: dict[str, _Batch] = {}
        self.uploaded_bytes = 0
        self._ids = itertools.count(1)

    def plan(self, *outcomes: Outcome) -> None:
        self.outcomes.extend(outcomes)

    def created(self, provider: str | None = None) -> list[_Batch]:
        return [b for b in self.batches.values() if provider is None or b.provider == provider]

    def routes(self) -> list[Route]:
        return [
            Route("/v1/files", self.create_file, methods=["POST"]),
            Route("/v1/files/{id}/content", self.file_content, methods=["GET"]),
            Route("/v1/batches", self.openai_create, methods=["POST"]),
            Route("/v1/batches", self.openai_list, methods=["GET"]),
            Route("/v1/batches/{id}", self.openai_retrieve, methods=["GET"]),
            Route("/v1/batches/{id}/cancel", self.openai_cancel, methods=["POST"]),
            Route("/v1/messages/batches", self.anthropic_create, methods=["POST"]),
            Route("/v1/messages/batches", self.anthropic_list, methods=["GET"]),
            Route("/v1/messages/batches/{id}", self.anthropic_retrieve, methods=["GET"]),
            Route("/v1/messages/batches/{id}/cancel", self.anthropic_cancel, methods=["POST"]),
            Route("/v1/messages/batches/{id}/results", self.anthropic_results, methods=["GET"]),
        ]

    def _id(self, prefix: str) -> str:
        return f"{prefix}{next(self._ids):06d}"

    # --- the work -------------------------------------------------------------------------------------

    def _advance(self, batch: _Batch) -> None:
        """A retrieval: in progress for `polls_in_progress` retrievals, then every line is answered as planned."""
        batch.polls += 1
        if batch.results is None:
            if batch.polls > self.polls_in_progress:
                self._finish(batch)
            else:
                batch.status = "in_progress"

    def _finish(self, batch: _Batch, cancelled: bool = False) -> None:
        """The batch ends: as planned, or (cancelled) with the first half of its lines done and the rest not."""
        outcome = batch.outcome
        kinds = []
        for i in range(len(batch.lines)):
            if cancelled:
                kind = "ok" if i < len(batch.lines) // 2 else "cancelled"
            elif outcome.expire_after is not None and i >= outcome.expire_after:
                kind = "expired"
            elif outcome.error_every and i % outcome.error_every == outcome.error_every - 1:
                kind = "errored"
            else:
                kind = "ok"
            kinds.append(kind)
        batch.results = [{"line": line, "kind": kind} for line, kind in zip(batch.lines, kinds)]
        batch.cancelled = cancelled
        if batch.provider == "anthropic":
            batch.status = "ended"
        else:
            batch.status = "cancelled" if cancelled else "expired" if outcome.expire_after is not None else "completed"
        batch.counts = {k: kinds.count(k) for k in ("ok", "errored", "expired", "cancelled")}

    # --- OpenAI -----------------------------------------------------------------------------------------

    async def create_file(self, request: Request) -> Response:
        raw = await request.body()
        message = email.parser.BytesParser().parsebytes(
            f"Content-Type: {request.headers['content-type']}\r\n\r\n".encode() + raw
        )
        parts = {part.get_param("name", header="content-disposition"): part for part in message.get_payload()}
        content = parts["file"].get_payload(decode=True)
        filename = parts["file"].get_filename()
        file_id = self._id("file-")
        self.files[file_id] = content
        self.uploaded_bytes += len(content)
        return JSONResponse(
            {"id": file_id, "object": "file", "bytes": len(content), "created_at": int(time.time()), "filename": filename,
             "purpose": parts["purpose"].get_payload(), "status": "processed"}
        )

    async def file_content(self, request: Request) -> Response:
        return Response(self.files[request.path_params["id"]], media_type="application/octet-stream")

    async def openai_create(self, request: Request) -> Response:
        body = json.loads(await request.body())
        content = self.files.get(body["input_file_id"])
        if content is None:
            return JSONResponse({"error": {"message": "No such File object", "type": "invalid_request_error"}}, 404)
        lines = [json.loads(text) for text in content.decode().splitlines() if text.strip()]
        outcome = self.outcomes.pop(0) if self.outcomes else Outcome()
        batch = _Batch(self._id("batch_"), "openai", body["endpoint"], lines, outcome, time.time(), body.get("metadata"), body["input_file_id"])
        batch.status = "validating"
        if outcome.reject:
            batch.status, batch.results = "failed", []
            batch.counts = {}
        self.batches[batch.id] = batch
        return JSONResponse(self._openai_json(batch))

    def _openai_json(self, b: _Batch) -> dict[str, Any]:
        if b.results is not None and b.output_file_id is None and b.status != "failed":
            ok = [r for r in b.results if r["kind"] == "ok"]
            bad = [r for r in b.results if r["kind"] != "ok"]
            b.output_file_id = self._file("\n".join(json.dumps(self._openai_line(r)) for r in ok)) if ok else None
            b.error_file_id = self._file("\n".join(json.dumps(self._openai_line(r)) for r in bad)) if bad else None
        done = sum(1 for r in b.results or [] if r["kind"] == "ok")
        failed = sum(1 for r in b.results or [] if r["kind"] == "errored")
        errors = None
        if b.status == "failed":
            errors = {"object": "list", "data": [{"code": "invalid_request", "line": 1, "message": b.outcome.reject, "param": None}]}
        return {
            "id": b.id, "object": "batch", "endpoint": b.endpoint, "errors": errors, "input_file_id": b.input_file_id,
            "completion_window": "24h", "status": b.status,
            "output_file_id": b.output_file_id, "error_file_id": b.error_file_id, "created_at": int(b.created_at),
            "in_progress_at": None, "expires_at": int(b.created_at) + 86400, "finalizing_at": None, "completed_at": None,
            "failed_at": None, "expired_at": None, "cancelling_at": None, "cancelled_at": None,
            "request_counts": {"total": len(b.lines), "completed": done, "failed": failed},
            "metadata": b.metadata,
        }

    def _file(self, text: str) -> str:
        file_id = self._id("file-")
        self.files[file_id] = text.encode()
        return file_id

    def _openai_line(self, r: dict[str, Any]) -> dict[str, Any]:
        line, kind = r["line"], r["kind"]
        out: dict[str, Any] = {"id": f"batch_req_{line['custom_id']}", "custom_id": line["custom_id"], "response": None, "error": None}
        if kind == "ok":
            out["response"] = {"status_code": 200, "request_id": "req_double", "body": self.answer(line["url"], line["body"])}
        elif kind == "errored":
            out["response"] = {"status_code": 500, "request_id": "req_double",
                               "body": {"error": {"message": "The server had an error (double)", "type": "server_error"}}}
        else:
            code = "batch_expired" if kind == "expired" else "batch_cancelled"
            out["error"] = {"code": code, "message": f"This request was not executed ({kind})."}
        return out

    async def openai_retrieve(self, request: Request) -> Response:
        batch = self.batches[request.path_params["id"]]
        self._advance(batch)
        return JSONResponse(self._openai_json(batch))

    async def openai_list(self, request: Request) -> Response:
        data = [self._openai_json(b) for b in sorted(self.created("openai"), key=lambda b: -b.created_at)]
        return JSONResponse({"object": "list", "data": data, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None, "has_more": False})

    async def openai_cancel(self, request: Request) -> Response:
        batch = self.batches[request.path_params["id"]]
        if batch.results is None:
            self._finish(batch, cancelled=True)
        return JSONResponse(self._openai_json(batch))

    # --- Anthropic --------------------------------------------------------------------------------------

    async def anthropic_create(self, request: Request) -> Response:
        body = json.loads(await request.body())
        outcome = self.outcomes.pop(0) if self.outcomes else Outcome()
        if outcome.reject:
            return JSONResponse({"type": "error", "error": {"type": "invalid_request_error", "message": outcome.reject}}, 400)
        self.uploaded_bytes += len(json.dumps(body["requests"]))
        batch = _Batch(self._id("msgbatch_"), "anthropic", "/v1/messages", body["requests"], outcome, time.time())
        self.batches[batch.id] = batch
        return JSONResponse(self._anthropic_json(batch))

    def _anthropic_json(self, b: _Batch) -> dict[str, Any]:
        c = b.counts
        ended = b.results is not None
        created = datetime.fromtimestamp(b.created_at, UTC).isoformat()
        return {
            "id": b.id, "type": "message_batch", "processing_status": "ended" if ended else "in_progress",
            "request_counts": {"processing": 0 if ended else len(b.lines), "succeeded": c.get("ok", 0), "errored": c.get("errored", 0),
                               "canceled": c.get("cancelled", 0), "expired": c.get("expired", 0)},
            "created_at": created, "expires_at": created, "ended_at": created if ended else None,
            "cancel_initiated_at": created if b.cancelled else None, "archived_at": None,
            "results_url": f"{self.base_url()}/v1/messages/batches/{b.id}/results" if ended else None,
        }

    async def anthropic_retrieve(self, request: Request) -> Response:
        batch = self.batches[request.path_params["id"]]
        self._advance(batch)
        return JSONResponse(self._anthropic_json(batch))

    async def anthropic_list(self, request: Request) -> Response:
        data = [self._anthropic_json(b) for b in sorted(self.created("anthropic"), key=lambda b: -b.created_at)]
        return JSONResponse({"data": data, "has_more": False, "first_id": data[0]["id"] if data else None,
                             "last_id": data[-1]["id"] if data else None})

    async def anthropic_cancel(self, request: Request) -> Response:
        batch = self.batches[request.path_params["id"]]
        if batch.results is None:
            self._finish(batch, cancelled=True)
        return JSONResponse(self._anthropic_json(batch))

    async def anthropic_results(self, request: Request) -> Response:
        batch = self.batches[request.path_params["id"]]
        lines = []
        for r in batch.results or []:
            line, kind = r["line"], r["kind"]
            if kind == "ok":
                result = {"type": "succeeded", "message": self.answer("/v1/messages", line["params"])}
            elif kind == "errored":
                result = {"type": "errored", "error": {"type": "error", "error": {"type": "api_error", "message": "Internal server error (double)"}}}
            else:
                result = {"type": "canceled" if kind == "cancelled" else "expired"}
            lines.append(json.dumps({"custom_id": line["custom_id"], "result": result}))
        return Response("\n".join(lines), media_type="application/binary")


def double_app(label_first: bool = True):
    """The batch endpoints plus the streaming ones (POST /v1/chat/completions, /v1/completions, /v1/messages),
    answering with the latency server's deterministic filler: one server for a benchmark's child process."""
    from starlette.applications import Starlette

    from autointerp.bench.latency_server import fake_chat_body, fake_completion_body

    def answer(path: str, body: dict[str, Any]) -> dict[str, Any]:
        if path == "/v1/completions":
            return fake_completion_body(body)
        chat = fake_chat_body(body, label_first)
        if path == "/v1/chat/completions":
            return chat
        return {"id": "msg_double", "type": "message", "role": "assistant", "model": body.get("model"),
                "content": [{"type": "text", "text": chat["choices"][0]["message"]["content"]}], "stop_reason": "max_tokens",
                "stop_sequence": None, "usage": {"input_tokens": chat["usage"]["prompt_tokens"], "output_tokens": chat["usage"]["completion_tokens"]}}

    def streaming(path: str):
        async def endpoint(request: Request) -> Response:
            return JSONResponse(answer(path, json.loads(await request.body())))

        return Route(path, endpoint, methods=["POST"])

    holder: dict[str, str] = {}
    double = BatchAPIDouble(answer, lambda: holder["url"])
    app = Starlette(routes=[streaming(p) for p in ("/v1/chat/completions", "/v1/completions", "/v1/messages")] + double.routes())
    return app, double, holder


def main(argv: list[str] | None = None) -> None:
    import argparse

    from autointerp.bench.latency_server import BackgroundServer

    parser = argparse.ArgumentParser(description="the batch APIs' test double (not the real services)")
    parser.add_argument("--port", type=int, required=True)
    parser.add_argument("--lifetime", type=float, default=3600.0)
    args = parser.parse_args(argv)
    app, _, holder = double_app()
    server = BackgroundServer(app, port=args.port, max_lifetime_s=args.lifetime)
    holder["url"] = server.url
    server.start()
    print(f"batch API double on {server.url}", flush=True)
    server._thread.join()


if __name__ == "__main__":
    main()
