"""Writes under contention: other processes holding the DuckDB file delay records, never lose them."""

from __future__ import annotations

import subprocess
import sys
import threading
import time
from pathlib import Path

import duckdb
import pytest

from flokan_dagster.ledger import CreditLedger, LedgerLockedError
from tests.ledger_scenario import lock_held, writers_against_a_held_file

ROOT = Path(__file__).resolve().parents[1]

def test_locked_database_spools_writes_and_merges_them_later(tmp_path: Path) -> None:
    database = str(tmp_path / "ledger.duckdb")
    ledger = CreditLedger(database, lock_timeout_s=0.2)
    before = ledger.begin_attempt(asset="images", sku="S0", prompt="p", model_tier="pro")

    with lock_held(database, 120) as holder:
        ids = [ledger.begin_attempt(asset="images", sku=f"S{i}", prompt="p", model_tier="pro") for i in range(1, 4)]
        assert ledger.finish_attempt(ids[0], status="completed", job_id="j1", credits_consumed=50) is False
        assert ledger.finish_attempt(before, status="unknown", error="read timeout") is False
        assert ledger.spooled_count() == 5
        assert holder.poll() is None, "the writes were meant to happen while the lock was held"
        assert len(list(ledger.spool.directory.glob("*.event.json"))) == 5

    # The next successful write merges the whole spool.
    assert ledger.finish_attempt(ids[1], status="failed", error="500") is True
    assert ledger.spooled_count() == 0
    rows = {r.attempt_id: r for r in ledger.attempts_for()}
    assert set(rows) == {before, *ids}
    assert (rows[ids[0]].status, rows[ids[0]].credits_consumed) == ("completed", 50)
    assert rows[before].status == "unknown"
    assert rows[ids[1]].status == "failed"
    assert rows[ids[2]].status == "pending"


def test_flush_spool_merges_explicitly_and_reads_see_spooled_records(tmp_path: Path) -> None:
    database = str(tmp_path / "ledger.duckdb")
    writer = CreditLedger(database, lock_timeout_s=0.1)
    writer.flush_spool()  # create the file
    with lock_held(database, 120):
        aid = writer.begin_attempt(asset="images", sku="S", prompt="p", model_tier="pro", fingerprint="fp")
        writer.finish_attempt(aid, status="completed", job_id="j", credits_consumed=50)
        assert writer.flush_spool() == 2
    # Before the merge, a reader already sees the spooled completion: no second paid call.
    reader = CreditLedger(database, lock_timeout_s=5.0)
    found = reader.find_reusable("images", "S", "fp")
    assert found is not None and found.attempt_id == aid and found.credits_consumed == 50
    assert reader.known_job_ids(["j"]) == {"j"}
    assert reader.credits_spent(found.sent_at) == 50
    assert writer.flush_spool() == 0
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("SELECT status, credits_consumed FROM attempts").fetchall() == [("completed", 50)]


def test_reader_waits_for_a_lock_holder(tmp_path: Path) -> None:
    database = str(tmp_path / "ledger.duckdb")
    ledger = CreditLedger(database, lock_timeout_s=5.0)
    ledger.begin_attempt(asset="images", sku="S", prompt="p", model_tier="pro")
    with lock_held(database, 1.0):
        started = time.monotonic()
        assert len(ledger.attempts_for()) == 1
        assert time.monotonic() - started > 0.3, "the read should have waited for the lock holder"


def test_readers_in_threads_while_writer_threads_work(tmp_path: Path) -> None:
    database = str(tmp_path / "ledger.duckdb")
    ledger = CreditLedger(database, lock_timeout_s=10.0)
    ledger.flush_spool()
    errors: list[BaseException] = []
    done = threading.Event()

    def write(worker: int) -> None:
        try:
            for i in range(15):
                aid = ledger.begin_attempt(asset="images", sku=f"{worker}-{i}", prompt="p", model_tier="pro")
                ledger.finish_attempt(aid, status="completed", credits_consumed=1)
        except BaseException as exc:  # surfaced by the assertion below
            errors.append(exc)

    def read() -> None:
        try:
            while not done.is_set():
                seen = ledger.attempts_for()
                assert all(r.status in ("pending", "completed") for r in seen)
        except BaseException as exc:
            errors.append(exc)

    writers = [threading.Thread(target=write, args=(w,)) for w in range(3)]
    reader = threading.Thread(target=read)
    reader.start()
    for t in writers:
        t.start()
    for t in writers:
        t.join()
    done.set()
    reader.join()
    assert errors == []
    # Since the earliest send (attempts_for() has no order to rely on: its first row is any attempt).
    earliest = min(r.sent_at for r in ledger.attempts_for() if r.sent_at)
    assert ledger.credits_spent(earliest, include_in_flight=False) == 45


