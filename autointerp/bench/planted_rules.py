"""Planted features: rules over a context's tokens with a known true label and three decoy labels each.

A rule marks the tokens it covers (1.0, or a graded value for some matches). The true label describes the
rule; the decoys are one over-broad label (true of the rule's tokens and of much else), one near-miss
label (a neighbouring rule that does not hold) and one unrelated label. A scorer that can tell labels
apart should rank the true label above all three.

Rules see token strings as stored (decoded text such as " file" or "\\n"); matching runs on the joined
text, so a word split into several tokens activates all of them.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

from autointerp.render import token_text

Fire = Callable[[list[str]], list[float]]
DECOY_KINDS = ("broad", "near_miss", "unrelated")


@dataclass(frozen=True)
class PlantedRule:
    name: str
    fire: Fire
    true_label: str
    broad_decoy: str
    near_miss_decoy: str
    unrelated_decoy: str

    def labels(self) -> dict[str, str]:
        """Label kind ("true", "broad", "near_miss", "unrelated") -> label text."""
        return {
            "true": self.true_label,
            "broad": self.broad_decoy,
            "near_miss": self.near_miss_decoy,
            "unrelated": self.unrelated_decoy,
        }


def _offsets(tokens: list[str]) -> tuple[str, list[tuple[int, int]]]:
    """The context's text and each token's [start, end) in it (byte-level markers such as "Ġ" read as spaces)."""
    tokens = [token_text(t) for t in tokens]
    spans, start = [], 0
    for tok in tokens:
        spans.append((start, start + len(tok)))
        start += len(tok)
    return "".join(tokens), spans


def _mark(tokens: list[str], text: str, spans: list[tuple[int, int]], covered: list[tuple[int, int, float]]) -> list[float]:
    """Activate each token that shares a non-space character with a covered character range."""
    acts = [0.0] * len(tokens)
    for i, (s, e) in enumerate(spans):
        for a, b, value in covered:
            lo, hi = max(s, a), min(e, b)
            if lo < hi and not text[lo:hi].isspace():
                acts[i] = max(acts[i], value)
    return acts


def regex_rule(pattern: str, *, group: int = 0, flags: int = 0, strength: Callable[[str], float] | None = None) -> Fire:
    """Fire on the tokens covered by each match (or by one group of it); `strength` grades a match's text."""
    compiled = re.compile(pattern, flags)

    def fire(tokens: list[str]) -> list[float]:
        text, spans = _offsets(tokens)
        covered = []
        for m in compiled.finditer(text):
            a, b = m.span(group)
            if a < b:
                covered.append((a, b, strength(m.group(group)) if strength else 1.0))
        return _mark(tokens, text, spans, covered)

    return fire


def word_family(weights: dict[str, float]) -> Fire:
    """Fire on whole words from a family; each word form has its own strength (the stem strongest)."""
    pattern = r"\b(" + "|".join(sorted(map(re.escape, weights), key=len, reverse=True)) + r")\b"
    return regex_rule(pattern, flags=re.IGNORECASE, strength=lambda w: weights[w.lower()])


def words(*forms: str) -> Fire:
    return word_family({w: 1.0 for w in forms})


def inside(open_char: str, close_char: str) -> Fire:
    """Fire on word characters enclosed by a bracket pair, at any nesting depth."""

    def fire(tokens: list[str]) -> list[float]:
        text, spans = _offsets(tokens)
        covered, depth = [], 0
        for i, ch in enumerate(text):
            if ch == open_char:
                depth += 1
            elif ch == close_char:
                depth = max(depth - 1, 0)
            elif depth > 0 and (ch.isalnum() or ch == "_"):
                covered.append((i, i + 1, 1.0))
        return _mark(tokens, text, spans, covered)

    return fire


def strongest(*rules: Fire) -> Fire:
    """Each token's strongest activation under several rules: a main rule plus weak background firing."""

    def fire(tokens: list[str]) -> list[float]:
        return [max(values) for values in zip(*(rule(tokens) for rule in rules))]

    return fire


WEAK = 0.15  # the activation of the rules that fire strongly on one thing and weakly on much else
BACKGROUND = 0.02  # a dense rule's near-zero activation on every word (below the sampler's near_zero share)


def _digits_strength(number: str) -> float:
    return min(1.0, 0.4 + 0.2 * len(number))


