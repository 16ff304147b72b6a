"""The `autointerp` command: a thin shell over the library.

Each subcommand is a module in this package with `NAME`, `HELP`, `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from autointerp.errors import AutointerpError


def command_name(module_name: str) -> str:
    """`import_` -> `import`, `import_labels` -> `import-labels`."""
    return module_name.replace("_", "-").strip("-")


def build_parser(only: str | None = None) -> argparse.ArgumentParser:
    """The parser; with `only`, just that subcommand's module is imported (commands start faster)."""
    parser = argparse.ArgumentParser(prog="autointerp", description="Label, score and search model features.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    names = sorted(m.name for m in pkgutil.iter_modules(__path__) if not m.name.startswith("_"))
    if only in {command_name(n) for n in names}:
        names = [n for n in names if command_name(n) == only]
    for name in names:
        module = importlib.import_module(f"{__name__}.{name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    args = build_parser(only=argv[0] if argv else None).parse_args(argv)
    args.argv = argv  # for commands that print how to run them again
    try:
        return args._run(args) or 0
    except AutointerpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was stored is kept; run the same command again to continue", file=sys.stderr)
        return 130

