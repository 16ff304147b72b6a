"""A built wheel works on its own: it carries the prompts and data files, and labels from outside the repo.

The wheel is installed into a fresh virtual environment that sees the shared environment's packages
through a .pth path entry (a plain path entry, so the shared editable install of autointerp is not
active there): `import autointerp` resolves to the wheel's copy.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import zipfile
from pathlib import Path

import pytest
from synthetic import make_synthetic_store

REPO = Path(__file__).resolve().parents[1]
SHIPPED = ("pyproject.toml", "README.md", "autointerp", "prompts", "data")


def run(cmd: list, **kwargs) -> subprocess.CompletedProcess:
    result = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, **kwargs)
    assert result.returncode == 0, f"{cmd} failed:\n{result.stdout}\n{result.stderr}"
    return result


@pytest.fixture(scope="module")
def wheel_env(tmp_path_factory) -> Path:
    """A venv with the wheel built from this checkout installed; returns the venv folder."""
    root = tmp_path_factory.mktemp("wheel")
    src = root / "src"
    src.mkdir()
    for name in SHIPPED:  # build from a copy: no build/ or egg-info in the checkout
        path = REPO / name
        if path.is_dir():
            shutil.copytree(path, src / name, symlinks=True, ignore=shutil.ignore_patterns("__pycache__"))
        else:
            shutil.copy(path, src / name)
    pip = [sys.executable, "-m", "pip"]
    run([*pip, "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", root / "dist", src])
    (wheel,) = (root / "dist").glob("autointerp-*.whl")
    venv = root / "venv"
    run([sys.executable, "-m", "venv", "--without-pip", venv])
    site = Path(run([venv / "bin/python", "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"]).stdout.strip())
    (site / "shared_env.pth").write_text(sysconfig.get_path("purelib") + "\n")
    run([*pip, "--python", venv / "bin/python", "install", "--no-deps", "-q", wheel])
    return venv


def test_the_wheel_carries_every_prompt_and_data_file(wheel_env):
    (wheel,) = (wheel_env.parent / "dist").glob("autointerp-*.whl")
    names = set(zipfile.ZipFile(wheel).namelist())
    for folder in ("prompts", "data"):
        for path in (REPO / folder).iterdir():
            assert f"autointerp/_bundled/{folder}/{path.name}" in names


def test_the_installed_wheel_labels_from_outside_the_repo(wheel_env, tmp_path, local_llm_server):
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "PYTHONHOME")}
    where = run([wheel_env / "bin/python", "-c", "import autointerp; print(autointerp.__file__)"], cwd=elsewhere, env=env)
    assert Path(where.stdout.strip()).is_relative_to(wheel_env)

    make_synthetic_store(elsewhere / "s.duckdb", n_contexts=300, n_features=2, context_len=16, seed=1).close()
    (elsewhere / "job.toml").write_text(
        'source = "synthetic"\nfeatures = "0"\nscorers = ["embedding"]\n'
        "[sampling]\nn_train_top = 4\nn_train_quantile = 2\nn_quantiles = 2\nn_valid_positives = 2\n"
        "n_test_positives = 4\nn_test_random_negatives = 2\nn_test_hard_negatives = 2\n"
    )
    run(
        [wheel_env / "bin/autointerp", "label", "--db", "s.duckdb", "--config", "job.toml", "--explainer", "local",
         "--base-url", local_llm_server, "--quiet"],
        cwd=elsewhere,
        env=env,
    )
    shown = run([wheel_env / "bin/autointerp", "runs", "--db", "s.duckdb", "--json"], cwd=elsewhere, env=env)
    (job,) = json.loads(shown.stdout)
    assert job["kind"] == "label" and job["status"] == "done" and job["n_total"] == 1
    assert job["n_done"] + job["n_failed"] == 1  # a label, or an unparsable answer recorded as a failure
    view = json.loads(run([wheel_env / "bin/autointerp", "runs", "--db", "s.duckdb", "--run", job["run_id"], "--json"],
                          cwd=elsewhere, env=env).stdout)
    assert any(s["stage"] == "explain" and s["calls"] >= 1 for s in view["spend"])  # the prompt was rendered and sent
    assert not any("prompt" in f["error"] for f in view["failures"])
    prompt_ok = run(
        [wheel_env / "bin/python", "-c",
         "from autointerp.prompts import load_prompt; t = load_prompt('explain_highlight'); print(t.path)"],
        cwd=elsewhere, env=env,
    )
    assert Path(prompt_ok.stdout.strip()).is_relative_to(wheel_env)
