"""Wall time per stage of a batch, for finding what serializes per SKU (``bench_batch.py --stages``).

Wraps named functions (sync or async) with a timer that sums their wall time and counts calls;
nothing else changes. A stage nested in another is counted in both.

Example:
    >>> from flokan_dagster.ledger import store
    >>> timer = StageTimer()
    >>> timer.wrap(store.CreditLedger, "finish_attempt")  # doctest: +SKIP
    >>> print(timer.report(skus=200))  # doctest: +SKIP
"""

from __future__ import annotations

import functools
import inspect
import threading
import time
from collections import defaultdict
from typing import Any


class StageTimer:
    """Sums of wall time and calls per wrapped function, across threads."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.first: dict[str, float] = {}
        self.last: dict[str, float] = {}
        self.started = time.perf_counter()
        self._lock = threading.Lock()
        self._undo: list[tuple[Any, str, Any]] = []

    def _add(self, name: str, seconds: float) -> None:
        now = time.perf_counter()
        with self._lock:
            self.seconds[name] += seconds
            self.calls[name] += 1
            self.first.setdefault(name, now - seconds - self.started)
            self.last[name] = now - self.started

    def wrap(self, owner: Any, attribute: str, name: str | None = None) -> None:
        """Time every call of ``owner.attribute`` (a function, method or coroutine function)."""
        original = inspect.getattr_static(owner, attribute)
        function = original.__func__ if isinstance(original, staticmethod | classmethod) else original
        label = name or f"{getattr(owner, '__name__', owner)}.{attribute}"
        if inspect.iscoroutinefunction(function):

            @functools.wraps(function)
            async def timed_async(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return await function(*args, **kwargs)
                finally:
                    self._add(label, time.perf_counter() - started)

            replacement: Any = timed_async
        else:

            @functools.wraps(function)
            def timed(*args: Any, **kwargs: Any) -> Any:
                started = time.perf_counter()
                try:
                    return function(*args, **kwargs)
                finally:
                    self._add(label, time.perf_counter() - started)

            replacement = timed
        if isinstance(original, staticmethod):
            replacement = staticmethod(replacement)
        self._undo.append((owner, attribute, original))
        setattr(owner, attribute, replacement)

    def restore(self) -> None:
        """Put every wrapped function back."""
        for owner, attribute, original in reversed(self._undo):
            setattr(owner, attribute, original)
        self._undo.clear()

    def report(self, skus: int) -> str:
        """One line per stage: calls, total wall seconds, milliseconds per SKU, slowest first."""
        lines = [f"    {'stage':<46} {'calls':>6} {'total s':>8} {'ms/SKU':>7} {'ms/call':>8}  {'first-last s':>12}"]
        for name, seconds in sorted(self.seconds.items(), key=lambda item: -item[1]):
            calls = self.calls[name]
            span = f"{self.first[name]:5.1f}-{self.last[name]:5.1f}"
            lines.append(f"    {name:<46} {calls:>6} {seconds:>8.2f} {seconds / skus * 1000:>7.1f} {seconds / calls * 1000:>8.2f}  {span:>12}")
        return "\n".join(lines)


def time_batch_stages(timer: StageTimer) -> None:
    """Wrap the per-SKU stages of a batched run: ledger writes and reads, spool, HTTP, image store, events."""
    from flokan_dagster import assets, image_store
    from flokan_dagster.api import client
    from flokan_dagster.batch import BatchRunner, _SendChecks
    from flokan_dagster.ledger import spool, store

    for owner, attribute in [
        (store.CreditLedger, "begin_attempt"),
        (store.CreditLedger, "finish_attempt"),
        (store.CreditLedger, "send_checks"),
        (store.CreditLedger, "_merge_spool"),
        (store.CreditLedger, "_read"),
        (spool.Spool, "put"),
        (spool.Spool, "pending"),
        (spool.Spool, "remove"),
        (client.AsyncFlokanClient, "process"),
        (client.AsyncFlokanClient, "download"),
        (image_store.ImageStore, "write"),
        (BatchRunner, "_check_before_send"),
        (BatchRunner, "_complete"),
        (BatchRunner, "_store_result"),
        (_SendChecks, "get"),
    ]:
        timer.wrap(owner, attribute)
    timer.wrap(assets, "sku_materialization", "assets.sku_materialization (thumbnail)")
    timer.wrap(assets._ProgressLog, "add", "assets._ProgressLog.add (run log)")

    original = assets.iterate_in_thread

    def timed_iterate(*args: Any, **kwargs: Any) -> Any:
        # Split the step's thread between waiting for the batch and handling what it yields (Dagster's events).
        inner = original(*args, **kwargs)
        while True:
            started = time.perf_counter()
            try:
                item = next(inner)
            except StopIteration:
                return
            finally:
                timer._add("step thread: waiting for the batch", time.perf_counter() - started)
            started = time.perf_counter()
            yield item
            timer._add("step thread: handling an item (Dagster events)", time.perf_counter() - started)

    timer._undo.append((assets, "iterate_in_thread", original))
    assets.iterate_in_thread = timed_iterate  # type: ignore[assignment]
