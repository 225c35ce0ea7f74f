"""Benchmark: the cost report over a 1,000,000-row credit ledger (target: under 0.5 s).

Builds the ledger in bulk from a generated relation (a few seconds), then times the summary
and report queries through the public API, several runs each, and prints them beside the target.

Usage:
    python benchmarks/bench_ledger.py [--rows 1000000] [--skus 20000] [--runs 5] [--database PATH]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable
from datetime import datetime
from pathlib import Path

import duckdb
from results import result  # noqa: E402

from flokan_dagster.ledger import CreditLedger, cost_report_markdown, cost_summary
from flokan_dagster.ledger.schema import ensure_schema

TARGET_S = 0.5

_GENERATE = """
INSERT INTO attempts
SELECT
    uuid()::VARCHAR AS attempt_id,
    'run-' || (i // 500) AS run_id,
    CASE WHEN i % 10 = 0 THEN 'thumbnails' ELSE 'product_images' END AS asset,
    'SKU-' || (hash(i) % $skus) AS sku,
    md5(i::VARCHAR) AS fingerprint,
    'studio photo of product ' || (i % 1000) AS prompt,
    tier AS model_tier,
    provider,
    NULL, NULL, NULL, NULL, NULL,
    'job-' || i AS job_id,
    CASE status WHEN 'unknown' THEN NULL WHEN 'rejected' THEN NULL ELSE status END AS job_status,
    CASE WHEN provider = 'platform' THEN 'system' ELSE provider END AS provider_used,
    status,
    CASE WHEN status = 'completed' AND provider = 'platform' THEN est - (i % 5)
         WHEN status IN ('failed', 'rejected') OR provider <> 'platform' THEN 0 END AS credits_consumed,
    est AS estimated_credits,
    (5000 + i % 40000) AS processing_ms,
    'https://images.flokan.com/u/processed/job-' || i || '.png', 'img-' || i,
    NULL, NULL, NULL,
    CASE WHEN i % 97 = 0 THEN 'external' WHEN i % 89 = 0 THEN 'reconciled' ELSE 'dagster' END AS origin,
    ts AS sent_at, ts AS job_created_at, ts + INTERVAL 20 SECOND AS completed_at,
    NULL AS server_sent_at, NULL AS clock_error_ms,
    ts AS recorded_at, ts + INTERVAL 21 SECOND AS updated_at,
    i AS revision
FROM (
    SELECT
        i,
        TIMESTAMP '2026-01-01' + to_seconds(i * 9) AS ts,
        ['pro', 'standard', 'creative'][1 + i % 3] AS tier,
        CASE WHEN i % 7 = 0 THEN ['openai', 'fal', 'kie'][1 + i % 3] ELSE 'platform' END AS provider,
        CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 211 = 0 THEN 'unknown'
             WHEN i % 301 = 0 THEN 'rejected' WHEN i % 401 = 0 THEN 'pending' ELSE 'completed' END AS status,
        CASE WHEN i % 7 = 0 THEN 0 ELSE [50, 25, 10][1 + i % 3] END AS est
    FROM range($rows) AS t(i)
)
"""


def build(database: str, rows: int, skus: int) -> float:
    """Create the ledger schema and insert ``rows`` generated attempts; return seconds taken."""
    started = time.perf_counter()
    with duckdb.connect(database) as conn:
        ensure_schema(conn)
        conn.execute(_GENERATE, {"rows": rows, "skus": skus})
        conn.execute("CHECKPOINT")
    return time.perf_counter() - started


def timed(runs: int, fn: Callable[[], object]) -> list[float]:
    """Return the wall time of ``runs`` calls of ``fn``."""
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return times


def main() -> None:
    """Build the ledger, time the report queries, print the figures beside the target."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--skus", type=int, default=20_000)
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--database", type=Path, default=None, help="default: a temporary file")
    args = parser.parse_args()

    database = str(args.database or Path(tempfile.mkdtemp()) / "bench_ledger.duckdb")
    print(f"building {args.rows:,} ledger rows over {args.skus:,} SKUs in {database} ...")
    print(f"  built in {build(database, args.rows, args.skus):.2f} s")

    ledger = CreditLedger(database)
    cases: list[tuple[str, Callable[[], object]]] = [
        ("cost_summary()", lambda: cost_summary(ledger)),
        ("cost_report_markdown()", lambda: cost_report_markdown(ledger)),
        ("credits_spent(last day)", lambda: ledger.credits_spent(datetime(2026, 4, 13))),
        ("SELECT * FROM credits_by_day", lambda: ledger.read(lambda c: c.execute("SELECT * FROM credits_by_day").fetchall())),
        ("SELECT * FROM credits_by_sku", lambda: ledger.read(lambda c: c.execute("SELECT * FROM credits_by_sku").fetchall())),
        ("SELECT * FROM credits_by_tier_provider",
         lambda: ledger.read(lambda c: c.execute("SELECT * FROM credits_by_tier_provider").fetchall())),
        ("find_reusable()", lambda: ledger.find_reusable("product_images", "SKU-7", "nope")),
    ]
    print(f"\n{'query':42} {'median':>9} {'max':>9}   target {TARGET_S:.1f} s  (runs={args.runs}, incl. open)")
    failed = False
    for name, fn in cases:
        times = timed(args.runs, fn)
        median, worst = statistics.median(times), max(times)
        verdict = "ok" if worst < TARGET_S else "OVER"
        failed |= name.startswith("cost_") and worst >= TARGET_S
        print(f"{name:42} {median * 1000:7.1f}ms {worst * 1000:7.1f}ms   {verdict}")
        if name.startswith("cost_"):
            result(f"{name} over {args.rows:,} ledger rows", f"{median * 1000:.0f} ms median, {worst * 1000:.0f} ms max",
                   f"< {TARGET_S:.1f} s", worst < TARGET_S)
    summary = cost_summary(ledger)
    print(f"\ntotal credits {summary['credits']:,} over {summary['attempts']:,} attempts, {summary['skus']:,} SKUs")
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
