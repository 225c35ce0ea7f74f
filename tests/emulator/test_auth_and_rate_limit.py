"""Authentication (401), key scope and creator permission (403), the per-workspace rate limit
and the order in which those checks run."""

from __future__ import annotations

from collections.abc import Callable

import httpx

from flokan_dagster.emulator import DEMO_API_KEY, EmulatorServer

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
