"""The call ledger and cache: every call recorded, repeats answered from the file, no keys stored.

Paid APIs are reached through `paid_api`, an in-process test double of their HTTP APIs (tests/doubles).
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
from dataclasses import asdict

import pytest
from doubles.paid_api import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, Reply

from autointerp.llm import LLMCallError, PriceTable, Retries, make_llm
from autointerp.store.db import Store
from autointerp.store.journal import CallJournal
from autointerp.store.llm_calls import LLMCall, insert_calls, list_calls

HI = [{"role": "user", "content": "hi"}]
FAST = Retries(max_attempts=3, min_wait_s=0.01, max_wait_s=0.05, timeout_s=5)


def rows(store: Store, run_id=None):
    with store.reading() as con:
        return list_calls(con, run_id)


def openai_llm(paid_api, store, model="gpt-4o-mini", **kwargs):
    return make_llm(f"openai:{model}", base_url=paid_api.openai_base_url, store=store, retries=FAST, **kwargs)


def test_every_call_lands_in_the_ledger_with_tokens_cost_and_latency(paid_api, tmp_path):
    store = Store(tmp_path / "x.duckdb", create=True)
    paid_api.script(
        Reply(), Reply(500, body={"error": {"message": "boom"}}), Reply(), Reply(400, body={"error": {"message": "bad"}})
    )

    async def calls():
        async with openai_llm(paid_api, store, run_id="run-1") as llm:
            ok = await llm.chat(HI, max_tokens=5, stage="explain")
            await llm.complete("one two", max_tokens=3, logprobs=2, stage="simulation")
            with pytest.raises(LLMCallError) as failed:
                await llm.chat([{"role": "user", "content": "other"}], stage="explain")
            return ok, failed.value

    ok, failed = asyncio.run(calls())
    assert failed.kind == "bad_request" and "HTTP 400" in str(failed) and "bad" in str(failed)
    recorded = rows(store)
    assert [(r["stage"], r["attempts"], r["error"] is None) for r in recorded] == [
        ("explain", 1, True), ("simulation", 2, True), ("explain", 1, False),
    ]
    first = recorded[0]
    assert first["run_id"] == "run-1" and first["provider"] == "openai" and first["model"] == "gpt-4o-mini"
    assert first["request"] == {"model": "gpt-4o-mini", "messages": HI, "max_tokens": 5, "temperature": 0.0}
    assert first["response"]["choices"][0]["message"]["content"] == ok.text
    assert (first["prompt_tokens"], first["completion_tokens"]) == (ok.usage.prompt_tokens, ok.usage.completion_tokens)
    expected = (ok.usage.prompt_tokens * 0.15 + ok.usage.completion_tokens * 0.60) / 1e6  # default gpt-4o-mini price
    assert first["cost_usd"] == pytest.approx(expected) and ok.cost_usd == pytest.approx(expected)
    assert all(r["latency_ms"] > 0 for r in recorded)


def test_identical_request_is_answered_from_the_ledger_without_http(paid_api, tmp_path):
    store = Store(tmp_path / "x.duckdb", create=True)

    async def run_job():
        async with openai_llm(paid_api, store) as llm:
            return await llm.chat(HI, max_tokens=4, top_logprobs=2, stage="explain")

    first = asyncio.run(run_job())
    assert len(paid_api.received) == 1
    again = asyncio.run(run_job())  # a rerun: a new LLM object over the same file
    assert len(paid_api.received) == 1
    assert again.cached and not first.cached
    assert again.text == first.text and again.logprobs == first.logprobs and again.usage == first.usage
    assert again.cost_usd == 0
    recorded = rows(store)
    assert [r["cached"] for r in recorded] == [False, True]
    assert recorded[1]["cost_usd"] == 0 and recorded[1]["cache_key"] == recorded[0]["cache_key"]


def test_cache_key_depends_on_model_parameters_and_endpoint(paid_api, tmp_path):
    store = Store(tmp_path / "x.duckdb", create=True)

    async def calls():
        async with openai_llm(paid_api, store) as llm:
            await llm.chat(HI, max_tokens=4)
            await llm.chat(HI, max_tokens=5)
            await llm.complete("hi", max_tokens=4)
        async with openai_llm(paid_api, store, model="gpt-4.1-mini") as other:
            await other.chat(HI, max_tokens=4)

    asyncio.run(calls())
    assert len(paid_api.received) == 4
    assert len({r["cache_key"] for r in rows(store)}) == 4


def test_cache_keys_are_the_ones_earlier_versions_stored():
    """The request's JSON is made once (`EncodedRequest`) and the key assembled around it: a changed key would
    make every answer stored by an earlier version unreachable, and paid for again."""
    from autointerp.llm.ledger import EncodedRequest, cache_key

    request = {"model": "gpt-4o-mini", "messages": [{"role": "user", "content": 'héllo "quoted"\n'}], "max_tokens": 4,
               "temperature": 0.0}
    # sha256 of json.dumps({"provider", "model", "host", "endpoint", "request"}, sort_keys=True), as stored before
    stored = "3733ed7cbf29eafe1a858fe90340ec76f8a66eacf29232237f436252c9704614"
    for body in (request, EncodedRequest(request)):
        assert cache_key("openai", "gpt-4o-mini", "https://api.openai.com", "chat", body) == stored
    assert json.loads(EncodedRequest(request).text) == request


def test_samples_at_temperature_stay_distinct_and_replay_in_order(paid_api, tmp_path):
    """k identical requests at temperature > 0 are k samples: all sent once, then all replayed on a rerun."""
    store = Store(tmp_path / "x.duckdb", create=True)
    paid_api.script(*(Reply(body=_chat_body(f"label {i}")) for i in range(3)))

    async def samples():
        async with openai_llm(paid_api, store) as llm:
            return [(await llm.chat(HI, temperature=1.0)).text for _ in range(3)]

    first = asyncio.run(samples())
    assert first == ["label 0", "label 1", "label 2"] and len(paid_api.received) == 3
    assert asyncio.run(samples()) == first and len(paid_api.received) == 3


def test_concurrent_identical_requests_at_temperature_zero_make_one_http_call(paid_api, tmp_path):
    store = Store(tmp_path / "x.duckdb", create=True)
    paid_api.script(Reply(delay_s=0.3))

    async def together():
        async with openai_llm(paid_api, store) as llm:
            return await asyncio.gather(*(llm.chat(HI, max_tokens=3) for _ in range(5)))

    answers = asyncio.run(together())
    assert len(paid_api.received) == 1
    assert len({a.text for a in answers}) == 1 and sum(not a.cached for a in answers) == 1
    assert len(rows(store)) == 5


def test_no_api_key_anywhere_in_the_ledger_or_errors(paid_api, tmp_path):
    store = Store(tmp_path / "x.duckdb", create=True)
    echoing = {"error": {"message": f"Incorrect API key provided: {FAKE_OPENAI_KEY}", "type": "invalid_request_error"}}
    paid_api.script(Reply(), Reply(401, body=echoing), Reply(400, body=echoing))
    errors = []

    async def calls():
        async with openai_llm(paid_api, store) as llm:
            await llm.chat(HI)
            for content in ("a", "b"):
                with pytest.raises(LLMCallError) as failed:
                    await llm.chat([{"role": "user", "content": content}])
                errors.append(str(failed.value))
        async with make_llm("anthropic:claude-3-5-haiku", base_url=paid_api.anthropic_base_url, store=store) as claude:
            await claude.chat(HI)

    asyncio.run(calls())
    assert paid_api.received[0].headers["authorization"] == f"Bearer {FAKE_OPENAI_KEY}"  # the key was really sent
    assert FAKE_ANTHROPIC_KEY in " ".join(paid_api.received[-1].headers.values())  # x-api-key or bearer
    with store.reading() as con:
        dump = repr(con.execute("SELECT * FROM llm_calls").fetchall())
    for text in (dump, *errors):
        assert "DOUBLEKEY" not in text
    assert "OPENAI_API_KEY" in errors[0]


def test_other_processes_can_read_the_file_between_flushes(paid_api, tmp_path):
    """The ledger writes in short transactions: a reader in another process gets in while the job runs."""
    path = tmp_path / "x.duckdb"
    store = Store(path, create=True)
    reader = (
        "import duckdb, sys; con = duckdb.connect(sys.argv[1], read_only=True); "
        "print(con.execute('SELECT count(*) FROM llm_calls').fetchone()[0])"
    )

    async def job():
        llm = openai_llm(paid_api, store)
        llm.ledger.flush_rows, llm.ledger.flush_seconds = 2, 1e9
        counts = []
        for i in range(4):
            await llm.chat([{"role": "user", "content": f"q{i}"}])
            out = await asyncio.to_thread(subprocess.run, [sys.executable, "-c", reader, str(path)], capture_output=True, text=True)
            assert out.returncode == 0, out.stderr
            counts.append(int(out.stdout))
        await llm.aclose()
        return counts

    assert asyncio.run(job()) == [0, 2, 2, 4]


def test_unknown_models_cost_nothing_and_say_so_local_is_free(paid_api, tmp_path):
    store = Store(tmp_path / "x.duckdb", create=True)

    async def call():
        async with openai_llm(paid_api, store, model="my-finetune") as llm:
            return await llm.chat(HI)

    assert asyncio.run(call()).cost_usd == 0
    assert rows(store)[0]["priced"] is False
    table = PriceTable.default()
    assert table.cost("local", "smollm2", _usage(10**6, 10**6)) == (0.0, True)
    assert table.cost("openai", "mystery", _usage(10, 10)) == (0.0, False)


def test_price_table_longest_prefix_and_overrides(tmp_path):
    table = PriceTable.default()
    assert table.price("openai", "gpt-4o-mini-2024-07-18") == table.prices["openai:gpt-4o-mini"]
    assert table.price("openai", "gpt-4o-2024-08-06") == table.prices["openai:gpt-4o"]
    assert table.price("anthropic", "claude-3-5-haiku-20241022").input_per_mtok == 0.80
    toml = tmp_path / "prices.toml"
    toml.write_text('as_of = "2030-01-01"\n[prices."openai:my-finetune"]\ninput = 1.0\noutput = 2.0\n')
    custom = PriceTable.from_toml(toml)
    assert custom.as_of == "2030-01-01" and table.as_of and custom.as_of != table.as_of
    assert custom.cost("openai", "my-finetune", _usage(10**6, 10**6)) == (3.0, True)
    assert custom.price("openai", "gpt-4o") == table.price("openai", "gpt-4o")  # defaults kept
    with pytest.raises(Exception, match="input = <USD per 1M>"):
        table.with_overrides({"openai:x": {"input": 1}})


def _usage(prompt, completion):
    from autointerp.llm import Usage

    return Usage(prompt, completion)


def _chat_body(text: str) -> dict:
    return {
        "id": "chatcmpl-x",
        "object": "chat.completion",
        "model": "gpt-4o-mini",
        "choices": [{"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": "stop"}],
        "usage": {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5},
    }


KILLED_AFTER_ANSWERS = """
import asyncio, os, signal, sys
from autointerp.llm import make_llm
from autointerp.store.db import Store

