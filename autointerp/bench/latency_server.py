"""An OpenAI-compatible server that answers after a fixed latency: a stand-in for a remote LLM in throughput
benchmarks (no model behind it; answers are deterministic filler with plausible logprobs).

In-process:   with LatencyServer(latency_s=1.0) as server: make_llm("openai:fake", base_url=server.base_url)
Subprocess:   with latency_server_process(latency_s=1.0) as base_url: ...   (keeps the GIL out of the measurement)
Command line: python -m autointerp.bench.latency_server --latency 1.0 --port 8765 --lifetime 600
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import hashlib
import math
import random
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from typing import Any

import httpx
import uvicorn
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import JSONResponse
from starlette.routing import Route

from autointerp.errors import AutointerpError
from autointerp.llm.local import free_port

FILLER = [
    "the", "feature", "fires", "on", "tokens", "that", "open", "a", "quoted", "name", "in", "code",
    "comments", "and", "on", "words", "about", "time", "such", "as", "year", "month", "day", "date",
    "calendar", "and", "clock", "numbers", "lists", "punctuation",
]


def _rng(*parts: Any) -> random.Random:
    return random.Random(hashlib.sha256(repr(parts).encode()).digest())


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


def latency_app(latency_s: float = 1.0, label_first: bool = False) -> Starlette:
    """Chat and completions after `latency_s` seconds; `app.state.requests` counts the requests answered."""

    async def models(request: Request) -> JSONResponse:
        return JSONResponse({"object": "list", "data": [{"id": "fake", "object": "model"}]})

    def endpoint(build):
        async def handler(request: Request) -> JSONResponse:
            body = await request.json()
            await asyncio.sleep(latency_s)
            request.app.state.requests += 1
            return JSONResponse(build(body))

        return handler

    app = Starlette(
        routes=[
            Route("/v1/models", models),
            Route("/v1/chat/completions", endpoint(lambda body: fake_chat_body(body, label_first)), methods=["POST"]),
            Route("/v1/completions", endpoint(fake_completion_body), methods=["POST"]),
        ]
    )
    app.state.requests = 0
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


@contextlib.contextmanager
def latency_server_process(latency_s: float = 1.0, lifetime_s: float = 600.0, label_first: bool = False) -> Iterator[str]:
    """The server in a child process (its own GIL); yields the base URL, stops the child on exit."""
    port = free_port()
    args = ["-m", "autointerp.bench.latency_server", "--latency", str(latency_s), "--port", str(port),
            "--lifetime", str(lifetime_s), *(["--label-first"] if label_first else [])]
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
    args = parser.parse_args(argv)
    server = BackgroundServer(latency_app(args.latency, args.label_first), port=args.port, max_lifetime_s=args.lifetime)
    print(f"OpenAI-compatible latency server on {server.url}/v1 ({args.latency:g} s per answer)", flush=True)
    server.start()
    try:
        server._thread.join()
    except KeyboardInterrupt:
        server.stop()


if __name__ == "__main__":
    main()
