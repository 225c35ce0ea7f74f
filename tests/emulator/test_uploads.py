"""POST /upload-url and the presigned PUT on the storage origin."""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable, Iterator
from urllib.parse import parse_qs, urlencode, urlsplit

import httpx
import pytest

from flokan_dagster.emulator import EmulatorConfig, EmulatorServer
from tests.emulator.helpers import Workspace, api_client, png_bytes
from tests.support import wait_for


def _upload_url(ws: Workspace, mime_type: str = "image/png", **extra: object) -> dict[str, object]:
    response = ws.client.post("/upload-url", json={"file_name": "sku-1.png", "mime_type": mime_type, **extra})
    assert response.status_code == 201, response.text
    return dict(response.json()["data"])


def _with_query(url: str, **changes: str) -> str:
    parts = urlsplit(url)
    query = {k: v[0] for k, v in parse_qs(parts.query).items()} | changes
    return parts._replace(query=urlencode(query)).geturl()


def test_upload_url_shape_and_storage_origin(emu: EmulatorServer, ws: Workspace) -> None:
    data = _upload_url(ws, file_size=1234)
    assert set(data) == {"image_id", "upload_url", "public_url", "expires_in"}
    assert uuid.UUID(str(data["image_id"])).version == 4
    assert data["expires_in"] == 3600
    assert str(data["upload_url"]).startswith(f"{emu.storage_url}/upload/{data['image_id']}?")
    assert set(parse_qs(urlsplit(str(data["upload_url"])).query)) == {"expires", "signature"}
    assert data["public_url"] == f"{emu.storage_url}/images/{ws.workspace_id}/{data['image_id']}"


@pytest.mark.parametrize(("mime_type", "fmt"), [("image/png", "PNG"), ("image/jpeg", "JPEG"),
                                                 ("image/webp", "WEBP"), ("image/gif", "GIF")])
def test_put_then_edit_each_image_type(emu: EmulatorServer, ws: Workspace, mime_type: str, fmt: str) -> None:
    data = _upload_url(ws, mime_type)
    content = png_bytes(fmt=fmt)
    put = httpx.put(str(data["upload_url"]), content=content, headers={"Content-Type": mime_type})
    assert put.status_code == 200, put.text
    served = httpx.get(str(data["public_url"]))
    assert served.content == content and served.headers["content-type"] == mime_type
    edit = ws.client.post("/process", json={"prompt": "on white", "model_tier": "pro", "image_id": data["image_id"]})
    assert edit.status_code == 201
    assert httpx.get(edit.json()["data"]["result_url"]).status_code == 200


def test_storage_never_sees_an_authorization_header(emu: EmulatorServer, ws: Workspace) -> None:
    emu.admin.reset_stats()
    data = _upload_url(ws)
    httpx.put(str(data["upload_url"]), content=png_bytes(), headers={"Content-Type": "image/png"})
    log = emu.admin.stats()["storage"]
    assert [(e["method"], e["authorization"]) for e in log] == [("PUT", False)]
    # A client that leaks its key to the storage host is visible in the log.
    httpx.get(str(data["public_url"]), headers={"Authorization": f"Bearer {ws.api_key}"})
    assert emu.admin.stats()["storage"][-1]["authorization"] is True


def test_tampered_urls_are_refused(ws: Workspace) -> None:
    data = _upload_url(ws)
    url = str(data["upload_url"])
    signature = parse_qs(urlsplit(url).query)["signature"][0]
    expires = parse_qs(urlsplit(url).query)["expires"][0]
    other = _upload_url(ws)
    tampered = [
        _with_query(url, signature=signature[:-1] + ("0" if signature[-1] != "0" else "1")),
        _with_query(url, expires=str(int(expires) + 3600)),
        url.replace(str(data["image_id"]), str(other["image_id"])),
        url.split("?")[0],
        url.replace(str(data["image_id"]), str(uuid.uuid4())),
    ]
    for candidate in tampered:
        response = httpx.put(candidate, content=png_bytes(), headers={"Content-Type": "image/png"})
        assert response.status_code == 403, candidate


def test_only_put_is_allowed_on_upload_urls(ws: Workspace) -> None:
    data = _upload_url(ws)
    assert httpx.post(str(data["upload_url"]), content=png_bytes()).status_code == 405


