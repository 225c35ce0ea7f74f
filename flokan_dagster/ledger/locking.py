"""One cross-process lock around every open of the ledger's DuckDB file.

Why DuckDB's own lock is not enough (issue 16): opening a database file, DuckDB reads the file's
header (which says where the current catalog and free list are) through a separate, *unlocked*
read-only file descriptor, and only then opens the file again and takes its ``fcntl`` lock. If
another process checkpoints and closes the file between those two steps, the opener wins the lock
holding a stale header. It then either reads blocks the checkpoint freed or truncated away
(``IOException: Could not read enough bytes from file``) or, worse, writes its own checkpoint on
top of the stale state, silently discarding the other process's committed transaction, whose
spool files were already deleted. Plain ``connect, insert, close`` loops in four processes lose
rows this way on a busy machine, without any ledger code involved.

So every ledger open first takes this lock on a side file (``<database>.lock``): exclusive for a
read-write open and everything done under it (merging the spool, checkpointing when due, closing, and
deleting merged spool files), shared for a read-only open. The DuckDB header is then only ever
read while no ledger process can be writing the file. ``flock`` locks belong to one open file
description, so unlike ``fcntl`` record locks they are not dropped when some other descriptor of
the same file is closed in this process. The lock is re-entrant for the thread holding the
ledger's in-process lock; it is released when the process dies, however it dies.

Processes that open the DuckDB file read-write without this lock (an analyst's notebook) are
still excluded by DuckDB's own lock while they hold the file; only their *writes* could race
(closing a read-write connection is one: it folds the write-ahead log into the file), so open the
ledger read-write only through ``CreditLedger``.

Example:
    >>> import tempfile, os
    >>> lock = LedgerFileLock(os.path.join(tempfile.mkdtemp(), "l.lock"))
    >>> with lock.hold(exclusive=True, timeout_s=1.0):
    ...     with lock.hold(exclusive=False, timeout_s=1.0):  # re-entrant
    ...         lock.mode
    'exclusive'
"""

from __future__ import annotations

import os
import random
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Final

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - Windows: filelock's exclusive lock for both modes
    fcntl = None  # type: ignore[assignment]

_LOCKS: dict[str, LedgerFileLock] = {}
_LOCKS_GUARD: Final = threading.Lock()


class LockTimeout(TimeoutError):
    """The ledger file lock stayed held by another process past the deadline."""


class LockNoLongerNeeded(Exception):
    """Raised inside ``hold`` when the caller's ``no_longer_needed()`` became true while waiting."""


class LedgerFileLock:
    """A shared/exclusive lock on a side file, held across processes with ``flock``.

    Callers must hold the ledger's in-process lock (``connection.process_lock``) around ``hold``:
    that lock makes one thread at a time use this object, and this one makes one process at a
    time write the database.

    Args:
        path: The lock file; created if missing, never deleted (deleting a lock file in use
            would let two processes lock two different files).
    """

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        self._fd: int | None = None
        self._depth = 0
        self._exclusive = False
        self._fallback: object | None = None

    @property
    def mode(self) -> str | None:
        """``exclusive``, ``shared``, or None when not held by this process."""
        if not self._depth:
            return None
        return "exclusive" if self._exclusive else "shared"

    @contextmanager
    def hold(
        self,
        *,
        exclusive: bool,
        timeout_s: float,
        no_longer_needed: Callable[[], bool] = lambda: False,
    ) -> Iterator[None]:
        """Hold the lock (shared or exclusive) for the ``with`` block.

        Args:
            exclusive: True for writers (one process), False for readers (many processes).
            timeout_s: How long to wait for other processes; 0 tries once.
            no_longer_needed: Polled while waiting; when true, ``LockNoLongerNeeded`` is raised
                instead of waiting on (a writer whose events another process merged meanwhile).

        Raises:
            LockTimeout: Another process held the lock past ``timeout_s``.
            LockNoLongerNeeded: ``no_longer_needed()`` became true while waiting.
            RuntimeError: An exclusive hold was requested inside a shared one (a programming error:
                upgrading could deadlock two readers).
        """
        if self._depth:
            if exclusive and not self._exclusive:
                raise RuntimeError("ledger lock: cannot take the write lock inside a read")
            self._depth += 1
            try:
                yield
            finally:
                self._depth -= 1
            return
        self._acquire(exclusive, timeout_s, no_longer_needed)
        self._depth, self._exclusive = 1, exclusive
        try:
            yield
        finally:
            self._depth = 0
            self._release()

    def _acquire(self, exclusive: bool, timeout_s: float, no_longer_needed: Callable[[], bool]) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            self._acquire_fallback(timeout_s)
            return
        self.path.parent.mkdir(parents=True, exist_ok=True)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o644)
        operation = (fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH) | fcntl.LOCK_NB
        deadline = time.monotonic() + timeout_s
        ceiling = 0.002
        try:
            while True:
                try:
                    fcntl.flock(fd, operation)
                    self._fd = fd
                    return
                except BlockingIOError:
                    pass
                if no_longer_needed():
                    raise LockNoLongerNeeded()
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise LockTimeout(f"ledger lock {self.path} stayed held for {timeout_s:.1f}s")
                # Jittered, capped backoff: several waiting processes do not retry in lockstep.
                time.sleep(min(remaining, random.uniform(ceiling / 2, ceiling)))
                ceiling = min(ceiling * 2, 0.05)
        except BaseException:
            os.close(fd)
            raise

    def _release(self) -> None:
        if fcntl is None:  # pragma: no cover - Windows
            self._fallback.release()  # type: ignore[union-attr]
            return
        fd, self._fd = self._fd, None
        if fd is not None:
            # Closing the descriptor releases the flock (it is this descriptor's alone).
            os.close(fd)

    def _acquire_fallback(self, timeout_s: float) -> None:  # pragma: no cover - Windows
        import filelock

        if self._fallback is None:
            self._fallback = filelock.FileLock(str(self.path))
        try:
            self._fallback.acquire(timeout=max(timeout_s, 0.0))  # type: ignore[attr-defined]
        except filelock.Timeout:
            raise LockTimeout(f"ledger lock {self.path} stayed held for {timeout_s:.1f}s") from None


def ledger_file_lock(path: str | Path) -> LedgerFileLock:
    """Return this process's ``LedgerFileLock`` for ``path`` (one object per lock file)."""
    key = str(Path(path).resolve())
    with _LOCKS_GUARD:
        return _LOCKS.setdefault(key, LedgerFileLock(key))
