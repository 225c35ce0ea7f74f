"""Helpers shared by the emulator tests (plain httpx: the package's own client is not used)."""

from __future__ import annotations

import io
from dataclasses import dataclass

import httpx
from PIL import Image

from flokan_dagster.emulator import EmulatorServer


@dataclass
class Workspace:
    """A workspace made for one test: its id, key and an httpx client bound to that key."""

    workspace_id: str
    api_key: str
    client: httpx.Client


def api_client(emu: EmulatorServer, api_key: str | None, **kwargs: object) -> httpx.Client:
    """An httpx client on the API base URL, sending ``api_key`` as a Bearer token if given."""
    headers = {"Authorization": f"Bearer {api_key}"} if api_key else {}
    return httpx.Client(base_url=emu.base_url, headers=headers, timeout=30, **kwargs)  # type: ignore[arg-type]


def png_bytes(size: tuple[int, int] = (32, 32), colour: str = "red", fmt: str = "PNG") -> bytes:
    """A small real image in ``fmt``."""
    out = io.BytesIO()
    Image.new("RGB", size, colour).save(out, format=fmt)
    return out.getvalue()
