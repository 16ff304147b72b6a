"""The OpenAI adapter against the real bundled model behind llama-cpp-python's server (no doubles)."""

from __future__ import annotations

import asyncio

import pytest

from autointerp.bundled import smollm2_gguf_path
from autointerp.llm import local, make_llm
from autointerp.llm.base import LLMResponse
from autointerp.llm.local import BUNDLED_BOS
from autointerp.store.db import Store
from autointerp.store.llm_calls import list_calls

CHATML = "<|im_start|>user\nName one colour.<|im_end|>\n<|im_start|>assistant\n"


def test_chat_returns_text_usage_and_top_logprobs(local_llm):
    response = asyncio.run(
        local_llm.chat([{"role": "user", "content": "Say hello."}], max_tokens=4, top_logprobs=3, stage="explain")
    )
    assert response.text.strip()
    assert response.usage.prompt_tokens > 5 and response.usage.completion_tokens == len(response.logprobs) <= 4
    assert "".join(t.token for t in response.logprobs) == response.text
    for token in response.logprobs:
        assert token.logprob <= 0
        assert 3 <= len(token.top) <= 4  # the 3 best, plus the chosen token when it is not among them
        assert max(token.top.values()) >= token.logprob - 1e-6  # greedy: the chosen token is the best one
    assert response.cost_usd == 0 and not response.cached


def test_completion_echo_gives_prompt_token_logprobs_without_leaking_the_prefix(local_llm):
    response = asyncio.run(local_llm.complete("The cat sat on the", max_tokens=2, logprobs=2, echo=True))
    assert response.text.startswith("The cat sat on the") and "<|im_start|>" not in response.text
    tokens = [t.token for t in response.logprobs]
    assert "".join(tokens) == response.text  # every prompt and generated token, nothing else
    assert response.logprobs[0].logprob is None  # OpenAI convention: nothing conditions the first token
    for token in response.logprobs[1:]:
        assert token.logprob <= 0 and token.top[token.token] == pytest.approx(token.logprob)


def test_echo_logprobs_are_aligned_with_generation(local_llm):
    """Scoring a text with echo must give the same logprobs the model gave while generating it.

    (llama-cpp-python shifts echoed logprobs by one position unless the prompt starts with BOS; see BUNDLED_BOS.)
    """
    generated = asyncio.run(local_llm.complete(CHATML, max_tokens=3, logprobs=1))
    assert len(generated.logprobs) == 3
    echoed = asyncio.run(local_llm.complete(CHATML + generated.text, max_tokens=1, logprobs=1, echo=True))
    tail = echoed.logprobs[-4:-1]  # the three generated tokens, now read back as prompt tokens
    assert [t.token for t in tail] == [t.token for t in generated.logprobs]
    for scored, sampled in zip(tail, generated.logprobs):
        assert scored.logprob == pytest.approx(sampled.logprob, abs=0.05)


def test_bundled_bos_matches_the_gguf_metadata():
    import llama_cpp

    vocab = llama_cpp.Llama(str(smollm2_gguf_path()), vocab_only=True, verbose=False)
    assert vocab.metadata.get("tokenizer.ggml.add_bos_token") == "false"
    assert vocab.detokenize([vocab.token_bos()], special=True).decode() == BUNDLED_BOS


def test_every_call_is_recorded_and_a_repeat_is_answered_from_the_ledger(local_llm):
    messages = [{"role": "user", "content": "Say yes."}]

    async def calls():
        first = await local_llm.chat(messages, max_tokens=3, stage="explain")
        await local_llm.complete("1, 2, 3,", max_tokens=2, stage="simulation")
        again = await local_llm.chat(messages, max_tokens=3, stage="explain")
        return first, again

    first, again = asyncio.run(calls())
    assert again.cached and again.text == first.text and again.usage == first.usage
    asyncio.run(local_llm.aclose())
    with local_llm.ledger.store.reading() as con:
        rows = list_calls(con)
    assert [(r["provider"], r["model"], r["stage"], r["cached"]) for r in rows] == [
        ("local", "smollm2", "explain", False),
        ("local", "smollm2", "simulation", False),
        ("local", "smollm2", "explain", True),
    ]
    assert all(r["run_id"] == "test" and r["error"] is None and r["priced"] for r in rows)
    assert rows[0]["request"]["messages"] == messages and rows[0]["response"]["choices"]
    assert rows[0]["latency_ms"] > 0 and rows[2]["response"] is None and rows[2]["cost_usd"] == 0


def test_a_grammar_constrains_the_answer_and_is_part_of_the_cache_key(local_llm):
    messages = [{"role": "user", "content": "Is the sky green? Explain at length."}]
    grammar = 'root ::= "Answer: " ("yes" | "no")\n'

    async def calls():
        free = await local_llm.chat(messages, max_tokens=12)
        held = await local_llm.chat(messages, max_tokens=12, grammar=grammar)
        again = await local_llm.chat(messages, max_tokens=12, grammar=grammar)
        return free, held, again

    free, held, again = asyncio.run(calls())
    assert held.text in ("Answer: yes", "Answer: no") and not held.cached
    assert not free.text.startswith("Answer:")
    assert again.cached and again.text == held.text
    asyncio.run(local_llm.aclose())
    with local_llm.ledger.store.reading() as con:
        rows = list_calls(con)
    assert "grammar" not in rows[0]["request"] and rows[1]["request"]["grammar"] == grammar
    assert rows[0]["cache_key"] != rows[1]["cache_key"] == rows[2]["cache_key"]


def test_a_seed_makes_a_sampled_answer_reproducible_and_is_part_of_the_cache_key(local_llm_server, tmp_path):
    """Sampled answers of the real model: the same seed gives the same text, also uncached on a fresh store."""
    messages = [{"role": "user", "content": "Name a fruit and say why you like it."}]

    async def ask(seeds: list[int], db: str) -> list[LLMResponse]:
        llm = make_llm("local", base_url=local_llm_server, store=Store(tmp_path / db, create=True))
        try:
            return [await llm.chat(messages, max_tokens=24, temperature=1.2, seed=seed) for seed in seeds]
        finally:
            await llm.aclose()

    seeds = [1, 2, 3, 4, 1]
    first = asyncio.run(ask(seeds, "a.duckdb"))
    second = asyncio.run(ask(seeds, "b.duckdb"))
    assert [r.text for r in first] == [r.text for r in second] and not any(r.cached for r in first + second)
    assert first[4].text == first[0].text  # the same seed, asked again
    assert len({r.text for r in first}) > 1  # sampled: the seeds give different answers


def test_local_starts_its_own_server_on_demand_and_stops_it_on_close(tmp_path):
    async def use():
        llm = make_llm("local", store=Store(tmp_path / "own.duckdb", create=True))
        response = await llm.chat([{"role": "user", "content": "Hi"}], max_tokens=2)
        process = local._shared.process
        assert process.poll() is None and llm.base_url.startswith("http://127.0.0.1:")
        await llm.aclose()
        return response, process

    response, process = asyncio.run(use())
    assert response.text
    assert process.wait(timeout=10) is not None  # stopped with its last user
