"""Adversary: Dagster re-executes the image step while the first try's requests are still paid.

A step retry (``RetryPolicy`` on the job) runs in the *same* Dagster run, so every write-ahead
attempt of the first try carries the retry's own run id. The first try here fails mid-batch with
an exception that is not the asset's own ``allow_retries=False`` failure (a stand-in for anything
the step does between two SKUs that can raise: an event-log write, a thumbnail of an unreadable
file): SKU-000 is done, the five others are accepted by the server and still processing, their
tasks are cancelled, their attempts left ``pending``. The server finishes and charges those five
jobs anyway. The retried step must settle them (adopt the jobs), never send them again.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from pathlib import Path

import dagster as dg

from flokan_dagster.runs import RANGE_END_TAG, RANGE_START_TAG
from tests.reliability import (
    ASSET,
    build_pipeline,
    charged_jobs,
    charges_per_prompt,
    ledger_charges,
    prompt_of,
    run_outcomes,
    sku_names,
)
from tests.support import Admin, Workspace, wait_for

SLOW_MS = 2500


class _RaiseOnceAfterAccepted(logging.Filter):
    """Raises out of the step at the first SKU's progress line, once the others' jobs exist."""

    def __init__(self, jobs: Callable[[], int], expected_jobs: int) -> None:
        super().__init__()
        self.jobs = jobs
        self.expected_jobs = expected_jobs
        self.raised = False

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.raised:
            self.raised = True
            wait_for(lambda: self.jobs() >= self.expected_jobs, 30, "every job accepted by the server")
            raise RuntimeError("the step fails between two SKUs (e.g. an event-log write)")
        return True


def test_step_retry_mid_batch_does_not_send_the_first_tries_skus_again(
    tmp_path: Path, admin: Admin, workspace: Workspace
) -> None:
    skus = sku_names(6)
    pipeline = build_pipeline(tmp_path, workspace.api_key, admin.base_url, skus, settle_timeout_s=8.0)
    for sku in skus[1:]:
        admin.fault("latency", prompt_contains=prompt_of(sku), times=1, ms=SLOW_MS)
    job = dg.define_asset_job("adversary_retry", selection=[ASSET], op_retry_policy=dg.RetryPolicy(max_retries=1))
    defs = dg.Definitions(assets=pipeline.defs.assets, resources=pipeline.defs.resources, jobs=[job])
    retried_job = defs.resolve_job_def("adversary_retry")

    def server_jobs() -> int:
        with pipeline.client() as client:
            return sum(1 for _ in client.iter_jobs())

    trip = _RaiseOnceAfterAccepted(server_jobs, len(skus))
    progress = logging.getLogger("flokan_dagster.progress")
    level = progress.level
    progress.setLevel(logging.INFO)
    progress.addFilter(trip)
    try:
        result = retried_job.execute_in_process(
            instance=pipeline.instance, tags={RANGE_START_TAG: skus[0], RANGE_END_TAG: skus[-1]}, raise_on_error=False
        )
    finally:
        progress.removeFilter(trip)
        progress.setLevel(level)
    assert trip.raised
    # The step was retried (same run id): the retry is where the breach would happen.
    assert any(e.event_type_value == "STEP_RESTARTED" for e in result.all_events), "the step was not retried"

    # Every job the server accepted finishes (and is charged) even though its caller hung up.
    def all_finished() -> bool:
        with pipeline.client() as client:
            return all(j.status in ("completed", "failed") for j in client.iter_jobs())

    wait_for(all_finished, 30, "every job to finish server side")
    twice = {p: n for p, n in charges_per_prompt(pipeline).items() if n > 1}
    assert not twice, f"paid twice after a step retry: {twice}"
    made, failed = run_outcomes(result, unnamed_failures_ok=True)
    assert set(made) | set(failed) >= set(skus), (made, failed)
    assert pipeline.ledger.flush_spool() == 0
    assert {made.get(sku) for sku in skus[1:]} == {"adopted"}, (made, failed)
    ledger = ledger_charges(pipeline.ledger)
    assert ledger == charged_jobs(pipeline)
    assert sum(ledger.values()) == workspace.info()["credits_deducted"]
