"""The reads the sampler makes, each bounded to one (source, feature) or to a source loaded once.

Per-feature reads filter on (source_id, feature), which the sorted `activations` and `feature_context_max`
tables answer from a few row groups (zonemaps). Parameters are cast to the column types: an uncast
parameter costs DuckDB about twice the CPU on these point reads (measured on a 100M-row store). Context tokens are loaded once per source into a
dictionary-encoded array, because fetching a few hundred scattered list-of-string rows from DuckDB costs a
scan of the whole column each time; token frequencies (as in token_stats) and the contexts holding a token
(an uncapped token_postings) then come from that array without a query.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import duckdb
import numpy as np
import pyarrow.compute as pc


@dataclass
class SourceTokens:
    """Every context of a source: row r holds tokens vocab[codes[offsets[r]:offsets[r + 1]]].

    norm_codes maps each token to its lowercased, whitespace-stripped form, for near-duplicate keys.
    """

    context_ids: np.ndarray  # int64, sorted
    offsets: np.ndarray  # int64, len(context_ids) + 1
    codes: np.ndarray  # int32 indices into vocab
    norm_codes: np.ndarray  # int32, same shape as codes
    vocab: np.ndarray  # object array of str
    token_counts: np.ndarray  # occurrences of each vocab entry in the source
    text_hash: np.ndarray  # uint64 per context: a hash of its normalised token sequence
    _by_code: np.ndarray | None = field(default=None, repr=False)  # token positions grouped by code, built lazily
    _code_start: np.ndarray | None = field(default=None, repr=False)
    _row_of_token: np.ndarray | None = field(default=None, repr=False)

    @property
    def n_tokens(self) -> int:
        return int(self.offsets[-1])

    def rows(self, context_ids) -> np.ndarray:
        return np.searchsorted(self.context_ids, context_ids)

    def tokens_of(self, context_ids: list[int]) -> dict[int, list[str]]:
        """The token strings of each of the given contexts."""
        rows = self.rows(np.asarray(context_ids, dtype=np.int64))
        starts, lengths = self.offsets[rows], self.offsets[rows + 1] - self.offsets[rows]
        first = np.repeat(np.cumsum(lengths) - lengths, lengths)
        words = self.vocab[self.codes[np.repeat(starts, lengths) + np.arange(int(lengths.sum())) - first]].tolist()
        ends = np.cumsum(lengths).tolist()
        return {c: words[e - n : e] for c, n, e in zip(list(context_ids), lengths.tolist(), ends)}

    def window_hash(self, rows: np.ndarray, max_pos: np.ndarray, half: int) -> np.ndarray:
        """uint64 hash of the normalised tokens [max_pos - half, max_pos + half) of each row, clipped to the context."""
        starts = self.offsets[rows]
        lengths = self.offsets[rows + 1] - starts
        pos = np.maximum(0, max_pos - half)[:, None] + np.arange(2 * half)
        inside = pos < np.minimum(lengths, max_pos + half)[:, None]
        codes = self.norm_codes[starts[:, None] + np.minimum(pos, lengths[:, None] - 1)].astype(np.uint64) + np.uint64(1)
        return (np.where(inside, codes, np.uint64(0)) * _HASH_WEIGHTS[: 2 * half]).sum(axis=1, dtype=np.uint64)

    def contexts_holding(self, codes: list[int], cap: int, rng: np.random.Generator) -> np.ndarray:
        """Sorted ids of contexts holding any of the tokens: for each token, all of them or those of `cap` of
        its occurrences drawn at random."""
        if self._by_code is None:
            self._by_code = np.argsort(self.codes, kind="stable")
            self._code_start = np.concatenate([[0], np.cumsum(self.token_counts)])
            self._row_of_token = np.repeat(np.arange(len(self.context_ids), dtype=np.int32), np.diff(self.offsets))
        picked = []
        for code in codes:
            first, end = self._code_start[code], self._code_start[code + 1]
            if end - first > cap:
                picked.append(self._by_code[first + rng.choice(end - first, cap, replace=False)])
            else:
                picked.append(self._by_code[first:end])
        if not picked:
            return self.context_ids[:0]
        return self.context_ids[np.unique(self._row_of_token[np.concatenate(picked)])]


_HASH_WEIGHTS = np.random.default_rng(0x5EED).integers(0, 2**63, size=32768, dtype=np.uint64) * np.uint64(2) + np.uint64(1)


def _context_hashes(norm_codes: np.ndarray, offsets: np.ndarray, block: int = 65536) -> np.ndarray:
    """A uint64 polynomial-style hash of each context's normalised codes, computed in blocks of contexts."""
    n = len(offsets) - 1
    out = np.zeros(n, dtype=np.uint64)
    for first in range(0, n, block):
        last = min(first + block, n)
        a, b = offsets[first], offsets[last]
        if a == b:
            continue
        lengths = np.diff(offsets[first : last + 1])
        pos_in_context = np.arange(a, b) - np.repeat(offsets[first:last], lengths)
        values = (norm_codes[a:b].astype(np.uint64) + np.uint64(1)) * _HASH_WEIGHTS[pos_in_context]
        nonempty = lengths > 0
        out[first:last][nonempty] = np.add.reduceat(values, (offsets[first:last] - a)[nonempty], dtype=np.uint64)
    return out


