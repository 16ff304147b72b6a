"""Named schema migrations, applied once each and recorded in `_migrations` (the way simonw/llm does it).

Append new migrations at the end; never edit one that has shipped.
"""

from __future__ import annotations

from typing import Callable

import duckdb

Migration = Callable[[duckdb.DuckDBPyConnection], None]
MIGRATIONS: list[tuple[str, Migration]] = []


def migration(fn: Migration) -> Migration:
    MIGRATIONS.append((fn.__name__, fn))
    return fn


@migration
def m001_activation_store(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE SEQUENCE source_id_seq START 1")
    con.execute(
        """
        CREATE TABLE sources (
            source_id INTEGER PRIMARY KEY DEFAULT nextval('source_id_seq'),
            name VARCHAR NOT NULL UNIQUE,
            model VARCHAR,
            hookpoint VARCHAR,
            layer INTEGER,
            feature_kind VARCHAR NOT NULL,      -- neurons | sae | imported
            width INTEGER,
            context_len INTEGER,
            config JSON,
            status VARCHAR NOT NULL DEFAULT 'collecting',  -- collecting | ready
            created_at TIMESTAMP DEFAULT current_timestamp
        )
        """
    )
    con.execute(
        """
        CREATE TABLE contexts (
            source_id INTEGER NOT NULL,
            context_id BIGINT NOT NULL,
            token_ids INTEGER[],
            tokens VARCHAR[] NOT NULL,
            document_id BIGINT,
            doc_offset INTEGER,
            PRIMARY KEY (source_id, context_id)
        )
        """
    )
    # Rows land here while a source is collected or imported; finalising moves them, sorted by
    # (feature, context, pos), into `activations`, so that per-feature reads touch few row groups.
    con.execute(
        """
        CREATE TABLE activations_staging (
            source_id INTEGER NOT NULL,
            feature INTEGER NOT NULL,
            context_id BIGINT NOT NULL,
            pos SMALLINT NOT NULL,
            value FLOAT NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE activations (
            source_id INTEGER NOT NULL,
            feature INTEGER NOT NULL,
            context_id BIGINT NOT NULL,
            pos SMALLINT NOT NULL,
            value FLOAT NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE feature_context_max (
            source_id INTEGER NOT NULL,
            feature INTEGER NOT NULL,
            context_id BIGINT NOT NULL,
            max_value FLOAT NOT NULL,
            max_pos SMALLINT NOT NULL,
            n_active SMALLINT NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE feature_stats (
            source_id INTEGER NOT NULL,
            feature INTEGER NOT NULL,
            n_active_tokens BIGINT NOT NULL,
            n_active_contexts BIGINT NOT NULL,
            density DOUBLE NOT NULL,
            max_value DOUBLE NOT NULL,
            mean_value DOUBLE NOT NULL,
            quantile_edges DOUBLE[],
            hist_edges DOUBLE[],
            hist_counts BIGINT[],
            PRIMARY KEY (source_id, feature)
        )
        """
    )
    # Token frequencies and a capped posting list per token: finds hard-negative contexts without
    # scanning every context.
    con.execute(
        """
        CREATE TABLE token_stats (
            source_id INTEGER NOT NULL,
            token VARCHAR NOT NULL,
            n_occurrences BIGINT NOT NULL,
            n_contexts BIGINT NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE token_postings (
            source_id INTEGER NOT NULL,
            token VARCHAR NOT NULL,
            context_id BIGINT NOT NULL
        )
        """
    )
    con.execute(
        """
        CREATE TABLE collection_chunks (
            source_id INTEGER NOT NULL,
            chunk_index INTEGER NOT NULL,
            first_context_id BIGINT NOT NULL,
            n_contexts INTEGER NOT NULL,
            n_tokens BIGINT NOT NULL,
            n_activations BIGINT NOT NULL,
            resume_state JSON,
            created_at TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (source_id, chunk_index)
        )
        """
    )


@migration
def m002_catalog(con: duckdb.DuckDBPyConnection) -> None:
    con.execute("CREATE SEQUENCE explanation_id_seq START 1")
    con.execute("CREATE SEQUENCE score_id_seq START 1")
    con.execute("CREATE SEQUENCE review_id_seq START 1")
    con.execute("CREATE SEQUENCE call_id_seq START 1")
    con.execute(
        """
        CREATE TABLE runs (
            run_id VARCHAR PRIMARY KEY,
            kind VARCHAR NOT NULL,               -- label | score | bench | import
            config JSON,
            config_hash VARCHAR,
            status VARCHAR NOT NULL,             -- running | done | failed | interrupted
            n_total INTEGER DEFAULT 0,
            n_done INTEGER DEFAULT 0,
            n_failed INTEGER DEFAULT 0,
            n_skipped INTEGER DEFAULT 0,
            prompt_tokens BIGINT DEFAULT 0,
            completion_tokens BIGINT DEFAULT 0,
            cost_usd DOUBLE DEFAULT 0,
            started_at TIMESTAMP DEFAULT current_timestamp,
            updated_at TIMESTAMP DEFAULT current_timestamp,
            ended_at TIMESTAMP
        )
        """
    )
    con.execute(
        """
        CREATE TABLE explanations (
            explanation_id BIGINT PRIMARY KEY DEFAULT nextval('explanation_id_seq'),
            source_id INTEGER NOT NULL,
            feature INTEGER NOT NULL,
            label VARCHAR NOT NULL,
            author VARCHAR NOT NULL,             -- llm | human | baseline | import
            explainer_model VARCHAR,
            prompt_name VARCHAR,
            prompt_hash VARCHAR,
            sampling_config JSON,
            seed INTEGER,
            run_id VARCHAR,
            config_hash VARCHAR,
            details JSON,
            created_at TIMESTAMP DEFAULT current_timestamp
        )
        """
    )
    con.execute(
        """
        CREATE TABLE scores (
            score_id BIGINT PRIMARY KEY DEFAULT nextval('score_id_seq'),
            explanation_id BIGINT NOT NULL,
            scorer VARCHAR NOT NULL,             -- simulation | detection | fuzzing | embedding | ...
            metric VARCHAR NOT NULL,             -- e.g. ev_correlation, balanced_accuracy, auroc
            subset VARCHAR NOT NULL DEFAULT 'all',  -- all | random_negatives | hard_negatives | positives
            split VARCHAR NOT NULL DEFAULT 'test',
            value DOUBLE,
            ci_low DOUBLE,
            ci_high DOUBLE,
            n INTEGER NOT NULL,
            scorer_model VARCHAR,
            details JSON,
            run_id VARCHAR,
            created_at TIMESTAMP DEFAULT current_timestamp
        )
        """
    )
    # One row per (job configuration, feature): what makes a rerun skip finished features.
    con.execute(
        """
        CREATE TABLE feature_jobs (
            config_hash VARCHAR NOT NULL,
            source_id INTEGER NOT NULL,
            feature INTEGER NOT NULL,
            status VARCHAR NOT NULL,             -- done | failed
            explanation_id BIGINT,
            run_id VARCHAR,
            error VARCHAR,
            updated_at TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (config_hash, source_id, feature)
        )
        """
    )
    # Every failed step (parse failure, refused request...) with the raw output: never stored as a label.
    con.execute(
        """
        CREATE TABLE failures (
            run_id VARCHAR,
            source_id INTEGER,
            feature INTEGER,
            stage VARCHAR NOT NULL,
            error VARCHAR NOT NULL,
            raw_output VARCHAR,
            created_at TIMESTAMP DEFAULT current_timestamp
        )
        """
    )
    con.execute(
        """
        CREATE TABLE llm_calls (
            call_id BIGINT PRIMARY KEY DEFAULT nextval('call_id_seq'),
            cache_key VARCHAR NOT NULL,
            provider VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            stage VARCHAR,                       -- explain | simulation | detection | fuzzing | ...
            run_id VARCHAR,
            request JSON,
            response JSON,
            prompt_tokens INTEGER,
            completion_tokens INTEGER,
            cost_usd DOUBLE,
            latency_ms DOUBLE,
            error VARCHAR,
            created_at TIMESTAMP DEFAULT current_timestamp
        )
        """
    )
    con.execute("CREATE INDEX llm_calls_cache_key ON llm_calls (cache_key)")
    con.execute(
        """
        CREATE TABLE reviews (
            review_id BIGINT PRIMARY KEY DEFAULT nextval('review_id_seq'),
            explanation_id BIGINT NOT NULL,
            verdict VARCHAR NOT NULL,            -- accept | reject | edit
            edited_label VARCHAR,
            note VARCHAR,
            created_at TIMESTAMP DEFAULT current_timestamp
        )
        """
    )
    con.execute(
        """
        CREATE TABLE label_embeddings (
            explanation_id BIGINT NOT NULL,
            model VARCHAR NOT NULL,
            vector FLOAT[384] NOT NULL,
            PRIMARY KEY (explanation_id, model)
        )
        """
    )


@migration
def m003_llm_call_ledger_columns(con: duckdb.DuckDBPyConnection) -> None:
    """What the LLM ledger needs besides the base columns: cache hits, retries, endpoint host, priced or not."""
    con.execute("ALTER TABLE llm_calls ADD COLUMN cached BOOLEAN DEFAULT false")
    con.execute("ALTER TABLE llm_calls ADD COLUMN attempts INTEGER DEFAULT 1")
    con.execute("ALTER TABLE llm_calls ADD COLUMN endpoint_host VARCHAR")
    con.execute("ALTER TABLE llm_calls ADD COLUMN priced BOOLEAN DEFAULT true")


@migration
def m004_catalog_score_index(con: duckdb.DuckDBPyConnection) -> None:
    """Search filters look up the scores of a page's candidates by explanation id."""
    con.execute("CREATE INDEX scores_explanation_id ON scores (explanation_id)")


@migration
def m010_score_items(con: duckdb.DuckDBPyConnection) -> None:
    """Every judged test item behind a label's scores (delphi keeps them too): a new metric is computed
    from these rows without calling the model again."""
    con.execute(
        """
        CREATE TABLE score_items (
            explanation_id BIGINT NOT NULL,
            scorer VARCHAR NOT NULL,
            split VARCHAR NOT NULL,
            item INTEGER NOT NULL,
            context_id BIGINT NOT NULL,
            item_group VARCHAR NOT NULL,      -- positives | random_negatives | hard_negatives | misplaced
            kind VARCHAR NOT NULL,            -- the context's sampler kind: top | quantile | random_negative | hard_negative
            quantile INTEGER,
            truth INTEGER,
            prediction INTEGER,
            probability DOUBLE,
            true_activations DOUBLE[],
            predicted_activations DOUBLE[],
            run_id VARCHAR,
            PRIMARY KEY (explanation_id, scorer, split, item)
        )
        """
    )


@migration
def m020_imported_scores(con: duckdb.DuckDBPyConnection) -> None:
    """Scores copied from a label file are its claims, kept apart from scores measured here: never ranked."""
    con.execute("ALTER TABLE scores ADD COLUMN imported BOOLEAN DEFAULT false")


@migration
def m050_llm_call_uid(con: duckdb.DuckDBPyConnection) -> None:
    """Each ledger row's own id, so that folding a call journal after a crash never stores a row twice."""
    con.execute("ALTER TABLE llm_calls ADD COLUMN call_uid VARCHAR")


@migration
def m051_review_reviewer(con: duckdb.DuckDBPyConnection) -> None:
    """Who made a review: the reviewer named by the web catalog's token, or the CLI user."""
    con.execute("ALTER TABLE reviews ADD COLUMN reviewer VARCHAR")


@migration
def m060_provider_batches(con: duckdb.DuckDBPyConnection) -> None:
    """Provider batch jobs: per-feature stage state, the batches submitted (intent recorded before the provider
    call), each request line in them, and which ledger answers came from a batch."""
    con.execute("ALTER TABLE feature_jobs ADD COLUMN stage VARCHAR")  # explain | score, while status is in_progress
    con.execute("ALTER TABLE feature_jobs ADD COLUMN state JSON")  # the chosen label, once explained
    con.execute("ALTER TABLE llm_calls ADD COLUMN batch_key VARCHAR")
    con.execute(
        """
        CREATE TABLE llm_batches (
            batch_key VARCHAR PRIMARY KEY,       -- ours; the provider's metadata / custom ids carry it
            job_key VARCHAR NOT NULL,            -- the job's config hash
            run_id VARCHAR,
            provider VARCHAR NOT NULL,
            model VARCHAR NOT NULL,
            endpoint VARCHAR NOT NULL,           -- chat | complete
            provider_batch_id VARCHAR,
            input_file_id VARCHAR,
            status VARCHAR NOT NULL,             -- creating | open | collected | rejected | lost
            provider_status VARCHAR,
            n_requests INTEGER NOT NULL,
            n_succeeded INTEGER DEFAULT 0,
            n_errored INTEGER DEFAULT 0,
            n_unfinished INTEGER DEFAULT 0,      -- expired or cancelled lines
            bytes BIGINT,
            error VARCHAR,
            created_at TIMESTAMP DEFAULT current_timestamp,
            updated_at TIMESTAMP DEFAULT current_timestamp,
            ended_at TIMESTAMP
        )
        """
    )
    con.execute(
        """
        CREATE TABLE llm_batch_requests (
            custom_id VARCHAR PRIMARY KEY,
            batch_key VARCHAR NOT NULL,
            cache_key VARCHAR NOT NULL,
            occurrence INTEGER NOT NULL,
            stage VARCHAR,
            request JSON NOT NULL,
            state VARCHAR NOT NULL,              -- submitted | answered | errored | unfinished | rejected
            error VARCHAR
        )
        """
    )
    con.execute("CREATE INDEX llm_batch_requests_batch ON llm_batch_requests (batch_key)")


@migration
def m150_output_evidence(con: duckdb.DuckDBPyConnection) -> None:
    """Per feature and method (logit_lens | amplification): the tokens it promotes and suppresses, each a JSON
    list of {token, token_id, value}, strongest first, and how they were computed."""
    con.execute(
        """
        CREATE TABLE output_evidence (
            source_id INTEGER NOT NULL,
            feature INTEGER NOT NULL,
            method VARCHAR NOT NULL,
            promoted JSON NOT NULL,
            suppressed JSON NOT NULL,
            provenance JSON NOT NULL,
            created_at TIMESTAMP DEFAULT current_timestamp,
            PRIMARY KEY (source_id, feature, method)
        )
        """
    )


@migration
def m180_feature_best(con: duckdb.DuckDBPyConnection) -> None:
    """Each labeled feature's best label (the rule of `autointerp.ranking`), kept current by every write of
    labels, scores or reviews (`catalog_queries.refresh_best`): the catalog's listing and `best_labels` read
    it instead of ranking every label. Filled here for an existing store; derived, so deleting a label or a
    source recomputes it rather than counting it as deleted rows."""
    from autointerp.store.catalog_queries import refresh_best

    con.execute(
        """
        CREATE TABLE feature_best (
            source_id INTEGER NOT NULL,
            feature INTEGER NOT NULL,
            explanation_id BIGINT NOT NULL,
            tier INTEGER NOT NULL,             -- 0 accepted, 1 unreviewed, 2 rejected or edited
            scorer VARCHAR,                    -- the shared score compared, when one was
            metric VARCHAR,
            value DOUBLE,
            n INTEGER,
            n_ranked BIGINT NOT NULL,
            n_competing BIGINT NOT NULL,
            PRIMARY KEY (source_id, feature)
        )
        """
    )
    refresh_best(con)


@migration
def m190_feature_indexes(con: duckdb.DuckDBPyConnection) -> None:
    """Every write of labels, scores or reviews recomputes its features' best labels (`refresh_best`): it
    finds their labels and stored best rows by feature number here instead of scanning every label's and
    every feature's (source_id, feature) (DuckDB answers no lookup from a composite key's index)."""
    con.execute("CREATE INDEX explanations_feature ON explanations (feature)")
    con.execute("CREATE INDEX feature_best_feature ON feature_best (feature)")
