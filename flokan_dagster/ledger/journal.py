"""Merging ledger events into DuckDB: journal them, refold the rows they touch, dedupe jobs.

Everything here runs inside one transaction on a connection the caller holds, so a batch is
merged entirely or not at all; the spool files are removed only after the commit.

Example:
    >>> import duckdb
    >>> from flokan_dagster.ledger.schema import ensure_schema
    >>> conn = duckdb.connect(); ensure_schema(conn)
    >>> event = LedgerEvent.create("a1", "begin", {"status": "pending", "sku": "MUG-1"})
    >>> apply_events(conn, [event]); apply_events(conn, [event])
    >>> conn.execute("SELECT sku, status FROM attempts").fetchall()
    [('MUG-1', 'pending')]
"""

from __future__ import annotations

from collections import defaultdict
from typing import Any, Final

import duckdb

from flokan_dagster.ledger.backend import (
    execute_in_postgres,
    postgres_literal,
    serialize_writers,
    uses_postgres,
    writers_lock_statements,
)
from flokan_dagster.ledger.records import COLUMNS, LedgerEvent, external_attempt_id, fold_attempts

_SELECT_COLUMNS: Final = ", ".join(COLUMNS)


def load_stored_events(conn: duckdb.DuckDBPyConnection, attempt_ids: list[str]) -> list[LedgerEvent]:
    """Return the journalled events of ``attempt_ids``."""
    rows = conn.execute(
        "SELECT payload FROM attempt_events WHERE attempt_id IN (SELECT unnest(?))", [attempt_ids]
    ).fetchall()
    return [LedgerEvent.from_json(r[0]) for r in rows]


def fold_with_stored(
    conn: duckdb.DuckDBPyConnection, events: list[LedgerEvent]
) -> tuple[list[str], list[dict[str, Any]]]:
    """Fold ``events`` with the journal into the rows they change.

    Besides the attempts ``events`` write to, every attempt whose events ever set a job id that
    these attempts set or held is refolded too (and so on, until no new job appears), as is the
    external row of each such job: which attempt holds a job, and whether an external row for
    it exists, depends on all of them (see ``records.fold_attempts``).

    Returns:
        The attempt ids whose rows are replaced, and their new rows (ids without a status, e.g.
        an external job now owned by an attempt, have no row).
    """
    new_by_attempt: dict[str, list[LedgerEvent]] = defaultdict(list)
    for event in events:
        new_by_attempt[event.attempt_id].append(event)
    by_attempt: dict[str, list[LedgerEvent]] = defaultdict(list)
    jobs: set[str] = set()
    frontier = set(new_by_attempt)
    while frontier:
        ids = sorted(frontier)
        for event in load_stored_events(conn, ids):
            by_attempt[event.attempt_id].append(event)
        for attempt_id in ids:
            by_attempt[attempt_id].extend(new_by_attempt.get(attempt_id, ()))
        held = conn.execute(
            "SELECT job_id FROM attempts WHERE attempt_id IN (SELECT unnest(?)) AND job_id IS NOT NULL", [ids]
        ).fetchall()
        found = {r[0] for r in held} | {
            e.fields["job_id"] for a in ids for e in by_attempt[a] if e.fields.get("job_id") is not None
        }
        new_jobs = sorted(found - jobs)
        jobs |= found
        if not new_jobs:
            break
        claimants = conn.execute(
            "SELECT DISTINCT attempt_id FROM attempt_jobs WHERE job_id IN (SELECT unnest(?))", [new_jobs]
        ).fetchall()
        wanted = set(new_jobs)
        frontier = (
            {r[0] for r in claimants}
            | {external_attempt_id(j) for j in new_jobs}
            | {e.attempt_id for e in events if e.fields.get("job_id") in wanted}
        ) - set(by_attempt)
        for attempt_id in frontier:
            by_attempt.setdefault(attempt_id, [])
    rows = fold_attempts(by_attempt)
    # A row only written by a finish (its begin still elsewhere in flight) has no status yet.
    return sorted(by_attempt), [row for row in rows.values() if row["status"] is not None]


def insert_rows(conn: duckdb.DuckDBPyConnection, table: str, rows: list[dict[str, Any]]) -> None:
    """Bulk insert via one list parameter per column (far faster than executemany)."""
    if not rows:
        return
    columns = ", ".join(f"unnest(?) AS {c}" for c in COLUMNS)
    conn.execute(
        f"INSERT INTO {table} ({_SELECT_COLUMNS}) SELECT * FROM (SELECT {columns})",
        [[row[c] for row in rows] for c in COLUMNS],
    )


