"""Adversary: server clock skew, a request the gateway delivers late after a 502, a lost answer
and a slow one, in one run, while reconciliation passes run again and again beside it; then a
second run over the same SKUs. Nothing is charged twice, no job is held by two rows, the ledger's
credits equal the server's deductions, and every SKU is made, adopted, reused or failed by name.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from flokan_dagster.emulator import EmulatorConfig, EmulatorServer
from flokan_dagster.image_store import ImageStore
from flokan_dagster.reconcile import ReconcileCursor, ReconcileSettings, reconcile
from tests.reliability import build_pipeline, charged_jobs, charges_per_prompt, ledger_charges, prompt_of, run_outcomes, sku_names
from tests.support import Admin, wait_for

SETTINGS = ReconcileSettings(budget_s=10.0)


@pytest.fixture(scope="module")
def skewed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    config = EmulatorConfig(state_dir=tmp_path_factory.mktemp("skewed-emulator"), latency_ms=20)
    with EmulatorServer(config) as server:
        yield Admin.of(server)


@pytest.mark.parametrize("offset_s", [-1020, 3600], ids=["server-17min-behind", "server-1h-ahead"])
def test_skew_late_acceptance_and_lost_answers_with_reconciliation_racing(
    tmp_path: Path, skewed: Admin, offset_s: int
) -> None:
    admin = skewed
    admin.call("PUT", "/_emulator/clock", json={"offset_s": offset_s})
    workspace = admin.workspace(credits=1_000_000)
    skus = sku_names(6)
    late, lost, slow = skus[0], skus[1], skus[2]
    try:
        admin.fault("late_accept", prompt_contains=prompt_of(late), times=1, delay_ms=3000, status=502)
        admin.fault("drop_after_complete", prompt_contains=prompt_of(lost), times=1)
        admin.fault("answer_delay", prompt_contains=prompt_of(slow), times=1, ms=2000)
        pipeline = build_pipeline(tmp_path, workspace.api_key, admin.base_url, skus, settle_timeout_s=1.5)
        store = ImageStore(tmp_path / "images")
        stop = threading.Event()
        errors: list[BaseException] = []
        cursor: list[ReconcileCursor | None] = [None]

        def sensor() -> None:
            try:
                with pipeline.client() as client:
                    while not stop.is_set():
                        cursor[0] = reconcile(client, pipeline.ledger, store, cursor[0], SETTINGS).cursor
            except BaseException as exc:  # reported by the test
                errors.append(exc)

        thread = threading.Thread(target=sensor, name="adversary-sensor")
        thread.start()
        try:
            [first] = pipeline.run(skus, 10)
            made, failed = run_outcomes(first, unnamed_failures_ok=True)
            assert set(made) | set(failed) == set(skus) and all(failed.values()), (made, failed)

            def all_finished() -> bool:
                with pipeline.client() as client:
                    jobs = list(client.iter_jobs())
                return len(jobs) == len(skus) and all(j.status in ("completed", "failed") for j in jobs)

            wait_for(all_finished, 60, "every job, the late one included, to finish server side")
            wait_for(lambda: not pipeline.ledger.unknown_attempts() and not pipeline.ledger.in_flight_attempts(), 60,
                     "the reconciliation passes to settle every attempt")  # fmt: skip
        finally:
            stop.set()
            thread.join(60)
        assert not errors, errors
        [second] = pipeline.run(skus, 10)
        made2, failed2 = run_outcomes(second, unnamed_failures_ok=True)
        assert not failed2 and set(made2.values()) <= {"reused", "adopted"}, (made2, failed2)
        assert pipeline.ledger.flush_spool() == 0
        twice = {p: n for p, n in charges_per_prompt(pipeline).items() if n > 1}
        assert not twice, f"paid twice: {twice}"
        ledger = ledger_charges(pipeline.ledger)  # no job on two rows
        assert ledger == charged_jobs(pipeline)
        assert sum(ledger.values()) == workspace.info()["credits_deducted"] == 20 * len(skus)
    finally:
        admin.clear_faults()
        admin.call("PUT", "/_emulator/clock", json={"offset_s": 0})
