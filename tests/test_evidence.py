"""The explainer's evidence (token counts from the train split), the label grammar, the non-LLM baseline beside
the LLM label, and near-duplicate labels across features."""

import asyncio
import dataclasses

from doubles_llm import ScriptedLLMDouble
from handmade_examples import ANIMALS, animal_feature

from autointerp.baseline import BaselineLabel, llm_vs_baseline, score_baseline
from autointerp.evidence import token_evidence
from autointerp.explain import LABEL_GRAMMAR, explain, explainer_messages, label_grammar
from autointerp.label_checks import near_duplicate_labels
from autointerp.records import Example, Score


def _with_test_only_token(examples, token=" zebra"):
    """The same feature with a token that fires only in the TEST split."""
    test = examples.test
    marked = []
    for e in test.positives:
        tokens = [*e.tokens, token]
        marked.append(dataclasses.replace(e, tokens=tokens, activations=[*e.activations, 99.0]))
    return dataclasses.replace(examples, test=dataclasses.replace(test, positives=marked))


def test_evidence_counts_train_tokens_and_the_tokens_before_them():
    ev = token_evidence(animal_feature(n_train=8), n_shown=20)
    counts = dict(ev.top_tokens)
    # 8 train sentences, three hold two animals ("horse ... cow", "rabbit ... fox", "goat and a pig")
    assert set(counts) <= ANIMALS and sum(counts.values()) == 11 and counts["cat"] == 1
    before = dict(ev.before)
    assert before == {"the": 3, "a": 2, "small": 1, "Our": 1, "Two": 1, "The": 1, "A": 1, "an": 1}
    assert ev.n_examples == 8 and ev.split == "train"
    shown = token_evidence(animal_feature(n_train=8))
    assert len(shown.top_tokens) == 5 and shown.before[0] == ev.before[0]


def test_evidence_never_sees_valid_or_test():
    examples = _with_test_only_token(animal_feature())
    ev = token_evidence(examples)
    assert "zebra" not in str(ev.provenance())
    messages, _ = explainer_messages(examples, "pairs", evidence=True)
    assert "zebra" not in messages[-1]["content"]


def test_evidence_is_in_the_prompt_only_when_asked_and_recorded_in_provenance():
    examples = animal_feature()
    plain, _ = explainer_messages(examples, "pairs")
    with_counts, _ = explainer_messages(examples, "pairs", evidence=True)
    assert "Token counts" not in plain[-1]["content"]
    assert 'most frequent high-activation tokens: "' in with_counts[-1]["content"]
    assert '"the" (3)' in with_counts[-1]["content"]
    for prompt in ("highlight", "contrastive"):
        assert "Token counts" in explainer_messages(examples, prompt, evidence=True)[0][-1]["content"]
    llm = ScriptedLLMDouble(lambda call: "Label: farm animals")
    [exp] = asyncio.run(explain(examples, llm, prompt="pairs", evidence=True))
    assert exp.details["evidence"] == token_evidence(examples).provenance()
    [plain_exp] = asyncio.run(explain(examples, llm, prompt="pairs"))
    assert "evidence" not in plain_exp.details


def test_the_label_grammar_goes_only_to_models_that_take_one():
    taker = ScriptedLLMDouble(lambda call: "Label: farm animals", supports_grammar=True)
    [exp] = asyncio.run(explain(animal_feature(), taker, prompt="pairs"))
    assert taker.calls[0].kwargs["grammar"] == label_grammar(animal_feature())[0]
    assert exp.details["output_grammar"] == "label quoting a top token"
    other = ScriptedLLMDouble(lambda call: "Label: farm animals")
    [exp] = asyncio.run(explain(animal_feature(), other, prompt="pairs"))
    assert other.calls[0].kwargs["grammar"] is None and "output_grammar" not in exp.details


def test_baseline_is_scored_on_the_test_split_with_the_embedding_scorer():
    examples = animal_feature()
    baseline = asyncio.run(score_baseline(examples))
    assert set(baseline.label.split(", ")) <= ANIMALS
    assert baseline.score.scorer == "embedding" and baseline.score.subset == "all" and baseline.score.split == "test"
    assert baseline.score.n == len(examples.test.all()) and baseline.score.value > 0.5
    assert BaselineLabel.from_details(baseline.to_details()) == baseline


