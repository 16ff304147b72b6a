"""Parquet import: a good file round-trips; every bad file is refused with one clear error, store untouched."""

from __future__ import annotations

import math
import shutil

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from synthetic import make_synthetic_store

from autointerp.cli import main
from autointerp.errors import AutointerpError
from autointerp.store import Store
from autointerp.store.activations import feature_stats, get_source
from autointerp.store.importing import import_parquet

TOKENS = [["the", "cat", "sat", "down"], ["a", "dog", "ran"], ["cat", "and", "dog", "play", "here"]]
GOOD_ACTIVATIONS = {
    "feature": [0, 0, 0, 3, 3],
    "context_id": [10, 12, 12, 11, 12],
    "pos": [1, 0, 4, 1, 2],
    "value": [2.5, 1.0, 0.5, 4.0, 3.0],
}


def write_contexts(path, tokens=TOKENS, ids=(10, 11, 12), **extra) -> str:
    if not isinstance(tokens, pa.Array):
        tokens = pa.array(tokens, pa.list_(pa.string()))
    columns = {"context_id": pa.array(list(ids), pa.int64()), "tokens": tokens, **extra}
    pq.write_table(pa.table(columns), path)
    return str(path)


def write_activations(path, **overrides) -> str:
    data = {**GOOD_ACTIVATIONS, **overrides}
    types = {"feature": pa.int32(), "context_id": pa.int64(), "pos": pa.int32(), "value": pa.float32()}
    columns = {k: pa.array(v, types.get(k)) if not isinstance(v, pa.Array) else v for k, v in data.items()}
    pq.write_table(pa.table(columns), path)
    return str(path)


@pytest.fixture(scope="module")
def template_store(tmp_path_factory):
    path = tmp_path_factory.mktemp("template") / "store.duckdb"
    make_synthetic_store(path, n_contexts=60, n_features=3).close()
    return path


@pytest.fixture
def store(tmp_path, template_store):
    """A store that already holds a source, so 'unchanged' covers existing data too."""
    shutil.copy(template_store, tmp_path / "store.duckdb")
    s = Store(tmp_path / "store.duckdb", create=True)
    yield s
    s.close()


def snapshot(store: Store) -> dict[str, tuple]:
    """Row count and an order-independent checksum of every table."""
    tables = [r[0] for r in store.con.execute("SELECT table_name FROM duckdb_tables() ORDER BY 1").fetchall()]
    return {t: store.con.execute(f"SELECT count(*), bit_xor(hash(x)) FROM {t} x").fetchone() for t in tables}


def test_good_files_round_trip(store, tmp_path):
    contexts = write_contexts(tmp_path / "c.parquet", token_ids=pa.array([[1, 2, 3, 4], [5, 6, 7], [2, 8, 6, 9, 10]]))
    zero = {k: v + [x] for (k, v), x in zip(GOOD_ACTIVATIONS.items(), (3, 10, 0, 0.0))}
    activations = write_activations(tmp_path / "a.parquet", **zero)
    report = import_parquet(store, "imp", contexts, activations)
    assert (report.n_contexts, report.n_tokens, report.n_activations, report.n_features) == (3, 12, 5, 2)
    assert report.n_zero_skipped == 1
    info = get_source(store.con, "imp")
    assert (info.status, info.feature_kind, info.width, info.context_len) == ("ready", "imported", 4, 5)
    sid = info.source_id
    rows = store.con.execute(
        "SELECT context_id, tokens, token_ids FROM contexts WHERE source_id = ? ORDER BY 1", [sid]
    ).fetchall()
    assert [r[1] for r in rows] == TOKENS and rows[2][2] == [2, 8, 6, 9, 10]
    stored = store.con.execute(
        "SELECT feature, context_id, pos, value FROM activations WHERE source_id = ?", [sid]
    ).fetchall()
    assert stored == sorted(zip(*GOOD_ACTIVATIONS.values()))  # zero row dropped, sorted by feature
    s0 = feature_stats(store.con, sid, 0)
    assert (s0.n_active_tokens, s0.n_active_contexts, s0.max_value) == (3, 2, 2.5)
    assert s0.density == pytest.approx(3 / 12)
    s3 = feature_stats(store.con, sid, 3)
    assert (s3.n_active_tokens, s3.n_active_contexts, s3.mean_value) == (2, 2, pytest.approx(3.5))


