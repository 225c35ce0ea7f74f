"""Each fault kind, injected by header, by admin rule and by the seeded plan; latency settings."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator

import httpx
import pytest

from flokan_dagster.emulator import EmulatorAdminError, EmulatorServer, FaultPlan
from tests.emulator.helpers import Workspace

PROCESS = {"prompt": "a desk lamp", "model_tier": "pro"}


def _jobs(ws: Workspace, **params: str) -> list[dict[str, object]]:
    return list(ws.client.get("/jobs", params=params).json()["data"])


def _state(emu: EmulatorServer, ws: Workspace) -> tuple[int, int]:
    state = emu.admin.workspace(ws.workspace_id)
    return state["jobs"], state["credits_deducted"]


def test_latency_holds_the_response_while_the_job_is_processing(ws: Workspace) -> None:
    result: dict[str, httpx.Response] = {}

    def call() -> None:
        result["r"] = ws.client.post("/process", json=PROCESS, headers={"X-Emulator-Fault": "latency;ms=2000"})  # room to look, even when loaded

    caller = threading.Thread(target=call)
    caller.start()
    seen_processing = False
    while caller.is_alive() and not seen_processing:
        seen_processing = [r["status"] for r in _jobs(ws)] == ["processing"]
        time.sleep(0.02)
    caller.join()
    assert seen_processing
    assert result["r"].status_code == 201 and result["r"].json()["data"]["processing_ms"] >= 1990
    assert [r["status"] for r in _jobs(ws)] == ["completed"]


def test_provider_error_fails_the_job_without_charge(emu: EmulatorServer, ws: Workspace) -> None:
    response = ws.client.post("/process", json=PROCESS, headers={"X-Emulator-Fault": "provider_error"})
    assert response.status_code == 500 and response.json()["success"] is False
    (row,) = _jobs(ws)
    assert row["status"] == "failed" and row["error"].startswith("provider error")
    assert row["credits_consumed"] == 0 and row["completed_at"] is not None
    assert _state(emu, ws) == (1, 0)


def test_http_error_rule_answers_before_any_job(emu: EmulatorServer, ws: Workspace) -> None:
    emu.admin.add_fault("http_error", times=2, status=502)
    statuses = [ws.client.post("/process", json=PROCESS).status_code for _ in range(3)]
    assert statuses == [502, 502, 201]
    assert _state(emu, ws) == (1, 50)
    assert emu.admin.faults()["rules"] == []


def test_rate_limit_fault_is_429_with_retry_after_and_no_job(emu: EmulatorServer, ws: Workspace) -> None:
    response = ws.client.post("/process", json=PROCESS, headers={"X-Emulator-Fault": "rate_limit;retry_after=7"})
    assert response.status_code == 429
    assert response.headers["retry-after"] == "7" and response.headers["x-ratelimit-remaining"] == "0"
    assert "x-ratelimit-limit" in response.headers and "x-ratelimit-reset" in response.headers
    assert _state(emu, ws) == (0, 0)


def test_rate_limit_burst_then_recovery(emu: EmulatorServer, ws: Workspace) -> None:
    emu.admin.add_fault("rate_limit", times=3, retry_after=0)
    statuses = [ws.client.post("/process", json=PROCESS).status_code for _ in range(4)]
    assert statuses == [429, 429, 429, 201]


def test_drop_after_complete_is_an_unknown_outcome_that_was_charged(emu: EmulatorServer, ws: Workspace) -> None:
    with pytest.raises(httpx.RemoteProtocolError):
        ws.client.post("/process", json=PROCESS, headers={"X-Emulator-Fault": "drop_after_complete"})
    (row,) = _jobs(ws)
    assert row["status"] == "completed" and row["credits_consumed"] == 50
    assert httpx.get(str(row["result_url"])).status_code == 200
    assert _state(emu, ws) == (1, 50)


def test_a_refusal_is_never_dropped_as_if_a_job_had_completed(emu: EmulatorServer, ws: Workspace) -> None:
    # A 429 met by a drop rule (the seeded plan's, say) is answered in full: no job stands behind
    # it, so a lost answer there would be an unknown outcome that no GET /jobs can ever settle.
    emu.admin.add_fault("rate_limit", times=1, retry_after=0)
    refused = ws.client.post("/process", json=PROCESS, headers={"X-Emulator-Fault": "drop_after_complete"})
    assert refused.status_code == 429 and refused.json()["success"] is False
    assert _jobs(ws) == [] and _state(emu, ws) == (0, 0)


@pytest.mark.parametrize("variant", ["non_json", "missing_fields", "wrong_types", "huge", "truncated"])
def test_malformed_process_body_still_completes_and_charges(
    emu: EmulatorServer, ws: Workspace, variant: str
) -> None:
    header = f"malformed;variant={variant}" + (";bytes=300000" if variant == "huge" else "")
    response = ws.client.post("/process", json=PROCESS, headers={"X-Emulator-Fault": header})
    assert response.status_code == 201
    if variant in ("non_json", "truncated"):
        with pytest.raises(json.JSONDecodeError):
            response.json()
    else:
        data = response.json()["data"]
        if variant == "missing_fields":
            assert data == {"status": "completed"}
        elif variant == "wrong_types":
            assert isinstance(data["job_id"], int) and isinstance(data["credits_consumed"], str)
        else:
            assert len(response.content) > 300_000 and data["credits_consumed"] == 50
    assert _state(emu, ws) == (1, 50)


def test_malformed_job_list(emu: EmulatorServer, ws: Workspace) -> None:
    ws.client.post("/process", json=PROCESS)
    emu.admin.add_fault("malformed", route="GET /jobs", times=1, variant="missing_fields")
    broken = ws.client.get("/jobs").json()
    assert list(broken["data"][0]) == ["job_id"]
    assert set(ws.client.get("/jobs").json()["data"][0]) > {"job_id", "status"}


def test_safety_fault_and_words(emu: EmulatorServer, ws: Workspace) -> None:
    response = ws.client.post("/process", json=PROCESS, headers={"X-Emulator-Fault": "safety"})
    assert response.status_code == 422 and "safety" in response.json()["error"]
    assert _state(emu, ws) == (0, 0)


def test_rules_match_route_and_prompt(emu: EmulatorServer, ws: Workspace) -> None:
    emu.admin.add_fault("provider_error", prompt_contains="SKU-42")
    emu.admin.add_fault("latency", route="GET /jobs", times=1, ms=300)
    assert ws.client.post("/process", json={**PROCESS, "prompt": "photo of SKU-42"}).status_code == 500
    assert ws.client.post("/process", json={**PROCESS, "prompt": "photo of SKU-43"}).status_code == 201
    assert ws.client.post("/process", json={**PROCESS, "prompt": "SKU-42 again"}).status_code == 500
    started = time.monotonic()
    assert ws.client.get("/jobs").status_code == 200
    assert time.monotonic() - started >= 0.29
    rules = emu.admin.faults()["rules"]
    assert [(r["kind"], r["times"]) for r in rules] == [("provider_error", None)]


def test_http_error_on_other_routes(emu: EmulatorServer, ws: Workspace) -> None:
    emu.admin.add_fault("http_error", route="GET /jobs", times=1, status=504)
    emu.admin.add_fault("provider_error", route="POST /estimate-credits", times=1)
    assert ws.client.get("/jobs").status_code == 504
    assert ws.client.post("/estimate-credits", json={"model_tier": "pro"}).status_code == 500
    assert ws.client.get("/jobs").status_code == 200


def test_several_faults_in_one_header(emu: EmulatorServer, ws: Workspace) -> None:
    started = time.monotonic()
    with pytest.raises(httpx.RemoteProtocolError):
        ws.client.post("/process", json=PROCESS, headers={"X-Emulator-Fault": "latency;ms=300, drop_after_complete"})
    assert time.monotonic() - started >= 0.29
    assert _state(emu, ws) == (1, 50)


@pytest.mark.parametrize("header", ["teleport", "latency;ms", "http_error;status=418", "malformed;variant=odd",
                                    "latency;ms=-5"])
def test_bad_fault_header_is_400(ws: Workspace, header: str) -> None:
    response = ws.client.post("/process", json=PROCESS, headers={"X-Emulator-Fault": header})
    assert response.status_code == 400 and response.json()["error"].startswith("X-Emulator-Fault:")


def test_bad_fault_rule_is_refused(emu: EmulatorServer) -> None:
    with pytest.raises(EmulatorAdminError):
        emu.admin.add_fault("teleport")
    with pytest.raises(EmulatorAdminError):
        emu.admin.add_fault("http_error", status=200)


@pytest.fixture
def plan_reset(emu: EmulatorServer) -> Iterator[None]:
    yield
    emu.admin.set_fault_plan(FaultPlan())


def _outcome(ws: Workspace, prompt: str) -> str:
    try:
        return str(ws.client.post("/process", json={"prompt": prompt, "model_tier": "standard"}).status_code)
    except httpx.RemoteProtocolError:
        return "dropped"


@pytest.mark.usefixtures("plan_reset")
def test_seeded_plan_is_reproducible(emu: EmulatorServer, ws: Workspace) -> None:
    plan = FaultPlan(seed=11, provider_error_rate=0.25, rate_limit_rate=0.2, drop_after_complete_rate=0.25)
    prompts = [f"product {i % 12}" for i in range(24)]  # repeats exercise the occurrence counter
    emu.admin.set_fault_plan(plan)
    first = [_outcome(ws, p) for p in prompts]
    emu.admin.set_fault_plan(plan)
    second = [_outcome(ws, p) for p in prompts]
    assert first == second
    assert {"201", "500", "429", "dropped"} <= set(first)
    emu.admin.set_fault_plan(plan.model_copy(update={"seed": 12}))
    assert [_outcome(ws, p) for p in prompts] != first


@pytest.mark.usefixtures("plan_reset")
def test_plan_slow_rate(emu: EmulatorServer, ws: Workspace) -> None:
    emu.admin.set_fault_plan(FaultPlan(seed=1, slow_rate=1.0, slow_ms=250))
    data = ws.client.post("/process", json=PROCESS).json()["data"]
    assert data["processing_ms"] >= 240


def test_server_latency_and_time_scale(emu: EmulatorServer, ws: Workspace) -> None:
    try:
        assert emu.admin.set_latency(latency_ms=400, time_scale=0.5) == {
            "latency": "zero", "latency_ms": 400, "time_scale": 0.5}
        assert ws.client.post("/process", json=PROCESS).json()["data"]["processing_ms"] >= 190
        header = {"X-Emulator-Fault": "latency;ms=100"}
        assert ws.client.post("/process", json=PROCESS, headers=header).json()["data"]["processing_ms"] < 190
    finally:
        settings = emu.admin.set_latency(latency="zero", time_scale=1.0)
    assert settings == {"latency": "zero", "latency_ms": None, "time_scale": 1.0}
