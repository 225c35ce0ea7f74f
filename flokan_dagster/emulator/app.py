"""The API origin: Flokan's Image Editor endpoints under ``/api/v1/image-editor``, the admin API
under ``/_emulator`` and ``/openapi.json``.

Every public endpoint runs the checks in the order a real service does: auth (401) ->
scope/permission (403) -> rate limit (429) -> body validation (400) -> BYOK plan/config (422) ->
resource lookups (404) -> safety (422) -> credits (402) -> job.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import time
import uuid
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from datetime import timedelta
from email.utils import format_datetime
from functools import partial
from typing import Any
from urllib.parse import urlsplit

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Mount, Route
from starlette.types import Receive, Scope, Send

from flokan_dagster.emulator import rendering
from flokan_dagster.emulator.admin_routes import admin_routes
from flokan_dagster.emulator.errors import ApiError
from flokan_dagster.emulator.faults import FaultSet, parse_fault_header
from flokan_dagster.emulator.openapi import openapi_document
from flokan_dagster.emulator.runtime import API_PREFIX, Runtime
from flokan_dagster.emulator.state import iso, parse_iso
from flokan_dagster.emulator.storage import is_storage_url, stored_image_for_path
from flokan_dagster.emulator.validation import (
    PLATFORM,
    ProcessRequest,
    parse_json_object,
    validate_estimate,
    validate_jobs_query,
    validate_process,
    validate_upload,
)

#: Requests per minute allowed from one client address before it has a valid key.
ANONYMOUS_RATE_LIMIT = 600


@dataclass
class Call:
    """One authenticated API request as the handlers see it."""

    runtime: Runtime
    request: Request
    owner: dict[str, Any]
    body: bytes
    faults: FaultSet
    job_created: bool = False

    @property
    def workspace_id(self) -> str:
        """The calling key's workspace."""
        return str(self.owner["workspace_id"])


Handler = Callable[[Call], Awaitable[tuple[int, dict[str, Any]]]]


