"""What calls cost: USD per million input/output tokens, matched on "provider:model" by longest prefix."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from autointerp.config import load_toml
from autointerp.errors import AutointerpError
from autointerp.llm.base import Usage

# List prices (USD per 1M tokens: input, output) from the providers' pricing pages on this date.
# Prices change: override them with a TOML file (PriceTable.from_toml) rather than trusting these.
DEFAULT_PRICES_AS_OF = "2025-11-24"
DEFAULT_PRICES: dict[str, tuple[float, float]] = {
    "openai:gpt-4o": (2.50, 10.00),
    "openai:gpt-4o-mini": (0.15, 0.60),
    "openai:gpt-4.1": (2.00, 8.00),
    "openai:gpt-4.1-mini": (0.40, 1.60),
    "openai:gpt-4.1-nano": (0.10, 0.40),
    "openai:gpt-5": (1.25, 10.00),
    "openai:gpt-5-mini": (0.25, 2.00),
    "openai:gpt-5-nano": (0.05, 0.40),
    "openai:o4-mini": (1.10, 4.40),
    "anthropic:claude-3-haiku": (0.25, 1.25),
    "anthropic:claude-3-5-haiku": (0.80, 4.00),
    "anthropic:claude-haiku-4-5": (1.00, 5.00),
    "anthropic:claude-3-5-sonnet": (3.00, 15.00),
    "anthropic:claude-3-7-sonnet": (3.00, 15.00),
    "anthropic:claude-sonnet-4": (3.00, 15.00),
    "anthropic:claude-opus-4": (15.00, 75.00),
    "anthropic:claude-opus-4-5": (5.00, 25.00),
}

FREE_PROVIDERS = frozenset({"local"})
# OpenAI's Batch API and Anthropic's Message Batches API bill half the list price (both pricing pages, same date)
BATCH_DISCOUNT = 0.5
BATCH_PROVIDERS = ("openai", "anthropic")


@dataclass(frozen=True)
class Price:
    """USD per 1M tokens; the batch prices default to BATCH_DISCOUNT of the list prices."""

    input_per_mtok: float
    output_per_mtok: float
    batch_input_per_mtok: float | None = None
    batch_output_per_mtok: float | None = None

    def cost(self, usage: Usage, batch: bool = False) -> float:
        if batch:
            inp = self.input_per_mtok * BATCH_DISCOUNT if self.batch_input_per_mtok is None else self.batch_input_per_mtok
            out = self.output_per_mtok * BATCH_DISCOUNT if self.batch_output_per_mtok is None else self.batch_output_per_mtok
        else:
            inp, out = self.input_per_mtok, self.output_per_mtok
        return (usage.prompt_tokens * inp + usage.completion_tokens * out) / 1e6


@dataclass(frozen=True)
class PriceTable:
    prices: dict[str, Price] = field(default_factory=dict)
    as_of: str = ""

    @classmethod
    def default(cls) -> PriceTable:
        return cls({k: Price(*v) for k, v in DEFAULT_PRICES.items()}, DEFAULT_PRICES_AS_OF)

    def with_overrides(self, data: dict[str, Any]) -> PriceTable:
        """data: {"as_of": "2026-01-01", "openai:gpt-4o": {"input": 2.5, "output": 10.0}, ...} (per 1M tokens);
        optional "batch_input" / "batch_output" override the batch prices (default: half the list prices)."""
        prices = dict(self.prices)
        as_of = str(data.get("as_of", self.as_of))
        entries = data.get("prices", data)
        for key, value in entries.items():
            if key == "as_of":
                continue
            if (
                ":" not in key
                or not isinstance(value, dict)
                or not {"input", "output"} <= set(value) <= {"input", "output", "batch_input", "batch_output"}
            ):
                raise AutointerpError(
                    f"bad price entry {key!r}: write it as \"provider:model\" = {{ input = <USD per 1M>, output = <USD per 1M> }}"
                    " (optionally batch_input, batch_output)"
                )
            batch = [None if value.get(k) is None else float(value[k]) for k in ("batch_input", "batch_output")]
            prices[key] = Price(float(value["input"]), float(value["output"]), *batch)
        return PriceTable(prices, as_of)

    @classmethod
    def from_toml(cls, path: str | Path) -> PriceTable:
        """The defaults, overridden by a TOML file: as_of = "..." and [prices."provider:model"] input/output."""
        return cls.default().with_overrides(load_toml(path))

    def price(self, provider: str, model: str) -> Price | None:
        name = f"{provider}:{model}"
        matches = [key for key in self.prices if name.startswith(key)]
        return self.prices[max(matches, key=len)] if matches else None

    def cost(self, provider: str, model: str, usage: Usage, batch: bool = False) -> tuple[float, bool]:
        """(USD, priced) at list or batch prices. Local models are free; a model missing from the table costs 0
        with priced=False."""
        if provider in FREE_PROVIDERS:
            return 0.0, True
        price = self.price(provider, model)
        return (price.cost(usage, batch), True) if price else (0.0, False)
