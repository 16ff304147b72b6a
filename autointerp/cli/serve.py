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
    parser.add_argument(
        "--tokens",
        metavar="TOML",
        help='reviewer tokens, one `name = "token"` line each: a review needs one and records its name '
        "(required, or --read-only, beyond 127.0.0.1)",
    )
    parser.add_argument("--read-only", action="store_true", help="take no reviews")


def run(args: argparse.Namespace) -> int:
    import getpass

    import uvicorn

    from autointerp.web import create_app
    from autointerp.web.reviewers import ReviewAccess, check_exposure, load_tokens

    reviewers = ReviewAccess(
        tokens=load_tokens(args.tokens) if args.tokens else {}, local_reviewer=getpass.getuser(), read_only=args.read_only
    )
    check_exposure(args.host, reviewers)
    Store(args.db).close()  # apply pending migrations before serving read-only
    mode = "read-only" if reviewers.read_only else f"reviews by {len(reviewers.tokens)} token(s)" if reviewers.tokens else (
        f"reviews recorded as {reviewers.local_reviewer}"
    )
    print(f"autointerp catalog of {args.db} at http://{args.host}:{args.port}/  ({mode}; API docs at /docs)")
    uvicorn.run(create_app(args.db, reviewers=reviewers), host=args.host, port=args.port, log_level="warning")
    return 0
