"""The planted-feature suite: rules fire where they should, decoys differ, and the suite runs end to end."""

from __future__ import annotations

import csv
import re

import pytest

from autointerp.bench.planted import PlantedConfig, run_planted
from autointerp.bench.planted_rules import DECOY_KINDS, RULES, RULES_BY_NAME


def fired(rule_name: str, tokens: list[str]) -> list[int]:
    """Positions where the rule is active."""
    return [i for i, v in enumerate(RULES_BY_NAME[rule_name].fire(tokens)) if v]


def test_word_family_fires_on_every_form_with_the_stem_strongest():
    tokens = ["Open", " the", " file", ";", " files", " and", " profile", " stay", " filename", "s"]
    acts = RULES_BY_NAME["file_words"].fire(tokens)
    assert [i for i, v in enumerate(acts) if v] == [2, 4, 8, 9]  # "profile" is not the word "file"
    assert acts[2] == 1.0 and acts[4] < acts[2] and acts[8] < acts[2]


def test_words_split_over_tokens_activate_every_piece():
    assert fired("return_words", [" it", " ret", "urns", " a", " value"]) == [1, 2]


def test_inside_brackets_covers_the_enclosed_words_only():
    tokens = [" call", " f", "(", "x", ",", " y", ")", " and", " [", "a", "]"]
    assert fired("inside_parentheses", tokens) == [3, 5]
    assert fired("inside_square_brackets", tokens) == [9]


def test_digits_graded_by_length_and_quotes_and_paragraph_start():
    acts = RULES_BY_NAME["digits"].fire([" take", " 7", " or", " 2024", " items"])
    assert acts[0] == acts[2] == acts[4] == 0.0 and 0 < acts[1] < acts[3]
    assert fired("inside_double_quotes", [" say", ' "', "hello", " world", '"', " now"]) == [2, 3]
    assert fired("paragraph_start", [" end", ".", "\n", "\n", "Next", " line"]) == [4]


def test_keyword_rules_match_whole_words():
    assert fired("negation", [" do", " not", " note", " never"]) == [1, 3]
    assert fired("the", ["The", " theme", " of", " the", " end"]) == [0, 3]
    assert fired("after_the", ["The", " theme", " of", " the", " end"]) == [1, 4]
    assert fired("all_caps", [" use", " ASCII", " or", " Null"]) == [1]
    assert fired("snake_case", [" call", " __", "init", "__", " now"]) == [1, 2, 3]


def simple_tokens(text: str) -> list[str]:
    """Word and punctuation tokens carrying their leading spaces, as a BPE tokenizer's pieces do."""
    return re.findall(r"\s*\w+|\s*[^\w\s]|\s+", text)


# rule -> (text, the tokens it fires on); the rules with a test above are listed too, so that every rule has one
KNOWN_TEXT = {
    "file_words": ("Open a file or files; the profile stays", ["file", "files"]),
    "return_words": ("It returns; the returner", ["returns"]),
    "inside_parentheses": ("f(x, y) and g", ["x", "y"]),
    "inside_square_brackets": ("a[i] and b", ["i"]),
    "inside_double_quotes": ('say "hello there" now', ["hello", "there"]),
    "digits": ("take 7 or 2024 items", ["7", "2024"]),
    "paragraph_start": ("end.\n\nNext line", ["Next"]),
    "error_words": ("It raises an Error or fails; the terror is invalid", ["raises", "Error", "fails", "invalid"]),
    "negation": ("do not take note, never", ["not", "never"]),
    "modal_verbs": ("You may call it and it can fail but should not; the cannery", ["may", "can", "should"]),
    "all_caps": ("use ASCII or Null", ["ASCII"]),
    "snake_case": ("call sys_exit or exit", ["sys_exit"]),
    "dotted_names": ("Use os.path.join here. Then stop.", ["os", ".", "path", ".", "join"]),
    "def_class_keywords": ("def f(): a class or lambda x, classes and define", ["def", "class", "lambda"]),
    "control_flow_keywords": (
        "if x else y; for a while, try and except; iffy form", ["if", "else", "for", "while", "try", "except"]
    ),
    "the": ("The theme of the end", ["The", "the"]),
    "after_the": ("The theme of the end", ["theme", "end"]),
    "ing_words": ("Reading strings is boring; ring and sing", ["Reading", "boring"]),
    "ed_words": ("It returned and failed; red bed", ["returned", "failed"]),
    "long_words": ("an implementation of internationalization is short", ["implementation", "internationalization"]),
    "string_words": ("a string of str text with characters; stringent", ["string", "str", "text", "characters"]),
    "number_words": ("an int or integer or float number; interest", ["int", "integer", "float", "number"]),
    "container_words": ("a list of dict and tuple set; listen settle", ["list", "dict", "tuple", "set"]),
    "comparison_operators": ("if a != b or x < y and k in s; a->b", ["!", "=", "<", "in"]),
    "function_words": ("a function or methods called; functional", ["function", "methods", "called"]),
    "strong_one_word_weak_many": ("if the default is set", ["if", "default", "is"]),
    "dense_module_words": ("import a module; modular", ["import", "a", "module", ";", "modular"]),
    "constants_among_punctuation": ("f(x=None): return True", ["(", "None", ")", ":", "True"]),
}


