"""Scorers: arithmetic and parsing through a scripted LLM double, then the real bundled model and MiniLM."""

import asyncio
import math
import re

import numpy as np
import pytest
from doubles_llm import ScriptedLLMDouble
from handmade_examples import ANIMALS, animal_feature

from autointerp.errors import AutointerpError
from autointerp.llm.base import LLMResponse, TokenLogprob
from autointerp.records import Explanation
from autointerp.scoring import make_scorer, metrics
from autointerp.scoring.llm_output import answer_slots, answer_values, digit_distribution, expected_value
from autointerp.scoring.simulation import parse_json_predictions

LABEL = Explanation(source="handmade", feature=7, label="names of animals")


def _has_animal(text: str) -> bool:
    return any(w in ANIMALS for w in re.findall(r"[a-z]+", text.lower()))


def _excerpts(call) -> list[tuple[int, str]]:
    return [(int(n), t) for n, t in re.findall(r"^(\d+)\. (.*)$", call.messages[-1]["content"], re.M)]


def _by_subset(scores, metric):
    return {s.subset: s for s in scores if s.metric == metric}


# --- reading model output ---------------------------------------------------------------------------------


def test_expected_value_from_digit_logprobs():
    top = {"0": math.log(0.2), "5": math.log(0.2), " 5": math.log(0.1), "x": math.log(0.5)}
    # digits present: 0 -> 0.2, 5 -> 0.3; renormalised 0.4 / 0.6; EV = 0.6 * 5
    assert expected_value(top) == pytest.approx(3.0)
    assert digit_distribution(top) == pytest.approx({0: 0.4, 5: 0.6})
    assert expected_value({"10": 0.0}) == pytest.approx(10.0)
    assert expected_value({"11": 0.0, "a": -1.0}) is None
    assert digit_distribution({"1": math.log(0.3), "0": math.log(0.1), "7": 0.0}, range(2)) == pytest.approx(
        {0: 0.25, 1: 0.75}
    )


def test_only_ascii_digits_count_in_logprobs_and_answers():
    """Real top-logprob lists hold "²", "¹", "٣": they are other tokens, never a crash or a value."""
    assert expected_value({"0": -0.1, "²": -3.0}) == pytest.approx(0.0)
    assert digit_distribution({"1": -0.1, "¹": -4.0}, range(2)) == pytest.approx({1: 1.0})
    assert digit_distribution({"٣": -0.1, "³": -0.2}) is None
    assert answer_values("1: ٣\n2: 1\n٣: 0") == {2: 1}


def test_answer_values_and_slots():
    assert answer_values("1: 0\n2: 1\n**3**: yes\nContext 4: no\n5: maybe") == {1: 0, 2: 1, 3: 1, 4: 0}
    tokens = [TokenLogprob(t, -0.1, {t: -0.1, "0": -2.0}) for t in ["1", ":", " ", "1", "\n", "2", ":", " 0"]]
    slots = answer_slots(tokens)
    assert set(slots) == {1, 2}
    assert digit_distribution(slots[1], range(2))[1] > 0.8
    assert slots[2] == {" 0": -0.1, "0": -2.0}


def test_json_predictions_parse_strictly():
    assert parse_json_predictions("Sure: [0, 3, 10]", 3) == [0.0, 3.0, 10.0]
    assert parse_json_predictions("[0, 3]", 3) is None
    assert parse_json_predictions("[0, 3, 11]", 3) is None
    assert parse_json_predictions("[0, true, 1]", 3) is None
    assert parse_json_predictions("no list here", 3) is None


# --- detection --------------------------------------------------------------------------------------------


def _detection_double(with_logprobs: bool, skip: int | None = None):
    def reply(call):
        lines, tokens = [], []
        for n, text in _excerpts(call):
            if n == skip:
                continue
            fits = _has_animal(text)
            lines.append(f"{n}: {int(fits)}")
            p = 0.9 if fits else 0.2
            tokens += [(str(n), {}), (":", {}), (" ", {}), (str(int(fits)), {"1": math.log(p), "0": math.log(1 - p)})]
            tokens.append(("\n", {}))
        text = "\n".join(lines)
        if not with_logprobs:
            return text
        return LLMResponse(text=text, model="double", logprobs=[TokenLogprob(t, None, top) for t, top in tokens])

    return ScriptedLLMDouble(reply, supports_logprobs=with_logprobs)


