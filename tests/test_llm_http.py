"""The lean HTTP client of the OpenAI adapter (autointerp/llm/http.py) against the SDK path, through `paid_api`
(tests/doubles/paid_api.py: a test double of the OpenAI HTTP API, not the real service), and against bare TCP
servers for the HTTP framing the double does not produce."""

from __future__ import annotations

import asyncio
import json

from autointerp.bench.latency_server import fake_chat_body
from autointerp.llm import Retries, make_llm

HI = [{"role": "user", "content": "hi"}]


def test_lean_client_sends_and_reads_the_same_json_as_the_sdk(paid_api):
    async def ask(lean: bool):
        llm = make_llm("openai:gpt-4o-mini", base_url=paid_api.openai_base_url)
        llm.lean_http = lean
        try:
            chat = await llm.chat(HI, max_tokens=7, temperature=0.5, top_logprobs=3)
            completion = await llm.complete("one two", max_tokens=4, logprobs=2, echo=True)
            return chat, completion
        finally:
            await llm.aclose()

    lean = asyncio.run(ask(True))
    sdk = asyncio.run(ask(False))
    received = paid_api.calls()
    assert [r.path for r in received] == ["/v1/chat/completions", "/v1/completions"] * 2
    assert received[0].body == received[2].body and received[1].body == received[3].body
    for lean_response, sdk_response in zip(lean, sdk):
        assert (lean_response.text, lean_response.usage, lean_response.logprobs) == (
            sdk_response.text, sdk_response.usage, sdk_response.logprobs
        )
        assert lean_response.raw == sdk_response.raw and lean_response.logprobs
    lean_headers = received[0].headers
    assert lean_headers["authorization"] == received[2].headers["authorization"] == f"Bearer {paid_api_key()}"
    assert lean_headers["content-type"] == "application/json"


def paid_api_key() -> str:
    from doubles.paid_api import FAKE_OPENAI_KEY

    return FAKE_OPENAI_KEY


def test_only_compatible_servers_get_the_lean_client(monkeypatch):
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-0123456789")
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy", "all_proxy", "NO_PROXY", "no_proxy"):
        monkeypatch.delenv(name, raising=False)
    assert make_llm("openai:m", base_url="http://127.0.0.1:8000/v1").uses_lean_http()
    assert make_llm("openai:m", base_url="https://openrouter.ai/api/v1").uses_lean_http()
    assert not make_llm("openai:gpt-4o-mini").uses_lean_http()  # api.openai.com: the official SDK
    monkeypatch.setenv("HTTPS_PROXY", "http://proxy.example:3128")
    assert not make_llm("openai:m", base_url="https://openrouter.ai/api/v1").uses_lean_http()  # the SDK honours proxies
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    assert make_llm("openai:m", base_url="http://127.0.0.1:8000/v1").uses_lean_http()


class FramingServer:
    """A bare HTTP/1.1 server: chat answers in chunked transfer encoding, and every kept-alive connection is
    closed by the server right after its first answer (as servers do with idle connections)."""

    def __init__(self):
        self.connections = 0
        self.requests = 0

    async def handle(self, reader, writer):
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        request = json.loads(await reader.readexactly(length))
        self.requests += 1
        body = json.dumps(fake_chat_body(request)).encode()
        chunks = [body[i : i + 50] for i in range(0, len(body), 50)]
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\ntransfer-encoding: chunked\r\n\r\n"
            + b"".join(f"{len(c):x}\r\n".encode() + c + b"\r\n" for c in chunks)
            + b"0\r\n\r\n"
        )
        await writer.drain()
        writer.close()  # no "connection: close" header: the client finds out on its next request


def test_chunked_answers_and_connections_the_server_closed_in_between():
    framing = FramingServer()

    async def go():
        server = await asyncio.start_server(framing.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        # one attempt: a closed kept-alive connection is the client's to handle, not a retry's
        llm = make_llm("openai:m", base_url=f"http://127.0.0.1:{port}/v1", retries=Retries(max_attempts=1))
        assert llm.uses_lean_http()
        try:
            first = await llm.chat(HI, max_tokens=5)
            await asyncio.sleep(0.05)  # the server has closed the kept-alive connection by now
            second = await llm.chat([{"role": "user", "content": "again"}], max_tokens=5)
            return first, second
        finally:
            await llm.aclose()
            server.close()

    first, second = asyncio.run(go())
    assert first.text and second.text and first.text != second.text
    assert framing.requests == 2 and framing.connections == 2