@pytest.mark.parametrize("grown_mib", [0, 20], ids=["small-file", "grown-file-wal-kept"])
def test_concurrent_writer_processes_and_a_lock_holder_lose_nothing(tmp_path: Path, grown_mib: int) -> None:
    database = str(tmp_path / "ledger.duckdb")
    workers, per_worker = 4, 50
    problems, crashes = writers_against_a_held_file(database, workers, per_worker, hold_s=1.5, grown_mib=grown_mib)
    assert (crashes, problems) == (0, [])
    rows = [r for r in CreditLedger(database).attempts_for() if r.attempt_id != "seed"]
    assert CreditLedger(database).credits_spent(min(r.sent_at for r in rows if r.sent_at), include_in_flight=False) == (
        workers * sum(range(per_worker)))


_RAW_WRITER = """
import sys
from flokan_dagster.ledger.connection import locked_connection
from flokan_dagster.ledger.locking import ledger_file_lock
database, worker, count = sys.argv[1], sys.argv[2], int(sys.argv[3])
lock = ledger_file_lock(database + ".lock")
for i in range(count):
    with locked_connection(database, lock, read_only=False, timeout_s=60) as conn:
        conn.execute("INSERT INTO t VALUES (?, ?)", [worker, i])
    with locked_connection(database, lock, read_only=True, timeout_s=60) as conn:
        assert conn.execute("SELECT count(*) FROM t WHERE w = ? AND i = ?", [worker, i]).fetchone()[0] == 1
"""


def test_open_insert_close_loops_in_four_processes_lose_no_commit(tmp_path: Path) -> None:
    """The root cause of issue 16 at DuckDB level: each open reads the file's header before taking
    DuckDB's lock, so without the ledger lock a process may open on a header another process's
    checkpoint just replaced, and a committed row vanishes. Under ``locked_connection`` none may."""
    database = str(tmp_path / "raw.duckdb")
    with duckdb.connect(database) as conn:
        conn.execute("CREATE TABLE t (w VARCHAR, i INTEGER)")
        # Enough data that a checkpoint rewrites and truncates blocks.
        conn.execute("CREATE TABLE pad AS SELECT range AS i, repeat('x', 50) AS s FROM range(20000)")
    workers, per_worker = 4, 40
    procs = [
        subprocess.Popen([sys.executable, "-c", _RAW_WRITER, database, f"w{w}", str(per_worker)],
                         cwd=ROOT, stderr=subprocess.PIPE, text=True)
        for w in range(workers)
    ]
    errors = [p.communicate(timeout=300)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, errors
    with duckdb.connect(database, read_only=True) as conn:
        assert conn.execute("SELECT count(*), count(DISTINCT (w, i)) FROM t").fetchone() == (
            workers * per_worker, workers * per_worker)


_HOLD_LEDGER_LOCK = """
import sys
from flokan_dagster.ledger.locking import ledger_file_lock
with ledger_file_lock(sys.argv[1] + ".lock").hold(exclusive=sys.argv[2] == "exclusive", timeout_s=10):
    print("locked", flush=True)
    sys.stdin.read()
"""


def test_a_process_holding_the_ledger_lock_keeps_writers_in_the_spool_and_readers_waiting(tmp_path: Path) -> None:
    database = str(tmp_path / "ledger.duckdb")
    ledger = CreditLedger(database, lock_timeout_s=0.2)
    ledger.flush_spool()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LEDGER_LOCK, database, "exclusive"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        aid = ledger.begin_attempt(asset="images", sku="S", prompt="p", model_tier="pro")
        assert ledger.spooled_count() == 1  # DuckDB itself is free: only the ledger lock kept it out
        with pytest.raises(LedgerLockedError):
            ledger.attempts_for()
    finally:
        assert holder.stdin is not None
        holder.stdin.close()
        holder.wait(timeout=30)
    assert ledger.flush_spool() == 0
    assert [r.attempt_id for r in ledger.attempts_for()] == [aid]

    # A shared holder (another reader) lets this reader in but keeps the writer out.
    reader = subprocess.Popen([sys.executable, "-c", _HOLD_LEDGER_LOCK, database, "shared"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "locked"
        assert len(ledger.attempts_for()) == 1
        ledger.finish_attempt(aid, status="failed", error="x")
        assert ledger.spooled_count() == 1
        assert ledger.get_attempt(aid).status == "failed"  # the spool overlay
    finally:
        assert reader.stdin is not None
        reader.stdin.close()
        reader.wait(timeout=30)
    assert ledger.flush_spool() == 0
