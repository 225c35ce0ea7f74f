"""Adversary: twins across two assets. Two image assets over the same catalog and mapping send
requests with identical fields for the same SKU, in two runs at once. One answer is held back
(answer_delay), the other's is lost after the server charged it (drop_after_complete). The lost
one must not adopt its twin's job before the twin records it: each job ends up on one row, and
the ledger's credits equal the server's deductions.
"""

from __future__ import annotations

import threading
from pathlib import Path

import dagster as dg

from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.runs import materialize_skus
from tests.reliability import MAPPING, build_pipeline, charged_jobs, ledger_charges, prompt_of, run_outcomes
from tests.support import Admin, Workspace, wait_for


def test_twins_across_two_assets_never_share_a_job(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    sku = "SKU-TWIN"
    pipeline = build_pipeline(tmp_path, workspace.api_key, admin.base_url, [sku], settle_timeout_s=15.0)
    twin = build_flokan_image_asset("hero_twin", catalog=tmp_path / "catalog.csv", mapping=MAPPING, settle_timeout_s=15.0,
                                    settle_poll_s=0.2)  # fmt: skip
    defs = dg.Definitions(assets=[*pipeline.defs.assets, twin], resources=pipeline.defs.resources)  # type: ignore[list-item]
    admin.fault("answer_delay", prompt_contains=prompt_of(sku), times=1, ms=2500)
    admin.fault("drop_after_complete", prompt_contains=prompt_of(sku), times=1, skip=1)
    results: dict[str, dg.ExecuteInProcessResult] = {}

    def run(asset: str) -> None:
        # Each run its own Dagster instance, as runs in their own processes have: two threads on one
        # in-memory SQLite instance met "database table is locked: snapshots" and one run never started.
        # What is under test lives in the shared ledger, which both runs use.
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(SKU_PARTITIONS.name, [sku])
        [results[asset]] = materialize_skus(defs, instance, [asset], [sku], partitions_name=SKU_PARTITIONS.name,
                                            batch_size=10, log_level="ERROR")  # fmt: skip

    threads = [threading.Thread(target=run, args=(asset,)) for asset in ("hero_images", "hero_twin")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(120)
    kinds = {}
    for asset, result in results.items():
        made, failed = run_outcomes(result, unnamed_failures_ok=True)
        assert set(made) | set(failed) == {sku}, (asset, made, failed)
        kinds[asset] = made.get(sku) or failed[sku]
    assert workspace.info()["jobs"] == 2, "both requests reached the server"

    def all_finished() -> bool:
        with pipeline.client() as client:
            return all(j.status in ("completed", "failed") for j in client.iter_jobs())

    wait_for(all_finished, 30, "both jobs to finish")
    assert pipeline.ledger.flush_spool() == 0
    rows = [r for r in pipeline.ledger.attempts_for() if r.job_id]
    assert len({r.job_id for r in rows}) == len(rows), f"a job held by two rows: {rows}"
    ledger = ledger_charges(pipeline.ledger)
    server = charged_jobs(pipeline)
    # A SKU whose lost answer is not settled yet fails by name; its job is not in the ledger yet.
    assert ledger.items() <= server.items(), (kinds, ledger, server)
    assert sum(ledger.values()) <= workspace.info()["credits_deducted"]
    assert sorted(kinds.values()) == ["adopted", "made"], kinds
