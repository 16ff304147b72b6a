"""The explainer: label parsing, prompt rendering (train split only), retries, best-of-k, the baseline."""

import asyncio
import hashlib
import re

import pytest
from doubles_llm import ScriptedLLMDouble
from handmade_examples import ANIMALS, animal_feature, with_output

from autointerp.errors import AutointerpError
from autointerp.explain import (
    LABEL_GRAMMAR,
    MAX_LABEL_WORDS,
    RETRY_TEMPERATURE,
    SAMPLED_RETRIES,
    STYLES,
    ExplanationParseError,
    attempt_seed,
    best_of_k,
    explain,
    explain_baseline,
    explainer_messages,
    label_grammar,
    parse_label,
)
from autointerp.prompts import PROMPTS_DIR, load_prompt

TEMPLATE = load_prompt("explain_highlight").text


@pytest.mark.parametrize(
    "output, label",
    [
        ("Label: animal names", "animal names"),
        ("The marked words are all animals.\nLabel: names of farm animals", "names of farm animals"),
        ('Label: "animal names".', "animal names"),
        ("**Label:** *animal names*", "animal names"),
        ("- label: `animal names`", "animal names"),
        ("Label: first guess\nLabel: second guess", "second guess"),
        ("animal names", "animal names"),
        ("The marked tokens have in common: animal names", "animal names"),
    ],
)
def test_parse_label_accepts(output, label):
    assert parse_label(output, TEMPLATE) == label


@pytest.mark.parametrize(
    "output",
    [
        "",
        "   \n  ",
        "Label:",
        'Label: ""',
        "Label: <a few words>",
        "Label: description",
        "I am not sure what these are.\nThey could be many things.\nHard to say.",
        "Label: " + "very " * 30 + "long",
        "Label: the word <<dog>> in text",
        'Label: the word "river" and other bodies of water',  # the template's own example
        "Label: What do the marked tokens have in common",
    ],
)
def test_parse_label_rejects(output):
    with pytest.raises(ExplanationParseError) as err:
        parse_label(output, TEMPLATE)
    assert err.value.raw == output


def test_a_label_that_copies_the_prompts_example_is_refused_unless_the_excerpts_hold_it():
    """The bundled model answers "a combination of the words "river" and other bodies" for features that have
    nothing to do with water: four words in a row of the prompt's own example. The same words in the excerpts
    shown are fair to quote."""
    output = 'Label: a combination of the words "river" and other bodies'
    with pytest.raises(ExplanationParseError, match=r'copies the prompt\'s wording \("river and other bodies"\)'):
        parse_label(output, TEMPLATE)
    with pytest.raises(ExplanationParseError, match="closing brackets in code"):
        parse_label("Label: the closing brackets in code", TEMPLATE, excerpts="print(x) and f(y)")
    excerpts = "The river and other bodies of water flooded."
    assert parse_label(output, TEMPLATE, excerpts) == 'a combination of the words "river" and other bodies'
    assert parse_label('Label: the word "river" in place names', TEMPLATE) == 'the word "river" in place names'


def test_a_copied_answer_is_asked_again_and_why_is_recorded():
    answers = iter(['Label: a mix of the word "river" and other bodies', "Label: animal names"])
    llm = ScriptedLLMDouble(lambda call: next(answers), supports_seed=True)
    [exp] = asyncio.run(explain(animal_feature(), llm))
    assert exp.label == "animal names" and len(llm.calls) == 2
    assert exp.details["attempt_errors"] == ["the label copies the prompt's wording (\"the word river and\"), not the excerpts"]


def test_prompt_hash_is_sha256_of_the_file():
    template = load_prompt("explain_highlight")
    assert template.name == "explain_highlight.v2"
    assert template.sha256 == hashlib.sha256((PROMPTS_DIR / "explain_highlight.v2.txt").read_bytes()).hexdigest()
    assert load_prompt("explain_highlight.v2") == template
    with pytest.raises(AutointerpError, match="available"):
        load_prompt("no_such_prompt")


