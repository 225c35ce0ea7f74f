"""Keeping a ledger file's attempts in (asset, SKU) order, so a run reads its batch's rows only.

A run reads the attempts that decide its SKUs (``CreditLedger.deciding_attempts``). DuckDB keeps
no index it can range-scan; it skips a block of rows by the block's min/max (its zonemap). Rows
appended over years of refreshes hold every SKU in every block, so that read touched every block
of the file: 95 ms at 1,000,000 attempts, against 20 ms on an empty ledger (``bench_scale``).
Rewritten in (asset, SKU) order, a batch of neighbouring SKUs lives in a block or two, and the
same read skips the rest.

DuckDB cannot keep a table sorted as rows arrive, so the order is restored by a rewrite
(:func:`compact_attempts`): every row copied, in order, into a new table with the same schema and
primary key, checked row for row against the old one (count and a digest of every column), then
put in its place, all in one transaction. A crash or a failed check rolls it back whole; nothing
is lost or changed but the order. Rows written since live in a short unsorted tail, which every
read scans, until the next rewrite.

The rewrite holds the ledger's exclusive lock for its duration (about 7 s per 1,000,000 attempts
on two cores, ``bench_scale``): writers spool meanwhile, and a read waits up to its timeout. It
is run as maintenance (``flokan-dagster ledger compact``), not on the write path. A shared
PostgreSQL ledger needs none: its B-tree indexes find a batch's rows.

Example:
    >>> import duckdb
    >>> from flokan_dagster.ledger.schema import ensure_schema
    >>> conn = duckdb.connect(); ensure_schema(conn)
    >>> layout(conn).unsorted_rows
    0
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Final

import duckdb

from flokan_dagster.ledger.records import COLUMNS
from flokan_dagster.ledger.schema import TABLES

#: The order a compaction leaves the attempts in: a run's batch is one asset's neighbouring SKUs.
SORT_ORDER: Final = "asset, sku, recorded_at, attempt_id"
#: A compaction is due when at least this share of the attempts was written since the last one.
DUE_FRACTION: Final = 0.05
#: A batch's rows lie together when its SKU range holds at most this many attempts per SKU of the
#: batch, or ``TOGETHER_MIN_ROWS``: then they are read whole, in one pruned scan. Past it, choosing
#: the deciding rows first costs less (measured at 90 attempts per SKU, ``bench_scale``'s 10M rows).
TOGETHER_ROWS_PER_SKU: Final = 64
TOGETHER_MIN_ROWS: Final = 2048

_LAYOUT_TABLE: Final = "attempts_layout"
_NEW_TABLE: Final = "attempts_compacted"
_COLUMN_LIST: Final = ", ".join(COLUMNS)
_SPAN: Final = "asset = ? AND sku BETWEEN ? AND ?"
_SKU, _RECORDED_AT, _ATTEMPT_ID = (COLUMNS.index(name) for name in ("sku", "recorded_at", "attempt_id"))


class LedgerCompactionError(RuntimeError):
    """The rewritten attempts did not match the old ones; the compaction was rolled back."""


@dataclass(frozen=True)
class Layout:
    """How much of the attempts table is in :data:`SORT_ORDER`.

    Attributes:
        rows: Attempts in the table.
        sorted_rows: Attempts the last compaction wrote in order (0 if none ran).
    """

    rows: int
    sorted_rows: int

    @property
    def unsorted_rows(self) -> int:
        """Attempts written since the last compaction (a lower bound: a rewritten row keeps the count)."""
        return max(0, self.rows - self.sorted_rows)

    def due(self, fraction: float = DUE_FRACTION) -> bool:
        """Whether at least ``fraction`` of the attempts was written since the last compaction."""
        return self.unsorted_rows > 0 and self.unsorted_rows >= fraction * self.rows


@dataclass(frozen=True)
class Compaction:
    """What :meth:`CreditLedger.compact` did.

    Attributes:
        before: The layout found.
        compacted: Whether the attempts were rewritten.
        seconds: How long the ledger was held, commit and checkpoint included (0 when nothing was done).
        reason: Why nothing was done, when nothing was.
    """

    before: Layout
    compacted: bool
    seconds: float = 0.0
    reason: str = ""

    def describe(self) -> str:
        """One line for a log or the CLI."""
        if not self.compacted:
            return f"nothing to do: {self.reason}"
        return (f"{self.before.rows:,} attempts rewritten in (asset, SKU) order in {self.seconds:.1f} s "
                f"({self.before.unsorted_rows:,} written since the last compaction)")  # fmt: skip


def layout(conn: duckdb.DuckDBPyConnection) -> Layout:
    """The layout of the ledger's attempts table (``count(*)`` is read from DuckDB's metadata)."""
    found = conn.execute("SELECT count(*) FROM attempts").fetchone()
    rows = int(found[0]) if found else 0
    if not _ever_compacted(conn):
        return Layout(rows, 0)
    kept = conn.execute(f"SELECT max(sorted_rows) FROM {_LAYOUT_TABLE}").fetchone()
    return Layout(rows, int(kept[0]) if kept and kept[0] is not None else 0)


def batch_read_whole(conn: duckdb.DuckDBPyConnection, asset: str, skus: list[str]) -> list[tuple[Any, ...]] | None:
    """Every attempt of ``asset`` for ``skus`` (rows of ``COLUMNS``, oldest first), when a compacted
    ledger keeps them together; None otherwise.

    Together means few attempts between the batch's first and last SKU (neighbouring SKUs in a
    compacted file): they are read whole, from a block or two. A ledger never compacted is not
    tried (counting would scan it whole).
    """
    if not skus or not _ever_compacted(conn):
        return None
    limit = max(TOGETHER_MIN_ROWS, TOGETHER_ROWS_PER_SKU * len(skus))
    span = [asset, min(skus), max(skus)]
    # Counted over two narrow columns first, the LIMIT ending the count of a spread batch at the
    # first blocks it reads: fetching whole rows of a spread range would decode every column of them.
    counted = conn.execute(f"SELECT count(*) FROM (SELECT 1 FROM attempts WHERE {_SPAN} LIMIT ?)", [*span, limit + 1]).fetchone()
    if counted is None or counted[0] > limit:
        return None
    rows = conn.execute(f"SELECT {_COLUMN_LIST} FROM attempts WHERE {_SPAN}", span).fetchall()
    wanted = set(skus)
    return sorted((row for row in rows if row[_SKU] in wanted), key=lambda row: (row[_RECORDED_AT], row[_ATTEMPT_ID]))


def compact_attempts(conn: duckdb.DuckDBPyConnection) -> int:
    """Rewrite the attempts table in :data:`SORT_ORDER`, in the caller's open transaction.

    Returns:
        The number of attempts rewritten.

    Raises:
        LedgerCompactionError: The table holds a column or an index this code does not know (the
            rewrite would drop it), or the new table's rows differ from the old one's (the caller
            rolls back, leaving the old table as it was).
    """
    _check_rewritable(conn)
    conn.execute(_attempts_ddl(_NEW_TABLE))
    conn.execute(f"INSERT INTO {_NEW_TABLE} ({_COLUMN_LIST}) SELECT {_COLUMN_LIST} FROM attempts ORDER BY {SORT_ORDER}")
    old, new = _digest(conn, "attempts"), _digest(conn, _NEW_TABLE)
    if old != new:
        raise LedgerCompactionError(f"the rewritten attempts differ from the ledger's (rows, digest {new} != {old})")
    conn.execute("DROP TABLE attempts")
    conn.execute(f"ALTER TABLE {_NEW_TABLE} RENAME TO attempts")
    conn.execute(f"CREATE TABLE IF NOT EXISTS {_LAYOUT_TABLE} (compacted_at TIMESTAMP NOT NULL, sorted_rows BIGINT NOT NULL)")
    conn.execute(f"DELETE FROM {_LAYOUT_TABLE}")
    conn.execute(f"INSERT INTO {_LAYOUT_TABLE} VALUES (current_timestamp, ?)", [old[0]])
    return old[0]


def compact_if_due(conn: duckdb.DuckDBPyConnection, *, force: bool, fraction: float = DUE_FRACTION) -> Compaction:
    """Compact in the caller's open transaction when due (or ``force``); say what was done."""
    before = layout(conn)
    if before.rows == 0:
        return Compaction(before, compacted=False, reason="the ledger holds no attempts")
    if not force and not before.due(fraction):
        return Compaction(before, compacted=False, reason=(
            f"{before.unsorted_rows:,} of {before.rows:,} attempts written since the last compaction "
            f"(due at {fraction:.0%}; --force to rewrite anyway)"))  # fmt: skip
    compact_attempts(conn)
    return Compaction(before, compacted=True)


