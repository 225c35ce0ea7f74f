"""The durable local spool: ledger events waiting for the database.

One JSON file per event, written under a temporary name, fsync'd, atomically renamed, and the
directory fsync'd, so a file either holds a complete event or does not exist. Files are removed
only after the database transaction holding their events has committed; replaying a file twice
is harmless because events are keyed by ``event_id``.

Example:
    >>> import tempfile
    >>> from flokan_dagster.ledger.records import LedgerEvent
    >>> spool = Spool(Path(tempfile.mkdtemp()))
    >>> path = spool.put(LedgerEvent.create("a1", "begin", {"status": "pending"}))
    >>> [e.attempt_id for _, e in spool.pending()]
    ['a1']
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

from flokan_dagster.ledger.records import LedgerEvent

logger = logging.getLogger(__name__)

_SUFFIX = ".event.json"


class Spool:
    """A directory of ledger events not yet merged into the database.

    Args:
        directory: Where the event files live; created on first use.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def put(self, event: LedgerEvent) -> Path:
        """Write ``event`` durably and return its file; safe against crashes at any point."""
        self.directory.mkdir(parents=True, exist_ok=True)
        # The revision leads the name so a directory listing reads in write order.
        final = self.directory / f"{event.revision:020d}-{event.event_id}{_SUFFIX}"
        temporary = self.directory / f".{final.name}.{os.getpid()}.tmp"
        with open(temporary, "w", encoding="utf-8") as handle:
            handle.write(event.to_json())
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, final)
        self._sync_directory()
        return final

    def pending(self) -> list[tuple[Path, LedgerEvent]]:
        """Return the spooled events with their files, oldest first.

        Files another process removed meanwhile are skipped (it merged them). A file that does
        not parse is renamed ``*.corrupt`` and kept for inspection, never deleted.
        """
        if not self.directory.is_dir():
            return []
        found: list[tuple[Path, LedgerEvent]] = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                text = path.read_text(encoding="utf-8")
            except FileNotFoundError:
                continue
            try:
                found.append((path, LedgerEvent.from_json(text)))
            except ValueError:
                logger.error("ledger spool file %s is unreadable; kept as *.corrupt", path.name)
                try:
                    os.replace(path, path.with_name(path.name + ".corrupt"))
                except FileNotFoundError:
                    continue
        return found

    def count(self) -> int:
        """Return how many events are waiting in the spool."""
        if not self.directory.is_dir():
            return 0
        return sum(1 for _ in self.directory.glob(f"*{_SUFFIX}"))

    def remove(self, paths: list[Path]) -> None:
        """Delete merged event files (already-deleted ones are fine: another process merged them)."""
        for path in paths:
            try:
                path.unlink()
            except FileNotFoundError:
                pass
        if paths:
            self._sync_directory()

    def _sync_directory(self) -> None:
        # Renames and unlinks are durable only once the directory entry itself is flushed.
        try:
            fd = os.open(self.directory, os.O_RDONLY)
        except OSError:
            return
        try:
            os.fsync(fd)
        except OSError:
            pass
        finally:
            os.close(fd)
