"""deploy/dagster.yaml is a valid Dagster instance: queued runs, a pool limit, Postgres storage."""

from __future__ import annotations

from pathlib import Path

import dagster as dg
import yaml

from flokan_dagster.demo import image_store_resource, ledger_resource

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"


def test_the_deploy_instance_queues_runs_and_limits_the_flokan_pool(tmp_path: Path) -> None:
    config = yaml.safe_load((DEPLOY / "dagster.yaml").read_text())
    # Dagster's own storage goes to PostgreSQL (dagster-postgres, in the shared extra), reached
    # through the environment with the driver that extra installs. It loads for real against a
    # PostgreSQL server in tests/distributed/test_deploy_instance.py (make test-distributed).
    postgres_db = dict(config["storage"]["postgres"]["postgres_db"])
    assert postgres_db.pop("scheme") == "postgresql+psycopg2"
    assert set(postgres_db) == {"hostname", "port", "username", "password", "db_name"}
    assert all(isinstance(v, dict) and "env" in v for v in postgres_db.values())
    # The rest loads into a real instance here (storage left to the default: no server needed).
    del config["storage"]
    (tmp_path / "dagster.yaml").write_text(yaml.safe_dump(config))
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        assert type(instance.run_coordinator).__name__ == "QueuedRunCoordinator"
        settings = instance.get_concurrency_config()
        assert settings.pool_config.default_pool_limit == 4
        assert settings.run_queue_config is not None and settings.run_queue_config.max_concurrent_runs == 8


def test_shared_settings_come_from_the_environment(monkeypatch, tmp_path: Path) -> None:  # type: ignore[no-untyped-def]
    assert ledger_resource(tmp_path).database.endswith("ledger.duckdb")
    assert image_store_resource(tmp_path).directory.endswith("images")
    monkeypatch.setenv("FLOKAN_LEDGER_DATABASE", "postgresql://flokan:secret@db:5432/ledger")
    monkeypatch.setenv("FLOKAN_LEDGER_SPOOL_DIR", "/var/lib/flokan/spool")
    monkeypatch.setenv("FLOKAN_IMAGE_STORE", "s3://bucket/flokan")
    monkeypatch.setenv("FLOKAN_S3_ENDPOINT_URL", "http://minio:9000")
    ledger = ledger_resource(tmp_path)
    # The connection string (with its password) is an EnvVar, read when a run starts, not a
    # value stored in the code location's snapshot.
    assert isinstance(ledger.database, dg.EnvVar)
    resolved = ledger.process_config_and_initialize()
    assert resolved.get_ledger().database == "postgresql://flokan:secret@db:5432/ledger"
    assert resolved.spool_dir == "/var/lib/flokan/spool"
    images = image_store_resource(tmp_path)
    assert images.directory == "s3://bucket/flokan" and images.storage_options == {"endpoint_url": "http://minio:9000"}
