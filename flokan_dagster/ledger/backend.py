"""Where the ledger's tables live: an embedded DuckDB file (default) or a shared PostgreSQL.

The seam is one function, :func:`open_database`: every ledger connection is a DuckDB connection,
so the journal, the fold, the spool overlay and every cost query run unchanged on both backends.

- **DuckDB file** (``ledger.duckdb``, or ``md:...``): ``duckdb.connect(database)``; one writer
  at a time by DuckDB's file lock.
- **PostgreSQL** (``postgresql://user@host:5432/db``): an in-memory DuckDB that ``ATTACH``es the
  database with DuckDB's postgres extension and ``USE``s it. Tables and the journal are
  PostgreSQL tables, so writes are PostgreSQL transactions that any number of machines can make;
  merges from different machines are serialized by a transaction-scoped advisory lock
  (:func:`serialize_writers`), the cross-machine counterpart of the file lock. The cost views are
  DuckDB views (in the in-memory catalog, found through the search path) over the attached
  tables, so DuckDB's engine answers every cost query.

The extension is loaded from the ``duckdb-extension-postgres`` wheel by path (no download), under
the file name ``postgres_scanner.duckdb_extension`` that DuckDB requires; with internet access
and no wheel, ``INSTALL postgres`` is tried instead.

Example:
    >>> is_postgres("postgresql://flokan@127.0.0.1:5432/flokan"), is_postgres("ledger.duckdb")
    (True, False)
"""

from __future__ import annotations

import hashlib
import math
import re
import shutil
import tempfile
import threading
from collections.abc import Sequence
from datetime import date, datetime, timezone
from pathlib import Path
from typing import Any, Final

import duckdb

ATTACHED_NAME: Final = "flokan_ledger"
_POSTGRES_PREFIXES: Final = ("postgresql://", "postgres://")
# A constant key for pg_advisory_xact_lock: "one ledger merge at a time" in this database.
_MERGE_LOCK_KEY: Final = int.from_bytes(hashlib.sha256(b"flokan-ledger-merge").digest()[:7], "big")
_EXTENSION_LOCK = threading.Lock()
_extension_path: Path | None = None
_PARENTS: dict[str, duckdb.DuckDBPyConnection] = {}
_PARENTS_LOCK = threading.Lock()


class LedgerBackendError(RuntimeError):
    """The ledger's backend cannot be used as configured (e.g. the postgres extension is missing)."""


def is_postgres(database: str) -> bool:
    """Return True for a PostgreSQL connection string (the shared backend)."""
    return database.lower().startswith(_POSTGRES_PREFIXES)


def postgres_extension_path() -> Path | None:
    """Return the postgres extension from the ``duckdb-extension-postgres`` wheel, ready to LOAD.

    DuckDB checks that an extension file's name matches the extension inside, which is
    ``postgres_scanner``; the wheel ships it as ``postgres.duckdb_extension``, so it is copied
    once per process into a private temporary directory under the right name.
    """
    global _extension_path
    with _EXTENSION_LOCK:
        if _extension_path is not None and _extension_path.exists():
            return _extension_path
        try:
            import duckdb_extension_postgres  # type: ignore[import-not-found,unused-ignore]
        except ImportError:
            return None
        root = Path(duckdb_extension_postgres.__file__).parent / "extensions" / f"v{duckdb.__version__}"
        shipped = root / "postgres.duckdb_extension"
        if not shipped.exists():
            return None
        target = Path(tempfile.mkdtemp(prefix="flokan-duckdb-ext-")) / "postgres_scanner.duckdb_extension"
        shutil.copyfile(shipped, target)
        _extension_path = target
        return target


def _load_postgres_extension(conn: duckdb.DuckDBPyConnection) -> None:
    path = postgres_extension_path()
    if path is not None:
        conn.execute(f"LOAD '{path}'")
        return
    try:
        conn.execute("INSTALL postgres")
        conn.execute("LOAD postgres")
    except duckdb.Error as exc:
        raise LedgerBackendError(
            "a postgresql:// ledger needs DuckDB's postgres extension: pip install 'flokan-dagster[shared]' "
            f"(duckdb-extension-postgres=={duckdb.__version__}) ({type(exc).__name__})"
        ) from None


