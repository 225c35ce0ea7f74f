"""Adversary: the shared PostgreSQL ledger must decide plans like the embedded one.

A second run over unchanged SKUs on a shared ledger reuses their images and pays nothing; an
attempt another machine left unsettled is settled before anything is paid. (Planning read the
ledger by DuckDB ``rowid``, which a PostgreSQL-attached table does not keep: the plan saw no
attempt at all, so every run paid for every SKU again.)
"""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from flokan_dagster.assets import SKU_PARTITIONS
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.runs import materialize_skus
from tests.reliability import Pipeline, charges_per_prompt, run_outcomes, sku_names, write_catalog
from tests.servers import fresh_database
from tests.support import Admin, Workspace
from tests.test_adversary_shared_kill import machine


def test_a_second_run_on_a_shared_ledger_reuses_and_pays_nothing(
    tmp_path: Path, admin: Admin, workspace: Workspace, postgres_dsn: str
) -> None:
    skus = sku_names(3)
    write_catalog(tmp_path / "catalog.csv", skus)
    database = fresh_database(postgres_dsn)
    ledger = CreditLedger(database, spool_dir=tmp_path / "spool-check")
    unsettled = ledger.begin_attempt(asset="hero_images", sku="SKU-LOST", prompt="Studio photo of item SKU-LOST",
                                     model_tier="standard", fingerprint="elsewhere")  # fmt: skip
    ledger.finish_attempt(unsettled, status="unknown", error="read timeout after send")
    assert [(a.sku, a.status) for a in ledger.deciding_attempts("hero_images", {"SKU-LOST": "elsewhere"})] == [("SKU-LOST", "unknown")]

    results = []
    for number in (1, 2):  # two machines, one after the other, each with its own spool
        defs = machine(tmp_path, database, tmp_path / f"spool-{number}", workspace.api_key, admin.base_url, skus)
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(SKU_PARTITIONS.name, skus)
        [result] = materialize_skus(defs, instance, ["hero_images"], skus, partitions_name=SKU_PARTITIONS.name,
                                    batch_size=100, log_level="ERROR")  # fmt: skip
        results.append(result)
    assert run_outcomes(results[0], unnamed_failures_ok=True)[0] == {sku: "made" for sku in skus}
    assert run_outcomes(results[1], unnamed_failures_ok=True)[0] == {sku: "reused" for sku in skus}, run_outcomes(results[1], unnamed_failures_ok=True)
    view = Pipeline(tmp_path, workspace.api_key, admin.base_url, defs, instance, ledger)
    assert max(charges_per_prompt(view).values()) == 1
    assert workspace.info()["credits_deducted"] == 20 * len(skus)