def test_strong_rules_fire_weakly_elsewhere():
    acts = RULES_BY_NAME["strong_one_word_weak_many"].fire(simple_tokens("if the default is set"))
    assert acts == [0.15, 0.0, 1.0, 0.15, 0.0]
    acts = RULES_BY_NAME["constants_among_punctuation"].fire(simple_tokens("f(x=None): return True"))
    assert max(acts) == 1.0 and sorted(set(acts)) == [0.0, 0.15, 1.0]
    acts = RULES_BY_NAME["dense_module_words"].fire(simple_tokens("import a module; modular"))
    assert acts == [0.9, 0.02, 1.0, 0.02, 0.02]


def test_every_rule_has_a_known_text_case():
    assert set(KNOWN_TEXT) == set(RULES_BY_NAME)


@pytest.mark.parametrize("rule_name", sorted(KNOWN_TEXT))
def test_rule_fires_on_the_intended_tokens_of_known_text(rule_name):
    text, expected = KNOWN_TEXT[rule_name]
    tokens = simple_tokens(text)
    assert "".join(tokens) == text
    assert [tokens[i].strip() for i in fired(rule_name, tokens)] == expected


def test_there_are_enough_rules_with_distinct_labels():
    assert len(RULES) >= 20
    assert len(RULES_BY_NAME) == len(RULES)
    for rule in RULES:
        labels = rule.labels()
        assert set(labels) == {"true", *DECOY_KINDS}
        assert len({text.strip().lower() for text in labels.values()}) == 4, rule.name


E2E_RULES = ("file_words", "return_words", "error_words", "string_words", "negation", "the")


@pytest.fixture(scope="module")
def embedding_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted")
    cfg = PlantedConfig(rules=E2E_RULES, scorers=("embedding",), n_contexts=600)
    return run_planted(out / "planted.duckdb", cfg, out), out


def test_planted_suite_end_to_end_with_the_embedding_scorer(embedding_run):
    result, out = embedding_run
    assert not result.skipped
    for name in ("planted.md", "planted_scores.csv", "planted_summary.csv", "planted_win_rates.png", "planted_scores.png"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "planted_scores.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == len(E2E_RULES) * 4  # the true label and three decoys per rule
    (summary,) = result.summary
    assert summary["scorer"] == "embedding" and summary["n_features"] == len(E2E_RULES)
    assert summary["true>unrelated"] >= 5 / 6  # the true label beats the unrelated decoy on most rules
    assert "true > unrelated" in (out / "planted.md").read_text()


def test_planted_source_is_reused_by_a_second_run(embedding_run):
    result, out = embedding_run
    again = run_planted(out / "planted.duckdb", PlantedConfig(rules=("the",), scorers=("embedding",), n_contexts=600))
    assert again.source == result.source
    assert again.seconds["build"] < 5
    first = {(s.label_kind, s.value) for s in result.scores if s.rule == "the"}
    assert {(s.label_kind, s.value) for s in again.scores} == first


CONTEXT_CASES = ("strong_one_word_weak_many", "dense_module_words", "constants_among_punctuation")


@pytest.fixture(scope="module")
def context_cases_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("planted-cases")
    return run_planted(out / "planted.duckdb", PlantedConfig(rules=CONTEXT_CASES, scorers=("embedding",), n_contexts=600))


@pytest.mark.parametrize("rule", CONTEXT_CASES)
def test_true_label_beats_every_decoy_on_the_context_choice_cases(context_cases_run, rule):
    """Issue 16: the test split holds the strong contexts, dense features get silent windows as negatives,
    and weak firing on punctuation does not make it characteristic: the true label ranks first."""
    scores = {s.label_kind: s for s in context_cases_run.scores if s.rule == rule}
    assert set(scores) == {"true", *DECOY_KINDS} and not context_cases_run.skipped
    assert all(s.value is not None for s in scores.values()), {k: s.error for k, s in scores.items()}
    assert all(scores["true"].value > scores[kind].value for kind in DECOY_KINDS), {k: s.value for k, s in scores.items()}


def test_context_choice_cases_sample_as_intended(context_cases_run):
    characteristic, notes = context_cases_run.characteristic, context_cases_run.notes
    assert characteristic["strong_one_word_weak_many"][0].strip() == "default"
    constants = [t.strip() for t in characteristic["constants_among_punctuation"]]
    assert constants[0] in {"None", "True", "False"}
    brackets = [i for i, t in enumerate(constants) if t and set(t) <= set("():")]
    words_at = [i for i, t in enumerate(constants) if t in {"None", "True", "False"}]
    assert not brackets or min(brackets) > max(words_at)  # brackets only below every constant
    assert any("random negatives are windows" in n for n in notes["dense_module_words"])
