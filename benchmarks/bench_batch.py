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
import csv
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import dagster as dg  # noqa: E402

from flokan_dagster import (  # noqa: E402
    SKU_PARTITIONS,
    CatalogMapping,
    FlokanLedgerResource,
    FlokanResource,
    ImageStoreResource,
    build_flokan_image_asset,
    materialize_skus,
)
from flokan_dagster.emulator import EmulatorConfig, EmulatorProcess  # noqa: E402
from results import result  # noqa: E402

LATENCY_S = 1.0
RATE_PER_MIN = 600


def run(emulator: EmulatorProcess, work: Path, skus: list[str], batch_size: int, concurrency: int) -> float:
    """Materialize ``skus`` in runs of ``batch_size`` on a fresh workspace; return the wall time."""
    workspace = emulator.admin.create_workspace(credits=10_000_000, rate_limit_per_minute=RATE_PER_MIN)
    api_key = emulator.admin.create_key(workspace)
    catalog = work / f"catalog-{batch_size}.csv"
    with catalog.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title"])
        writer.writerows([sku, f"product {sku} batch {batch_size}"] for sku in skus)
    asset = build_flokan_image_asset("images", catalog=catalog, mapping=CatalogMapping(prompt_template="Photo of {title}"),
                                     batch_size=batch_size)  # fmt: skip
    defs = dg.Definitions(
        assets=[asset],
        resources={
            "flokan": FlokanResource(api_key=api_key, base_url=emulator.base_url, max_concurrency=concurrency),
            "flokan_ledger": FlokanLedgerResource(database=str(work / f"ledger-{batch_size}.duckdb")),
            "flokan_images": ImageStoreResource(directory=str(work / f"images-{batch_size}")),
        },
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, skus)
    started = time.perf_counter()
    results = materialize_skus(defs, instance, ["images"], skus, partitions_name=SKU_PARTITIONS.name,
                               batch_size=batch_size, log_level="ERROR")  # fmt: skip
    elapsed = time.perf_counter() - started
    made = len(instance.fetch_materializations(dg.AssetKey("images"), limit=10_000).records)
    if made != len(skus) or not all(r.success for r in results):
        raise SystemExit(f"only {made} of {len(skus)} SKUs were materialized")
    return elapsed


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
