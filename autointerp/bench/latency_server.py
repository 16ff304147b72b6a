"""An OpenAI-compatible (and Anthropic-shaped) server that answers after a fixed latency: a stand-in for a
remote LLM in throughput benchmarks (no model behind it; answers are deterministic filler with plausible
logprobs), and with `Faults` the misbehaving provider of the chaos benchmark.

In-process:   with LatencyServer(latency_s=1.0) as server: make_llm("openai:fake", base_url=server.base_url)
Subprocess:   with latency_server_process(latency_s=1.0) as base_url: ...   (keeps the GIL out of the measurement)
Command line: python -m autointerp.bench.latency_server --latency 1.0 --port 8765 --lifetime 600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import json
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import ClientDisconnect, Request
from starlette.responses import JSONResponse, Response
from starlette.routing import Route

from autointerp.errors import AutointerpError
from autointerp.llm.local import free_port

FILLER = [
    "the", "feature", "fires", "on", "tokens", "that", "open", "a", "quoted", "name", "in", "code",
    "comments", "and", "on", "words", "about", "time", "such", "as", "year", "month", "day", "date",
    "calendar", "and", "clock", "numbers", "lists", "punctuation",
]


def _rng(*parts: Any) -> random.Random:
    """Seeded by the parts' content, whatever the key order of the JSON they came in (as a real server reads it)."""
    return random.Random(hashlib.sha256(json.dumps(parts, sort_keys=True, default=repr).encode()).digest())


def fake_tokens(rng: random.Random, n: int) -> list[str]:
    return [(" " if i else "") + rng.choice(FILLER) for i in range(n)]


def fake_top(rng: random.Random, token: str, n: int) -> tuple[float, dict[str, float]]:
    """The token's logprob and n alternatives (the token first), probabilities decreasing and summing below 1."""
    probs = sorted((rng.random() for _ in range(max(n, 1))), reverse=True)
    total = sum(probs) * 1.25
    top: dict[str, float] = {}
    for i, p in enumerate(probs[:n]):
        top[token if i == 0 else f" {rng.choice(FILLER)}{i}"] = math.log(p / total)
    return math.log(probs[0] / total), top


