"""Tokens per labeled-and-scored feature: the real labeling job, for each scorer configuration, counted from
the LLM ledger; reported per feature and as prompt tokens per scored test context, beside another open
pipeline's published figures (~960 prompt tokens per explanation, ~780 per 5-context detection prompt,
100 test contexts per feature: 165.6 prompt tokens per scored test context).

    python -m autointerp.bench.tokens [--features 6] [--local 2]

Features are planted rules over real text (the built-in corpus, tokenized by the bundled model), sampled
with the default SamplingConfig (40 test contexts). The job runs against the labeling latency server (no
model: every explanation parses, answers are filler), and every request in the ledger is re-counted with the
bundled SmolLM2 tokenizer and chat template; completion tokens there are the budgets the job asked for
(max_tokens), an upper bound. `--local N` also runs the default configuration on N features with the real
bundled model and reports the tokens its server counted, prompt and completion (slow: minutes on 2 cores).
"""

from __future__ import annotations

import argparse
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from autointerp.bench.latency_server import BackgroundServer, latency_app
from autointerp.bench.planted import (
    PlantedConfig,
    _bundled_tokenizer,
    ensure_planted_source,
    feature_of,
)
from autointerp.bench.planted_rules import RULES
from autointerp.config import JobConfig, SamplingConfig
from autointerp.pipeline import JobSummary, run_label_job
from autointerp.store import Store
from autointerp.store.llm_calls import list_calls

REFERENCE_EXPLANATION_TOKENS = 960
REFERENCE_DETECTION_PROMPT_TOKENS = 780  # one prompt of 5 contexts
REFERENCE_TEST_CONTEXTS = 100
REFERENCE_PER_CONTEXT = (
    REFERENCE_EXPLANATION_TOKENS + REFERENCE_TEST_CONTEXTS / 5 * REFERENCE_DETECTION_PROMPT_TOKENS
) / REFERENCE_TEST_CONTEXTS

DEFAULT = JobConfig()
# name -> JobConfig changes; the first is the job's default
CONFIGURATIONS: dict[str, dict[str, Any]] = {
    "default: detection + embedding": {},
    "detection, batches of 10": {
        "scorers": ("detection", "embedding"),
        "scorer_options": {"detection": {"batch_size": 10}},
    },
    "fuzzing + embedding": {"scorers": ("fuzzing", "embedding")},
    "simulation (echo) + embedding": {
        "scorers": ("simulation", "embedding"),
        "scorer_options": {"simulation": {"mode": "echo"}},
    },
    "simulation (chat) + embedding": {
        "scorers": ("simulation", "embedding"),
        "scorer_options": {"simulation": {"mode": "chat_logprobs"}},
    },
    "best of 3 + detection + embedding": {"k": 3},
    "embedding only": {"scorers": ("embedding",)},
}


@dataclass
class Tokens:
    configuration: str
    counted_by: str
    features: int  # labeled and scored
    test_contexts: float  # per feature
    requests: float  # per feature, by stage
    explain_prompt: float
    scorer_prompt: float
    completion: float

    @property
    def prompt(self) -> float:
        return self.explain_prompt + self.scorer_prompt

    @property
    def per_context(self) -> float:
        return self.prompt / self.test_contexts if self.test_contexts else float("nan")


class TokenCounter:
    """Prompt tokens of a ledger request as the bundled model would read it (chat template included)."""

    def __init__(self):
        self.tokenizer = _bundled_tokenizer()

    def __call__(self, request: dict[str, Any]) -> int:
        if "messages" in request:
            text = self.tokenizer.apply_chat_template(request["messages"], tokenize=False, add_generation_prompt=True)
        else:
            text = request["prompt"]
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])


