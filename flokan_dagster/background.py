"""Run an async batch on its own event loop in a worker thread, consumed as a plain iterator.

Dagster drives an async-generator step one item at a time and stops the event loop while it
handles each yielded event, which would pause every in-flight request of the batch. Here the
batch keeps its loop running in a thread; the step only takes finished items (and log lines,
which it logs itself: the step's logger belongs to the step's thread) from a queue.

Example:
    >>> async def numbers(log):
    ...     log("info", "starting")
    ...     for n in range(3):
    ...         yield n
    >>> [item for item in iterate_in_thread(numbers)]
    [LogLine(level='info', message='starting'), 0, 1, 2]
"""

import asyncio
import queue
import threading
from collections.abc import AsyncIterator, Callable, Iterator
from dataclasses import dataclass
from typing import Any, Literal, TypeVar

T = TypeVar("T")
Level = Literal["debug", "info", "warning", "error"]
LogFunction = Callable[[Level, str], None]

_DONE = object()


@dataclass(frozen=True)
class LogLine:
    """A message the worker wants logged by the consumer."""

    level: Level
    message: str


def iterate_in_thread(make: Callable[[LogFunction], AsyncIterator[T]]) -> Iterator[T | LogLine]:
    """Yield the items of ``make(log)``'s async iterator, run on a worker thread's event loop.

    Exceptions in the worker are re-raised here. If the consumer stops early, the worker's task is
    cancelled and the thread joined.
    """
    items: queue.Queue[Any] = queue.Queue()
    loop = asyncio.new_event_loop()
    task: asyncio.Task[None] | None = None

    def log(level: Level, message: str) -> None:
        items.put(LogLine(level, message))

    async def pump() -> None:
        async for item in make(log):
            items.put(item)

    def worker() -> None:
        nonlocal task
        asyncio.set_event_loop(loop)
        task = loop.create_task(pump())
        try:
            loop.run_until_complete(task)
        except BaseException as exc:  # handed to the consumer, which re-raises it
            items.put(_Raised(exc))
        finally:
            loop.run_until_complete(loop.shutdown_asyncgens())
            loop.close()
            items.put(_DONE)

    thread = threading.Thread(target=worker, name="flokan-batch", daemon=True)
    thread.start()
    try:
        while (item := items.get()) is not _DONE:
            if isinstance(item, _Raised):
                raise item.exc
            yield item
    finally:
        if thread.is_alive() and task is not None:
            try:
                loop.call_soon_threadsafe(task.cancel)
            except RuntimeError:  # the loop closed meanwhile: the worker is finishing anyway
                pass
        thread.join()


@dataclass(frozen=True)
class _Raised:
    exc: BaseException
