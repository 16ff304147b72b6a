"""The explainer: render the train split into a short prompt, ask an LLM for a label, parse it strictly.

Only `examples.train` is ever rendered. Valid is for choosing among candidates (best_of_k); test is for
the reported scores and never reaches an explainer prompt.
"""

from __future__ import annotations

import asyncio
import functools
import math
import re
from collections import Counter
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np

from autointerp import ranking, render
from autointerp.errors import AutointerpError
from autointerp.evidence import output_provenance, output_text, require_output, token_evidence
from autointerp.llm.base import LLM, constrained, seeded
from autointerp.prompts import PromptTemplate, load_prompt
from autointerp.records import Example, Explanation, FeatureExamples

if TYPE_CHECKING:
    from autointerp.scoring import Scorer

STAGE = "explain"
MAX_LABEL_CHARS = 120
MAX_LABEL_WORDS = 20
MAX_OUTPUT_TOKENS = 80
# This many words in a row copied from the prompt's own wording (its instructions and its example labels), and not
# found in the excerpts shown, make a label a copy: the bundled model repeats the prompt's example ("the word "river"
# and other bodies of water") for features that have nothing to do with it.
ECHO_NGRAM = 4
DEFAULT_SAMPLED_TEMPERATURE = 0.7
# After an unusable answer the candidate is asked again, sampled (a greedy retry repeats the same answer word for
# word), each retry with its own seed drawn from the feature's sampling seed: a rerun asks the same requests.
RETRY_TEMPERATURE = 0.8
SAMPLED_RETRIES = 2
# The answer's form, for models that take a grammar: one line of at most MAX_LABEL_WORDS words, none holding
# the prompt's markup (<<, >>, <start>, $) or a colon (an answer cut off at "... performed by:" or "they are:"),
# after an optional `Label: `. Not a forced `Label:` prefix: forced, the bundled model fills it with the system
# prompt's own examples or bare numbers ("Label: 10"); left to itself it opens with the question's words, which
# parse_label strips. What the line says is still up to the model and parse_label.
LABEL_GRAMMAR = r"""root ::= ("Label: ")? word (" " word){0,19}
word ::= [^ \t\n\r<>$*`:]{1,24}
"""
# With examples in the prompt, the label must also name, in quotes, one of the tokens that fire most often in the
# train split (autointerp.evidence): the bundled model otherwise fills the line with stock phrases ("the result of
# a function call to ...") while counting tokens (explain_baseline) names the word the feature fires on. Measured
# with the bundled model (README, label quality, round 3): +0.16 embedding AUROC on the planted suite, near-duplicate
# labels 13 -> 1 pairs on the demo's 20 features.
_GROUNDED_GRAMMAR = """root ::= ("Label: ")? (word " "){{0,6}} "\\"" top "\\"" (" " word){{0,12}}
top ::= {tokens}
word ::= [^ \\t\\n\\r<>$*`:"]{{1,24}}
"""
_GROUNDABLE = re.compile(r'^[^\s<>$*`:"\\]{1,24}$')


@dataclass(frozen=True)
class PromptStyle:
    template: str
    max_examples: int
    before: int  # tokens kept before the max-activating token
    after: int
    highlight_fraction: float = 0.3  # mark tokens at >= this fraction of the window's max
    max_negatives: int = 0
    output: bool = False  # shows the stored output evidence (autointerp.output_evidence)


STYLES: dict[str, PromptStyle] = {
    "highlight": PromptStyle("explain_highlight", max_examples=20, before=12, after=3),
    "pairs": PromptStyle("explain_pairs", max_examples=10, before=7, after=2),
    "contrastive": PromptStyle("explain_contrastive", max_examples=14, before=12, after=3, max_negatives=6),
    "output": PromptStyle("explain_output", max_examples=0, before=0, after=0, output=True),
    "combined": PromptStyle("explain_combined", max_examples=20, before=12, after=3, output=True),
}


class ExplanationParseError(AutointerpError):
    """The model's output holds no usable label; `raw` keeps what it said (one output or all tried)."""

    def __init__(self, message: str, raw: str | list[str]):
        super().__init__(message)
        self.raw = raw