def test_detection_balanced_accuracy_per_subset():
    llm = _detection_double(with_logprobs=False)
    scores = asyncio.run(make_scorer("detection", llm).score(LABEL, animal_feature()))
    ba = _by_subset(scores, "balanced_accuracy")
    # The double says 1 for any animal word: right on all 5 positives and 7 random negatives, wrong on the
    # 3 hard negatives ("rocking horse", "pig latin", "duck tape").
    assert ba["random_negatives"].value == pytest.approx(1.0)
    assert ba["hard_negatives"].value == pytest.approx(0.5)
    assert ba["all"].value == pytest.approx((1 + 7 / 10) / 2)
    assert (ba["all"].n, ba["random_negatives"].n, ba["hard_negatives"].n) == (15, 12, 8)
    assert ba["all"].ci_low <= ba["all"].value <= ba["all"].ci_high
    assert not _by_subset(scores, "auroc")  # no logprobs, no probabilities
    assert {c.stage for c in llm.calls} == {"detection"}
    assert len(llm.calls) == 3 and all(len(_excerpts(c)) == 5 for c in llm.calls)


def test_detection_auroc_from_logprobs():
    scores = asyncio.run(make_scorer("detection", _detection_double(with_logprobs=True)).score(LABEL, animal_feature()))
    auc = _by_subset(scores, "auroc")
    assert auc["random_negatives"].value == pytest.approx(1.0)
    assert auc["hard_negatives"].value == pytest.approx(0.5)  # hard negatives tie with positives
    assert auc["all"].value == pytest.approx((5 * 7 + 0.5 * 5 * 3) / (5 * 10))


def test_detection_unparsed_answers_leave_n_and_are_counted():
    scores = asyncio.run(make_scorer("detection", _detection_double(False, skip=2)).score(LABEL, animal_feature()))
    for s in scores:
        total = {"all": 15, "random_negatives": 12, "hard_negatives": 8}[s.subset]
        assert s.n + s.details["n_unparsed"] == total
    assert _by_subset(scores, "balanced_accuracy")["all"].details["n_unparsed"] == 3  # one per batch of 5


def test_detection_batches_are_reproducible():
    first, second = _detection_double(False), _detection_double(False)
    asyncio.run(make_scorer("detection", first).score(LABEL, animal_feature()))
    asyncio.run(make_scorer("detection", second).score(LABEL, animal_feature()))
    assert [c.text() for c in first.calls] == [c.text() for c in second.calls]


# --- fuzzing ----------------------------------------------------------------------------------------------


def test_fuzzing_separates_correct_from_misplaced_highlights():
    def reply(call):
        return "\n".join(
            f"{n}: {int(all(_has_animal(m) for m in re.findall(r'<<(.*?)>>', t)))}" for n, t in _excerpts(call)
        )

    llm = ScriptedLLMDouble(reply)
    scores = asyncio.run(make_scorer("fuzzing", llm).score(LABEL, animal_feature()))
    assert {(s.metric, s.subset) for s in scores} == {("balanced_accuracy", "all"), ("f1", "all")}
    score = _by_subset(scores, "balanced_accuracy")["all"]
    assert score.value == pytest.approx(1.0) and _by_subset(scores, "f1")["all"].value == pytest.approx(1.0)
    assert score.n == 10 and score.details["n_positive"] == 5 and score.details["n_negative"] == 5
    texts = "\n".join(c.text() for c in llm.calls)
    assert texts.count("<<") >= 10 and {c.stage for c in llm.calls} == {"fuzzing"}


def _highlighted_animals(text: str) -> int:
    return int(all(_has_animal(m) for m in re.findall(r"<<(.*?)>>", text)))


