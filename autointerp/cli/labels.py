"""`autointerp labels`: list labels (of a store, a source or a feature), or delete one."""

from __future__ import annotations

import argparse
import dataclasses
import json

from autointerp import inventory, ranking
from autointerp.store import Store

NAME = "labels"
HELP = "List labels with their headline score and review state, or delete one with --delete ID."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("--source", help="only this source")
    parser.add_argument("--feature", type=int, help="only this feature of --source (newest first)")
    parser.add_argument("--json", action="store_true", help="print one JSON object per label, with scores")
    parser.add_argument("--delete", type=int, metavar="ID", help="delete this label (explanation id) with its scores")


def run(args: argparse.Namespace) -> int:
    if args.delete is not None:
        with Store(args.db) as store, store.writing() as con:
            deleted = inventory.delete_label(con, args.delete)
        print(f"deleted label {args.delete}: " + ", ".join(f"{n} {t}" for t, n in deleted.items() if n))
        return 0
    with Store(args.db, read_only=True) as store:
        found = inventory.labels(store.con, args.source, args.feature)
    if args.json:
        for label in found:
            print(json.dumps(dataclasses.asdict(label), default=str))
        return 0
    print(f"{'label id':>9}  {'feature':<20} {'state':<10} {'headline':<32} label")
    for label in found:
        top = ranking.headline(label.scores)
        score = f"{top.scorer}.{top.metric} {top.value:.3f} n={top.n}" if top else "-"
        print(f"{label.explanation_id:>9}  {label.source + '/' + str(label.feature):<20} {label.review_state:<10} {score:<32} {label.label}")
    return 0
