"""The durable local spool: ledger events waiting for the database.

One JSON file per event, written under a temporary name, fsync'd, atomically renamed, and the
directory fsync'd, so a file either holds a complete event or does not exist. Files are removed
only after the database transaction holding their events has committed; replaying a file twice
is harmless because events are keyed by ``event_id``.

A file name says what its event concerns even if its content is lost:
``<revision>-<event id>~<kind>~<tag>.event.json``, where the tag is a digest of the attempt's
asset and SKU (``sku_tag``) or ``none`` for an event without a SKU. A file that cannot be read
(disk damage, a hand edit) is *quarantined*: moved to ``quarantine/`` beside the events, never
deleted, and reported by ``quarantined()`` with whatever its name and readable remains reveal
(asset, SKU, attempt). ``resolve()`` moves it on to ``resolved/`` once a person has checked it.

Example:
    >>> import tempfile
    >>> from flokan_dagster.ledger.records import LedgerEvent
    >>> spool = Spool(Path(tempfile.mkdtemp()))
    >>> path = spool.put(LedgerEvent.create("a1", "begin", {"status": "pending"}))
    >>> [e.attempt_id for _, e in spool.pending()]
    ['a1']
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
from pathlib import Path
from typing import Final

from flokan_dagster.ledger.records import LedgerEvent, utc_now

logger = logging.getLogger(__name__)

_SUFFIX = ".event.json"
QUARANTINE_DIR: Final = "quarantine"
RESOLVED_DIR: Final = "resolved"
NO_SKU_TAG: Final = "none"
_NAME: Final = re.compile(r"^(?P<revision>\d+)-(?P<event_id>[^~]+?)(?:~(?P<kind>[a-z_]+)~(?P<tag>[0-9a-f]{16}|none))?\.event\.json$")
# Identity fields still legible in a damaged event (events are JSON with sorted keys).
_LEGIBLE: Final = re.compile(r'"(attempt_id|asset|sku|fingerprint|run_id)":\s*("(?:[^"\\]|\\.)*")')


def sku_tag(asset: str, sku: str) -> str:
    """The 16-hex digest of an (asset, SKU) pair used in spool file names (SKUs may hold any text).

    Example:
        >>> sku_tag("images", "MUG-1") == sku_tag("images", "MUG-1") != sku_tag("images", "MUG-2")
        True
    """
    return hashlib.sha256(f"{asset}\x00{sku}".encode("utf-8", "backslashreplace")).hexdigest()[:16]


@dataclasses.dataclass(frozen=True)
class QuarantinedFile:
    """A spool file that could not be read, with what it may concern.

    Attributes:
        path: Where it is now (under ``quarantine/``).
        reason: Why it could not be read.
        kind: The event's kind from its name (begin, finish, settle, ...), if named.
        tag: ``sku_tag(asset, sku)`` from its name, ``none`` for an event without a SKU, or None
            for a file named before tags existed.
        asset: The asset, if still legible in the content.
        sku: The SKU, if still legible in the content.
        attempt_id: The attempt, if still legible in the content.
    """

    path: Path
    reason: str
    kind: str | None = None
    tag: str | None = None
    asset: str | None = None
    sku: str | None = None
    attempt_id: str | None = None

    @property
    def name(self) -> str:
        """The file's name (what ``ledger doctor --resolve`` takes)."""
        return self.path.name

    def concerns(self, asset: str, skus: list[str]) -> list[str] | None:
        """Which of ``skus`` of ``asset`` this file may hold an event of.

        Returns None when the file reveals nothing that would narrow it (it may concern any SKU
        of any asset); a file known to hold an event without a SKU (a job recorded from
        ``GET /jobs``) concerns none.
        """
        if self.sku is not None and self.asset is not None:
            return [self.sku] if self.asset == asset and self.sku in skus else []
        if self.tag == NO_SKU_TAG and self.kind == "external":
            return []
        if self.tag is not None and self.tag != NO_SKU_TAG:
            return [sku for sku in skus if sku_tag(asset, sku) == self.tag]
        if self.asset is not None:
            return list(skus) if self.asset == asset else []
        return None

    def describe(self) -> str:
        """One line naming the file and what it may concern."""
        if self.asset is not None and self.sku is not None:
            what = f"asset {self.asset!r} SKU {self.sku!r}"
        elif self.tag == NO_SKU_TAG and self.kind == "external":
            what = "a job recorded from GET /jobs (no SKU)"
        elif self.tag is not None and self.tag != NO_SKU_TAG:
            what = f"one SKU (tag {self.tag}{f' of asset {self.asset!r}' if self.asset else ''})"
        elif self.asset is not None:
            what = f"any SKU of asset {self.asset!r}"
        else:
            what = "any SKU of any asset"
        event = f"a {self.kind} event" if self.kind else "an event"
        attempt = f" of attempt {self.attempt_id}" if self.attempt_id else ""
        return f"{self.path}: {event}{attempt} for {what}; unreadable: {self.reason}"