class DroppedResponse(Response):
    """Announces the full body's Content-Length, sends half of it, then gives up: the server
    closes the connection and the client sees an incomplete response (outcome unknown)."""

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        """Send the start of the response and return without completing it."""
        await send({"type": "http.response.start", "status": self.status_code, "headers": self.raw_headers})
        await send({"type": "http.response.body", "body": self.body[: len(self.body) // 2], "more_body": True})


def _json(status: int, payload: Any, headers: dict[str, str] | None = None) -> Response:
    body = json.dumps(payload, separators=(",", ":")).encode()
    return Response(body, status_code=status, headers=headers, media_type="application/json")


def _break_types(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _break_types(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_break_types(v) for v in value]
    if isinstance(value, bool) or value is None:
        return "yes" if value else 0
    if isinstance(value, int | float):
        return str(value)
    return len(value)


def _malformed(status: int, payload: dict[str, Any], faults: FaultSet, headers: dict[str, str]) -> Response:
    """Break a successful answer's body the way ``faults.malformed`` names."""
    variant = faults.malformed
    if variant == "non_json":
        page = b"<html><body><h1>502 Bad Gateway</h1><p>upstream sent an invalid response</p></body></html>"
        return Response(page, status_code=status, headers=headers, media_type="text/html")
    if variant == "missing_fields":
        data = payload.get("data")
        if isinstance(data, list):
            payload = {**payload, "data": [{"job_id": row.get("job_id")} for row in data]}
        else:
            payload = {"success": True, "data": {"status": data.get("status")} if isinstance(data, dict) else None}
    elif variant == "wrong_types":
        payload = {**payload, "data": _break_types(payload.get("data"))}
    elif variant == "huge":
        payload = {**payload, "padding": "x" * faults.malformed_bytes}
    elif variant == "truncated":
        body = json.dumps(payload).encode()
        return Response(body[: len(body) // 2], status_code=status, headers=headers, media_type="application/json")
    return _json(status, payload, headers)


def _bearer(request: Request) -> str | None:
    scheme, _, token = request.headers.get("authorization", "").partition(" ")
    if scheme.lower() != "bearer":
        return None
    return token.strip() or None


def _authenticate(runtime: Runtime, request: Request, headers: dict[str, str]) -> dict[str, Any]:
    """401 for a missing or unknown key, 403 for a missing scope or permission, 429 when the
    workspace's window is full; fills ``headers`` with the X-RateLimit-* values."""
    token = _bearer(request)
    owner = runtime.store.key_owner(token) if token and token.startswith("flk_") else None
    if owner is None:
        client = request.client.host if request.client else "unknown"
        decision = runtime.limiter.hit(f"anonymous:{client}", ANONYMOUS_RATE_LIMIT)
        headers.update(decision.headers())
        if not decision.allowed:
            raise ApiError(429, "rate limit exceeded: too many unauthenticated requests")
        if token is None:
            raise ApiError(401, "missing API key: send 'Authorization: Bearer flk_<key>'")
        raise ApiError(401, "invalid API key")
    if "image_editor" not in owner["scopes"]:
        raise ApiError(403, "API key lacks the image_editor scope")
    if not owner["creator_has_permission"]:
        raise ApiError(403, "the key's creator lacks the Access Image Editor (access_image_editor) permission")
    decision = runtime.limiter.hit(owner["workspace_id"], owner["rate_limit_per_minute"])
    headers.update(decision.headers())
    if not decision.allowed:
        raise ApiError(429, f"rate limit exceeded: {decision.limit} requests per minute for this workspace")
    return owner


def _collect_faults(runtime: Runtime, route: str, request: Request, body: bytes) -> FaultSet:
    """Fold the header's faults, the matching admin rules and (for /process) the seeded plan."""
    faults = FaultSet()
    header = request.headers.get("x-emulator-fault")
    if header:
        try:
            for fault in parse_fault_header(header):
                faults.add(fault)
        except ValueError as exc:
            raise ApiError(400, f"X-Emulator-Fault: {exc}") from None
    try:
        parsed = json.loads(body) if body else None
    except (ValueError, UnicodeDecodeError):
        parsed = None
    prompt = parsed.get("prompt") if isinstance(parsed, dict) else None
    for fault in runtime.faults.matching(route, prompt if isinstance(prompt, str) else None):
        faults.add(fault)
    if route == "POST /process":
        for fault in runtime.faults.planned(parsed if isinstance(parsed, dict) else {"raw": body.hex()}):
            faults.add(fault)
    return faults


def api_endpoint(route: str, handler: Handler) -> Callable[[Request], Awaitable[Response]]:
    """Wrap a handler with auth, rate limit, fault injection, counters and the error envelope."""

    async def endpoint(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        runtime.hits[route] += 1
        # Every answer carries the server's clock (Part B), shifted by the clock_offset fault.
        headers: dict[str, str] = {"Date": format_datetime(runtime.now().replace(microsecond=0), usegmt=True)}
        faults = FaultSet()
        call: Call | None = None
        try:
            owner = _authenticate(runtime, request, headers)
            body = await request.body()
            faults = _collect_faults(runtime, route, request, body)
            if faults.http_error is not None:
                raise ApiError(faults.http_error, f"upstream error {faults.http_error} (injected by the emulator)")
            if faults.rate_limit_retry_after is not None:
                headers["X-RateLimit-Remaining"] = "0"
                retry = str(faults.rate_limit_retry_after)
                raise ApiError(429, "rate limit exceeded: provider is throttling", {"Retry-After": retry})
            if faults.provider_error and route != "POST /process":
                raise ApiError(500, "internal server error (injected by the emulator)")
            if faults.latency_ms and route != "POST /process":
                await asyncio.sleep(faults.latency_ms * runtime.config.time_scale / 1000)
            if faults.late_accept_ms is not None:
                # A gateway answers at once; the request reaches the server later and is charged then.
                later = Call(runtime, request, owner, body, dataclasses.replace(faults, late_accept_ms=None))
                runtime.keep(asyncio.create_task(_deliver_late(handler, later, faults.late_accept_ms / 1000)))
                status = faults.late_accept_status
                raise ApiError(status, f"bad gateway: upstream did not answer in time (HTTP {status}, injected by the emulator)")
            call = Call(runtime, request, owner, body, faults)
            status, payload = await handler(call)
            if faults.omit_fields and status < 400:
                payload = _without(payload, faults.omit_fields)
            if faults.answer_delay_ms:
                await asyncio.sleep(faults.answer_delay_ms * runtime.config.time_scale / 1000)
        except ApiError as exc:
            status, payload = exc.status, {"success": False, "error": exc.message}
            headers.update(exc.headers)
        runtime.answers[f"{route} {status}"] += 1
        # "After complete": an answer refused before any job (a 429, a validation error) is never
        # dropped, or a dropped refusal would look like a lost paid answer with no job behind it.
        completed = status < 400 or (call is not None and call.job_created)
        if faults.drop_after_complete and completed:
            return DroppedResponse(json.dumps(payload).encode(), status, headers, media_type="application/json")
        if faults.malformed and status < 400:
            return _malformed(status, payload, faults, headers)
        return _json(status, payload, headers)

    return endpoint


async def _deliver_late(handler: Handler, call: Call, delay_s: float) -> None:
    """Run a request the client was told failed, ``delay_s`` later (a gateway that buffered it)."""
    await asyncio.sleep(delay_s)
    try:
        await handler(call)
    except ApiError:
        pass  # refused or failed when it arrived: nobody is listening for the answer


def _without(payload: dict[str, Any], names: tuple[str, ...]) -> dict[str, Any]:
    """``payload`` with optional fields left out of its job row(s), as a real server may."""
    data = payload.get("data")
    if isinstance(data, list):
        data = [{k: v for k, v in row.items() if k not in names} if isinstance(row, dict) else row for row in data]
    elif isinstance(data, dict):
        data = {k: v for k, v in data.items() if k not in names}
    return {**payload, "data": data}


# -- public endpoints ----------------------------------------------------------------------------


def public_job(runtime: Runtime, row: dict[str, Any]) -> dict[str, Any]:
    """A job row as the API shows it (part B fields; ``result_url`` on the storage origin)."""
    completed = row["status"] == "completed"
    return {
        "job_id": row["job_id"],
        "status": row["status"],
        "prompt": row["prompt"],
        "model_tier": row["model_tier"],
        "provider": row["provider"],
        "provider_used": row["provider_used"],
        "image_id": row["image_id"],
        "image_url": row["image_url"],
        "style_id": row["style_id"],
        "character_id": row["character_id"],
        "result_url": runtime.result_url(row["workspace_id"], row["job_id"]) if completed else None,
        "result_image_id": row["result_image_id"],
        "credits_consumed": row["credits_consumed"],
        "processing_ms": row["processing_ms"],
        "error": row["error"],
        "created_at": row["created_at"],
        "completed_at": row["completed_at"],
    }


def _check_byok(owner: dict[str, Any], provider: str) -> None:
    if provider == PLATFORM:
        return
    if not owner["byok_in_plan"]:
        raise ApiError(422, f"BYOK provider {provider!r} unavailable: the workspace's plan does not include BYOK")
    if not owner["byok_providers"].get(provider, {}).get("enabled"):
        raise ApiError(422, f"BYOK provider {provider!r} is not configured and enabled for this workspace")


async def upload_url(call: Call) -> tuple[int, dict[str, Any]]:
    """``POST /upload-url``: register an image and return its presigned PUT URL."""
    req = validate_upload(parse_json_object(call.body))
    image_id = call.runtime.store.create_upload(call.workspace_id, req.file_name, req.mime_type, req.file_size)
    url, expires_in = call.runtime.presigned_upload_url(image_id, req.mime_type)
    data = {
        "image_id": image_id,
        "upload_url": url,
        "public_url": call.runtime.public_url(call.workspace_id, image_id),
        "expires_in": expires_in,
    }
    return 201, {"success": True, "data": data}


async def estimate_credits(call: Call) -> tuple[int, dict[str, Any]]:
    """``POST /estimate-credits``: the upper bound of what /process will charge."""
    tier, provider = validate_estimate(parse_json_object(call.body))
    _check_byok(call.owner, provider)
    byok = provider != PLATFORM
    estimate = 0 if byok else call.runtime.config.costs[tier]
    available = call.runtime.store.credits(call.workspace_id)
    data = {
        "model_tier": tier,
        "provider": provider,
        "estimated_credits": estimate,
        "is_exact": False,
        "available_credits": available,
        "can_proceed": available >= estimate,
        "byok_skips_credits": byok,
    }
    return 200, {"success": True, "data": data}


async def list_jobs(call: Call) -> tuple[int, dict[str, Any]]:
    """``GET /jobs``: the workspace's jobs, newest first, with the list envelope."""
    query = validate_jobs_query(call.request.query_params)
    rows, total = call.runtime.store.list_jobs(call.workspace_id, query.page, query.per_page, query.status)
    meta = {"page": query.page, "per_page": query.per_page, "total": total,
            "total_pages": -(-total // query.per_page)}
    return 200, {"success": True, "data": [public_job(call.runtime, r) for r in rows], "meta": meta}


async def get_job(call: Call) -> tuple[int, dict[str, Any]]:
    """``GET /jobs/{jobId}``: one job of the workspace (another workspace's job is 404)."""
    job_id = call.request.path_params["job_id"].lower()
    row = call.runtime.store.job(call.workspace_id, job_id)
    if row is None:
        raise ApiError(404, f"jobId: job {job_id[:80]!r} not found in this workspace")
    return 200, {"success": True, "data": public_job(call.runtime, row)}


async def _source_bytes(call: Call, req: ProcessRequest) -> bytes | None:
    """The edit's source image: an uploaded image_id, or image_url (never fetched over the
    network: storage-origin URLs are read from the store, others are synthesised)."""
    store = call.runtime.store
    if req.image_id is not None:
        image = store.image(req.image_id)
        if image is None or image["workspace_id"] != call.workspace_id:
            raise ApiError(404, f"image_id: image {req.image_id} not found in this workspace")
        if not image["has_data"]:
            raise ApiError(404, f"image_id: image {req.image_id} has no uploaded file (PUT it to upload_url first)")
        return store.image_bytes(req.image_id)
    if req.image_url is None:
        return None
    if is_storage_url(call.runtime, req.image_url):
        loop = asyncio.get_running_loop()
        path = urlsplit(req.image_url).path
        data = await loop.run_in_executor(call.runtime.executor, stored_image_for_path, call.runtime, path)
        if data is None:
            raise ApiError(400, "image_url could not be fetched")
        return data
    if urlsplit(req.image_url).path.rstrip("/").endswith("/missing"):
        raise ApiError(400, "image_url could not be fetched")
    loop = asyncio.get_running_loop()
    size = call.runtime.config.image_size
    return await loop.run_in_executor(call.runtime.executor, rendering.source_for_url, req.image_url, size)


def _render_call(runtime: Runtime, req: ProcessRequest, source: bytes | None) -> Callable[[], bytes]:
    size = runtime.config.image_size
    if source is None:
        return partial(rendering.text_to_image, req.prompt, req.model_tier, req.style_id, req.character_id, size)
    return partial(rendering.edit, source, req.prompt, req.model_tier, req.style_id, req.character_id, size)


async def _run_job(
    runtime: Runtime, job: dict[str, Any], req: ProcessRequest, source: bytes | None, faults: FaultSet, cost: int
) -> dict[str, Any]:
    """Simulate the provider call and settle the job; runs as a task a hang-up cannot cancel."""
    started = time.monotonic()
    runtime.store.set_job_status(job["job_id"], "processing")
    loop = asyncio.get_running_loop()
    render = None if faults.provider_error else loop.run_in_executor(runtime.executor, _render_call(runtime, req, source))
    await asyncio.sleep(runtime.latency_s(job["job_id"], faults.latency_ms))
    png: bytes | None = None
    error = "provider error: the image provider failed to process the request"
    if render is not None:
        try:
            png = await render
        except Exception as exc:  # noqa: BLE001 - an undecodable source is a provider failure
            error = f"provider error: could not process the source image ({type(exc).__name__})"
    processing_ms = int((time.monotonic() - started) * 1000)
    completed_at = iso(parse_iso(job["created_at"]) + timedelta(milliseconds=processing_ms))
    if png is None:
        runtime.store.fail_job(job["job_id"], error, processing_ms, completed_at)
        raise ApiError(500, f"{error} (job {job['job_id']} failed, no credits charged)")
    result_image_id = runtime.store.complete_job(
        job["job_id"], job["workspace_id"], cost, png, processing_ms, completed_at
    )
    if result_image_id is None:
        raise ApiError(402, f"insufficient AI credits: the balance no longer covers {cost} (job {job['job_id']} failed)")
    return {
        "job_id": job["job_id"],
        "status": "completed",
        "result_url": runtime.result_url(job["workspace_id"], job["job_id"]),
        "result_image_id": result_image_id,
        "model_tier": req.model_tier,
        "provider_used": job["provider_used"],
        "credits_consumed": cost,
        "processing_ms": processing_ms,
        "created_at": job["created_at"],
        "completed_at": completed_at,
    }


def _take_provider_slot(runtime: Runtime, call: Call) -> None:
    """Count one more call at the provider, or answer 429 when the workspace's cap is reached.

    The check and the count run with no ``await`` between them (one event loop), so the cap is
    exact; the refused request creates no job and is not charged.
    """
    cap = call.owner.get("provider_max_concurrent")
    if cap is not None and runtime.provider_in_flight[call.workspace_id] >= cap:
        raise ApiError(
            429, f"rate limit exceeded: the image provider allows {cap} concurrent requests for this workspace",
            {"Retry-After": "1"},
        )  # fmt: skip
    runtime.provider_in_flight[call.workspace_id] += 1


async def process(call: Call) -> tuple[int, dict[str, Any]]:
    """``POST /process``: validate, then run the job to completion and answer 201."""
    runtime = call.runtime
    req = validate_process(parse_json_object(call.body))
    _check_byok(call.owner, req.provider)
    for kind, preset_id in (("style", req.style_id), ("character", req.character_id)):
        if preset_id is not None and not runtime.store.preset_visible(kind, preset_id, call.workspace_id):
            raise ApiError(404, f"{kind}_id: {kind} {preset_id} not found in this workspace")
    source = await _source_bytes(call, req)
    lowered = req.prompt.lower()
    if call.faults.safety or any(word.lower() in lowered for word in runtime.config.safety_words):
        raise ApiError(422, "prompt rejected by the provider's safety filter")
    byok = req.provider != PLATFORM
    cost = 0 if byok else runtime.config.costs[req.model_tier]
    balance = runtime.store.credits(call.workspace_id)
    if cost > balance:
        raise ApiError(402, f"insufficient AI credits: {req.model_tier} costs {cost}, the balance is {balance}")
    job = {
        "job_id": str(uuid.uuid4()),
        "workspace_id": call.workspace_id,
        "status": "pending",
        "prompt": req.prompt,
        "model_tier": req.model_tier,
        "provider": req.provider,
        "provider_used": req.provider if byok else "system",
        "image_id": req.image_id,
        "image_url": req.image_url if req.image_id is None else None,
        "style_id": req.style_id,
        "character_id": req.character_id,
        "credits_consumed": 0,
        "created_at": iso(runtime.now()),
    }
    _take_provider_slot(runtime, call)
    runtime.store.insert_job(job)
    call.job_created = True
    task = asyncio.create_task(_run_job(runtime, job, req, source, call.faults, cost))
    task.add_done_callback(lambda _: runtime.provider_in_flight.subtract([call.workspace_id]))
    runtime.keep(task)
    data = await asyncio.shield(task)
    return 201, {"success": True, "data": data}


# -- app -----------------------------------------------------------------------------------------

PUBLIC_ROUTES: tuple[tuple[str, str, Handler], ...] = (
    ("POST", "/upload-url", upload_url),
    ("POST", "/process", process),
    ("POST", "/estimate-credits", estimate_credits),
    ("GET", "/jobs", list_jobs),
    ("GET", "/jobs/{job_id}", get_job),
)


def _route_name(method: str, path: str) -> str:
    return f"{method} {path.replace('{job_id}', '{jobId}')}"


async def _openapi(request: Request) -> Response:
    runtime: Runtime = request.app.state.runtime
    base = f"{request.url.scheme}://{request.url.netloc}{API_PREFIX}"
    return _json(200, openapi_document(base, runtime.storage_url))


async def _error_handler(request: Request, exc: Exception) -> Response:
    status = exc.status_code if isinstance(exc, HTTPException) else 500
    message = {404: "not found", 405: "method not allowed"}.get(status, "internal server error")
    return _json(status, {"success": False, "error": message})


def build_api_app(runtime: Runtime) -> Starlette:
    """Build the API origin's Starlette app bound to ``runtime``."""
    public = [
        Route(path, api_endpoint(_route_name(method, path), handler), methods=[method])
        for method, path, handler in PUBLIC_ROUTES
    ]
    app = Starlette(
        routes=[
            Mount(API_PREFIX, routes=public),
            Mount("/_emulator", routes=admin_routes()),
            Route("/openapi.json", _openapi, methods=["GET"]),
        ],
        exception_handlers={404: _error_handler, 405: _error_handler, 500: _error_handler},
    )
    app.state.runtime = runtime
    return app
