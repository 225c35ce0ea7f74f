"""Fixtures: one emulator for the session (zero latency, state in a tmp dir) and, per test, a
fresh workspace with its own key so tests never see each other's jobs or credits."""

from __future__ import annotations

from collections.abc import Callable, Iterator

import httpx
import pytest

from flokan_dagster.emulator import DEMO_API_KEY, EmulatorConfig, EmulatorServer
from tests.emulator.helpers import Workspace, api_client


@pytest.fixture(scope="session")
def emu(tmp_path_factory: pytest.TempPathFactory) -> Iterator[EmulatorServer]:
    """The shared emulator (zero latency, small images)."""
    config = EmulatorConfig(state_dir=tmp_path_factory.mktemp("emulator-state"), latency="zero", image_size=(128, 128))
    with EmulatorServer(config) as server:
        yield server


@pytest.fixture(autouse=True)
def _no_leftover_faults(emu: EmulatorServer) -> Iterator[None]:
    yield
    emu.admin.clear_faults()


@pytest.fixture
def make_workspace(emu: EmulatorServer) -> Iterator[Callable[..., Workspace]]:
    """Factory: ``make_workspace(credits=..., byok_in_plan=..., ...)`` -> Workspace."""
    clients: list[httpx.Client] = []

    def make(**fields: object) -> Workspace:
        fields.setdefault("rate_limit_per_minute", 10_000)
        workspace_id = emu.admin.create_workspace(**fields)  # type: ignore[arg-type]
        api_key = emu.admin.create_key(workspace_id)
        client = api_client(emu, api_key)
        clients.append(client)
        return Workspace(workspace_id, api_key, client)

    yield make
    for client in clients:
        client.close()


@pytest.fixture
def ws(make_workspace: Callable[..., Workspace]) -> Workspace:
    """A fresh workspace: 10 000 credits, every BYOK provider enabled."""
    byok = {p: {"enabled": True} for p in ("openai", "google", "fal", "kie")}
    return make_workspace(byok_in_plan=True, byok_providers=byok)


@pytest.fixture
def demo(emu: EmulatorServer) -> Iterator[httpx.Client]:
    """A client with the seeded demo key."""
    with api_client(emu, DEMO_API_KEY) as client:
        yield client