def _four_grams(text: str) -> set[tuple[str, ...]]:
    words = re.findall(r"[a-z]+", text.lower())
    return {tuple(words[i : i + 4]) for i in range(len(words) - 3)}


def _test_grams(examples) -> set[tuple[str, ...]]:
    return set().union(*(_four_grams("".join(e.tokens)) for e in examples.test.all()))


@pytest.mark.parametrize("prompt", list(STYLES))
def test_no_test_context_in_explainer_prompts(prompt):
    examples = with_output(animal_feature())
    test_grams = _test_grams(examples)
    for candidate in range(3):
        messages, shown = explainer_messages(examples, prompt, candidate)
        text = "\n".join(m["content"] for m in messages)
        assert not (_four_grams(text) & test_grams)
        assert set(shown) <= examples.train.context_ids()
        assert not set(shown) & (examples.test.context_ids() | examples.valid.context_ids())


def test_highlight_prompt_marks_activating_tokens():
    messages, _ = explainer_messages(animal_feature(), "highlight")
    marked = re.findall(r"<<([^<>]+)>>", messages[-1]["content"])
    assert marked and {m.strip().lower() for m in marked} <= ANIMALS


def test_pairs_prompt_scales_to_0_10():
    examples = animal_feature()
    messages, _ = explainer_messages(examples, "pairs")
    values = [int(v) for v in re.findall(r"\t(\d+)$", messages[-1]["content"], re.M)]
    assert max(values) == 10 and min(values) == 0
    assert re.search(r"^ rabbit\t10$", messages[-1]["content"], re.M)  # the strongest train example


def test_contrastive_prompt_shows_train_hard_negatives():
    examples = animal_feature()
    messages, shown = explainer_messages(examples, "contrastive")
    assert "hot dog" in messages[-1]["content"]
    assert {e.context_id for e in examples.train.hard_negatives} <= set(shown)


def test_overlapping_splits_are_refused():
    examples = animal_feature()
    examples.test.positives.append(examples.train.positives[0])
    with pytest.raises(AutointerpError, match="disjoint"):
        explainer_messages(examples)


def test_explain_records_provenance_and_stage():
    llm = ScriptedLLMDouble(lambda call: "They are all animals.\nLabel: animal names")
    [exp] = asyncio.run(explain(animal_feature(), llm, prompt="highlight"))
    assert exp.label == "animal names" and exp.author == "llm"
    assert exp.explainer_model == "double:scripted"
    assert exp.prompt_name == "explain_highlight.v2" and exp.prompt_hash == load_prompt("explain_highlight").sha256
    assert exp.details["k"] == 1 and exp.details["raw_outputs"] == ["They are all animals.\nLabel: animal names"]
    assert exp.details["usage"]["prompt_tokens"] > 0
    assert [c.stage for c in llm.calls] == ["explain"]
    assert llm.calls[0].kwargs["temperature"] == 0.0


def test_unparsable_output_is_retried_sampled_with_a_fixed_seed():
    """Asked greedily again, or shown its own answer, the bundled model repeats an unusable answer word for word;
    so the same prompt is asked again sampled, each time with a seed fixed by the feature's sampling seed (a rerun
    asks the very same requests)."""
    answers = iter(["I cannot tell.\nMaybe words?\nNot sure.", "the word:", "Label: animal names"])
    llm = ScriptedLLMDouble(lambda call: next(answers), supports_seed=True)
    examples = animal_feature()
    [exp] = asyncio.run(explain(examples, llm))
    assert exp.label == "animal names"
    assert len(exp.details["raw_outputs"]) == 3
    first, *retries = llm.calls
    assert first.kwargs["temperature"] == 0.0 and first.kwargs["seed"] is None
    assert [c.kwargs["temperature"] for c in retries] == [RETRY_TEMPERATURE, RETRY_TEMPERATURE]
    seeds = [attempt_seed(examples, 0, 1), attempt_seed(examples, 0, 2)]
    assert [c.kwargs["seed"] for c in retries] == seeds and seeds[0] != seeds[1]
    assert exp.details["attempt_seeds"] == [None, *seeds]
    assert all(c.messages == first.messages for c in retries)
    assert attempt_seed(animal_feature(), 0, 1) == seeds[0]


