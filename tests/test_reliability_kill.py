"""A batched run SIGKILLed mid-batch: every job Flokan charged ends up in the ledger, once.

A child process (``python -m tests.reliability``) materializes 30 SKUs in batches of 10 against a
dedicated emulator whose ``/process`` takes about a second, so several jobs are in flight when the
child is killed. The jobs finish server side and are charged; the child recorded them only as
``pending`` write-ahead attempts (or not at all, if it died before the write). Then either the
reconciliation pass settles the dead run's attempts by itself (``sensor``), or a pass records the
jobs and a new batched run adopts them (``rerun``). Either way no SKU is paid twice, the ledger
holds exactly the jobs the emulator charged, to the credit, and nothing of the dead run is left
dangling.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from flokan_dagster.emulator import EmulatorConfig, EmulatorServer
from flokan_dagster.image_store import ImageStore
from flokan_dagster.reconcile import ReconcileCursor, ReconcileSettings, reconcile
from tests.reliability import (
    build_pipeline,
    charged_jobs,
    charges_per_prompt,
    ledger_charges,
    prompt_of,
    sku_names,
)
from tests.support import Admin, sigkill_when, wait_for

PROJECT = Path(__file__).resolve().parent.parent
COUNT, BATCH = 30, 10


@pytest.fixture(scope="module")
def slow(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    config = EmulatorConfig(state_dir=tmp_path_factory.mktemp("slow-emulator"), latency_ms=1000)
    with EmulatorServer(config) as server:
        yield Admin.of(server)



def reconcile_until_caught_up(pipeline, settings: ReconcileSettings) -> list[str]:  # type: ignore[no-untyped-def]
    store = ImageStore(pipeline.directory / "images")
    cursor: ReconcileCursor | None = None
    adopted: list[str] = []
    with pipeline.client() as client:
        for _ in range(10):
            result = reconcile(client, pipeline.ledger, store, cursor, settings)
            cursor, adopted = result.cursor, adopted + [a.sku for a in result.adoptions]
            if result.summary.caught_up and result.summary.error is None:
                return adopted
    raise AssertionError(f"reconciliation did not catch up: {result.summary.describe()}")


@pytest.mark.parametrize("recovery", ["sensor", "rerun", "retry_at_once"])
def test_a_killed_run_loses_no_record_and_nothing_is_paid_twice(tmp_path: Path, slow: Admin, recovery: str) -> None:
    workspace = slow.workspace(credits=100_000)
    skus = sku_names(COUNT)
    hits = slow.hits("POST /process")
    child = subprocess.Popen(
        [sys.executable, "-m", "tests.reliability", str(tmp_path), workspace.api_key, slow.base_url, str(COUNT), str(BATCH)],
        cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)}, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL,
    )  # fmt: skip
    # Killed once the first wave of the first batch has finished and the next calls are in flight.
    sigkill_when(child, lambda: slow.hits("POST /process") - hits >= 8, 60, "/process calls")
    pipeline = build_pipeline(tmp_path, workspace.api_key, slow.base_url, skus)
    killed = {a.attempt_id: a for a in pipeline.ledger.attempts_for()}
    dangling = {i for i, a in killed.items() if a.status in ("pending", "unknown")}
    assert dangling, "the kill left no attempt in flight: the test proves nothing"

    if recovery == "retry_at_once":
        # A retry of the run launched at once: the dead run's jobs are still running; it waits for them.
        deducted = None
    else:
        wait_for(lambda: not slow.call("GET", "/_emulator/stats")["jobs_in_flight"], 30, "in-flight jobs to finish")
        server = charged_jobs(pipeline)
        assert len(server) > len(ledger_charges(pipeline.ledger))  # jobs charged after the child died
        assert len(server) <= len(killed)  # every charged job had its write-ahead record first
        if recovery == "sensor":
            # The sensor alone: once the dead run's pending attempts are stale, they are settled and adopted.
            time.sleep(0.6)
            assert reconcile_until_caught_up(pipeline, ReconcileSettings(stale_after_s=0.5))
        else:
            # The sensor sees the jobs while their attempts still look in flight (recorded as external);
            # a new batched run then adopts them instead of paying again.
            reconcile_until_caught_up(pipeline, ReconcileSettings())
        assert pipeline.ledger.flush_spool() == 0
        assert ledger_charges(pipeline.ledger) == charged_jobs(pipeline)  # every charged job is in the ledger
        deducted = workspace.info()["credits_deducted"]

    results = pipeline.run(skus, BATCH)
    assert all(result.success for result in results)
    materialized = {
        e.event_specific_data.materialization.partition: e.event_specific_data.materialization.metadata  # type: ignore[union-attr]
        for result in results
        for e in result.get_asset_materialization_events()
    }
    assert sorted(materialized) == skus
    paid_before = {a.sku for a in pipeline.ledger.attempts_for() if a.attempt_id in killed and a.credits_consumed}
    for sku, metadata in materialized.items():
        spent = metadata["flokan/credits"].value
        assert spent == (0 if sku in paid_before else 20), (sku, metadata["flokan/outcome"].value)
    if deducted is not None:
        assert workspace.info()["credits_deducted"] - deducted == 20 * (COUNT - len(paid_before))
    wait_for(lambda: not slow.call("GET", "/_emulator/stats")["jobs_in_flight"], 30, "in-flight jobs to finish")

    reconcile_until_caught_up(pipeline, ReconcileSettings())
    assert pipeline.ledger.flush_spool() == 0
    per_prompt = charges_per_prompt(pipeline)
    assert set(per_prompt) == {prompt_of(sku) for sku in skus} and max(per_prompt.values()) == 1
    server, ledger = charged_jobs(pipeline), ledger_charges(pipeline.ledger)
    assert ledger == server and sum(ledger.values()) == workspace.info()["credits_deducted"] == 20 * COUNT
    # The dead run's write-ahead records are all there, settled: completed (adopted) or proven absent.
    after = {a.attempt_id: a for a in pipeline.ledger.attempts_for()}
    assert set(killed) <= set(after)
    for attempt_id in dangling:
        record = after[attempt_id]
        assert record.status in ("completed", "failed"), record
        if record.status == "failed":
            assert record.credits_consumed == 0 and record.job_id is None and "no job was created" in (record.error or "")
        else:
            assert record.origin == "reconciled" and record.job_id in server
    assert not [a for a in after.values() if a.status in ("pending", "unknown")]
