"""Ledger under contention on a busy machine (issue 16): nothing lost, nothing mangled, no crash.

One trial: 4 writer processes each record 50 attempts (``begin_attempt`` then ``finish_attempt``)
while another process holds the DuckDB file read-write for 1.5 s; then every spooled event is
merged and each row is checked field by field. The trial repeats 20 times with one busy loop per
core running the whole time, so the scheduler interleaves the processes in the worst places.

A trial is *bad* if any row is missing, any field differs from what was written (a lost begin or
finish event), a spool file is left over or quarantined, or the database cannot be read; a
*writer crash* is a writer process exiting non-zero.

Usage:
    python benchmarks/bench_ledger_stress.py [trials]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from results import result  # noqa: E402

from flokan_dagster.ledger import CreditLedger  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WORKERS, PER_WORKER, HOLD_S = 4, 50, 1.5

_HOLD_LOCK = """
import sys, time, duckdb
conn = duckdb.connect(sys.argv[1])
print("locked", flush=True)
time.sleep(float(sys.argv[2]))
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


def busy_loops() -> list[subprocess.Popen[bytes]]:
    """One CPU-bound process per core (like ``yes > /dev/null``), to be killed afterwards."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)
    ]


def trial(directory: Path) -> tuple[list[str], int, float]:
    """Run one trial; return its problems, how many writers crashed, and its wall time."""
    database = str(directory / "ledger.duckdb")
    CreditLedger(database).flush_spool()
    started = time.perf_counter()
    holder = subprocess.Popen([sys.executable, "-c", _HOLD_LOCK, database, str(HOLD_S)], stdout=subprocess.PIPE, text=True)
    assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
    writers = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, database, f"w{w}", str(PER_WORKER)],
            cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
        )
        for w in range(WORKERS)
    ]
    outputs = [w.communicate(timeout=300) for w in writers]
    holder.wait(timeout=60)
    elapsed = time.perf_counter() - started
    problems: list[str] = []
    crashes = 0
    for w, (proc, (_, err)) in enumerate(zip(writers, outputs, strict=True)):
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
    except Exception as exc:  # a damaged database is exactly what this benchmark looks for
        return [*problems, f"ledger unreadable: {type(exc).__name__}: {exc}"], crashes, elapsed
    if len(rows) != WORKERS * PER_WORKER:
        problems.append(f"{len(rows)} rows, expected {WORKERS * PER_WORKER}")
    for w in range(WORKERS):
        for i in range(PER_WORKER):
            row = rows.get(f"w{w}-{i}")
            got = None if row is None else (row.status, row.job_id, row.credits_consumed, row.sku, row.estimated_credits)
            want = ("completed", f"job-w{w}-{i}", i, f"w{w}-{i}", 50)
            if got != want:
                problems.append(f"row w{w}-{i}: {got} != {want}")
    return problems, crashes, elapsed


def main() -> int:
    """Run the trials with every core busy; print the RESULT lines."""
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    loops = busy_loops()
    bad = crashes = 0
    times: list[float] = []
    try:
        for n in range(trials):
            with tempfile.TemporaryDirectory() as tmp:
                problems, crashed, elapsed = trial(Path(tmp))
            times.append(elapsed)
            bad += bool(problems)
            crashes += crashed
            print(f"trial {n + 1:2d}: {elapsed:5.1f} s  {'ok' if not problems else 'BAD'}", flush=True)
            for problem in problems[:8]:
                print(f"    {problem}", flush=True)
            if len(problems) > 8:
                print(f"    ... {len(problems) - 8} more", flush=True)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    print(f"{trials} trials: {WORKERS} writers x {PER_WORKER} attempts, lock held {HOLD_S} s, {len(loops)} busy loops")
    times.sort()
    result(f"bad trials of {trials} (4 writers x 50 attempts, file held 1.5 s, every core busy)", str(bad), "0", bad == 0)
    result(f"writer crashes in {trials} trials", str(crashes), "0", crashes == 0)
    result("trial wall time, median / max", f"{times[len(times) // 2]:.1f} s / {times[-1]:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