def load_source_tokens(con: duckdb.DuckDBPyConnection, source_id: int) -> SourceTokens:
    table = con.execute(
        "SELECT context_id, tokens FROM contexts WHERE source_id = ? ORDER BY context_id", [source_id]
    ).to_arrow_table()
    tokens = table.column("tokens").combine_chunks()
    encoded = pc.dictionary_encode(tokens.flatten())
    codes = encoded.indices.to_numpy(zero_copy_only=False).astype(np.int32, copy=False)
    vocab = np.array(encoded.dictionary.to_pylist(), dtype=object)
    _, norm_of_vocab = np.unique(np.array(["".join(t.lower().split()) for t in vocab], dtype=object), return_inverse=True)
    offsets = tokens.offsets.to_numpy().astype(np.int64)
    offsets -= offsets[0]
    norm_codes = norm_of_vocab.astype(np.int32)[codes] if len(vocab) else codes
    return SourceTokens(
        context_ids=table.column("context_id").to_numpy().astype(np.int64),
        offsets=offsets,
        codes=codes,
        norm_codes=norm_codes,
        vocab=vocab,
        token_counts=np.bincount(codes, minlength=len(vocab)),
        text_hash=_context_hashes(norm_codes, offsets),
    )


def feature_token_counts(con: duckdb.DuckDBPyConnection, source_id: int) -> np.ndarray:
    """Active-token count of every feature of the source, indexed by feature (0 for silent ones)."""
    result = con.execute(
        "SELECT feature, n_active_tokens FROM feature_stats WHERE source_id = ?", [source_id]
    ).fetchnumpy()
    features = np.asarray(result["feature"], dtype=np.int64)
    counts = np.zeros(int(features.max()) + 1 if len(features) else 0, dtype=np.int64)
    counts[features] = result["n_active_tokens"]
    return counts


def feature_rows(con: duckdb.DuckDBPyConnection, source_id: int, feature: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(context_id, pos, value) of all the feature's activations, ordered by context and position."""
    result = con.execute(
        "SELECT context_id, pos, value FROM activations WHERE source_id = ?::INTEGER AND feature = ?::INTEGER",
        [source_id, feature],
    ).fetchnumpy()
    ctx = np.asarray(result["context_id"], dtype=np.int64)
    pos = np.asarray(result["pos"], dtype=np.int64)
    value = np.asarray(result["value"], dtype=np.float32)
    key = ctx * 65536 + pos  # pos < 2**15 (SMALLINT)
    if len(key) > 1 and not (key[1:] > key[:-1]).all():  # the scan usually returns them in storage order already
        order = np.argsort(key, kind="stable")
        ctx, pos, value = ctx[order], pos[order], value[order]
    return ctx, pos, value


def feature_context_maxes(
    con: duckdb.DuckDBPyConnection, source_id: int, feature: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """(context_id, max value, position of the max) of every context where the feature fires, by context_id."""
    result = con.execute(
        """
        SELECT context_id, max_value, max_pos FROM feature_context_max
        WHERE source_id = ?::INTEGER AND feature = ?::INTEGER ORDER BY context_id
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
        WHERE source_id = $1::INTEGER AND feature = $2::INTEGER
          AND context_id BETWEEN $3::BIGINT AND $4::BIGINT AND context_id = ANY($5::BIGINT[])
        """,
        [source_id, feature, min(context_ids), max(context_ids), context_ids],
    ).fetchnumpy()
    return (
        np.asarray(result["context_id"], dtype=np.int64),
        np.asarray(result["pos"], dtype=np.int64),
        np.asarray(result["value"], dtype=np.float32),
    )
