"""Turning examples into the short text LLM prompts show: windows, highlights, token–activation pairs."""

from __future__ import annotations

import math

import numpy as np

from autointerp.records import Example

HIGHLIGHT_OPEN, HIGHLIGHT_CLOSE = "<<", ">>"
_BYTE_LEVEL = str.maketrans({"Ġ": " ", "Ċ": "\n", "ĉ": "\t", "▁": " "})


def token_text(token: str) -> str:
    """A token as readable text: byte-level BPE / sentencepiece markers mapped to spaces."""
    return token.translate(_BYTE_LEVEL)


def one_line(text: str) -> str:
    """Keep one example per prompt line: newlines and tabs shown as visible escapes."""
    return text.replace("\r", "").replace("\n", "\\n").replace("\t", "\\t")


def display_tokens(tokens: list[str]) -> list[str]:
    """Token texts ready to join. Stores that hold bare words (every token alphanumeric, none carrying its
    space, as word-level tokenizers and hand-made data do) get spaces between tokens."""
    texts = [token_text(t) for t in tokens]
    if len(texts) > 1 and all(t.isalnum() for t in texts):
        texts = [texts[0], *(" " + t for t in texts[1:])]
    return texts


def window_bounds(n: int, center: int, before: int, after: int) -> tuple[int, int]:
    """[start, end) of a window of before+1+after tokens around `center`, shifted to stay inside [0, n)."""
    size = min(n, before + 1 + after)
    start = min(max(0, center - before), n - size)
    return start, start + size


def max_position(example: Example) -> int:
    return int(np.argmax(example.activations)) if example.activations else 0


def characteristic_position(example: Example, characteristic_tokens: list[str]) -> int | None:
    """Where a hard negative holds one of the feature's characteristic tokens (what makes it a near miss)."""
    wanted = {token_text(t).strip().lower() for t in characteristic_tokens}
    for i, tok in enumerate(example.tokens):
        if token_text(tok).strip().lower() in wanted:
            return i
    return None


def window_center(example: Example, characteristic_tokens: list[str], rng: np.random.Generator | None = None) -> int:
    """The max-activating token for positives; a characteristic token for hard negatives; else random (or middle)."""
    if example.is_positive and example.max_value > 0:
        return max_position(example)
    if example.kind == "hard_negative":
        pos = characteristic_position(example, characteristic_tokens)
        if pos is not None:
            return pos
    n = len(example.tokens)
    return int(rng.integers(0, n)) if rng is not None and n else n // 2


def window(example: Example, center: int, before: int, after: int) -> tuple[list[str], list[float]]:
    start, end = window_bounds(len(example.tokens), center, before, after)
    return example.tokens[start:end], example.activations[start:end]


def plain_text(tokens: list[str]) -> str:
    return one_line("".join(display_tokens(tokens)))


def highlighted_text(tokens: list[str], marked: list[bool]) -> str:
    """Text with marked tokens wrapped in <<...>>; neighbouring marked tokens share one span."""
    out: list[str] = []
    texts = display_tokens(tokens)
    i = 0
    while i < len(texts):
        if not marked[i]:
            out.append(texts[i])
            i += 1
            continue
        j = i
        while j < len(texts) and marked[j]:
            j += 1
        span = "".join(texts[i:j])
        lead = span[: len(span) - len(span.lstrip())]
        out.append(f"{lead}{HIGHLIGHT_OPEN}{span.strip()}{HIGHLIGHT_CLOSE}" if span.strip() else span)
        i = j
    return one_line("".join(out))


def activation_marks(activations: list[float], threshold_fraction: float) -> list[bool]:
    """Tokens at or above `threshold_fraction` of the window's max (and above zero)."""
    top = max(activations, default=0.0)
    return [a > 0 and a >= threshold_fraction * top for a in activations]


def scaled_activations(activations: list[float], max_activation: float) -> list[int]:
    """Activations as integers 0-10 relative to the feature's max: `min(10, floor(10 * relu(a) / max))`, as
    Bills et al. 2023 (`normalize_activations`) and delphi show them to the explainer."""
    if max_activation <= 0:
        return [0 for _ in activations]
    return [min(10, math.floor(10 * max(0.0, a) / max_activation)) for a in activations]


def pairs_text(tokens: list[str], activations: list[float], max_activation: float) -> str:
    """One `token<TAB>activation` line per token between <start> and <end>."""
    lines = [
        f"{one_line(t)}\t{v}" for t, v in zip(display_tokens(tokens), scaled_activations(activations, max_activation))
    ]
    return "\n".join(["<start>", *lines, "<end>"])
