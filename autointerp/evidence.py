"""Short summaries of a feature's evidence for explainer prompts.

Input side: the most frequent high-activation tokens with counts and the tokens just before them, computed
from the TRAIN split only (the examples the explainer sees anyway): valid and test stay held out. A small
model copies a token it is handed far more reliably than it infers one from a table of numbers.
Output side (`output_text`): the stored output evidence (autointerp.output_evidence), tokens only in the order
of their effect, with the amplification's probability changes; it holds nothing from any split.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from autointerp import render
from autointerp.errors import AutointerpError
from autointerp.records import FeatureExamples, OutputEvidence, TokenEffect

HIGH_FRACTION = 0.5  # a token counts as activating at >= this fraction of its excerpt's max
N_SHOWN = 5
N_OUTPUT_SHOWN = 8  # tokens per side of each output evidence method


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


def _tokens(effects: list[TokenEffect], n: int, signed: bool = False) -> str:
    shown = [(_shown(e.token), e.value) for e in effects[:n]]
    return ", ".join(f'"{tok}" ({value:+.3f})' if signed else f'"{tok}"' for tok, value in shown if tok)


def require_output(examples: FeatureExamples) -> OutputEvidence:
    """The feature's stored output evidence, or one clear error saying how to compute it."""
    output = examples.output
    if output is None or output.logit_lens is None:
        raise AutointerpError(
            f"feature {examples.feature} of {examples.source!r} has no output evidence stored; compute it with "
            f"`autointerp effects --source {examples.source} --features {examples.feature}` (neuron and SAE sources only), "
            "or choose an explainer prompt that reads activations alone"
        )
    return output


def output_text(output: OutputEvidence, n_shown: int = N_OUTPUT_SHOWN) -> str:
    """The output evidence as prompt lines: logit-lens tokens, then amplification changes when computed."""
    lens = output.logit_lens
    lines = [
        f"- next tokens its direction promotes: {_tokens(lens.promoted, n_shown)}",
        f"- next tokens its direction suppresses: {_tokens(lens.suppressed, n_shown)}",
    ]
    amp = output.amplification
    if amp is not None:
        lines += [
            f"- amplified, it makes these next tokens more likely: {_tokens(amp.promoted, n_shown, signed=True)}",
            f"- and these less likely: {_tokens(amp.suppressed, n_shown, signed=True)}",
        ]
    return "\n".join(lines) + "\n"


def output_provenance(output: OutputEvidence, n_shown: int = N_OUTPUT_SHOWN) -> dict:
    """What an explainer was shown of the output evidence, and how that evidence was computed."""
    shown = {
        method: {side: [e.token for e in getattr(effects, side)[:n_shown]] for side in ("promoted", "suppressed")}
        for method, effects in (("logit_lens", output.logit_lens), ("amplification", output.amplification))
        if effects is not None
    }
    return {"shown": shown, "n_shown": n_shown, "computed": output.provenance}
