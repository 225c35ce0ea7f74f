"""Four workers sharing nothing but a real PostgreSQL, an S3 server and the emulator.

Each worker is its own process with its own directory, Dagster instance and spool (as separate
machines would be). They materialize overlapping SKU sets at once (every SKU is in two workers'
sets) against an emulator that drops answers after charging, answers provider 500s and bursts
of 429s; one worker is SIGKILLed mid-batch. Then that worker's machine comes back (its spool is
merged), a reconciliation pass runs, and a fresh worker materializes every SKU. Afterwards: no
request charged twice, the ledger's credits equal the emulator's deductions, every SKU's image is
in the bucket with the digest the ledger records, and no record is lost or left in a spool.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import s3fs

from flokan_dagster import FlokanClient
from flokan_dagster.emulator import EmulatorConfig, EmulatorServer, FaultPlan
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.reconcile import ReconcileCursor, ReconcileSettings, reconcile
from tests.distributed.worker import ALL_SKUS, run, s3_options, spool_of
from tests.reliability import ledger_charges, prompt_of
from tests.servers import S3Server, fresh_database
from tests.support import Admin, sigkill_when, wait_for

PROJECT = Path(__file__).resolve().parents[2]
BATCH = 8
# Every SKU in exactly two workers' sets, batches aligned on BATCH.
SETS = [ALL_SKUS[0:16], ALL_SKUS[8:24], ALL_SKUS[16:32], ALL_SKUS[0:8] + ALL_SKUS[24:32]]
KILLED = 1
PLAN = FaultPlan(seed=12, drop_after_complete_rate=0.12, provider_error_rate=0.06, rate_limit_rate=0.06,
                 slow_rate=0.1, slow_ms=300)  # fmt: skip


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    config = EmulatorConfig(state_dir=tmp_path_factory.mktemp("four-workers-emulator"), latency_ms=400, faults=PLAN)
    with EmulatorServer(config) as server:
        yield Admin.of(server)



def charged(api_key: str, base_url: str) -> dict[str, int]:
    with FlokanClient(api_key=api_key, base_url=base_url) as client:
        return {j.job_id: int(j.credits_consumed or 0) for j in client.iter_jobs()
                if j.status == "completed" and (j.credits_consumed or 0) > 0}  # fmt: skip


@pytest.mark.skipif(
    not os.environ.get("FLOKAN_TEST_DISTRIBUTED"),
    reason="the 4-worker scenario runs in `make test-distributed` (FLOKAN_TEST_DISTRIBUTED=1), not twice in CI",
)
def test_four_workers_overlapping_with_faults_and_a_kill(
    faulty: Admin, postgres_dsn: str, s3_server: S3Server, tmp_path: Path
) -> None:
    workspace = faulty.workspace(credits=1_000_000)
    database = fresh_database(postgres_dsn)
    bucket = s3_server.new_bucket()
    store_url = f"s3://{bucket}/flokan"
    # A burst of 429s opens the batch on every worker.
    faulty.fault("rate_limit", times=6)
    hits = faulty.hits("POST /process")
    workers = [
        subprocess.Popen(
            [sys.executable, "-m", "tests.distributed.worker", str(tmp_path / f"worker-{n}"), workspace.api_key,
             faulty.base_url, database, store_url, s3_server.endpoint, ",".join(skus), str(BATCH)],
            cwd=PROJECT, env={**os.environ, "PYTHONPATH": str(PROJECT)}, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            text=True,
        )  # fmt: skip
        for n, skus in enumerate(SETS)
    ]
    try:
        sigkill_when(workers[KILLED], lambda: faulty.hits("POST /process") - hits >= 10, 240,
                     "the workers' first /process calls")  # fmt: skip
        for n, worker in enumerate(workers):
            if n != KILLED:
                out, err = worker.communicate(timeout=600)
                assert worker.returncode == 0 and "finished" in out, f"worker {n} crashed:\n{err[-3000:]}"
    finally:
        for worker in workers:
            if worker.poll() is None:
                worker.kill()
                worker.wait()

    wait_for(lambda: not faulty.call("GET", "/_emulator/stats")["jobs_in_flight"], 120, "in-flight jobs to finish")
    faulty.clear_faults()
    # A dead worker's request whose job never appeared may only be sent again once the
    # server's own limit (300 s, plus a margin) has passed on the server's clock: let it pass.
    faulty.call("PUT", "/_emulator/clock", json={"offset_s": 3600})
    # The killed worker's machine comes back: what it had spooled reaches the shared ledger.
    killed_dir = tmp_path / f"worker-{KILLED}"
    assert CreditLedger(database, spool_dir=spool_of(killed_dir)).flush_spool() == 0
    ledger = CreditLedger(database, spool_dir=tmp_path / "checker-spool")
    before = ledger.attempts_for()
    assert any(a.run_id for a in before), "nothing reached the shared ledger"

    # The reconciliation sensor (anywhere) settles what the dead worker left, then a fresh worker
    # materializes every SKU: adopting, reusing or paying once.
    store = ImageStore(store_url, storage_options=s3_options(s3_server.endpoint))
    cursor: ReconcileCursor | None = None
    time.sleep(0.6)  # the dead run's pending attempts become stale for stale_after_s below
    with FlokanClient(api_key=workspace.api_key, base_url=faulty.base_url) as client:
        for _ in range(10):
            result = reconcile(client, ledger, store, cursor, ReconcileSettings(stale_after_s=0.5))
            cursor = result.cursor
            if result.summary.caught_up and result.summary.error is None:
                break
    # Provider errors stay on, so a SKU may fail again (its failed job charged nothing): run the
    # rest again, as the sensor's re-runs would.
    made: set[str] = set()
    for _ in range(4):
        remaining = [s for s in ALL_SKUS if s not in made]
        if not remaining:
            break
        final = run(tmp_path / "worker-final", workspace.api_key, faulty.base_url, database, store_url,
                    s3_server.endpoint, remaining, BATCH)  # fmt: skip
        made |= {e.event_specific_data.materialization.partition  # type: ignore[union-attr]
                 for r in final for e in r.get_asset_materialization_events()}  # fmt: skip
    assert made == set(ALL_SKUS), f"not materialized: {sorted(set(ALL_SKUS) - made)}"
    wait_for(lambda: not faulty.call("GET", "/_emulator/stats")["jobs_in_flight"], 120, "in-flight jobs to finish")

    # No request charged twice: one charged job per SKU's prompt.
    with FlokanClient(api_key=workspace.api_key, base_url=faulty.base_url) as client:
        reconcile(client, ledger, store, None, ReconcileSettings())
    per_prompt = charges_per_prompt_of(workspace.api_key, faulty.base_url)
    assert set(per_prompt) == {prompt_of(s) for s in ALL_SKUS}
    assert max(per_prompt.values()) == 1, {p: n for p, n in per_prompt.items() if n > 1}
    # The ledger holds exactly the charged jobs, to the credit.
    assert ledger.flush_spool() == 0
    server = charged(workspace.api_key, faulty.base_url)
    held = ledger_charges(ledger)
    assert held == server
    assert sum(held.values()) == workspace.info()["credits_deducted"]
    # Every SKU's image is in the bucket, with the digest the ledger recorded.
    fs = s3fs.S3FileSystem(**s3_options(s3_server.endpoint))
    for sku in ALL_SKUS:
        done = [a for a in ledger.attempts_for(sku=sku) if a.status == "completed" and a.result_path]
        assert done, f"{sku}: no completed attempt with a stored image"
        latest = done[-1]
        assert latest.result_path.startswith(store_url + "/")
        assert hashlib.sha256(fs.cat_file(latest.result_path)).hexdigest() == latest.result_sha256
    # Nothing lost: every spool is empty, every write-ahead record of the killed worker is settled.
    for n in range(len(SETS)):
        assert not list(spool_of(tmp_path / f"worker-{n}").glob("*.event.json")), f"worker {n}'s spool holds events"
    unsettled = [a for a in ledger.attempts_for() if a.status in ("pending", "unknown")]
    assert not unsettled, [(a.sku, a.status, a.run_id) for a in unsettled]


def charges_per_prompt_of(api_key: str, base_url: str):  # type: ignore[no-untyped-def]
    from collections import Counter

    with FlokanClient(api_key=api_key, base_url=base_url) as client:
        return Counter(j.prompt or "" for j in client.iter_jobs() if j.status == "completed" and (j.credits_consumed or 0) > 0)