def test_content_type_must_match_the_declared_mime_type(ws: Workspace) -> None:
    data = _upload_url(ws, "image/png")
    for content_type in ("image/jpeg", "application/octet-stream", ""):
        response = httpx.put(str(data["upload_url"]), content=png_bytes(), headers={"Content-Type": content_type})
        assert response.status_code == 400 and "Content-Type" in response.json()["error"]


def test_bytes_must_really_be_that_image_type(ws: Workspace) -> None:
    data = _upload_url(ws, "image/jpeg")
    for content in (png_bytes(), b"\xff\xd8\xff not really a jpeg", b"hello"):
        response = httpx.put(str(data["upload_url"]), content=content, headers={"Content-Type": "image/jpeg"})
        assert response.status_code == 400, content[:10]
    unused = ws.client.post("/process", json={"prompt": "x", "model_tier": "pro", "image_id": data["image_id"]})
    assert unused.status_code == 404 and "no uploaded file" in unused.json()["error"]

@pytest.fixture
def small_uploads() -> Iterator[EmulatorServer]:
    """An emulator whose uploads take at most 1000 bytes."""
    with EmulatorServer(EmulatorConfig(latency="zero", upload_max_bytes=1000)) as server:
        yield server


@pytest.fixture
def short_lived_uploads() -> Iterator[EmulatorServer]:
    """An emulator whose upload URLs live one second."""
    with EmulatorServer(EmulatorConfig(latency="zero", upload_url_ttl_s=1)) as server:
        yield server


def _fresh_upload_url(server: EmulatorServer) -> dict[str, object]:
    workspace_id = server.admin.create_workspace()
    with api_client(server, server.admin.create_key(workspace_id)) as client:
        return client.post("/upload-url", json={"file_name": "a.png", "mime_type": "image/png"}).json()["data"]


def test_size_limit(small_uploads: EmulatorServer) -> None:
    data = _fresh_upload_url(small_uploads)
    too_big = png_bytes((8, 8)) + b"\0" * 1000
    response = httpx.put(str(data["upload_url"]), content=too_big, headers={"Content-Type": "image/png"})
    assert response.status_code == 413


def test_expiry(short_lived_uploads: EmulatorServer) -> None:
    asked_at = time.time()
    data = _fresh_upload_url(short_lived_uploads)
    assert data["expires_in"] == 1
    expires = int(parse_qs(urlsplit(str(data["upload_url"])).query)["expires"][0])
    assert expires >= asked_at + 1  # the whole second it promises, counted from signing (not truncated)
    wait_for(lambda: time.time() >= expires, 30, "the upload URL's expiry time")
    expired = httpx.put(str(data["upload_url"]), content=png_bytes((8, 8)), headers={"Content-Type": "image/png"})
    assert expired.status_code == 403 and "expired" in expired.json()["error"]


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ({"mime_type": "image/png"}, "file_name"),
        ({"file_name": "", "mime_type": "image/png"}, "file_name"),
        ({"file_name": "x" * 256, "mime_type": "image/png"}, "file_name"),
        ({"file_name": 12, "mime_type": "image/png"}, "file_name"),
        ({"file_name": "a.tif"}, "mime_type"),
        ({"file_name": "a.tif", "mime_type": "image/tiff"}, "mime_type"),
        ({"file_name": "a.png", "mime_type": "image/png", "file_size": -1}, "file_size"),
        ({"file_name": "a.png", "mime_type": "image/png", "file_size": "12"}, "file_size"),
        ({"file_name": "a.png", "mime_type": "image/png", "file_size": True}, "file_size"),
    ],
)
def test_upload_url_validation(ws: Workspace, body: dict[str, object], field: str) -> None:
    response = ws.client.post("/upload-url", json=body)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{field}:")


def test_upload_url_body_must_be_a_json_object(ws: Workspace) -> None:
    for content in (b"not json", b"[1, 2]", b""):
        response = ws.client.post("/upload-url", content=content, headers={"Content-Type": "application/json"})
        assert response.status_code == 400 and response.json()["error"].startswith("body:")


def test_uploaded_image_is_private_to_its_workspace(
    ws: Workspace, make_workspace: Callable[..., Workspace]
) -> None:
    data = _upload_url(ws)
    httpx.put(str(data["upload_url"]), content=png_bytes(), headers={"Content-Type": "image/png"})
    other = make_workspace()
    response = other.client.post("/process", json={"prompt": "x", "model_tier": "pro", "image_id": data["image_id"]})
    assert response.status_code == 404
    assert httpx.get(str(data["public_url"]).replace(ws.workspace_id, other.workspace_id)).status_code == 404