RULES: list[PlantedRule] = [
    PlantedRule(
        "file_words",
        word_family({"file": 1.0, "files": 0.8, "filename": 0.7, "filenames": 0.7, "filesystem": 0.6}),
        "the word 'file' and its forms (files, filename)",
        "words about computers and data",
        "the word 'directory' and its forms (directories, folder)",
        "names of fruits and vegetables",
    ),
    PlantedRule(
        "return_words",
        word_family({"return": 1.0, "returns": 0.9, "returned": 0.8, "returning": 0.7}),
        "the word 'return' and its forms (returns, returned)",
        "verbs",
        "the word 'yield' and its forms (yields, yielded)",
        "words about the weather",
    ),
    PlantedRule(
        "inside_parentheses",
        inside("(", ")"),
        "words inside parentheses",
        "punctuation and the words next to it",
        "words inside square brackets",
        "names of animals",
    ),
    PlantedRule(
        "inside_square_brackets",
        inside("[", "]"),
        "words inside square brackets",
        "punctuation and the words next to it",
        "words inside parentheses",
        "names of sports",
    ),
    PlantedRule(
        "inside_double_quotes",
        regex_rule(r'"([^"\n]+)"', group=1),
        "text inside double quotation marks",
        "any text in a sentence",
        "text inside parentheses",
        "names of musical instruments",
    ),
    PlantedRule(
        "digits",
        regex_rule(r"\d+", strength=_digits_strength),
        "numbers written with digits",
        "symbols and special characters",
        "numbers written out as words (one, two, three)",
        "colours",
    ),
    PlantedRule(
        "paragraph_start",
        regex_rule(r"\n[ \t]*\n[ \t]*(\S+)", group=1),
        "the first word of a paragraph (right after a blank line)",
        "common English words",
        "the last word before a blank line (end of a paragraph)",
        "parts of the human body",
    ),
    PlantedRule(
        "error_words",
        word_family(
            {"error": 1.0, "errors": 1.0, "exception": 1.0, "exceptions": 1.0, "raise": 0.8, "raises": 0.8,
             "raised": 0.8, "fail": 0.7, "fails": 0.7, "failure": 0.7, "invalid": 0.6, "warning": 0.6}
        ),
        "words about errors and exceptions (error, exception, raise)",
        "technical programming vocabulary",
        "words about success and completion (done, complete, succeed)",
        "cooking and recipes",
    ),
    PlantedRule(
        "negation",
        words("not", "no", "never", "cannot", "neither", "nor"),
        "negation words (not, no, never, cannot)",
        "short function words",
        "words expressing possibility (may, might, can)",
        "names of cities",
    ),
    PlantedRule(
        "modal_verbs",
        words("may", "might", "can", "could", "should", "must", "will", "would", "shall"),
        "modal verbs (can, may, should, must, will)",
        "verbs",
        "negation words (not, no, never)",
        "types of trees",
    ),
    PlantedRule(
        "all_caps",
        regex_rule(r"\b[A-Z][A-Z0-9_]*[A-Z][A-Z0-9_]*\b"),
        "words in all capital letters (acronyms and constants such as ASCII, NULL)",
        "names and proper nouns",
        "capitalized words that start with one capital letter",
        "kitchen utensils",
    ),
    PlantedRule(
        "snake_case",
        regex_rule(r"\b(?=\w*[A-Za-z])\w*_\w*\b"),
        "identifiers written with underscores (snake_case names such as __init__)",
        "programming code",
        "CamelCase class names",
        "ocean animals",
    ),
    PlantedRule(
        "dotted_names",
        regex_rule(r"\b[A-Za-z_]\w*(?:\.[A-Za-z_]\w*)+\b"),
        "dotted names for attribute or module access (os.path, str.join)",
        "programming code",
        "periods that end a sentence",
        "holidays and celebrations",
    ),
    PlantedRule(
        "def_class_keywords",
        words("def", "class", "lambda"),
        "the Python keywords def, class and lambda",
        "programming keywords",
        "Python control-flow keywords (if, for, while)",
        "clothing",
    ),
    PlantedRule(
        "control_flow_keywords",
        words("if", "else", "elif", "for", "while", "try", "except", "finally"),
        "control-flow keywords (if, else, for, while, try, except)",
        "short common words",
        "the Python keywords def, class and lambda",
        "farm animals",
    ),
    PlantedRule(
        "the",
        words("the"),
        "the word 'the'",
        "short function words",
        "the word 'a' or 'an'",
        "planets and stars",
    ),
    PlantedRule(
        "after_the",
        regex_rule(r"\b[Tt]he\s+([A-Za-z_]\w*)", group=1),
        "the word that follows 'the'",
        "nouns",
        "the word 'the'",
        "types of flowers",
    ),
    PlantedRule(
        "ing_words",
        regex_rule(r"\b[A-Za-z]{2,}ing\b"),
        "words ending in -ing (present participles and gerunds)",
        "verbs",
        "words ending in -ed (past tense)",
        "furniture",
    ),
    PlantedRule(
        "ed_words",
        regex_rule(r"\b[A-Za-z]{2,}ed\b"),
        "words ending in -ed (past tense and participles)",
        "verbs",
        "words ending in -ing (present participles)",
        "musical genres",
    ),
    PlantedRule(
        "long_words",
        regex_rule(r"\b[A-Za-z]{12,}\b"),
        "long words of twelve or more letters",
        "rare or technical words",
        "short words of three letters or fewer",
        "names of birds",
    ),
    PlantedRule(
        "string_words",
        word_family(
            {"string": 1.0, "strings": 1.0, "str": 0.9, "text": 0.8, "character": 0.7, "characters": 0.7,
             "unicode": 0.7, "bytes": 0.6}
        ),
        "words about strings and text (string, str, character, unicode)",
        "names of data types",
        "words about numbers (integer, float, number)",
        "gardening",
    ),
    PlantedRule(
        "number_words",
        word_family(
            {"int": 1.0, "integer": 1.0, "integers": 1.0, "float": 0.9, "number": 0.8, "numbers": 0.8,
             "decimal": 0.7, "complex": 0.6}
        ),
        "words about numbers and numeric types (integer, float, number)",
        "names of data types",
        "words about strings and text (string, character)",
        "medical conditions",
    ),
    PlantedRule(
        "container_words",
        word_family(
            {"list": 1.0, "lists": 1.0, "dict": 0.9, "dictionary": 0.9, "dictionaries": 0.9, "tuple": 0.8,
             "tuples": 0.8, "set": 0.7, "sets": 0.7, "sequence": 0.6, "sequences": 0.6}
        ),
        "words for container types (list, dict, tuple, set, sequence)",
        "names of data types",
        "words about numbers and numeric types (integer, float)",
        "vehicles",
    ),
    PlantedRule(
        "comparison_operators",
        regex_rule(r"==|!=|<=|>=|(?<![<>=!-])[<>](?![<>=])|\bis\b|\bin\b"),
        "comparison operators (==, !=, <, >, is, in)",
        "symbols and short words",
        "arithmetic operators (+, -, *, /)",
        "names of rivers",
    ),
    PlantedRule(
        "function_words",
        word_family({"function": 1.0, "functions": 1.0, "method": 0.8, "methods": 0.8, "call": 0.6, "called": 0.6}),
        "the words 'function' and 'method' and their forms",
        "programming vocabulary",
        "the words 'class' and 'object'",
        "baking",
    ),
]

