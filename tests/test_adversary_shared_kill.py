"""Adversary: two machines share one PostgreSQL ledger, each with its own spool directory. A run
worker is SIGKILLed (a preempted spot instance, an OOM kill) right after its requests went out.
Its write-ahead records must already be in the shared ledger: a record left only in the dead
machine's spool is invisible to the other machine, whose next run would find no attempt for those
SKUs and pay for them a second time. The next run adopts the dead run's jobs or fails those SKUs
by name; nothing is charged twice.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import dagster as dg

from flokan_dagster import FlokanResource
from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.resource import FlokanLedgerResource, ImageStoreResource
from flokan_dagster.runs import materialize_skus
from tests.reliability import (
    ASSET,
    MAPPING,
    charged_jobs,
    charges_per_prompt,
    ledger_charges,
    prompt_of,
    run_outcomes,
    sku_names,
    write_catalog,
)
from tests.servers import fresh_database
from tests.support import Admin, Workspace, sigkill_when, wait_for

PROJECT = Path(__file__).resolve().parent.parent


def machine(directory: Path, database: str, spool: Path, api_key: str, base_url: str, skus: list[str]) -> dg.Definitions:
    """One machine's definitions: the shared ledger with this machine's own spool."""
    asset = build_flokan_image_asset(ASSET, catalog=directory / "catalog.csv", mapping=MAPPING, settle_timeout_s=8.0,
                                     settle_poll_s=0.2)  # fmt: skip
    return dg.Definitions(
        assets=[asset],
        resources={
            "flokan": FlokanResource(api_key=api_key, base_url=base_url, backoff_base_s=0.01, max_concurrency=8),
            "flokan_ledger": FlokanLedgerResource(database=database, spool_dir=str(spool)),
            "flokan_images": ImageStoreResource(directory=str(directory / "images")),
        },
    )


def run_machine(arguments: str) -> None:
    """The body of the machine that is killed."""
    args: dict[str, Any] = json.loads(arguments)
    defs = machine(Path(args["dir"]), args["database"], Path(args["spool"]), args["api_key"], args["base_url"], args["skus"])
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, args["skus"])
    materialize_skus(defs, instance, [ASSET], args["skus"], partitions_name=SKU_PARTITIONS.name, batch_size=100)


def test_a_killed_machines_write_ahead_records_are_in_the_shared_ledger(
    tmp_path: Path, admin: Admin, workspace: Workspace, postgres_dsn: str
) -> None:
    skus = sku_names(3)
    write_catalog(tmp_path / "catalog.csv", skus)
    database = fresh_database(postgres_dsn)
    for sku in skus:
        admin.fault("latency", prompt_contains=prompt_of(sku), times=1, ms=4000)
    arguments = json.dumps({"dir": str(tmp_path), "database": database, "spool": str(tmp_path / "spool-a"),
                            "api_key": workspace.api_key, "base_url": admin.base_url, "skus": skus})  # fmt: skip
    code = "import sys; from tests.test_adversary_shared_kill import run_machine; run_machine(sys.argv[1])"
    child = subprocess.Popen(
        [sys.executable, "-c", code, arguments], cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)},
        stdout=subprocess.DEVNULL, stderr=(tmp_path / "machine-a.log").open("w"),
    )  # fmt: skip
    sigkill_when(child, lambda: workspace.info()["jobs"] >= len(skus), 60, "machine A's sends", log=tmp_path / "machine-a.log")
    defs = machine(tmp_path, database, tmp_path / "spool-b", workspace.api_key, admin.base_url, skus)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, skus)
    [result] = materialize_skus(defs, instance, [ASSET], skus, partitions_name=SKU_PARTITIONS.name, batch_size=100,
                                log_level="ERROR")  # fmt: skip
    made, failed = run_outcomes(result, unnamed_failures_ok=True)
    assert set(made) | set(failed) == set(skus) and all(failed.values()), (made, failed)
    ledger_b = CreditLedger(database, spool_dir=tmp_path / "spool-b")

    def all_finished() -> bool:
        with FlokanResource(api_key=workspace.api_key, base_url=admin.base_url).get_client() as client:
            return all(j.status in ("completed", "failed") for j in client.iter_jobs())

    wait_for(all_finished, 30, "every job to finish server side")
    from tests.reliability import Pipeline

    view = Pipeline(tmp_path, workspace.api_key, admin.base_url, defs, instance, ledger_b)
    twice = {p: n for p, n in charges_per_prompt(view).items() if n > 1}
    assert not twice, f"paid twice: {twice} (outcomes {made} {failed})"
    assert "made" not in made.values(), made
    assert ledger_charges(ledger_b).items() <= charged_jobs(view).items()
