"""Shared fixtures: a real emulator on 127.0.0.1, fresh workspaces, an admin handle."""

from __future__ import annotations

import os
from collections.abc import Iterator

import pytest

from flokan_dagster.emulator import EmulatorConfig, EmulatorServer
from tests.support import Admin, Workspace


@pytest.fixture(autouse=True)
def _forget_disposed_instances() -> Iterator[None]:
    """Undo a Dagster 1.13 leak between tests.

    ``DagsterInstance.__exit__`` (so ``with dg.instance_for_test():``) disposes the instance but
    leaves it set as the process's defs-state storage, and every later definitions load then
    reads a deleted database. No public API resets it, hence the private import, in tests only.
    """
    yield
    from dagster._core.storage.defs_state.base import _current_storage

    _current_storage.set(None)


@pytest.fixture(scope="session")
def emulator(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    """One emulator for the session (zero latency); tests isolate themselves by workspace."""
    config = EmulatorConfig(state_dir=tmp_path_factory.mktemp("emulator"), latency="zero")
    with EmulatorServer(config) as server:
        yield server


@pytest.fixture(scope="session")
def admin(emulator: EmulatorServer) -> Admin:
    """The emulator's admin API."""
    return Admin.of(emulator)


@pytest.fixture
def workspace(admin: Admin) -> Iterator[Workspace]:
    """A fresh workspace per test, with fault rules cleared afterwards."""
    yield admin.workspace()
    admin.clear_faults()


# The shared mode's real servers (PostgreSQL, S3), started once per session when a test asks.
from tests.servers import postgres_dsn, s3_server  # noqa: E402,F401


@pytest.fixture(scope="session", autouse=True)
def _catalog_cache(tmp_path_factory: pytest.TempPathFactory) -> Iterator[None]:
    """Catalog copies (flokan_dagster.catalog_cache) go to the session's temporary directory, not ~/.cache."""
    previous = os.environ.get("FLOKAN_CATALOG_CACHE")
    os.environ["FLOKAN_CATALOG_CACHE"] = str(tmp_path_factory.mktemp("catalog-cache"))
    yield
    if previous is None:
        os.environ.pop("FLOKAN_CATALOG_CACHE", None)
    else:
        os.environ["FLOKAN_CATALOG_CACHE"] = previous