def _legible_identity(data: bytes) -> dict[str, str]:
    """Identity fields still readable in a damaged event's bytes."""
    found: dict[str, str] = {}
    for match in _LEGIBLE.finditer(data.decode("utf-8", "replace")):
        try:
            found.setdefault(match.group(1), str(json.loads(match.group(2))))
        except ValueError:
            continue
    return found


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
        # The revision leads the name so a directory listing reads in write order; kind and tag
        # say what the event concerns even if its content is ever lost.
        asset, sku = event.fields.get("asset"), event.fields.get("sku")
        tag = sku_tag(str(asset), str(sku)) if asset is not None and sku is not None else NO_SKU_TAG
        kind = re.sub(r"[^a-z_]", "_", event.kind.lower()) or "event"
        final = self.directory / f"{event.revision:020d}-{event.event_id}~{kind}~{tag}{_SUFFIX}"
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

        Files another process removed meanwhile are skipped (it merged them). A file that cannot
        be read is quarantined (see ``quarantine``), never deleted.
        """
        if not self.directory.is_dir():
            return []
        for legacy in self.directory.glob(f"*{_SUFFIX}.corrupt"):
            # Renamed aside by an earlier version: quarantine it like any unreadable file.
            self.quarantine(legacy, "unreadable (renamed *.corrupt by an earlier version)")
        found: list[tuple[Path, LedgerEvent]] = []
        for path in sorted(self.directory.glob(f"*{_SUFFIX}")):
            try:
                data = path.read_bytes()
            except FileNotFoundError:
                continue
            except OSError as exc:
                self.quarantine(path, f"cannot be read: {exc}")
                continue
            try:
                found.append((path, LedgerEvent.from_json(data.decode("utf-8"))))
            except (ValueError, UnicodeDecodeError) as exc:
                self.quarantine(path, str(exc) or type(exc).__name__)
        return found

    def quarantine(self, path: Path, reason: str) -> Path | None:
        """Move an unreadable spool file to ``quarantine/`` (kept, never deleted) and log why.

        Returns:
            Its new path, or None if another process moved it first.
        """
        target_dir = self.directory / QUARANTINE_DIR
        target_dir.mkdir(parents=True, exist_ok=True)
        name = path.name.removesuffix(".corrupt")
        target = target_dir / name
        try:
            os.replace(path, target)
        except FileNotFoundError:
            return None
        (target_dir / f"{name}.why").write_text(f"{utc_now().isoformat()} {reason}\n", encoding="utf-8")
        self._sync_directory()
        logger.error(
            "ledger spool file %s cannot be read (%s); moved to %s. Spending on the SKUs it may concern"
            " waits until `flokan-dagster ledger doctor --resolve %s`",
            name, reason, target, name,
        )
        return target

    def quarantined(self) -> list[QuarantinedFile]:
        """Return the quarantined files not yet resolved, oldest first, with what they may concern."""
        target_dir = self.directory / QUARANTINE_DIR
        if not target_dir.is_dir():
            return []
        files = []
        for path in sorted(target_dir.glob(f"*{_SUFFIX}")):
            why = path.with_name(path.name + ".why")
            try:
                data = path.read_bytes()
                reason = why.read_text(encoding="utf-8").strip().split(" ", 1)[-1] if why.exists() else "unreadable"
            except FileNotFoundError:
                continue  # resolved meanwhile
            except OSError as exc:
                data, reason = b"", f"cannot be read: {exc}"
            named = _NAME.match(path.name)
            legible = _legible_identity(data)
            files.append(
                QuarantinedFile(
                    path=path,
                    reason=reason,
                    kind=named.group("kind") if named else None,
                    tag=named.group("tag") if named else None,
                    asset=legible.get("asset"),
                    sku=legible.get("sku"),
                    attempt_id=legible.get("attempt_id"),
                )
            )
        return files

    def resolve(self, name: str, note: str = "") -> Path:
        """Mark a quarantined file resolved: move it (and its reason) to ``resolved/``, kept.

        Raises:
            FileNotFoundError: No quarantined file has that name.
        """
        name = Path(name).name
        source = self.directory / QUARANTINE_DIR / name
        if not source.exists():
            known = ", ".join(f.name for f in self.quarantined()) or "none"
            raise FileNotFoundError(f"no quarantined spool file named {name!r} (quarantined: {known})")
        target_dir = self.directory / RESOLVED_DIR
        target_dir.mkdir(parents=True, exist_ok=True)
        target = target_dir / name
        os.replace(source, target)
        why = source.with_name(name + ".why")
        with open(target_dir / f"{name}.why", "a", encoding="utf-8") as handle:
            if why.exists():
                handle.write(why.read_text(encoding="utf-8"))
                why.unlink()
            handle.write(f"{utc_now().isoformat()} resolved{': ' + note if note else ''}\n")
        self._sync_directory()
        return target

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
