"""`autointerp sources`: list a store's sources, or delete one with everything stored for it."""

from __future__ import annotations

import argparse
import dataclasses
import json

from autointerp import inventory
from autointerp.store import Store

NAME = "sources"
HELP = "List the store's sources (model, layer, width, contexts, labels), or delete one with --delete."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("--json", action="store_true", help="print one JSON object per source")
    parser.add_argument("--delete", metavar="SOURCE", help="delete this source, its activations and its labels")
    parser.add_argument("--yes", action="store_true", help="confirm --delete (nothing is deleted without it)")


def run(args: argparse.Namespace) -> int:
    if args.delete:
        return _delete(args)
    with Store(args.db, read_only=True) as store:
        found = inventory.sources(store.con)
    if args.json:
        for s in found:
            print(json.dumps(dataclasses.asdict(s), default=str))
        return 0
    if not found:
        print("no sources yet: run `autointerp collect` or `autointerp import`")
        return 0
    print(f"{'source':<24} {'model':<20} {'layer':>5} {'width':>8} {'contexts':>9} {'labels':>7} {'labeled':>8}")
    for s in found:
        i = s.source
        print(
            f"{i.name:<24} {str(i.model or '-'):<20} {str(i.layer if i.layer is not None else '-'):>5} "
            f"{str(i.width or '-'):>8} {s.n_contexts:>9} {s.n_labels:>7} {s.n_features_labeled:>8}"
        )
    return 0


def _delete(args: argparse.Namespace) -> int:
    with Store(args.db) as store, store.writing() as con:
        summary = inventory.source(con, args.delete)
        if not args.yes:
            print(
                f"would delete source {args.delete!r} with {summary.n_contexts} contexts and {summary.n_labels} "
                "labels: rerun with --yes to delete it"
            )
            return 1
        deleted = inventory.delete_source(con, args.delete)
    print(f"deleted source {args.delete!r}: " + ", ".join(f"{n} {t}" for t, n in deleted.items() if n))
    return 0
