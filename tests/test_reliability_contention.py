"""Never lose a ledger record: eight runs in eight processes and a reconciliation pass, one ledger
file, while another process holds that file open read-write for 30 s.

Timeline: four runs send their ``/process`` calls (answers held 4 s by the emulator), then an
analyst's process takes the DuckDB file read-write for 30 s. Those four runs record their
outcomes in the durable spool and finish while the file is still held. Four more runs and a
reconciliation pass start during the hold: their planning reads wait for the file (the ledger
resource's ``read_timeout_s`` is above the hold), then they run and merge the spool. At the end
every SKU has exactly one completed record whose job the emulator charged, and the ledger's
credits equal the emulator's deductions.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import dagster as dg

from flokan_dagster import FlokanClient, FlokanResource
from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.reconcile import ReconcileResult, ReconcileSettings, reconcile
from flokan_dagster.resource import FlokanLedgerResource, ImageStoreResource
from flokan_dagster.runs import materialize_skus
from tests.support import Admin, Workspace
from tests.test_assets import HERO, HOLD_WHEN_FREE, write_catalog

HOLD_S = 30.0
RUNS = 8
SKUS_PER_RUN = 3
LOCK_TIMEOUT_S = 0.3
READ_TIMEOUT_S = 90.0  # above the hold: a run's planning waits for the file rather than fail
REPO = Path(__file__).resolve().parent.parent


def run_child(arguments: str) -> None:
    """One Dagster run over some SKUs, in its own process (the body of each child)."""
    args: dict[str, Any] = json.loads(arguments)
    tmp = Path(args["tmp"])
    asset = build_flokan_image_asset("hero_images", catalog=tmp / "catalog.csv", mapping=HERO, settle_timeout_s=10, settle_poll_s=0.2)
    defs = dg.Definitions(
        assets=[asset],
        resources={
            "flokan": FlokanResource(api_key=dg.EnvVar("FLOKAN_API_KEY"), base_url=args["base_url"], backoff_base_s=0.01),
            "flokan_ledger": FlokanLedgerResource(database=str(tmp / "ledger.duckdb"), lock_timeout_s=LOCK_TIMEOUT_S,
                                                  read_timeout_s=READ_TIMEOUT_S),  # fmt: skip
            "flokan_images": ImageStoreResource(directory=str(tmp / "images")),
        },
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, args["skus"])
    [result] = materialize_skus(defs, instance, ["hero_images"], args["skus"], partitions_name=SKU_PARTITIONS.name,
                                batch_size=100, log_level="WARNING")  # fmt: skip
    materialized = sorted(r.partition_key for r in instance.fetch_materializations(dg.AssetKey("hero_images"), limit=100).records)
    print(json.dumps({"success": result.success, "materialized": materialized}), flush=True)


def start_run(tmp: Path, workspace: Workspace, skus: list[str], number: int) -> subprocess.Popen[str]:
    arguments = json.dumps({"tmp": str(tmp), "base_url": workspace.admin.base_url, "skus": skus})
    log = (tmp / f"run-{number}.log").open("w")
    return subprocess.Popen(
        [sys.executable, "-c", "import sys; from tests.test_reliability_contention import run_child; run_child(sys.argv[1])", arguments],
        cwd=REPO, env={**os.environ, "FLOKAN_API_KEY": workspace.api_key}, stdout=subprocess.PIPE, stderr=log, text=True,
    )  # fmt: skip


def outcome(tmp: Path, process: subprocess.Popen[str], number: int) -> dict[str, Any]:
    out, _ = process.communicate(timeout=120)
    assert process.returncode == 0, (tmp / f"run-{number}.log").read_text()[-3000:]
    return json.loads(out.strip().splitlines()[-1])


def test_eight_runs_and_a_reconciliation_pass_lose_no_record_while_another_process_holds_the_ledger(
    tmp_path: Path, admin: Admin, workspace: Workspace
) -> None:
    skus = [[f"R{run}-SKU-{i}" for i in range(SKUS_PER_RUN)] for run in range(RUNS)]
    early, late = range(RUNS // 2), range(RUNS // 2, RUNS)
    rows = [{"sku": sku, "title": f"{'held' if run in early else 'late'} item {sku}", "color": "red", "photo": "", "tier": "standard"}
            for run in range(RUNS) for sku in skus[run]]  # fmt: skip
    write_catalog(tmp_path / "catalog.csv", rows)
    admin.fault("latency", prompt_contains="held item", times=None, ms=4000)
    database = tmp_path / "ledger.duckdb"
    ledger = CreditLedger(str(database), lock_timeout_s=LOCK_TIMEOUT_S, read_timeout_s=READ_TIMEOUT_S)
    sent = SKUS_PER_RUN * len(early)

    runs = {n: start_run(tmp_path, workspace, skus[n], n) for n in early}
    deadline = time.monotonic() + 240  # four Dagster runs starting on a loaded machine
    while workspace.info()["jobs"] < sent and time.monotonic() < deadline:
        time.sleep(0.05)
    assert workspace.info()["jobs"] == sent  # the early runs are waiting on Flokan now

    # The runs open the file briefly for each record: the holder takes it as soon as it is free.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WHEN_FREE, str(database), str(HOLD_S)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        held_until = time.monotonic() + HOLD_S
        runs.update({n: start_run(tmp_path, workspace, skus[n], n) for n in late})
        passes: list[ReconcileResult] = []
        reconciler = threading.Thread(target=lambda: passes.append(reconcile_once(workspace, ledger, tmp_path)))
        reconciler.start()

        spooled = 0
        early_results = {}
        for n in early:
            while runs[n].poll() is None:
                spooled = max(spooled, ledger.spooled_count())
                time.sleep(0.05)
            early_results[n] = outcome(tmp_path, runs[n], n)
        assert holder.poll() is None and time.monotonic() < held_until  # they finished during the hold...
        assert spooled > 0  # ...with their outcomes in the spool
        assert all(runs[n].poll() is None for n in late)  # the late runs' planning waits for the file
    finally:
        holder.wait(timeout=HOLD_S + 30)

    late_results = {n: outcome(tmp_path, runs[n], n) for n in late}
    reconciler.join(timeout=120)
    for n, result in {**early_results, **late_results}.items():
        assert result == {"success": True, "materialized": sorted(skus[n])}, n
    [reconciled] = passes
    assert reconciled.summary.error is None and reconciled.summary.caught_up

    assert ledger.flush_spool() == 0
    everything = [sku for group in skus for sku in group]
    records = ledger.attempts_for(asset="hero_images")
    assert sorted(r.sku for r in records) == sorted(everything)  # one record per SKU: none lost, none doubled
    assert {r.status for r in records} == {"completed"} and all(r.job_id and r.result_sha256 for r in records)
    with FlokanClient(api_key=workspace.api_key, base_url=admin.base_url) as client:
        jobs = {job.job_id: job for job in client.iter_jobs()}
    assert {r.job_id for r in records} == set(jobs) and len(jobs) == len(everything)
    assert all(jobs[r.job_id].credits_consumed == r.credits_consumed == 20 for r in records if r.job_id)
    assert sum(r.credits_consumed or 0 for r in ledger.attempts_for()) == workspace.info()["credits_deducted"] == 20 * len(everything)
    assert not [r for r in ledger.attempts_for() if r.origin == "external"]


def reconcile_once(workspace: Workspace, ledger: CreditLedger, tmp: Path) -> ReconcileResult:
    with FlokanClient(api_key=workspace.api_key, base_url=workspace.admin.base_url) as client:
        return reconcile(client, ledger, ImageStore(tmp / "images"), None, ReconcileSettings(budget_s=55))
