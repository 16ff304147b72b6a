"""Shared fixtures.

LLM fixtures (the real bundled model, no network):
- `local_llm_server` (session): starts the bundled SmolLM2-135M-Instruct behind llama-cpp-python's
  OpenAI-compatible server once per test session (ready in ~1-2 s), yields its base URL
  ("http://127.0.0.1:PORT/v1"), stops it at the end. ~300 MB RSS; requests are served one at a time.
- `local_llm` (function): `make_llm("local", base_url=<that server>, store=Store(tmp_path / "llm.duckdb", create=True),
  run_id="test")`, an LLM with a fresh ledger per test (so no cache hits leak between tests).
  Use it from sync tests with `asyncio.run(local_llm.chat(...))`; it is closed after the test.
  Speed on 2 CPU cores: ~100 generated tokens/s, ~18/s with top_logprobs, ~50 ms per prompt token with
  echo logprobs: keep prompts and max_tokens small.

Subject model:
- `subject` (session): the bundled SmolLM2-135M as a `SubjectModel`, float32 on CPU, loaded once for every module
  that runs, hooks or steers it. Tests must leave it as they found it (hooks removed, as `steering` and the
  collectors do; weights never changed).

Ray:
- `ray_cluster` (session): one private local Ray cluster with two CPU slots (as on this machine), shared by the
  Ray tests (start-up costs seconds); yields the connected `ray` module.

Paid-API double:
- `paid_api` (function): a started `PaidAPIDouble` (tests/doubles/paid_api.py, a test double of the OpenAI
  and Anthropic HTTP APIs, not the real services) with fake API keys in the environment. Point
  `make_llm("openai:gpt-4o-mini", base_url=paid_api.openai_base_url)` or
  `make_llm("anthropic:claude-3-5-haiku", base_url=paid_api.anthropic_base_url)` at it, queue failures with
  `paid_api.script(Reply(429, headers={"retry-after": "1"}), ...)`, read `paid_api.received`.
"""

from __future__ import annotations

import asyncio

import pytest
from doubles.paid_api import FAKE_ANTHROPIC_KEY, FAKE_OPENAI_KEY, PaidAPIDouble

from autointerp.llm import LocalServer, make_llm
from autointerp.ray_cluster import AUTO, connected
from autointerp.store.db import Store


@pytest.fixture(scope="session")
def local_llm_server():
    with LocalServer() as server:
        yield server.base_url


@pytest.fixture
def local_llm(tmp_path, local_llm_server):
    llm = make_llm("local", base_url=local_llm_server, store=Store(tmp_path / "llm.duckdb", create=True), run_id="test")
    yield llm
    asyncio.run(llm.aclose())


@pytest.fixture(scope="session")
def subject():
    from autointerp.collect.models import load_subject_model  # torch: only for the sessions that need it

    return load_subject_model("smollm2", device="cpu", dtype="float32")


@pytest.fixture(scope="session")
def ray_cluster():
    with connected(AUTO, num_cpus=2) as ray_module:
        yield ray_module


@pytest.fixture
def paid_api(monkeypatch):
    """A started PaidAPIDouble (tests/doubles/paid_api.py: a test double of the OpenAI and Anthropic HTTP
    APIs, not the real services), with fake OPENAI_API_KEY / ANTHROPIC_API_KEY set for the test."""
    monkeypatch.setenv("OPENAI_API_KEY", FAKE_OPENAI_KEY)
    monkeypatch.setenv("ANTHROPIC_API_KEY", FAKE_ANTHROPIC_KEY)
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.delenv("ANTHROPIC_BASE_URL", raising=False)
    with PaidAPIDouble() as double:
        yield double
