"""`autointerp costs` over a real ledger written through `paid_api` (an in-process test double of the paid
OpenAI and Anthropic HTTP APIs, not the real services)."""

from __future__ import annotations

import asyncio
import json

import pytest
from doubles.paid_api import Reply

from autointerp.cli import main
from autointerp.llm import LLMCallError, Retries, make_llm
from autointerp.store.db import Store

FAST = Retries(max_attempts=1, timeout_s=5)


@pytest.fixture
def ledger_db(paid_api, tmp_path):
    path = tmp_path / "x.duckdb"
    store = Store(path, create=True)
    paid_api.script(Reply(), Reply(), Reply(), Reply(500, body={"error": {"message": "down"}}))

    async def job():
        async with make_llm("openai:gpt-4o-mini", base_url=paid_api.openai_base_url, store=store, run_id="r1", retries=FAST) as llm:
            await llm.chat([{"role": "user", "content": "a"}], max_tokens=10, stage="explain")
            await llm.chat([{"role": "user", "content": "a"}], max_tokens=10, stage="explain")  # cached
            await llm.chat([{"role": "user", "content": "b"}], max_tokens=20, stage="simulation")
        async with make_llm("openai:my-finetune", base_url=paid_api.openai_base_url, store=store, run_id="r2", retries=FAST) as ft:
            await ft.chat([{"role": "user", "content": "c"}], max_tokens=5, stage="explain")
            with pytest.raises(LLMCallError):
                await ft.chat([{"role": "user", "content": "d"}], max_tokens=5, stage="explain")

    asyncio.run(job())
    return path


def test_costs_json_by_run_model_and_stage(ledger_db, capsys):
    assert main(["costs", "--db", str(ledger_db), "--json"]) == 0
    rows = {(r["run"], r["model"], r["stage"]): r for r in json.loads(capsys.readouterr().out)}
    assert set(rows) == {("r1", "openai:gpt-4o-mini", "explain"), ("r1", "openai:gpt-4o-mini", "simulation"), ("r2", "openai:my-finetune", "explain")}
    explain = rows[("r1", "openai:gpt-4o-mini", "explain")]
    assert (explain["calls"], explain["cached"], explain["errors"], explain["completion_tokens"]) == (2, 1, 0, 10)
    assert explain["cost_usd"] == pytest.approx((explain["prompt_tokens"] * 0.15 + 10 * 0.60) / 1e6)
    finetune = rows[("r2", "openai:my-finetune", "explain")]
    assert (finetune["calls"], finetune["errors"], finetune["cost_usd"], finetune["priced"]) == (2, 1, 0.0, False)


def test_costs_table_filters_by_run_and_flags_unpriced_models(ledger_db, capsys):
    assert main(["costs", "--db", str(ledger_db), "--run", "r2"]) == 0
    out = capsys.readouterr().out
    assert "openai:my-finetune" in out and "gpt-4o-mini" not in out.split("no price known")[0]
    assert "no price known, counted as $0: openai:my-finetune" in out
    assert out.splitlines()[0].split() == ["run", "model", "stage", "calls", "cached", "errors", "prompt_tokens", "completion_tokens", "cost_usd"]


def test_costs_can_reprice_from_a_toml_table(ledger_db, tmp_path, capsys):
    prices = tmp_path / "prices.toml"
    prices.write_text('[prices."openai:my-finetune"]\ninput = 1000000.0\noutput = 0.0\n')
    assert main(["costs", "--db", str(ledger_db), "--run", "r2", "--json", "--prices", str(prices)]) == 0
    (row,) = json.loads(capsys.readouterr().out)
    assert row["priced"] and row["cost_usd"] == pytest.approx(row["prompt_tokens"])


def test_costs_on_a_missing_store_is_a_clear_error(tmp_path, capsys):
    assert main(["costs", "--db", str(tmp_path / "none.duckdb")]) == 2
    assert "no store at" in capsys.readouterr().err
