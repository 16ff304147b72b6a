"""Failure modes of paid APIs, provoked through `paid_api`: an in-process test double of the OpenAI and
Anthropic HTTP APIs (tests/doubles/paid_api.py), not the real services."""

from __future__ import annotations

import asyncio
import json
import time

import pytest
from doubles.paid_api import Reply

from autointerp.errors import AutointerpError
from autointerp.bench.latency_server import fake_chat_body
from autointerp.llm import LLMCallError, Retries, make_llm
from autointerp.llm.errors import TRANSIENT
from autointerp.llm.local import free_port
from autointerp.store.db import Store
from autointerp.store.llm_calls import list_calls

HI = [{"role": "user", "content": "hi"}]
FAST = Retries(max_attempts=4, min_wait_s=0.01, max_wait_s=3.0, timeout_s=5)


def openai_llm(paid_api, store=None, retries=FAST):
    return make_llm("openai:gpt-4o-mini", base_url=paid_api.openai_base_url, store=store, retries=retries)


def openai_sdk_llm(paid_api, store=None, retries=FAST):
    """The same adapter through the official SDK (what api.openai.com gets) instead of the lean HTTP client."""
    llm = openai_llm(paid_api, store, retries)
    llm.lean_http = False
    return llm


def claude(paid_api, store=None, retries=FAST):
    return make_llm("anthropic:claude-3-5-haiku", base_url=paid_api.anthropic_base_url, store=store, retries=retries)


def call(llm, **kwargs):
    async def go():
        try:
            return await llm.chat(HI, **kwargs)
        finally:
            await llm.aclose()

    return asyncio.run(go())


def calls_ledger(store):
    with store.reading() as con:
        return list_calls(con)


@pytest.mark.parametrize("make", [openai_llm, openai_sdk_llm, claude], ids=["openai", "openai-sdk", "anthropic"])
def test_429_waits_as_long_as_retry_after_says(paid_api, tmp_path, make):
    store = Store(tmp_path / "x.duckdb", create=True)
    paid_api.script(Reply(429, body={"error": {"message": "slow down"}}, headers={"retry-after": "1"}))
    llm = make(paid_api, store)
    started = time.perf_counter()
    response = call(llm)
    elapsed = time.perf_counter() - started
    assert response.text and len(paid_api.received) == 2
    assert 0.95 <= elapsed < 4.0  # our own backoff would have waited ~0.01-0.02 s
    assert calls_ledger(store)[0]["attempts"] == 2


@pytest.mark.parametrize("make", [openai_llm, openai_sdk_llm, claude], ids=["openai", "openai-sdk", "anthropic"])
def test_server_error_then_success(paid_api, make):
    paid_api.script(Reply(500, body={"error": {"message": "internal"}}), Reply(503, body={"error": {"message": "busy"}}))
    assert call(make(paid_api)).text
    assert len(paid_api.received) == 3


def test_server_errors_until_attempts_run_out(paid_api, tmp_path):
    store = Store(tmp_path / "x.duckdb", create=True)
    paid_api.script(*[Reply(502, body={"error": {"message": "bad gateway"}})] * 4)
    with pytest.raises(LLMCallError, match="kept failing with HTTP 502 after 4 attempts") as failed:
        call(openai_llm(paid_api, store))
    assert failed.value.kind == "server" and len(paid_api.received) == 4
    (row,) = calls_ledger(store)
    assert row["attempts"] == 4 and "HTTP 502" in row["error"] and row["response"] is None


@pytest.mark.parametrize("make", [openai_llm, openai_sdk_llm, claude], ids=["openai", "openai-sdk", "anthropic"])
def test_timeout_is_retried(paid_api, make):
    paid_api.script(Reply(delay_s=3.0))
    quick = Retries(max_attempts=2, min_wait_s=0.01, max_wait_s=0.05, timeout_s=0.5)
    assert call(make(paid_api, retries=quick)).text
    assert len(paid_api.received) == 2


