"""Peak memory of one batched run over 1,000 SKUs (the emulator in a subprocess, zero latency).

Peak resident memory of this process (Dagster, the run, the batch, thumbnails, the ledger) is
read from the OS after the run, beside the same figure before it. Target: under 500 MB.

Usage:
    python benchmarks/bench_memory.py [--skus 1000]
"""

from __future__ import annotations

import argparse
import csv
import resource
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

TARGET_MB = 500


def peak_mb() -> float:
    """Peak resident set size of this process so far, in MB (Linux reports KiB)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=1000)
    args = parser.parse_args()
    skus = [f"SKU-{i:05d}" for i in range(args.skus)]
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(EmulatorConfig(latency="zero")) as emulator:
        work = Path(tmp)
        workspace = emulator.admin.create_workspace(credits=10**9, rate_limit_per_minute=10**7)
        api_key = emulator.admin.create_key(workspace)
        catalog = work / "catalog.csv"
        with catalog.open("w", newline="") as handle:
            writer = csv.writer(handle)
            writer.writerow(["sku", "title"])
            writer.writerows([sku, f"product {sku}"] for sku in skus)
        asset = build_flokan_image_asset("images", catalog=catalog, mapping=CatalogMapping(prompt_template="Photo of {title}"),
                                         batch_size=args.skus)  # fmt: skip
        defs = dg.Definitions(
            assets=[asset],
            resources={
                "flokan": FlokanResource(api_key=api_key, base_url=emulator.base_url, max_concurrency=16),
                "flokan_ledger": FlokanLedgerResource(database=str(work / "ledger.duckdb")),
                "flokan_images": ImageStoreResource(directory=str(work / "images")),
            },
        )
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(SKU_PARTITIONS.name, skus)
        before = peak_mb()
        started = time.perf_counter()
        [run] = materialize_skus(defs, instance, ["images"], skus, partitions_name=SKU_PARTITIONS.name,
                                 batch_size=args.skus, log_level="ERROR")  # fmt: skip
        elapsed = time.perf_counter() - started
        after = peak_mb()
        made = len(instance.fetch_materializations(dg.AssetKey("images"), limit=args.skus + 1).records)
    print(f"{args.skus} SKUs in one run: {made} materialized in {elapsed:.1f} s (success={run.success})")
    print(f"  peak RSS before the run  {before:7.0f} MB")
    print(f"  peak RSS after the run   {after:7.0f} MB   target < {TARGET_MB} MB")
    result(f"peak memory of a {args.skus:,}-SKU batch", f"{after:.0f} MB (before the run: {before:.0f} MB)",
           f"< {TARGET_MB} MB", after < TARGET_MB and made == args.skus)


if __name__ == "__main__":
    main()