async def main():
    llm = make_llm("openai:gpt-4o-mini", base_url=sys.argv[2], store=Store(sys.argv[1]), retries=None)
    for i in range(5):
        await llm.chat([{"role": "user", "content": f"question {i}"}], max_tokens=3)
    os.kill(os.getpid(), signal.SIGKILL)  # before any flush into llm_calls

asyncio.run(main())
"""


def test_answers_survive_a_sigkill_and_are_not_paid_again(paid_api, tmp_path):
    db = tmp_path / "x.duckdb"
    with Store(db, create=True).writing():
        pass
    child = subprocess.run([sys.executable, "-c", KILLED_AFTER_ANSWERS, str(db), paid_api.openai_base_url])
    assert child.returncode == -9 and len(paid_api.received) == 5
    store = Store(db)  # opening for writing folds the dead process's journal into llm_calls
    assert len(rows(store)) == 5 and not list((tmp_path / "x.duckdb.jobs").glob("*.jsonl"))

    async def again():
        async with openai_llm(paid_api, store) as llm:
            return [await llm.chat([{"role": "user", "content": f"question {i}"}], max_tokens=3) for i in range(5)]

    assert all(r.cached for r in asyncio.run(again()))
    assert len(paid_api.received) == 5
    Store(db).close()
    assert len(rows(store)) == 10  # five answers and five cache hits; folding twice added nothing


def test_a_journal_folded_after_its_rows_were_stored_adds_no_duplicates(tmp_path):
    """A kill between the ledger's insert and the emptying of its journal: the journal's rows are already in
    llm_calls; folding skips them by call_uid. A last line cut off mid-write is ignored."""
    store = Store(tmp_path / "x.duckdb", create=True)
    calls = [LLMCall(f"key{i}", "openai", "m", "explain", None, {"n": i}, {"ok": i}, 1, 1, 0.0, 1.0) for i in range(3)]
    journal = CallJournal(store.path)
    for call in calls:
        journal.append(call)
    with store.writing() as con:
        insert_calls(con, calls[:2])
    extra = LLMCall("key9", "openai", "m", "explain", None, {"n": 9}, {"ok": 9}, 1, 1, 0.0, 1.0)
    os.write(journal._fd, json.dumps(asdict(extra)).encode()[:40])  # the process died mid-write
    os.close(journal._fd)  # ... and its lock went with it
    Store(store.path).close()
    assert sorted(r["cache_key"] for r in rows(store)) == ["key0", "key1", "key2"]


def test_a_live_processs_journal_is_left_alone(tmp_path):
    store = Store(tmp_path / "x.duckdb", create=True)
    with store.writing():  # the file exists from the first write on
        pass
    journal = CallJournal(store.path)
    journal.append(LLMCall("k", "openai", "m", None, None, {}, {"ok": 1}, 1, 1, 0.0, 1.0))
    Store(store.path).close()
    assert rows(store) == [] and journal.path.exists()
    journal.clear()
    journal.close()
    assert not journal.path.exists()