def apply_events(conn: duckdb.DuckDBPyConnection, events: list[LedgerEvent]) -> None:
    """Journal ``events`` and rebuild the rows they touch, in one transaction.

    Idempotent and order-independent: an event id already journalled keeps its earliest copy
    (content-keyed events, such as an unchanged external job seen twice, share an id but not a
    revision), and every touched row is refolded from its full journal. Afterwards no job id is held
    by two attempts (``records.fold_attempts``), nor by an external row when an attempt holds it.
    """
    unique: dict[str, LedgerEvent] = {}
    for event in sorted(events, key=lambda e: (e.revision, e.event_id)):
        unique.setdefault(event.event_id, event)
    batch = list(unique.values())
    native = uses_postgres(conn)
    conn.execute("BEGIN TRANSACTION")
    try:
        jobs = [e for e in batch if e.fields.get("job_id") is not None]
        if native:
            # One round trip: wait for the other machines' merges, then journal.
            execute_in_postgres(conn, [*writers_lock_statements(), *_journal_statements(batch, jobs)])
        else:
            serialize_writers(conn)  # a no-op for a DuckDB file (one writer by its file lock)
            _journal(conn, batch, jobs)
        attempt_ids, rows = fold_with_stored(conn, batch)
        job_ids = sorted({row["job_id"] for row in rows if row["job_id"] is not None})
        if native:
            execute_in_postgres(conn, _row_statements(attempt_ids, rows, job_ids))
        else:
            conn.execute("DELETE FROM attempts WHERE attempt_id IN (SELECT unnest(?))", [attempt_ids])
            insert_rows(conn, "attempts", rows)
            if job_ids:
                conn.execute(_DROP_EXTERNAL_DUPLICATES.format(jobs="SELECT unnest(?)"), [job_ids])
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise


# An external row of a job that an attempt now holds goes: the job's credits count once.
_DROP_EXTERNAL_DUPLICATES: Final = """DELETE FROM attempts
    WHERE origin = 'external' AND job_id IN (
        SELECT job_id FROM attempts WHERE origin IS DISTINCT FROM 'external' AND job_id IN ({jobs}))"""
# A journalled event id keeps its earliest copy (see apply_events).
_KEEP_EARLIEST: Final = """ON CONFLICT (event_id) DO UPDATE SET
    revision = least(attempt_events.revision, excluded.revision),
    written_at = least(attempt_events.written_at, excluded.written_at),
    payload = CASE WHEN excluded.revision < attempt_events.revision
                   THEN excluded.payload ELSE attempt_events.payload END"""


def _journal(conn: duckdb.DuckDBPyConnection, batch: list[LedgerEvent], jobs: list[LedgerEvent]) -> None:
    """Journal ``batch`` and its job ids through DuckDB (a DuckDB file)."""
    conn.execute(
        f"""INSERT INTO attempt_events
           SELECT * FROM (SELECT unnest(?) AS event_id, unnest(?) AS attempt_id, unnest(?) AS revision,
                                 unnest(?) AS written_at, unnest(?) AS kind, unnest(?) AS payload)
           {_KEEP_EARLIEST}""",
        [
            [e.event_id for e in batch],
            [e.attempt_id for e in batch],
            [e.revision for e in batch],
            [e.written_at for e in batch],
            [e.kind for e in batch],
            [e.to_json() for e in batch],
        ],
    )
    if jobs:
        conn.execute(
            """INSERT INTO attempt_jobs
               SELECT * FROM (SELECT unnest(?) AS event_id, unnest(?) AS attempt_id, unnest(?) AS job_id)
               ON CONFLICT DO NOTHING""",
            [[e.event_id for e in jobs], [e.attempt_id for e in jobs], [str(e.fields["job_id"]) for e in jobs]],
        )


def _listed(values: list[Any]) -> str:
    return ", ".join(postgres_literal(v) for v in values)


def _values(rows: list[list[Any]]) -> str:
    return ", ".join(f"({_listed(row)})" for row in rows)


def _journal_statements(batch: list[LedgerEvent], jobs: list[LedgerEvent]) -> list[str]:
    """The same journal writes as :func:`_journal`, in PostgreSQL's SQL (the shared ledger)."""
    statements = [
        "INSERT INTO attempt_events (event_id, attempt_id, revision, written_at, kind, payload) VALUES "
        + _values([[e.event_id, e.attempt_id, e.revision, e.written_at, e.kind, e.to_json()] for e in batch])
        + " "
        + _KEEP_EARLIEST
    ]
    if jobs:
        statements.append(
            "INSERT INTO attempt_jobs (event_id, attempt_id, job_id) VALUES "
            + _values([[e.event_id, e.attempt_id, str(e.fields["job_id"])] for e in jobs])
            + " ON CONFLICT DO NOTHING"
        )
    return statements


def _row_statements(attempt_ids: list[str], rows: list[dict[str, Any]], job_ids: list[str]) -> list[str]:
    """Replace the rows of ``attempt_ids`` by ``rows``, in PostgreSQL's SQL (the shared ledger)."""
    statements = []
    if attempt_ids:
        statements.append(f"DELETE FROM attempts WHERE attempt_id IN ({_listed(attempt_ids)})")
    if rows:
        statements.append(
            f"INSERT INTO attempts ({_SELECT_COLUMNS}) VALUES " + _values([[row[c] for c in COLUMNS] for row in rows])
        )
    if job_ids:
        statements.append(_DROP_EXTERNAL_DUPLICATES.format(jobs=_listed(job_ids)))
    return statements
