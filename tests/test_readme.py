"""The README's commands and notebook example work as written, so they cannot drift from the CLI.

Every `autointerp ...` line in the README's code blocks is parsed by the real parser, and every one that
needs no paid API or prepared benchmark store is run, in README order, against a store made first by
the README's own `collect` line; sizes shrink (tokens, number of features) and the scorers are the cheap
embedding scorer, so the test stays short. The CLI reference table may only name flags that exist.
"""

from __future__ import annotations

import re
import shlex
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest

from autointerp.cli import build_parser, commands, join_dash_values, main

README = (Path(__file__).resolve().parents[1] / "README.md").read_text()
PAID = ("openai:", "anthropic:")
ELIDED = ["--db", "my.duckdb", "--source", "smollm2-L6-neurons"]  # what `...` stands for in `label ...`


def code_blocks(lang: str = "") -> list[str]:
    return [body for tag, body in re.findall(r"^```(\w*)\n(.*?)^```", README, re.M | re.S) if tag == lang]


def readme_commands() -> list[list[str]]:
    """argv of every `autointerp` line in the plain code blocks (continuations joined, comments dropped)."""
    out = []
    for body in code_blocks():
        for line in body.replace("\\\n", " ").splitlines():
            if line.startswith("autointerp "):
                argv = shlex.split(line, comments=True)[1:]
                out.append([a for part in argv for a in (ELIDED if part == "..." else [part])])
    return out


def runnable(argv: list[str]) -> bool:
    """Not the benchmarks, nor what needs a paid API (its models, its batch endpoints)."""
    return argv[0] not in ("bench", "batches") and "--batch" not in argv and not any(a.startswith(PAID) for a in argv)


def option_strings(parser) -> set[str]:
    found = set(parser._option_string_actions)
    for action in parser._actions:
        for sub in getattr(action, "choices", None).values() if isinstance(getattr(action, "choices", None), dict) else ():
            found |= option_strings(sub)
    return found


def test_every_readme_command_parses():
    argvs = readme_commands()
    assert len(argvs) >= 12 and {a[0] for a in argvs} >= {"collect", "features", "sample", "label", "search", "serve"}
    for argv in argvs:
        build_parser(only=argv[0]).parse_args(join_dash_values(argv))


def test_the_cli_reference_names_only_real_commands_and_flags():
    reference = README.split("## CLI reference", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\| (`.+?`) \|", reference, re.M)
    assert len(rows) >= 10
    for cell in rows:
        for synopsis in re.findall(r"`([^`]+)`", cell):
            name = synopsis.split()[0]
            assert name in commands(), synopsis
            known = option_strings(build_parser(only=name)._subparsers._group_actions[0].choices[name])
            for flag in re.findall(r"(?<![\w-])--[a-z][\w-]*", synopsis):
                assert flag in known, f"{flag} in `{synopsis}`"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def shrunk(argv: list[str], db: Path, base_url: str) -> list[str]:
    """The README command against the test store, small and with the cheap scorer."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--db":
            out[i + 1] = str(db)
        elif arg == "--tokens":
            out[i + 1] = "4096"
        elif arg == "--features" and out[i + 1].startswith("auto:"):
            out[i + 1] = "auto:1"
        elif arg == "--scorers":
            out[i + 1] = "embedding"
    if out[0] == "label" and "--dry-run" not in out:
        out += ["--base-url", base_url, "--quiet"]
    if out[0] == "serve":
        out += ["--port", str(free_port())]
    return out


def serve_briefly(argv: list[str]) -> None:
    port = argv[argv.index("--port") + 1]
    proc = subprocess.Popen([sys.executable, "-m", "autointerp.cli", *argv], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        for _ in range(600):
            assert proc.poll() is None, proc.stderr.read().decode()
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/", timeout=2) as page:
                    assert page.status == 200
                    return
            except OSError:
                time.sleep(0.2)
        pytest.fail("serve never answered")
    finally:
        proc.terminate()
        proc.wait(timeout=30)


def test_readme_commands_and_notebook_example_run(tmp_path, local_llm_server, capsys):
    db = tmp_path / "my.duckdb"
    ran = []
    for argv in sorted(filter(runnable, readme_commands()), key=lambda a: a[0] != "collect"):  # collect first
        argv = shrunk(argv, db, local_llm_server)
        if argv[0] == "serve":
            serve_briefly(argv)
        else:
            assert main(argv) == 0, (argv, capsys.readouterr().err)
        ran.append(argv[0])
    assert ran.count("label") == 2 and {"collect", "features", "sample", "search", "serve", "runs", "costs"} <= set(ran)

    example = next(b for b in code_blocks("python") if b.startswith("import autointerp as ai"))  # the notebook
    example = example.replace('"my.duckdb"', repr(str(db))).replace('features="auto:5"', 'features="auto:1"')
    example = example.replace("ai.label_features(store, ", f"ai.label_features(store, base_url={local_llm_server!r}, ")
    namespace: dict = {}
    exec(compile(example, "README.md (python)", "exec"), namespace)
    summary = namespace["summary"]
    assert summary.status == "done" and len(summary.results) == 1  # the feature the CLI's label run chose
    assert len(namespace["examples"].test.all()) > 0
