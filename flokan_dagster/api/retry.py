"""When a call may be retried, and how long to wait: the rules that never pay twice.

Idempotent calls (GET, ``/estimate-credits``, ``/upload-url``, the presigned PUT, downloads)
retry connection errors, 429 and 502/503/504. ``POST /process`` has no idempotency key and is
charged even when the client hangs up, so it is retried only when the request certainly never
started: a 429, or a connection that failed before anything was sent. Everything after sending
is an unknown outcome for the caller to settle from ``GET /jobs``.

Example:
    >>> policy = RetryPolicy(max_attempts=3, backoff_base_s=1.0, jitter=False)
    >>> policy.backoff(0), policy.backoff(1), policy.backoff(10)
    (1.0, 2.0, 30.0)
"""

from __future__ import annotations

import email.utils
import random
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import httpx

RETRYABLE_STATUSES = frozenset({429, 502, 503, 504})

# Failures that happen before a single byte of the request left: safe to repeat any call.
NOT_SENT_ERRORS: tuple[type[Exception], ...] = (httpx.ConnectError, httpx.ConnectTimeout, httpx.PoolTimeout)


@dataclass(frozen=True)
class RetryPolicy:
    """Bounds and backoff of the client's retries.

    Attributes:
        max_attempts: Attempts per call, the first included.
        backoff_base_s: First backoff; doubles per attempt.
        backoff_max_s: Cap of one backoff (and of one honoured ``Retry-After``).
        max_total_wait_s: Cap of all waiting for one call (backoffs and rate-limit waits).
        jitter: Full jitter (a random share of the backoff), so concurrent clients spread out.
    """

    max_attempts: int = 5
    backoff_base_s: float = 0.5
    backoff_max_s: float = 30.0
    max_total_wait_s: float = 120.0
    jitter: bool = True

    def backoff(self, attempt: int) -> float:
        """Seconds to wait before retry number ``attempt + 1`` when the server named no delay."""
        delay = min(self.backoff_max_s, self.backoff_base_s * (2**attempt))
        return random.uniform(delay / 2, delay) if self.jitter else delay


def parse_retry_after(value: str | None, now: float | None = None) -> float | None:
    """Seconds from a ``Retry-After`` header: delta-seconds or an HTTP date; None if absent or bad.

    Example:
        >>> parse_retry_after("3")
        3.0
        >>> parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT", now=1445412480.0)
        0.0
    """
    if not value:
        return None
    value = value.strip()
    try:
        return max(0.0, float(value))
    except ValueError:
        pass
    try:
        when = email.utils.parsedate_to_datetime(value)
    except (TypeError, ValueError):
        return None
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    current = now if now is not None else time.time()
    return max(0.0, when.timestamp() - current)


def is_retryable_status(status_code: int, *, idempotent: bool) -> bool:
    """Whether a response status may be retried for this kind of call."""
    if status_code == 429:
        return True
    return idempotent and status_code in RETRYABLE_STATUSES


def is_retryable_exception(exc: Exception, *, idempotent: bool) -> bool:
    """Whether a transport failure may be retried for this kind of call."""
    if isinstance(exc, NOT_SENT_ERRORS):
        return True
    return idempotent and isinstance(exc, httpx.TransportError)


def utcnow() -> datetime:
    """The current UTC time, timezone-aware."""
    return datetime.now(timezone.utc)
