"""`autointerp index`: rebuild a store's search indexes (recovery), here or in a detached process."""

from __future__ import annotations

import argparse

NAME = "index"
HELP = "Bring a store's search index up to date; --rebuild builds it anew from the labels (recovery)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("--rebuild", action="store_true", help="build the index anew from every label")
    parser.add_argument(
        "--background", action="store_true",
        help="run in a detached process that outlives this command; its output goes to a log beside the store",
    )


def run(args: argparse.Namespace) -> int:
    from autointerp import indexing

    if args.background:
        started = indexing.rebuild_in_background(args.db)
        print(f"rebuilding the search index of {args.db} in the background (pid {started.pid}); log: {started.log}")
        return 0
    done = indexing.rebuild(args.db)
    where = "index files beside the store" if done.saved else "in memory only: a server builds its own"
    print(f"indexed {done.labels} labels in {done.seconds:.1f} s ({where})")
    return 0