def open_database(database: str, *, read_only: bool) -> duckdb.DuckDBPyConnection:
    """Open a DuckDB connection to the ledger ``database`` on whichever backend it names.

    For PostgreSQL, loading the extension and attaching cost about half a second, so each
    process keeps one attached DuckDB instance per database and hands out cursors of it (each a
    connection of its own, closed by the caller); the server checks the link on every open, and
    a broken one is dropped and attached afresh.

    Raises:
        duckdb.Error: The database cannot be opened (locked file, unreachable server, ...).
        LedgerBackendError: The postgres extension is not available.
    """
    if not is_postgres(database):
        conn = duckdb.connect(database, read_only=read_only)
        quiet(conn)
        return conn
    with _PARENTS_LOCK:
        parent = _PARENTS.get(database)
        if parent is None:
            parent = _attach(database)
            _PARENTS[database] = parent
        try:
            conn = parent.cursor()
        except duckdb.Error:
            _forget(database)
            raise
    try:
        quiet(conn)
        conn.execute(f"USE {ATTACHED_NAME}")
        # Tables in PostgreSQL first, then the cost views kept in the in-memory DuckDB.
        conn.execute(f"SET search_path = '{ATTACHED_NAME}.public,memory.main'")
        # A round trip: an unreachable server fails here, before anything is written.
        conn.execute(f"SELECT * FROM postgres_query('{ATTACHED_NAME}', 'SELECT 1')").fetchall()
    except BaseException:
        conn.close()
        with _PARENTS_LOCK:
            _forget(database)
        raise
    return PushdownConnection(conn)  # type: ignore[return-value]


_IN_UNNEST: Final = re.compile(r"IN\s*\(\s*SELECT\s+unnest\(\s*$", re.IGNORECASE)


def sql_literal(value: object) -> str:
    """``value`` as a DuckDB SQL literal (strings quoted with ``'`` doubled).

    Example:
        >>> sql_literal("it's"), sql_literal(None), sql_literal(3), sql_literal(True)
        ("'it''s'", 'NULL', '3', 'TRUE')
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int | float):
        return repr(value)
    if isinstance(value, datetime):
        kind = "TIMESTAMPTZ" if value.tzinfo is not None else "TIMESTAMP"
        return f"{kind} '{value.isoformat(sep=' ')}'"
    if isinstance(value, date):
        return f"DATE '{value.isoformat()}'"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no SQL literal for {type(value).__name__}")


def inline_filters(sql: str, params: Sequence[Any]) -> tuple[str, list[Any]]:
    """Inline the scalar parameters and the ``IN (SELECT unnest(?))`` lists of ``sql`` as literals.

    DuckDB's postgres extension pushes a filter down to PostgreSQL (and its indexes) only when its
    values are constants in the SQL: with a parameter, every lookup by attempt or job id read the
    whole table over the wire (2.5 s per begin + finish at 200,000 rows, growing with the ledger).
    Lists elsewhere (``unnest(?) AS column`` in a bulk insert) stay parameters.

    Example:
        >>> inline_filters("SELECT 1 FROM t WHERE a = ? AND b IN (SELECT unnest(?))", ["x", ["p", "q"]])
        ("SELECT 1 FROM t WHERE a = 'x' AND b IN ('p', 'q')", [])
    """
    pieces = sql.split("?")
    if len(pieces) - 1 != len(params):
        return sql, list(params)  # not a shape this understands: leave it to DuckDB
    out, kept = [pieces[0]], []
    for value, after in zip(params, pieces[1:], strict=True):
        before = out[-1]
        if isinstance(value, list | tuple):
            opening = _IN_UNNEST.search(before)
            closing = re.match(r"^\s*\)\s*\)", after)
            if opening and closing:
                items = ", ".join(sql_literal(v) for v in value) or "NULL"
                out[-1] = before[: opening.start()] + f"IN ({items})"
                out.append(after[closing.end():])
                continue
            kept.append(value)
            out.append("?" + after)
            continue
        try:
            literal = sql_literal(value)
        except TypeError:
            kept.append(value)
            out.append("?" + after)
            continue
        out.append(literal + after)
    return "".join(out), kept


class PushdownConnection:
    """A DuckDB connection to the PostgreSQL ledger whose ``execute`` inlines filter values.

    Everything else is the wrapped connection's (see :func:`inline_filters` for why).
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection) -> None:
        self._conn = conn

    def execute(self, query: str, parameters: Sequence[Any] | None = None) -> duckdb.DuckDBPyConnection:
        """Execute ``query``, its filter values inlined so PostgreSQL applies them."""
        if parameters:
            query, kept = inline_filters(query, parameters)
            if kept:
                return self._conn.execute(query, kept)
        return self._conn.execute(query)

    def __getattr__(self, name: str) -> Any:
        return getattr(self._conn, name)

    def __enter__(self) -> PushdownConnection:
        return self

    def __exit__(self, *exc: object) -> None:
        self._conn.close()