_LABEL_LINE = re.compile(r"^[\s>*_#`\-]*label[\s*_`]*[:：][\s*_`]*(?P<label>.*)$", re.IGNORECASE)
_PLACEHOLDER = re.compile(r"^<[^<>]*>$|^\[[^\[\]]*\]$|^(description|your label|label|none|n/?a|unknown)$", re.I)


def _clean(label: str) -> str:
    label = re.sub(r"[*_`]+", "", label)
    label = re.sub(r"\s+", " ", label).strip().rstrip(" .;,")
    while len(label) >= 2 and label[0] + label[-1] in ('""', "''", "“”", "‘’", "()", "[]"):
        label = label[1:-1].strip().rstrip(" .;,")
    return label


def parse_label(output: str, template_text: str = "", excerpts: str = "") -> str:
    """The label from a model's answer: its last `Label: ...` line, or a lone short line (after its last colon).

    Quotes and markdown are stripped. Empty, overlong, placeholder or template-echoing output raises
    ExplanationParseError carrying the raw output; so does a label that copies ECHO_NGRAM words in a row of the
    template's wording unless the `excerpts` shown to the model hold them too.
    """
    lines = [ln for ln in output.strip().splitlines() if ln.strip()]
    found = [m.group("label") for ln in lines if (m := _LABEL_LINE.match(ln))]
    if found:
        label = _clean(found[-1])
    elif len(lines) == 1:
        label = _clean(lines[0].rsplit(":", 1)[-1])  # "The marked tokens have in common: X" -> "X"
    else:
        raise ExplanationParseError("no `Label:` line in the explainer's output", raw=output)
    if _is_template_phrase(label, template_text):
        raise ExplanationParseError("the label repeats the prompt's own wording", raw=output)
    label = _strip_echoed_lead(label, template_text)
    words = label.split()
    if not label or not any(c.isalnum() for c in label):
        raise ExplanationParseError("the explainer gave an empty label", raw=output)
    if len(label) > MAX_LABEL_CHARS or len(words) > MAX_LABEL_WORDS:
        raise ExplanationParseError(f"the label is longer than {MAX_LABEL_WORDS} words", raw=output)
    if _PLACEHOLDER.match(label) or any(m in label for m in ("<<", ">>", "<start>", "<end>", "$")):
        raise ExplanationParseError("the label repeats the prompt's placeholder or markup", raw=output)
    copied = _copied_phrase(label, template_text, excerpts)
    if copied:
        raise ExplanationParseError(f'the label copies the prompt\'s wording ("{copied}"), not the excerpts', raw=output)
    return label


def _words(text: str) -> list[str]:
    return re.findall(r"[a-z0-9]+", text.lower())


def _strip_echoed_lead(label: str, template_text: str, min_words: int = 4) -> str:
    """Drop an opening that repeats the prompt's question ("The marked tokens have in common that ...")."""
    spans = list(re.finditer(r"[A-Za-z0-9]+", label))
    joined = _template_words(template_text)
    cut = 0
    for k in range(min_words, len(spans)):
        if f" {' '.join(m.group(0).lower() for m in spans[:k])} " not in joined:
            break
        cut = spans[k - 1].end()
    if not cut:
        return label
    rest = re.sub(r"^[\s:,;\-]*(?:that\s+|is\s+|are\s+)?", "", label[cut:])
    return _clean(rest)


def _is_template_phrase(label: str, template_text: str) -> bool:
    """All of the label (two words or more) is a phrase of the template ("What do the marked tokens have in common")."""
    label_words = _words(label)
    return len(label_words) >= 2 and f" {' '.join(label_words)} " in _template_words(template_text)


def _joined_words(text: str) -> str:
    """The text's words, lower-cased, one space apart and around: " a b c " holds " b c " for words in a row."""
    return " " + " ".join(_words(text)) + " "


_template_words = functools.lru_cache(maxsize=32)(_joined_words)  # a prompt's, made once per prompt


def _ngrams_in_order(words: list[str], n: int) -> list[str]:
    return [" ".join(words[i : i + n]) for i in range(len(words) - n + 1)]


