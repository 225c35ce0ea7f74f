"""The storage origin (another port standing for the storage host): presigned uploads, public
images and job results. It takes no Authorization header; every request is logged so tests can
check that no API key ever reaches it.

Routes:
    ``PUT /upload/{image_id}?expires=..&signature=..``  presigned upload (HMAC, expiring)
    ``GET /images/{workspace_id}/{image_id}``            an uploaded or result image
    ``GET /{workspace_id}/processed/{job_id}.png``       a completed job's result
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import io
import json
import time
from urllib.parse import urlsplit

from PIL import Image
from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route
from starlette.types import ASGIApp, Receive, Scope, Send

from flokan_dagster.emulator.rendering import text_to_image
from flokan_dagster.emulator.runtime import Runtime
from flokan_dagster.emulator.state import iso_now

_MAGIC = {
    "image/png": (b"\x89PNG\r\n\x1a\n",),
    "image/jpeg": (b"\xff\xd8\xff",),
    "image/gif": (b"GIF87a", b"GIF89a"),
}
_PIL_FORMAT = {"image/png": "PNG", "image/jpeg": "JPEG", "image/gif": "GIF", "image/webp": "WEBP"}


def _error(status: int, message: str) -> Response:
    body = json.dumps({"success": False, "error": message}).encode()
    return Response(body, status_code=status, media_type="application/json")


def _is_image_of(data: bytes, mime_type: str) -> bool:
    """True when ``data`` starts with ``mime_type``'s magic bytes and Pillow reads it as such."""
    if mime_type == "image/webp":
        magic_ok = len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP"
    else:
        magic_ok = data.startswith(_MAGIC[mime_type])
    if not magic_ok:
        return False
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.verify()
            return image.format == _PIL_FORMAT[mime_type]
    except Exception:  # noqa: BLE001 - any decoder error means "not a valid image"
        return False


def stored_image_for_path(runtime: Runtime, path: str) -> bytes | None:
    """Return the bytes the storage origin serves at ``path``, or None (no network involved)."""
    parts = path.strip("/").split("/")
    store = runtime.store
    if len(parts) == 3 and parts[0] == "images":
        image = store.image(parts[2])
        if image is None or image["workspace_id"] != parts[1]:
            return None
        return store.image_bytes(parts[2])
    if len(parts) == 3 and parts[1] == "processed" and parts[2].endswith(".png"):
        job = store.result_job(parts[0], parts[2].removesuffix(".png"))
        if job is None:
            return None
        stored = store.image_bytes(job["result_image_id"]) if job["result_image_id"] else None
        # Synthetic history jobs (admin bulk insert) have no stored bytes: render them on demand.
        return stored or text_to_image(job["prompt"], job["model_tier"], job["style_id"], job["character_id"],
                                       runtime.config.image_size)
    return None


def is_storage_url(runtime: Runtime, url: str) -> bool:
    """True when ``url``'s host and port are the storage origin's (any scheme)."""
    ours = urlsplit(runtime.storage_url)
    theirs = urlsplit(url)
    loopback = {"127.0.0.1", "localhost", ours.hostname}
    return theirs.port == ours.port and theirs.hostname in loopback


async def _upload(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    image_id = request.path_params["image_id"]
    image = runtime.store.image(image_id)
    expires_raw = request.query_params.get("expires", "")
    signature = request.query_params.get("signature", "")
    if image is None or image["origin"] != "upload" or not expires_raw.isdigit():
        return _error(403, "signature does not match")
    expected = runtime.sign(image_id, image["mime_type"], int(expires_raw))
    if not hmac.compare_digest(expected, signature):
        return _error(403, "signature does not match")
    if time.time() >= int(expires_raw):
        return _error(403, "upload URL has expired")
    content_type = request.headers.get("content-type", "").split(";")[0].strip().lower()
    if content_type != image["mime_type"]:
        return _error(400, f"Content-Type must be {image['mime_type']} (the declared mime_type), got {content_type!r}")
    limit = runtime.config.upload_max_bytes
    declared = request.headers.get("content-length", "")
    if declared.isdigit() and int(declared) > limit:
        return _error(413, f"file is larger than the {limit} byte limit")
    chunks: list[bytes] = []
    size = 0
    async for chunk in request.stream():
        size += len(chunk)
        if size > limit:
            return _error(413, f"file is larger than the {limit} byte limit")
        chunks.append(chunk)
    data = b"".join(chunks)
    loop = asyncio.get_running_loop()
    if not await loop.run_in_executor(runtime.executor, _is_image_of, data, image["mime_type"]):
        return _error(400, f"body is not a valid {image['mime_type']} image")
    runtime.store.store_upload(image_id, data)
    return Response(status_code=200, headers={"ETag": f'"{hashlib.md5(data).hexdigest()}"'})


async def _image(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    data = stored_image_for_path(runtime, request.url.path)
    if data is None:
        return _error(404, "image not found")
    image = runtime.store.image(request.path_params["image_id"])
    return Response(data, media_type=image["mime_type"] if image else "application/octet-stream")


async def _result(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    loop = asyncio.get_running_loop()
    data = await loop.run_in_executor(runtime.executor, stored_image_for_path, runtime, request.url.path)
    if data is None:
        return _error(404, "result not found")
    return Response(data, media_type="image/png")


async def _health(request: Request) -> Response:
    return Response(b'{"ok":true}', media_type="application/json")


async def _http_error(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    return _error(status, "not found" if status == 404 else "method not allowed" if status == 405 else "storage error")


class _RequestLog:
    """ASGI middleware recording method, path and whether an Authorization header came along."""

    def __init__(self, app: ASGIApp, runtime: Runtime) -> None:
        self.app = app
        self.runtime = runtime

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and scope["path"] != "/_health":
            has_auth = any(name.lower() == b"authorization" for name, _ in scope["headers"])
            self.runtime.storage_log.append(
                {"method": scope["method"], "path": scope["path"], "authorization": has_auth, "at": iso_now()}
            )
        await self.app(scope, receive, send)


def build_storage_app(runtime: Runtime) -> ASGIApp:
    """Build the storage origin's ASGI app bound to ``runtime``."""
    app = Starlette(
        routes=[
            Route("/_health", _health, methods=["GET"]),
            Route("/upload/{image_id}", _upload, methods=["PUT"]),
            Route("/images/{workspace_id}/{image_id}", _image, methods=["GET", "HEAD"]),
            Route("/{workspace_id}/processed/{file_name}", _result, methods=["GET", "HEAD"]),
        ],
        exception_handlers={404: _http_error, 405: _http_error, 500: _http_error},
    )
    app.state.runtime = runtime
    return _RequestLog(app, runtime)
