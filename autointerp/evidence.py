"""A short statistical summary of where a feature fires, for explainer prompts: the most frequent
high-activation tokens with counts and the tokens just before them.

Computed from the TRAIN split only (the examples the explainer sees anyway): valid and test stay held out.
A small model copies a token it is handed far more reliably than it infers one from a table of numbers.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from autointerp import render
from autointerp.records import FeatureExamples

HIGH_FRACTION = 0.5  # a token counts as activating at >= this fraction of its excerpt's max
N_SHOWN = 5


@dataclass(frozen=True)
class TokenEvidence:
    top_tokens: list[tuple[str, int]]  # (token text, count), most frequent first
    before: list[tuple[str, int]]  # the tokens just before those
    n_examples: int
    split: str = "train"

    def provenance(self) -> dict:
        return {
            "split": self.split,
            "n_examples": self.n_examples,
            "high_fraction": HIGH_FRACTION,
            "top_tokens": [list(p) for p in self.top_tokens],
            "before": [list(p) for p in self.before],
        }

    def prompt_text(self) -> str:
        """The summary as prompt lines (empty when nothing fired)."""
        if not self.top_tokens:
            return ""
        return (
            f"Token counts over these {self.n_examples} excerpts:\n"
            f"- most frequent high-activation tokens: {_counts(self.top_tokens)}\n"
            f"- tokens just before them: {_counts(self.before) or '(none)'}\n"
        )


def _shown(token: str) -> str:
    return render.one_line(render.token_text(token).strip()) or render.one_line(render.token_text(token))


def _counts(pairs: list[tuple[str, int]]) -> str:
    return ", ".join(f'"{tok}" ({n})' for tok, n in pairs)


def token_evidence(examples: FeatureExamples, n_shown: int = N_SHOWN) -> TokenEvidence:
    """Counts over the train positives: tokens at >= HIGH_FRACTION of their excerpt's max, and their predecessors."""
    active: Counter[str] = Counter()
    before: Counter[str] = Counter()
    positives = examples.train.positives
    for e in positives:
        top = max(e.activations, default=0.0)
        if top <= 0:
            continue
        for i, (tok, act) in enumerate(zip(e.tokens, e.activations)):
            if act > 0 and act >= HIGH_FRACTION * top:
                active[_shown(tok)] += 1
                if i > 0:
                    before[_shown(e.tokens[i - 1])] += 1
    ranked = lambda c: sorted(c.items(), key=lambda kv: (-kv[1], kv[0]))[:n_shown]  # noqa: E731
    return TokenEvidence(ranked(active), ranked(before), len(positives))
