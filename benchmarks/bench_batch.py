"""Batched throughput of the per-SKU image asset against the emulator.

N SKUs at 1 s of /process latency and a 600 requests/minute workspace, materialized in one
batched Dagster run, against the ideal ``max(N / rate, N * latency / concurrency)``; then, from the
same process, the same work done as one Dagster run per SKU.

Target: at least 85 % of the ideal throughput.

Usage:
    python benchmarks/bench_batch.py [--skus 200] [--per-sku-runs 200] [--concurrency 10]
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from results import result
from sku_pipeline import SkuPipeline

from flokan_dagster.emulator import EmulatorConfig, EmulatorProcess

LATENCY_S = 1.0
RATE_PER_MIN = 600


def run(emulator: EmulatorProcess, work: Path, skus: list[str], batch_size: int, concurrency: int) -> float:
    """Materialize ``skus`` in runs of ``batch_size`` on a fresh workspace; return the wall time."""
    pipeline = SkuPipeline.create(emulator, work, skus, batch_size=batch_size, concurrency=concurrency,
                                  rate_limit_per_minute=RATE_PER_MIN)  # fmt: skip
    return pipeline.materialize()


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=200)
    parser.add_argument("--per-sku-runs", type=int, default=200, help="SKUs for the one-run-per-SKU comparison")
    parser.add_argument("--concurrency", type=int, default=10)
    args = parser.parse_args()
    skus = [f"SKU-{i:04d}" for i in range(args.skus)]
    ideal = max(args.skus / (RATE_PER_MIN / 60), args.skus * LATENCY_S / args.concurrency)
    config = EmulatorConfig(latency_ms=int(LATENCY_S * 1000))
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(config) as emulator:
        batched = run(emulator, Path(tmp), skus, batch_size=args.skus, concurrency=args.concurrency)
        per_sku = run(emulator, Path(tmp), skus[: args.per_sku_runs], batch_size=1, concurrency=args.concurrency)
    print(f"batched run: {args.skus} SKUs, {LATENCY_S:.0f} s latency, {RATE_PER_MIN}/min, concurrency {args.concurrency}")
    print(f"  wall time            {batched:8.1f} s")
    print(f"  ideal                {ideal:8.1f} s   max(N/rate, N*latency/concurrency)")
    print(f"  throughput vs ideal  {ideal / batched:8.0%}    target >= 85%")
    per_sku_rate = args.per_sku_runs / per_sku
    print(f"one Dagster run per SKU: {args.per_sku_runs} SKUs in {per_sku:.1f} s "
          f"({per_sku_rate:.2f} SKU/s vs {args.skus / batched:.2f} SKU/s batched: {args.skus / batched / per_sku_rate:.1f}x)")
    result(f"batched throughput, {args.skus} SKUs at 1 s and {RATE_PER_MIN}/min, vs ideal",
           f"{ideal / batched:.0%} ({batched:.1f} s vs {ideal:.1f} s)", ">= 85%", ideal / batched >= 0.85)
    result("batched vs one Dagster run per SKU", f"{args.skus / batched / per_sku_rate:.1f}x faster "
           f"({args.skus / batched:.2f} vs {per_sku_rate:.2f} SKU/s)")


if __name__ == "__main__":
    main()
