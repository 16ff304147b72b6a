"""All SQL of the feature catalog: label write-back, label history, reviews, search and exchange reads.

Every value a user supplies (query text, filters, labels) is passed as a bound parameter, never spliced
into SQL text. The only identifiers spliced in are fixed names chosen by this module.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Sequence

import duckdb
import numpy as np

from autointerp import ranking
from autointerp.embeddings import EMBEDDING_DIM
from autointerp.errors import AutointerpError
from autointerp.records import Explanation, Score
from autointerp.store.bulk import insert_rows


MAX_LISTED_IDS = 2_000  # more ids than this are matched by one scan: a lookup per id costs more


def _id_list(ids: Sequence[int], prefix: str) -> tuple[str, dict[str, Any]]:
    """What goes inside `IN (...)`: `$p0, $p1, ...` placeholders and their values, which DuckDB answers
    from the primary-key index (an IN over an unnested list parameter scans the whole table); for more than
    MAX_LISTED_IDS ids, that unnested list (one scan and a hash join beat that many lookups)."""
    if len(ids) > MAX_LISTED_IDS:
        return f"SELECT unnest(${prefix}_all::BIGINT[])", {f"{prefix}_all": [int(v) for v in ids]}
    names = [f"{prefix}{i}" for i in range(len(ids))]
    return ", ".join("$" + n for n in names) or "NULL", {n: int(v) for n, v in zip(names, ids)}


def _json(value: Any) -> str | None:
    return None if value is None else json.dumps(value, sort_keys=True, default=str)


def new_explanation_ids(con: duckdb.DuckDBPyConnection, n: int) -> list[int]:
    """n fresh explanation ids from the table's sequence, ascending: rows written together get the ids that
    inserting them one at a time, in order, would have given them."""
    if n <= 0:
        return []
    return sorted(int(r[0]) for r in con.execute("SELECT nextval('explanation_id_seq') FROM range(?)", [n]).fetchall())


@dataclass
class ExplanationRow:
    """An explanation to insert under an id taken from `new_explanation_ids`."""

    explanation_id: int
    source_id: int
    explanation: Explanation
    sampling_config: dict | None
    seed: int | None
    run_id: str | None
    config_hash: str | None


def insert_explanations(con: duckdb.DuckDBPyConnection, rows: Sequence[ExplanationRow]) -> None:
    insert_rows(
        con,
        "explanations",
        ("explanation_id", "source_id", "feature", "label", "author", "explainer_model", "prompt_name", "prompt_hash",
         "sampling_config", "seed", "run_id", "config_hash", "details"),
        [
            [r.explanation_id, r.source_id, r.explanation.feature, r.explanation.label, r.explanation.author,
             r.explanation.explainer_model, r.explanation.prompt_name, r.explanation.prompt_hash,
             _json(r.sampling_config), r.seed, r.run_id, r.config_hash, _json(r.explanation.details or None)]
            for r in rows
        ],
    )


def insert_scores(
    con: duckdb.DuckDBPyConnection, scored: Sequence[tuple[int, Sequence[Score], str | None]]
) -> None:
    """The scores of several explanations: (explanation_id, scores, run_id) each, rows in that order."""
    insert_rows(
        con,
        "scores",
        ("explanation_id", "scorer", "metric", "subset", "split", "value", "ci_low", "ci_high", "n", "scorer_model",
         "details", "run_id", "imported"),
        [
            [explanation_id, s.scorer, s.metric, s.subset, s.split, s.value, s.ci_low, s.ci_high, s.n, s.scorer_model,
             _json(s.details or None), run_id, s.imported]
            for explanation_id, scores, run_id in scored
            for s in scores
        ],
    )


def insert_label_embeddings(
    con: duckdb.DuckDBPyConnection, model: str, vectors: Sequence[tuple[int, Sequence[float]]]
) -> None:
    """(explanation_id, vector) rows of new explanations (no row of theirs is stored yet)."""
    insert_rows(
        con,
        "label_embeddings",
        ("explanation_id", "model", "vector"),
        # lists of Python floats bind in about half the CPU of numpy rows; float32 -> float -> FLOAT is exact
        [[explanation_id, model, np.asarray(vector, dtype=np.float32).tolist()] for explanation_id, vector in vectors],
    )


# ---- reviews ---------------------------------------------------------------------------------------

def _latest_review(only: str = "") -> str:
    """The latest review of each explanation, which decides its review state (of the explanations matching
    the condition `only`, when given)."""
    return f"""
    SELECT explanation_id, arg_max(verdict, review_id) AS verdict, max(created_at) AS reviewed_at,
           max(review_id) FILTER (WHERE verdict = 'accept') AS accept_id
    FROM reviews {f"WHERE {only}" if only else ""} GROUP BY explanation_id
"""


_LATEST_REVIEW = _latest_review()

_REVIEW_STATE = """
    CASE r.verdict WHEN 'accept' THEN 'accepted' WHEN 'reject' THEN 'rejected' WHEN 'edit' THEN 'edited'
                   ELSE 'unreviewed' END