def _attach(database: str) -> duckdb.DuckDBPyConnection:
    """A new in-memory DuckDB with ``database`` attached and the ledger's tables in place."""
    # Attached read-write even for readers: a reader may be the first to reach a new database
    # and must find the tables (it writes nothing else).
    conn = duckdb.connect()
    try:
        quiet(conn)  # it creates the tables, waiting for other machines' merges
        _load_postgres_extension(conn)
        conn.execute(f"ATTACH '{_quote(database)}' AS {ATTACHED_NAME} (TYPE postgres)")
        conn.execute(f"USE {ATTACHED_NAME}")
        from flokan_dagster.ledger.schema import ensure_schema  # it imports this module

        ensure_schema(conn)
    except BaseException:
        conn.close()
        raise
    return conn


def quiet(conn: duckdb.DuckDBPyConnection) -> None:
    """Turn off DuckDB's progress bar on a ledger connection.

    DuckDB draws it on the process's stdout for any statement running over two seconds, which a
    ledger write does when it waits for another machine's merge or a busy file: it would land in
    a run's logs, or in the output of a program whose stdout is data.
    """
    conn.execute("SET enable_progress_bar = false")  # a setting of each connection (cursor)


def _forget(database: str) -> None:
    """Drop this process's attached instance of ``database`` (the caller holds the lock)."""
    parent = _PARENTS.pop(database, None)
    if parent is not None:
        try:
            parent.close()
        except duckdb.Error:
            pass


def is_unreachable(exc: BaseException) -> bool:
    """Return True for a PostgreSQL server that cannot be reached right now (a transient state).

    A write then stays in the durable spool, exactly as for a locked DuckDB file.
    """
    if not isinstance(exc, duckdb.Error):
        return False
    message = str(exc)
    return any(
        marker in message
        for marker in (
            "Unable to connect to Postgres",
            "server closed the connection",
            "terminating connection",
            "Connection refused",
            "the database system is starting up",
            "the database system is shutting down",
            "too many clients",
        )
    )


def uses_postgres(conn: duckdb.DuckDBPyConnection) -> bool:
    """Return True when ``conn``'s current database is an attached PostgreSQL ledger."""
    if isinstance(conn, PushdownConnection):
        return True  # what open_database returns for PostgreSQL, without a query per merge
    row = conn.execute(
        "SELECT type FROM duckdb_databases() WHERE database_name = current_database()"
    ).fetchone()
    return row is not None and row[0] == "postgres"


