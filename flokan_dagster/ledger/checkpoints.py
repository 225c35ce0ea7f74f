"""When a ledger file folds its write-ahead log into the database file (a DuckDB checkpoint).

DuckDB commits a transaction by appending it to ``<database>.wal`` (fsync'd: the commit is
durable there) and, by default, checkpoints when the last connection closes: it writes the
changed tables and *every changed index, whole*, into the file and empties the WAL. The ledger
opens and closes its file for every merge (other processes must be able to open it in between),
so that default rewrote the attempts' and the journal's indexes at every write: 0.68 s of a
1.6 s begin-and-finish on a ledger of 200,000 attempts, growing with the ledger.

Keeping the WAL instead costs every later open, readers' too, a replay of it: tens of
milliseconds for a few KiB (``benchmarks/bench_shared.py`` measures both sides). So a read-write
connection to a ledger file closes without checkpointing, and checkpoints explicitly, still under
the exclusive ledger lock, once the WAL has grown past :func:`wal_limit`: zero for a file under
16 MiB (whose checkpoint is cheap: every close checkpoints, as DuckDB does by default), then
proportional to the file (whose index rewrite the checkpoint costs), at most 32 KiB. A large
ledger pays its checkpoint once per several merges, and a reader's replay stays bounded.

Durability is DuckDB's own: a committed transaction is in the fsync'd WAL, which the next open
(read-only or not) replays, after a crash too. A copy of the ledger must take ``ledger.duckdb``
and ``ledger.duckdb.wal`` together (or run ``CHECKPOINT`` first); ``flokan-dagster`` itself never
copies it.

Example:
    >>> import os, tempfile, duckdb
    >>> path = os.path.join(tempfile.mkdtemp(), "l.duckdb")
    >>> conn = duckdb.connect(path); defer_checkpoint(conn)
    >>> _ = conn.execute("CREATE TABLE t AS SELECT 1 AS x")
    >>> close_ledger(conn, path, read_only=False)  # a small file: checkpointed
    >>> wal_bytes(path)
    0
"""

from __future__ import annotations

import logging
import os
from typing import Final

import duckdb

logger = logging.getLogger(__name__)

#: A checkpoint is due past ``file size / WAL_FILE_RATIO`` bytes of WAL, at most ``WAL_MAX_BYTES``;
#: a limit under ``WAL_MIN_BYTES`` (a file under 16 MiB) is zero: every close checkpoints.
WAL_MIN_BYTES: Final = 4 * 1024
WAL_MAX_BYTES: Final = 32 * 1024
WAL_FILE_RATIO: Final = 4096


def wal_path(database: str) -> str:
    """The write-ahead log DuckDB keeps beside the ledger file ``database``."""
    return database + ".wal"


def wal_bytes(database: str) -> int:
    """How many bytes the WAL of the ledger file ``database`` holds (0 when there is none)."""
    try:
        return os.path.getsize(wal_path(database))
    except OSError:
        return 0


def wal_limit(database: str) -> int:
    """How large the WAL of the ledger file ``database`` may grow before a checkpoint (0: none).

    Example:
        >>> wal_limit("/nonexistent/ledger.duckdb")
        0
    """
    try:
        size = os.path.getsize(database)
    except OSError:
        size = 0
    limit = min(WAL_MAX_BYTES, size // WAL_FILE_RATIO)
    return limit if limit >= WAL_MIN_BYTES else 0


def defer_checkpoint(conn: duckdb.DuckDBPyConnection) -> None:
    """Keep a read-write connection to a ledger file from checkpointing when it closes."""
    conn.execute("PRAGMA disable_checkpoint_on_shutdown")


def close_ledger(conn: duckdb.DuckDBPyConnection, database: str, *, read_only: bool) -> None:
    """Close a connection to the ledger file ``database``, checkpointing first when one is due.

    Call it with the exclusive ledger lock held for a read-write connection (a checkpoint writes
    the file). A checkpoint that fails leaves the committed transactions in the WAL, where every
    open still finds them; it is logged and tried again at the next close. Closing twice is allowed.
    """
    try:
        if not read_only and wal_bytes(database) > wal_limit(database):
            conn.execute("CHECKPOINT")
    except duckdb.ConnectionException:
        pass  # closed already, by a caller that closed before its lock was released
    except duckdb.Error as exc:
        logger.warning("ledger checkpoint deferred (%s); its WAL keeps every commit", type(exc).__name__)
    finally:
        conn.close()