"""


def insert_review(
    con: duckdb.DuckDBPyConnection,
    explanation_id: int,
    verdict: str,
    edited_label: str | None,
    note: str | None,
    reviewer: str | None = None,
) -> tuple[int, Any]:
    row = con.execute(
        """
        INSERT INTO reviews (explanation_id, verdict, edited_label, note, reviewer) VALUES (?, ?, ?, ?, ?)
        RETURNING review_id, created_at
        """,
        [explanation_id, verdict, edited_label, note, reviewer],
    ).fetchone()
    return int(row[0]), row[1]


def reviews_of(con: duckdb.DuckDBPyConnection, explanation_ids: Sequence[int]) -> list[tuple]:
    """(review_id, explanation_id, verdict, edited_label, note, created_at, reviewer), oldest first."""
    id_list, params = _id_list(explanation_ids, "e")
    return con.execute(
        f"""
        SELECT review_id, explanation_id, verdict, edited_label, note, created_at, reviewer FROM reviews
        WHERE explanation_id IN ({id_list}) ORDER BY review_id
        """,
        params,
    ).fetchall()


# ---- explanations, scores, labels ----------------------------------------------------------------------

EXPLANATION_FIELDS = (
    "explanation_id", "source", "feature", "label", "author", "explainer_model", "prompt_name", "prompt_hash",
    "sampling_config", "seed", "run_id", "config_hash", "details", "created_at", "review_state",
)
_EXPLANATION_SELECT = f"""
    SELECT e.explanation_id, s.name, e.feature, e.label, e.author, e.explainer_model, e.prompt_name, e.prompt_hash,
           e.sampling_config, e.seed, e.run_id, e.config_hash, e.details, e.created_at, {_REVIEW_STATE}
    FROM explanations e JOIN sources s USING (source_id)
    LEFT JOIN ({_LATEST_REVIEW}) r USING (explanation_id)
"""


def explanation_rows(con: duckdb.DuckDBPyConnection, explanation_ids: Sequence[int]) -> list[tuple]:
    """Rows in EXPLANATION_FIELDS order (JSON columns as text)."""
    id_list, params = _id_list(explanation_ids, "e")
    return con.execute(
        f"{_EXPLANATION_SELECT} WHERE e.explanation_id IN ({id_list}) ORDER BY e.explanation_id", params
    ).fetchall()


def feature_explanation_rows(con: duckdb.DuckDBPyConnection, source_id: int, feature: int) -> list[tuple]:
    """The feature's whole label history, newest first."""
    return con.execute(
        f"{_EXPLANATION_SELECT} WHERE e.source_id = ? AND e.feature = ? ORDER BY e.explanation_id DESC",
        [source_id, feature],
    ).fetchall()


SCORE_FIELDS = ("explanation_id", "scorer", "metric", "subset", "split", "value", "ci_low", "ci_high", "n",
                "scorer_model", "details", "run_id", "imported")


def scores_of(con: duckdb.DuckDBPyConnection, explanation_ids: Sequence[int], details: bool = True) -> list[tuple]:
    """Score rows in SCORE_FIELDS order; without `details`, their details hold only `n_unparsed` (what a
    score's reliability needs), not what a scorer kept beside (continuations, per-quantile values...)."""
    id_list, params = _id_list(explanation_ids, "e")
    columns = ", ".join(
        f if details or f != "details" else f"json_object('n_unparsed', {_N_UNPARSED})::VARCHAR AS details"
        for f in SCORE_FIELDS
    )
    return con.execute(
        f"""
        SELECT {columns} FROM scores
        WHERE explanation_id IN ({id_list}) ORDER BY explanation_id, scorer, metric, subset, score_id
        """,
        params,
    ).fetchall()


def scorer_metrics(con: duckdb.DuckDBPyConnection) -> list[tuple[str, str]]:
    """(scorer, metric) pairs present on the test split, subset "all"."""
    return con.execute(
        "SELECT DISTINCT scorer, metric FROM scores WHERE subset = 'all' AND split = 'test' ORDER BY scorer, metric"
    ).fetchall()


# A score row that may rank labels: the SQL side of `autointerp.ranking.unreliable_reason`.
_N_UNPARSED = "coalesce(TRY_CAST(details->>'$.n_unparsed' AS BIGINT), 0)"
_RELIABLE = f"""
    NOT coalesce(imported, false) AND value IS NOT NULL AND NOT isnan(value) AND n >= $min_n
    AND {_N_UNPARSED} <= $max_unparsed * (n + {_N_UNPARSED})
"""


