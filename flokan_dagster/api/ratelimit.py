"""Client-side view of Flokan's rate limit, read from ``X-RateLimit-*`` on every response.

Dagster bounds concurrency, not requests per minute, so the client paces itself: when the
window's remaining count reaches zero it waits for the reset instead of provoking a 429. The
tracker keeps the latest state for errors and paces the synchronous client (one call at a time);
the async client's calls in flight are sized and paced by
:class:`~flokan_dagster.api.concurrency.ConcurrencyController`.

Example:
    >>> tracker = RateLimitTracker()
    >>> tracker.observe({"X-RateLimit-Limit": "60", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2"})
    >>> 0 < tracker.wait_before_request() <= 2
    True
"""

from __future__ import annotations

import threading
import time
from collections.abc import Mapping

from flokan_dagster.api.errors import RateLimitState


def _number(value: str | None) -> float | None:
    if value is None:
        return None
    try:
        return float(value)
    except ValueError:
        return None


class RateLimitTracker:
    """Latest rate-limit state, shared by every request of one client (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._state: RateLimitState | None = None
        self._remaining: float | None = None
        self._reset_at: float | None = None

    @property
    def state(self) -> RateLimitState | None:
        """The headers of the latest response that carried them, or None before any."""
        return self._state

    def observe(self, headers: Mapping[str, str]) -> None:
        """Record the ``X-RateLimit-*`` headers of a response (case-insensitive mapping)."""
        limit = _number(headers.get("X-RateLimit-Limit") or headers.get("x-ratelimit-limit"))
        remaining = _number(headers.get("X-RateLimit-Remaining") or headers.get("x-ratelimit-remaining"))
        reset = _number(headers.get("X-RateLimit-Reset") or headers.get("x-ratelimit-reset"))
        if limit is None and remaining is None and reset is None:
            return
        now = time.monotonic()
        with self._lock:
            self._state = RateLimitState(
                limit=int(limit) if limit is not None else None,
                remaining=int(remaining) if remaining is not None else None,
                reset_s=reset,
                observed_at=now,
            )
            self._remaining = remaining
            self._reset_at = now + reset if reset is not None else None

    def defer_to_retry_after(self) -> None:
        """A 429 named its own ``Retry-After``: that governs the retry, not the window countdown.

        A provider-side 429 can come with Flokan's window at zero and a reset a minute away;
        waiting for both would double the pause.
        """
        with self._lock:
            self._remaining = None
            self._reset_at = None

    def wait_before_request(self) -> float:
        """Seconds to wait before sending, and count the request against the window.

        Requests in flight have not been counted by the server's last answer yet, so the tracker
        decrements its own copy of ``remaining`` as it lets requests go.
        """
        now = time.monotonic()
        with self._lock:
            if self._remaining is None:
                return 0.0
            if self._reset_at is not None and now >= self._reset_at:
                # A new window began since the last answer; the next answer will tell its size.
                self._remaining = None
                return 0.0
            if self._remaining <= 0:
                return max(0.0, (self._reset_at or now) - now)
            self._remaining -= 1
            return 0.0
