"""The reads the sampler makes, each bounded to one (source, feature) or to a source loaded once.

Per-feature reads filter on (source_id, feature), which the sorted `activations` and `feature_context_max`
tables answer from a few row groups (zonemaps). Context tokens are loaded once per source into a
dictionary-encoded array, because fetching a few hundred scattered list-of-string rows from DuckDB costs a
scan of the whole column each time.
"""

from __future__ import annotations

from dataclasses import dataclass

import duckdb
import numpy as np
import pyarrow.compute as pc


@dataclass
class SourceTokens:
    """Every context of a source: row r holds tokens vocab[codes[offsets[r]:offsets[r + 1]]]."""

    context_ids: np.ndarray  # int64, sorted
    offsets: np.ndarray  # int64, len(context_ids) + 1
    codes: np.ndarray  # int32 indices into vocab
    vocab: list[str]
    token_counts: np.ndarray  # occurrences of each vocab entry in the source

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def rows(self, context_ids: np.ndarray) -> np.ndarray:
        return np.searchsorted(self.context_ids, context_ids)

    def tokens(self, row: int) -> list[str]:
        vocab = self.vocab
        return [vocab[c] for c in self.codes[self.offsets[row] : self.offsets[row + 1]]]


def load_source_tokens(con: duckdb.DuckDBPyConnection, source_id: int) -> SourceTokens:
    table = con.execute(
        "SELECT context_id, tokens FROM contexts WHERE source_id = ? ORDER BY context_id", [source_id]
    ).to_arrow_table()
    tokens = table.column("tokens").combine_chunks()
    encoded = pc.dictionary_encode(tokens.flatten())
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    vocab = encoded.dictionary.to_pylist()
    offsets = tokens.offsets.to_numpy().astype(np.int64)
    offsets = offsets - offsets[0]
    return SourceTokens(
        context_ids=table.column("context_id").to_numpy().astype(np.int64),
        offsets=offsets,
        codes=codes,
        vocab=vocab,
        token_counts=np.bincount(codes, minlength=len(vocab)),
    )


def feature_context_maxes(
    con: duckdb.DuckDBPyConnection, source_id: int, feature: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(context_id, max value, position of the max) of every context where the feature fires, by context_id."""
    result = con.execute(
        """
        SELECT context_id, max_value, max_pos FROM feature_context_max
        WHERE source_id = ? AND feature = ? ORDER BY context_id
        """,
        [source_id, feature],
    ).fetchnumpy()
    return (
        np.asarray(result["context_id"], dtype=np.int64),
        np.asarray(result["max_value"], dtype=np.float32),
        np.asarray(result["max_pos"], dtype=np.int64),
    )


def feature_activations(
    con: duckdb.DuckDBPyConnection, source_id: int, feature: int, context_ids: list[int]
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(context_id, pos, value) of the feature's non-zero activations inside the given contexts."""
    if not context_ids:
        empty = np.array([], dtype=np.int64)
        return empty, empty, np.array([], dtype=np.float32)
    result = con.execute(
        """
        SELECT context_id, pos, value FROM activations
        WHERE source_id = $1 AND feature = $2 AND context_id BETWEEN $3 AND $4
          AND context_id IN (SELECT unnest($5::BIGINT[]))
        """,
        [source_id, feature, min(context_ids), max(context_ids), context_ids],
    ).fetchnumpy()
    return (
        np.asarray(result["context_id"], dtype=np.int64),
        np.asarray(result["pos"], dtype=np.int64),
        np.asarray(result["value"], dtype=np.float32),
    )


def token_posting_contexts(con: duckdb.DuckDBPyConnection, source_id: int, tokens: list[str]) -> dict[str, list[int]]:
    """A capped, deterministic set of contexts holding each token (see finalize_source)."""
    if not tokens:
        return {}
    rows = con.execute(
        """
        SELECT token, list(context_id ORDER BY context_id) FROM token_postings
        WHERE source_id = $1 AND token IN (SELECT unnest($2::VARCHAR[]))
        GROUP BY token
        """,
        [source_id, tokens],
    ).fetchall()
    return {token: ids for token, ids in rows}
