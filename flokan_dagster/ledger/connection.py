"""Short-lived DuckDB connections that wait out a locked database instead of failing.

Every ledger open goes through ``locked_connection``: it first takes the ledger's cross-process
file lock (``locking.LedgerFileLock``; exclusive to write, shared to read), because DuckDB reads a
file's header before taking its own lock and so cannot keep two processes from working on one
file on its own (see ``locking``). Under that lock, a DuckDB open can still meet a process that
does not use it (a notebook holding the file): DuckDB then fails at once with ``IOException:
Could not set lock``, and opening retries with capped, fully jittered exponential backoff until
the same deadline.

Example:
    >>> import tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "l.duckdb")
    >>> conn = connect_with_retry(path, read_only=False, timeout_s=1.0)
    >>> conn.close()
"""

from __future__ import annotations

import hashlib
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import Final

import duckdb

from flokan_dagster.ledger.backend import is_unreachable, open_database
from flokan_dagster.ledger.checkpoints import close_ledger, defer_checkpoint
from flokan_dagster.ledger.locking import LedgerFileLock, LockNoLongerNeeded, LockTimeout

# MotherDuck and the shared PostgreSQL backend: connection strings, not files; never logged as is.
_REMOTE_PREFIXES: Final = ("md:", "motherduck:", "postgresql://", "postgres://")


class LedgerLockedError(TimeoutError):
    """The ledger database stayed locked by another connection past the deadline."""


_PROCESS_LOCKS: dict[str, threading.RLock] = {}
_SPOOL_COUNTERS: dict[str, SpoolCounter] = {}
_PROCESS_LOCKS_GUARD = threading.Lock()


def process_lock(database: str) -> threading.RLock:
    """Return the lock that serialises this process's connections to ``database``.

    DuckDB shares one database instance per file within a process, and a read-only open next to
    an open read-write connection (or two opens racing) fails; taking turns in-process is both
    cheaper and kinder than letting threads burn their retry budget on each other.
    """
    key = database if is_remote(database) else str(Path(database).resolve())
    with _PROCESS_LOCKS_GUARD:
        return _PROCESS_LOCKS.setdefault(key, threading.RLock())


class SpoolCounter:
    """How many events this process has spooled for one database (thread-safe).

    The thread that merges compares it before and after a merge to know whether more arrived.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._value = 0

    def bump(self) -> None:
        """Count one more spooled write."""
        with self._lock:
            self._value += 1

    @property
    def value(self) -> int:
        """The count so far."""
        with self._lock:
            return self._value


def spool_counter(database: str) -> SpoolCounter:
    """Return this process's SpoolCounter for ``database`` (shared like ``process_lock``)."""
    key = database if is_remote(database) else str(Path(database).resolve())
    with _PROCESS_LOCKS_GUARD:
        return _SPOOL_COUNTERS.setdefault(key, SpoolCounter())


def is_remote(database: str) -> bool:
    """Return True for a connection string (MotherDuck, PostgreSQL) rather than a file path."""
    return database.lower().startswith(_REMOTE_PREFIXES)


def describe(database: str) -> str:
    """Return a loggable name for ``database``: a file path as is, a remote string as a digest.

    A MotherDuck string may carry ``motherduck_token=...``; it must never reach logs or errors.

    Example:
        >>> describe("md:ledger?motherduck_token=secret").startswith("md:<")
        True
    """
    if is_remote(database):
        scheme = database.split(":", 1)[0].lower()
        return f"{scheme}:<{hashlib.sha256(database.encode()).hexdigest()[:12]}>"
    return database


def database_file(database: str) -> Path | None:
    """Return the file behind ``database``, or None for a remote database."""
    return None if is_remote(database) else Path(database)


def is_transient(exc: BaseException) -> bool:
    """Return True for the errors that mean "someone else has the database right now"."""
    message = str(exc)
    if is_unreachable(exc):
        # A shared PostgreSQL ledger that cannot be reached right now: like a locked file.
        return True
    if isinstance(exc, duckdb.IOException):
        return "Could not set lock" in message
    if isinstance(exc, duckdb.ConnectionException):
        # Same process, other configuration: the caller's own connection to the file is open.
        return "different configuration" in message
    # DuckDB 1.5 has no ResourceInUseException (later versions raise it for racing opens).
    resource_in_use = getattr(duckdb, "ResourceInUseException", None)
    if resource_in_use is not None and isinstance(exc, resource_in_use):
        # Two opens of the same file racing inside one process.
        return True
    return False


