"""Reading scorer answers: numbered answer lines (`3: 7`) from text, and digit probabilities from logprobs."""

from __future__ import annotations

import math
import re

from autointerp.llm.base import TokenLogprob

ACTIVATION_VALUES = range(0, 11)
BINARY_VALUES = range(0, 2)

_ANSWER_LINE = re.compile(r"^[\s*#>\-]*(?:context\s*)?(\d+)\**\s*[:.)=\-]+\s*\**\s*(\d+|yes|no)\b", re.I | re.M | re.A)
_ASCII_NUMBER = re.compile(r"[0-9]+")
_SLOT_PREFIX = re.compile(r"(?:^|\n)[\s*#>\-]*(?:context\s*)?(\d+)\**\s*[:.)=\-]+[ \t*]*$", re.I | re.A)


def numbered_lines_grammar(n: int, values: range) -> str:
    """GBNF for exactly `n` answer lines `1: v` .. `n: v`, each v one of `values` (what `answer_values` reads)."""
    alternatives = " | ".join(f'"{v}"' for v in sorted(values, key=lambda v: -len(str(v))))
    lines = ' "\\n" '.join(f'"{i}: " value' for i in range(1, n + 1))
    return f"root ::= {lines}\nvalue ::= {alternatives}\n"


def json_list_grammar(n: int, values: range) -> str:
    """GBNF for a JSON list of exactly `n` integers from `values` (what `parse_json_predictions` reads)."""
    alternatives = " | ".join(f'"{v}"' for v in sorted(values, key=lambda v: -len(str(v))))
    items = ' ", " '.join(["value"] * n)
    return f'root ::= "[" {items} "]"\nvalue ::= {alternatives}\n'


def digit_distribution(top: dict[str, float], values: range = ACTIVATION_VALUES) -> dict[int, float] | None:
    """Probabilities over the allowed integers among one position's top logprobs, renormalised over those present.

    Alternatives are compared with surrounding whitespace removed (" 7" counts as 7); several alternatives
    for one value add up. Only ASCII digits count: "²" or "٣" are other tokens, as in the references.
    None when no allowed value is among them.
    """
    mass: dict[int, float] = {}
    for token, logprob in top.items():
        text = token.strip()
        if _ASCII_NUMBER.fullmatch(text) and int(text) in values and logprob is not None:
            mass[int(text)] = mass.get(int(text), 0.0) + math.exp(logprob)
    total = sum(mass.values())
    if total <= 0:
        return None
    return {v: p / total for v, p in sorted(mass.items())}


def expected_value(top: dict[str, float], values: range = ACTIVATION_VALUES) -> float | None:
    """The expected value over the allowed integers present in `top` (renormalised); None when none is."""
    dist = digit_distribution(top, values)
    return None if dist is None else sum(v * p for v, p in dist.items())


def answer_values(text: str) -> dict[int, int]:
    """`{number: value}` from lines like `3: 7`, `Context 2: yes`; the first answer for a number wins."""
    out: dict[int, int] = {}
    for m in _ANSWER_LINE.finditer(text):
        raw = m.group(2).lower()
        value = 1 if raw == "yes" else 0 if raw == "no" else int(raw)
        out.setdefault(int(m.group(1)), value)
    return out


def answer_slots(logprobs: list[TokenLogprob]) -> dict[int, dict[str, float]]:
    """`{number: top logprobs}` at the token that follows each `number:` prefix in generated output."""
    slots: dict[int, dict[str, float]] = {}
    text = ""
    for tok in logprobs:
        m = _SLOT_PREFIX.search(text)
        if m and tok.token.strip():
            top = dict(tok.top)
            if tok.logprob is not None:
                top.setdefault(tok.token, tok.logprob)
            slots.setdefault(int(m.group(1)), top)
        text += tok.token
    return slots


def echo_slot_tops(logprobs: list[TokenLogprob], slot_word: str) -> list[dict[str, float]]:
    """Top logprobs at every `<TAB>slot_word` position of an echoed prompt, in order.

    The alternatives at that position are what the model would have written after the tab.
    """
    tops = []
    previous = ""
    for tok in logprobs:
        text = tok.token
        if text.lstrip(" \t").startswith(slot_word) and (text.startswith("\t") or previous.endswith("\t")):
            tops.append(dict(tok.top))
        previous = text
    return tops
