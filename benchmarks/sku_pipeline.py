"""The pipeline the throughput and memory benchmarks run: one image asset over a generated catalog.

Example:
    >>> pipeline = SkuPipeline.create(emulator, work, skus, batch_size=200, concurrency=10)  # doctest: +SKIP
    >>> seconds = pipeline.materialize()  # doctest: +SKIP
"""

from __future__ import annotations

import csv
import sys
import time
from dataclasses import dataclass
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
from flokan_dagster.emulator import EmulatorProcess  # noqa: E402


def write_catalog(work: Path, skus: list[str], batch_size: int) -> Path:
    """The catalog CSV of ``skus`` (prompts differ by batch size, so pipelines never share jobs)."""
    catalog = work / f"catalog-{batch_size}.csv"
    with catalog.open("w", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["sku", "title"])
        writer.writerows([sku, f"product {sku} batch {batch_size}"] for sku in skus)
    return catalog


def build_defs(api_key: str, base_url: str, work: Path, batch_size: int, concurrency: int | None = None) -> dg.Definitions:
    """The ``images`` asset over ``work``'s catalog, with its resources (``concurrency`` None: the default cap)."""
    asset = build_flokan_image_asset("images", catalog=work / f"catalog-{batch_size}.csv", batch_size=batch_size,
                                     mapping=CatalogMapping(prompt_template="Photo of {title}"))  # fmt: skip
    flokan = FlokanResource(api_key=api_key, base_url=base_url)
    if concurrency is not None:
        flokan = FlokanResource(api_key=api_key, base_url=base_url, max_concurrency=concurrency)
    return dg.Definitions(
        assets=[asset],
        resources={
            "flokan": flokan,
            "flokan_ledger": FlokanLedgerResource(database=str(work / f"ledger-{batch_size}.duckdb")),
            "flokan_images": ImageStoreResource(directory=str(work / f"images-{batch_size}")),
        },
    )


@dataclass
class SkuPipeline:
    """A fresh workspace, catalog, ledger and image store for ``skus``, wired into Dagster."""

    defs: dg.Definitions
    instance: dg.DagsterInstance
    skus: list[str]
    batch_size: int

    @classmethod
    def create(
        cls, emulator: EmulatorProcess, work: Path, skus: list[str], *, batch_size: int, concurrency: int | None = None,
        rate_limit_per_minute: int = 10**7,
    ) -> SkuPipeline:  # fmt: skip
        """Create the workspace and files under ``work`` (named by batch size, so runs can share it).

        ``concurrency`` None keeps the resource's default ``max_concurrency``.
        """
        workspace = emulator.admin.create_workspace(credits=10**9, rate_limit_per_minute=rate_limit_per_minute)
        api_key = emulator.admin.create_key(workspace)
        write_catalog(work, skus, batch_size)
        return cls.attach(api_key, emulator.base_url, work, skus, batch_size=batch_size, concurrency=concurrency)

    @classmethod
    def attach(
        cls, api_key: str, base_url: str, work: Path, skus: list[str], *, batch_size: int, concurrency: int | None = None,
    ) -> SkuPipeline:  # fmt: skip
        """The pipeline over files :meth:`create` made, for ``skus`` (e.g. in another process), on a new instance."""
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(SKU_PARTITIONS.name, skus)
        return cls(build_defs(api_key, base_url, work, batch_size, concurrency), instance, skus, batch_size)

    def materialize(self) -> float:
        """Materialize every SKU in runs of ``batch_size``; return the wall time. Exits if one is missing."""
        started = time.perf_counter()
        results = materialize_skus(self.defs, self.instance, ["images"], self.skus, partitions_name=SKU_PARTITIONS.name,
                                   batch_size=self.batch_size, log_level="ERROR")  # fmt: skip
        elapsed = time.perf_counter() - started
        made = len(self.instance.fetch_materializations(dg.AssetKey("images"), limit=len(self.skus) + 1).records)
        if made != len(self.skus) or not all(r.success for r in results):
            raise SystemExit(f"only {made} of {len(self.skus)} SKUs were materialized")
        return elapsed
