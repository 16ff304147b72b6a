"""The DuckDB store: the only package that writes SQL."""

from autointerp.store.db import Store, connect, migrate

__all__ = ["Store", "connect", "migrate"]
