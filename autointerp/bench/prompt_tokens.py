"""Prompt size: tokens per explanation prompt (each explainer style) and prompt tokens per scored test context
(each LLM scorer), counted with the bundled model's tokenizer and chat template on planted features over real
text, sampled with the default SamplingConfig (20 train positives, 40 test contexts, 64-token contexts).

    python -m autointerp.bench.prompt_tokens [--rules digits,negation] [--n-contexts 1500]

The reference is ~960 tokens per explanation prompt in another open pipeline. No model runs: the scorers are
driven by PromptRecorder, a stand-in LLM that records each prompt and answers with nothing (every answer is
then unparsed, which does not change the prompts).
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import tempfile
from pathlib import Path

from autointerp.bench.planted import PlantedConfig, _bundled_tokenizer, ensure_planted_source, feature_of
from autointerp.bench.planted_rules import RULES, RULES_BY_NAME
from autointerp.config import SamplingConfig
from autointerp.explain import STYLES, explainer_messages
from autointerp.llm.base import LLMResponse
from autointerp.records import Explanation
from autointerp.sampling import sample
from autointerp.scoring import make_scorer
from autointerp.store import Store

REFERENCE_TOKENS_PER_EXPLANATION = 960
SCORER_SETUPS = {
    "detection": ("detection", {}),
    "fuzzing": ("fuzzing", {}),
    "simulation (echo)": ("simulation", {"mode": "echo"}),
    "simulation (chat_logprobs)": ("simulation", {"mode": "chat_logprobs"}),
    "simulation (json)": ("simulation", {"mode": "json"}),
}


class PromptRecorder:
    """Not a model: keeps every chat / completion prompt a scorer sends and answers with empty text."""

    name = "recorder:none"
    supports_logprobs = True
    supports_echo = True

    def __init__(self):
        self.chats: list[list[dict[str, str]]] = []
        self.completions: list[str] = []

    async def chat(self, messages, **kwargs) -> LLMResponse:
        self.chats.append(messages)
        return LLMResponse(text="", model=self.name, logprobs=[])

    async def complete(self, prompt, **kwargs) -> LLMResponse:
        self.completions.append(prompt)
        return LLMResponse(text="", model=self.name, logprobs=[])


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rules", default="", help="comma-separated planted rules (default: all)")
    parser.add_argument("--n-contexts", type=int, default=1500)
    args = parser.parse_args(argv)
    rules = [RULES_BY_NAME[r] for r in args.rules.split(",") if r] or list(RULES)

    tokenizer = _bundled_tokenizer()

    def chat_tokens(messages: list[dict[str, str]]) -> int:
        text = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        return len(tokenizer(text, add_special_tokens=False)["input_ids"])

    # the planted source is imported: it has no write directions, hence no output evidence for the output prompts
    explain_tokens: dict[str, list[int]] = {s: [] for s, style in STYLES.items() if not style.output}
    scorer_tokens: dict[str, list[float]] = {s: [] for s in SCORER_SETUPS}
    with tempfile.TemporaryDirectory(prefix="prompt-tokens-") as tmp:
        store = Store(Path(tmp) / "bench.duckdb", create=True)
        source = ensure_planted_source(store, PlantedConfig(n_contexts=args.n_contexts))
        for rule in rules:
            examples = sample(store, source, feature_of(rule), SamplingConfig())
            for style in explain_tokens:
                explain_tokens[style].append(chat_tokens(explainer_messages(examples, style)[0]))
            label = Explanation(examples.source, examples.feature, rule.true_label)
            n_test = len(examples.test.all())
            for setup, (name, opts) in SCORER_SETUPS.items():
                recorder = PromptRecorder()
                asyncio.run(make_scorer(name, recorder, **opts).score(label, examples))
                total = sum(chat_tokens(m) for m in recorder.chats)
                total += sum(len(tokenizer(p)["input_ids"]) for p in recorder.completions)
                scorer_tokens[setup].append(total / n_test)

    print(f"planted features: {len(rules)}; tokenizer: bundled SmolLM2 (chat template included)")
    print(f"{'explainer prompt':28} {'mean tokens':>12} {'max':>6} {'ratio to ~960':>14}")
    for style, counts in explain_tokens.items():
        mean = statistics.mean(counts)
        print(f"{style:28} {mean:12.0f} {max(counts):6d} {mean / REFERENCE_TOKENS_PER_EXPLANATION:14.2f}")
    print(f"\n{'scorer':28} {'prompt tokens per test context':>31}")
    for setup, per_context in scorer_tokens.items():
        print(f"{setup:28} {statistics.mean(per_context):31.0f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
