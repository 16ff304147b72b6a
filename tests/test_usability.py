"""Paper cuts a new user hits: bad configuration and arguments are one clear error, failed commands leave no
store behind, the small conveniences (--version, a light --help, runs --json) and the Python API."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pytest
from catalog_fixtures import RUN_ID, SOURCE_A, catalog_copy
from synthetic import make_synthetic_store

import autointerp as ai
from autointerp.cli import main
from autointerp.config import ConfigError, SamplingConfig, load_job_config

BAD_CONFIGS = {
    'n_test_positives = "many"': ("[sampling]\nn_test_positives = \"many\"\n", "sampling.n_test_positives"),
    "n_test_positives = -3": ("[sampling]\nn_test_positives = -3\n", "sampling.n_test_positives"),
    "sampling = 3": ("sampling = 3\n", "sampling"),
    "batch_size = 0": ("[scorer_options.detection]\nbatch_size = 0\n", "detection.batch_size"),
    "misspelt scorer table": ("[scorer_options.detecton]\nbatch_size = 4\n", "'detecton'"),
    "unknown scorer option": ("[scorer_options.detection]\nbatchsize = 4\n", "'batchsize'"),
    "unknown key": ("consurrency = 4\n", "'consurrency'"),
    "unknown sampling key": ("[sampling]\nn_test = 4\n", "sampling.n_test"),
    "k = true": ("k = true\n", "k"),
    "scorers as a string": ('scorers = "detection"\n', "scorers"),
    "unknown scorer": ('scorers = ["detection", "simulaton"]\n', "simulaton"),
}


@pytest.fixture(scope="module")
def small_db(tmp_path_factory) -> str:
    path = tmp_path_factory.mktemp("small") / "s.duckdb"
    make_synthetic_store(path, n_contexts=120, n_features=3, context_len=12, seed=3).close()
    return str(path)


def one_line_error(capsys) -> str:
    err = capsys.readouterr().err.strip()
    assert "Traceback" not in err
    assert len(err.splitlines()) == 1, err
    return err


@pytest.mark.parametrize("case", list(BAD_CONFIGS))
def test_bad_configuration_is_one_error_naming_the_key(case, tmp_path, small_db, capsys):
    text, key = BAD_CONFIGS[case]
    path = tmp_path / "job.toml"
    path.write_text(text)
    with pytest.raises(ConfigError, match="(?s)" + key.replace("[", r"\[").replace(".", r"\.")):
        load_job_config(path, source="synthetic")
    before = open(small_db, "rb").read()
    assert main(["label", "--db", small_db, "--config", str(path), "--source", "synthetic", "--quiet"]) == 2
    err = one_line_error(capsys)
    assert err.startswith("error: ") and key in err and str(path) in err
    assert open(small_db, "rb").read() == before


def test_scorer_option_error_lists_the_allowed_options(tmp_path):
    path = tmp_path / "job.toml"
    path.write_text("[scorer_options.detection]\nbatchsize = 4\n")
    with pytest.raises(ConfigError, match="allowed: batch_size, before, after"):
        load_job_config(path)


def test_configuration_built_in_python_is_checked_too():
    with pytest.raises(ConfigError, match="seed = -1"):
        dataclasses.replace(SamplingConfig(), seed=-1)
    with pytest.raises(ConfigError, match="k = 0"):
        ai.JobConfig(k=0)
    ok = ai.JobConfig(scorers=["embedding"], scorer_options={"detection": {"batch_size": 3}}, rpm=60)
    assert ok.scorers == ("embedding",) and ok.rpm == 60.0 and SamplingConfig.seed == 0


@pytest.mark.parametrize(
    "argv",
    [
        ["features", "--source", "synthetic", "--limit", "-1"],
        ["features", "--source", "synthetic", "--offset", "-2"],
        ["search", "q", "--offset", "-1"],
        ["search", "q", "--limit", "-5"],
        ["sample", "--source", "synthetic", "--feature", "0", "--seed", "-1"],
        ["runs", "--limit", "-1"],
    ],
)
def test_negative_counts_are_usage_errors(argv, small_db, capsys):
    with pytest.raises(SystemExit) as exit_:
        main([argv[0], "--db", small_db, *argv[1:]])
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err and "negative" in err


def test_order_by_accepts_a_leading_dash(small_db, capsys):
    assert main(["features", "--db", small_db, "--source", "synthetic", "--order-by", "-density", "--json"]) == 0
    densities = [json.loads(line)["density"] for line in capsys.readouterr().out.splitlines()]
    assert len(densities) == 3 and densities == sorted(densities, reverse=True)


def test_opening_a_missing_store_is_an_error_that_creates_nothing(tmp_path, capsys):
    typo = tmp_path / "typo.duckdb"
    with pytest.raises(ai.AutointerpError, match="create=True"):
        ai.Store(typo)
    with pytest.raises(ai.AutointerpError, match="no store"):
        ai.list_features(typo, "synthetic")
    for argv in (
        ["review", "--db", str(typo), "1", "accept"],
        ["label", "--db", str(typo), "--source", "s", "--quiet"],
        ["score", "--db", str(typo), "--source", "s", "--feature", "0", "--label", "x", "--scorers", "embedding"],
        ["runs", "--db", str(typo)],
        ["costs", "--db", str(typo)],
        ["serve", "--db", str(typo)],
    ):
        assert main(argv) == 2, argv
        assert "no store at" in one_line_error(capsys)
    assert list(tmp_path.iterdir()) == []


def test_import_labels_into_a_missing_store_leaves_no_file(tmp_path, capsys):
    labels = tmp_path / "labels.csv"
    labels.write_text("source,feature,label\nnope,1,dogs\n")
    new = tmp_path / "new.duckdb"
    assert main(["import-labels", "--db", str(new), str(labels)]) == 2
    assert "no store at" in one_line_error(capsys)
    assert not new.exists()


def test_a_failed_collect_leaves_no_store(tmp_path, capsys):
    new = tmp_path / "new.duckdb"
    assert main(["collect", "--db", str(new), "--model", "smollm2", "--layer", "6", "--context-len", "1"]) == 2
    one_line_error(capsys)
    assert not new.exists()
    store = ai.Store(new, create=True)
    assert not new.exists()  # created at the first write, not before
    assert ai.list_runs(store) == [] and new.exists()


def test_a_failed_import_leaves_no_store(tmp_path, capsys):
    bad = tmp_path / "contexts.parquet"
    bad.write_text("not parquet")
    new = tmp_path / "new.duckdb"
    assert main(["import", "--db", str(new), "--source", "s", "--contexts", str(bad), "--activations", str(bad)]) == 2
    one_line_error(capsys)
    assert not new.exists()


def test_version_and_a_help_that_loads_nothing_heavy():
    code = (
        "import sys\nfrom autointerp.cli import main\n"
        "try:\n    main(['--help'])\nexcept SystemExit as e:\n    assert e.code == 0\n"
        "heavy = sorted(m for m in ('duckdb', 'torch', 'numpy', 'transformers', 'pydantic') if m in sys.modules)\n"
        "print('heavy:', heavy)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert "import-labels" in out and "Label, score and search" in out
    assert out.strip().endswith("heavy: []")
    version = subprocess.run([sys.executable, "-m", "autointerp.cli", "--version"], capture_output=True, text=True)
    assert version.returncode == 0 and version.stdout.strip() == f"autointerp {ai.__version__}"


def test_runs_json_and_unknown_runs(tmp_path, capsys):
    db = str(catalog_copy(tmp_path))
    assert main(["runs", "--db", db, "--json"]) == 0
    (run,) = json.loads(capsys.readouterr().out)
    assert run["run_id"] == RUN_ID and run["status"] == "done" and run["n_done"] == 12
    assert main(["runs", "--db", db, "--run", RUN_ID, "--json"]) == 0
    view = json.loads(capsys.readouterr().out)
    assert view["run"]["run_id"] == RUN_ID and {s["stage"] for s in view["spend"]} == {"explain", "detection"}
    for argv in (["runs", "--run", "nope"], ["costs", "--run", "nope"], ["costs", "--run", "nope", "--json"]):
        assert main([argv[0], "--db", db, *argv[1:]]) == 2
        assert "no run 'nope'" in one_line_error(capsys)
    assert main(["costs", "--db", db, "--run", RUN_ID, "--json"]) == 0
    assert {row["stage"] for row in json.loads(capsys.readouterr().out)} == {"explain", "detection"}


def test_python_api_results_convert_to_pandas_and_arrow(tmp_path, small_db):
    db = catalog_copy(tmp_path)
    store = ai.Store(db, read_only=True)
    hits = ai.search_labels(store, "dogs", mode="keyword", source=SOURCE_A)
    frame = ai.to_pandas(hits)
    assert list(frame["feature"])[0] == 0 and "label" in frame.columns and "explanation_id" in frame.columns
    stats = ai.to_arrow(ai.list_features(db, SOURCE_A, order_by="-density", limit=3))
    assert stats.num_rows == 3 and stats.column("density").to_pylist() == sorted(stats.column("density").to_pylist(), reverse=True)
    examples = ai.sample(ai.Store(small_db, read_only=True), "synthetic", 0, SamplingConfig(n_train_top=4, n_test_positives=4))
    table = ai.to_arrow(examples)
    assert set(table.column("split").to_pylist()) == {"train", "valid", "test"}
    assert table.num_rows == len(examples.train.all()) + len(examples.valid.all()) + len(examples.test.all())
    runs = ai.to_pandas(ai.list_runs(store))
    assert list(runs["run_id"]) == [RUN_ID]
    out = tmp_path / "labels.parquet"
    assert ai.export_labels(store, out, best_only=True) == 12


def test_python_errors_do_not_name_command_line_flags(tmp_path, small_db):
    for call in (
        lambda: ai.Store(tmp_path / "missing.duckdb"),
        lambda: ai.job_config(tmp_path / "missing.toml"),
        lambda: ai.job_config(k=0),
        lambda: ai.list_features(small_db, "nope"),
        lambda: ai.list_features(small_db, "synthetic", order_by="loudness"),
        lambda: ai.search_labels(small_db, "x", mode="fuzzy"),
    ):
        with pytest.raises(ai.AutointerpError) as err:
            call()
        assert " --" not in str(err.value) and "`--" not in str(err.value), str(err.value)


def test_the_command_line_names_the_flag_where_python_names_the_keyword(small_db, capsys):
    with pytest.raises(ai.AutointerpError, match="`context_len` must be between"):
        ai.collect_activations(small_db, context_len=1)
    assert main(["collect", "--db", small_db, "--context-len", "1"]) == 2
    assert "`--context-len` must be between" in one_line_error(capsys)
    assert main(["label", "--db", small_db, "--features", "0-", "--source", "synthetic", "--quiet"]) == 2
    assert "cannot read `--features` '0-'" in one_line_error(capsys)


def test_every_export_is_what_it_names_even_after_the_subpackages_load(tmp_path):
    """A package attribute named like a subpackage (autointerp.collect, autointerp.search) would be replaced by
    the module as soon as that subpackage is imported."""
    import autointerp.collect.collector  # noqa: F401
    import autointerp.search  # noqa: F401

    for name in ai.__all__:
        value = getattr(ai, name)
        assert not isinstance(value, type(ai)), f"autointerp.{name} is a module"
        assert name == "__version__" or callable(value), name
    with pytest.raises(ai.ConfigError, match="'layers'"):
        ai.collect_activations(tmp_path / "new.duckdb", layers=6)
    assert list(tmp_path.iterdir()) == []
