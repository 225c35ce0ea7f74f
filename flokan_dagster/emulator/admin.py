"""EmulatorAdmin: a small httpx client for the emulator's admin API (tests and benchmarks).

Example:
    >>> from flokan_dagster.emulator import EmulatorConfig, EmulatorServer
    >>> with EmulatorServer(EmulatorConfig(latency="zero")) as emu:
    ...     ws = emu.admin.create_workspace("acme", credits=100)
    ...     key = emu.admin.create_key(ws)
    ...     emu.admin.workspace(ws)["credits"]
    100
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import datetime
from typing import Any
from urllib.parse import urlsplit

import httpx

from flokan_dagster.emulator.config import FaultPlan


class EmulatorAdminError(RuntimeError):
    """The admin API refused a call (bad token, unknown workspace, invalid body)."""


class EmulatorAdmin:
    """Client of ``/_emulator/...`` on the API origin.

    Args:
        base_url: The emulator's API base URL (``.../api/v1/image-editor``) or its origin.
        admin_token: Sent as ``X-Emulator-Admin``.
        timeout: Seconds per call.
    """

    def __init__(self, base_url: str, admin_token: str = "emulator-admin", timeout: float = 30.0) -> None:
        parts = urlsplit(base_url)
        self.origin = f"{parts.scheme}://{parts.netloc}"
        self._http = httpx.Client(
            base_url=f"{self.origin}/_emulator", headers={"X-Emulator-Admin": admin_token}, timeout=timeout
        )

    def close(self) -> None:
        """Close the HTTP connection pool."""
        self._http.close()

    def __enter__(self) -> EmulatorAdmin:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def _call(self, method: str, path: str, body: Any = None) -> Any:
        response = self._http.request(method, path, json=body)
        if response.status_code >= 400:
            raise EmulatorAdminError(f"admin {method} {path}: HTTP {response.status_code} {response.text[:500]}")
        return response.json()

    def create_workspace(
        self,
        name: str = "workspace",
        credits: int = 10_000,
        byok_in_plan: bool = False,
        rate_limit_per_minute: int = 60,
        byok_providers: Mapping[str, Mapping[str, bool]] | None = None,
        provider_max_concurrent: int | None = None,
    ) -> str:
        """Create a workspace; ``byok_providers`` like ``{"openai": {"enabled": True}}``. Returns its id.

        ``provider_max_concurrent`` caps its ``/process`` calls in flight at the image provider:
        one more is answered 429 with ``Retry-After`` (None: no cap).
        """
        body: dict[str, Any] = {"name": name, "credits": credits, "byok_in_plan": byok_in_plan,
                                "rate_limit_per_minute": rate_limit_per_minute,
                                "byok_providers": dict(byok_providers or {})}
        if provider_max_concurrent is not None:
            body["provider_max_concurrent"] = provider_max_concurrent
        return str(self._call("POST", "/workspaces", body)["workspace_id"])

    def update_workspace(self, workspace_id: str, **fields: Any) -> dict[str, Any]:
        """Change some of a workspace's fields (name, credits, byok_in_plan, rate_limit_per_minute,
        byok_providers, provider_max_concurrent); returns the updated workspace."""
        return dict(self._call("PATCH", f"/workspaces/{workspace_id}", fields))

    def workspace(self, workspace_id: str) -> dict[str, Any]:
        """Return ``{"workspace_id", "credits", "credits_deducted", "jobs", "jobs_by_status", ...}``."""
        return dict(self._call("GET", f"/workspaces/{workspace_id}"))

    def create_key(
        self, workspace_id: str, scopes: Iterable[str] = ("image_editor",), creator_has_permission: bool = True
    ) -> str:
        """Mint an API key for the workspace and return it."""
        body = {"scopes": list(scopes), "creator_has_permission": creator_has_permission}
        return str(self._call("POST", f"/workspaces/{workspace_id}/keys", body)["api_key"])

    def create_style(self, workspace_id: str, name: str = "style") -> str:
        """Create a style preset in the workspace and return its id."""
        return str(self._call("POST", f"/workspaces/{workspace_id}/styles", {"name": name})["style_id"])

    def create_character(self, workspace_id: str, name: str = "character") -> str:
        """Create a character preset in the workspace and return its id."""
        return str(self._call("POST", f"/workspaces/{workspace_id}/characters", {"name": name})["character_id"])

    def bulk_jobs(
        self, workspace_id: str, count: int, status: str = "completed", start: datetime | None = None,
        step_ms: int = 1000,
    ) -> int:
        """Insert ``count`` synthetic jobs (history); returns how many were inserted."""
        body: dict[str, Any] = {"count": count, "status": status, "step_ms": step_ms}
        if start is not None:
            body["start"] = start.isoformat()
        return int(self._call("POST", f"/workspaces/{workspace_id}/jobs/bulk", body)["inserted"])

    def stats(self) -> dict[str, Any]:
        """Return ``{"hits": {"POST /process": n, ...}, "answers": {"POST /process 429": n, ...},
        "storage": [{"method", "path", "authorization"}]}``."""
        return dict(self._call("GET", "/stats"))

    def reset_stats(self) -> None:
        """Zero the hit counters and the storage request log."""
        self._call("POST", "/stats/reset")

    def add_fault(
        self, kind: str, route: str = "POST /process", prompt_contains: str | None = None, times: int | None = None,
        **params: Any,
    ) -> None:
        """Append one fault rule, e.g. ``add_fault("http_error", times=2, status=503)``."""
        rule = {"kind": kind, "route": route, "prompt_contains": prompt_contains, "times": times, "params": params}
        self._call("POST", "/faults", {"rules": [rule]})

    def add_faults(self, rules: Iterable[Mapping[str, Any]]) -> None:
        """Append several fault rules given as dicts (see CONTRACT.md)."""
        self._call("POST", "/faults", {"rules": [dict(r) for r in rules]})

    def faults(self) -> dict[str, Any]:
        """Return the active rules (with remaining ``times``) and the plan."""
        return dict(self._call("GET", "/faults"))

    def clear_faults(self) -> None:
        """Remove every fault rule (the plan stays)."""
        self._call("DELETE", "/faults")

    def set_fault_plan(self, plan: FaultPlan) -> None:
        """Replace the seeded fault plan (occurrence counting restarts)."""
        self._call("PUT", "/faults/plan", plan.model_dump())

    def set_clock_offset(self, offset_s: float) -> dict[str, Any]:
        """Put the server's clock ``offset_s`` seconds ahead of this machine's (negative: behind)."""
        return dict(self._call("PUT", "/clock", {"offset_s": offset_s}))

    def set_latency(
        self, latency: str | None = None, latency_ms: int | None = None, time_scale: float | None = None
    ) -> dict[str, Any]:
        """Change the server-wide latency; arguments left None keep their value, and naming a
        profile clears a fixed ``latency_ms`` unless one is given too."""
        body = {k: v for k, v in (("latency", latency), ("latency_ms", latency_ms), ("time_scale", time_scale))
                if v is not None}
        return dict(self._call("PUT", "/latency", body))
