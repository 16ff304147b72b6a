"""`autointerp index`: the store's search index files: check and catch up, or rebuild them (recovery)."""

from __future__ import annotations

import argparse

NAME = "index"
HELP = "Check a store's search index and catch it up with the labels; --rebuild builds it anew (recovery)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("--rebuild", action="store_true", help="build the index files anew from every label")
    parser.add_argument(
        "--background", action="store_true",
        help="rebuild in a detached process that outlives this command; its output goes to a log beside the store",
    )


def run(args: argparse.Namespace) -> int:
    from autointerp import indexing

    if args.background:
        started = indexing.rebuild_in_background(args.db)
        print(f"rebuilding the search index of {args.db} in the background (pid {started.pid}); log: {started.log}")
        return 0
    if args.rebuild:
        done = indexing.rebuild(args.db)
        print(f"rebuilt the search index: {done.labels} labels in {done.seconds:.1f} s; files in {done.folder}")
        return 0
    state = indexing.check(args.db)
    how = f"opened from {state.folder} and caught up with the store" if state.loaded else (
        f"built into {state.folder} (no usable index files were there)")
    print(f"search index of {args.db}: {state.labels} labels, {how}")
    return 0