def test_timeouts_until_attempts_run_out(paid_api):
    paid_api.script(Reply(delay_s=3.0), Reply(delay_s=3.0))
    quick = Retries(max_attempts=2, min_wait_s=0.01, max_wait_s=0.05, timeout_s=0.3)
    with pytest.raises(LLMCallError, match="did not answer within 0.3 s") as failed:
        call(openai_llm(paid_api, retries=quick))
    assert failed.value.kind == "timeout"


@pytest.mark.parametrize(
    "make, env",
    [(openai_llm, "OPENAI_API_KEY"), (openai_sdk_llm, "OPENAI_API_KEY"), (claude, "ANTHROPIC_API_KEY")],
    ids=["openai", "openai-sdk", "anthropic"],
)
@pytest.mark.parametrize("status", [401, 403])
def test_auth_errors_name_the_variable_and_are_not_retried(paid_api, tmp_path, make, env, status):
    store = Store(tmp_path / "x.duckdb", create=True)
    paid_api.script(Reply(status, body={"error": {"type": "authentication_error", "message": "invalid x-api-key"}}))
    with pytest.raises(LLMCallError, match=env) as failed:
        call(make(paid_api, store))
    assert failed.value.kind == "auth" and len(paid_api.received) == 1
    assert calls_ledger(store)[0]["error"] == str(failed.value)


@pytest.mark.parametrize("raw", ['{"choices": []}', '{"content": "not a list of blocks"}'])
@pytest.mark.parametrize("make", [openai_llm, openai_sdk_llm, claude], ids=["openai", "openai-sdk", "anthropic"])
def test_json_of_the_wrong_shape_is_recorded_and_raised_without_retry(paid_api, tmp_path, make, raw):
    store = Store(tmp_path / "x.duckdb", create=True)
    paid_api.script(Reply(raw=raw))
    with pytest.raises(LLMCallError, match="not a valid chat answer") as failed:
        call(make(paid_api, store))
    assert failed.value.kind == "malformed" and len(paid_api.received) == 1
    (row,) = calls_ledger(store)
    assert row["error"] == str(failed.value)
    assert row["response"] == json.loads(raw)


UNREADABLE = {
    "html": Reply(raw="<html>oops</html>"),
    "truncated": Reply(raw='{"choices": [{"index": 0, "message": {"role": "assis'),
    "not_utf8": Reply(raw=b'{"choices": "\xff\xfe"}'),
    "502_html": Reply(502, raw="<html><body>Bad Gateway</body></html>", media_type="text/html"),
    "504_html": Reply(504, raw="<html><body>Gateway Timeout</body></html>", media_type="text/html"),
}


@pytest.mark.parametrize("fault", list(UNREADABLE))
@pytest.mark.parametrize("make", [openai_llm, openai_sdk_llm, claude], ids=["openai", "openai-sdk", "anthropic"])
def test_unreadable_bodies_are_retried_like_server_errors(paid_api, tmp_path, make, fault):
    store = Store(tmp_path / "x.duckdb", create=True)
    paid_api.script(UNREADABLE[fault], UNREADABLE[fault])
    assert call(make(paid_api, store)).text
    assert len(paid_api.received) == 3
    (row,) = calls_ledger(store)
    assert row["error"] is None and row["attempts"] == 3


def test_a_body_that_stays_unreadable_fails_as_transient_with_the_body_kept(paid_api, tmp_path):
    store = Store(tmp_path / "x.duckdb", create=True)
    paid_api.script(*[Reply(raw="<html>oops</html>")] * 4)
    with pytest.raises(LLMCallError, match="not JSON after 4 attempts") as failed:
        call(openai_llm(paid_api, store))
    assert failed.value.kind == "bad_body" and failed.value.kind in TRANSIENT
    (row,) = calls_ledger(store)
    assert row["response"] == {"unparsed_body": "<html>oops</html>"} and row["error"] == str(failed.value)