def serialize_writers(conn: duckdb.DuckDBPyConnection) -> None:
    """Inside an open transaction, wait until no other ledger merge is running (any machine).

    A merge reads the journal, folds and rewrites rows; two at once on PostgreSQL could each
    fold without the other's events. The advisory lock is released by the transaction's commit
    or rollback, and by the server if the process dies. A no-op for a DuckDB file, which has one
    writer at a time by its file lock.
    """
    if uses_postgres(conn):
        execute_in_postgres(conn, writers_lock_statements())


def writers_lock_statements() -> list[str]:
    """What :func:`serialize_writers` runs in PostgreSQL, first in a transaction.

    A merge that also writes natively puts its first writes in the same round trip, after these.
    """
    # DuckDB's postgres extension opens REPEATABLE READ transactions, whose snapshot is taken by
    # the first statement: the lock's own, before it waits. The merge would then fold from a
    # journal missing what the merge it waited for committed. READ COMMITTED gives every
    # statement after the lock a fresh snapshot (it must come before any query).
    return ["SET TRANSACTION ISOLATION LEVEL READ COMMITTED", f"SELECT pg_advisory_xact_lock({_MERGE_LOCK_KEY})"]


def execute_in_postgres(conn: duckdb.DuckDBPyConnection, statements: Sequence[str]) -> None:
    """Run ``statements`` (PostgreSQL's SQL) in PostgreSQL itself, in ``conn``'s open transaction.

    One round trip for all of them (``postgres_execute`` runs a script on the connection of the
    DuckDB transaction, so they commit or roll back with it and later reads in the transaction
    see them). The ledger's writes go this way on PostgreSQL: DuckDB's postgres extension runs an
    ``INSERT ... ON CONFLICT`` by copying the whole target table to the client to find the
    conflicts (the whole journal, payloads included, for every merge), and a ``DELETE`` by first
    fetching the rows' ``ctid``s, each statement also costing 5-35 ms of planning in the client:
    all of it while the merge holds the lock every machine's writers wait for. PostgreSQL does
    the same statements through its indexes in about a millisecond.

    Values in ``statements`` must be written with :func:`postgres_literal`.
    """
    # SET LOCAL takes no snapshot, so a SET TRANSACTION ISOLATION LEVEL may still follow it.
    script = "; ".join(["SET LOCAL standard_conforming_strings = on", *statements])
    conn.execute(f"CALL postgres_execute('{ATTACHED_NAME}', ?)", [script])


def postgres_literal(value: object) -> str:
    """``value`` as a PostgreSQL literal for :func:`execute_in_postgres`.

    Timestamps are the ledger's naive UTC (an aware one is converted to UTC first); strings are
    standard-conforming (``execute_in_postgres`` sets that), with ``'`` doubled.

    Example:
        >>> postgres_literal("it's"), postgres_literal(None), postgres_literal(7)
        ("'it''s'", 'NULL', '7')
        >>> from datetime import timedelta, timezone
        >>> postgres_literal(datetime(2026, 1, 2, 4, 0, tzinfo=timezone(timedelta(hours=1))))
        "'2026-01-02T03:00:00'::timestamp"
    """
    if value is None:
        return "NULL"
    if isinstance(value, bool):
        return "TRUE" if value else "FALSE"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            raise ValueError(f"no PostgreSQL literal for {value!r}")
        return repr(value)
    if isinstance(value, datetime):
        if value.tzinfo is not None:
            value = value.astimezone(timezone.utc).replace(tzinfo=None)
        return f"'{value.isoformat()}'::timestamp"
    if isinstance(value, date):
        return f"'{value.isoformat()}'::date"
    if isinstance(value, str):
        return "'" + value.replace("'", "''") + "'"
    raise TypeError(f"no PostgreSQL literal for {type(value).__name__}")


def _quote(text: str) -> str:
    return text.replace("'", "''")


__all__ = [
    "ATTACHED_NAME",
    "LedgerBackendError",
    "execute_in_postgres",
    "is_postgres",
    "is_unreachable",
    "open_database",
    "postgres_extension_path",
    "postgres_literal",
    "serialize_writers",
    "uses_postgres",
]