def _best_ctes(labels: str, only: str, named: str) -> str:
    """CTEs ending in `best`: one row per feature with its best label, by the rule of `autointerp.ranking`
    (bound parameters: $min_n, $max_unparsed, $preferred, $unranked, and $scorer/$metric when `named`; the
    $unranked scorers are compared only when named).
    `labels`: a SELECT of (explanation_id, source_id, feature), the labels that compete; `only`: a condition
    on explanation_id narrowing the reviews and scores read to theirs ("": every label competes). Their
    scores are read by id alone (MATERIALIZED): DuckDB looks ids up in the index on scores(explanation_id)
    only when they are a scan's sole filter, and scans every score otherwise. Tiers: 0 accepted,
    1 unreviewed, 2 rejected or edited; only a feature's lowest tier competes."""
    keyed = f"keyed_scores AS MATERIALIZED (SELECT * FROM scores WHERE {only})," if only else ""
    return f"""
        {keyed}
        lab AS (
            SELECT e.explanation_id, e.source_id, e.feature,
                   CASE WHEN r.verdict = 'accept' THEN 0 WHEN r.verdict IN ('reject', 'edit') THEN 2 ELSE 1 END AS tier,
                   CASE WHEN r.verdict = 'accept' THEN r.accept_id END AS accept_id
            FROM ({labels}) e
            LEFT JOIN ({_latest_review(only)}) r USING (explanation_id)
        ),
        competing AS (SELECT * FROM lab QUALIFY tier = min(tier) OVER (PARTITION BY source_id, feature)),
        reliable AS (
            SELECT explanation_id, scorer, metric, value, n FROM (
                SELECT * FROM {"keyed_scores" if only else "scores"} WHERE subset = 'all' AND split = 'test' {named}
                QUALIFY row_number() OVER (PARTITION BY explanation_id, scorer, metric ORDER BY score_id DESC) = 1
            ) WHERE {_RELIABLE}
        ),
        shared AS (
            SELECT c.source_id, c.feature, s.scorer, s.metric, count(*) AS n_ranked
            FROM competing c JOIN reliable s USING (explanation_id)
            WHERE NOT list_contains($unranked, s.scorer) {"OR s.scorer = $scorer" if named else ""}
            GROUP BY c.source_id, c.feature, s.scorer, s.metric
            QUALIFY row_number() OVER (
                PARTITION BY c.source_id, c.feature
                ORDER BY count(*) DESC, coalesce(list_position($preferred, s.scorer || '.' || s.metric), 1000000),
                         s.scorer, s.metric
            ) = 1
        ),
        best AS (
            SELECT c.source_id, c.feature, c.explanation_id, c.tier, h.scorer, h.metric, s.value, s.n,
                   coalesce(h.n_ranked, 0) AS n_ranked,
                   count(*) OVER (PARTITION BY c.source_id, c.feature) AS n_competing
            FROM competing c
            LEFT JOIN shared h USING (source_id, feature)
            LEFT JOIN reliable s ON s.explanation_id = c.explanation_id AND s.scorer = h.scorer AND s.metric = h.metric
            QUALIFY row_number() OVER (
                PARTITION BY c.source_id, c.feature
                ORDER BY c.accept_id DESC NULLS LAST, s.value DESC NULLS LAST, c.explanation_id DESC
            ) = 1
        )"""


def _competing(explanation_ids: Sequence[int] | None) -> tuple[str, str, dict[str, Any]]:
    """`_best_ctes`' labels and `only` for the labels `explanation_ids` (None: every label), and their
    parameters: a few are looked up by id in the labels and in the scores, many are matched by one scan."""
    if explanation_ids is None:
        return "SELECT explanation_id, source_id, feature FROM explanations WHERE true", "", {}
    id_list, params = _id_list(explanation_ids, "e")
    only = f"explanation_id IN ({id_list})"
    return f"SELECT explanation_id, source_id, feature FROM explanations WHERE {only}", only, params


BEST_FIELDS = ("source_id", "feature", "explanation_id", "tier", "scorer", "metric", "value", "n", "n_ranked", "n_competing")


def best_explanation_rows(
    con: duckdb.DuckDBPyConnection,
    rule: dict[str, Any],
    scorer: str | None = None,
    metric: str | None = None,
    *,
    explanation_ids: Sequence[int] | None = None,
    source_id: int | None = None,
    limit: int | None = None,
    offset: int = 0,
) -> list[tuple]:
    """Each feature's best label among the given labels or all of them (of one source), in BEST_FIELDS order,
    by source and feature. `rule`: `autointerp.ranking.sql_parameters()`; scorer and metric, when given,
    are the only score compared."""
    labels, only, params = _competing(explanation_ids)
    named = "" if scorer is None else "AND scorer = $scorer AND metric = $metric"
    if scorer is not None:
        params.update(scorer=scorer, metric=metric)
    labels += " AND ($source_id IS NULL OR source_id = $source_id)"
    return con.execute(
        f"""
        WITH {_best_ctes(labels, only, named)}
        SELECT {', '.join(BEST_FIELDS)} FROM best
        ORDER BY source_id, feature
        LIMIT $limit OFFSET $offset
        """,
        {**params, **rule, "source_id": source_id, "limit": limit, "offset": offset},
    ).fetchall()


# ---- the maintained best label of each feature (table feature_best) -----------------------------------

def _keys_table(keys: Sequence[tuple[int, int]]) -> tuple[str, dict[str, list[int]]]:
    """A SELECT of (source_id, feature) over bound lists, and its parameters."""
    return (
        "SELECT unnest($key_sources::INTEGER[]) AS source_id, unnest($key_features::INTEGER[]) AS feature",
        {"key_sources": [int(k[0]) for k in keys], "key_features": [int(k[1]) for k in keys]},
    )


def _labels_of_features(
    con: duckdb.DuckDBPyConnection, keys: Sequence[tuple[int, int]], features: str, params: dict[str, Any]
) -> list[int]:
    """Ids of every label of the features `keys`, ascending. Their feature numbers (`features`, an `_id_list`
    of them, and its `params`) are looked up in the index on explanations(feature) (MATERIALIZED: DuckDB
    uses an index only for a scan's sole filter), then narrowed to the keys' sources."""
    key_rows, key_params = _keys_table(keys)
    return con.execute(
        f"""
        WITH found AS MATERIALIZED (
            SELECT explanation_id, source_id, feature FROM explanations WHERE feature IN ({features})
        )
        SELECT explanation_id FROM found JOIN ({key_rows}) k USING (source_id, feature) ORDER BY explanation_id
        """,
        {**params, **key_params},
    ).fetchnumpy()["explanation_id"].tolist()


