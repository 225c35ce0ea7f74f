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

import json
import threading
from collections import defaultdict
from collections.abc import Iterable
from datetime import datetime, timezone
from typing import Any, Final

import duckdb

from flokan_dagster.ledger.backend import (
    PushdownConnection,
    execute_in_postgres,
    postgres_literal,
    serialize_writers,
    uses_postgres,
    writers_lock_statements,
)
from flokan_dagster.ledger.records import COLUMNS, LedgerEvent, external_attempt_id, fold_attempts

_SELECT_COLUMNS: Final = ", ".join(COLUMNS)
# Lists reach DuckDB as one JSON text parameter each, parsed in SQL. DuckDB's Python client binds
# a list parameter value by value, about 0.1-0.2 ms a value with duckdb 1.5.5: a merge or a spool
# overlay binding every column of every row it writes (34 lists) paid tens to hundreds of
# milliseconds for it, under the ledger's lock, at every write of a batch (issue 15).
#: Rows of one VARCHAR column ``value`` from a :func:`json_texts` parameter.
JSON_TEXTS: Final = """(SELECT unnest(from_json(?, '["VARCHAR"]')) AS value)"""
_EVENT_TYPES: Final = {"event_id": "VARCHAR", "attempt_id": "VARCHAR", "revision": "BIGINT", "written_at": "TIMESTAMP",
                       "kind": "VARCHAR", "payload": "VARCHAR"}  # fmt: skip
_JOB_TYPES: Final = {"event_id": "VARCHAR", "attempt_id": "VARCHAR", "job_id": "VARCHAR"}
_TABLE_TYPES: dict[tuple[str, bool], dict[str, str]] = {}
_TABLE_TYPES_LOCK: Final = threading.Lock()


def json_texts(values: Iterable[object]) -> str:
    """The parameter for :data:`JSON_TEXTS`: ``values`` as a JSON array of text (any characters).

    Example:
        >>> duckdb.sql(f"SELECT list(value) FROM {JSON_TEXTS}", params=[json_texts(["a", "b,c"])]).fetchone()[0]
        ['a', 'b,c']
    """
    return json.dumps([None if value is None else str(value) for value in values])


def _json_value(value: Any) -> Any:
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return value.isoformat(sep=" ")
    return value


def _json_records(records: Iterable[dict[str, Any]], columns: Iterable[str]) -> str:
    """Rows as one JSON array of objects (timestamps as ISO text, naive UTC), for :func:`_from_json_rows`."""
    names = tuple(columns)
    return json.dumps([{name: _json_value(record[name]) for name in names} for record in records])


def _from_json_rows(types: dict[str, str]) -> str:
    """A SELECT of the typed columns ``types`` from one :func:`_json_records` parameter."""
    structure = json.dumps([types]).replace("'", "''")
    return f"SELECT unnest(from_json(?, '{structure}'), recursive := true)"


def _column_types(conn: duckdb.DuckDBPyConnection, table: str) -> dict[str, str]:
    """The DuckDB types of ``table``'s :data:`COLUMNS` (an attempts-shaped table), read once per process."""
    key = (table, isinstance(conn, PushdownConnection))
    with _TABLE_TYPES_LOCK:
        known = _TABLE_TYPES.get(key)
    if known is None:
        described = {str(row[0]): str(row[1]) for row in conn.execute(f"DESCRIBE {table}").fetchall()}
        known = {column: described[column] for column in COLUMNS}
        with _TABLE_TYPES_LOCK:
            _TABLE_TYPES[key] = known
    return known


def in_texts(conn: duckdb.DuckDBPyConnection, values: Iterable[object]) -> tuple[str, object]:
    """``IN (...)`` over text ``values`` and its parameter, the fast way for ``conn``'s backend.

    A DuckDB file gets one JSON text (:data:`JSON_TEXTS`); the PostgreSQL backend's connection
    inlines an ``IN (SELECT unnest(?))`` list as literals, which PostgreSQL's indexes then serve
    (``backend.inline_filters``), so it keeps that form.

    Example:
        >>> fragment, param = in_texts(duckdb.connect(), ["a", "b"])
        >>> duckdb.sql(f"SELECT count(*) FROM (SELECT 'a' AS x) WHERE x {fragment}", params=[param]).fetchone()[0]
        1
    """
    if isinstance(conn, PushdownConnection):
        return "IN (SELECT unnest(?))", [str(value) for value in values]
    return f"IN (SELECT value FROM {JSON_TEXTS})", json_texts(values)


def load_stored_events(conn: duckdb.DuckDBPyConnection, attempt_ids: list[str]) -> list[LedgerEvent]:
    """Return the journalled events of ``attempt_ids``."""
    among, ids = in_texts(conn, attempt_ids)
    rows = conn.execute(f"SELECT payload FROM attempt_events WHERE attempt_id {among}", [ids]).fetchall()
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
        among, param = in_texts(conn, ids)
        held = conn.execute(f"SELECT job_id FROM attempts WHERE attempt_id {among} AND job_id IS NOT NULL", [param]).fetchall()
        found = {r[0] for r in held} | {
            e.fields["job_id"] for a in ids for e in by_attempt[a] if e.fields.get("job_id") is not None
        }
        new_jobs = sorted(found - jobs)
        jobs |= found
        if not new_jobs:
            break
        among, param = in_texts(conn, new_jobs)
        claimants = conn.execute(f"SELECT DISTINCT attempt_id FROM attempt_jobs WHERE job_id {among}", [param]).fetchall()
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
    """Bulk insert into an attempts-shaped ``table`` via one JSON parameter (far faster than list
    parameters or executemany; see :data:`JSON_TEXTS`)."""
    if not rows:
        return
    select = _from_json_rows(_column_types(conn, table))
    conn.execute(f"INSERT INTO {table} ({_SELECT_COLUMNS}) SELECT {_SELECT_COLUMNS} FROM ({select})", [_json_records(rows, COLUMNS)])


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
            conn.execute(f"DELETE FROM attempts WHERE attempt_id IN (SELECT value FROM {JSON_TEXTS})", [json_texts(attempt_ids)])
            insert_rows(conn, "attempts", rows)
            if job_ids:
                conn.execute(_DROP_EXTERNAL_DUPLICATES.format(jobs=f"SELECT value FROM {JSON_TEXTS}"), [json_texts(job_ids)])
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
           SELECT {", ".join(_EVENT_TYPES)} FROM ({_from_json_rows(_EVENT_TYPES)})
           {_KEEP_EARLIEST}""",
        [_json_records(({"event_id": e.event_id, "attempt_id": e.attempt_id, "revision": e.revision,
                         "written_at": e.written_at, "kind": e.kind, "payload": e.to_json()} for e in batch),
                       _EVENT_TYPES)],  # fmt: skip
    )
    if jobs:
        conn.execute(
            f"""INSERT INTO attempt_jobs
               SELECT {", ".join(_JOB_TYPES)} FROM ({_from_json_rows(_JOB_TYPES)})
               ON CONFLICT DO NOTHING""",
            [_json_records(({"event_id": e.event_id, "attempt_id": e.attempt_id, "job_id": str(e.fields["job_id"])}
                            for e in jobs), _JOB_TYPES)],  # fmt: skip
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
