"""Adversary: a compaction while a run is paying, and another before the next run.

A run of six SKUs has every answer held back by the emulator and one answer lost after the server
charged it (its outcome unknown). While those requests are in flight, another process compacts
the ledger (forced): the run's records wait in the spool, its reads wait for the ledger. After a
second compaction, the same SKUs run again. Nothing may be paid twice: each prompt has one
charged job, the second run makes nothing new, and the ledger holds exactly the server's charges.
"""

from __future__ import annotations

import subprocess
import sys
import threading
from pathlib import Path

import dagster as dg

from flokan_dagster.ledger import CreditLedger
from tests.reliability import (
    build_pipeline,
    charged_jobs,
    charges_per_prompt,
    ledger_charges,
    prompt_of,
    run_outcomes,
    sku_names,
)
from tests.support import Admin, Workspace, wait_for

REPO = Path(__file__).resolve().parent.parent
_COMPACT = "import sys; from flokan_dagster.ledger import CreditLedger; print(CreditLedger(sys.argv[1], lock_timeout_s=120).compact(force=True).describe())"


def test_compactions_during_and_between_runs_never_pay_twice(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    skus = sku_names(6)
    pipeline = build_pipeline(tmp_path, workspace.api_key, admin.base_url, skus, settle_timeout_s=15.0)
    database = str(tmp_path / "ledger.duckdb")
    CreditLedger(database).begin_attempt(asset="other", sku="SKU-000", prompt="p", model_tier="pro")  # a file to compact
    admin.fault("answer_delay", times=None, ms=4000)  # long enough for the compaction to land mid-run, as a rule
    admin.fault("drop_after_complete", prompt_contains=prompt_of(skus[2]), times=1)
    first: list[dg.ExecuteInProcessResult] = []
    running = threading.Thread(target=lambda: first.extend(pipeline.run(skus, batch_size=10)))
    running.start()
    wait_for(lambda: workspace.info()["jobs"] >= len(skus), 120, "every request to reach the server")
    during = subprocess.run([sys.executable, "-c", _COMPACT, database], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert during.returncode == 0 and "rewritten" in during.stdout, during.stderr
    running.join(300)
    assert not running.is_alive()
    made, failed = run_outcomes(first[0])
    assert set(made) | set(failed) == set(skus)

    admin.clear_faults()
    assert CreditLedger(database, lock_timeout_s=120).compact(force=True).compacted
    second, _ = run_outcomes(pipeline.run(skus, batch_size=10)[0])

    assert set(second) == set(skus), second
    assert "made" not in second.values(), (made, failed, second)
    assert max(charges_per_prompt(pipeline).values()) == 1, charges_per_prompt(pipeline)
    assert pipeline.ledger.flush_spool() == 0
    assert ledger_charges(pipeline.ledger) == charged_jobs(pipeline)
