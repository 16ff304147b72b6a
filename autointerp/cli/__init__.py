"""The `autointerp` command: a thin shell over the library.

Each subcommand is a module in this package with `NAME`, `HELP`, `add_arguments(parser)` and `run(args)`.
Only the module of the command being run is imported: `autointerp --help` reads the other commands' NAME
and HELP from their source, so it answers without loading torch, DuckDB or the models.
"""

from __future__ import annotations

import argparse
import ast
import importlib
import pkgutil
import sys
from functools import cache
from pathlib import Path

from autointerp import __version__
from autointerp.errors import AutointerpError

# Options whose values may start with "-" (`--order-by -density`); argparse would read them as flags.
DASH_VALUE_OPTIONS = ("--order-by",)


def command_name(module_name: str) -> str:
    """`import_` -> `import`, `import_labels` -> `import-labels`."""
    return module_name.replace("_", "-").strip("-")


@cache
def commands() -> dict[str, tuple[str, str]]:
    """command -> (module name, one-line help), read from each module's source without importing it."""
    found = {}
    for info in pkgutil.iter_modules(__path__):
        if info.name.startswith("_"):
            continue
        tree = ast.parse((Path(__file__).parent / f"{info.name}.py").read_text())
        consts = {
            target.id: ast.literal_eval(node.value)
            for node in tree.body
            if isinstance(node, ast.Assign)
            for target in node.targets
            if isinstance(target, ast.Name) and target.id in ("NAME", "HELP")
        }
        found[consts["NAME"]] = (info.name, consts["HELP"])
    return dict(sorted(found.items()))


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's module is imported and given its arguments."""
    parser = argparse.ArgumentParser(prog="autointerp", description="Label, score and search model features.")
    parser.add_argument("--version", action="version", version=f"autointerp {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name, (module_name, help_) in commands().items():
        p = sub.add_parser(name, help=help_, description=help_)
        if only is None or name == only:
            module = importlib.import_module(f"{__name__}.{module_name}")
            module.add_arguments(p)
            p.set_defaults(_run=module.run)
    return parser


def join_dash_values(argv: list[str]) -> list[str]:
    """`--order-by -density` -> `--order-by=-density`."""
    out: list[str] = []
    for arg in argv:
        if out and out[-1] in DASH_VALUE_OPTIONS and arg.startswith("-") and arg != "--":
            out[-1] = f"{out[-1]}={arg}"
        else:
            out.append(arg)
    return out


def as_flags(message: str, parser: argparse.ArgumentParser, command: str) -> str:
    """Library errors name a setting as `keyword`; on the command line it reads as the command's `--flag`."""
    sub = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction)).choices[command]
    for action in sub._actions:
        flags = [o for o in action.option_strings if o.startswith("--")]
        if flags:
            message = message.replace(f"`{action.dest}`", f"`{flags[0]}`")
    return message


def main(argv: list[str] | None = None) -> int:
    argv = join_dash_values(sys.argv[1:] if argv is None else argv)
    only = argv[0] if argv and argv[0] in commands() else ""
    parser = build_parser(only=only)
    args = parser.parse_args(argv)
    args.argv = argv  # for commands that print how to run them again
    try:
        return args._run(args) or 0
    except AutointerpError as exc:
        print(f"error: {as_flags(str(exc), parser, args.command)}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was stored is kept; run the same command again to continue", file=sys.stderr)
        return 130
