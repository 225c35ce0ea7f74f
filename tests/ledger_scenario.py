"""The ledger contention scenario of issue 16, shared by its test and by ``bench_ledger_stress``:
writer processes record attempts while another process holds the DuckDB file read-write."""

from __future__ import annotations

import subprocess
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import duckdb

from flokan_dagster.ledger import CreditLedger
from flokan_dagster.ledger.checkpoints import wal_bytes, wal_limit

ROOT = Path(__file__).resolve().parents[1]

_HOLD_LOCK = """
import select, sys, duckdb
conn = duckdb.connect(sys.argv[1])  # read-write: an analyst's notebook, another run
print("locked", flush=True)
select.select([sys.stdin], [], [], float(sys.argv[2]))  # until the caller lets go, or the time is up
conn.close()
"""

_WRITER = """
import sys
from flokan_dagster.ledger import CreditLedger
database, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
ledger = CreditLedger(database, lock_timeout_s=0.3)
for i in range(count):
    aid = ledger.begin_attempt(asset="images", sku=f"{worker}-{i}", prompt="p", model_tier="pro",
                               estimated_credits=50, attempt_id=f"{worker}-{i}")
    ledger.finish_attempt(aid, status="completed", job_id=f"job-{worker}-{i}", credits_consumed=i)
ledger.flush_spool()
"""


@contextmanager
def lock_held(database: str, seconds: float) -> Iterator[subprocess.Popen[str]]:
    """Hold ``database`` read-write from another process until the block ends, or ``seconds`` if sooner.

    A test that needs the lock held while it writes passes a generous ``seconds``: the block's end
    releases it, so a slow machine never sees the lock go early.
    """
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLD_LOCK, database, str(seconds)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        yield holder
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=seconds + 30)


def grow_file(database: str, mib: int) -> None:
    """Pad the ledger file ``database`` to about ``mib`` MiB with a table of its own, so that it is
    large enough for the ledger to keep a WAL between checkpoints (``ledger/checkpoints.py``)."""
    with duckdb.connect(database) as conn:
        conn.execute(
            "CREATE TABLE padding AS SELECT md5(i::VARCHAR) || md5((i + 1)::VARCHAR) AS x FROM range(?) t(i)",
            [mib * 28_000],
        )


def writers_against_a_held_file(
    database: str, workers: int, per_worker: int, hold_s: float, *, grown_mib: int = 0
) -> tuple[list[str], int]:
    """Run ``workers`` writer processes of ``per_worker`` attempts each (``begin_attempt`` then
    ``finish_attempt``) while the file is held for ``hold_s``; merge every spooled event and check
    each row field by field. Returns (problems found, writer processes that crashed).

    ``grown_mib`` pads the file first (:func:`grow_file`) and records one attempt (``seed``) that
    stays in the WAL: the holder's read-write open replays it and its close checkpoints it, outside
    the ledger's lock (as an analyst's read-write session would), while the writers, which keep
    their commits in the WAL too, are trying to open the file.
    """
    CreditLedger(database).flush_spool()
    seeded = 0
    if grown_mib:
        grow_file(database, grown_mib)
        assert wal_limit(database) > 0, "the padded file is too small for the ledger to keep a WAL"
        CreditLedger(database).begin_attempt(asset="images", sku="seed", prompt="p", model_tier="pro", attempt_id="seed")
        assert wal_bytes(database) > 0, "the seed attempt should wait in the WAL"
        seeded = 1
    with lock_held(database, hold_s):
        procs = [
            subprocess.Popen([sys.executable, "-c", _WRITER, database, f"w{w}", str(per_worker)],
                             cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)  # fmt: skip
            for w in range(workers)
        ]
        outputs = [p.communicate(timeout=300) for p in procs]
    problems: list[str] = []
    crashes = 0
    for w, (proc, (_, err)) in enumerate(zip(procs, outputs, strict=True)):
        if proc.returncode:
            crashes += 1
            problems.append(f"writer w{w} exited {proc.returncode}: {err.strip().splitlines()[-1] if err.strip() else ''}")
    try:
        ledger = CreditLedger(database)
        left = ledger.flush_spool()
        if left:
            problems.append(f"{left} spool file(s) not merged")
        quarantined = list(ledger.spool.directory.glob("*.corrupt")) + list(ledger.spool.directory.glob("quarantine/*"))
        if quarantined:
            problems.append(f"{len(quarantined)} spool file(s) quarantined")
        rows = {r.attempt_id: r for r in ledger.attempts_for()}
    except Exception as exc:  # a damaged database is exactly what the scenario looks for
        return [*problems, f"ledger unreadable: {type(exc).__name__}: {exc}"], crashes
    if len(rows) != workers * per_worker + seeded:
        problems.append(f"{len(rows)} rows, expected {workers * per_worker + seeded}")
    if seeded and (rows.get("seed") is None or (rows["seed"].status, rows["seed"].sku) != ("pending", "seed")):
        problems.append(f"the seed attempt is {rows.get('seed')}")
    for w in range(workers):
        for i in range(per_worker):
            row = rows.get(f"w{w}-{i}")
            got = None if row is None else (row.status, row.job_id, row.credits_consumed, row.sku, row.estimated_credits)
            want = ("completed", f"job-w{w}-{i}", i, f"w{w}-{i}", 50)
            if got != want:
                problems.append(f"row w{w}-{i}: {got} != {want}")
    return problems, crashes
