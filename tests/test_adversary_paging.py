"""Adversary: lost answers looked up in ``GET /jobs`` while other jobs keep arriving at the head.

Offset pages shift under a reader while the list grows (Part B): every row moves down, so a
row read on page 1 shows again on page 2, and the lost answers' own jobs sink below hundreds of
newer ones. Every lost answer is still found and adopted, never sent again.
"""

from __future__ import annotations

import threading
from pathlib import Path

from tests.reliability import build_pipeline, charges_per_prompt, ledger_charges, prompt_of, run_outcomes, sku_names
from tests.support import Admin, Workspace


def test_lost_answers_are_found_while_new_jobs_shift_the_pages(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    skus = sku_names(4)
    for sku in skus:
        admin.fault("drop_after_complete", prompt_contains=prompt_of(sku), times=1)
        admin.fault("latency", prompt_contains=prompt_of(sku), times=1, ms=1000)
    pipeline = build_pipeline(tmp_path, workspace.api_key, admin.base_url, skus, settle_timeout_s=20.0)
    stop = threading.Event()
    inserted: list[int] = []

    def traffic() -> None:  # another tool of the workspace, busy: 50 new jobs every 50 ms
        while not stop.wait(0.05):
            inserted.append(admin.call("POST", f"/_emulator/workspaces/{workspace.workspace_id}/jobs/bulk",
                                       json={"count": 50, "step_ms": 1})["inserted"])  # fmt: skip

    thread = threading.Thread(target=traffic, name="other-traffic")
    thread.start()
    try:
        [result] = pipeline.run(skus, 10)
    finally:
        stop.set()
        thread.join(30)
    assert sum(inserted) >= 300, "the pages did not shift much: the test proves little"
    made, failed = run_outcomes(result, unnamed_failures_ok=True)
    assert made == {sku: "adopted" for sku in skus}, (made, failed)
    per_prompt = charges_per_prompt(pipeline)
    assert all(per_prompt[prompt_of(sku)] == 1 for sku in skus), per_prompt
    assert pipeline.ledger.flush_spool() == 0
    ours = {r.job_id for r in pipeline.ledger.attempts_for() if r.sku in skus and r.status == "completed"}
    assert len(ours) == len(skus)
    ledger_charges(pipeline.ledger)  # no job held by two rows