def test_fuzzing_bootstrap_resamples_contexts_with_their_pairs():
    """Right on both highlightings of 3 contexts, wrong on both of 2: every resample of whole contexts has
    balanced accuracy k/5; resampling the 10 items independently would not keep the pairs."""

    def reply(call):
        return "\n".join(
            f"{n}: {_highlighted_animals(t) ^ int(any(w in t for w in ('pig', 'duck')))}" for n, t in _excerpts(call)
        )

    scores = asyncio.run(make_scorer("fuzzing", ScriptedLLMDouble(reply)).score(LABEL, animal_feature()))
    ba = _by_subset(scores, "balanced_accuracy")["all"]
    assert ba.value == pytest.approx(0.6)
    judged = ba.items
    truth = [j.truth for j in judged]
    contexts = [j.context_id for j in judged]
    assert sorted(contexts) == sorted(2 * [e.context_id for e in animal_feature().test.positives])
    counts = metrics.resample_counts(truth, metrics.N_RESAMPLES, metrics.SEED, clusters=contexts)
    reps = metrics.balanced_accuracy_replicates(truth, [j.prediction for j in judged], counts)
    assert set(np.round(reps * 5, 9)) <= {0.0, 1.0, 2.0, 3.0, 4.0, 5.0}
    assert (ba.ci_low, ba.ci_high) == metrics.percentile_interval(reps)


def test_fuzzing_delphi_variant_highlights_non_activating_contexts():
    llm = ScriptedLLMDouble(lambda call: "\n".join(f"{n}: {_highlighted_animals(t)}" for n, t in _excerpts(call)))
    scores = asyncio.run(make_scorer("fuzzing", llm, decoys="non_activating").score(LABEL, animal_feature()))
    ba = _by_subset(scores, "balanced_accuracy")
    assert set(ba) == {"all", "random_negatives", "hard_negatives"} and set(_by_subset(scores, "f1")) == set(ba)
    judged = ba["all"].items
    assert [j.group for j in judged].count("misplaced") == 0
    assert {j.context_id for j in judged} == {e.context_id for e in animal_feature().test.all()}
    assert sum(len(_excerpts(c)) for c in llm.calls) == 15
    assert all("<<" in t for c in llm.calls for _, t in _excerpts(c))  # negatives have marked tokens too
    assert ba["random_negatives"].value == pytest.approx(1.0)  # random words are never animals
    assert ba["all"].details["decoys"] == "non_activating"
    with pytest.raises(AutointerpError, match="decoys"):
        make_scorer("fuzzing", llm, decoys="shuffled")


def _quantile_feature():
    """The animal feature with test positives from quantiles 0, 0, 1, 1 and one top-activating context."""
    examples = animal_feature()
    for e, q in zip(examples.test.positives, [0, 0, 1, 1, None]):
        if q is not None:
            e.kind, e.quantile = "quantile", q
    return examples


def test_detection_reports_each_activation_quantile_beside_the_pooled_score():
    def reply(call):
        return "\n".join(
            f"{n}: {int(_has_animal(t) and not any(w in t for w in ('cat', 'horse')))}" for n, t in _excerpts(call)
        )

    scores = asyncio.run(make_scorer("detection", ScriptedLLMDouble(reply)).score(LABEL, _quantile_feature()))
    ba, f1 = _by_subset(scores, "balanced_accuracy"), _by_subset(scores, "f1")
    # positives: cat, horse (quantile 0) missed; fox, pig (quantile 1) and duck (top) found.
    # negatives: 7 random right; hard "rocking horse" right, "pig latin" and "duck tape" wrong -> 8/10
    assert ba["all"].value == pytest.approx((3 / 5 + 8 / 10) / 2)
    by_q = ba["all"].details["by_quantile"]
    assert list(by_q) == ["0", "1", "top"]
    assert [by_q[k]["value"] for k in by_q] == pytest.approx([0.4, 0.9, 0.9])
    assert [by_q[k]["n"] for k in by_q] == [12, 12, 11]
    assert [v["value"] for v in ba["random_negatives"].details["by_quantile"].values()] == pytest.approx([0.5, 1, 1])
    assert f1["all"].value == pytest.approx(2 * 3 / (2 * 3 + 2 + 2))
    assert f1["all"].details["by_quantile"]["0"]["value"] == 0.0
    assert f1["all"].details["by_quantile"]["1"]["value"] == pytest.approx(4 / 6)
    for row in by_q.values():
        assert row["ci_low"] <= row["value"] <= row["ci_high"]


# --- simulation -------------------------------------------------------------------------------------------

