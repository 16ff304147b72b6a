"""The `autointerp` command: a thin shell over the library.

Each subcommand is a module in this package with `NAME`, `HELP`, `add_arguments(parser)` and `run(args)`.
"""

from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from autointerp.errors import AutointerpError


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="autointerp", description="Label, score and search model features.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for info in sorted(pkgutil.iter_modules(__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        module = importlib.import_module(f"{__name__}.{info.name}")
        p = sub.add_parser(module.NAME, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args._run(args) or 0
    except AutointerpError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: what was stored is kept; run the same command again to continue", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
