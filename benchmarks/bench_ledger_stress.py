"""Ledger under contention on a busy machine (issue 16): nothing lost, nothing mangled, no crash.

One trial: 4 writer processes each record 50 attempts (``begin_attempt`` then ``finish_attempt``)
while another process holds the DuckDB file read-write for 1.5 s; then every spooled event is
merged and each row is checked field by field. The trial repeats 20 times with one busy loop per
core running the whole time, so the scheduler interleaves the processes in the worst places.

A trial is *bad* if any row is missing, any field differs from what was written (a lost begin or
finish event), a spool file is left over or quarantined, or the database cannot be read; a
*writer crash* is a writer process exiting non-zero.

A second series runs the same trials on a file grown past 16 MiB, where the ledger keeps commits
in DuckDB's WAL between checkpoints (``ledger/checkpoints.py``) and the holder's read-write
session replays and checkpoints them outside the ledger's lock (``grown_mib`` in the scenario).

Usage:
    python benchmarks/bench_ledger_stress.py [trials] [grown trials]
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from results import result  # noqa: E402

from tests.ledger_scenario import writers_against_a_held_file  # noqa: E402

WORKERS, PER_WORKER, HOLD_S = 4, 50, 1.5


def busy_loops() -> list[subprocess.Popen[bytes]]:
    """One CPU-bound process per core (like ``yes > /dev/null``), to be killed afterwards."""
    return [
        subprocess.Popen([sys.executable, "-c", "while True: pass"]) for _ in range(os.cpu_count() or 2)
    ]


GROWN_MIB = 20


def trial(directory: Path, grown_mib: int) -> tuple[list[str], int, float]:
    """Run one trial; return its problems, how many writers crashed, and its wall time."""
    started = time.perf_counter()
    problems, crashes = writers_against_a_held_file(
        str(directory / "ledger.duckdb"), WORKERS, PER_WORKER, HOLD_S, grown_mib=grown_mib
    )
    return problems, crashes, time.perf_counter() - started


def series(trials: int, grown_mib: int) -> tuple[int, int, list[float]]:
    """Run ``trials`` trials; return the bad trials, the writer crashes and the sorted wall times."""
    bad = crashes = 0
    times: list[float] = []
    for n in range(trials):
        with tempfile.TemporaryDirectory() as tmp:
            problems, crashed, elapsed = trial(Path(tmp), grown_mib)
        times.append(elapsed)
        bad += bool(problems)
        crashes += crashed
        print(f"trial {n + 1:2d}{' (grown file)' if grown_mib else ''}: {elapsed:5.1f} s  {'ok' if not problems else 'BAD'}",
              flush=True)  # fmt: skip
        for problem in problems[:8]:
            print(f"    {problem}", flush=True)
        if len(problems) > 8:
            print(f"    ... {len(problems) - 8} more", flush=True)
    return bad, crashes, sorted(times)


def main() -> int:
    """Run the trials with every core busy; print the RESULT lines."""
    trials = int(sys.argv[1]) if len(sys.argv) > 1 else 20
    grown_trials = int(sys.argv[2]) if len(sys.argv) > 2 else 8
    loops = busy_loops()
    try:
        bad, crashes, times = series(trials, 0)
        grown_bad, grown_crashes, grown_times = series(grown_trials, GROWN_MIB)
    finally:
        for loop in loops:
            loop.kill()
            loop.wait()
    print(f"{trials} + {grown_trials} trials: {WORKERS} writers x {PER_WORKER} attempts, lock held {HOLD_S} s, "
          f"{len(loops)} busy loops")  # fmt: skip
    result(f"bad trials of {trials} (4 writers x 50 attempts, file held 1.5 s, every core busy)", str(bad), "0", bad == 0)
    result(f"writer crashes in {trials} trials", str(crashes), "0", crashes == 0)
    result("trial wall time, median / max", f"{times[len(times) // 2]:.1f} s / {times[-1]:.1f} s")
    if grown_trials:
        result(f"bad trials of {grown_trials} on a {GROWN_MIB} MiB file (commits kept in the WAL, checkpointed by the holder)",
               str(grown_bad), "0", grown_bad == 0)  # fmt: skip
        result(f"writer crashes in {grown_trials} grown-file trials", str(grown_crashes), "0", grown_crashes == 0)
        result("grown-file trial wall time, median / max", f"{grown_times[len(grown_times) // 2]:.1f} s / {grown_times[-1]:.1f} s")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