ANIMAL_TOP = {"10": math.log(0.8), "0": math.log(0.2)}  # EV 8
OTHER_TOP = {"0": math.log(0.9), "1": math.log(0.1)}  # EV 0.1


def _echo_double(top_for=lambda token: ANIMAL_TOP if token.strip().lower() in ANIMALS else OTHER_TOP):
    def reply(call):
        tokens = []
        for line in call.prompt.split("\n"):
            if line.endswith("\tunknown"):
                token = line[: -len("\tunknown")]
                tokens += [
                    TokenLogprob(token, None),
                    TokenLogprob("\t", None),
                    TokenLogprob("unknown", -9.0, top_for(token)),
                ]
            else:
                tokens.append(TokenLogprob(line, None))
            tokens.append(TokenLogprob("\n", None))
        return LLMResponse(text=call.prompt + "0", model="double", logprobs=tokens)

    return ScriptedLLMDouble(reply, supports_logprobs=True, supports_echo=True)


def _bills_expected(examples, groups):
    """Pooled correlation computed independently from the examples (sentences fit inside the window)."""
    chosen = [e for g in groups for e in getattr(examples.test, g)]
    true = [e.activations for e in chosen]
    pred = [[8.0 if t.strip().lower() in ANIMALS else 0.1 for t in e.tokens] for e in chosen]
    return metrics.pooled_pearson(true, pred)


def test_simulation_echo_matches_bills_correlation():
    examples = animal_feature()
    llm = _echo_double()
    scores = asyncio.run(make_scorer("simulation", llm).score(LABEL, examples))
    rows = _by_subset(scores, "ev_correlation")
    assert rows["random_negatives"].value == pytest.approx(_bills_expected(examples, ["positives", "random_negatives"]))
    assert rows["hard_negatives"].value == pytest.approx(_bills_expected(examples, ["positives", "hard_negatives"]))
    assert rows["positives"].value == pytest.approx(_bills_expected(examples, ["positives"]))
    assert rows["all"].value == pytest.approx(
        _bills_expected(examples, ["positives", "random_negatives", "hard_negatives"])
    )
    assert rows["all"].n == 15 and rows["all"].details["n_unparsed_tokens"] == 0
    assert rows["all"].ci_low <= rows["all"].value <= rows["all"].ci_high
    assert all(c.kind == "complete" and c.kwargs["echo"] and c.stage == "simulation" for c in llm.calls)
    assert len(llm.calls) == 4  # 15 contexts, 4 per prompt


def test_simulation_names_the_bills_top_and_random_subset_and_scores_whole_records():
    examples = _quantile_feature()
    examples.test.positives[-1].activations = [a * 3 for a in examples.test.positives[-1].activations]
    for e in examples.test.random_negatives:
        e.tokens = e.tokens * 5  # longer than the 24-token window
        e.activations = e.activations * 5
    llm = _echo_double()
    windowed = _by_subset(asyncio.run(make_scorer("simulation", llm).score(LABEL, examples)), "ev_correlation")
    top_random = windowed["top_and_random"]
    assert "Bills et al. 2023" in top_random.details["reference"]
    assert top_random.n == 1 + 7 and top_random.details["groups"] == ["positives", "random_negatives"]
    assert list(windowed["all"].details["by_quantile"]) == ["0", "1", "top"]
    whole = make_scorer("simulation", _echo_double(), whole_records=True)
    rows = _by_subset(asyncio.run(whole.score(LABEL, examples)), "ev_correlation")
    n_tokens = sum(len(e.tokens) for e in examples.test.all())
    assert rows["all"].details["n_tokens"] == n_tokens > windowed["all"].details["n_tokens"]
    assert rows["all"].details["window"] == "whole records"
    assert rows["top_and_random"].value == pytest.approx(
        _bills_expected(_only_top(examples), ["positives", "random_negatives"])
    )


def _only_top(examples):
    examples.test.positives = [e for e in examples.test.positives if e.kind == "top"]
    return examples


def test_simulation_constant_predictions_give_no_value():
    scores = asyncio.run(make_scorer("simulation", _echo_double(lambda t: OTHER_TOP)).score(LABEL, animal_feature()))
    for s in scores:
        assert s.value is None and s.ci_low is None
        assert "constant predictions" in s.details["note"]


