"""The output scorer end to end on the bundled model and a planted SAE (a real SAELens folder, collected): a month
feature's true label beats a decoy, the shuffled-label control is scored on the same continuations, the rows and
items are stored, the catalog shows input and output scores side by side, and search filters on output scores."""

import asyncio

import pytest
from fastapi.testclient import TestClient

from autointerp.bench.planted_output import FAMILIES, PlantedOutputConfig, build_planted_source, output_examples
from autointerp.config import load_job_config
from autointerp.errors import AutointerpError
from autointerp.judgements import load_judgements, recompute
from autointerp.pipeline import score_label
from autointerp.ranking import MIN_N
from autointerp.records import Explanation
from autointerp.scoring import make_scorer
from autointerp.scoring.output import OutputContext
from autointerp.search import SearchFilters, SearchIndex, search
from autointerp.store import Store
from autointerp.store.activations import feature_stats
from autointerp.web import create_app

FAMILY_NAMES = ("months", "colours")
OPTIONS = {"n_prompts": 10, "max_new_tokens": 8}  # the true label against a decoy: a comparison needs these prompts
# the stored rows and the judge's calls are mechanics: short continuations and a coarse calibration show them;
# a score that search may filter on needs MIN_N prompts, the judge's one call per prompt a few
RANKABLE = {"n_prompts": MIN_N, "max_new_tokens": 6, "calibration_steps": 3}
JUDGED = {"n_prompts": 4, "max_new_tokens": 6, "calibration_steps": 3}
SAMPLING = dict(
    n_train_top=2, n_train_quantile=2, n_train_hard_negatives=0, n_quantiles=2, n_valid_positives=1,
    n_valid_random_negatives=1, n_valid_hard_negatives=0, n_test_positives=2, n_test_random_negatives=1,
    n_test_hard_negatives=0, min_active_contexts=4,
)


@pytest.fixture(scope="module")
def planted(tmp_path_factory, subject):
    folder = tmp_path_factory.mktemp("planted-output")
    store = Store(folder / "store.duckdb", create=True)
    cfg = PlantedOutputConfig(families=FAMILY_NAMES, tokens=512, context_len=32)
    source = build_planted_source(store, folder / "sae", subject, cfg)
    with store.reading() as con:
        max_act = [feature_stats(con, source.source_id, f).max_value for f in range(len(FAMILY_NAMES))]
    store.close()
    return store, source, max_act


def label(family):
    return FAMILIES[family][0]


def headline(scores, subset="all", metric="delta_cosine"):
    return next(s for s in scores if s.subset == subset and s.metric == metric)


def test_the_true_label_beats_a_decoy_and_the_control_is_scored_on_the_same_continuations(planted, subject):
    store, source, max_act = planted
    context = OutputContext(source, subject, other_labels={1: label("colours")})
    scorer = make_scorer("output", None, context, **OPTIONS)
    examples = output_examples(source.name, 0, max_act[0])
    true = asyncio.run(scorer.score(Explanation(source.name, 0, label("months")), examples))
    decoy = asyncio.run(scorer.score(Explanation(source.name, 0, label("colours")), examples))

    assert headline(true).value > headline(decoy).value
    assert headline(true).n == OPTIONS["n_prompts"]
    low, high = headline(true).ci_low, headline(true).ci_high
    assert low <= headline(true).value <= high
    steering = headline(true).details["steering"]
    assert steering["strength"] == pytest.approx(steering["factor"] * max_act[0]) and steering["kl"] > 0
    # the control is the other feature's label, on the very continuations the label was scored on
    control = headline(true, "control")
    assert headline(true).details["control_label"] == label("colours")
    assert control.value == pytest.approx(headline(decoy).value)
    assert headline(true).details["over_control"]["value"] == pytest.approx(headline(true).value - control.value)
    pairs = headline(true).details["continuations"]
    assert len(pairs) == OPTIONS["n_prompts"] and any(p["steered"] != p["unsteered"] for p in pairs)
    assert {i.group for i in headline(true).items} == {"steered", "unsteered", "control_steered", "control_unsteered"}


def test_the_output_scorer_without_a_subject_model_or_judge_llm_is_one_clear_error():
    with pytest.raises(AutointerpError, match="steers the subject model"):
        make_scorer("output", None)
    with pytest.raises(AutointerpError, match="judge needs an LLM"):
        make_scorer("output", None, object(), judge=True)


