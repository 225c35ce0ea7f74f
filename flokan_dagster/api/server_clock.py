"""The server's clock as a client sees it: its offset from the local clock, with a known error.

Job times (``created_at``, ``completed_at``) are on Flokan's clock, which may differ from this
machine's by minutes. Every answer bounds the difference: its ``Date`` header (whole seconds)
was written on the server at some instant between sending the request and reading the answer,
so ``offset = server - local`` lies in ``[date - received, date + 1 - sent]``; a ``/process``
answer's ``created_at`` was stamped within the same two instants. The estimate is the
intersection of those intervals (the tightest bound every answer agrees with). An answer that
contradicts it (the server's clock was stepped) starts a new estimate from that answer.

Example:
    >>> from datetime import datetime, timezone
    >>> clock = ServerClock()
    >>> sent = datetime(2026, 5, 4, 11, 0, 0, tzinfo=timezone.utc)
    >>> received = datetime(2026, 5, 4, 11, 0, 0, 400000, tzinfo=timezone.utc)
    >>> clock.observe_date("Mon, 04 May 2026 11:03:00 GMT", sent, received)
    >>> estimate = clock.estimate()
    >>> round(estimate.offset_s, 1), round(estimate.error_s, 1)
    (180.3, 1.0)
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from email.utils import parsedate_to_datetime

# Added to every bound: servers round (not truncate) ``Date`` now and then, and the local clock's
# reading before a send and after an answer is itself a few milliseconds off.
SLACK_S = 0.25


@dataclass(frozen=True)
class ClockOffset:
    """How far the server's clock is ahead of the local one.

    Attributes:
        offset_s: Best estimate of ``server time - local time``, in seconds.
        error_s: The true offset is within ``offset_s ± error_s``.
    """

    offset_s: float
    error_s: float

    def to_server(self, local: datetime) -> datetime:
        """``local`` (a local-clock time) on the server's clock (best estimate).

        Example:
            >>> ClockOffset(60.0, 1.0).to_server(datetime(2026, 5, 4, 11, 0)).isoformat()
            '2026-05-04T11:01:00+00:00'
        """
        return _aware(local) + timedelta(seconds=self.offset_s)

    def describe(self) -> str:
        """E.g. ``server clock +180.3 s ± 0.7 s from this machine``."""
        return f"server clock {self.offset_s:+.1f} s ± {self.error_s:.1f} s from this machine"


class ServerClock:
    """Collects the bounds every answer puts on the server's clock (thread-safe)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._low: float | None = None
        self._high: float | None = None

    def observe_date(self, header: str | None, sent: datetime, received: datetime) -> None:
        """Take an answer's ``Date`` header (ignored when missing or unreadable)."""
        if not header:
            return
        try:
            server = parsedate_to_datetime(header)
        except (TypeError, ValueError, IndexError):
            return
        if server.tzinfo is None:
            server = server.replace(tzinfo=timezone.utc)
        self._narrow(_seconds(server - _aware(received)), _seconds(server - _aware(sent)) + 1.0)

    def observe_stamp(self, server: datetime | None, sent: datetime, received: datetime) -> None:
        """Take a server timestamp made while the request was open (a ``/process`` ``created_at``)."""
        if server is None:
            return
        self._narrow(_seconds(_aware(server) - _aware(received)), _seconds(_aware(server) - _aware(sent)))

    def estimate(self) -> ClockOffset | None:
        """The current estimate, or None before any answer carried the time."""
        with self._lock:
            if self._low is None or self._high is None:
                return None
            low, high = self._low - SLACK_S, self._high + SLACK_S
        return ClockOffset((low + high) / 2, (high - low) / 2)

    def _narrow(self, low: float, high: float) -> None:
        with self._lock:
            if self._low is None or self._high is None or low > self._high or high < self._low:
                self._low, self._high = low, high  # first answer, or the server's clock was stepped
            else:
                self._low, self._high = max(self._low, low), min(self._high, high)


def _aware(moment: datetime) -> datetime:
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


def _seconds(delta: timedelta) -> float:
    return delta.total_seconds()