def test_simulation_unparsed_slots_are_excluded_and_counted():
    # No digit among the alternatives at " the": those tokens are dropped, never read as 0.
    llm = _echo_double(
        lambda t: {"x": -0.1} if t == " the" else ANIMAL_TOP if t.strip().lower() in ANIMALS else OTHER_TOP
    )
    examples = animal_feature()
    rows = _by_subset(asyncio.run(make_scorer("simulation", llm).score(LABEL, examples)), "ev_correlation")
    n_the = sum(e.tokens.count(" the") for e in examples.test.all())
    assert rows["all"].details["n_unparsed_tokens"] == n_the > 0
    assert rows["all"].details["n_tokens"] == sum(len(e.tokens) for e in examples.test.all()) - n_the


def test_simulation_chat_logprobs_mode():
    def reply(call):
        pieces = []
        for n, tok in re.findall(r"^(\d+)\t(.*)$", call.messages[-1]["content"], re.M):
            top = ANIMAL_TOP if tok.strip().lower() in ANIMALS else OTHER_TOP
            pieces += [TokenLogprob(n, None), TokenLogprob(":", None), TokenLogprob(" ", None)]
            pieces += [TokenLogprob(max(top, key=top.get), None, top), TokenLogprob("\n", None)]
        return LLMResponse(text="".join(p.token for p in pieces), model="double", logprobs=pieces)

    examples = animal_feature()
    llm = ScriptedLLMDouble(reply, supports_logprobs=True)
    rows = _by_subset(asyncio.run(make_scorer("simulation", llm).score(LABEL, examples)), "ev_correlation")
    assert rows["random_negatives"].value == pytest.approx(_bills_expected(examples, ["positives", "random_negatives"]))
    assert all(c.kwargs["top_logprobs"] and c.stage == "simulation" for c in llm.calls)
    assert rows["all"].details["mode"] == "chat_logprobs"


def test_simulation_json_mode_without_logprobs():
    def reply(call):
        tokens = re.findall(r"^\d+\t(.*)$", call.messages[-1]["content"], re.M)
        if any(t.strip() == "Tax" for t in tokens):
            return "I would rather not."
        return str([9 if t.strip().lower() in ANIMALS else 0 for t in tokens])

    examples = animal_feature()
    llm = ScriptedLLMDouble(reply)
    rows = _by_subset(asyncio.run(make_scorer("simulation", llm).score(LABEL, examples)), "ev_correlation")
    assert rows["all"].details["mode"] == "json"
    assert rows["all"].n == 14 and rows["all"].details["n_unparsed"] == 1  # the "Tax returns" context
    chosen = [e for e in examples.test.all() if e.tokens[0] != "Tax"]
    expected = metrics.pooled_pearson(
        [e.activations for e in chosen],
        [[9.0 if t.strip().lower() in ANIMALS else 0.0 for t in e.tokens] for e in chosen],
    )
    assert rows["all"].value == pytest.approx(expected)


# --- embedding and the registry ---------------------------------------------------------------------------


def test_embedding_ranks_the_right_label_above_an_unrelated_one():
    scorer = make_scorer("embedding")
    examples = animal_feature()
    right = _by_subset(asyncio.run(scorer.score(LABEL, examples)), "auroc")
    wrong = _by_subset(
        asyncio.run(scorer.score(Explanation("handmade", 7, "tax law and government budgets"), examples)), "auroc"
    )
    assert right["random_negatives"].value > 0.9 > wrong["random_negatives"].value
    assert right["all"].value > wrong["all"].value
    assert right["all"].n == 15 and right["hard_negatives"].n == 8
    assert right["all"].scorer_model == "all-MiniLM-L6-v2"
    assert right["all"].ci_low <= right["all"].value <= right["all"].ci_high


def test_scorers_refuse_the_train_split_and_bad_names():
    with pytest.raises(AutointerpError, match="split"):
        asyncio.run(make_scorer("embedding").score(LABEL, animal_feature(), split="train"))
    with pytest.raises(AutointerpError, match="unknown scorer"):
        make_scorer("vibes")
    with pytest.raises(AutointerpError, match="needs an LLM"):
        make_scorer("detection", None)


# --- the real bundled model -------------------------------------------------------------------------------