def fake_chat_body(request: dict[str, Any], label_first: bool = False) -> dict[str, Any]:
    """Deterministic filler; with `label_first` the answer opens with `Label:` so that explanations parse."""
    rng = _rng(request.get("messages"), request.get("temperature"))
    n = int(request.get("max_tokens") or request.get("max_completion_tokens") or 16)
    tokens = fake_tokens(rng, n)
    if label_first:
        tokens = ["Label: ", *tokens[:4]]
    choice: dict[str, Any] = {"index": 0, "message": {"role": "assistant", "content": "".join(tokens)}, "finish_reason": "length"}
    if request.get("logprobs"):
        k = int(request.get("top_logprobs") or 0)
        content = []
        for token in tokens:
            lp, top = fake_top(rng, token, k)
            content.append({"token": token, "logprob": lp, "top_logprobs": [{"token": t, "logprob": v} for t, v in top.items()]})
        choice["logprobs"] = {"content": content}
    prompt_chars = sum(len(str(m.get("content", ""))) for m in request.get("messages", []))
    return {
        "id": f"chatcmpl-{rng.getrandbits(48):x}",
        "object": "chat.completion",
        "model": request.get("model", "fake"),
        "choices": [choice],
        "usage": {"prompt_tokens": prompt_chars // 4 + 1, "completion_tokens": n, "total_tokens": prompt_chars // 4 + 1 + n},
    }


def fake_completion_body(request: dict[str, Any]) -> dict[str, Any]:
    prompt = str(request.get("prompt", ""))
    rng = _rng(prompt, request.get("temperature"))
    n = int(request.get("max_tokens") or 16)
    prompt_tokens = [(" " if i else "") + w for i, w in enumerate(prompt.split())] or [""]
    generated = fake_tokens(rng, n)
    echo = bool(request.get("echo"))
    choice: dict[str, Any] = {"index": 0, "text": (prompt if echo else "") + "".join(generated), "finish_reason": "length"}
    if request.get("logprobs") is not None:
        k = int(request["logprobs"])
        shown = (prompt_tokens if echo else []) + generated
        token_logprobs: list[float | None] = []
        tops: list[dict[str, float] | None] = []
        for token in shown:
            lp, top = fake_top(rng, token, k)
            token_logprobs.append(lp)
            tops.append(top)
        if echo:
            token_logprobs[0], tops[0] = None, None
        choice["logprobs"] = {"tokens": shown, "token_logprobs": token_logprobs, "top_logprobs": tops}
    return {
        "id": f"cmpl-{rng.getrandbits(48):x}",
        "object": "text_completion",
        "model": request.get("model", "fake"),
        "choices": [choice],
        "usage": {"prompt_tokens": len(prompt_tokens), "completion_tokens": n, "total_tokens": len(prompt_tokens) + n},
    }


def anthropic_body(request: dict[str, Any], label_first: bool = False) -> dict[str, Any]:
    """A Messages API answer with the chat filler's text."""
    chat = fake_chat_body({"messages": request.get("messages"), "max_tokens": request.get("max_tokens")}, label_first)
    return {
        "id": "msg_fake",
        "type": "message",
        "role": "assistant",
        "model": request.get("model"),
        "content": [{"type": "text", "text": chat["choices"][0]["message"]["content"]}],
        "stop_reason": "max_tokens",
        "stop_sequence": None,
        "usage": {"input_tokens": 11, "output_tokens": int(request.get("max_tokens") or 1)},
    }


@dataclass(frozen=True)
class Faults:
    """Per-request fault rates (each drawn independently, in this order): 429 with Retry-After, HTTP 500, a 200
    whose body is not JSON, and a slow answer (`slow_s` more). Only well-formed answers count as paid."""

    rate_limit: float = 0.0
    server_error: float = 0.0
    bad_body: float = 0.0
    slow: float = 0.0
    slow_s: float = 2.0
    retry_after_s: float = 1.0
    seed: int = 0

    @classmethod
    def total(cls, rate: float, **kwargs: Any) -> Faults:
        """`rate` of requests fail, split evenly over 429 / 500 / non-JSON; `slow` is drawn apart."""
        each = 1 - (1 - rate) ** (1 / 3)
        return cls(rate_limit=each, server_error=each, bad_body=each, **kwargs)


def _fault_response(faults: Faults, rng: random.Random) -> Response | None:
    if rng.random() < faults.rate_limit:
        return JSONResponse(
            {"error": {"type": "rate_limit_error", "message": "rate limited (injected)"}},
            status_code=429,
            headers={"retry-after": f"{faults.retry_after_s:g}"},
        )
    if rng.random() < faults.server_error:
        return JSONResponse({"error": {"type": "server_error", "message": "internal error (injected)"}}, status_code=500)
    if rng.random() < faults.bad_body:
        return Response('{"choices": [{"index": 0, "message": {"role": "assis', media_type="application/json")
    return None


def latency_app(latency_s: float = 1.0, label_first: bool = False, faults: Faults | None = None) -> Starlette:
    """Chat and completions (OpenAI) and messages (Anthropic) after `latency_s` seconds, with `faults` injected.
    `app.state.requests` counts requests answered, `app.state.paid` well-formed answers; GET /stats shows both."""
    faults = faults or Faults()
    rng = random.Random(faults.seed)

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    async def stats(request: Request) -> JSONResponse:
        return JSONResponse({"requests": request.app.state.requests, "paid": request.app.state.paid})

    def endpoint(build):
        async def handler(request: Request) -> Response:
            try:
                body = await request.json()
            except ClientDisconnect:  # the client was killed mid-request
                return Response(status_code=499)
            slow = faults.slow_s if rng.random() < faults.slow else 0.0
            await asyncio.sleep(latency_s + slow)
            request.app.state.requests += 1
            fault = _fault_response(faults, rng)
            if fault is not None:
                return fault
            request.app.state.paid += 1
            return JSONResponse(build(body))

        return handler

    app = Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/stats", stats),
            Route("/v1/chat/completions", endpoint(lambda body: fake_chat_body(body, label_first)), methods=["POST"]),
            Route("/v1/completions", endpoint(fake_completion_body), methods=["POST"]),
            Route("/v1/messages", endpoint(lambda body: anthropic_body(body, label_first)), methods=["POST"]),
        ]
    )
    app.state.requests = 0
    app.state.paid = 0
    return app


