"""`autointerp review`: accept, reject or edit a label."""

from __future__ import annotations

import argparse
import getpass

from autointerp.catalog import VERDICTS, review_label
from autointerp.store import Store

NAME = "review"
HELP = "Record a human verdict on a label: accept, reject, or edit (a new human label replaces it)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("explanation_id", type=int, help="the label's id (shown by search --json and the web catalog)")
    parser.add_argument("verdict", choices=VERDICTS)
    parser.add_argument("--label", help="the corrected label (verdict edit)")
    parser.add_argument("--note", help="why")
    parser.add_argument("--reviewer", help="who reviews (default: your user name)")


def run(args: argparse.Namespace) -> int:
    with Store(args.db) as store, store.writing() as con:
        reviewer = args.reviewer or getpass.getuser()
        current = review_label(
            con, args.explanation_id, args.verdict, note=args.note, edited_label=args.label, reviewer=reviewer
        )
    print(f"{current.source}/{current.feature}: label {current.explanation_id} is {current.review_state}: {current.label}")
    return 0