def test_a_model_without_seeds_is_asked_without_one():
    answers = iter(["Hmm.\nNo.", "Label: animal names"])
    llm = ScriptedLLMDouble(lambda call: next(answers))
    [exp] = asyncio.run(explain(animal_feature(), llm))
    assert exp.label == "animal names" and llm.calls[1].kwargs["seed"] is None


def test_output_that_never_parses_is_never_a_label():
    garbage = "Hmm.\nThe tokens are tokens.\n<<dog>>"
    llm = ScriptedLLMDouble(lambda call: garbage)
    with pytest.raises(ExplanationParseError) as err:
        asyncio.run(explain(animal_feature(), llm))
    assert err.value.raw == [garbage] * (1 + SAMPLED_RETRIES)
    assert len(llm.calls) == 1 + SAMPLED_RETRIES
    assert str(err.value).endswith("in 3 outputs (no `Label:` line in the explainer's output)")


def test_k_candidates_are_distinct_and_sampled():
    labels = iter(["Label: animals", "Label: Animals", "garbage\nmore", "still\nno label", "nor\nthis", "Label: farm life"])
    llm = ScriptedLLMDouble(lambda call: next(labels), supports_seed=True)
    examples = animal_feature()
    exps = asyncio.run(explain(examples, llm, k=4))
    assert [e.label for e in exps] == ["animals", "farm life"]  # "Animals" is a duplicate, one failed 3 times
    assert exps[0].details["candidate_labels"] == ["animals", "Animals", None, "farm life"]
    assert exps[0].details["n_unparsed_candidates"] == 1
    assert all(c.kwargs["temperature"] > 0 for c in llm.calls)
    firsts = [llm.calls[i] for i in (0, 1, 2, 5)]
    assert len({c.messages[-1]["content"] for c in firsts}) == 4  # each candidate sees the train examples in its own order
    assert [c.kwargs["seed"] for c in firsts] == [attempt_seed(examples, i, 0) for i in range(4)]


def test_best_of_k_selects_on_valid_only():
    labels = ["Label: financial reports and taxes", "Label: names of animals", "Label: train stations"]
    llm = ScriptedLLMDouble(lambda call: labels[len(llm.calls) - 1])
    examples = animal_feature()
    best = asyncio.run(best_of_k(examples, llm, k=3))
    assert best.label == "names of animals"
    selection = best.details["selection"]
    assert selection["split"] == "valid" and selection["scorer"] == "embedding"
    assert len(selection["values"]) == 3
    test_grams = _test_grams(examples)
    assert not any(_four_grams(c.text()) & test_grams for c in llm.calls)


def test_baseline_names_distinctive_tokens():
    exp = explain_baseline(animal_feature())
    assert exp.author == "baseline" and exp.explainer_model is None
    tokens = exp.label.split(", ")
    assert 1 <= len(tokens) <= 3 and set(tokens) <= ANIMALS


def test_explain_with_the_bundled_model(local_llm):
    """The real SmolLM2: either a label that passes the parser, or a parse error carrying its raw outputs."""
    examples = animal_feature(n_train=5)
    try:
        exps = asyncio.run(explain(examples, local_llm, prompt="highlight"))
    except ExplanationParseError as err:
        assert err.raw and all(isinstance(r, str) for r in err.raw)
        return
    for exp in exps:
        assert exp.label and len(exp.label.split()) <= 20 and "<<" not in exp.label
        assert exp.label in exp.details["raw_outputs"][-1]
        assert exp.explainer_model == local_llm.name
        assert 0 < exp.details["usage"]["prompt_tokens"] < 960


