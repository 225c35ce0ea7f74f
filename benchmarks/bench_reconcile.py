"""Benchmark: reconciliation ticks over a workspace with 100,000 jobs in its history.

Starts the emulator in a subprocess, bulk-inserts the history, catches up (as many budgeted
passes as it takes, each one a sensor tick), then measures:

  * a tick with nothing new: requests made (target: at most 2);
  * a tick after 1,000 new jobs: wall time to ingest them all (target: under 10 s).

Usage:
    python benchmarks/bench_reconcile.py [--history 100000] [--new 1000] [--budget 40]
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from results import result as report_figure  # noqa: E402

from flokan_dagster.api.client import FlokanClient  # noqa: E402
from flokan_dagster.emulator import EmulatorConfig, EmulatorProcess  # noqa: E402
from flokan_dagster.image_store import ImageStore  # noqa: E402
from flokan_dagster.ledger import CreditLedger  # noqa: E402
from flokan_dagster.reconcile import ReconcileCursor, ReconcileSettings, reconcile  # noqa: E402

QUIET_TICK_MAX_REQUESTS = 2
NEW_JOBS_TARGET_S = 10.0


def main() -> None:
    """Run the benchmark and print the figures beside their targets."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--history", type=int, default=100_000, help="jobs already in the workspace")
    parser.add_argument("--new", type=int, default=1_000, help="jobs arriving before the measured tick")
    parser.add_argument("--budget", type=float, default=40.0, help="time budget of one tick, seconds")
    args = parser.parse_args()
    settings = ReconcileSettings(budget_s=args.budget)

    with EmulatorProcess(EmulatorConfig(latency="zero")) as emulator, tempfile.TemporaryDirectory() as tmp:
        admin = emulator.admin
        workspace = admin.create_workspace(name="bench", credits=10**9, rate_limit_per_minute=10**7)
        api_key = admin.create_key(workspace)
        # History ends a day ago, so the new jobs below are strictly newer (as real ones are).
        now = datetime.now(timezone.utc)
        start = now - timedelta(days=1) - timedelta(seconds=args.history)
        started = time.perf_counter()
        admin.bulk_jobs(workspace, args.history, start=start, step_ms=1000)
        print(f"history: {args.history:,} jobs inserted in {time.perf_counter() - started:.1f}s")

        ledger = CreditLedger(str(Path(tmp) / "ledger.duckdb"))
        store = ImageStore(Path(tmp) / "images")
        with FlokanClient(api_key=api_key, base_url=emulator.base_url, max_attempts=1) as client:
            cursor: ReconcileCursor | None = None
            ticks, started = 0, time.perf_counter()
            while True:
                ticks += 1
                result = reconcile(client, ledger, store, cursor, settings)
                cursor = result.cursor
                s = result.summary
                print(f"  catch-up tick {ticks}: {s.new:,} new on {s.pages} pages in {s.seconds:.1f}s, lag {s.lag_s:.0f}s")
                if s.caught_up:
                    break
            catch_up_s = time.perf_counter() - started
            print(f"catch-up: {args.history:,} jobs in {ticks} tick(s) of <= {args.budget:.0f}s, {catch_up_s:.1f}s in all")

            quiet = reconcile(client, ledger, store, cursor.to_json(), settings)
            cursor = quiet.cursor

            admin.bulk_jobs(workspace, args.new, start=now - timedelta(seconds=args.new), step_ms=1000)
            busy = reconcile(client, ledger, store, cursor.to_json(), settings)

    q, b = quiet.summary, busy.summary
    print()
    print(f"{'measure':<44}{'result':>14}{'target':>14}")
    print(f"{'tick with nothing new: requests':<44}{q.requests:>14}{'<= ' + str(QUIET_TICK_MAX_REQUESTS):>14}")
    print(f"{'tick with nothing new: seconds':<44}{q.seconds:>14.3f}{'':>14}")
    print(f"{f'tick after {args.new:,} new jobs: seconds':<44}{b.seconds:>14.2f}{f'< {NEW_JOBS_TARGET_S:.0f}':>14}")
    print(f"{f'tick after {args.new:,} new jobs: ingested':<44}{b.new:>14,}{args.new:>14,}")
    print(f"{'  ... in one tick, caught up':<44}{b.caught_up!s:>14}{'True':>14}")
    print(f"{'  ... requests':<44}{b.requests:>14}{'':>14}")
    ok = q.requests <= QUIET_TICK_MAX_REQUESTS and b.seconds < NEW_JOBS_TARGET_S and b.new == args.new and b.caught_up
    report_figure(f"reconciliation tick with nothing new, {args.history:,}-job history", f"{q.requests} request(s), {q.seconds:.2f} s",
           f"<= {QUIET_TICK_MAX_REQUESTS} requests", q.requests <= QUIET_TICK_MAX_REQUESTS)
    report_figure(f"reconciliation tick after {args.new:,} new jobs", f"{b.seconds:.2f} s, {b.new:,} ingested",
           f"< {NEW_JOBS_TARGET_S:.0f} s, all in one tick", b.seconds < NEW_JOBS_TARGET_S and b.new == args.new and b.caught_up)
    print("\nall targets met" if ok else "\nTARGET MISSED")
    sys.exit(0 if ok else 1)


if __name__ == "__main__":
    main()