class DroppingServer:
    """A bare TCP server: the first `drops` connections are closed right after the request arrives (a reset
    mid-call); later ones get one well-formed chat answer."""

    def __init__(self, drops: int):
        self.drops = drops
        self.connections = 0

    async def handle(self, reader, writer):
        self.connections += 1
        head = await reader.readuntil(b"\r\n\r\n")
        length = int(next(line.split(b":")[1] for line in head.split(b"\r\n") if line.lower().startswith(b"content-length")))
        await reader.readexactly(length)
        if self.connections <= self.drops:
            writer.transport.abort()
            return
        body = json.dumps(fake_chat_body({"messages": HI, "max_tokens": 3})).encode()
        writer.write(
            b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\nconnection: close\r\n"
            + f"content-length: {len(body)}\r\n\r\n".encode() + body
        )
        await writer.drain()
        writer.close()


def test_a_connection_dropped_mid_call_is_retried():
    dropping = DroppingServer(drops=2)

    async def go():
        server = await asyncio.start_server(dropping.handle, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        llm = make_llm("openai:m", base_url=f"http://127.0.0.1:{port}/v1", retries=FAST)
        try:
            return await llm.chat(HI, max_tokens=3)
        finally:
            await llm.aclose()
            server.close()

    assert asyncio.run(go()).text
    assert dropping.connections == 3


def test_unreachable_endpoint_fails_at_once_and_says_what_to_do(tmp_path):
    store = Store(tmp_path / "x.duckdb", create=True)
    base_url = f"http://127.0.0.1:{free_port()}/v1"
    llm = make_llm("openai:some-model", base_url=base_url, store=store, retries=Retries(max_attempts=6, min_wait_s=1, max_wait_s=60))
    with pytest.raises(LLMCallError) as failed:
        call(llm)
    assert calls_ledger(store)[0]["attempts"] == 1  # not six, with backoff between them
    assert failed.value.kind == "connection"
    assert str(failed.value) == (
        f"cannot reach {base_url} (connection refused or unknown host): is the server running? set --base-url"
    )


def test_missing_keys_fail_before_any_request(paid_api, monkeypatch):
    monkeypatch.delenv("OPENAI_API_KEY")
    monkeypatch.delenv("ANTHROPIC_API_KEY")
    with pytest.raises(AutointerpError, match="set OPENAI_API_KEY"):
        make_llm("openai:gpt-4o-mini")
    with pytest.raises(AutointerpError, match="set ANTHROPIC_API_KEY"):
        make_llm("anthropic:claude-3-5-haiku", base_url=paid_api.anthropic_base_url)
    # a compatible server reached by URL may need no key
    assert call(make_llm("openai:any", base_url=paid_api.openai_base_url)).text
    assert paid_api.received[0].headers["authorization"] == "Bearer no-key-needed"
    monkeypatch.setenv("OPENAI_BASE_URL", paid_api.openai_base_url)
    assert make_llm("openai:any").base_url == paid_api.openai_base_url


def test_unknown_spec_lists_the_forms():
    with pytest.raises(AutointerpError, match="use openai:<model>, anthropic:<model> or local"):
        make_llm("gemini:pro")


def test_anthropic_messages_and_refused_capabilities(paid_api):
    llm = claude(paid_api)
    system = [{"role": "system", "content": "Be brief."}, *HI]

    async def go():
        async with llm:
            response = await llm.chat(system, max_tokens=7, temperature=0.5)
            completion = await llm.complete("Once upon", max_tokens=3)
            for refused in (llm.chat(HI, top_logprobs=3), llm.complete("x", logprobs=1), llm.complete("x", echo=True)):
                with pytest.raises(LLMCallError) as failed:
                    await refused
                assert failed.value.kind == "unsupported"
            return response, completion

    response, completion = asyncio.run(go())
    first, second = (r.body for r in paid_api.received)
    assert len(paid_api.received) == 2  # the refused requests never left
    assert first == {"model": "claude-3-5-haiku", "max_tokens": 7, "temperature": 0.5, "system": "Be brief.", "messages": HI}
    assert second["messages"] == [{"role": "user", "content": "Once upon"}]
    assert response.text and response.usage.prompt_tokens == 11 and response.usage.completion_tokens == 7
    assert response.logprobs is None and not llm.supports_logprobs and completion.text
