"""Spool replay converges: any order, any batching, any repetition gives the same ledger."""

from __future__ import annotations

import random
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import duckdb
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flokan_dagster.ledger import CreditLedger
from flokan_dagster.ledger.journal import apply_events
from flokan_dagster.ledger.records import COLUMNS, LedgerEvent, fold_events
from flokan_dagster.ledger.schema import ensure_schema

ATTEMPTS = [f"a{i}" for i in range(4)]
JOBS = [f"job-{i}" for i in range(4)]

operation = st.one_of(
    st.tuples(st.just("begin"), st.sampled_from(ATTEMPTS), st.integers(0, 100)),
    st.tuples(
        st.just("finish"),
        st.sampled_from(ATTEMPTS),
        st.sampled_from(["completed", "failed", "unknown"]),
        st.none() | st.sampled_from(JOBS),
        st.none() | st.integers(0, 100),
    ),
    st.tuples(
        st.just("settle"),
        st.sampled_from(ATTEMPTS),
        st.sampled_from(JOBS),
        st.sampled_from(["completed", "failed", "processing"]),
        st.integers(0, 100),
    ),
    st.tuples(
        st.just("external"),
        st.sampled_from(JOBS),
        st.sampled_from(["completed", "failed", "processing", "pending"]),
        st.integers(0, 100),
    ),
)


@pytest.fixture(scope="module")
def locked_database() -> Iterator[str]:
    """A ledger file held read-write by another process, so every write lands in the spool."""
    directory = Path(tempfile.mkdtemp())
    database = str(directory / "locked.duckdb")
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys, duckdb; c = duckdb.connect(sys.argv[1]); print('locked', flush=True); sys.stdin.read()", database],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    try:
        yield database
    finally:
        assert holder.stdin is not None
        holder.stdin.close()  # the holder exits when its stdin closes
        holder.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def spool_events(database: str, operations: list[tuple[Any, ...]]) -> list[LedgerEvent]:
    """Run ``operations`` through the public API against a locked file; return the spooled events."""
    spool_dir = Path(tempfile.mkdtemp())
    ledger = CreditLedger(database, spool_dir=spool_dir, lock_timeout_s=0.0, read_timeout_s=0.0)
    for op in operations:
        if op[0] == "begin":
            ledger.begin_attempt(asset="images", sku=op[1], prompt=f"p{op[2]}", model_tier="pro",
                                 estimated_credits=op[2], attempt_id=op[1])
        elif op[0] == "finish":
            ledger.finish_attempt(op[1], status=op[2], job_id=op[3], credits_consumed=op[4], error=f"e-{op[2]}")
        elif op[0] == "settle":
            ledger.settle_attempt(op[1], {"job_id": op[2], "status": op[3], "credits_consumed": op[4]})
        else:
            ledger.record_external_job({"job_id": op[1], "status": op[2], "credits_consumed": op[3]})
    events = [event for _, event in ledger.spool.pending()]
    shutil.rmtree(spool_dir)
    return events


def ledger_rows(conn: duckdb.DuckDBPyConnection) -> list[tuple[Any, ...]]:
    """Every ledger row, every column, in attempt order: what two replays are compared on."""
    return conn.execute(f"SELECT {', '.join(COLUMNS)} FROM attempts ORDER BY attempt_id").fetchall()


def replay(events: list[LedgerEvent], rng: random.Random, max_batch: int, redeliver_rate: float = 0.0) -> duckdb.DuckDBPyConnection:
    """Apply ``events`` to a fresh in-memory ledger in shuffled batches of 1..``max_batch``, as merges
    of spool files would; with ``redeliver_rate``, a batch is applied again with the two events before
    it (a crash after the commit, before the spool files were removed)."""
    shuffled = events[:]
    rng.shuffle(shuffled)
    conn = duckdb.connect()
    ensure_schema(conn)
    start = 0
    while start < len(shuffled):
        size = rng.randint(1, max_batch)
        apply_events(conn, shuffled[start : start + size])
        if rng.random() < redeliver_rate:
            apply_events(conn, shuffled[max(0, start - 2) : start + size])
        start += size
    return conn


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(operations=st.lists(operation, min_size=1, max_size=14), seed=st.integers(0, 2**32 - 1))
def test_replay_in_any_order_and_batching_converges(
    locked_database: str, operations: list[tuple[Any, ...]], seed: int
) -> None:
    events = spool_events(locked_database, operations)
    assert len(events) >= len({op for op in operations if op[0] != "external"})  # nothing dropped

    reference = duckdb.connect()
    ensure_schema(reference)
    apply_events(reference, events)
    expected = ledger_rows(reference)

    assert ledger_rows(replay(events, random.Random(seed), max_batch=4, redeliver_rate=0.3)) == expected

    # Invariants: every begun attempt is present, and no job is held by two rows of which one
    # is external (the job's credits would count twice).
    rows = reference.execute("SELECT attempt_id, origin, job_id FROM attempts").fetchall()
    begun = {op[1] for op in operations if op[0] == "begin"}
    assert begun <= {r[0] for r in rows}
    owned = {r[2] for r in rows if r[1] != "external" and r[2] is not None}
    assert not any(r[1] == "external" and r[2] in owned for r in rows)


@given(operations=st.lists(operation, min_size=1, max_size=10), seed=st.integers(0, 2**32 - 1))
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
def test_fold_is_order_independent(locked_database: str, operations: list[tuple[Any, ...]], seed: int) -> None:
    events = spool_events(locked_database, [op for op in operations if op[0] != "external"])
    by_attempt: dict[str, list[LedgerEvent]] = {}
    for event in events:
        by_attempt.setdefault(event.attempt_id, []).append(event)
    rng = random.Random(seed)
    for group in by_attempt.values():
        shuffled = group + group[: rng.randint(0, len(group))]
        rng.shuffle(shuffled)
        assert fold_events(shuffled) == fold_events(group)


def test_flush_spool_replays_a_copied_spool_into_a_fresh_file(locked_database: str, tmp_path: Path) -> None:
    spool_dir = tmp_path / "spool"
    writer = CreditLedger(locked_database, spool_dir=spool_dir, lock_timeout_s=0.0, read_timeout_s=0.0)
    aid = writer.begin_attempt(asset="images", sku="S", prompt="p", model_tier="pro", fingerprint="fp")
    writer.finish_attempt(aid, status="unknown", error="timeout")
    writer.settle_attempt(aid, {"job_id": "j", "status": "completed", "credits_consumed": 50})
    assert writer.spooled_count() == 3

    fresh = CreditLedger(str(tmp_path / "fresh.duckdb"), spool_dir=spool_dir)
    assert fresh.flush_spool() == 0
    rec = fresh.get_attempt(aid)
    assert rec is not None
    assert (rec.status, rec.origin, rec.job_id, rec.credits_consumed, rec.error) == (
        "completed", "reconciled", "j", 50, None)
