"""A stateful local emulator of Flokan's Image Editor API (parts A and B of flokan-api.md).

It is the embedded default (run the pipeline with no Flokan account) and the HTTP peer every test
talks to. It imports nothing from the rest of ``flokan_dagster``. See CONTRACT.md.

Example:
    >>> import httpx
    >>> from flokan_dagster.emulator import DEMO_API_KEY, EmulatorConfig, EmulatorServer
    >>> with EmulatorServer(EmulatorConfig(latency="zero")) as emu:
    ...     r = httpx.post(emu.base_url + "/process", json={"prompt": "a red chair", "model_tier": "pro"},
    ...                    headers={"Authorization": f"Bearer {DEMO_API_KEY}"})
    ...     r.status_code, r.json()["data"]["credits_consumed"]
    (201, 50)
"""

from flokan_dagster.emulator.admin import EmulatorAdmin, EmulatorAdminError
from flokan_dagster.emulator.config import EmulatorConfig, FaultPlan, LatencyProfile
from flokan_dagster.emulator.faults import FAULT_KINDS, MALFORMED_VARIANTS
from flokan_dagster.emulator.seed import (
    DEMO_API_KEY,
    DEMO_CHARACTER_ID,
    DEMO_STYLE_ID,
    DEMO_WORKSPACE_ID,
    SYSTEM_STYLE_IDS,
)
from flokan_dagster.emulator.server import EmulatorProcess, EmulatorServer

__all__ = [
    "DEMO_API_KEY",
    "DEMO_CHARACTER_ID",
    "DEMO_STYLE_ID",
    "DEMO_WORKSPACE_ID",
    "FAULT_KINDS",
    "MALFORMED_VARIANTS",
    "SYSTEM_STYLE_IDS",
    "EmulatorAdmin",
    "EmulatorAdminError",
    "EmulatorConfig",
    "EmulatorProcess",
    "EmulatorServer",
    "FaultPlan",
    "LatencyProfile",
]