def test_stored_rows_side_by_side_and_the_search_filter(planted):
    store, source, _ = planted
    job = load_job_config(
        source=source.name, scorers=["output"], sampling=SAMPLING, scorer_options={"output": RANKABLE}
    )
    first = score_label(store, job, 1, label("colours"))
    months = score_label(store, job, 0, label("months"))
    value = headline(months.scores).value
    assert headline(months.scores).details["control_label"] == label("colours")  # the stored label of feature 1

    with store.reading() as con:
        items = load_judgements(con, months.explanation_id, "output")
        assert len(items) == 4 * RANKABLE["n_prompts"]
        assert recompute(con, months.explanation_id, "output", "delta_cosine").value == pytest.approx(value)
        assert recompute(con, months.explanation_id, "output", "win_rate", "control").n == RANKABLE["n_prompts"]
        hits = search(con, SearchIndex(), "", filters=SearchFilters(min_score=f"output:{value - 1e-6}")).hits
        assert [h.feature for h in hits if h.source == source.name] == sorted(
            f for f, s in ((0, value), (1, headline(first.scores).value)) if s >= value - 1e-6
        )
        assert hits[0].output_score.metric == "delta_cosine" and hits[0].output_score.n == RANKABLE["n_prompts"]
        assert search(con, SearchIndex(), "", filters=SearchFilters(min_score=f"output:{value + 1.0}")).hits == []
    store.close()

    with TestClient(create_app(store.path)) as client:
        page = client.get(f"/features/{source.name}/0").text
        api = client.get("/api/search", params={"q": "", "min_score": f"output.delta_cosine:{value - 1e-6}"}).json()
    assert f'id="input-output-{months.explanation_id}"' in page and "what steering along it does" in page
    assert any(h["feature"] == 0 and h["output_score"]["metric"] == "delta_cosine" for h in api["hits"])



def test_output_scores_never_pick_the_best_label_unless_named(tmp_path):
    """Label 'b' wins on the output score and loses on the input score: the input score picks the best label;
    with output scores alone the labels are unranked (newest first); named, the output score ranks them."""
    from autointerp.catalog import best_label, write_label
    from autointerp.records import Score
    from autointerp.store.activations import create_source

    def score(scorer, metric, value):
        return Score(scorer, metric, value, value - 0.1, value + 0.1, 20)

    store = Store(tmp_path / "rank.duckdb", create=True)
    with store.writing() as con:
        create_source(con, "s", model=None, hookpoint=None, layer=None, feature_kind="imported", width=2, context_len=8, config={})
        for feature, with_input in ((0, True), (1, False)):
            for text, input_value, output_value in (("a", 0.9, 0.01), ("b", 0.6, 0.3)):
                scores = [score("output", "delta_cosine", output_value)]
                scores += [score("embedding", "auroc", input_value)] if with_input else []
                write_label(con, Explanation("s", feature, text), scores, run_id=None, config_hash=None,
                            sampling_config=None, seed=None, embedding=[0.0] * 384)
    with store.reading() as con:
        assert best_label(con, "s", 0).label == "a"
        assert best_label(con, "s", 0).why_best.ranked_by == ("embedding", "auroc")
        assert best_label(con, "s", 1).why_best.rule == "unranked"
        assert best_label(con, "s", 1, "output", "delta_cosine").label == "b"


def test_the_llm_judge_is_asked_once_per_prompt_and_unanswerable_replies_are_counted(planted, subject, local_llm, tmp_path):
    """The bundled model as judge: it proves the plumbing (one call per prompt, recorded in the ledger under
    the output stage, answers parsed or counted as unparsed), not that it can judge."""
    _, source, max_act = planted
    scorer = make_scorer("output", local_llm, OutputContext(source, subject), judge=True, **JUDGED)
    scores = asyncio.run(scorer.score(Explanation(source.name, 0, label("months")), output_examples(source.name, 0, max_act[0])))
    judged = headline(scores, metric="judge_accuracy")
    assert judged.n + judged.details["n_unparsed"] == JUDGED["n_prompts"]
    assert judged.details["prompt_name"] == "output_judge.v1" and judged.scorer_model == local_llm.name
    assert judged.value is None or 0.0 <= judged.value <= 1.0
    assert judged.value is None or judged.ci_low <= judged.value <= judged.ci_high
    local_llm.ledger.flush()
    stages = [r[0] for r in Store(tmp_path / "llm.duckdb").con.execute("SELECT stage FROM llm_calls").fetchall()]
    assert stages.count("output") == JUDGED["n_prompts"]
