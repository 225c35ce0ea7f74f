"""The async client's concurrency controller against both kinds of limit, over real HTTP to the
emulator: the workspace's rate limit (alone and shared by two clients) and the image provider's
cap on calls in flight. Windows are 2 s here instead of a minute so a test sees several; the
assertions are about outcomes (every call made once, how the controller ended up), never timings
(those are in benchmarks/bench_batch.py)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest

from flokan_dagster.api.client import AsyncFlokanClient
from flokan_dagster.emulator import EmulatorConfig, EmulatorServer
from tests.support import Admin, Workspace

WINDOW_S = 2.0


@pytest.fixture(scope="module")
def short_windows(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    """An emulator with 2 s rate-limit windows and 100 ms /process calls."""
    config = EmulatorConfig(state_dir=tmp_path_factory.mktemp("short-windows"), latency_ms=100, image_size=(64, 64),
                            rate_window_s=WINDOW_S)  # fmt: skip
    with EmulatorServer(config) as server:
        yield Admin.of(server)


def _client(admin: Admin, workspace: Workspace) -> AsyncFlokanClient:
    return AsyncFlokanClient(api_key=workspace.api_key, base_url=admin.base_url, rate_limit_window_s=WINDOW_S,
                             backoff_base_s=0.05)  # fmt: skip


async def _batch(client: AsyncFlokanClient, tag: str, count: int) -> list[str]:
    """What a run does: price the tier, then send every /process at once and let the client pace them."""
    await client.estimate_credits("standard")
    results = await asyncio.gather(*(client.process(f"{tag} chair {i}", "standard") for i in range(count)))
    return [result.job_id for result in results]


def _answers(admin: Admin, answer: str) -> int:
    return int(admin.call("GET", "/_emulator/stats")["answers"].get(answer, 0))


def test_controller_keeps_within_the_workspace_rate_limit(short_windows: Admin) -> None:
    admin = short_windows
    admin.call("POST", "/_emulator/stats/reset")
    workspace = admin.workspace(rate_limit_per_minute=8)  # 8 requests per 2 s window

    async def run() -> tuple[list[str], object]:
        async with _client(admin, workspace) as client:
            return await _batch(client, "paced", 30), client.concurrency.snapshot()

    job_ids, snapshot = asyncio.run(run())
    assert len(set(job_ids)) == 30 and workspace.info()["jobs"] == 30  # each SKU made and paid once
    assert snapshot.rate_limit == 8  # type: ignore[attr-defined]
    # It never had more calls out than one window allows, and it waited for the resets instead of
    # sending into a full window (a fixed 64 in flight would meet 22 refusals at once).
    assert snapshot.peak_in_flight <= 8  # type: ignore[attr-defined]
    assert _answers(admin, "POST /process 429") <= 1
    assert _answers(admin, "POST /process 201") == 30


def test_two_clients_share_one_workspace_without_a_storm_of_429s(short_windows: Admin) -> None:
    admin = short_windows
    admin.call("POST", "/_emulator/stats/reset")
    workspace = admin.workspace(rate_limit_per_minute=10)

    async def run() -> tuple[list[str], list[str]]:
        async with _client(admin, workspace) as first, _client(admin, workspace) as second:
            return await asyncio.gather(_batch(first, "first", 20), _batch(second, "second", 20))

    first, second = asyncio.run(run())
    assert len(set(first) | set(second)) == 40 and workspace.info()["jobs"] == 40
    # Each client learns of the other only from the headers; a refusal pauses it until the reset.
    assert _answers(admin, "POST /process 429") <= 6


def test_controller_backs_off_to_the_provider_concurrency_cap(short_windows: Admin) -> None:
    admin = short_windows
    admin.call("POST", "/_emulator/stats/reset")
    # 10 requests/s at 500 ms a call: rate x latency is about 5 calls in flight, the provider takes 3.
    workspace = admin.workspace(rate_limit_per_minute=20, provider_max_concurrent=3)
    admin.fault("latency", prompt_contains="capped", times=None, ms=500)

    async def run() -> tuple[list[str], object]:
        async with _client(admin, workspace) as client:
            return await _batch(client, "capped", 40), client.concurrency.snapshot()

    job_ids, snapshot = asyncio.run(run())
    assert len(set(job_ids)) == 40 and workspace.info()["jobs"] == 40  # a provider 429 creates no job
    refused = _answers(admin, "POST /process 429")
    assert refused >= 1 and snapshot.throttled == refused  # type: ignore[attr-defined]
    # Backing off at once and growing back gently past the refused level: refusals stay few, where
    # a fixed 64 in flight would have 37 refused on the first round alone.
    assert refused <= 6
    assert snapshot.allowed <= 3  # type: ignore[attr-defined]
    admin.clear_faults()