def _copied_phrase(label: str, template_text: str, excerpts: str = "") -> str:
    """The first ECHO_NGRAM words in a row of the label that the template holds and the excerpts do not ('' if none)."""
    template = _template_words(template_text)
    in_template = [gram for gram in _ngrams_in_order(_words(label), ECHO_NGRAM) if f" {gram} " in template]
    if in_template:
        in_excerpts = _joined_words(excerpts)
        for gram in in_template:
            if f" {gram} " not in in_excerpts:
                return gram
    return ""


def _train_positives(examples: FeatureExamples, style: PromptStyle, candidate: int) -> list[Example]:
    """Train positives, strongest first, spread over the whole range (top and quantile examples) when there are
    more than the style shows; later candidates see them in a different (seeded) order."""
    ranked = sorted(examples.train.positives, key=lambda e: -e.max_value)
    if len(ranked) > style.max_examples:
        ranked = [ranked[i] for i in np.linspace(0, len(ranked) - 1, style.max_examples).round().astype(int)]
    shown = ranked
    if candidate:
        order = np.random.default_rng([examples.seed, examples.feature, candidate]).permutation(len(shown))
        shown = [shown[i] for i in order]
    return shown


def _render_positive(example: Example, style: PromptStyle, max_activation: float, name: str) -> str:
    tokens, acts = render.window(example, render.max_position(example), style.before, style.after)
    if name == "pairs":
        return render.pairs_text(tokens, acts, max_activation)
    return render.highlighted_text(tokens, render.activation_marks(acts, style.highlight_fraction))


def _check_disjoint(examples: FeatureExamples) -> None:
    overlap = examples.train.context_ids() & (examples.test.context_ids() | examples.valid.context_ids())
    if overlap:
        raise AutointerpError(
            f"feature {examples.feature}: {len(overlap)} train contexts also appear in valid/test; "
            "re-sample the feature so that the splits are disjoint"
        )


def explainer_messages(
    examples: FeatureExamples, prompt: str = "highlight", candidate: int = 0, evidence: bool = False
) -> tuple[list[dict[str, str]], list[int]]:
    """The chat messages for one candidate and the context ids they show (train split only); with `evidence`,
    the train split's token counts (autointerp.evidence) follow the examples. The output and combined prompts
    show the feature's stored output evidence; the output prompt shows no examples."""
    style = _style(prompt)
    _check_disjoint(examples)
    fields: dict[str, str] = {}
    shown: list[int] = []
    if style.output:
        fields["output"] = output_text(require_output(examples))
    if style.max_examples:
        positives = _train_positives(examples, style, candidate)
        if not positives:
            raise AutointerpError(f"feature {examples.feature} has no train positives to explain; sample it first")
        max_activation = examples.max_activation or max(e.max_value for e in positives)
        blocks = [_render_positive(e, style, max_activation, prompt) for e in positives]
        if prompt != "pairs":
            blocks = [f"{i}. {text}" for i, text in enumerate(blocks, 1)]
        summary = token_evidence(examples).prompt_text() if evidence else ""
        fields |= {"examples": "\n".join(blocks), "evidence": "\n" + summary if summary else ""}
        shown = [e.context_id for e in positives]
    if style.max_negatives:
        negatives = examples.train.hard_negatives[: style.max_negatives]
        lines = []
        for i, e in enumerate(negatives, 1):
            center = render.window_center(e, examples.characteristic_tokens)
            tokens, _ = render.window(e, center, style.before, style.after)
            lines.append(f"{i}. {render.plain_text(tokens)}")
        fields["negatives"] = "\n".join(lines) if lines else "(none found)"
        shown += [e.context_id for e in negatives]
    return load_prompt(style.template).render_messages(**fields), shown


def _style(prompt: str) -> PromptStyle:
    if prompt not in STYLES:
        raise AutointerpError(f"unknown explainer prompt {prompt!r}; choose one of {', '.join(STYLES)}")
    return STYLES[prompt]


def _template_text(template: PromptTemplate) -> str:
    """The template's own wording, without the examples a label may legitimately quote."""
    text = template.text
    for field in ("$examples", "$negatives", "$evidence", "$output"):
        text = text.replace(field, "\n")
    return text


