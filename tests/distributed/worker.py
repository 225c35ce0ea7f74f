"""One worker of the shared mode: its own directory, Dagster instance and spool; the ledger in
PostgreSQL and the images in S3 shared with every other worker.

Run as ``python -m tests.distributed.worker <dir> <api_key> <base_url> <database> <store_url>
<s3_endpoint> <skus,comma,separated> <batch_size>``; prints ``started`` and ``finished``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import dagster as dg

from flokan_dagster import FlokanResource
from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.resource import FlokanLedgerResource, ImageStoreResource
from flokan_dagster.runs import materialize_skus
from tests.reliability import ASSET, MAPPING, write_catalog

ALL_SKUS = [f"SKU-{i:03d}" for i in range(32)]


def s3_options(endpoint: str) -> dict[str, str]:
    """What reaches the moto server (it accepts any credentials)."""
    return {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}


def worker_defs(directory: Path, api_key: str, base_url: str, database: str, store_url: str, endpoint: str) -> dg.Definitions:
    """The image asset wired to this worker's directory and the shared ledger and store."""
    directory.mkdir(parents=True, exist_ok=True)
    catalog = directory / "catalog.csv"
    if not catalog.exists():
        write_catalog(catalog, ALL_SKUS)  # the same catalog everywhere: same fingerprints
    asset = build_flokan_image_asset(ASSET, catalog=catalog, mapping=MAPPING, settle_timeout_s=3.0, settle_poll_s=0.2)
    return dg.Definitions(
        assets=[asset],
        resources={
            "flokan": FlokanResource(api_key=api_key, base_url=base_url, backoff_base_s=0.01, max_concurrency=4),
            "flokan_ledger": FlokanLedgerResource(database=database, spool_dir=str(spool_of(directory)), lock_timeout_s=5),
            "flokan_images": ImageStoreResource(directory=store_url, storage_options=s3_options(endpoint)),
        },
    )


def spool_of(directory: Path) -> Path:
    """This worker's own spool (a local disk of its machine)."""
    return directory / "spool"


def run(directory: Path, api_key: str, base_url: str, database: str, store_url: str, endpoint: str,
        skus: list[str], batch_size: int) -> list[dg.ExecuteInProcessResult]:  # fmt: skip
    """Materialize ``skus`` in batched runs on a fresh ephemeral instance of this worker."""
    defs = worker_defs(directory, api_key, base_url, database, store_url, endpoint)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, ALL_SKUS)
    results = materialize_skus(defs, instance, [ASSET], skus, partitions_name=SKU_PARTITIONS.name,
                               batch_size=batch_size, log_level="ERROR")  # fmt: skip
    CreditLedger(database, spool_dir=spool_of(directory)).flush_spool()
    return results


def main(argv: list[str]) -> None:
    directory, api_key, base_url, database, store_url, endpoint, skus, batch_size = argv
    print("started", flush=True)
    results = run(Path(directory), api_key, base_url, database, store_url, endpoint, skus.split(","), int(batch_size))
    made = sum(len(r.get_asset_materialization_events()) for r in results)
    print(f"finished {made}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
