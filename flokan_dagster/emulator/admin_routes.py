"""The admin API under ``/_emulator`` (tests and benchmarks only), guarded by the
``X-Emulator-Admin`` header. See CONTRACT.md for the routes and bodies.
"""

from __future__ import annotations

import json
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime, timedelta
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from flokan_dagster.emulator.config import FaultPlan, LatencyProfile
from flokan_dagster.emulator.faults import FaultRule
from flokan_dagster.emulator.runtime import Runtime

ByokProvider = Literal["openai", "google", "fal", "kie"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ProviderSetting(_Strict):
    """A configured BYOK provider; ``enabled`` decides whether /process may use it."""

    enabled: bool = True


class WorkspacePatch(_Strict):
    """Fields of a workspace an admin may set (all optional)."""

    name: str | None = None
    credits: int | None = Field(None, ge=0)
    byok_in_plan: bool | None = None
    rate_limit_per_minute: int | None = Field(None, ge=1)
    byok_providers: dict[ByokProvider, ProviderSetting] | None = None
    provider_max_concurrent: int | None = Field(None, ge=1)


class WorkspaceSpec(_Strict):
    """A new workspace: 10 000 credits, 60 requests per minute, no BYOK and no provider-side
    concurrency cap unless told."""

    name: str = "workspace"
    credits: int = Field(10_000, ge=0)
    byok_in_plan: bool = False
    rate_limit_per_minute: int = Field(60, ge=1)
    byok_providers: dict[ByokProvider, ProviderSetting] = Field(default_factory=dict)
    provider_max_concurrent: int | None = Field(None, ge=1)


class KeySpec(_Strict):
    """A new API key: its scopes and whether its creator has the image-editor permission."""

    scopes: list[str] = Field(default_factory=lambda: ["image_editor"])
    creator_has_permission: bool = True


class PresetSpec(_Strict):
    """A new style or character preset."""

    name: str = "preset"


class BulkJobs(_Strict):
    """Synthetic history: ``count`` jobs from ``start`` (default: ending now), ``step_ms`` apart."""

    count: int = Field(ge=1, le=1_000_000)
    status: Literal["pending", "processing", "completed", "failed"] = "completed"
    start: datetime | None = None
    step_ms: int = Field(1000, ge=0)


class FaultRules(_Strict):
    """A batch of fault rules to append."""

    rules: list[FaultRule]


class LatencySettings(_Strict):
    """Server-wide latency, changed at run time (fields left out keep their value; naming a
    profile clears a fixed ``latency_ms`` unless one is given too)."""

    latency: LatencyProfile | None = None
    latency_ms: int | None = Field(None, ge=0)
    time_scale: float | None = Field(None, ge=0.0)


class _AdminError(Exception):
    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


AdminHandler = Callable[[Request, Runtime], Awaitable[Any]]


def _json(status: int, payload: Any) -> Response:
    return Response(json.dumps(payload).encode(), status_code=status, media_type="application/json")


async def _body(request: Request, model: type[BaseModel]) -> Any:
    raw = await request.body()
    try:
        return model.model_validate_json(raw or b"{}")
    except ValidationError as exc:
        problems = "; ".join(
            f"{'.'.join(str(p) for p in err['loc']) or 'body'}: {err['msg']}" for err in exc.errors()
        )
        raise _AdminError(400, problems) from None


def _workspace_id(request: Request, runtime: Runtime) -> str:
    workspace_id = str(request.path_params["workspace_id"])
    if runtime.store.workspace(workspace_id) is None:
        raise _AdminError(404, f"workspace {workspace_id!r} not found")
    return workspace_id


def _admin(handler: AdminHandler, status: int = 200) -> Callable[[Request], Awaitable[Response]]:
    async def endpoint(request: Request) -> Response:
        runtime: Runtime = request.app.state.runtime
        if request.headers.get("x-emulator-admin") != runtime.config.admin_token:
            return _json(403, {"error": "admin API: send the X-Emulator-Admin header with the admin token"})
        try:
            return _json(status, await handler(request, runtime))
        except _AdminError as exc:
            return _json(exc.status, {"error": exc.message})

    return endpoint


def _plain(model: BaseModel) -> dict[str, Any]:
    return model.model_dump(mode="json", exclude_none=True)


async def _create_workspace(request: Request, runtime: Runtime) -> Any:
    spec: WorkspaceSpec = await _body(request, WorkspaceSpec)
    data = _plain(spec)
    workspace_id = runtime.store.create_workspace(
        data["name"], data["credits"], data["byok_in_plan"], data["rate_limit_per_minute"], data["byok_providers"],
        provider_max_concurrent=data.get("provider_max_concurrent"),
    )
    return {"workspace_id": workspace_id}


async def _patch_workspace(request: Request, runtime: Runtime) -> Any:
    workspace_id = _workspace_id(request, runtime)
    patch: WorkspacePatch = await _body(request, WorkspacePatch)
    runtime.store.update_workspace(workspace_id, _plain(patch))
    return runtime.store.workspace(workspace_id)


async def _get_workspace(request: Request, runtime: Runtime) -> Any:
    return runtime.store.workspace(_workspace_id(request, runtime))


async def _create_key(request: Request, runtime: Runtime) -> Any:
    workspace_id = _workspace_id(request, runtime)
    spec: KeySpec = await _body(request, KeySpec)
    return {"api_key": runtime.store.create_key(workspace_id, spec.scopes, spec.creator_has_permission)}


def _create_preset(kind: str) -> AdminHandler:
    async def handler(request: Request, runtime: Runtime) -> Any:
        workspace_id = _workspace_id(request, runtime)
        spec: PresetSpec = await _body(request, PresetSpec)
        return {f"{kind}_id": runtime.store.create_preset(kind, workspace_id, spec.name)}

    return handler


async def _bulk_jobs(request: Request, runtime: Runtime) -> Any:
    workspace_id = _workspace_id(request, runtime)
    spec: BulkJobs = await _body(request, BulkJobs)
    start = spec.start or datetime.now(UTC) - timedelta(milliseconds=spec.count * spec.step_ms)
    start = start if start.tzinfo else start.replace(tzinfo=UTC)
    inserted = runtime.store.bulk_insert_jobs(
        workspace_id, spec.count, spec.status, start, spec.step_ms, runtime.config.costs
    )
    return {"inserted": inserted}


async def _stats(request: Request, runtime: Runtime) -> Any:
    return {"hits": dict(runtime.hits), "answers": dict(runtime.answers), "storage": list(runtime.storage_log),
            "jobs_in_flight": len(runtime.tasks)}


async def _reset_stats(request: Request, runtime: Runtime) -> Any:
    runtime.hits.clear()
    runtime.answers.clear()
    runtime.storage_log.clear()
    return {"ok": True}


async def _add_faults(request: Request, runtime: Runtime) -> Any:
    batch: FaultRules = await _body(request, FaultRules)
    runtime.faults.add_rules(batch.rules)
    return {"rules": [r.model_dump() for r in runtime.faults.rules()]}


async def _list_faults(request: Request, runtime: Runtime) -> Any:
    return {"rules": [r.model_dump() for r in runtime.faults.rules()], "plan": runtime.faults.plan.model_dump()}


async def _clear_faults(request: Request, runtime: Runtime) -> Any:
    runtime.faults.clear_rules()
    return {"rules": []}


async def _set_plan(request: Request, runtime: Runtime) -> Any:
    plan: FaultPlan = await _body(request, FaultPlan)
    runtime.faults.set_plan(plan)
    return {"plan": plan.model_dump()}


async def _set_latency(request: Request, runtime: Runtime) -> Any:
    settings: LatencySettings = await _body(request, LatencySettings)
    update = settings.model_dump(exclude_unset=True)
    if "latency" in update:
        # Choosing a profile means using it: a fixed latency_ms would override it.
        update.setdefault("latency_ms", None)
    runtime.config = runtime.config.model_copy(update=update)
    return await _get_latency(request, runtime)


async def _get_latency(request: Request, runtime: Runtime) -> Any:
    cfg = runtime.config
    return {"latency": cfg.latency, "latency_ms": cfg.latency_ms, "time_scale": cfg.time_scale}


class ClockSettings(BaseModel):
    """``PUT /_emulator/clock``: how far the server's clock is ahead of the machine's (negative: behind)."""

    offset_s: float = Field(ge=-7 * 86400, le=7 * 86400)


async def _set_clock(request: Request, runtime: Runtime) -> Any:
    settings: ClockSettings = await _body(request, ClockSettings)
    runtime.clock_offset_s = settings.offset_s
    return await _get_clock(request, runtime)


async def _get_clock(request: Request, runtime: Runtime) -> Any:
    return {"offset_s": runtime.clock_offset_s, "now": runtime.now().isoformat()}


async def _health(request: Request) -> Response:
    return _json(200, {"ok": True})


def admin_routes() -> list[Route]:
    """The admin routes, to mount at ``/_emulator``."""
    return [
        Route("/health", _health, methods=["GET"]),
        Route("/workspaces", _admin(_create_workspace, 201), methods=["POST"]),
        Route("/workspaces/{workspace_id}", _admin(_get_workspace), methods=["GET"]),
        Route("/workspaces/{workspace_id}", _admin(_patch_workspace), methods=["PATCH"]),
        Route("/workspaces/{workspace_id}/keys", _admin(_create_key, 201), methods=["POST"]),
        Route("/workspaces/{workspace_id}/styles", _admin(_create_preset("style"), 201), methods=["POST"]),
        Route("/workspaces/{workspace_id}/characters", _admin(_create_preset("character"), 201), methods=["POST"]),
        Route("/workspaces/{workspace_id}/jobs/bulk", _admin(_bulk_jobs, 201), methods=["POST"]),
        Route("/stats", _admin(_stats), methods=["GET"]),
        Route("/stats/reset", _admin(_reset_stats), methods=["POST"]),
        Route("/faults", _admin(_add_faults), methods=["POST"]),
        Route("/faults", _admin(_list_faults), methods=["GET"]),
        Route("/faults", _admin(_clear_faults), methods=["DELETE"]),
        Route("/faults/plan", _admin(_set_plan), methods=["PUT"]),
        Route("/latency", _admin(_get_latency), methods=["GET"]),
        Route("/latency", _admin(_set_latency), methods=["PUT"]),
        Route("/clock", _admin(_get_clock), methods=["GET"]),
        Route("/clock", _admin(_set_clock), methods=["PUT"]),
    ]