def test_baseline_of_a_feature_that_never_fires_is_an_error_not_a_label():
    examples = animal_feature()
    silent = [Example(e.context_id, e.tokens, [0.0] * len(e.tokens), e.kind) for e in examples.train.positives]
    examples = dataclasses.replace(examples, train=dataclasses.replace(examples.train, positives=silent))
    baseline = asyncio.run(score_baseline(examples))
    assert baseline.label is None and baseline.score is None and "no activating tokens" in baseline.error


def test_llm_versus_baseline_is_paired_over_features():
    def s(v):
        return Score("embedding", "auroc", v, None, None, 20)

    compared = llm_vs_baseline([(s(0.9), s(0.6)), (s(0.4), s(0.7)), (s(0.8), s(0.8)), (None, s(0.5)), (s(0.7), None)])
    assert compared["wins"]["n"] == 3 and compared["wins"]["rate"] == 1.5 / 3
    assert compared["mean_difference"]["n"] == 3
    assert abs(compared["mean_difference"]["mean"] - (0.3 - 0.3 + 0.0) / 3) < 1e-9


def test_near_duplicate_labels_are_flagged_across_features():
    labels = {
        1: "they are the result of a function call to a method",
        2: "They are the result of a function call to the method",
        3: "the word parent and its plural",
        4: "closing brackets in code",
        5: "Closing brackets in code.",
    }
    found = near_duplicate_labels(labels)
    assert {(d.feature_a, d.feature_b) for d in found} == {(1, 2), (4, 5)}
    assert [d.similarity for d in found][0] == 1.0  # 4 and 5: the same words
    assert near_duplicate_labels({1: "dog names", 2: "tax returns and filing dates"}) == []
    assert near_duplicate_labels({1: "only one"}) == []


def test_label_grammar_shape():
    assert "{0,19}" in LABEL_GRAMMAR and "<>$" in LABEL_GRAMMAR and "\\n" in LABEL_GRAMMAR


def test_without_evidence_the_prompt_is_the_previous_version_word_for_word():
    from autointerp.prompts import load_prompt

    examples = animal_feature()
    for prompt, style in (("pairs", "explain_pairs"), ("highlight", "explain_highlight")):
        messages, _ = explainer_messages(examples, prompt)
        fields = {"examples": messages[-1]["content"].split("\n", 1)[1].rsplit("\n\n", 1)[0]}
        assert load_prompt(f"{style}.v1").render_messages(**fields) == messages


def test_the_label_summary_shows_baselines_the_comparison_and_near_duplicates(capsys):
    from autointerp.cli.label import print_summary
    from autointerp.pipeline import FeatureResult, JobSummary, Meter

    def emb(v):
        return Score("embedding", "auroc", v, v - 0.1, v + 0.1, 20)

    def base(label, v):
        return BaselineLabel(label, "token log-odds, train split", emb(v))

    results = [
        FeatureResult(1, "done", "they are the result of a function call", scores=[emb(0.41)], baseline=base("parent, parents", 0.83)),
        FeatureResult(2, "done", "They are the result of a function call.", scores=[emb(0.72)], baseline=base("def, class", 0.55)),
        FeatureResult(3, "done", "years in dates", scores=[emb(0.66)], baseline=base("19, 20", 0.61)),
        FeatureResult(4, "failed", stage="explain", error="no usable label", baseline=base("import, from", 0.7)),
    ]
    print_summary(JobSummary("run-x", "done", "h", "src", results, Meter(), 1.0), "x.duckdb")
    out = capsys.readouterr().out
    assert "baseline label (embedding auroc)" in out and "parent, parents (0.83)" in out
    assert "LLM label vs baseline on embedding AUROC, 3 features: LLM higher in 0.67" in out
    assert "near-duplicate labels across features (1 pairs" in out and "1 ~ 2 (cosine 1.00)" in out
    assert "baseline label: import, from (0.70)" in out


def test_a_stored_baseline_reads_back_with_its_score():
    """The baseline is kept in the label's details as JSON and read back when a rerun reports earlier labels."""
    import json

    from autointerp.baseline import BaselineLabel
    from autointerp.records import Score

    baseline = BaselineLabel("for, range", "token log-odds, train split", Score("embedding", "auroc", 0.7, 0.5, 0.9, 30))
    again = BaselineLabel.from_details(json.loads(json.dumps(baseline.to_details())))
    assert again == baseline and again.score.unreliable is None
