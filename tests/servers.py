"""The real servers of the shared mode for tests: PostgreSQL and an S3-compatible server (moto).

Each is started once per test session by the scripts CI uses (``.ci/start-postgres``,
``.ci/start-s3``), or reused when ``FLOKAN_TEST_PG_DSN`` / ``FLOKAN_TEST_S3_ENDPOINT`` is set
(``make test-distributed`` starts them once for all its processes). Where PostgreSQL is not
installed and cannot be (not root), the tests needing it skip with that reason; CI installs it.
"""

from __future__ import annotations

import os
import subprocess
import sys
import uuid
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pytest

if TYPE_CHECKING:
    from flokan_dagster.ledger import CreditLedger

ROOT = Path(__file__).resolve().parent.parent
NOT_INSTALLABLE = 2  # .ci/start-postgres's exit code when initdb is missing and cannot be installed


def script_env(output: str) -> dict[str, str]:
    """The ``KEY=value`` lines a ``.ci/start-*`` script prints, as a mapping."""
    return dict(line.split("=", 1) for line in output.splitlines() if "=" in line)


@dataclass(frozen=True)
class S3Server:
    """An S3-compatible endpoint and the storage options that reach it."""

    endpoint: str

    def storage_options(self) -> dict[str, object]:
        """fsspec/s3fs options for this endpoint (moto accepts any credentials)."""
        return {"key": "testing", "secret": "testing", "client_kwargs": {"endpoint_url": self.endpoint}}

    def new_bucket(self) -> str:
        """Create a fresh bucket and return its name."""
        import s3fs

        name = f"flokan-{uuid.uuid4().hex[:12]}"
        s3fs.S3FileSystem(**self.storage_options()).mkdir(name)  # type: ignore[no-untyped-call]
        return name


@pytest.fixture(scope="session")
def postgres_dsn() -> Iterator[str]:
    """A PostgreSQL connection string; a fresh cluster unless ``FLOKAN_TEST_PG_DSN`` is set."""
    given = os.environ.get("FLOKAN_TEST_PG_DSN")
    if given:
        yield given
        return
    started = subprocess.run(["bash", str(ROOT / ".ci/start-postgres")], capture_output=True, text=True)
    if started.returncode == NOT_INSTALLABLE:
        pytest.skip(started.stderr.strip())
    if started.returncode != 0:
        raise RuntimeError(f".ci/start-postgres failed:\n{started.stderr}")
    env = script_env(started.stdout)
    try:
        yield env["FLOKAN_TEST_PG_DSN"]
    finally:
        subprocess.run(["bash", str(ROOT / ".ci/stop-postgres"), env["FLOKAN_TEST_PG_DIR"]], check=False)


def fresh_database(dsn: str) -> str:
    """Create an empty database on ``dsn``'s server and return its connection string."""
    import psycopg2

    name = f"ledger_{uuid.uuid4().hex[:12]}"
    conn = psycopg2.connect(dsn)
    try:
        conn.autocommit = True
        with conn.cursor() as cursor:
            cursor.execute(f"CREATE DATABASE {name}")
    finally:
        conn.close()
    return dsn.rsplit("/", 1)[0] + "/" + name


@pytest.fixture(scope="session")
def s3_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3Server]:
    """moto's S3 server on loopback; reused when ``FLOKAN_TEST_S3_ENDPOINT`` is set."""
    given = os.environ.get("FLOKAN_TEST_S3_ENDPOINT")
    if given:
        yield S3Server(given)
        return
    directory = tmp_path_factory.mktemp("s3")
    started = subprocess.run(
        ["bash", str(ROOT / ".ci/start-s3"), str(directory), sys.executable], capture_output=True, text=True
    )
    if started.returncode != 0:
        raise RuntimeError(f".ci/start-s3 failed:\n{started.stderr}")
    try:
        yield S3Server(script_env(started.stdout)["FLOKAN_TEST_S3_ENDPOINT"])
    finally:
        subprocess.run(["bash", str(ROOT / ".ci/stop-s3"), str(directory)], check=False)


LEDGER_BACKENDS = ("duckdb", "postgres")


def ledger_on(backend: str, request: pytest.FixtureRequest, tmp_path: Path, **options: Any) -> CreditLedger:
    """A fresh, empty ``CreditLedger`` on ``backend``: a DuckDB file, or a new PostgreSQL database.

    Tests parametrized over ``LEDGER_BACKENDS`` check the same behaviour on both; the PostgreSQL
    server is started only when a postgres case runs.
    """
    from flokan_dagster.ledger import CreditLedger

    if backend == "duckdb":
        return CreditLedger(str(tmp_path / "ledger.duckdb"), **options)
    database = fresh_database(request.getfixturevalue("postgres_dsn"))
    return CreditLedger(database, spool_dir=tmp_path / "ledger.spool", **options)
