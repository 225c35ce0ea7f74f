"""200 /process calls in flight at once while /jobs readers keep being served."""

from __future__ import annotations

import asyncio
import time

import httpx

from flokan_dagster.emulator import EmulatorServer
from tests.emulator.helpers import Workspace

IN_FLIGHT = 200
# Each call is held this long server side. It must outlast sending all 200 calls plus a few
# /jobs reads even on a loaded machine, so it is generous: the test waits on the calls, not on it.
LATENCY_MS = 4000


async def _load(base_url: str, api_key: str) -> tuple[list[int], list[float], float, float]:
    limits = httpx.Limits(max_connections=IN_FLIGHT + 10, max_keepalive_connections=IN_FLIGHT + 10)
    headers = {"Authorization": f"Bearer {api_key}", "X-Emulator-Fault": f"latency;ms={LATENCY_MS}"}
    async with httpx.AsyncClient(base_url=base_url, limits=limits, timeout=60) as client:
        started = time.monotonic()
        calls = [
            asyncio.create_task(client.post("/process", json={"prompt": f"sku {i}", "model_tier": "standard"},
                                            headers=headers))
            for i in range(IN_FLIGHT)
        ]
        reads: list[float] = []
        while not all(c.done() for c in calls):
            response = await client.get("/jobs", params={"per_page": 5}, headers={"Authorization": headers["Authorization"]})
            assert response.status_code == 200
            if not any(c.done() for c in calls):
                reads.append(time.monotonic() - started)
            await asyncio.sleep(0.05)
        first_done = min(c.result().elapsed.total_seconds() for c in calls)
        return [c.result().status_code for c in calls], reads, first_done, time.monotonic() - started


def test_200_in_flight_while_readers_are_served(emu: EmulatorServer, ws: Workspace) -> None:
    statuses, reads, first_done, wall = asyncio.run(_load(emu.base_url, ws.api_key))
    assert statuses == [201] * IN_FLIGHT
    # /jobs answered several times while every one of the 200 calls was still being held.
    assert len(reads) >= 3
    assert first_done >= LATENCY_MS / 1000 - 0.01
    state = emu.admin.workspace(ws.workspace_id)
    assert state["jobs_by_status"] == {"completed": IN_FLIGHT}
    assert state["credits_deducted"] == 20 * IN_FLIGHT
    print(f"200 concurrent /process with {LATENCY_MS} ms latency: {wall:.2f} s wall")
