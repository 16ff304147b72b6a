"""The sampler on a synthetic store with planted features (feature f fires on the word trigger_word(f))."""

from __future__ import annotations

import dataclasses
import json
import shutil

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
    for split in (fe.train, fe.valid, fe.test):
        assert {e.quantile for e in split.positives if e.kind == "quantile"} == set(range(cfg.n_quantiles))
        assert {e.quantile for e in split.positives if e.kind == "top"} == {cfg.n_quantiles}  # the top band
    by_stratum = {}
    for _, e in all_examples(fe):
        if e.is_positive:
            by_stratum.setdefault(e.quantile, []).append(e.max_value)
    for lo, hi in zip(range(cfg.n_quantiles), range(1, cfg.n_quantiles + 1)):
        assert max(by_stratum[lo]) <= min(by_stratum[hi])  # strata are ordered bands of the per-context max
    top = [e.max_value for e in fe.train.positives if e.kind == "top"]
    assert top == sorted(top, reverse=True)
    assert min(top) >= max(e.max_value for _, e in all_examples(fe) if e.kind == "quantile")
    assert fe.max_activation == pytest.approx(top[0])


def test_top_contexts_are_dealt_by_rank_to_every_split(store):
    cfg = SamplingConfig()
    fe = sample(store, "synthetic", 0, cfg)
    tops = {name: [e for e in getattr(fe, name).positives if e.kind == "top"] for name in ("train", "valid", "test")}
    assert [len(tops[n]) for n in ("train", "valid", "test")] == [cfg.n_train_top, 5, 10]  # top_share 0.5 of 10, 20
    ranked = sorted((e.max_value, name) for name, es in tops.items() for e in es)[::-1]
    assert ranked[0][1] == "train"
    first_half = {name for _, name in ranked[: len(ranked) // 2]}
    assert first_half == {"train", "valid", "test"}  # interleaved by rank, not train first then the rest
    assert len(fe.test.positives) == cfg.n_test_positives and len(fe.valid.positives) == cfg.n_valid_positives


def test_deal_top_interleaves_in_proportion():
    assert sampling._deal_top(6, {"train": 2, "valid": 1, "test": 3}) == ["train", "test", "test", "valid", "train", "test"]
    dealt = sampling._deal_top(19, {"train": 10, "valid": 3, "test": 6})
    assert dealt[0] == "train" and [dealt.count(s) for s in ("train", "valid", "test")] == [10, 3, 6]
    assert set(dealt[:7]) == {"train", "valid", "test"}
    assert sampling._deal_top(2, {"train": 10, "valid": 3, "test": 6}) == ["train", "test"]


def test_top_share_outside_zero_one_is_one_clear_error(store):
    with pytest.raises(AutointerpError, match="top_share"):
        SamplingConfig(top_share=1.5)
    assert sampling.top_counts(SamplingConfig(n_valid_positives=5, n_test_positives=2, top_share=0.3)) == {
        "train": 10, "valid": 2, "test": 1
    }
    no_top = sample(store, "synthetic", 0, SamplingConfig(top_share=0.0))
    assert all(e.kind == "quantile" for e in no_top.test.positives + no_top.valid.positives)


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


def explainer_view(fe: FeatureExamples):
    """Everything an explainer prompt can be built from."""
    return fe.train, fe.characteristic_tokens, fe.max_activation


def test_what_the_explainer_sees_depends_on_the_train_split_only(db, tmp_path):
    """No indirect leak (issue 9, bug 2): rewrite the token at the peak of every valid and test positive (the
    positives chosen stay the same) and the train split, the characteristic tokens and so the train hard
    negatives must not change. Computing characteristic tokens from all positives fails this."""
    feature = 3
    with Store(db, read_only=True) as s:
        before = sample(s, "synthetic", feature)
    held_out = before.valid.positives + before.test.positives
    copy = tmp_path / "leak.duckdb"
    shutil.copy(db, copy)
    with Store(copy) as s:
        for e in held_out:
            tokens = list(e.tokens)
            tokens[e.activations.index(e.max_value)] = "zzleak"
            s.con.execute("UPDATE contexts SET tokens = $1 WHERE tokens = $2", [tokens, e.tokens])  # and its copies
    with Store(copy, read_only=True) as s:
        after = sample(s, "synthetic", feature)
    assert [e.context_id for e in after.valid.positives + after.test.positives] == [e.context_id for e in held_out]
    assert all("zzleak" in e.tokens for e in after.test.positives)
    assert explainer_view(after) == explainer_view(before)
    assert after.train.hard_negatives and after.train.hard_negatives == before.train.hard_negatives


def test_dense_feature_gets_silent_windows_inside_active_contexts(store):
    """When whole silent contexts run out, negatives are windows of active contexts where the feature is silent."""
    cfg = SamplingConfig(n_test_random_negatives=1500, negative_window=6)
    fe = sample(store, "synthetic", 0, cfg)
    (n_silent,) = store.con.execute(
        "SELECT count(*) FROM contexts WHERE context_id NOT IN (SELECT context_id FROM feature_context_max WHERE feature = 0)"
    ).fetchone()
    randoms = fe.test.random_negatives + fe.valid.random_negatives
    windows = [e for e in randoms if e.window_start is not None]
    assert windows and len(randoms) > n_silent // 2
    assert any(f"{len(windows)} of the {len(randoms)} random negatives are windows of 6 tokens" in n for n in fe.notes)
    full = sampling._load_source(store, "synthetic").tokens.tokens_of([e.context_id for e in windows])
    for e in windows:
        assert len(e.tokens) == 6 and e.tokens == full[e.context_id][e.window_start : e.window_start + 6]
        stored = db_activations(store, 0, e.context_id)
        assert stored, "the window comes from an active context"
        assert all(stored.get(e.window_start + i, 0.0) == v == 0.0 for i, v in enumerate(e.activations))
    ids = [ex.context_id for _, ex in all_examples(fe)]
    assert len(ids) == len(set(ids))


def test_silent_windows_centre_on_characteristic_tokens_for_hard_negatives(store):
    cfg = SamplingConfig(n_test_hard_negatives=400, negative_window=6)
    fe = sample(store, "synthetic", 0, cfg)
    windows = [e for e in fe.test.hard_negatives + fe.valid.hard_negatives if e.window_start is not None]
    assert windows
    for e in windows:
        assert set(e.tokens) & set(fe.characteristic_tokens) and not any(e.activations)


def test_cli_sample_with_a_job_file_shows_what_that_job_saw(db, tmp_path, capsys):
    from autointerp.config import load_job_config

    job = tmp_path / "job.toml"
    job.write_text(
        'source = "synthetic"\nscorers = ["embedding"]\n\n[sampling]\nn_test_positives = 7\n'
        "n_test_random_negatives = 1500\nnegative_window = 6\nseed = 5\n"
    )
    assert main(["sample", "--db", str(db), "--feature", "0", "--config", str(job), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    with Store(db, read_only=True) as store:
        expected = sample(store, "synthetic", 0, load_job_config(job).sampling)
    assert data == json.loads(json.dumps(dataclasses.asdict(expected)))
    assert data["seed"] == 5 and len(data["test"]["positives"]) == 7
    assert main(["sample", "--db", str(db), "--feature", "0", "--config", str(job)]) == 0
    out = capsys.readouterr().out
    assert "random negatives are windows of 6 tokens" in out and " tokens " in out and "top q5" in out
    assert main(["sample", "--db", str(db), "--feature", "0", "--config", str(job), "--seed", "6", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["seed"] == 6
    (tmp_path / "nosource.toml").write_text("[sampling]\nseed = 1\n")
    assert main(["sample", "--db", str(db), "--feature", "0", "--config", str(tmp_path / "nosource.toml")]) == 2
    assert "no source given" in capsys.readouterr().err


def test_sampled_features_carry_their_stored_output_evidence(tmp_path, db):
    """The evidence is read with the feature's activations (in sample_many's reader thread): each feature gets
    its own, one and many at a time, and a feature without any gets None."""
    from autointerp.records import OutputEffects, TokenEffect
    from autointerp.store.activations import get_source
    from autointerp.store.output_evidence_queries import LOGIT_LENS, save_output_effects

    path = tmp_path / "evidence.duckdb"
    shutil.copy(db, path)
    effects = {f: OutputEffects([TokenEffect(f"up{f}", f, 1.0 + f)], [TokenEffect(f"down{f}", 100 + f, -1.0)]) for f in (1, 3)}
    with Store(path) as writable, writable.writing() as con:
        source_id = get_source(con, "synthetic").source_id
        save_output_effects(con, source_id, LOGIT_LENS, list(effects), list(effects.values()), [{"f": f} for f in effects])
    with Store(path, read_only=True) as s:
        one = {f: sample(s, "synthetic", f).output for f in range(4)}
        many = {f: ex.output for f, ex in sampling.sample_many(s, "synthetic", range(4))}
    for got in (one, many):
        assert got[0] is None and got[2] is None
        assert {f: got[f].logit_lens for f in (1, 3)} == effects
        assert got[3].provenance == {LOGIT_LENS: {"f": 3}}
