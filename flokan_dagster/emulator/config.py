"""Configuration of the Flokan emulator: latency profile, costs, limits and the seeded fault plan.

Example:
    >>> cfg = EmulatorConfig(latency="zero", faults=FaultPlan(seed=7, provider_error_rate=0.1))
    >>> cfg.costs["pro"]
    50
"""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

LatencyProfile = Literal["zero", "fast", "realistic"]

#: Simulated /process latency range per profile, in milliseconds (before ``time_scale``).
LATENCY_RANGES_MS: dict[str, tuple[int, int]] = {
    "zero": (0, 0),
    "fast": (50, 300),
    "realistic": (10_000, 60_000),
}


class FaultPlan(BaseModel):
    """Seeded, server-wide fault rates applied to ``POST /process``.

    Each request is decided from a hash of ``(seed, request fields, nth occurrence of those
    fields)``, so the same set of requests meets the same faults whatever the interleaving.

    Example:
        >>> FaultPlan(seed=1, drop_after_complete_rate=0.2).drop_after_complete_rate
        0.2
    """

    model_config = ConfigDict(extra="forbid")

    seed: int = 0
    drop_after_complete_rate: float = Field(0.0, ge=0.0, le=1.0)
    provider_error_rate: float = Field(0.0, ge=0.0, le=1.0)
    rate_limit_rate: float = Field(0.0, ge=0.0, le=1.0)
    slow_rate: float = Field(0.0, ge=0.0, le=1.0)
    slow_ms: int = Field(5_000, ge=0)


class EmulatorConfig(BaseModel):
    """Everything that shapes one emulator instance; every field has a default.

    Example:
        >>> EmulatorConfig(latency="zero").image_size
        (512, 512)
    """

    model_config = ConfigDict(extra="forbid")

    state_dir: Path | None = None
    latency: LatencyProfile = "fast"
    latency_ms: int | None = Field(None, ge=0)
    time_scale: float = Field(1.0, ge=0.0)
    image_size: tuple[int, int] = (512, 512)
    costs: dict[str, int] = Field(default_factory=lambda: {"pro": 50, "standard": 20, "creative": 30})
    safety_words: tuple[str, ...] = ("forbidden", "gore", "violence")
    upload_max_bytes: int = Field(20 * 1024 * 1024, ge=1)
    upload_url_ttl_s: int = Field(3600, ge=0)
    admin_token: str = "emulator-admin"
    faults: FaultPlan = Field(default_factory=FaultPlan)
    demo_credits: int = Field(1_000_000, ge=0)
    demo_rate_limit_per_minute: int = Field(6000, ge=1)
    #: Length of a rate-limit window in seconds: Flokan's is a minute; tests shorten it.
    rate_window_s: float = Field(60.0, gt=0)
    #: Seconds the server's clock is ahead of the machine's (negative: behind); job times and Date follow it.
    clock_offset_s: float = 0.0
