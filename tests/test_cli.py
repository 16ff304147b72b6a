"""The command shell: every subcommand is reachable, and user errors print one line without a traceback."""

import pkgutil
import subprocess
import sys

import pytest

import autointerp.cli as cli


def test_every_module_is_named_as_its_command():
    for info in pkgutil.iter_modules(cli.__path__):
        if info.name.startswith("_"):
            continue
        module = __import__(f"autointerp.cli.{info.name}", fromlist=["NAME"])
        assert module.NAME == cli.command_name(info.name)


def test_one_command_parser_has_only_that_command():
    parser = cli.build_parser(only="features")
    args = parser.parse_args(["features", "--db", "x.duckdb", "--source", "s"])
    assert args.command == "features"
    with pytest.raises(SystemExit):
        parser.parse_args(["search", "--db", "x.duckdb", "q"])


def test_user_error_is_one_line_without_traceback(tmp_path):
    result = subprocess.run(
        [sys.executable, "-m", "autointerp.cli", "features", "--db", str(tmp_path / "missing.duckdb"), "--source", "s"],
        capture_output=True,
        text=True,
    )
    assert result.returncode == 2
    assert result.stderr.startswith("error: ")
    assert "Traceback" not in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1


def test_score_tables_say_why_a_score_is_undefined():
    """`autointerp score` and the `label` summary print score_cell: an undefined score carries its reason."""
    from autointerp.cli.label import score_cell
    from autointerp.records import Score

    why = "no negatives in the test split"
    assert score_cell(Score("embedding", "auroc", None, None, None, 20, details={"note": why})) == f"auroc – n=20 ({why})"
    assert score_cell(Score("embedding", "auroc", 0.5, 0.4, 0.6, 20, details={"note": why})) == "auroc 0.50 [0.40, 0.60] n=20"