# Three cases where the choice of test contexts, not the scorer, decides whether a label can be checked
# (issue 16): each must still rank its true label first.
RULES += [
    PlantedRule(
        "strong_one_word_weak_many",  # the test split must hold the strong contexts, not only the weak ones
        strongest(
            word_family({"default": 1.0, "defaults": 1.0}),
            word_family(dict.fromkeys(("if", "is", "to", "of", "in", "for"), WEAK)),
        ),
        "the word 'default'",
        "common English words",
        "the word 'optional'",
        "names of islands",
    ),
    PlantedRule(
        "dense_module_words",  # near zero on every word, so it fires in every context: negatives are silent windows
        strongest(
            word_family({"module": 1.0, "modules": 1.0, "import": 0.9, "imports": 0.9, "package": 0.8, "packages": 0.8}),
            regex_rule(r"\S+", strength=lambda _: BACKGROUND),
        ),
        "words about modules and imports (module, import, package)",
        "programming vocabulary",
        "words about classes and objects (class, object, instance)",
        "names of mountains",
    ),
    PlantedRule(
        "constants_among_punctuation",  # weak firing on brackets and colons must not make them characteristic
        strongest(regex_rule(r"\b(None|True|False)\b"), regex_rule(r"[():]", strength=lambda _: WEAK)),
        "the Python constants None, True and False",
        "Python keywords",
        "numbers written with digits",
        "types of cheese",
    ),
]

RULES_BY_NAME = {rule.name: rule for rule in RULES}
