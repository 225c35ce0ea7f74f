"""How many calls an async client keeps in flight: sized from the server's rate-limit headers and
the latency it measures, so a batch runs at the workspace's rate limit whatever the latency.

One :class:`ConcurrencyController` per :class:`~flokan_dagster.api.client.AsyncFlokanClient`;
every call (``/process``, uploads, estimates, downloads, ``GET /jobs``) takes a :class:`Slot`
from it before it is sent and gives it back when its answer is in.

- **Rate × latency.** A workspace allowing ``L`` requests a minute, with calls taking ``W``
  seconds, needs about ``L / 60 × W`` calls in flight to reach its limit (Little's law); the
  controller allows half again as many (:data:`HEADROOM`), its share of the rate when other
  clients use the workspace too. ``W`` is the mean duration of the API calls answered so far, or
  the age of the oldest call still in flight if that is longer (so before the first ``/process``
  returns, the calls in flight grow at the rate, not in one burst).
- **The window's budget.** ``X-RateLimit-Remaining`` and ``-Reset`` are counted by the server
  when a request arrives, so an answer tells how much of the window was left when *that* request
  was sent; the controller subtracts what it sent since, and what other clients of the workspace
  (other runs) appear to be sending, from the rate at which ``Remaining`` falls faster than its
  own sends explain. At zero it waits for the window's reset instead of provoking a 429.
- **429.** Any 429 (Flokan's window or the provider's own limit) pauses new API calls until
  ``Retry-After`` (or the reset) and cuts the calls allowed in flight at once to three quarters
  of those in flight; the allowance then grows back by about one call per round trip while there
  is headroom, and eight times slower past the level where the provider last refused (a 429
  while the window had room). ``max_concurrency`` is only a cap.
- **Gently.** Before the first answers, the calls in flight grow at the workspace's rate (the
  age of the oldest call stands in for the latency), never in one burst to the cap.

Which calls may be retried is not decided here: a slot only says when a call may go.

Example:
    >>> import asyncio
    >>> async def demo() -> int:
    ...     controller = ConcurrencyController(max_concurrency=64)
    ...     slot = await controller.acquire("api")
    ...     controller.observe(slot, 200, {"X-RateLimit-Limit": "120", "X-RateLimit-Remaining": "119",
    ...                                    "X-RateLimit-Reset": "60"})
    ...     controller.release(slot)
    ...     return controller.snapshot().rate_limit
    >>> asyncio.run(demo())
    120
"""

from __future__ import annotations

import asyncio
import heapq
import itertools
import math
import time
from collections.abc import AsyncIterator, Mapping
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Literal

from flokan_dagster.api.retry import parse_retry_after

#: ``process``: a paid ``POST /process``; ``api``: any other call to Flokan's API (counted by its
#: rate limit); ``storage``: an upload or download on the storage host (not counted by it).
CallKind = Literal["process", "api", "storage"]

# Calls that finish work already paid for (downloads) or are cheap go before new /process calls.
_PRIORITY: dict[str, int] = {"storage": 0, "api": 1, "process": 2}
#: Calls allowed in flight before the server has said anything about its limit.
INITIAL_IN_FLIGHT = 4
#: Share of the calls in flight kept after a 429.
BACKOFF_FACTOR = 0.75
#: Margin over rate × latency, so the window's budget (not the latency estimate or a run's
#: start-up) is what limits: calls go up to half again faster than the rate until the window's
#: ``Remaining`` is spent, then wait for its reset.
HEADROOM = 1.5
#: Weight of the newest latency sample in the moving average.
LATENCY_WEIGHT = 0.2
# Seconds between re-checks while calls wait on something that changes with time.
_TICK_S = 0.05
# A window's reset is whole seconds counted on arrival; the window is treated as open a little longer.
_RESET_MARGIN_S = 0.25
# Shortest span over which other clients' sending is measured (requests reach the server out of
# order, so a short span is noise), as a share of the window and at most 5 s.
_OTHERS_SPAN_SHARE = 0.25
_OTHERS_SPAN_MAX_S = 5.0
# Seconds of other clients' sending kept back at the end of a window.
_OTHERS_RESERVE_S = 1.0