def refresh_best(con: duckdb.DuckDBPyConnection, keys: Sequence[tuple[int, int]] | None = None) -> None:
    """Recompute the stored best label (table `feature_best`) of the features `keys`, (source_id, feature)
    pairs, or of every feature when None. The one hook that every write of labels, scores or reviews calls
    in its own transaction (a job's per-feature and batched writes, reviews, deletes, bulk loads); it ranks
    with `_best_ctes`, the same SQL as every ad hoc ranking.
    For keys it reads only their labels, those labels' scores and reviews, and the stored rows of their
    feature numbers (through indexes on `feature`: DuckDB looks up no composite key), so that a write costs
    what it writes, not the size of the catalog. The rows of other sources' features with the same numbers
    are deleted with them and put back as they were."""
    if keys is None:
        con.execute("DELETE FROM feature_best")
        ids = None
    else:
        keys = sorted({(int(s), int(f)) for s, f in keys})
        if not keys:
            return
        features, params = _id_list(sorted({f for _, f in keys}), "f")
        ids = _labels_of_features(con, keys, features, params)
        removed = con.execute(
            f"DELETE FROM feature_best WHERE feature IN ({features}) RETURNING {', '.join(BEST_FIELDS)}", params
        ).fetchall()
        wanted = set(keys)
        insert_rows(con, "feature_best", BEST_FIELDS, [r for r in removed if (r[0], r[1]) not in wanted])
        if not ids:
            return
    labels, only, params = _competing(ids)
    con.execute(
        f"""
        INSERT INTO feature_best ({', '.join(BEST_FIELDS)})
        WITH {_best_ctes(labels, only, "")}
        SELECT {', '.join(BEST_FIELDS)} FROM best ORDER BY source_id, feature
        """,
        {**params, **ranking.sql_parameters()},
    )


def features_of_labels(con: duckdb.DuckDBPyConnection, explanation_ids: Sequence[int]) -> list[tuple[int, int]]:
    """(source_id, feature) of the labels `explanation_ids`."""
    id_list, params = _id_list(explanation_ids, "e")
    return con.execute(
        f"SELECT DISTINCT source_id, feature FROM explanations WHERE explanation_id IN ({id_list})", params
    ).fetchall()


def stored_best_rows(
    con: duckdb.DuckDBPyConnection, *, source_id: int | None = None, feature: int | None = None,
    limit: int | None = None, offset: int = 0,
) -> list[tuple]:
    """Rows of `feature_best` in BEST_FIELDS order, by source and feature (of one source, one feature)."""
    return con.execute(
        f"""
        SELECT {', '.join(BEST_FIELDS)} FROM feature_best
        WHERE ($source_id IS NULL OR source_id = $source_id) AND ($feature IS NULL OR feature = $feature)
        ORDER BY source_id, feature LIMIT $limit OFFSET $offset
        """,
        {"source_id": source_id, "feature": feature, "limit": limit, "offset": offset},
    ).fetchall()


# ---- features, contexts, runs ------------------------------------------------------------------------


def feature_context_picks(
    con: duckdb.DuckDBPyConnection, source_id: int, feature: int, n_top: int, n_bands: int, per_band: int,
    n_random: int, seed: int,
) -> list[tuple[str, int, float, int | None]]:
    """(kind, context_id, max activation, band) of the contexts a feature page shows: the top n_top; a
    deterministic per_band from each of n_bands equal-count activation bands (band 1 lowest); and n_random
    pseudo-random contexts of the source (max 0.0 where the feature is silent)."""
    return con.execute(
        """
        WITH fc AS (
            SELECT context_id, max_value FROM feature_context_max WHERE source_id = $source AND feature = $feature
        ),
        top AS (SELECT 'top' AS kind, context_id, max_value, NULL::BIGINT AS band FROM fc
                ORDER BY max_value DESC, context_id LIMIT $n_top),
        banded AS (SELECT context_id, max_value, ntile($bands) OVER (ORDER BY max_value, context_id) AS band FROM fc),
        quantile AS (
            SELECT 'quantile' AS kind, context_id, max_value, band FROM banded
            QUALIFY row_number() OVER (PARTITION BY band ORDER BY hash(context_id), context_id) <= $per_band
        ),
        random AS (
            SELECT 'random' AS kind, c.context_id, coalesce(fc.max_value, 0.0) AS max_value, NULL::BIGINT AS band
            FROM (SELECT context_id FROM contexts WHERE source_id = $source
                  ORDER BY hash(context_id + $seed), context_id LIMIT $n_random) c
            LEFT JOIN fc USING (context_id)
        )
        SELECT kind, context_id, max_value, band
        FROM (SELECT *, 0 AS part FROM top UNION ALL SELECT *, 1 FROM quantile UNION ALL SELECT *, 2 FROM random)
        ORDER BY part, band DESC NULLS LAST, max_value DESC, context_id
        """,
        {"source": source_id, "feature": feature, "n_top": n_top, "bands": n_bands, "per_band": per_band,
         "n_random": n_random, "seed": seed},
    ).fetchall()