def connect_with_retry(
    database: str,
    *,
    read_only: bool,
    timeout_s: float,
    initial_backoff_s: float = 0.01,
    max_backoff_s: float = 0.5,
) -> duckdb.DuckDBPyConnection:
    """Open ``database``, retrying lock conflicts until ``timeout_s`` has passed.

    Args:
        database: A DuckDB database string: a file path or an ``md:`` string.
        read_only: Open read-only (readers) or read-write (the writer).
        timeout_s: How long to keep retrying a locked database; 0 tries once.
        initial_backoff_s: The first retry's backoff ceiling; doubles per retry.
        max_backoff_s: Cap on the backoff ceiling.

    Raises:
        LedgerLockedError: Still locked at the deadline.
        duckdb.Error: Any other failure to open.
    """
    conn = connect_unless(
        database,
        read_only=read_only,
        timeout_s=timeout_s,
        no_longer_needed=lambda: False,
        initial_backoff_s=initial_backoff_s,
        max_backoff_s=max_backoff_s,
    )
    assert conn is not None  # only a true no_longer_needed() yields None
    return conn


def connect_unless(
    database: str,
    *,
    read_only: bool,
    timeout_s: float,
    no_longer_needed: Callable[[], bool],
    initial_backoff_s: float = 0.01,
    max_backoff_s: float = 0.5,
) -> duckdb.DuckDBPyConnection | None:
    """Like ``connect_with_retry``, but return None as soon as ``no_longer_needed()`` is true.

    A writer waiting for the lock uses this to notice that another process, merging the shared
    spool, has already committed its events (group commit under contention).

    Raises:
        LedgerLockedError: Still locked at the deadline.
        duckdb.Error: Any other failure to open.
    """
    deadline = time.monotonic() + timeout_s
    ceiling = initial_backoff_s
    while True:
        try:
            return open_database(database, read_only=read_only)
        except duckdb.Error as exc:
            if not is_transient(exc):
                raise
            if no_longer_needed():
                return None
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise LedgerLockedError(
                    f"ledger {describe(database)} stayed locked for {timeout_s:.1f}s"
                ) from None
            time.sleep(min(remaining, random.uniform(0, ceiling)))
            ceiling = min(ceiling * 2, max_backoff_s)


@contextmanager
def locked_connection(
    database: str,
    lock: LedgerFileLock,
    *,
    read_only: bool,
    timeout_s: float,
    no_longer_needed: Callable[[], bool] = lambda: False,
) -> Iterator[duckdb.DuckDBPyConnection | None]:
    """Hold ``lock`` and a DuckDB connection for the ``with`` block; the one way the ledger opens.

    The lock is exclusive for a read-write connection and shared for a read-only one, and it is
    held until the block ends, *after* the connection is closed: closing a read-write connection
    may checkpoint (``checkpoints``: when its WAL is due), and whatever the caller does after
    closing (deleting merged spool files) must also happen before another process may open the
    file. The caller holds the in-process lock.

    Yields:
        The connection, or None if ``no_longer_needed()`` became true while waiting.

    Raises:
        LedgerLockedError: The lock or the file stayed held past ``timeout_s`` (both waits share
            one deadline).
        duckdb.Error: Any other failure to open.
    """
    deadline = time.monotonic() + timeout_s
    held = ExitStack()
    try:
        held.enter_context(lock.hold(exclusive=not read_only, timeout_s=timeout_s, no_longer_needed=no_longer_needed))
    except LockNoLongerNeeded:
        yield None
        return
    except LockTimeout:
        raise LedgerLockedError(f"ledger {describe(database)} stayed locked for {timeout_s:.1f}s") from None
    with held:
        conn = connect_unless(
            database,
            read_only=read_only,
            timeout_s=max(0.0, deadline - time.monotonic()),
            no_longer_needed=no_longer_needed,
        )
        try:
            if conn is not None and not read_only and database_file(database) is not None:
                defer_checkpoint(conn)
            yield conn
        finally:
            if conn is not None:
                release(conn, database, read_only=read_only)


def release(conn: duckdb.DuckDBPyConnection, database: str, *, read_only: bool) -> None:
    """Close a ledger connection; one to a file checkpoints first when its WAL is due (``checkpoints``).

    The caller holds the ledger lock (exclusive for a read-write connection). Closing twice is allowed.
    """
    if database_file(database) is None:
        conn.close()
    else:
        close_ledger(conn, database, read_only=read_only)