def attempt_seed(examples: FeatureExamples, candidate: int, attempt: int) -> int:
    """The sampling seed of one attempt at one candidate label, fixed by the feature's sampling seed."""
    return int(np.random.default_rng([examples.seed, examples.feature, candidate, attempt]).integers(2**31))


def label_grammar(examples: FeatureExamples) -> tuple[str, list[str]]:
    """The grammar of one feature's label and the tokens it lets the label quote (none: LABEL_GRAMMAR)."""
    tokens = [tok for tok, _ in token_evidence(examples).top_tokens if _GROUNDABLE.match(tok)]
    if not tokens:
        return LABEL_GRAMMAR, []
    return _GROUNDED_GRAMMAR.format(tokens=" | ".join(f'"{tok}"' for tok in tokens)), tokens


@dataclass
class _Attempts:
    """One candidate's tries: the label (None if none was usable), every raw output, why each unusable one was
    refused, tokens used, the context ids shown and the sampling seed of each try."""

    label: str | None
    raws: list[str]
    errors: list[str]
    usage: dict[str, int]
    shown: list[int]
    seeds: list[int | None]
    quotable: list[str]  # the tokens the grammar let the label quote (none: no grammar for them)


def _shown_text(examples: FeatureExamples, shown: list[int]) -> str:
    ids = set(shown)
    return "\n".join("".join(e.tokens) for e in examples.train.all() if e.context_id in ids)


async def _candidate(
    examples: FeatureExamples, llm: LLM, prompt: str, candidate: int, temperature: float, evidence: bool
) -> _Attempts:
    """After an unusable answer (unparsable, or a copy of the prompt's wording) the same prompt is asked again up to
    SAMPLED_RETRIES times, sampled: shown its own answer, or asked greedily again, the bundled model repeats it
    word for word."""
    messages, shown = explainer_messages(examples, prompt, candidate, evidence)
    template_text = _template_text(load_prompt(_style(prompt).template))
    excerpts = _shown_text(examples, shown)
    grammar, quotable = label_grammar(examples) if _style(prompt).max_examples else (LABEL_GRAMMAR, [])
    tries = _Attempts(None, [], [], {"prompt_tokens": 0, "completion_tokens": 0}, shown, [], quotable)
    for attempt in range(1 + SAMPLED_RETRIES):
        temp = temperature if attempt == 0 else max(temperature, RETRY_TEMPERATURE)
        seed = attempt_seed(examples, candidate, attempt) if temp > 0 else None
        response = await llm.chat(
            messages,
            max_tokens=MAX_OUTPUT_TOKENS,
            temperature=temp,
            stage=STAGE,
            **constrained(llm, grammar),
            **seeded(llm, seed),
        )
        tries.raws.append(response.text)
        tries.seeds.append(seed)
        tries.usage["prompt_tokens"] += response.usage.prompt_tokens
        tries.usage["completion_tokens"] += response.usage.completion_tokens
        try:
            tries.label = parse_label(response.text, template_text, excerpts)
            return tries
        except ExplanationParseError as exc:
            tries.errors.append(str(exc))
    return tries


