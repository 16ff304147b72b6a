"""bench.label_pair: the paired interval of two labels' embedding-AUROC difference, on a synthetic store."""

from __future__ import annotations

import pytest
from synthetic import make_synthetic_store, trigger_word

from autointerp.bench.label_pair import compare
from autointerp.config import SamplingConfig
from autointerp.store import Store


@pytest.fixture(scope="module")
def store(tmp_path_factory):
    path = tmp_path_factory.mktemp("pair") / "synthetic.duckdb"
    make_synthetic_store(path, n_contexts=600, n_features=4, context_len=16, seed=5).close()
    with Store(path, read_only=True) as s:
        yield s


# random negatives only: this store's hard negatives hold the trigger word itself (it fires on 80% of them)
RANDOM_ONLY = SamplingConfig(n_test_hard_negatives=0, n_valid_hard_negatives=0, n_train_hard_negatives=0)


def test_right_label_beats_an_unrelated_one_and_a_label_ties_with_itself(store):
    right = f"the word '{trigger_word(0)}'"
    r = compare(store, "synthetic", 0, right, "recipes for chocolate cake and baking", RANDOM_ONLY)
    assert r["difference"] == pytest.approx(r["auroc"][0] - r["auroc"][1]) and r["n"] == 30
    assert r["ci"][0] > 0  # the interval excludes a tie
    assert max(r["test_positive_bands"]) == SamplingConfig().n_quantiles  # the test split holds top contexts
    same = compare(store, "synthetic", 0, right, right, RANDOM_ONLY)
    assert same["difference"] == 0 and same["ci"] == (0.0, 0.0)