class StageSpy:
    """Passes every call to the real LLM, noting the stage it was made under."""

    def __init__(self, llm):
        self.llm, self.stages = llm, []

    def __getattr__(self, name):
        return getattr(self.llm, name)

    async def chat(self, messages, **kwargs):
        self.stages.append(kwargs.get("stage"))
        return await self.llm.chat(messages, **kwargs)

    async def complete(self, prompt, **kwargs):
        self.stages.append(kwargs.get("stage"))
        return await self.llm.complete(prompt, **kwargs)


def _small_test_split(n_pos: int, n_neg: int):
    examples = animal_feature(n_test=n_pos)
    examples.test.random_negatives = examples.test.random_negatives[:n_neg]
    examples.test.hard_negatives = examples.test.hard_negatives[:n_neg]
    return examples


def _consistent(scores, sizes):
    for s in scores:
        assert s.n + s.details["n_unparsed"] == sizes[s.subset]
        if s.value is not None:
            assert s.ci_low is None or s.ci_low - 1e-9 <= s.value <= s.ci_high + 1e-9
        else:
            assert s.details.get("note")


def test_detection_with_the_bundled_model(local_llm):
    spy = StageSpy(local_llm)
    scores = asyncio.run(make_scorer("detection", spy, batch_size=3).score(LABEL, _small_test_split(2, 2)))
    _consistent(scores, {"all": 6, "random_negatives": 4, "hard_negatives": 4})
    assert spy.stages == ["detection", "detection"]
    assert all(s.scorer_model == local_llm.name for s in scores)
    assert scores[0].details["usage"]["prompt_tokens"] > 0


def test_one_small_simulation_with_the_bundled_model(local_llm):
    """The real model end to end in the default suite: one echo request, 3 contexts of 4 tokens."""
    spy = StageSpy(local_llm)
    scorer = make_scorer("simulation", spy, before=2, after=1, contexts_per_prompt=3)
    scores = asyncio.run(scorer.score(LABEL, _small_test_split(1, 1)))
    assert spy.stages == ["simulation"]
    rows = _by_subset(scores, "ev_correlation")
    assert rows["all"].details["mode"] == "echo" and rows["all"].scorer_model == local_llm.name
    assert rows["all"].details["n_tokens"] + rows["all"].details["n_unparsed_tokens"] == 3 * 4
    assert rows["all"].details["n_tokens"] > 0  # the bundled model puts digits among its alternatives
    judged = rows["all"].items
    predicted = [p for j in judged for p in j.predicted_activations if p is not None]
    assert len(predicted) == rows["all"].details["n_tokens"] and all(0 <= p <= 10 for p in predicted)
    kept = [[(a, p) for a, p in zip(j.true_activations, j.predicted_activations) if p is not None] for j in judged]
    expected = metrics.pooled_pearson([[a for a, _ in k] for k in kept if k], [[p for _, p in k] for k in kept if k])
    assert _same(rows["all"].value, expected)
    if expected is None:
        assert rows["all"].details["note"]


def test_the_bundled_model_answers_every_excerpt_of_a_detection_batch(local_llm):
    """A grammar holds the answer to `1: 0|1` lines, one per excerpt (unconstrained, the small model answers
    a few lines of a batch of ten and wanders off)."""
    examples = _small_test_split(4, 3)
    scores = asyncio.run(make_scorer("detection", local_llm, batch_size=10).score(LABEL, examples))
    by_subset = _by_subset(scores, "balanced_accuracy")
    assert by_subset["all"].n == 10 and by_subset["all"].details["n_unparsed"] == 0
    assert by_subset["all"].details["output_grammar"] is True
    assert _by_subset(scores, "auroc")["all"].n == 10


def test_chat_simulation_with_the_bundled_model_answers_every_token(local_llm):
    scorer = make_scorer("simulation", local_llm, mode="chat_logprobs", before=2, after=1, contexts_per_prompt=1)
    scores = asyncio.run(scorer.score(LABEL, _small_test_split(1, 1)))
    all_row = _by_subset(scores, "ev_correlation")["all"]
    assert all_row.details["mode"] == "chat_logprobs"
    assert all_row.details["n_unparsed_tokens"] == 0 and all_row.details["n_tokens"] == 3 * 4