def contexts_with_activations(
    con: duckdb.DuckDBPyConnection, source_id: int, feature: int, context_ids: Sequence[int]
) -> dict[int, tuple[list[str], list[int], list[float]]]:
    """context_id -> (tokens, positions where the feature fires, its values there). Two plain reads joined
    here: grouping the activations into lists in SQL (an ordered aggregate keyed by the token list) cost
    most of a feature page's time."""
    id_list, params = _id_list(context_ids, "c")
    params["source"] = source_id
    out: dict[int, tuple[list[str], list[int], list[float]]] = {
        int(c): (list(t), [], []) for c, t in con.execute(
            f"SELECT context_id, tokens FROM contexts WHERE source_id = $source AND context_id IN ({id_list})", params
        ).fetchall()
    }
    rows = con.execute(
        f"""
        SELECT context_id, pos, value FROM activations
        WHERE source_id = $source AND feature = $feature AND context_id IN ({id_list}) ORDER BY context_id, pos
        """,
        {**params, "feature": feature},
    ).fetchall()
    for c, pos, value in rows:
        if c in out:
            out[c][1].append(int(pos))
            out[c][2].append(float(value))
    return out


def run_explanation_count(con: duckdb.DuckDBPyConnection, run_id: str) -> int:
    return int(con.execute("SELECT count(*) FROM explanations WHERE run_id = ?", [run_id]).fetchone()[0])


def run_features(con: duckdb.DuckDBPyConnection, run_id: str, limit: int) -> list[tuple[str, int, int, str]]:
    """(source, feature, explanation_id, label) written by a run, newest first."""
    return con.execute(
        """
        SELECT s.name, e.feature, e.explanation_id, e.label FROM explanations e JOIN sources s USING (source_id)
        WHERE e.run_id = ? ORDER BY e.explanation_id DESC LIMIT ?
        """,
        [run_id, limit],
    ).fetchall()


# ---- search ------------------------------------------------------------------------------------------


def index_version(con: duckdb.DuckDBPyConnection, model: str) -> tuple[int, ...]:
    """(count, highest id, sum of ids) of labels, then of `model`'s label embeddings: changes whenever a label
    or embedding is added or deleted. Cheap: aggregates over one id column each, no text."""
    row = con.execute(
        """
        SELECT (SELECT count(*) FROM explanations), (SELECT coalesce(max(explanation_id), 0) FROM explanations),
               (SELECT coalesce(sum(explanation_id), 0) FROM explanations),
               count(*), coalesce(max(explanation_id), 0), coalesce(sum(explanation_id), 0)
        FROM label_embeddings WHERE model = ?
        """,
        [model],
    ).fetchone()
    return tuple(int(v) for v in row)


def database_path(con: duckdb.DuckDBPyConnection) -> Path | None:
    """The file of the connection's database (None when in memory)."""
    row = con.execute("SELECT path FROM duckdb_databases() WHERE database_name = current_database()").fetchone()
    return Path(row[0]) if row and row[0] else None


def label_texts(con: duckdb.DuckDBPyConnection):
    """An Arrow table of (explanation_id, source_id, feature, label) for every label."""
    return con.execute(
        "SELECT explanation_id, source_id, feature, label FROM explanations ORDER BY explanation_id"
    ).to_arrow_table()


def source_ids_matching(
    con: duckdb.DuckDBPyConnection, name: str | None, model: str | None, layer: int | None
) -> list[int]:
    return [
        r[0]
        for r in con.execute(
            """
            SELECT source_id FROM sources
            WHERE ($name IS NULL OR name = $name) AND ($model IS NULL OR model = $model)
              AND ($layer IS NULL OR layer = $layer)
            """,
            {"name": name, "model": model, "layer": layer},
        ).fetchall()
    ]


def label_vector_batches(
    con: duckdb.DuckDBPyConnection, model: str, batch_rows: int, *, after: int = -1, ids: Sequence[int] | None = None
):
    """Arrow record batches of (explanation_id, vector) of the labels embedded with `model`: those with a
    higher id than `after` (in no particular order: sorting every vector of a large catalog would hold them
    all in memory at once), or only those of `ids`."""
    if ids is None:
        return con.execute(
            "SELECT explanation_id, vector FROM label_embeddings WHERE model = ? AND explanation_id > ?",
            [model, after],
        ).to_arrow_reader(batch_rows)
    return con.execute(
        """
        SELECT explanation_id, vector FROM label_embeddings
        WHERE model = $model AND explanation_id IN (SELECT unnest($ids::BIGINT[])) ORDER BY explanation_id
        """,
        {"model": model, "ids": [int(i) for i in ids]},
    ).to_arrow_reader(batch_rows)


def label_texts_after(con: duckdb.DuckDBPyConnection, after_id: int):
    """Arrow table of (explanation_id, source_id, feature, label) of labels with a higher id than `after_id`."""
    return con.execute(
        "SELECT explanation_id, source_id, feature, label FROM explanations WHERE explanation_id > ? "
        "ORDER BY explanation_id",
        [after_id],
    ).to_arrow_table()


def label_texts_of(con: duckdb.DuckDBPyConnection, ids: Sequence[int]):
    """Arrow table of (explanation_id, source_id, feature, label) of the labels `ids`."""
    return con.execute(
        "SELECT explanation_id, source_id, feature, label FROM explanations "
        "WHERE explanation_id IN (SELECT unnest($ids::BIGINT[])) ORDER BY explanation_id",
        {"ids": [int(i) for i in ids]},
    ).to_arrow_table()


def all_label_ids(con: duckdb.DuckDBPyConnection) -> np.ndarray:
    """Every explanation id, ascending."""
    return con.execute("SELECT explanation_id FROM explanations ORDER BY 1").fetchnumpy()["explanation_id"]


