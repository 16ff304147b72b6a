"""`autointerp import-labels`: add labels from an exported file (ours or Neuronpedia's) to a catalog."""

from __future__ import annotations

import argparse

from autointerp.exchange import FORMATS, import_labels
from autointerp.store import Store

NAME = "import-labels"
HELP = "Import labels from a .csv/.parquet export or a Neuronpedia explanations .jsonl (author 'import')."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file holding the sources the labels belong to")
    parser.add_argument("path", help="file to import")
    parser.add_argument("--format", choices=FORMATS)
    parser.add_argument("--source", help="put every label on this source (default: the file's source / layer field)")


def run(args: argparse.Namespace) -> int:
    with Store(args.db) as store:
        report = import_labels(store, args.path, args.format, source=args.source)
    print(
        f"imported {report.n_imported} of {report.n_read} labels ({report.n_skipped} already present) "
        f"as run {report.run_id} in {report.seconds:.1f}s"
    )
    return 0
