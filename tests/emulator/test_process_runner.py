"""EmulatorProcess runs the ``flokan-emulator`` CLI in a subprocess and parses its banner."""

from __future__ import annotations

from pathlib import Path

import httpx

from flokan_dagster.emulator import DEMO_API_KEY, DEMO_WORKSPACE_ID, EmulatorConfig, EmulatorProcess


def test_emulator_process_serves_and_keeps_state(tmp_path: Path) -> None:
    config = EmulatorConfig(state_dir=tmp_path, latency="zero", image_size=(32, 32))
    with EmulatorProcess(config) as emu:
        assert emu.api_key == DEMO_API_KEY and emu.state_dir == tmp_path
        headers = {"Authorization": f"Bearer {emu.api_key}"}
        made = httpx.post(emu.base_url + "/process", json={"prompt": "x", "model_tier": "pro"}, headers=headers)
        assert made.status_code == 201
        assert httpx.get(made.json()["data"]["result_url"]).status_code == 200
        assert emu.admin.workspace(DEMO_WORKSPACE_ID)["credits_deducted"] == 50
    assert (tmp_path / "flokan-emulator.sqlite3").exists()
    with EmulatorProcess(config) as again:
        jobs = httpx.get(again.base_url + "/jobs", headers={"Authorization": f"Bearer {DEMO_API_KEY}"}).json()
        assert [j["job_id"] for j in jobs["data"]] == [made.json()["data"]["job_id"]]
