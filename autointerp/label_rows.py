"""Rows of a derived search index: labels in the order they were indexed, deleted ones masked.

Both search indexes (keyword, vector) address labels by row and keep this map from rows to explanation
ids and back, so that adding or deleting a label never renumbers what is stored.
"""

from __future__ import annotations

import numpy as np


class LabelRows:
    def __init__(self, ids: np.ndarray | None = None, alive: np.ndarray | None = None) -> None:
        self.ids = np.zeros(0, dtype=np.int64) if ids is None else np.asarray(ids, dtype=np.int64)
        self.alive = np.ones(len(self.ids), dtype=bool) if alive is None else np.asarray(alive, dtype=bool)
        size = int(self.ids.max()) + 1 if len(self.ids) else 1
        self.row_of = np.full(size, -1, dtype=np.int64)
        live = np.flatnonzero(self.alive)
        self.row_of[self.ids[live]] = live
        self.n_alive = len(live)

    def __len__(self) -> int:
        return len(self.ids)

    @property
    def live_ids(self) -> np.ndarray:
        return self.ids[self.alive]

    def rows(self, explanation_ids: np.ndarray) -> np.ndarray:
        """Rows of the given ids that are indexed (others are left out)."""
        ids = np.asarray(explanation_ids, dtype=np.int64)
        rows = self.row_of[ids[(ids >= 0) & (ids < len(self.row_of))]]
        return rows[rows >= 0]

    def append(self, explanation_ids: np.ndarray) -> np.ndarray:
        """New rows for labels not indexed yet (callers remove a re-indexed label first); their rows."""
        ids = np.asarray(explanation_ids, dtype=np.int64)
        first = len(self.ids)
        self.ids = np.concatenate([self.ids, ids])
        self.alive = np.concatenate([self.alive, np.ones(len(ids), dtype=bool)])
        top = int(ids.max()) if len(ids) else -1
        if top >= len(self.row_of):
            self.row_of = np.concatenate([self.row_of, np.full(top + 1 - len(self.row_of), -1, dtype=np.int64)])
        rows = np.arange(first, len(self.ids))
        self.row_of[ids] = rows
        self.n_alive += len(ids)
        return rows

    def remove(self, explanation_ids: np.ndarray) -> np.ndarray:
        """Mask the rows of the given ids (ids not indexed are ignored); the rows masked."""
        rows = self.rows(explanation_ids)
        self.alive[rows] = False
        self.row_of[self.ids[rows]] = -1
        self.n_alive -= len(rows)
        return rows

    def mask(self, allowed_ids: np.ndarray | None) -> np.ndarray:
        """Boolean mask over rows: alive, and among `allowed_ids` when given."""
        if allowed_ids is None:
            return self.alive
        out = np.zeros(len(self.ids), dtype=bool)
        out[self.rows(allowed_ids)] = True
        return out