def embedded_label_ids(con: duckdb.DuckDBPyConnection, model: str) -> np.ndarray:
    """Ids of the labels embedded with `model`, ascending."""
    return con.execute(
        "SELECT explanation_id FROM label_embeddings WHERE model = ? ORDER BY 1", [model]
    ).fetchnumpy()["explanation_id"]


_HIT_JOINS = f"""
        JOIN sources s ON s.source_id = e.source_id
        LEFT JOIN feature_stats fs ON fs.source_id = e.source_id AND fs.feature = e.feature
        LEFT JOIN ({_LATEST_REVIEW}) r ON r.explanation_id = e.explanation_id
"""
_HIT_FILTERS = f"""
          ($source IS NULL OR s.name = $source)
          AND ($model IS NULL OR s.model = $model)
          AND ($layer IS NULL OR s.layer = $layer)
          AND ($density_min IS NULL OR fs.density >= $density_min)
          AND ($density_max IS NULL OR fs.density <= $density_max)
          AND ($review IS NULL OR {_REVIEW_STATE} = $review)
"""
_HIT_COLUMNS = f"s.name, e.feature, e.label, e.author, {_REVIEW_STATE} AS review_state, fs.density, s.model, s.layer"


def _score_filter(min_score: tuple[str, str, float] | None, only: str, rule: dict[str, Any]) -> tuple[str, dict]:
    """The condition that a label's latest reliable score passes `min_score` (empty when none), and its
    parameters. Only when asked: DuckDB runs the lookup even when a `$scorer IS NULL OR ...` guard is true."""
    if min_score is None:
        return "", {}
    scorer, metric, threshold = min_score
    sql = f"""
          AND e.explanation_id IN (
                SELECT explanation_id FROM scores
                WHERE {only} scorer = $scorer AND metric = $metric AND subset = 'all' AND split = 'test'
                QUALIFY row_number() OVER (PARTITION BY explanation_id ORDER BY score_id DESC) = 1
                    AND value >= $threshold AND {_RELIABLE})"""
    params = {"scorer": scorer, "metric": metric, "threshold": threshold, "min_n": rule["min_n"],
              "max_unparsed": rule["max_unparsed"]}
    return sql, params


HIT_FILTERS = ("source", "model", "layer", "density_min", "density_max", "review")


def allowed_label_ids(
    con: duckdb.DuckDBPyConnection,
    *,
    rule: dict[str, Any],
    filters: dict[str, Any],
    min_score: tuple[str, str, float] | None,
) -> np.ndarray:
    """Ids of every label passing the filters (`filters`, `min_score` as in `filter_candidates`), ascending:
    the allowed set a filtered search ranks within."""
    score_filter, score_params = _score_filter(min_score, "", rule)
    return con.execute(
        f"""
        SELECT e.explanation_id FROM explanations e
        {_HIT_JOINS}
        WHERE {_HIT_FILTERS} {score_filter}
        ORDER BY 1
        """,
        {**score_params, **{k: filters.get(k) for k in HIT_FILTERS}},
    ).fetchnumpy()["explanation_id"]


def filter_candidates(
    con: duckdb.DuckDBPyConnection, explanation_ids: Sequence[int], scores: Sequence[float], *, limit: int, offset: int
) -> list[tuple]:
    """Rank candidates by score, one per feature (its best-ranked label), then page. The search index already
    applied every filter (its allowed-label set), so a page is short only when candidates run out.
    Rows: (explanation_id, score, source, feature, label, author, review_state, density, model, layer)."""
    id_list, params = _id_list(explanation_ids, "c")
    order = "c.score DESC, c.explanation_id"
    # MATERIALIZED: otherwise DuckDB may join `sources` first and scan every label instead of the index
    return con.execute(
        f"""
        WITH cand AS (SELECT unnest($ids::BIGINT[]) AS explanation_id, unnest($scores::DOUBLE[]) AS score),
             picked AS MATERIALIZED (SELECT * FROM explanations WHERE explanation_id IN ({id_list}))
        SELECT c.explanation_id, c.score, {_HIT_COLUMNS}
        FROM picked e
        JOIN cand c ON c.explanation_id = e.explanation_id
        {_HIT_JOINS}
        QUALIFY row_number() OVER (PARTITION BY e.source_id, e.feature ORDER BY {order}) = 1
        ORDER BY {order}
        LIMIT $limit OFFSET $offset
        """,
        {
            **params,
            "ids": [int(i) for i in explanation_ids], "scores": [float(x) for x in scores],
            "limit": limit, "offset": offset,
        },
    ).fetchall()