def tally(store: Store, summary: JobSummary, name: str, count: TokenCounter | None) -> Tokens:
    """Per labeled feature, from the run's ledger rows: `count` re-counts prompts, else the server's usage."""
    done = summary.with_status("done")
    n = max(len(done), 1)
    with store.reading() as con:
        calls = [c for c in list_calls(con, summary.run_id) if c["error"] is None]
    explain = scorer = completion = 0.0
    for call in calls:
        prompt = count(call["request"]) if count else call["prompt_tokens"]
        if call["stage"] == "explain":
            explain += prompt
        else:
            scorer += prompt
        completion += call["completion_tokens"] or 0
    test_contexts = sum(next((s.n for s in r.scores if s.scorer == "embedding" and s.subset == "all"), 0) for r in done)
    return Tokens(
        name,
        "bundled tokenizer" if count else "local server",
        len(done),
        test_contexts / n,
        len(calls) / n,
        explain / n,
        scorer / n,
        completion / n,
    )


def run_configuration(
    db: Path, source: str, features: list[int], name: str, changes: dict[str, Any], llm: str, base_url: str | None
) -> JobSummary:
    job = JobConfig(
        source=source,
        features=",".join(map(str, features)),
        explainer=llm,
        base_url=base_url,
        sampling=SamplingConfig(),
        **{"scorers": ("detection", "embedding"), **changes},
    )
    return run_label_job(Store(db), job, progress=False)


def print_rows(rows: list[Tokens]) -> None:
    print(
        f"{'configuration':36} {'counted by':18} {'features':>8} {'test ctx':>8} {'requests':>8} {'explain':>8} "
        f"{'scorers':>8} {'completion':>10} {'prompt/test ctx':>15} {'vs ref':>6}"
    )
    for r in rows:
        print(
            f"{r.configuration:36} {r.counted_by:18} {r.features:>8} {r.test_contexts:>8.0f} {r.requests:>8.1f} "
            f"{r.explain_prompt:>8.0f} {r.scorer_prompt:>8.0f} {r.completion:>10.0f} {r.per_context:>15.1f} "
            f"{r.per_context / REFERENCE_PER_CONTEXT:>6.2f}"
        )
    print(
        f"{'reference (published)':36} {'':18} {'':>8} {REFERENCE_TEST_CONTEXTS:>8} {1 + REFERENCE_TEST_CONTEXTS / 5:>8.1f} "
        f"{REFERENCE_EXPLANATION_TOKENS:>8} {REFERENCE_TEST_CONTEXTS / 5 * REFERENCE_DETECTION_PROMPT_TOKENS:>8.0f} {'':>10} "
        f"{REFERENCE_PER_CONTEXT:>15.1f} {1:>6.2f}"
    )


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--features", type=int, default=6, help="planted features per configuration (default 6)")
    parser.add_argument(
        "--local", type=int, default=2, help="features to run with the real bundled model (default 2; 0: skip)"
    )
    parser.add_argument("--configurations", default="", help="comma-separated subset of: " + "; ".join(CONFIGURATIONS))
    args = parser.parse_args(argv)
    chosen = [c.strip() for c in args.configurations.split(",") if c.strip()] or list(CONFIGURATIONS)
    features = [feature_of(rule) for rule in RULES][: args.features]
    rows = []
    counter = TokenCounter()
    with tempfile.TemporaryDirectory(prefix="bench-tokens-") as tmp:
        base = Path(tmp) / "planted.duckdb"
        source = ensure_planted_source(Store(base, create=True), PlantedConfig())
        with BackgroundServer(latency_app(0.0, label_first=True)) as server:
            for i, name in enumerate(chosen):
                db = Path(tmp) / f"c{i}.duckdb"
                db.write_bytes(base.read_bytes())
                summary = run_configuration(
                    db, source, features, name, CONFIGURATIONS[name], "openai:bench", f"{server.url}/v1"
                )
                rows.append(tally(Store(db), summary, name, counter))
        if args.local:
            db = Path(tmp) / "local.duckdb"
            db.write_bytes(base.read_bytes())
            name = chosen[0]
            summary = run_configuration(db, source, features[: args.local], name, CONFIGURATIONS[name], "local", None)
            rows.append(tally(Store(db), summary, name, None))
            rows.append(tally(Store(db), summary, name, counter))
    print(
        "per labeled-and-scored feature; planted features over the built-in corpus; default sampling (40 test contexts)"
    )
    print_rows(rows)
    print(
        "completion: tokens the server counted (local server) or the max_tokens budgets asked for (bundled tokenizer, "
        "latency server); 'vs ref': prompt tokens per scored test context / the reference's"
    )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
