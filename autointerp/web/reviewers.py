"""Who may write reviews in the web catalog, and under which name.

Three ways to serve: read-only (nobody writes); with reviewer tokens (a TOML file of `name = "token"` lines,
read at start: a review needs a known token, and records the token's name); or, on this machine only
(127.0.0.1), open to whoever can reach it, recorded under the name of the user who started the server.
Bound to any other address, the catalog needs tokens or read-only: `check_exposure` refuses the rest.
Tokens are compared in constant time and never stored or logged; only the reviewer name is.
"""

from __future__ import annotations

import hmac
import ipaddress
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from autointerp.errors import AutointerpError

MIN_TOKEN_CHARS = 16
COOKIE = "autointerp_token"


@dataclass(frozen=True)
class ReviewAccess:
    tokens: dict[str, str] = field(default_factory=dict)  # token -> reviewer name
    local_reviewer: str = "local"  # without tokens: the name every review is recorded under
    read_only: bool = False

    @property
    def needs_token(self) -> bool:
        return not self.read_only and bool(self.tokens)

    def reviewer(self, token: str | None) -> str:
        """The reviewer for a request carrying `token`; ReviewRefused when it may not write."""
        if self.read_only:
            raise ReviewRefused("this catalog is served read-only: reviews are not taken here")
        if not self.tokens:
            return self.local_reviewer
        found = None
        for known, name in self.tokens.items():
            if token and hmac.compare_digest(known.encode(), token.encode()):
                found = name
        if found is None:
            raise ReviewRefused(
                "a review needs a valid reviewer token: ask whoever runs this catalog for yours"
                if token
                else "a review needs your reviewer token (ask whoever runs this catalog for one)"
            )
        return found


class ReviewRefused(AutointerpError):
    """A review this catalog does not take: answered 403."""


def load_tokens(path: str | Path) -> dict[str, str]:
    """token -> reviewer name from a TOML file of `name = "token"` lines."""
    try:
        with open(path, "rb") as f:
            data = tomllib.load(f)
    except FileNotFoundError:
        raise AutointerpError(f"no token file at {path}: write one `name = \"token\"` line per reviewer") from None
    except tomllib.TOMLDecodeError as exc:
        raise AutointerpError(f"the token file {path} is not valid TOML ({exc}): write `name = \"token\"` lines") from None
    tokens: dict[str, str] = {}
    for name, token in data.items():
        if not isinstance(token, str) or len(token) < MIN_TOKEN_CHARS:
            raise AutointerpError(
                f"the token of reviewer {name!r} in {path} must be a string of at least {MIN_TOKEN_CHARS} characters "
                "(e.g. from `python -c 'import secrets; print(secrets.token_urlsafe())'`)"
            )
        if token in tokens:
            raise AutointerpError(f"reviewers {tokens[token]!r} and {name!r} in {path} share a token: give each its own")
        tokens[token] = name
    if not tokens:
        raise AutointerpError(f"the token file {path} names no reviewer: write one `name = \"token\"` line per reviewer")
    return tokens


def is_local(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def check_exposure(host: str, access: ReviewAccess) -> None:
    """Refuse to let anyone on the network write reviews unannounced."""
    if not is_local(host) and not access.read_only and not access.tokens:
        raise AutointerpError(
            f"serving on {host} lets anyone who reaches it write reviews: give reviewers tokens with --tokens FILE "
            '(one `name = "token"` line each), or add --read-only'
        )
