"""The ledger's DuckDB schema: tables, cost views and the schema version.

Everything is ``CREATE ... IF NOT EXISTS`` so opening an existing ledger is a no-op. Views are
plain SQL over ``attempts`` so analysts can query them from any DuckDB client, e.g.::

    duckdb -readonly ledger.duckdb "SELECT * FROM credits_by_day ORDER BY day DESC LIMIT 7"

Credits are attributed to the day (UTC) a job was created, falling back to when /process was
sent and then to when the attempt was recorded. "platform" is Flokan's own keys (credits are
deducted); every other provider is BYOK (no credits).
"""

from __future__ import annotations

from typing import Final

import duckdb

from flokan_dagster.ledger.backend import execute_in_postgres, serialize_writers, uses_postgres
from flokan_dagster.ledger.claims import CLAIMS_TABLE

SCHEMA_VERSION: Final = 1

TABLES: Final[tuple[str, ...]] = (
    """
    CREATE TABLE IF NOT EXISTS schema_version (
        version INTEGER NOT NULL,
        applied_at TIMESTAMP NOT NULL DEFAULT current_timestamp
    )
    """,
    # One row per attempt, the fold of its events. job_id uniqueness is kept by the writer (an
    # external row yields to the attempt that owns the job) rather than by a UNIQUE index, so
    # that a merge never trips over DuckDB's constraint checks mid-transaction.
    """
    CREATE TABLE IF NOT EXISTS attempts (
        attempt_id VARCHAR PRIMARY KEY,
        run_id VARCHAR,
        asset VARCHAR,
        sku VARCHAR,
        fingerprint VARCHAR,
        prompt VARCHAR,
        model_tier VARCHAR,
        provider VARCHAR,
        image_id VARCHAR,
        image_url VARCHAR,
        style_id VARCHAR,
        character_id VARCHAR,
        source_ref VARCHAR,
        job_id VARCHAR,
        job_status VARCHAR,
        provider_used VARCHAR,
        status VARCHAR NOT NULL
            CHECK (status IN ('pending', 'completed', 'failed', 'unknown', 'rejected')),
        credits_consumed BIGINT,
        estimated_credits BIGINT,
        processing_ms BIGINT,
        result_url VARCHAR,
        result_image_id VARCHAR,
        result_path VARCHAR,
        result_sha256 VARCHAR,
        error VARCHAR,
        origin VARCHAR CHECK (origin IN ('dagster', 'reconciled', 'external')),
        sent_at TIMESTAMP,
        job_created_at TIMESTAMP,
        completed_at TIMESTAMP,
        server_sent_at TIMESTAMP,
        clock_error_ms BIGINT,
        recorded_at TIMESTAMP NOT NULL,
        updated_at TIMESTAMP NOT NULL,
        revision BIGINT NOT NULL
    )
    """,
    # The journal: every write ever made, so a row can be rebuilt and audited.
    """
    CREATE TABLE IF NOT EXISTS attempt_events (
        event_id VARCHAR PRIMARY KEY,
        attempt_id VARCHAR NOT NULL,
        revision BIGINT NOT NULL,
        written_at TIMESTAMP NOT NULL,
        kind VARCHAR NOT NULL,
        payload VARCHAR NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS attempt_events_by_attempt ON attempt_events (attempt_id)",
    # Which attempts' events ever set which job id: every attempt that may hold a job is refolded
    # together, so one job stays on one attempt whatever order the events arrive in.
    """
    CREATE TABLE IF NOT EXISTS attempt_jobs (
        event_id VARCHAR PRIMARY KEY,
        attempt_id VARCHAR NOT NULL,
        job_id VARCHAR NOT NULL
    )
    """,
    "CREATE INDEX IF NOT EXISTS attempt_jobs_by_job ON attempt_jobs (job_id)",
    # Which run may spend on a SKU right now (ledger/claims.py).
    CLAIMS_TABLE,
)

# Columns added after version 1 shipped; a ledger made before them gains them on open.
MIGRATIONS: Final[tuple[str, ...]] = (
    "ALTER TABLE attempts ADD COLUMN IF NOT EXISTS server_sent_at TIMESTAMP",
    "ALTER TABLE attempts ADD COLUMN IF NOT EXISTS clock_error_ms BIGINT",
)

VIEWS: Final[tuple[str, ...]] = (
    """
    CREATE VIEW IF NOT EXISTS ledger_costs AS
    SELECT
        *,
        CAST(coalesce(job_created_at, sent_at, recorded_at) AS DATE) AS day,
        CASE WHEN coalesce(provider, 'platform') = 'platform' THEN 'platform' ELSE 'byok' END
            AS billing,
        coalesce(credits_consumed, 0) AS credits
    FROM attempts
    """,
    """
    CREATE VIEW IF NOT EXISTS credits_by_day AS
    SELECT day, sum(credits) AS credits, count(*) AS attempts,
           count(*) FILTER (WHERE status = 'completed') AS completed
    FROM ledger_costs GROUP BY day
    """,
    """
    CREATE VIEW IF NOT EXISTS credits_by_sku AS
    SELECT sku, sum(credits) AS credits, count(*) AS attempts,
           count(*) FILTER (WHERE status = 'completed') AS completed
    FROM ledger_costs GROUP BY sku
    """,
    """
    CREATE VIEW IF NOT EXISTS credits_by_asset AS
    SELECT asset, sum(credits) AS credits, count(*) AS attempts,
           count(*) FILTER (WHERE status = 'completed') AS completed
    FROM ledger_costs GROUP BY asset
    """,
    """
    CREATE VIEW IF NOT EXISTS credits_by_tier_provider AS
    SELECT model_tier, coalesce(provider, 'platform') AS provider, billing,
           sum(credits) AS credits, count(*) AS attempts
    FROM ledger_costs GROUP BY model_tier, coalesce(provider, 'platform'), billing
    """,
    """
    CREATE VIEW IF NOT EXISTS estimate_vs_actual AS
    SELECT model_tier, coalesce(provider, 'platform') AS provider,
           count(*) AS jobs,
           sum(estimated_credits) AS estimated_credits,
           sum(credits_consumed) AS actual_credits,
           sum(estimated_credits) - sum(credits_consumed) AS overestimate
    FROM attempts
    WHERE status = 'completed' AND estimated_credits IS NOT NULL AND credits_consumed IS NOT NULL
    GROUP BY model_tier, coalesce(provider, 'platform')
    """,
    """
    CREATE VIEW IF NOT EXISTS failed_and_unknown_attempts AS
    SELECT attempt_id, status, origin, asset, sku, run_id, job_id, model_tier, provider,
           estimated_credits, credits_consumed, error, sent_at, updated_at
    FROM attempts WHERE status IN ('failed', 'unknown')
    """,
)

VIEW_NAMES: Final[tuple[str, ...]] = (
    "ledger_costs",
    "credits_by_day",
    "credits_by_sku",
    "credits_by_asset",
    "credits_by_tier_provider",
    "estimate_vs_actual",
    "failed_and_unknown_attempts",
)


class LedgerSchemaError(RuntimeError):
    """The database holds a ledger schema newer than this code understands."""


def ensure_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """Create the tables and views if missing and record the schema version.

    Raises:
        LedgerSchemaError: The database was written by a newer ledger version.

    Example:
        >>> conn = duckdb.connect()
        >>> ensure_schema(conn); ensure_schema(conn)
        >>> conn.execute("SELECT max(version) FROM schema_version").fetchone()[0]
        1
    """
    if uses_postgres(conn):
        _ensure_postgres_schema(conn)
        return
    had_job_index = bool(
        (conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'attempt_jobs'").fetchone() or (0,))[0]
    )
    for statement in TABLES:
        conn.execute(statement)
    if not had_job_index:
        # A ledger from before attempt_jobs existed: index the job ids its journal already holds.
        conn.execute(
            """INSERT INTO attempt_jobs
               SELECT event_id, attempt_id, json_extract_string(payload, '$.fields.job_id') FROM attempt_events
               WHERE json_extract_string(payload, '$.fields.job_id') IS NOT NULL
               ON CONFLICT DO NOTHING"""
        )
    for statement in MIGRATIONS:
        conn.execute(statement)
    # An index on attempts.sku (briefly created) is not used by DuckDB for the batch reads (a
    # semi-join scans; an index fetch of rows spread over the file costs more): only a write cost.
    conn.execute("DROP INDEX IF EXISTS attempts_by_sku")
    found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
    version = found[0] if found else None
    if version is not None and version > SCHEMA_VERSION:
        raise LedgerSchemaError(
            f"ledger schema version {version} is newer than this code's {SCHEMA_VERSION}; upgrade flokan-dagster"
        )
    for statement in VIEWS:
        conn.execute(statement)
    if version is None:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])


# The columns the ledger looks rows up by (merges, planning reads, claims).
_LOOKUPS: Final = (
    ("attempts", "attempt_id"), ("attempts", "job_id"), ("attempts", "sku"),
    ("attempt_events", "attempt_id"), ("attempt_jobs", "job_id"), ("claims", "sku"),
)  # fmt: skip


def _ensure_postgres_schema(conn: duckdb.DuckDBPyConnection) -> None:
    """The shared backend: tables in PostgreSQL, views in the attaching in-memory DuckDB.

    Tables are created under the writers' advisory lock (two machines creating them at once
    would collide in PostgreSQL's catalog). The views live in DuckDB's own ``memory`` catalog so
    that DuckDB, not PostgreSQL, computes every cost query over the attached tables.
    """
    conn.execute("BEGIN TRANSACTION")
    try:
        serialize_writers(conn)
        # DuckDB caches PostgreSQL's catalog; another machine may have created the tables while
        # this one waited for the lock, and a stale cache would create them again.
        conn.execute("CALL pg_clear_cache()")
        for statement in TABLES:
            conn.execute(statement)
        # Writes look attempts up by job id (one job, one row); PostgreSQL needs the index to
        # answer that without reading the table.
        conn.execute("CREATE INDEX IF NOT EXISTS attempts_by_job ON attempts (job_id)")
        # DuckDB pushes a filter on one value down as `column = 'x' COLLATE "C"`, which an index
        # in the database's own collation (C.UTF-8, en_US.UTF-8, ...) cannot answer: PostgreSQL
        # would read the whole table for every lookup a merge or a run makes, growing with the
        # ledger. Indexes in the "C" collation answer them.
        execute_in_postgres(conn, [
            f'CREATE INDEX IF NOT EXISTS {table}_{column}_c ON {table} ({column} COLLATE "C")'
            for table, column in _LOOKUPS
        ])  # fmt: skip
        found = conn.execute("SELECT max(version) FROM schema_version").fetchone()
        version = found[0] if found else None
        if version is None:
            conn.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
    if version is not None and version > SCHEMA_VERSION:
        raise LedgerSchemaError(
            f"ledger schema version {version} is newer than this code's {SCHEMA_VERSION}; upgrade flokan-dagster"
        )
    for statement in VIEWS:
        conn.execute(statement.replace("CREATE VIEW IF NOT EXISTS", "CREATE OR REPLACE VIEW memory.main.", 1).replace(
            "memory.main. ", "memory.main.", 1))
