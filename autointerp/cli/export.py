"""`autointerp export`: write labels and scores to CSV, Parquet or a Neuronpedia explanations file."""

from __future__ import annotations

import argparse

from autointerp.exchange import FORMATS, export_labels
from autointerp.store import Store

NAME = "export"
HELP = "Export labels with provenance and scores (.csv, .parquet, or Neuronpedia .jsonl)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("--out", required=True, help="file to write; the format follows its suffix unless --format says")
    parser.add_argument("--format", choices=FORMATS)
    parser.add_argument("--source", help="only this source")
    parser.add_argument("--best-only", action="store_true", help="only each feature's best label")
    parser.add_argument("--neuronpedia-model", metavar="ID", help="Neuronpedia's id of the subject model (e.g. gpt2-small)")
    parser.add_argument(
        "--neuronpedia-source", metavar="ID", help="Neuronpedia's id of the source (e.g. 6-res-jb); needs --source"
    )


def run(args: argparse.Namespace) -> int:
    with Store(args.db, read_only=True) as store:
        n = export_labels(
            store.con, args.out, args.format, source=args.source, best_only=args.best_only,
            neuronpedia_model=args.neuronpedia_model, neuronpedia_source=args.neuronpedia_source,
        )
    print(f"wrote {n} labels to {args.out}")
    return 0
