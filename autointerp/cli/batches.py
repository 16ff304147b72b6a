"""`autointerp batches`: the provider batches of batch labeling runs; cancel a run's open batches."""

from __future__ import annotations

import argparse
import asyncio

from autointerp.batch_job import cancel_batches
from autointerp.cli.label import print_table
from autointerp.errors import AutointerpError
from autointerp.store import Store
from autointerp.store.batches import BatchRow, batches

NAME = "batches"
HELP = "List the provider batches of batch labeling runs (label --batch), or cancel a run's open batches."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("action", choices=["list", "cancel"], help="list batches, or cancel the open ones of RUN")
    parser.add_argument("run", nargs="?", help="the batch run id (see `autointerp runs`); list: all runs when omitted")
    parser.add_argument("--db", required=True, help="the store file")


def run(args: argparse.Namespace) -> int:
    if args.action == "cancel":
        if not args.run:
            raise AutointerpError("name the run whose batches to cancel: autointerp batches cancel RUN --db FILE")
        cancelled = asyncio.run(cancel_batches(Store(args.db), args.run))
        print(f"asked the provider to cancel {len(cancelled)} open batch(es) of {args.run}")
        print("what finished is collected by the next `autointerp label ... --batch`; running it continues the job")
        return 0
    with Store(args.db, read_only=True) as store:
        rows = batches(store.con, run_id=args.run)
    if not rows:
        print(f"no provider batches{' for run ' + args.run if args.run else ''} in {args.db}")
        return 0
    print_batches(rows)
    return 0


def print_batches(rows: list[BatchRow]) -> None:
    print_table(
        ["run", "provider batch", "model", "status", "provider status", "requests", "answered", "errored", "unfinished", "MB", "created"],
        [
            [
                b.run_id or "-",
                b.provider_batch_id or f"({b.batch_key})",
                f"{b.provider}:{b.model}",
                b.status,
                b.provider_status or "-",
                str(b.n_requests),
                str(b.n_succeeded),
                str(b.n_errored),
                str(b.n_unfinished),
                f"{(b.bytes or 0) / 1e6:.2f}",
                f"{b.created_at:%Y-%m-%d %H:%M}",
            ]
            for b in rows
        ],
    )
    for b in rows:
        if b.error:
            print(f"{b.provider_batch_id or b.batch_key}: {b.error}")
