"""`autointerp import`: load activations computed elsewhere from Parquet files (schema: autointerp.store.importing)."""

from __future__ import annotations

import argparse

from autointerp.store import Store
from autointerp.store.importing import import_parquet

NAME = "import"
HELP = "Import contexts and activations from Parquet files as a new source."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file (created if missing)")
    parser.add_argument("--source", required=True, help="name of the new source")
    parser.add_argument("--contexts", required=True, help="Parquet: context_id BIGINT, tokens LIST<VARCHAR>[, token_ids LIST<INT>]")
    parser.add_argument("--activations", required=True, help="Parquet: feature INT, context_id BIGINT, pos INT, value FLOAT (non-zeros)")


def run(args: argparse.Namespace) -> int:
    with Store(args.db, create=True) as store:
        report = import_parquet(store, args.source, args.contexts, args.activations)
    print(
        f"imported source {report.source!r}: {report.n_contexts} contexts, {report.n_tokens} tokens, "
        f"{report.n_activations} activations over {report.n_features} features in {report.seconds:.1f}s"
        + (f" ({report.n_zero_skipped} zero rows skipped)" if report.n_zero_skipped else "")
    )
    return 0