@dataclass(frozen=True)
class ControllerSnapshot:
    """What the controller knows and allows at one moment (for logs, tests and benchmarks).

    Attributes:
        in_flight: Calls holding a slot now (all kinds).
        allowed: API calls allowed in flight now (rate × latency, the 429 ceiling and the cap).
        rate_limit: The workspace's requests per window, once an answer told it.
        window_budget: Requests the controller thinks it may still send in the current window.
        latency_s: Mean duration of the API calls answered so far.
        others_per_s: Requests per second other clients of the workspace appear to send.
        paused_s: Seconds until new API calls may go again after a 429.
        throttled: 429 answers seen.
        peak_in_flight: Most API calls in flight at once so far.
    """

    in_flight: int
    allowed: int
    rate_limit: int | None
    window_budget: float | None
    latency_s: float | None
    others_per_s: float
    paused_s: float
    throttled: int
    peak_in_flight: int


@dataclass(eq=False)
class Slot:
    """Permission for one call to be in flight; released when its answer is in.

    Attributes:
        kind: The kind of call it was taken for.
        held: Whether it still counts against the controller.
        sent_at: ``time.monotonic()`` when it was granted (the send follows at once).
        seq: How many API requests this controller had let go, this one included.
    """

    kind: CallKind
    held: bool = True
    sent_at: float = 0.0
    seq: int = 0


@dataclass(order=True)
class _Waiter:
    priority: int
    order: int
    future: asyncio.Future[None] = field(compare=False)
    slot: Slot = field(compare=False)


@dataclass
class _Window:
    """The server's count for the current window, as of the freshest request it answered."""

    limit: int
    remaining: int
    ends_at: float  # monotonic
    seen_seq: int  # our requests sent up to and including the one this answer is about
    seen_at: float  # when that request was sent


