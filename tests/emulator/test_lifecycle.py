"""A hung-up client's job still finishes and is charged; state survives a restart; jobs running
at shutdown are settled as failed at the next start."""

from __future__ import annotations

import threading
import time
from pathlib import Path

import httpx
import pytest

from flokan_dagster.emulator import DEMO_API_KEY, DEMO_WORKSPACE_ID, EmulatorConfig, EmulatorServer
from tests.emulator.helpers import Workspace, api_client, png_bytes


def _wait_for(predicate: object, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        assert time.monotonic() < deadline, "condition not met in time"
        time.sleep(0.02)


def test_client_hangup_still_completes_and_charges(emu: EmulatorServer, ws: Workspace) -> None:
    with pytest.raises(httpx.ReadTimeout):
        ws.client.post("/process", json={"prompt": "a chair", "model_tier": "creative"},
                       headers={"X-Emulator-Fault": "latency;ms=500"}, timeout=0.1)
    _wait_for(lambda: emu.admin.workspace(ws.workspace_id)["jobs_by_status"].get("completed") == 1)
    (row,) = ws.client.get("/jobs").json()["data"]
    assert row["status"] == "completed" and row["credits_consumed"] == 30
    assert emu.admin.workspace(ws.workspace_id)["credits_deducted"] == 30
    assert httpx.get(row["result_url"]).status_code == 200


def test_state_survives_a_restart(tmp_path: Path) -> None:
    config = EmulatorConfig(state_dir=tmp_path, latency="zero", image_size=(64, 64))
    with EmulatorServer(config) as first:
        admin = first.admin
        workspace_id = admin.create_workspace("acme", credits=500, byok_in_plan=True,
                                              byok_providers={"fal": {"enabled": False}})
        key = admin.create_key(workspace_id)
        style = admin.create_style(workspace_id)
        admin.update_workspace(DEMO_WORKSPACE_ID, credits=1234)
        with api_client(first, key) as client:
            upload = client.post("/upload-url", json={"file_name": "a.png", "mime_type": "image/png"}).json()["data"]
            httpx.put(upload["upload_url"], content=png_bytes(), headers={"Content-Type": "image/png"})
            job = client.post("/process", json={"prompt": "x", "model_tier": "pro", "style_id": style}).json()["data"]
        first_storage = first.storage_url
    with EmulatorServer(config) as second:
        assert second.storage_url != first_storage or second.port != 0
        state = second.admin.workspace(workspace_id)
        assert (state["credits"], state["credits_deducted"], state["jobs"]) == (450, 50, 1)
        assert state["byok_providers"] == {"fal": {"enabled": False}}
        assert second.admin.workspace(DEMO_WORKSPACE_ID)["credits"] == 1234  # the seed does not reset it
        with api_client(second, key) as client:
            (row,) = client.get("/jobs").json()["data"]
            assert row["job_id"] == job["job_id"] and row["style_id"] == style
            assert row["result_url"].startswith(second.storage_url)
            assert httpx.get(row["result_url"]).status_code == 200
            edit = client.post("/process", json={"prompt": "y", "model_tier": "pro", "image_id": upload["image_id"]})
            assert edit.status_code == 201
            chained = client.post("/process", json={"prompt": "z", "model_tier": "pro",
                                                    "image_id": job["result_image_id"]})
            assert chained.status_code == 201
        with api_client(second, DEMO_API_KEY) as demo:
            assert demo.get("/jobs").status_code == 200


def test_job_running_at_shutdown_is_failed_at_next_start(tmp_path: Path) -> None:
    config = EmulatorConfig(state_dir=tmp_path, latency="zero")
    server = EmulatorServer(config).start()
    client = api_client(server, DEMO_API_KEY)
    outcome: list[object] = []

    def call() -> None:
        try:
            outcome.append(client.post("/process", json={"prompt": "slow", "model_tier": "pro"},
                                       headers={"X-Emulator-Fault": "latency;ms=10000"}).status_code)
        except httpx.HTTPError as exc:
            outcome.append(exc)

    caller = threading.Thread(target=call)
    caller.start()
    _wait_for(lambda: client.get("/jobs", params={"status": "processing"}).json()["meta"]["total"] == 1)
    server.stop()
    caller.join()
    client.close()
    assert outcome and outcome[0] != 201  # a 500 from the dying server or a dropped connection
    with EmulatorServer(config) as again, api_client(again, DEMO_API_KEY) as demo:
        (row,) = demo.get("/jobs").json()["data"]
        assert row["status"] == "failed" and row["credits_consumed"] == 0
        assert "stopped" in row["error"]
