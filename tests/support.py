"""Test helpers: a raw-HTTP handle on the emulator's admin API, workspaces, small images."""

from __future__ import annotations

import io
import signal
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import httpx
from PIL import Image

if TYPE_CHECKING:
    from flokan_dagster.emulator import EmulatorServer


@dataclass
class Admin:
    """Raw-HTTP handle on the emulator's admin API (see flokan_dagster/emulator/CONTRACT.md)."""

    root: str
    storage_url: str
    base_url: str
    token: str

    @classmethod
    def of(cls, server: EmulatorServer) -> Admin:
        """The admin handle of an emulator started by a test (its admin API sits beside ``/api/v1/``)."""
        root = server.base_url.split("/api/v1/")[0]
        return cls(root=root, storage_url=server.storage_url, base_url=server.base_url, token="emulator-admin")

    def call(self, method: str, path: str, **kwargs: Any) -> Any:
        response = httpx.request(method, self.root + path, headers={"X-Emulator-Admin": self.token}, timeout=30, **kwargs)
        response.raise_for_status()
        return response.json() if response.content else None

    def workspace(self, *, credits: int = 100_000, rate_limit_per_minute: int = 100_000, **fields: Any) -> Workspace:
        workspace_id = self.call(
            "POST", "/_emulator/workspaces",
            json={"name": "test", "credits": credits, "rate_limit_per_minute": rate_limit_per_minute, **fields},
        )["workspace_id"]  # fmt: skip
        return Workspace(self, workspace_id, self.key(workspace_id))

    def key(self, workspace_id: str, scopes: tuple[str, ...] = ("image_editor",), permission: bool = True) -> str:
        return self.call(
            "POST", f"/_emulator/workspaces/{workspace_id}/keys",
            json={"scopes": list(scopes), "creator_has_permission": permission},
        )["api_key"]  # fmt: skip

    def hits(self, route: str) -> int:
        return int(self.call("GET", "/_emulator/stats")["hits"].get(route, 0))

    def storage_log(self) -> list[dict[str, Any]]:
        return self.call("GET", "/_emulator/stats")["storage"]

    def fault(self, kind: str, *, route: str = "POST /process", times: int | None = 1,
              prompt_contains: str | None = None, **params: Any) -> None:  # fmt: skip
        rule = {"kind": kind, "route": route, "times": times, "prompt_contains": prompt_contains, "params": params}
        self.call("POST", "/_emulator/faults", json={"rules": [rule]})

    def clear_faults(self) -> None:
        self.call("DELETE", "/_emulator/faults")


@dataclass
class Workspace:
    """A fresh emulator workspace and a key with the image_editor scope."""

    admin: Admin
    workspace_id: str
    api_key: str

    def info(self) -> dict[str, Any]:
        return self.admin.call("GET", f"/_emulator/workspaces/{self.workspace_id}")

    def style(self) -> str:
        return self.admin.call("POST", f"/_emulator/workspaces/{self.workspace_id}/styles", json={"name": "s"})["style_id"]

    def character(self) -> str:
        return self.admin.call(
            "POST", f"/_emulator/workspaces/{self.workspace_id}/characters", json={"name": "c"}
        )["character_id"]


def png_bytes(color: tuple[int, int, int] = (200, 30, 30), size: tuple[int, int] = (64, 48)) -> bytes:
    """A small real PNG."""
    buffer = io.BytesIO()
    Image.new("RGB", size, color).save(buffer, format="PNG")
    return buffer.getvalue()


def wait_for(condition: Callable[[], object], timeout_s: float, what: str, poll_s: float = 0.05) -> None:
    """Poll ``condition`` until it is true; fail naming ``what`` after ``timeout_s`` (keep it generous).

    Tests wait on the event they need, never on a fixed sleep being long enough for a busy machine.
    """
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s:.0f} s waiting for {what}")
        time.sleep(poll_s)


def sigkill_when(child: subprocess.Popen[Any], ready: Callable[[], object], timeout_s: float, what: str,
                 log: Path | None = None) -> None:  # fmt: skip
    """SIGKILL ``child`` once ``ready()`` holds, failing if it finished first (the kill then proves
    nothing); ``log`` is the child's log, quoted on that failure. The child is never left running."""
    try:
        wait_for(lambda: ready() or child.poll() is not None, timeout_s, what)
        assert child.poll() is None, "the child finished before it could be killed" + (
            f":\n{log.read_text()[-3000:]}" if log else "")  # fmt: skip
        child.send_signal(signal.SIGKILL)
        assert child.wait(timeout=30) == -signal.SIGKILL
    finally:
        if child.poll() is None:
            child.kill()
            child.wait()