class ConcurrencyController:
    """Sizes and paces the calls in flight of one async client (one event loop).

    Args:
        max_concurrency: Cap of calls in flight (all kinds together).
        window_s: Length of the server's rate-limit window (Flokan's limit is per minute).
    """

    def __init__(self, max_concurrency: int = 64, *, window_s: float = 60.0) -> None:
        if max_concurrency < 1:
            raise ValueError("max_concurrency must be at least 1")
        self.max_concurrency = max_concurrency
        self.window_s = window_s
        self._in_flight: set[Slot] = set()
        self._api_in_flight = 0
        self._peak = 0
        self._waiters: list[_Waiter] = []
        self._order = itertools.count()
        self._sent = 0  # API requests let go
        self._window: _Window | None = None
        self._anchor: _Window | None = None  # where the estimate of other clients' sending starts
        self._latency: float | None = None
        self._others_per_s = 0.0
        self._ceiling = float(max_concurrency)  # lowered by 429s, regrown gently
        self._refused_at: float | None = None  # calls in flight when a concurrency 429 came last
        self._paused_until = 0.0
        self._throttled = 0
        self._timer: asyncio.TimerHandle | None = None

    # -- taking and giving back ----------------------------------------------------------------

    async def acquire(self, kind: CallKind) -> Slot:
        """Wait until a call of ``kind`` may be sent; return its slot (release it when answered)."""
        slot = Slot(kind, held=False)
        await self.reacquire(slot)
        return slot

    async def reacquire(self, slot: Slot) -> None:
        """Take ``slot`` again (a retry after its earlier attempt was released)."""
        if slot.held:
            return
        if not self._waiters and self._admissible(slot.kind, time.monotonic()):
            self._grant(slot)
            return
        future: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        heapq.heappush(self._waiters, _Waiter(_PRIORITY[slot.kind], next(self._order), future, slot))
        self._wake()
        try:
            await future
        except asyncio.CancelledError:
            if slot.held:  # granted just as the waiter was cancelled
                self.release(slot)
            raise

    def release(self, slot: Slot) -> None:
        """Give a slot back (again is a no-op) and let waiting calls go."""
        if not slot.held:
            return
        slot.held = False
        self._in_flight.discard(slot)
        if slot.kind != "storage":
            self._api_in_flight -= 1
        self._wake()

    @asynccontextmanager
    async def slot(self, kind: CallKind = "process") -> AsyncIterator[Slot]:
        """``async with controller.slot("process") as slot:`` acquire, then release on the way out."""
        taken = await self.acquire(kind)
        try:
            yield taken
        finally:
            self.release(taken)

    # -- what the server says ------------------------------------------------------------------

    def observe(self, slot: Slot, status: int, headers: Mapping[str, str]) -> None:
        """Learn from the answer to the request sent under ``slot`` (before releasing it)."""
        if slot.kind == "storage":
            return
        now = time.monotonic()
        if status == 429:
            self._throttle(now, headers)
        else:
            self._learn_latency(now - slot.sent_at)
        self._learn_window(slot, headers, now if status == 429 else None)
        if 200 <= status < 300 and self._api_in_flight >= self._ceiling - 1 and self._has_budget(now):
            # Additive growth: about one more call per round trip of the calls now in flight, and
            # eight times slower past the level where a concurrency 429 came last.
            step = 1.0 / max(1.0, self._ceiling)
            if self._refused_at is not None and self._ceiling + 1 > self._refused_at:
                step /= 8
            self._ceiling = min(float(self.max_concurrency), self._ceiling + step)
        self._wake()

    def snapshot(self) -> ControllerSnapshot:
        """The controller's current view (see :class:`ControllerSnapshot`)."""
        now = time.monotonic()
        window = self._window
        return ControllerSnapshot(
            in_flight=len(self._in_flight),
            allowed=self._allowed(now),
            rate_limit=window.limit if window else None,
            window_budget=self._budget(now),
            latency_s=self._latency,
            others_per_s=self._others_per_s,
            paused_s=max(0.0, self._paused_until - now),
            throttled=self._throttled,
            peak_in_flight=self._peak,
        )

    # -- decisions -----------------------------------------------------------------------------

    def _allowed(self, now: float) -> int:
        """API calls allowed in flight now."""
        window = self._window
        if window is None:
            target = float(INITIAL_IN_FLIGHT)
        else:
            rate = max(window.limit / self.window_s - self._others_per_s, window.limit / self.window_s / 8)
            oldest = min((s.sent_at for s in self._in_flight if s.kind != "storage"), default=now)
            latency = max(self._latency or 0.0, now - oldest)
            target = rate * latency * HEADROOM + 1
        return max(1, min(self.max_concurrency, math.floor(min(target, self._ceiling))))

    def _budget(self, now: float) -> float | None:
        """Requests that may still go in the current window (None: the server has not said)."""
        window = self._window
        if window is None:
            return None
        if now >= window.ends_at:
            return float(window.limit)  # the next request opens a new window
        others = self._others_per_s * max(0.0, now - window.seen_at)
        return window.remaining - (self._sent - window.seen_seq) - others

    def _has_budget(self, now: float) -> bool:
        budget = self._budget(now)
        # With other clients on the workspace, keep back what they may send while an answer is on
        # its way: the last requests of a window are where two clients race into a 429.
        return budget is None or budget >= 1 + self._others_per_s * _OTHERS_RESERVE_S

    def _admissible(self, kind: CallKind, now: float) -> bool:
        if len(self._in_flight) >= self.max_concurrency:
            return False
        if kind == "storage":
            return True
        if now < self._paused_until:
            return False
        return self._api_in_flight < self._allowed(now) and self._has_budget(now)

    def _grant(self, slot: Slot) -> None:
        slot.held = True
        slot.sent_at = time.monotonic()
        self._in_flight.add(slot)
        if slot.kind == "storage":
            return
        self._api_in_flight += 1
        self._peak = max(self._peak, self._api_in_flight)
        window = self._window
        if window is not None and slot.sent_at >= window.ends_at:
            # The old window is over: a new one opened with the first request after it (this one,
            # unless another client's came first; the next answer corrects its end).
            self._window = _Window(window.limit, window.limit, slot.sent_at + self.window_s + _RESET_MARGIN_S,
                                   self._sent, slot.sent_at)  # fmt: skip
            self._anchor = None
        self._sent += 1
        slot.seq = self._sent

    def _wake(self) -> None:
        """Grant waiting calls in priority order while they are admissible; re-check later if needed."""
        now = time.monotonic()
        blocked_kinds: set[str] = set()
        skipped: list[_Waiter] = []
        while self._waiters:
            waiter = heapq.heappop(self._waiters)
            if waiter.future.done():  # cancelled
                continue
            kind = waiter.slot.kind
            group = "storage" if kind == "storage" else "api"
            if group in blocked_kinds or not self._admissible(kind, now):
                blocked_kinds.add(group)
                skipped.append(waiter)
                if len(blocked_kinds) == 2:
                    break
                continue
            self._grant(waiter.slot)
            waiter.future.set_result(None)
        for waiter in skipped:
            heapq.heappush(self._waiters, waiter)
        self._schedule(now)

    def _schedule(self, now: float) -> None:
        """Re-check at the next moment time alone can admit a waiting call."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._waiters or len(self._in_flight) >= self.max_concurrency:
            return  # a release will wake them
        delay = _TICK_S
        if now < self._paused_until:
            delay = max(delay, self._paused_until - now)
        elif not self._has_budget(now) and self._window is not None and now < self._window.ends_at:
            delay = max(delay, self._window.ends_at - now)
        self._timer = asyncio.get_running_loop().call_later(delay, self._on_timer)

    def _on_timer(self) -> None:
        self._timer = None
        self._wake()

    def _learn_latency(self, seconds: float) -> None:
        if self._latency is None:
            self._latency = seconds
        else:
            self._latency += LATENCY_WEIGHT * (seconds - self._latency)

    def _learn_window(self, slot: Slot, headers: Mapping[str, str], throttled_at: float | None) -> None:
        limit = _header_number(headers, "X-RateLimit-Limit")
        remaining = _header_number(headers, "X-RateLimit-Remaining")
        reset = _header_number(headers, "X-RateLimit-Reset")
        if limit is None or remaining is None or reset is None:
            return
        old = self._window
        if old is not None and slot.seq < old.seen_seq:
            return  # an older request's view; a newer one is already known
        ends_at = slot.sent_at + min(reset, self.window_s) + _RESET_MARGIN_S
        retry_after = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
        if throttled_at is not None and retry_after is not None:
            # A 429's Retry-After governs: a provider's 429 may show the window at zero a minute
            # from its reset, and waiting for both would double the pause.
            ends_at = min(ends_at, throttled_at + retry_after)
        fresh = _Window(int(limit), int(remaining), ends_at, slot.seq, slot.sent_at)
        self._window = fresh
        anchor = self._anchor
        if anchor is None or abs(anchor.ends_at - ends_at) >= 1.5:
            if anchor is not None:
                self._others_per_s *= 0.5  # a new window: the old estimate ages
            self._anchor = fresh
            return
        span = fresh.seen_at - anchor.seen_at
        if span >= min(_OTHERS_SPAN_MAX_S, self.window_s * _OTHERS_SPAN_SHARE):
            # Same window: what fell beyond our own sends was sent by other clients of the workspace.
            others = (anchor.remaining - fresh.remaining) - (fresh.seen_seq - anchor.seen_seq)
            self._others_per_s += 0.5 * (max(0.0, others) / span - self._others_per_s)
            self._anchor = fresh

    def _throttle(self, now: float, headers: Mapping[str, str]) -> None:
        self._throttled += 1
        wait = parse_retry_after(headers.get("Retry-After") or headers.get("retry-after"))
        if wait is None:
            reset = _header_number(headers, "X-RateLimit-Reset")
            wait = reset if reset is not None else 1.0
        self._paused_until = max(self._paused_until, now + wait)
        # "At once": the calls still in flight (this one excluded) were too many.
        self._ceiling = max(1.0, min(self._ceiling, (self._api_in_flight - 1) * BACKOFF_FACTOR))
        if _header_number(headers, "X-RateLimit-Remaining") != 0:
            # The window had room: a cap on calls in flight (the provider's) refused this one.
            self._refused_at = float(max(1, self._api_in_flight))


def _header_number(headers: Mapping[str, str], name: str) -> float | None:
    value = headers.get(name)
    if value is None:
        value = headers.get(name.lower())
    if value is None:
        return None
    try:
        number = float(value)
    except ValueError:
        return None
    return number if math.isfinite(number) and number >= 0 else None
