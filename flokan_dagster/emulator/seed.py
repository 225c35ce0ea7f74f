"""The demo workspace every emulator starts with, under fixed ids so docs can print them.

Example:
    >>> DEMO_API_KEY.startswith("flk_")
    True
"""

from __future__ import annotations

from flokan_dagster.emulator.config import EmulatorConfig
from flokan_dagster.emulator.state import Store

DEMO_WORKSPACE_ID = "00000000-0000-4000-8000-000000000001"
DEMO_API_KEY = "flk_demo_0000000000000000000000000000"
DEMO_STYLE_ID = "00000000-0000-4000-8000-000000000101"
DEMO_CHARACTER_ID = "00000000-0000-4000-8000-000000000201"
#: System style presets, visible to every workspace.
SYSTEM_STYLE_IDS: dict[str, str] = {
    "studio-white": "00000000-0000-4000-8000-000000000901",
    "lifestyle": "00000000-0000-4000-8000-000000000902",
}


def seed_demo(store: Store, config: EmulatorConfig) -> None:
    """Create the demo workspace (credits, every BYOK provider enabled, presets, the demo key)
    and the system styles, unless a previous run already did (state is never reset)."""
    for name, style_id in SYSTEM_STYLE_IDS.items():
        store.create_preset("style", None, name, preset_id=style_id)
    if store.workspace(DEMO_WORKSPACE_ID) is not None:
        return
    store.create_workspace(
        "demo",
        credits=config.demo_credits,
        byok_in_plan=True,
        rate_limit_per_minute=config.demo_rate_limit_per_minute,
        byok_providers={p: {"enabled": True} for p in ("openai", "google", "fal", "kie")},
        workspace_id=DEMO_WORKSPACE_ID,
    )
    store.create_key(DEMO_WORKSPACE_ID, api_key=DEMO_API_KEY)
    store.create_preset("style", DEMO_WORKSPACE_ID, "demo catalog style", preset_id=DEMO_STYLE_ID)
    store.create_preset("character", DEMO_WORKSPACE_ID, "demo mascot", preset_id=DEMO_CHARACTER_ID)
