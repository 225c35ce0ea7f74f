"""Peak memory of one batched run over 1,000 SKUs (the emulator in a subprocess, zero latency).

Peak resident memory of this process (Dagster, the run, the batch, thumbnails, the ledger) is
read from the OS after the run, beside the same figure before it. Target: under 500 MB.

Usage:
    python benchmarks/bench_memory.py [--skus 1000]
"""

from __future__ import annotations

import argparse
import resource
import tempfile
from pathlib import Path

from results import result
from sku_pipeline import SkuPipeline

from flokan_dagster.emulator import EmulatorConfig, EmulatorProcess

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
        pipeline = SkuPipeline.create(emulator, Path(tmp), skus, batch_size=args.skus, concurrency=16)
        before = peak_mb()
        elapsed = pipeline.materialize()
        after = peak_mb()
    print(f"{args.skus} SKUs in one run: all materialized in {elapsed:.1f} s")
    print(f"  peak RSS before the run  {before:7.0f} MB")
    print(f"  peak RSS after the run   {after:7.0f} MB   target < {TARGET_MB} MB")
    result(f"peak memory of a {args.skus:,}-SKU batch", f"{after:.0f} MB (before the run: {before:.0f} MB)",
           f"< {TARGET_MB} MB", after < TARGET_MB)


if __name__ == "__main__":
    main()
