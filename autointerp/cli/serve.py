"""`autointerp serve`: the web catalog."""

from __future__ import annotations

import argparse

from autointerp.store import Store

NAME = "serve"
HELP = "Serve the web catalog (search, feature pages, reviews, runs, JSON API at /docs)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--db", required=True, help="store file")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1: this machine only)")
    parser.add_argument("--port", type=int, default=8000)


def run(args: argparse.Namespace) -> int:
    import uvicorn

    from autointerp.web import create_app

    Store(args.db).close()  # apply pending migrations before serving read-only
    print(f"autointerp catalog of {args.db} at http://{args.host}:{args.port}/  (API docs at /docs)")
    uvicorn.run(create_app(args.db), host=args.host, port=args.port, log_level="warning")
    return 0
