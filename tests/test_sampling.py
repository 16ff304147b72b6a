"""The sampler on a synthetic store with planted features (feature f fires on the word trigger_word(f))."""

from __future__ import annotations

import dataclasses
import json

import pytest
from synthetic import make_synthetic_store, trigger_word

from autointerp import sampling
from autointerp.cli import main
from autointerp.config import SamplingConfig
from autointerp.errors import AutointerpError
from autointerp.records import FeatureExamples
from autointerp.sampling import WINDOW_HALF, TooFewActivations, _apportion, sample
from autointerp.store import Store

N_FEATURES = 8  # 0..6 dense, 7 sparse
DENSE = range(N_FEATURES - 1)


@pytest.fixture(scope="module")
def db(tmp_path_factory):
    path = tmp_path_factory.mktemp("sampling") / "synthetic.duckdb"
    make_synthetic_store(path, n_contexts=1500, n_features=N_FEATURES, context_len=16, seed=3).close()
    return path


@pytest.fixture(scope="module")
def store(db):
    with Store(db, read_only=True) as s:
        yield s


def all_examples(fe: FeatureExamples):
    return [(name, ex) for name in ("train", "valid", "test") for ex in getattr(fe, name).all()]


def normalised(tokens) -> str:
    return " ".join("".join(tokens).lower().split())


def db_activations(store: Store, feature: int, context_id: int) -> dict[int, float]:
    rows = store.con.execute(
        "SELECT pos, value FROM activations WHERE feature = ? AND context_id = ?", [feature, context_id]
    ).fetchall()
    return dict(rows)


@pytest.mark.parametrize("feature", DENSE)
def test_splits_are_disjoint_by_id_and_text(store, feature):
    fe = sample(store, "synthetic", feature)
    examples = all_examples(fe)
    ids = [ex.context_id for _, ex in examples]
    assert len(ids) == len(set(ids))
    texts = [normalised(ex.tokens) for _, ex in examples]
    assert len(texts) == len(set(texts))
    windows = []
    for _, ex in examples:
        if ex.is_positive:
            p = ex.activations.index(ex.max_value)
            windows.append(normalised(ex.tokens[max(0, p - WINDOW_HALF) : p + WINDOW_HALF]))
    assert len(windows) == len(set(windows))


def test_full_counts_on_a_dense_feature(store):
    cfg = SamplingConfig()
    fe = sample(store, "synthetic", 0, cfg)
    assert [e.kind for e in fe.train.positives] == ["top"] * cfg.n_train_top + ["quantile"] * cfg.n_train_quantile
    assert len(fe.valid.positives) == cfg.n_valid_positives and len(fe.test.positives) == cfg.n_test_positives
    assert len(fe.valid.random_negatives) == cfg.n_valid_random_negatives
    assert len(fe.test.random_negatives) == cfg.n_test_random_negatives
    assert len(fe.test.hard_negatives) == cfg.n_test_hard_negatives
    assert len(fe.train.hard_negatives) == cfg.n_train_hard_negatives
    assert not fe.train.random_negatives
    assert fe.sampling_config == dataclasses.asdict(cfg) and fe.seed == cfg.seed


def test_deterministic_for_a_seed_and_varies_with_it(store):
    a, b = sample(store, "synthetic", 1), sample(store, "synthetic", 1)
    assert a == b
    with Store(store.path, read_only=True) as fresh:  # a new handle (fresh token cache) gives the same result
        assert sample(fresh, "synthetic", 1) == a
    other = sample(store, "synthetic", 1, SamplingConfig(seed=7))
    assert [e.context_id for e in other.test.positives] != [e.context_id for e in a.test.positives]
    assert [e.context_id for e in other.train.positives[:10]] == [e.context_id for e in a.train.positives[:10]]


def test_positives_cover_every_quantile_and_top_is_highest(store):
    cfg = SamplingConfig()
    fe = sample(store, "synthetic", 0, cfg)
    quantile_train = [e for e in fe.train.positives if e.kind == "quantile"]
    for positives in (quantile_train, fe.valid.positives, fe.test.positives):
        assert {e.quantile for e in positives} == set(range(cfg.n_quantiles))
    by_stratum = {}
    for e in fe.test.positives + fe.valid.positives + quantile_train:
        by_stratum.setdefault(e.quantile, []).append(e.max_value)
    for lo, hi in zip(range(cfg.n_quantiles - 1), range(1, cfg.n_quantiles)):
        assert max(by_stratum[lo]) <= min(by_stratum[hi])  # strata are ordered bands of the per-context max
    top = [e.max_value for e in fe.train.positives if e.kind == "top"]
    assert top == sorted(top, reverse=True)
    assert min(top) >= max(e.max_value for _, e in all_examples(fe) if e.kind == "quantile")
    assert fe.max_activation == pytest.approx(top[0])


@pytest.mark.parametrize("feature", [0, 3, 6])
def test_positive_activations_match_the_store_and_the_plant(store, feature):
    fe = sample(store, "synthetic", feature)
    positives = [e for _, e in all_examples(fe) if e.is_positive]
    for e in positives:
        expected = db_activations(store, feature, e.context_id)
        assert {i: v for i, v in enumerate(e.activations) if v} == pytest.approx(expected)
        assert all(e.tokens[i] == trigger_word(feature) for i in expected)
    assert fe.characteristic_tokens[0] == trigger_word(feature)