class BackgroundServer:
    """An ASGI app served by uvicorn on 127.0.0.1 in a daemon thread; stops on exit, or after max_lifetime_s."""

    def __init__(self, app, *, host: str = "127.0.0.1", port: int | None = None, max_lifetime_s: float | None = 600.0):
        self.app = app
        self.host = host
        self.port = port or free_port(host)
        self.max_lifetime_s = max_lifetime_s
        self._server = uvicorn.Server(
            uvicorn.Config(app, host=host, port=self.port, log_level="warning", lifespan="off", access_log=False)
        )
        self._thread: threading.Thread | None = None
        self._timer: threading.Timer | None = None

    @property
    def url(self) -> str:
        return f"http://{self.host}:{self.port}"

    def start(self) -> BackgroundServer:
        self._thread = threading.Thread(target=self._server.run, name=f"uvicorn:{self.port}", daemon=True)
        self._thread.start()
        deadline = time.monotonic() + 30
        while not self._server.started:
            if not self._thread.is_alive() or time.monotonic() > deadline:
                raise AutointerpError(f"the background server on {self.url} did not start")
            time.sleep(0.01)
        if self.max_lifetime_s:
            self._timer = threading.Timer(self.max_lifetime_s, self.stop)
            self._timer.daemon = True
            self._timer.start()
        return self

    def stop(self) -> None:
        if self._timer is not None:
            self._timer.cancel()
        self._server.should_exit = True
        self._server.force_exit = True  # do not wait for requests still sleeping
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join(timeout=10)

    def __enter__(self):
        return self.start()

    def __exit__(self, *exc) -> None:
        self.stop()


class LatencyServer(BackgroundServer):
    def __init__(self, latency_s: float = 1.0, **kwargs):
        super().__init__(latency_app(latency_s), **kwargs)
        self.latency_s = latency_s

    @property
    def base_url(self) -> str:
        return f"{self.url}/v1"

    @property
    def requests_answered(self) -> int:
        return self.app.state.requests


def fault_arguments(faults: Faults) -> list[str]:
    return [f"--{name.replace('_', '-')}={value:g}" for name, value in asdict(faults).items()]


@contextlib.contextmanager
def latency_server_process(
    latency_s: float = 1.0, lifetime_s: float = 600.0, label_first: bool = False, faults: Faults | None = None
) -> Iterator[str]:
    """The server in a child process (its own GIL); yields the base URL, stops the child on exit."""
    port = free_port()
    args = ["-m", "autointerp.bench.latency_server", "--latency", str(latency_s), "--port", str(port),
            "--lifetime", str(lifetime_s), *(["--label-first"] if label_first else []),
            *fault_arguments(faults or Faults())]
    with server_process(args, f"http://127.0.0.1:{port}/v1/models", "the latency server"):
        yield f"http://127.0.0.1:{port}/v1"


@contextlib.contextmanager
def server_process(args: list[str], probe_url: str, name: str) -> Iterator[None]:
    """`python ARGS` in a child process, ready once `probe_url` answers 200; stopped on exit."""
    process = subprocess.Popen([sys.executable, *args], stdin=subprocess.DEVNULL)
    try:
        deadline = time.monotonic() + 30
        while True:
            if process.poll() is not None or time.monotonic() > deadline:
                raise AutointerpError(f"{name} did not start ({probe_url})")
            try:
                if httpx.get(probe_url, timeout=1).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.05)
        yield
    finally:
        process.terminate()
        try:
            process.wait(timeout=10)
        except subprocess.TimeoutExpired:
            process.kill()


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--latency", type=float, default=1.0, help="seconds before each answer (default 1)")
    parser.add_argument("--port", type=int, default=8765)
    parser.add_argument("--lifetime", type=float, default=600.0, help="stop after this many seconds (default 600)")
    parser.add_argument("--label-first", action="store_true", help="chat answers open with a `Label:` line")
    for name, default in asdict(Faults()).items():
        parser.add_argument(f"--{name.replace('_', '-')}", type=type(default), default=default, help="see Faults")
    args = parser.parse_args(argv)
    faults = Faults(**{name: getattr(args, name) for name in asdict(Faults())})
    app = latency_app(args.latency, args.label_first, faults)
    server = BackgroundServer(app, port=args.port, max_lifetime_s=args.lifetime)
    print(f"OpenAI-compatible latency server on {server.url}/v1 ({args.latency:g} s per answer; {faults})", flush=True)
    server.start()
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