def _ever_compacted(conn: duckdb.DuckDBPyConnection) -> bool:
    """Whether a compaction has run on this ledger (it creates the layout table)."""
    return bool(conn.execute(f"SELECT 1 FROM duckdb_tables() WHERE table_name = '{_LAYOUT_TABLE}'").fetchall())


def _check_rewritable(conn: duckdb.DuckDBPyConnection) -> None:
    """Refuse a table the rewrite would not carry over whole: a column this code does not know (a
    newer version's migration, an analyst's), or an index someone added."""
    here = "table_name = 'attempts' AND database_name = current_database() AND schema_name = current_schema()"
    columns = [row[0] for row in conn.execute(f"SELECT column_name FROM duckdb_columns() WHERE {here}").fetchall()]
    unknown = sorted(set(columns) - set(COLUMNS))
    indexes = sorted(row[0] for row in conn.execute(f"SELECT index_name FROM duckdb_indexes() WHERE {here}").fetchall())
    if unknown or indexes:
        found = "; ".join(part for part in (f"column(s) {', '.join(unknown)}" if unknown else "",
                                            f"index(es) {', '.join(indexes)}" if indexes else "") if part)  # fmt: skip
        raise LedgerCompactionError(
            f"the ledger's attempts table has {found} that this version of flokan-dagster does not know, and a "
            "compaction would drop them; upgrade flokan-dagster, or drop them yourself, before compacting"
        )


def _attempts_ddl(name: str) -> str:
    """The attempts table's own definition (columns, checks, primary key) under another name."""
    marker = "CREATE TABLE IF NOT EXISTS attempts ("
    (statement,) = [s for s in TABLES if marker in s]
    return statement.replace(marker, f"CREATE TABLE {name} (", 1)


def _digest(conn: duckdb.DuckDBPyConnection, table: str) -> tuple[int, int]:
    """(rows, sum of a hash of every column of every row): equal for the same rows in any order."""
    found = conn.execute(f"SELECT count(*), coalesce(sum(hash({_COLUMN_LIST})::HUGEINT), 0) FROM {table}").fetchone()
    assert found is not None
    return int(found[0]), int(found[1])