@pytest.mark.parametrize("feature", DENSE)
def test_negatives_are_silent_and_hard_ones_hold_characteristic_tokens(store, feature):
    fe = sample(store, "synthetic", feature)
    hard = fe.train.hard_negatives + fe.valid.hard_negatives + fe.test.hard_negatives
    randoms = fe.valid.random_negatives + fe.test.random_negatives
    assert hard and randoms
    for e in hard + randoms:
        assert not any(e.activations) and db_activations(store, feature, e.context_id) == {}
    for e in hard:
        assert e.kind == "hard_negative" and set(e.tokens) & set(fe.characteristic_tokens)
    assert all(e.kind == "random_negative" for e in randoms)


def test_fewer_hard_negatives_than_asked_returns_what_exists_with_a_note(store):
    fe = sample(store, "synthetic", 2, SamplingConfig(n_test_hard_negatives=5000))
    found = len(fe.test.hard_negatives) + len(fe.valid.hard_negatives) + len(fe.train.hard_negatives)
    assert 0 < found < 5000
    assert any(f"only {found} of 5010 hard negatives found" in n for n in fe.notes)


def test_scarce_positives_are_shared_out_not_padded(store):
    cfg = SamplingConfig(n_test_positives=5000)
    fe = sample(store, "synthetic", 5, cfg)
    assert any("distinct active contexts" in n for n in fe.notes)
    n_positive = sum(1 for _, e in all_examples(fe) if e.is_positive)
    (n_active,) = store.con.execute("SELECT count(*) FROM feature_context_max WHERE feature = 5").fetchone()
    assert n_positive <= n_active
    assert fe.train.positives and fe.valid.positives and len(fe.test.positives) > len(fe.valid.positives)
    assert len([e for e in fe.train.positives if e.kind == "quantile"]) >= 1


def test_apportion_gives_each_split_one_then_shares_the_rest():
    wanted = {"top": 10, "train": 10, "valid": 10, "test": 20}
    assert _apportion(wanted, 8) == {"top": 2, "train": 2, "valid": 2, "test": 2}
    assert _apportion(wanted, 3) == {"top": 1, "train": 0, "valid": 1, "test": 1}
    assert _apportion(wanted, 26) == {"top": 6, "train": 5, "valid": 5, "test": 10}


def test_too_few_activations(store):
    with pytest.raises(TooFewActivations, match="fires in 3 contexts; at least 8 are needed") as err:
        sample(store, "synthetic", N_FEATURES - 1)
    assert (err.value.n_active, err.value.needed) == (3, 8)
    assert isinstance(err.value, AutointerpError)
    fe = sample(store, "synthetic", N_FEATURES - 1, SamplingConfig(min_active_contexts=3))
    assert fe.train.positives


def test_unknown_source_and_feature(store):
    with pytest.raises(AutointerpError, match="unknown source 'nope'"):
        sample(store, "nope", 0)
    with pytest.raises(AutointerpError, match=f"feature 999 has no activations .*numbered 0..{N_FEATURES - 1}"):
        sample(store, "synthetic", 999)


def test_cli_sample_shows_activations_in_brackets(db, capsys):
    assert main(["sample", "--db", str(db), "--source", "synthetic", "--feature", "0"]) == 0
    out = capsys.readouterr().out
    assert f"[{trigger_word(0)} " in out
    for header in ("== train positives", "== valid random negatives", "== test hard negatives"):
        assert header in out
    assert main(["sample", "--db", str(db), "--source", "synthetic", "--feature", "0", "--json", "--seed", "4"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["feature"] == 0 and data["seed"] == 4 and len(data["test"]["positives"]) == 20
    assert main(["sample", "--db", str(db), "--source", "synthetic", "--feature", str(N_FEATURES - 1)]) == 2
    assert "fires in 3 contexts" in capsys.readouterr().err


@pytest.mark.parametrize("feature", [0, 4])
def test_dense_path_via_feature_context_max_gives_the_same_examples(db, monkeypatch, feature):
    """Sparse features are read in one query, dense ones through feature_context_max: same result."""
    with Store(db, read_only=True) as one_query:
        expected = sample(one_query, "synthetic", feature)
    monkeypatch.setattr(sampling, "READ_ALL_ROWS_BELOW", 0)
    with Store(db, read_only=True) as via_table:
        assert sample(via_table, "synthetic", feature) == expected


def test_per_context_max_matches_the_stored_table(store):
    for feature in DENSE:
        rows = store.con.execute(
            "SELECT context_id, pos, value FROM activations WHERE feature = ? ORDER BY context_id, pos", [feature]
        ).fetchnumpy()
        ids, maxima, max_pos = sampling._per_context_max(rows["context_id"], rows["pos"], rows["value"])
        stored = store.con.execute(
            "SELECT context_id, max_value, max_pos FROM feature_context_max WHERE feature = ? ORDER BY context_id", [feature]
        ).fetchall()
        assert list(zip(ids.tolist(), maxima.tolist(), max_pos.tolist())) == stored


def test_sample_many_gives_what_sample_gives_in_order_with_errors_in_place(store):
    features = [3, N_FEATURES - 1, 0, 10_000, 5]
    got = list(sampling.sample_many(store, "synthetic", features))
    assert [f for f, _ in got] == features
    for feature, result in got:
        if feature == N_FEATURES - 1:
            assert isinstance(result, TooFewActivations)
        elif feature == 10_000:
            assert isinstance(result, AutointerpError) and "feature" in str(result)
        else:
            assert result == sample(store, "synthetic", feature)
    assert list(sampling.sample_many(store, "synthetic", [])) == []


def test_sample_many_stopped_early_leaves_the_store_usable(store):
    many = sampling.sample_many(store, "synthetic", list(DENSE))
    first_feature, first = next(many)
    many.close()
    assert first == sample(store, "synthetic", first_feature)