async def explain(
    examples: FeatureExamples,
    llm: LLM,
    *,
    prompt: str = "highlight",
    k: int = 1,
    temperature: float | None = None,
    evidence: bool = False,
) -> list[Explanation]:
    """Up to k distinct candidate labels (k=1: greedy; k>1: sampled, each over a reshuffled train split).
    `evidence`: add the train split's token counts to the prompt (recorded in the label's details).

    Raises ExplanationParseError (with every raw output) when no candidate gives a usable label.
    """
    if k < 1:
        raise AutointerpError("k must be at least 1")
    temp = temperature if temperature is not None else (0.0 if k == 1 else DEFAULT_SAMPLED_TEMPERATURE)
    results = await asyncio.gather(*(_candidate(examples, llm, prompt, i, temp, evidence) for i in range(k)))
    template = load_prompt(_style(prompt).template)
    labels = [r.label for r in results]
    all_raw = [raw for r in results for raw in r.raws]
    if not any(labels):
        reasons = "; ".join(dict.fromkeys(e for r in results for e in r.errors))
        raise ExplanationParseError(
            f"feature {examples.feature}: the explainer gave no usable label in {len(all_raw)} outputs ({reasons})",
            raw=all_raw,
        )
    seen: set[str] = set()
    out = []
    for i, tries in enumerate(results):
        label = tries.label
        if label is None or label.lower() in seen:
            continue
        seen.add(label.lower())
        details = {
            "k": k,
            "candidate": i,
            "candidate_labels": labels,
            "raw_outputs": tries.raws,
            "attempt_errors": tries.errors,
            "n_unparsed_candidates": labels.count(None),
            "usage": tries.usage,
            "temperature": temp,
            "attempt_seeds": tries.seeds,
            "train_context_ids": tries.shown,
        }
        if evidence:
            details["evidence"] = token_evidence(examples).provenance()
        if _style(prompt).output:
            details["output_evidence"] = output_provenance(require_output(examples))
        if "grammar" in constrained(llm, LABEL_GRAMMAR):
            details["output_grammar"] = "label quoting a top token" if tries.quotable else "label"
            if tries.quotable:
                details["grammar_tokens"] = tries.quotable
        out.append(
            Explanation(
                source=examples.source,
                feature=examples.feature,
                label=label,
                author="llm",
                explainer_model=llm.name,
                prompt_name=template.name,
                prompt_hash=template.sha256,
                details=details,
            )
        )
    return out


async def best_of_k(
    examples: FeatureExamples,
    llm: LLM,
    *,
    prompt: str = "highlight",
    k: int = 3,
    temperature: float | None = None,
    selector: Scorer | None = None,
    evidence: bool = False,
) -> Explanation:
    """The candidate that scores best on the VALID split with a cheap scorer (default: embedding, no LLM)."""
    from autointerp.scoring import make_scorer

    candidates = await explain(examples, llm, prompt=prompt, k=k, temperature=temperature, evidence=evidence)
    if len(candidates) == 1:
        candidates[0].details["selection"] = {"split": "valid", "note": "only one usable candidate"}
        return candidates[0]
    selector = selector or make_scorer("embedding", None)
    values: list[float | None] = []
    for cand in candidates:
        scores = await selector.score(cand, examples, split="valid")
        headline = ranking.headline(scores, selector.name, reliable_only=False, split="valid") or scores[0]
        values.append(headline.value)
        metric = headline.metric
    best = max(range(len(candidates)), key=lambda i: -math.inf if values[i] is None else values[i])
    chosen = candidates[best]
    chosen.details["selection"] = {
        "scorer": selector.name,
        "metric": metric,
        "split": "valid",
        "labels": [c.label for c in candidates],
        "values": values,
    }
    return chosen


def _token_key(token: str) -> str:
    return render.token_text(token).strip().lower()


def explain_baseline(examples: FeatureExamples, n_tokens: int = 3) -> Explanation:
    """No LLM: the tokens most over-represented where the feature fires (train split) versus everywhere else.

    Smoothed log-odds of a token at activating positions against inactive positions and train negatives.
    """
    active: Counter[str] = Counter()
    background: Counter[str] = Counter()
    for e in examples.train.positives:
        for tok, act in zip(e.tokens, e.activations):
            (active if act > 0 else background)[_token_key(tok)] += 1
    for e in [*examples.train.random_negatives, *examples.train.hard_negatives]:
        background.update(_token_key(t) for t in e.tokens)
    active.pop("", None)
    if not active:
        raise AutointerpError(f"feature {examples.feature} has no activating tokens in its train split")
    vocab = len(set(active) | set(background))
    n_act, n_bg = sum(active.values()), sum(background.values())
    alpha = 0.5

    def log_odds(tok: str) -> float:
        p_act = (active[tok] + alpha) / (n_act + alpha * vocab)
        p_bg = (background[tok] + alpha) / (n_bg + alpha * vocab)
        return math.log(p_act / p_bg)

    ranked = sorted(active, key=lambda t: (-log_odds(t), -active[t], t))
    top = [t for t in ranked if log_odds(t) > 0][:n_tokens] or ranked[:1]
    return Explanation(
        source=examples.source,
        feature=examples.feature,
        label=", ".join(top),
        author="baseline",
        details={"method": "token log-odds, train split", "tokens": {t: round(log_odds(t), 3) for t in top}},
    )
