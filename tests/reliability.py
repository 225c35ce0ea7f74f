"""Shared by the reliability tests: one image asset over a text-to-image catalog, wired to an
emulator workspace, and a child-process entry point that runs its batches (to be SIGKILLed).

Run as ``python -m tests.reliability <dir> <api_key> <base_url> <count> <batch_size>``: the child
materializes every SKU in batches on its own ephemeral Dagster instance; the ledger and image
store live in ``<dir>`` so the parent can look at what it left behind.
"""

from __future__ import annotations

import csv
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg

from flokan_dagster import FlokanClient, FlokanResource
from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.catalog import CatalogMapping
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.resource import FlokanLedgerResource, ImageStoreResource
from flokan_dagster.runs import materialize_skus

ASSET = "hero_images"
MAPPING = CatalogMapping(prompt_template="Studio photo of {title}", model_tier="standard")


def sku_names(count: int) -> list[str]:
    return [f"SKU-{i:03d}" for i in range(count)]


def prompt_of(sku: str) -> str:
    """The prompt MAPPING makes for a SKU of :func:`write_catalog` (distinct per SKU)."""
    return f"Studio photo of item {sku}"


def write_catalog(path: Path, skus: list[str]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sku", "title"])
        writer.writeheader()
        writer.writerows({"sku": sku, "title": f"item {sku}"} for sku in skus)
    return path


@dataclass
class Pipeline:
    """The asset, its resources and a Dagster instance over one directory and one workspace."""

    directory: Path
    api_key: str
    base_url: str
    defs: dg.Definitions
    instance: dg.DagsterInstance
    ledger: CreditLedger

    def run(self, skus: list[str], batch_size: int) -> list[dg.ExecuteInProcessResult]:
        return materialize_skus(
            self.defs, self.instance, [ASSET], skus, partitions_name=SKU_PARTITIONS.name,
            batch_size=batch_size, log_level="ERROR",
        )  # fmt: skip

    def client(self, **options: Any) -> FlokanClient:
        return FlokanClient(api_key=self.api_key, base_url=self.base_url, backoff_base_s=0.01, **options)


def build_pipeline(
    directory: Path, api_key: str, base_url: str, skus: list[str], *,
    settle_timeout_s: float = 3.0, settle_poll_s: float = 0.2, max_concurrency: int = 6,
) -> Pipeline:  # fmt: skip
    """Write the catalog (if missing) and wire the asset to ``directory`` and the workspace."""
    directory.mkdir(parents=True, exist_ok=True)
    catalog = directory / "catalog.csv"
    if not catalog.exists():
        write_catalog(catalog, skus)
    asset = build_flokan_image_asset(
        ASSET, catalog=catalog, mapping=MAPPING, settle_timeout_s=settle_timeout_s, settle_poll_s=settle_poll_s
    )
    database = str(directory / "ledger.duckdb")
    defs = dg.Definitions(
        assets=[asset],
        resources={
            "flokan": FlokanResource(
                api_key=api_key, base_url=base_url, backoff_base_s=0.01, max_concurrency=max_concurrency
            ),  # fmt: skip
            "flokan_ledger": FlokanLedgerResource(database=database),
            "flokan_images": ImageStoreResource(directory=str(directory / "images")),
        },
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, skus)
    return Pipeline(directory, api_key, base_url, defs, instance, CreditLedger(database))


def run_outcomes(
    result: dg.ExecuteInProcessResult, *, unnamed_failures_ok: bool = False
) -> tuple[dict[str, str], dict[str, str]]:
    """Per SKU of one run: the outcome it materialized with, and the reason it failed by name.

    Checks what every reliability test relies on: each step failure names its SKUs (in its
    ``flokan/failed_skus`` metadata and, with the reason, in its description), every reason is
    non-empty, and no SKU both materialized and failed. ``unnamed_failures_ok`` lets through a
    failure that is not the asset's own (a test that breaks the step from outside), which names none.
    """
    made = {
        e.event_specific_data.materialization.partition: e.event_specific_data.materialization.metadata["flokan/outcome"].value  # type: ignore[union-attr]
        for e in result.get_asset_materialization_events()
    }
    failed: dict[str, str] = {}
    for event in result.get_step_failure_events():
        data = event.step_failure_data.user_failure_data
        if data is None and unnamed_failures_ok:
            continue
        assert data is not None, f"a step failed without naming its SKUs: {event.step_failure_data.error}"
        named: dict[str, str] = data.metadata["flokan/failed_skus"].value  # type: ignore[assignment]
        for sku, reason in named.items():
            assert reason, f"{sku} failed without a reason"
            assert f"- {sku}: {reason}" in (data.description or ""), f"{sku} is not named in the failure's description"
        failed.update(named)
    assert not set(made) & set(failed), "a SKU both materialized and failed"
    return made, failed  # type: ignore[return-value]


def charged_jobs(pipeline: Pipeline) -> dict[str, int]:
    """Completed jobs with credits in the workspace (GET /jobs), job id -> credits."""
    with pipeline.client() as client:
        return {
            job.job_id: job.credits_consumed
            for job in client.iter_jobs()
            if job.status == "completed" and (job.credits_consumed or 0) > 0
        }


def charges_per_prompt(pipeline: Pipeline) -> Counter[str]:
    """How many completed, charged jobs each prompt has in the workspace."""
    with pipeline.client() as client:
        return Counter(
            job.prompt or "" for job in client.iter_jobs() if job.status == "completed" and (job.credits_consumed or 0) > 0
        )


def ledger_charges(ledger: CreditLedger) -> dict[str, int]:
    """Job id -> credits of every ledger row (any origin) holding a job with credits."""
    charges: dict[str, int] = {}
    for record in ledger.attempts_for():
        if record.job_id and (record.credits_consumed or 0) > 0:
            assert record.job_id not in charges, f"job {record.job_id} is held by two ledger rows"
            charges[record.job_id] = int(record.credits_consumed or 0)
    return charges


def main(argv: list[str]) -> None:
    directory, api_key, base_url, count, batch_size = argv
    skus = sku_names(int(count))
    pipeline = build_pipeline(Path(directory), api_key, base_url, skus)
    print("started", flush=True)
    pipeline.run(skus, int(batch_size))
    print("finished", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:])
