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

from flokan_dagster.ledger.backend import serialize_writers
from flokan_dagster.ledger.records import COLUMNS, LedgerEvent, external_attempt_id, fold_events

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

    Besides the attempts ``events`` write to, the external row of every job those attempts
    held or now hold is refolded too: whether an external row exists depends on whether a
    Dagster attempt owns its job, so it must be recomputed whenever ownership may move.

    Returns:
        The attempt ids whose rows are replaced, and their new rows (ids without a status, e.g.
        an external job now owned by an attempt, have no row).
    """
    touched = sorted({e.attempt_id for e in events})
    old_jobs = conn.execute(
        "SELECT job_id FROM attempts WHERE attempt_id IN (SELECT unnest(?)) AND job_id IS NOT NULL", [touched]
    ).fetchall()
    jobs = {r[0] for r in old_jobs} | {
        e.fields["job_id"] for e in events if e.fields.get("job_id") is not None
    }
    ids = sorted(set(touched) | {external_attempt_id(j) for j in jobs})
    by_attempt: dict[str, list[LedgerEvent]] = defaultdict(list)
    for event in [*events, *load_stored_events(conn, ids)]:
        by_attempt[event.attempt_id].append(event)
    rows = [fold_events(group) for group in by_attempt.values()]
    # A row only written by a finish (its begin still elsewhere in flight) has no status yet.
    return ids, [row for row in rows if row["status"] is not None]


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
    revision), and every touched row is refolded from its full journal. Afterwards no job id is held by an external row when
    a Dagster attempt holds it.
    """
    unique: dict[str, LedgerEvent] = {}
    for event in sorted(events, key=lambda e: (e.revision, e.event_id)):
        unique.setdefault(event.event_id, event)
    batch = list(unique.values())
    conn.execute("BEGIN TRANSACTION")
    try:
        serialize_writers(conn)  # several machines on a shared PostgreSQL: one merge at a time
        conn.execute(
            """INSERT INTO attempt_events
               SELECT * FROM (SELECT unnest(?) AS event_id, unnest(?) AS attempt_id, unnest(?) AS revision,
                                     unnest(?) AS written_at, unnest(?) AS kind, unnest(?) AS payload)
               ON CONFLICT (event_id) DO UPDATE SET
                   revision = least(attempt_events.revision, excluded.revision),
                   written_at = least(attempt_events.written_at, excluded.written_at),
                   payload = CASE WHEN excluded.revision < attempt_events.revision
                                  THEN excluded.payload ELSE attempt_events.payload END""",
            [
                [e.event_id for e in batch],
                [e.attempt_id for e in batch],
                [e.revision for e in batch],
                [e.written_at for e in batch],
                [e.kind for e in batch],
                [e.to_json() for e in batch],
            ],
        )
        attempt_ids, rows = fold_with_stored(conn, batch)
        conn.execute("DELETE FROM attempts WHERE attempt_id IN (SELECT unnest(?))", [attempt_ids])
        insert_rows(conn, "attempts", rows)
        job_ids = sorted({row["job_id"] for row in rows if row["job_id"] is not None})
        if job_ids:
            conn.execute(
                """DELETE FROM attempts
                   WHERE origin = 'external' AND job_id IN (
                       SELECT job_id FROM attempts
                       WHERE origin IS DISTINCT FROM 'external' AND job_id IN (SELECT unnest(?)))""",
                [job_ids],
            )
        conn.execute("COMMIT")
    except BaseException:
        conn.execute("ROLLBACK")
        raise