@pytest.mark.slow
def test_simulation_with_the_bundled_model(local_llm):
    """Echo mode over llama.cpp's completions endpoint: ~50 ms per prompt token on 2 cores."""
    spy = StageSpy(local_llm)
    scorer = make_scorer("simulation", spy, before=3, after=2, contexts_per_prompt=2)
    scores = asyncio.run(scorer.score(LABEL, _small_test_split(1, 1)))
    _consistent(scores, {"all": 3, "random_negatives": 2, "hard_negatives": 2, "positives": 1})
    assert spy.stages == ["simulation", "simulation"]
    all_row = _by_subset(scores, "ev_correlation")["all"]
    assert all_row.details["mode"] == "echo"
    assert all_row.details["n_tokens"] + all_row.details["n_unparsed_tokens"] == 3 * 6
    assert all_row.details["n_tokens"] > 0  # the bundled model puts digits among its alternatives at most slots


# --- per-item judgements in the store ---------------------------------------------------------------------


def _same(a, b) -> bool:
    return (a is None and b is None) or (a is not None and b is not None and a == pytest.approx(b))


def test_stored_items_recompute_every_stored_score_without_the_model(tmp_path):
    from catalog_fixtures import SOURCE_A, catalog_copy
    from sklearn.metrics import balanced_accuracy_score, f1_score, roc_auc_score

    from autointerp.catalog import load_labels, write_label
    from autointerp.judgements import load_judgements, recompute
    from autointerp.store import Store

    examples = _quantile_feature()
    fuzz = ScriptedLLMDouble(lambda call: "\n".join(f"{n}: {_highlighted_animals(t)}" for n, t in _excerpts(call)))
    scores = [
        *asyncio.run(make_scorer("detection", _detection_double(with_logprobs=True)).score(LABEL, examples)),
        *asyncio.run(make_scorer("fuzzing", fuzz).score(LABEL, examples)),
        *asyncio.run(make_scorer("simulation", _echo_double()).score(LABEL, examples)),
    ]
    unit = np.ones(384) / np.sqrt(384)
    with Store(catalog_copy(tmp_path)) as store:
        with pytest.raises(RuntimeError), store.writing() as con:
            write_label(con, Explanation(SOURCE_A, 3, LABEL.label), scores, run_id="r1", config_hash=None,
                        sampling_config=None, seed=0, embedding=unit)
            raise RuntimeError("the job fails before committing")
        assert store.con.execute("SELECT count(*) FROM score_items").fetchone()[0] == 0
        with store.writing() as con:
            eid = write_label(con, Explanation(SOURCE_A, 3, LABEL.label), scores, run_id="r1", config_hash=None,
                              sampling_config=None, seed=0, embedding=unit)
        stored = load_labels(store.con, [eid])[0].scores
        items = load_judgements(store.con, eid, "detection")
        assert [len(load_judgements(store.con, eid, s)) for s in ("detection", "fuzzing", "simulation")] == [15, 10, 15]
        assert {(i.context_id, i.kind, i.quantile) for i in items} == {
            (e.context_id, e.kind, e.quantile) for e in examples.test.all()
        }
        assert {s.metric for s in stored} == {"balanced_accuracy", "f1", "auroc", "ev_correlation"}
        assert len(stored) == len(scores)
        for s in stored:
            again = recompute(store.con, eid, s.scorer, s.metric, s.subset)
            assert _same(again.value, s.value) and _same(again.ci_low, s.ci_low) and _same(again.ci_high, s.ci_high)
            assert again.n == s.n, (s.scorer, s.metric, s.subset)
            for key, row in s.details["by_quantile"].items():
                assert _same(recompute(store.con, eid, s.scorer, s.metric, s.subset, quantile=key).value, row["value"])
    truth = [i.truth for i in items]
    row = {s.metric: s.value for s in stored if s.scorer == "detection" and s.subset == "all"}
    assert row["balanced_accuracy"] == pytest.approx(balanced_accuracy_score(truth, [i.prediction for i in items]))
    assert row["f1"] == pytest.approx(f1_score(truth, [i.prediction for i in items]))
    assert row["auroc"] == pytest.approx(roc_auc_score(truth, [i.probability for i in items]))