BAD_CASES = {
    "missing value column": (dict(), dict(drop="value"), r"lacks column\(s\) \['value'\]"),
    "value as text": (dict(), dict(value=pa.array(["1"] * 5)), r"column 'value' .* has type VARCHAR; it must be FLOAT or DOUBLE"),
    "pos as double": (dict(), dict(pos=pa.array([1.0, 0, 4, 1, 2])), r"column 'pos' .* has type DOUBLE; it must be an integer"),
    "NaN value": (dict(), dict(value=[2.5, 1.0, math.nan, 4.0, 3.0]), r"row 2 .*value is NaN"),
    "infinite value": (dict(), dict(value=[2.5, 1.0, 0.5, math.inf, 3.0]), r"row 3 .*value is infinite"),
    "pos past the end": (dict(), dict(pos=[1, 0, 5, 1, 2]), r"row 2 .*pos is past the end of its context \(5 tokens\)"),
    "negative pos": (dict(), dict(pos=[1, -1, 4, 1, 2]), r"row 1 .*pos is negative"),
    "unknown context": (dict(), dict(context_id=[10, 12, 12, 99, 12]), r"row 3 .*context_id=99.*not in the contexts file"),
    "duplicate activation": (dict(), dict(pos=[1, 0, 0, 1, 2], context_id=[10, 12, 12, 11, 12], feature=[0, 0, 0, 3, 3]),
                             r"row 2 .*duplicate \(feature, context_id, pos\) \(first seen at row 1\)"),
    "null feature": (dict(), dict(feature=pa.array([0, None, 0, 3, 3], pa.int32())), r"row 1 .*a null value"),
    "negative feature": (dict(), dict(feature=[0, 0, -2, 3, 3]), r"row 2 .*feature must be between"),
    "duplicate context": (dict(ids=(10, 11, 11)), dict(), r"c.parquet row 2 .*duplicate context_id \(first seen at row 1\)"),
    "tokens as text": (dict(tokens=pa.array(["a b", "c", "d"])), dict(), r"column 'tokens' .* has type VARCHAR; it must be a list of strings"),
    "empty context": (dict(tokens=[["a"], [], ["b"]]), dict(), r"c.parquet row 1 .*tokens is null or empty"),
    "token_ids length": (dict(token_ids=pa.array([[1, 2, 3, 4], [1], [1, 2, 3, 4, 5]])), dict(), r"c.parquet row 1 .*different lengths"),
}


@pytest.mark.parametrize("case", BAD_CASES)
def test_bad_files_are_refused_and_store_unchanged(store, tmp_path, case):
    context_args, activation_args, message = BAD_CASES[case]
    contexts = write_contexts(tmp_path / "c.parquet", **context_args)
    drop = activation_args.pop("drop", None)
    activations = write_activations(tmp_path / "a.parquet", **activation_args)
    if drop:
        pq.write_table(pq.read_table(activations).drop_columns([drop]), activations)
    before = snapshot(store)
    with pytest.raises(AutointerpError, match=message) as err:
        import_parquet(store, "imp", contexts, activations)
    assert "\n" not in str(err.value)
    assert snapshot(store) == before


@pytest.mark.parametrize(
    "make_path, message",
    [
        (lambda d: d / "nope.parquet", "does not exist"),
        (lambda d: d, "is not a file"),
        (lambda d: (d / "t.parquet").write_text("not parquet at all") and d / "t.parquet", "cannot read the contexts file .* as Parquet"),
    ],
    ids=["missing", "directory", "not parquet"],
)
def test_unreadable_files_are_refused(store, tmp_path, make_path, message):
    activations = write_activations(tmp_path / "a.parquet")
    before = snapshot(store)
    with pytest.raises(AutointerpError, match=message):
        import_parquet(store, "imp", make_path(tmp_path), activations)
    assert snapshot(store) == before


def test_existing_source_name_is_refused(store, tmp_path):
    contexts, activations = write_contexts(tmp_path / "c.parquet"), write_activations(tmp_path / "a.parquet")
    before = snapshot(store)
    with pytest.raises(AutointerpError, match="a source named 'synthetic' already exists"):
        import_parquet(store, "synthetic", contexts, activations)
    assert snapshot(store) == before


def test_cli_import_then_features(tmp_path, capsys):
    contexts, activations = write_contexts(tmp_path / "c.parquet"), write_activations(tmp_path / "a.parquet")
    db = str(tmp_path / "cli.duckdb")
    assert main(["import", "--db", db, "--source", "imp", "--contexts", contexts, "--activations", activations]) == 0
    assert "imported source 'imp': 3 contexts, 12 tokens, 5 activations over 2 features" in capsys.readouterr().out
    assert main(["features", "--db", db, "--source", "imp"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split()[:3] == ["0", "3", "2"] and lines[2].split()[:3] == ["3", "2", "2"]
    assert main(["import", "--db", db, "--source", "imp2", "--contexts", contexts, "--activations", contexts]) == 2
    assert "lacks column(s)" in capsys.readouterr().err
