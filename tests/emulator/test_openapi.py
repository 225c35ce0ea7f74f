"""/openapi.json describes exactly the public endpoints served, and real answers fit it."""

from __future__ import annotations

from typing import Any

import httpx

from flokan_dagster.emulator import EmulatorServer
from flokan_dagster.emulator.app import PUBLIC_ROUTES
from tests.emulator.helpers import Workspace

_TYPES = {"object": dict, "array": list, "string": str, "integer": int, "boolean": bool}


def _document(emu: EmulatorServer) -> dict[str, Any]:
    response = httpx.get(emu.base_url.removesuffix("/api/v1/image-editor") + "/openapi.json")
    assert response.status_code == 200
    return dict(response.json())


def _conforms(value: Any, schema: dict[str, Any], doc: dict[str, Any], where: str = "$") -> None:
    """A small structural check of ``value`` against an OpenAPI 3.0 schema (enough for this doc)."""
    if "$ref" in schema:
        schema = doc["components"]["schemas"][schema["$ref"].rsplit("/", 1)[1]]
    if value is None:
        assert schema.get("nullable"), f"{where} is null"
        return
    expected = _TYPES[schema["type"]]
    assert isinstance(value, expected) and not (expected is int and isinstance(value, bool)), where
    if "enum" in schema:
        assert value in schema["enum"], where
    if expected is dict:
        for name in schema.get("required", []):
            assert name in value, f"{where}.{name} missing"
        for name, sub in schema.get("properties", {}).items():
            if name in value:
                _conforms(value[name], sub, doc, f"{where}.{name}")
    if expected is list:
        for i, item in enumerate(value):
            _conforms(item, schema["items"], doc, f"{where}[{i}]")


def test_paths_are_exactly_the_served_public_routes(emu: EmulatorServer) -> None:
    doc = _document(emu)
    assert doc["openapi"].startswith("3.")
    assert doc["servers"] == [{"url": emu.base_url}]
    documented = {(m.upper(), p) for p, ops in doc["paths"].items() for m in ops}
    served = {(m, p.replace("{job_id}", "{jobId}")) for m, p, _ in PUBLIC_ROUTES} | {("PUT", "/upload/{image_id}")}
    assert documented == served
    assert doc["paths"]["/upload/{image_id}"]["put"]["servers"] == [{"url": emu.storage_url}]


def test_every_documented_operation_is_served(emu: EmulatorServer) -> None:
    doc = _document(emu)
    for path, ops in doc["paths"].items():
        for method, op in ops.items():
            server = op.get("servers", doc["servers"])[0]["url"]
            url = server + path.replace("{jobId}", "00000000-0000-4000-8000-000000000000").replace(
                "{image_id}", "00000000-0000-4000-8000-000000000000")
            status = httpx.request(method, url).status_code
            assert status in (401, 403), (method, path, status)  # reached the handler, refused the caller


def test_real_answers_fit_the_document(emu: EmulatorServer, ws: Workspace) -> None:
    doc = _document(emu)

    def check(method: str, path: str, response: httpx.Response) -> None:
        op = doc["paths"][path][method]
        spec = op["responses"][str(response.status_code)]
        _conforms(response.json(), spec["content"]["application/json"]["schema"], doc)
        for header in spec.get("headers", {}):
            assert header.lower() in response.headers, (path, header)

    made = ws.client.post("/process", json={"prompt": "x", "model_tier": "pro"})
    check("post", "/process", made)
    check("post", "/process", ws.client.post("/process", json={"prompt": "", "model_tier": "pro"}))
    check("post", "/upload-url", ws.client.post("/upload-url", json={"file_name": "a.png", "mime_type": "image/png"}))
    check("post", "/estimate-credits", ws.client.post("/estimate-credits", json={"model_tier": "pro"}))
    check("get", "/jobs", ws.client.get("/jobs"))
    check("get", "/jobs/{jobId}", ws.client.get(f"/jobs/{made.json()['data']['job_id']}"))
    check("get", "/jobs/{jobId}", ws.client.get("/jobs/00000000-0000-4000-8000-000000000000"))