def list_feature_hits(
    con: duckdb.DuckDBPyConnection,
    *,
    rule: dict[str, Any],
    filters: dict[str, Any],
    min_score: tuple[str, str, float] | None,
    limit: int,
    offset: int,
) -> list[tuple]:
    """One page of labeled features with a label passing every filter, by source name and feature; each
    shown by its best label (`feature_best`) when that passes the filters, else by its newest passing label.
    Rows as `filter_candidates` gives them, score NULL."""
    score_filter, score_params = _score_filter(min_score, "", rule)
    if not score_filter and all(filters.get(k) is None for k in HIT_FILTERS):
        return hit_rows(con, listed_best_ids(con, limit, offset))  # the catalog's front page, at any depth
    params = {k: filters.get(k) for k in HIT_FILTERS}
    return con.execute(
        f"""
        WITH passing AS (
            SELECT e.explanation_id, e.source_id, e.feature FROM explanations e {_HIT_JOINS}
            WHERE {_HIT_FILTERS} {score_filter}
        ),
        page AS (
            SELECT p.source_id, p.feature FROM (SELECT DISTINCT source_id, feature FROM passing) p
            JOIN sources s USING (source_id)
            ORDER BY s.name, p.feature LIMIT $limit OFFSET $offset
        ),
        chosen AS (
            SELECT p.explanation_id FROM passing p JOIN page USING (source_id, feature)
            LEFT JOIN feature_best b USING (source_id, feature)
            QUALIFY row_number() OVER (
                PARTITION BY p.source_id, p.feature
                ORDER BY coalesce(b.explanation_id = p.explanation_id, false) DESC, p.explanation_id DESC
            ) = 1
        )
        SELECT e.explanation_id, NULL::DOUBLE AS score, {_HIT_COLUMNS}
        FROM chosen JOIN explanations e USING (explanation_id)
        {_HIT_JOINS}
        ORDER BY s.name, e.feature
        """,
        {**score_params, **params, "limit": limit, "offset": offset},
    ).fetchall()


LISTING_BLOCK_BITS = 12  # the listing counts features in blocks of 4,096 to find where a page starts


def listed_best_ids(con: duckdb.DuckDBPyConnection, limit: int, offset: int) -> list[int]:
    """The best labels of one page of every labeled feature, by source name and feature. An offset is found
    without sorting every feature: one scan counts the features per source and block of feature numbers,
    then only the blocks that hold the page are read, in order."""
    names = dict(con.execute("SELECT source_id, name FROM sources").fetchall())
    counts = sorted(
        con.execute(
            f"SELECT source_id, feature >> {LISTING_BLOCK_BITS} AS block, count(*) FROM feature_best GROUP BY ALL"
        ).fetchall(),
        key=lambda r: (names[r[0]], r[1]),
    )
    out: list[int] = []
    i, skip = 0, offset
    while i < len(counts) and len(out) < limit:
        source_id, block, n = counts[i]
        if skip >= n:
            i, skip = i + 1, skip - n
            continue
        j, covered = i, n  # blocks i..j of this source hold the rest of the page (or all the source has left)
        while covered < skip + limit - len(out) and j + 1 < len(counts) and counts[j + 1][0] == source_id:
            j, covered = j + 1, covered + counts[j + 1][2]
        rows = con.execute(
            """
            SELECT explanation_id FROM feature_best
            WHERE source_id = $source AND feature >= $low AND feature < $high
            ORDER BY feature LIMIT $limit OFFSET $skip
            """,
            {"source": source_id, "low": block << LISTING_BLOCK_BITS, "high": (counts[j][1] + 1) << LISTING_BLOCK_BITS,
             "limit": limit - len(out), "skip": skip},
        ).fetchall()
        out += [r[0] for r in rows]
        i, skip = j + 1, 0
    return out


def hit_rows(con: duckdb.DuckDBPyConnection, explanation_ids: Sequence[int]) -> list[tuple]:
    """Rows as `list_feature_hits` gives them for the labels `explanation_ids`, by source name and feature."""
    id_list, params = _id_list(explanation_ids, "e")
    return con.execute(
        f"""
        SELECT e.explanation_id, NULL::DOUBLE AS score, {_HIT_COLUMNS} FROM explanations e
        {_HIT_JOINS}
        WHERE e.explanation_id IN ({id_list})
        ORDER BY s.name, e.feature
        """,
        params,
    ).fetchall()


# ---- the full-text index (DuckDB's fts extension, in an in-memory database) ------------------------------

# Letters and digits of any script are words; everything else separates them (the default drops digits).
FTS_IGNORE = r"(\.|[^\p{L}\p{N}])+"
FTS_TABLE = "labels"


def fts_extension_path() -> Path:
    """The fts extension shipped in the `duckdb-extension-fts` wheel (`INSTALL fts` would download it)."""
    spec = importlib.util.find_spec("duckdb_extension_fts")
    if spec is None or not spec.submodule_search_locations:
        raise AutointerpError(
            f"keyword search needs the DuckDB fts extension: run `pip install duckdb-extension-fts=={duckdb.__version__}`"
        )
    root = Path(list(spec.submodule_search_locations)[0])
    path = root / "extensions" / f"v{duckdb.__version__}" / "fts.duckdb_extension"
    if not path.exists():
        found = sorted(p.parent.name for p in root.glob("extensions/*/fts.duckdb_extension"))
        raise AutointerpError(
            f"the installed fts extension is built for DuckDB {found}, not {duckdb.__version__}: "
            f"run `pip install duckdb=={duckdb.__version__} duckdb-extension-fts=={duckdb.__version__}`"
        )
    return path


def open_fts_database() -> duckdb.DuckDBPyConnection:
    """A private in-memory database with the fts extension loaded."""
    con = duckdb.connect(":memory:")
    con.execute(f"LOAD {_sql_string(str(fts_extension_path()))}")
    return con


def _sql_string(text: str) -> str:
    """A SQL string literal, for the one statement that takes no parameters (LOAD of a file we located)."""
    return "'" + text.replace("'", "''") + "'"


