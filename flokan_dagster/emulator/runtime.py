"""What both origins of one emulator share: config, store, faults, rate limiter, counters,
the URL signer and the job tasks that must outlive their requests.

Example:
    >>> limiter = RateLimiter()
    >>> limiter.hit("ws", limit=1).allowed, limiter.hit("ws", limit=1).allowed
    (True, False)
"""

from __future__ import annotations

import asyncio
import hashlib
import hmac
import math
import os
import random
import threading
import time
from collections import Counter, deque
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import Any

from flokan_dagster.emulator.config import LATENCY_RANGES_MS, EmulatorConfig
from flokan_dagster.emulator.faults import FaultBook
from flokan_dagster.emulator.state import Store

API_PREFIX = "/api/v1/image-editor"


@dataclass(frozen=True)
class RateDecision:
    """The outcome of counting one request against a workspace's per-minute window."""

    allowed: bool
    limit: int
    remaining: int
    reset_s: int

    def headers(self) -> dict[str, str]:
        """The ``X-RateLimit-*`` headers (plus ``Retry-After`` when refused)."""
        headers = {
            "X-RateLimit-Limit": str(self.limit),
            "X-RateLimit-Remaining": str(self.remaining),
            "X-RateLimit-Reset": str(self.reset_s),
        }
        if not self.allowed:
            headers["Retry-After"] = str(self.reset_s)
        return headers


class RateLimiter:
    """Fixed windows per key (a minute by default), each opened by the first request after the
    previous one ended; thread-safe, so the count is exact however many clients call at once.

    ``X-RateLimit-Reset`` is whole seconds until the window ends, between 1 and the window's
    length: the clock is read under the lock (read before it, it could precede the window's
    opening by another thread) and the elapsed time is subtracted from the window's length
    (``opened + 60 - now`` rounds to just above 60 in floating point when ``now == opened``:
    that made the 61 seen on a new window's first request).

    Args:
        window_s: Length of a window in seconds (Flokan's is 60; tests may shorten it).
    """

    def __init__(self, window_s: float = 60.0) -> None:
        self.window_s = window_s
        self._lock = threading.Lock()
        self._windows: dict[str, tuple[float, int]] = {}

    def hit(self, key: str, limit: int) -> RateDecision:
        """Count one request for ``key`` unless its window is already full."""
        with self._lock:
            now = time.monotonic()
            opened, count = self._windows.get(key, (now, 0))
            elapsed = now - opened
            if elapsed >= self.window_s:
                opened, count, elapsed = now, 0, 0.0
            allowed = count < limit
            if allowed:
                count += 1
            self._windows[key] = (opened, count)
        reset_s = min(math.ceil(self.window_s), max(1, math.ceil(self.window_s - elapsed)))
        return RateDecision(allowed, limit, max(0, limit - count), reset_s)


class Runtime:
    """Shared state of one emulator instance (both origins run on one event loop).

    Args:
        config: The emulator configuration; latency fields may be changed at run time.
        store: The durable state.
        storage_url: Base URL of the storage origin, e.g. ``http://127.0.0.1:9001``.
    """

    def __init__(self, config: EmulatorConfig, store: Store, storage_url: str) -> None:
        self.config = config
        self.store = store
        self.storage_url = storage_url.rstrip("/")
        self.faults = FaultBook(config.faults)
        self.limiter = RateLimiter(config.rate_window_s)
        self.hits: Counter[str] = Counter()
        # Answers by "METHOD /route status", e.g. "POST /process 429", for benchmarks and tests.
        self.answers: Counter[str] = Counter()
        # POST /process calls running at the image provider, per workspace (the provider's cap).
        self.provider_in_flight: Counter[str] = Counter()
        self.storage_log: deque[dict[str, Any]] = deque(maxlen=10_000)
        # One rendering thread per core: more only contend for the GIL with the event loop.
        self.executor = ThreadPoolExecutor(max_workers=os.cpu_count() or 2, thread_name_prefix="flokan-render")
        self.tasks: set[asyncio.Task[Any]] = set()
        self._secret = store.signing_secret()
        #: Seconds the server's clock is ahead of the machine's (negative: behind); the
        #: ``PUT /_emulator/clock`` fault. Job times and the Date header follow it.
        self.clock_offset_s = config.clock_offset_s

    def now(self) -> datetime:
        """The server's clock: this machine's UTC time shifted by ``clock_offset_s``."""
        return datetime.now(UTC) + timedelta(seconds=self.clock_offset_s)

    def keep(self, task: asyncio.Task[Any]) -> None:
        """Hold a strong reference to a background job task until it finishes."""
        self.tasks.add(task)
        task.add_done_callback(self.tasks.discard)

    def latency_s(self, job_id: str, fault_ms: int | None) -> float:
        """Seconds a job's provider call takes: a fault's latency, else the fixed ``latency_ms``,
        else a draw from the profile (seeded by the job id); always times ``time_scale``."""
        cfg = self.config
        if fault_ms is not None:
            ms = float(fault_ms)
        elif cfg.latency_ms is not None:
            ms = float(cfg.latency_ms)
        else:
            low, high = LATENCY_RANGES_MS[cfg.latency]
            ms = random.Random(job_id).uniform(low, high)
        return ms * cfg.time_scale / 1000

    def sign(self, image_id: str, mime_type: str, expires: int) -> str:
        """HMAC signature of a presigned PUT URL (covers image id, mime type and expiry)."""
        message = f"PUT\n{image_id}\n{mime_type}\n{expires}".encode()
        return hmac.new(self._secret, message, hashlib.sha256).hexdigest()

    def presigned_upload_url(self, image_id: str, mime_type: str) -> tuple[str, int]:
        """Return ``(upload_url, expires_in)`` for an image awaiting its bytes."""
        ttl = self.config.upload_url_ttl_s
        expires = math.ceil(time.time()) + ttl  # lives at least ttl seconds, never a truncated second less
        signature = self.sign(image_id, mime_type, expires)
        return f"{self.storage_url}/upload/{image_id}?expires={expires}&signature={signature}", ttl

    def public_url(self, workspace_id: str, image_id: str) -> str:
        """The storage-origin URL an uploaded or result image is served from."""
        return f"{self.storage_url}/images/{workspace_id}/{image_id}"

    def result_url(self, workspace_id: str, job_id: str) -> str:
        """The storage-origin URL of a completed job's PNG."""
        return f"{self.storage_url}/{workspace_id}/processed/{job_id}.png"

    def close(self) -> None:
        """Stop the rendering threads."""
        self.executor.shutdown(wait=False, cancel_futures=True)