def test_render_windows_and_highlights():
    from autointerp import render

    assert render.window_bounds(10, 1, 3, 2) == (0, 6)  # shifted right at the start
    assert render.window_bounds(10, 9, 3, 2) == (4, 10)  # and left at the end
    assert render.window_bounds(4, 2, 6, 6) == (0, 4)
    text = render.highlighted_text(["The", " hot", " dog", " ran", "\n"], [False, True, True, False, False])
    assert text == "The <<hot dog>> ran\\n"
    assert render.display_tokens(["the", "dog"]) == ["the", " dog"]  # bare words get spaces
    assert render.display_tokens(["os", ".", "path"]) == ["os", ".", "path"]
    assert render.scaled_activations([0.0, 2.5, 5.0, 7.0], 5.0) == [0, 5, 10, 10]


def test_scaled_activations_floor_as_bills_et_al():
    """min(10, floor(10 * relu(a) / max)): never rounded up, negatives shown as 0."""
    from autointerp import render

    assert render.scaled_activations([4.99, 1.75, 0.35, -2.0, 0.25], 5.0) == [9, 3, 0, 0, 0]
    assert render.scaled_activations([0.35, 0.95, 0.25, 0.15], 1.0) == [3, 9, 2, 1]
    assert render.scaled_activations([1.0, 2.0], 0.0) == [0, 0]


def test_the_label_grammar_holds_the_bundled_model_to_one_line_without_a_colon(local_llm):
    """Unconstrained here, the real model ends on a colon ("... they are:"), an answer that is cut off; under
    the label grammar it cannot, nor break the line, nor pass 20 words."""
    messages = [{"role": "user", "content": "Repeat exactly, ending with the colon: The tokens with high activations are:"}]
    free = asyncio.run(local_llm.chat(messages, max_tokens=40))
    held = asyncio.run(local_llm.chat(messages, max_tokens=40, grammar=LABEL_GRAMMAR))
    assert free.text.rstrip().endswith(":")
    line = held.text.removeprefix("Label: ")
    assert line and ":" not in line and "\n" not in line and len(line.split()) <= MAX_LABEL_WORDS


def test_with_examples_the_label_must_quote_a_token_the_feature_fires_on():
    grammar, tokens = label_grammar(animal_feature())
    assert tokens and set(tokens) <= ANIMALS
    assert f'top ::= "{tokens[0]}" | ' in grammar
    taker = ScriptedLLMDouble(lambda call: 'Label: the word "dog" and farm animals', supports_grammar=True)
    [exp] = asyncio.run(explain(animal_feature(), taker, prompt="pairs"))
    assert taker.calls[0].kwargs["grammar"] == grammar
    assert exp.details["output_grammar"] == "label quoting a top token" and exp.details["grammar_tokens"] == tokens
    no_examples = ScriptedLLMDouble(lambda call: "Label: farm animals", supports_grammar=True)
    [exp] = asyncio.run(explain(with_output(animal_feature()), no_examples, prompt="output"))
    assert no_examples.calls[0].kwargs["grammar"] == LABEL_GRAMMAR and exp.details["output_grammar"] == "label"


def test_the_bundled_model_under_the_grounded_grammar_quotes_a_top_token(local_llm):
    examples = animal_feature(n_train=5)
    grammar, tokens = label_grammar(examples)
    messages, _ = explainer_messages(examples, "pairs")
    answer = asyncio.run(local_llm.chat(messages, max_tokens=80, grammar=grammar)).text
    line = answer.removeprefix("Label: ")
    assert any(f'"{tok}"' in line for tok in tokens), answer
    assert "\n" not in line and ":" not in line and len(line.split()) <= MAX_LABEL_WORDS