def build_fts_index(fts: duckdb.DuckDBPyConnection, labels) -> None:
    """(Re)build the BM25 index over an Arrow table of (explanation_id, label)."""
    fts.register("_incoming_labels", labels)
    try:
        fts.execute(f"CREATE OR REPLACE TABLE {FTS_TABLE} AS SELECT explanation_id, label FROM _incoming_labels")
    finally:
        fts.unregister("_incoming_labels")
    fts.execute(
        f"PRAGMA create_fts_index('{FTS_TABLE}', 'explanation_id', 'label', stemmer = 'porter', "
        f"stopwords = 'english', ignore = {_sql_string(FTS_IGNORE)}, strip_accents = 1, lower = 1, overwrite = 1)"
    )


def fts_postings(fts: duckdb.DuckDBPyConnection) -> dict[str, Any]:
    """The index as arrays: per (doc, term) pair its docid, termid and term frequency; per doc its name
    (explanation id) and length; per term its text and document frequency; collection stats."""
    schema = f"fts_main_{FTS_TABLE}"
    pairs = fts.execute(
        f"SELECT docid, termid, count(*)::INTEGER AS tf FROM {schema}.terms GROUP BY docid, termid"
    ).fetchnumpy()
    docs = fts.execute(f"SELECT docid, name::BIGINT AS name, len FROM {schema}.docs ORDER BY docid").fetchnumpy()
    terms = fts.execute(f"SELECT termid, term, df FROM {schema}.dict ORDER BY termid").fetchnumpy()
    n_docs, avgdl = fts.execute(f"SELECT num_docs, avgdl FROM {schema}.stats").fetchone()
    return {"pairs": pairs, "docs": docs, "terms": terms, "n_docs": int(n_docs), "avgdl": float(avgdl or 0.0)}


def fts_query_terms(fts: duckdb.DuckDBPyConnection, query: str) -> list[str]:
    """The query tokenized and stemmed exactly as the index tokenized the labels."""
    rows = fts.execute(
        f"SELECT DISTINCT stem(unnest(fts_main_{FTS_TABLE}.tokenize(?)), 'porter') AS t", [query]
    ).fetchall()
    return [r[0] for r in rows if r[0]]


def fts_match_bm25(fts: duckdb.DuckDBPyConnection, query: str, limit: int) -> list[tuple[int, float]]:
    """DuckDB's own BM25 ranking (match_bm25): the reference the in-process scorer is checked against."""
    return fts.execute(
        f"""
        SELECT explanation_id, score FROM (
            SELECT explanation_id, fts_main_{FTS_TABLE}.match_bm25(explanation_id, ?) AS score FROM {FTS_TABLE}
        ) WHERE score IS NOT NULL ORDER BY score DESC, explanation_id LIMIT ?
        """,
        [query, limit],
    ).fetchall()


# ---- exchange ---------------------------------------------------------------------------------------


def explanation_ids(con: duckdb.DuckDBPyConnection, source_id: int | None) -> list[int]:
    rows = con.execute(
        "SELECT explanation_id FROM explanations WHERE ($1 IS NULL OR source_id = $1) ORDER BY source_id, feature, explanation_id",
        [source_id],
    ).fetchall()
    return [r[0] for r in rows]


def existing_labels(con: duckdb.DuckDBPyConnection, source_id: int) -> set[tuple[int, str]]:
    return {(f, t) for f, t in con.execute("SELECT feature, label FROM explanations WHERE source_id = ?", [source_id]).fetchall()}


def bulk_insert_labels(con: duckdb.DuckDBPyConnection, source_id: int, table, model: str, author: str) -> None:
    """Many labels at once from an Arrow table (feature, label, vector FLOAT[384], scorer, metric, value, n),
    one label per feature: for benchmarks and bulk loads, where a write_label call per label is too slow."""
    con.register("_bulk_labels", table)
    try:
        con.execute(
            """
            INSERT INTO explanations (source_id, feature, label, author)
            SELECT ?, feature, label, ? FROM _bulk_labels ORDER BY feature
            """,
            [source_id, author],
        )
        con.execute(
            f"""
            INSERT INTO label_embeddings (explanation_id, model, vector)
            SELECT e.explanation_id, ?, b.vector::FLOAT[{EMBEDDING_DIM}]
            FROM _bulk_labels b JOIN explanations e ON e.source_id = ? AND e.feature = b.feature
            """,
            [model, source_id],
        )
        con.execute(
            """
            INSERT INTO scores (explanation_id, scorer, metric, value, ci_low, ci_high, n)
            SELECT e.explanation_id, b.scorer, b.metric, b.value, b.value - 0.1, b.value + 0.1, b.n
            FROM _bulk_labels b JOIN explanations e ON e.source_id = ? AND e.feature = b.feature
            """,
            [source_id],
        )
        features = con.execute("SELECT DISTINCT feature FROM _bulk_labels").fetchnumpy()["feature"]
    finally:
        con.unregister("_bulk_labels")
    refresh_best(con, [(source_id, int(f)) for f in features])


def fts_stopwords(fts: duckdb.DuckDBPyConnection) -> list[str]:
    """The stopword list the fts index drops (after `build_fts_index`)."""
    return [r[0] for r in fts.execute(f"SELECT sw FROM fts_main_{FTS_TABLE}.stopwords").fetchall()]


def limit_memory(con: duckdb.DuckDBPyConnection, gigabytes: float) -> None:
    """Cap the database's buffer pool (DuckDB keeps the blocks a scan read until it reaches its limit, by
    default 80% of the machine's memory)."""
    con.execute(f"SET memory_limit = '{float(gigabytes)}GB'")
