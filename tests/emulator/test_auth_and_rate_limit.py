"""Authentication (401), key scope and creator permission (403), the per-workspace rate limit
and the order in which those checks run."""

from __future__ import annotations

import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor

import httpx

from flokan_dagster.emulator import DEMO_API_KEY, EmulatorServer
from flokan_dagster.emulator.runtime import RateLimiter
from tests.emulator.helpers import Workspace, api_client

ENDPOINTS = [
    ("POST", "/process", {"prompt": "a chair", "model_tier": "pro"}),
    ("POST", "/upload-url", {"file_name": "a.png", "mime_type": "image/png"}),
    ("POST", "/estimate-credits", {"model_tier": "pro"}),
    ("GET", "/jobs", None),
    ("GET", "/jobs/00000000-0000-4000-8000-00000000abcd", None),
]
RATE_HEADERS = ("x-ratelimit-limit", "x-ratelimit-remaining", "x-ratelimit-reset")


def _call(client: httpx.Client, method: str, path: str, body: object) -> httpx.Response:
    return client.request(method, path, json=body) if body is not None else client.request(method, path)


def test_missing_and_invalid_keys_are_401_on_every_endpoint(emu: EmulatorServer) -> None:
    for key in (None, "flk_not_a_real_key", "not-even-flk"):
        with api_client(emu, key) as client:
            for method, path, body in ENDPOINTS:
                response = _call(client, method, path, body)
                assert response.status_code == 401, (key, path)
                assert response.json()["success"] is False
                assert "API key" in response.json()["error"]


def test_non_bearer_scheme_is_401(emu: EmulatorServer) -> None:
    response = httpx.get(emu.base_url + "/jobs", headers={"Authorization": f"Basic {DEMO_API_KEY}"})
    assert response.status_code == 401


def test_key_without_scope_is_403(emu: EmulatorServer, ws: Workspace) -> None:
    key = emu.admin.create_key(ws.workspace_id, scopes=["other_scope"])
    with api_client(emu, key) as client:
        for method, path, body in ENDPOINTS:
            response = _call(client, method, path, body)
            assert response.status_code == 403
            assert "image_editor scope" in response.json()["error"]


def test_creator_without_permission_is_403(emu: EmulatorServer, ws: Workspace) -> None:
    key = emu.admin.create_key(ws.workspace_id, creator_has_permission=False)
    with api_client(emu, key) as client:
        response = client.get("/jobs")
    assert response.status_code == 403
    assert "Access Image Editor" in response.json()["error"]


def test_auth_comes_before_validation(emu: EmulatorServer, ws: Workspace) -> None:
    with api_client(emu, None) as anonymous:
        assert anonymous.post("/process", json={"model_tier": "ultra"}).status_code == 401
    key = emu.admin.create_key(ws.workspace_id, scopes=[])
    with api_client(emu, key) as no_scope:
        assert no_scope.post("/process", json={"model_tier": "ultra"}).status_code == 403


def test_rate_limit_headers_on_every_response(ws: Workspace) -> None:
    responses = [
        ws.client.get("/jobs"),
        ws.client.post("/process", json={"prompt": "", "model_tier": "pro"}),  # 400
        ws.client.get("/jobs/00000000-0000-4000-8000-00000000abcd"),  # 404
        ws.client.post("/estimate-credits", json={"model_tier": "pro"}),
    ]
    remaining = []
    for response in responses:
        for header in RATE_HEADERS:
            assert header in response.headers, (response.request.url, header)
        assert response.headers["x-ratelimit-limit"] == "10000"
        assert 1 <= int(response.headers["x-ratelimit-reset"]) <= 60
        remaining.append(int(response.headers["x-ratelimit-remaining"]))
    assert remaining == sorted(remaining, reverse=True) and remaining[0] > remaining[-1]


def test_401_carries_rate_limit_headers_too(emu: EmulatorServer) -> None:
    response = httpx.get(emu.base_url + "/jobs")
    assert all(h in response.headers for h in RATE_HEADERS)


def test_rate_limit_is_per_workspace_with_retry_after(
    make_workspace: Callable[..., Workspace], ws: Workspace
) -> None:
    small = make_workspace(rate_limit_per_minute=3)
    statuses = [small.client.get("/jobs").status_code for _ in range(3)]
    assert statuses == [200, 200, 200]
    refused = small.client.post("/process", json={"prompt": "a chair", "model_tier": "pro"})
    assert refused.status_code == 429
    assert refused.json() == {"success": False, "error": refused.json()["error"]}
    assert refused.headers["x-ratelimit-remaining"] == "0"
    assert 1 <= int(refused.headers["retry-after"]) <= 60
    # Nothing was created by the refused call, and another workspace is unaffected.
    assert ws.client.get("/jobs").status_code == 200


