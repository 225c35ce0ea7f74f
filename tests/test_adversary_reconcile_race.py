"""Adversary: the reconciliation pass (the sensor's body) runs again and again while a manual run
is sending, some answers lost after the server charged them and others slow.

The pass sees the run's jobs before the run records them (recorded as ``external``), settles the
run's unknown attempts while the run itself is settling them, and adopts their images. Whatever
the interleaving: no request charged twice, no job held by two rows, the ledger's credits equal
the server's deductions, and every SKU is made, adopted or failed by name.
"""

from __future__ import annotations

import threading
from pathlib import Path

from flokan_dagster.image_store import ImageStore
from flokan_dagster.reconcile import ReconcileCursor, ReconcileSettings, reconcile
from tests.reliability import build_pipeline, charged_jobs, charges_per_prompt, ledger_charges, prompt_of, run_outcomes, sku_names
from tests.support import Admin, Workspace, wait_for

SETTINGS = ReconcileSettings(budget_s=10.0, overlap_s=30.0, stale_after_s=900.0)


def test_reconciliation_racing_a_manual_run_pays_nothing_twice(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    skus = sku_names(8)
    pipeline = build_pipeline(tmp_path, workspace.api_key, admin.base_url, skus, settle_timeout_s=6.0)
    for sku in skus[:3]:
        admin.fault("drop_after_complete", prompt_contains=prompt_of(sku), times=1)
    for sku in skus[3:6]:
        admin.fault("latency", prompt_contains=prompt_of(sku), times=1, ms=1500)
    store = ImageStore(tmp_path / "images")
    stop = threading.Event()
    passes: list[str] = []
    errors: list[BaseException] = []

    def sensor() -> None:
        cursor: ReconcileCursor | None = None
        try:
            with pipeline.client() as client:
                while not stop.is_set():
                    result = reconcile(client, pipeline.ledger, store, cursor, SETTINGS)
                    cursor = result.cursor
                    passes.append(result.summary.describe())
        except BaseException as exc:  # reported by the test, not lost in the thread
            errors.append(exc)

    thread = threading.Thread(target=sensor, name="adversary-sensor")
    thread.start()
    try:
        wait_for(lambda: len(passes) >= 1, 30, "a first reconciliation pass")
        [result] = pipeline.run(skus, batch_size=len(skus))
    finally:
        stop.set()
        thread.join(60)
    assert not errors, errors
    assert len(passes) >= 2

    made, failed = run_outcomes(result, unnamed_failures_ok=True)
    assert set(made) | set(failed) == set(skus), (made, failed)
    assert all(reason for reason in failed.values())

    def all_finished() -> bool:
        with pipeline.client() as client:
            return all(j.status in ("completed", "failed") for j in client.iter_jobs())

    wait_for(all_finished, 30, "every job to finish server side")
    with pipeline.client() as client:
        cursor = None
        for _ in range(5):
            final = reconcile(client, pipeline.ledger, store, cursor, SETTINGS)
            cursor = final.cursor
    assert pipeline.ledger.flush_spool() == 0
    twice = {p: n for p, n in charges_per_prompt(pipeline).items() if n > 1}
    assert not twice, f"paid twice: {twice}"
    ledger = ledger_charges(pipeline.ledger)  # asserts no job is held by two rows
    assert ledger == charged_jobs(pipeline)
    assert sum(ledger.values()) == workspace.info()["credits_deducted"]
    assert sum(r.credits_consumed or 0 for r in pipeline.ledger.attempts_for()) == workspace.info()["credits_deducted"]
