"""deploy/dagster.yaml as a real Dagster instance on a real PostgreSQL (dagster-postgres).

The file is loaded as shipped (copied into a fresh DAGSTER_HOME), with its environment variables
pointing at a new database of the test server. SKUs are materialized through that instance
against the emulator with the shared ledger (PostgreSQL) and image store (S3): the runs and their
materializations must be in PostgreSQL's run and event storage (read back with SQL, not only
through the instance), the ledger's credits must equal the emulator's deductions, and the queued
run coordinator and the ``flokan`` pool's limit must be the ones the file sets.
"""

from __future__ import annotations

import hashlib
import os
import shutil
from pathlib import Path
from urllib.parse import urlsplit

import dagster as dg
import psycopg2
import pytest
import s3fs

from flokan_dagster.assets import SKU_PARTITIONS
from flokan_dagster.emulator import EmulatorServer
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.runs import materialize_skus
from tests.distributed.worker import ALL_SKUS, s3_options, spool_of, worker_defs
from tests.reliability import ASSET, ledger_charges
from tests.servers import S3Server, fresh_database
from tests.support import Workspace

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"
SKUS = ALL_SKUS[:6]
BATCH = 3


@pytest.mark.skipif(
    not os.environ.get("FLOKAN_TEST_DISTRIBUTED"),
    reason="runs in `make test-distributed` (FLOKAN_TEST_DISTRIBUTED=1) with its PostgreSQL and S3 servers",
)
def test_deploy_dagster_yaml_runs_skus_with_postgres_storage(
    emulator: EmulatorServer, workspace: Workspace, postgres_dsn: str, s3_server: S3Server,
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
) -> None:  # fmt: skip
    dagster_db = urlsplit(fresh_database(postgres_dsn))
    home = tmp_path / "dagster_home"
    home.mkdir()
    shutil.copyfile(DEPLOY / "dagster.yaml", home / "dagster.yaml")
    for name, value in {
        "DAGSTER_HOME": str(home),
        "DAGSTER_PG_HOST": dagster_db.hostname or "",
        "DAGSTER_PG_PORT": str(dagster_db.port),
        "DAGSTER_PG_USER": dagster_db.username or "",
        "DAGSTER_PG_PASSWORD": dagster_db.password or "",  # the test server trusts loopback
        "DAGSTER_PG_DB": dagster_db.path.lstrip("/"),
    }.items():
        monkeypatch.setenv(name, value)
    ledger_database = fresh_database(postgres_dsn)
    store_url = f"s3://{s3_server.new_bucket()}/flokan"

    with dg.DagsterInstance.from_config(str(home)) as instance:
        # The run queue and the pool limits are the file's.
        assert isinstance(instance.run_coordinator, dg.QueuedRunCoordinator)
        concurrency = instance.get_concurrency_config()
        assert concurrency.run_queue_config is not None
        assert concurrency.run_queue_config.max_concurrent_runs == 8
        assert concurrency.pool_config.pool_granularity is not None
        assert concurrency.pool_config.pool_granularity.value == "run"
        assert instance.event_log_storage.get_concurrency_info("flokan").limit == 4
        assert instance.run_monitoring_enabled

        defs = worker_defs(tmp_path / "worker", workspace.api_key, emulator.base_url, ledger_database, store_url,
                           s3_server.endpoint)  # fmt: skip
        instance.add_dynamic_partitions(SKU_PARTITIONS.name, ALL_SKUS)
        results = materialize_skus(defs, instance, [ASSET], SKUS, partitions_name=SKU_PARTITIONS.name,
                                   batch_size=BATCH, log_level="ERROR")  # fmt: skip
        assert len(results) == len(SKUS) // BATCH
        assert all(r.success for r in results), [r.run_id for r in results if not r.success]
        run_ids = {r.run_id for r in results}

        # Through the instance: every run succeeded, one materialization per SKU.
        records = instance.get_run_records(dg.RunsFilter(run_ids=list(run_ids)))
        assert {r.dagster_run.status for r in records} == {dg.DagsterRunStatus.SUCCESS}
        materialized = instance.fetch_materializations(dg.AssetKey(ASSET), limit=100).records
        assert sorted(m.partition_key or "" for m in materialized) == SKUS

    # In PostgreSQL itself: the runs table and the event log hold them (not a local SQLite file).
    assert not list(home.rglob("*.db")), "Dagster wrote a local SQLite storage"
    with psycopg2.connect(dagster_db.geturl()) as conn, conn.cursor() as cursor:
        cursor.execute("SELECT run_id, status FROM runs")
        assert dict(cursor.fetchall()) == dict.fromkeys(run_ids, "SUCCESS")
        cursor.execute(
            "SELECT run_id, partition FROM event_logs WHERE dagster_event_type = 'ASSET_MATERIALIZATION'"
            " AND asset_key = %s", (dg.AssetKey(ASSET).to_string(),),
        )  # fmt: skip
        rows = cursor.fetchall()
    assert {run_id for run_id, _ in rows} == run_ids
    assert sorted(partition for _, partition in rows) == SKUS

    # The shared ledger holds exactly what the emulator charged; every image is in the bucket.
    ledger = CreditLedger(ledger_database, spool_dir=spool_of(tmp_path / "worker"))
    assert ledger.flush_spool() == 0
    charges = ledger_charges(ledger)
    assert len(charges) == len(SKUS)
    assert sum(charges.values()) == workspace.info()["credits_deducted"] > 0
    fs = s3fs.S3FileSystem(**s3_options(s3_server.endpoint))
    for sku in SKUS:
        (done,) = [a for a in ledger.attempts_for(sku=sku) if a.status == "completed"]
        assert done.result_path and done.result_path.startswith(store_url + "/")
        assert hashlib.sha256(fs.cat_file(done.result_path)).hexdigest() == done.result_sha256
