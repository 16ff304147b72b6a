"""The web catalog: FastAPI, server-rendered Jinja2 pages, a JSON API. Start it with `autointerp serve`."""

from autointerp.web.app import create_app

__all__ = ["create_app"]