def test_rate_limit_comes_before_validation(make_workspace: Callable[..., Workspace]) -> None:
    small = make_workspace(rate_limit_per_minute=1)
    assert small.client.get("/jobs").status_code == 200
    assert small.client.post("/process", json={"model_tier": "ultra"}).status_code == 429


def test_plan_change_applies_to_rate_limit(emu: EmulatorServer, make_workspace: Callable[..., Workspace]) -> None:
    small = make_workspace(rate_limit_per_minute=1)
    assert small.client.get("/jobs").status_code == 200
    assert small.client.get("/jobs").status_code == 429
    emu.admin.update_workspace(small.workspace_id, rate_limit_per_minute=100)
    response = small.client.get("/jobs")
    assert response.status_code == 200
    assert response.headers["x-ratelimit-limit"] == "100"


def test_admin_api_requires_token(emu: EmulatorServer) -> None:
    origin = emu.base_url.removesuffix("/api/v1/image-editor")
    assert httpx.get(origin + "/_emulator/stats").status_code == 403
    assert httpx.get(origin + "/_emulator/stats", headers={"X-Emulator-Admin": "wrong"}).status_code == 403
    assert httpx.get(origin + "/_emulator/stats", headers={"X-Emulator-Admin": "emulator-admin"}).status_code == 200


def test_unknown_route_and_method_use_the_error_envelope(demo: httpx.Client) -> None:
    missing = demo.get("/nothing-here")
    assert missing.status_code == 404 and missing.json()["success"] is False
    wrong_method = demo.delete("/jobs")
    assert wrong_method.status_code == 405 and wrong_method.json()["success"] is False


def test_rate_limit_is_exact_across_concurrent_clients(emu: EmulatorServer, make_workspace: Callable[..., Workspace]) -> None:
    small = make_workspace(rate_limit_per_minute=25)
    keys = [small.api_key, emu.admin.create_key(small.workspace_id)]  # two keys, one workspace, one window

    def hammer(key: str) -> list[int]:
        with api_client(emu, key) as client:
            return [client.get("/jobs").status_code for _ in range(20)]

    with ThreadPoolExecutor(max_workers=8) as pool:
        statuses = [s for batch in pool.map(hammer, keys * 4) for s in batch]
    assert len(statuses) == 160
    assert statuses.count(200) == 25
    assert statuses.count(429) == 135


def test_rate_limit_reset_never_exceeds_the_window() -> None:
    # Root cause of a Reset of 61: ``opened + 60 - now`` rounds above 60 for about 1 key in 20
    # on a window's first request. Thousands of fresh windows make that certain to show.
    limiter = RateLimiter()
    resets = [limiter.hit(f"key-{i}", limit=5).reset_s for i in range(5000)]
    assert max(resets) == 60 and min(resets) >= 1
    short = RateLimiter(window_s=2.0)
    assert {short.hit(f"key-{i}", limit=5).reset_s for i in range(500)} <= {1, 2}


def test_provider_concurrency_cap_answers_429_and_creates_no_job(
    emu: EmulatorServer, make_workspace: Callable[..., Workspace]
) -> None:
    capped = make_workspace(provider_max_concurrent=2)
    # Held at the provider long enough for the test to see both in flight (it waits for that, not on time).
    held = {"X-Emulator-Fault": "latency;ms=8000"}
    progress = threading.Event()

    def send_held(n: int) -> int:
        with api_client(emu, capped.api_key) as client:
            return client.post("/process", json={"prompt": f"held chair {n}", "model_tier": "pro"}, headers=held).status_code

    with ThreadPoolExecutor(max_workers=2) as pool:
        running = [pool.submit(send_held, n) for n in range(2)]
        while emu.admin.workspace(capped.workspace_id)["jobs_by_status"].get("processing", 0) < 2:
            progress.wait(0.02)
        refused = capped.client.post("/process", json={"prompt": "one too many", "model_tier": "pro"})
        assert refused.status_code == 429
        assert "2 concurrent requests" in refused.json()["error"]
        assert refused.headers["retry-after"] == "1"
        assert all(h in refused.headers for h in RATE_HEADERS)
        assert int(refused.headers["x-ratelimit-remaining"]) > 0  # the provider refused, not Flokan's window
        assert emu.admin.workspace(capped.workspace_id)["jobs"] == 2  # nothing created, nothing charged
        assert [f.result() for f in running] == [201, 201]
    assert capped.client.post("/process", json={"prompt": "room again", "model_tier": "pro"}).status_code == 201
    assert emu.admin.stats()["answers"]["POST /process 429"] >= 1
