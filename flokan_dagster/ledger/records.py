"""What the ledger stores: attempt records, the events that build them, and how events fold.

Every write to the ledger is an immutable *event* (``LedgerEvent``) that sets some fields of one
attempt. The row in the ``attempts`` table is the fold of all events of that attempt, ordered by
revision. Because the fold only depends on the *set* of events, applying events directly, from
the spool, twice, or in any order gives the same row: this is what lets a locked database delay a
record without ever losing or garbling it.

Example:
    >>> e1 = LedgerEvent.create("a1", "begin", {"status": "pending", "prompt": "red mug"})
    >>> e2 = LedgerEvent.create("a1", "finish", {"status": "completed", "credits_consumed": 50})
    >>> row = fold_events([e2, e1])
    >>> (row["status"], row["prompt"], row["credits_consumed"])
    ('completed', 'red mug', 50)
"""

from __future__ import annotations

import dataclasses
import json
import re
import threading
import time
import uuid
from collections.abc import Iterable, Mapping, Sequence
from datetime import datetime, timezone
from typing import Any, Final, Literal

AttemptStatus = Literal["pending", "completed", "failed", "unknown", "rejected"]
AttemptOrigin = Literal["dagster", "reconciled", "external"]

STATUSES: Final[tuple[str, ...]] = ("pending", "completed", "failed", "unknown", "rejected")
TERMINAL_STATUSES: Final[frozenset[str]] = frozenset({"completed", "failed", "rejected"})
ORIGINS: Final[tuple[str, ...]] = ("dagster", "reconciled", "external")

REQUEST_FIELDS: Final[tuple[str, ...]] = (
    "prompt",
    "model_tier",
    "provider",
    "image_id",
    "image_url",
    "style_id",
    "character_id",
    "source_ref",
)
TIMESTAMP_FIELDS: Final[tuple[str, ...]] = ("sent_at", "job_created_at", "completed_at", "server_sent_at")
INT_FIELDS: Final[tuple[str, ...]] = ("credits_consumed", "estimated_credits", "processing_ms", "clock_error_ms")
# When the request left on the server's clock, and that estimate's error: job times are compared
# with the server's clock (settle.py), and an attempt settled later keeps the clock it was sent under.
SERVER_CLOCK_FIELDS: Final[tuple[str, ...]] = ("server_sent_at", "clock_error_ms")

# The columns an event may set, in table order. ``recorded_at``, ``updated_at`` and ``revision``
# are derived by the fold, never set by an event.
EVENT_FIELDS: Final[tuple[str, ...]] = (
    "run_id",
    "asset",
    "sku",
    "fingerprint",
    *REQUEST_FIELDS,
    "job_id",
    "job_status",
    "provider_used",
    "status",
    "credits_consumed",
    "estimated_credits",
    "processing_ms",
    "result_url",
    "result_image_id",
    "result_path",
    "result_sha256",
    "error",
    "origin",
    "sent_at",
    "job_created_at",
    "completed_at",
    *SERVER_CLOCK_FIELDS,
)
COLUMNS: Final[tuple[str, ...]] = ("attempt_id", *EVENT_FIELDS, "recorded_at", "updated_at", "revision")

# Flokan keys look like ``flk_<key>``; anything shaped like one is masked before it can reach the
# ledger (an echoed Authorization header in an error message, a key pasted into a prompt).
_KEY_PATTERN: Final = re.compile(r"flk_[A-Za-z0-9_\-]{4,}")
REDACTED_KEY: Final = "flk_[REDACTED]"

# Deterministic ids for rows of jobs Dagster did not make, so one job_id maps to one row whoever
# records it and however often.
_EXTERNAL_NAMESPACE: Final = uuid.UUID("5b0d7c1e-63a4-4f6e-9a55-0e8f6f3a2c11")


def redact_secrets(value: str) -> str:
    """Mask anything shaped like a Flokan API key (``flk_...``) in ``value``.

    Example:
        >>> redact_secrets("401 for Bearer flk_live_abc123")
        '401 for Bearer flk_[REDACTED]'
    """
    return _KEY_PATTERN.sub(REDACTED_KEY, value)


def utc_now() -> datetime:
    """Return the current time as a naive UTC datetime (the ledger stores UTC without zone)."""
    return datetime.now(timezone.utc).replace(tzinfo=None)


def to_utc_naive(value: datetime | str | None) -> datetime | None:
    """Normalise a datetime or ISO 8601 string to naive UTC; None (or unparsable text) -> None.

    Example:
        >>> to_utc_naive("2026-04-12T09:00:00.000Z")
        datetime.datetime(2026, 4, 12, 9, 0)
    """
    if value is None:
        return None
    if isinstance(value, str):
        try:
            value = datetime.fromisoformat(value.strip())
        except ValueError:
            # A job row is foreign data: a malformed timestamp must not cost us the record.
            return None
    if value.tzinfo is not None:
        value = value.astimezone(timezone.utc).replace(tzinfo=None)
    return value


def external_attempt_id(job_id: str) -> str:
    """Return the attempt id under which a job not made by Dagster is recorded.

    Example:
        >>> external_attempt_id("9c0d") == external_attempt_id("9c0d")
        True
    """
    return str(uuid.uuid5(_EXTERNAL_NAMESPACE, f"job:{job_id}"))


class _RevisionClock:
    """Nanosecond wall clock that never repeats or goes back within a process."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._last = 0

    def next(self) -> int:
        with self._lock:
            self._last = max(self._last + 1, time.time_ns())
            return self._last


_CLOCK: Final = _RevisionClock()


# The range of DuckDB's BIGINT, the type of the integer columns.
_BIGINT_MIN: Final = -(2**63)
_BIGINT_MAX: Final = 2**63 - 1


def _clean(field: str, value: Any) -> Any:
    """Coerce one event value to its column type; strings are scrubbed of key-shaped text.

    An event is spooled before it is merged, and every later merge and read applies the whole
    spool: a value DuckDB cannot store would fail them all. So such a value is refused here (an
    integer beyond BIGINT) or made storable (text that is not valid Unicode, e.g. a lone
    surrogate a server sent as a JSON escape, keeps a visible backslash escape).
    """
    if value is None:
        return None
    if field in INT_FIELDS:
        number = int(value)
        if not _BIGINT_MIN <= number <= _BIGINT_MAX:
            raise ValueError(f"{field}: {number} is out of the ledger's integer range")
        return number
    if field in TIMESTAMP_FIELDS:
        return to_utc_naive(value)
    if field == "status" and value not in STATUSES:
        raise ValueError(f"status must be one of {', '.join(STATUSES)}, got {value!r}")
    if field == "origin" and value not in ORIGINS:
        raise ValueError(f"origin must be one of {', '.join(ORIGINS)}, got {value!r}")
    text = str(value).encode("utf-8", "backslashreplace").decode("utf-8")
    return redact_secrets(text)


@dataclasses.dataclass(frozen=True)
class LedgerEvent:
    """One immutable write to one attempt: the fields it sets and the fields it clears.

    Attributes:
        event_id: Unique id; replaying an event that was already applied is a no-op.
        attempt_id: The attempt the event writes to.
        revision: Nanosecond-based order; the fold applies events by ascending revision.
        written_at: When the event was made (naive UTC), whenever it reaches the database.
        kind: What made it (begin, finish, reject, settle, external), for the audit trail.
        fields: Column -> value; None never appears (absent means "leave as is").
        clear: Columns this event deliberately resets to NULL (e.g. a stale error on success).
    """

    event_id: str
    attempt_id: str
    revision: int
    written_at: datetime
    kind: str
    fields: Mapping[str, Any]
    clear: tuple[str, ...] = ()

    @classmethod
    def create(
        cls,
        attempt_id: str,
        kind: str,
        fields: Mapping[str, Any],
        *,
        clear: Iterable[str] = (),
        event_id: str | None = None,
    ) -> LedgerEvent:
        """Build an event: drop None values, coerce types, mask key-shaped text.

        Raises:
            ValueError: A field is not a ledger column, or status/origin is not an allowed value.
        """
        unknown = set(fields) - set(EVENT_FIELDS) | set(clear) - set(EVENT_FIELDS)
        if unknown:
            raise ValueError(f"not ledger fields: {', '.join(sorted(unknown))}")
        cleaned = {k: _clean(k, v) for k, v in fields.items() if v is not None}
        return cls(
            event_id=event_id or str(uuid.uuid4()),
            attempt_id=attempt_id,
            revision=_CLOCK.next(),
            written_at=utc_now(),
            kind=kind,
            fields=cleaned,
            clear=tuple(sorted(set(clear) - set(cleaned))),
        )

    def to_json(self) -> str:
        """Serialise for the spool and the ``attempt_events`` table."""
        fields = {k: v.isoformat() if isinstance(v, datetime) else v for k, v in self.fields.items()}
        return json.dumps(
            {
                "event_id": self.event_id,
                "attempt_id": self.attempt_id,
                "revision": self.revision,
                "written_at": self.written_at.isoformat(),
                "kind": self.kind,
                "fields": fields,
                "clear": list(self.clear),
            },
            sort_keys=True,
        )

    @classmethod
    def from_json(cls, text: str) -> LedgerEvent:
        """Parse what ``to_json`` wrote.

        Raises:
            ValueError: The text is not a serialised event.
        """
        try:
            data = json.loads(text)
            fields = {
                k: to_utc_naive(v) if k in TIMESTAMP_FIELDS else v for k, v in data["fields"].items()
            }
            return cls(
                event_id=str(data["event_id"]),
                attempt_id=str(data["attempt_id"]),
                revision=int(data["revision"]),
                written_at=datetime.fromisoformat(data["written_at"]),
                kind=str(data["kind"]),
                fields=fields,
                clear=tuple(data.get("clear", ())),
            )
        except (KeyError, TypeError, json.JSONDecodeError) as exc:
            raise ValueError(f"not a ledger event: {exc}") from None


def fold_events(events: Iterable[LedgerEvent]) -> dict[str, Any]:
    """Fold an attempt's events into its row; the result does not depend on the input order.

    Events apply by ascending (revision, event_id). A later event overwrites the fields it sets and
    keeps the rest (a value is never erased by a write that leaves it None), except the fields it
    lists in ``clear``. A terminal status (completed, failed, rejected) is never moved back to
    pending or unknown by a later event: a late "unknown" must not hide a settled job.

    Raises:
        ValueError: ``events`` is empty or mixes attempts.
    """
    earliest: dict[str, LedgerEvent] = {}
    # Copies of one event id keep the earliest, as the journal does (see journal.apply_events).
    for event in sorted(events, key=lambda e: (e.revision, e.event_id)):
        earliest.setdefault(event.event_id, event)
    ordered = list(earliest.values())
    if not ordered:
        raise ValueError("no events to fold")
    attempt_id = ordered[0].attempt_id
    row: dict[str, Any] = dict.fromkeys(COLUMNS)
    row["attempt_id"] = attempt_id
    for event in ordered:
        if event.attempt_id != attempt_id:
            raise ValueError("events of several attempts folded together")
        fields = dict(event.fields)
        new_status = fields.get("status")
        if row["status"] in TERMINAL_STATUSES and new_status is not None and new_status not in TERMINAL_STATUSES:
            del fields["status"]
        for name in event.clear:
            row[name] = None
        row.update(fields)
    row["recorded_at"] = min(e.written_at for e in ordered)
    row["updated_at"] = max(e.written_at for e in ordered)
    row["revision"] = ordered[-1].revision
    return row


# The fields that name an attempt: every event of an attempt carries them (issue 10), so a row can
# be rebuilt from any of its events, and an event an adoption lost keeps only these.
IDENTITY_FIELDS: Final[tuple[str, ...]] = ("asset", "sku", "fingerprint", "run_id")
# What an attempt was (never changes after ``begin``): its identity, the request as sent, when it
# was sent and its estimate. Later events carry these too, so a lost ``begin`` loses nothing a
# settlement needs (matching a job in GET /jobs uses the request fields and ``sent_at``).
DESCRIPTION_FIELDS: Final[tuple[str, ...]] = (*IDENTITY_FIELDS, *REQUEST_FIELDS, "sent_at", "estimated_credits")
# Events whose job id came straight from the server's answer to this attempt's own /process call.
DIRECT_KINDS: Final[frozenset[str]] = frozenset({"finish"})


def _job_rank(attempt_events: list[LedgerEvent], job_id: str, attempt_id: str) -> tuple[int, int, str]:
    """How strong an attempt's hold on ``job_id`` is (smaller wins): direct answer, then earliest."""
    setting = [e for e in attempt_events if e.fields.get("job_id") == job_id]
    direct = any(e.kind in DIRECT_KINDS for e in setting)
    return (0 if direct else 1, min(e.revision for e in setting), attempt_id)


def fold_attempts(events_by_attempt: Mapping[str, Iterable[LedgerEvent]]) -> dict[str, dict[str, Any]]:
    """Fold several attempts' events into rows, keeping each job id on at most one attempt.

    A job id set on two non-external attempts goes to the one the server answered directly (its
    ``finish`` event carries the job id) over one that adopted it (``settle``); between equals,
    to the earliest event, then the smaller attempt id. The losing attempt's events that set that
    job keep only what describes the attempt (``DESCRIPTION_FIELDS``), so its row is what it was before it adopted the job,
    and a row left ``pending`` (or with no status) becomes ``unknown``: it was sent and its
    outcome must be settled again. The result depends only on the set of events given, never on
    their order or repetition. External rows are not considered here (they yield to any attempt
    holding their job; see ``journal.apply_events``).

    Example:
        >>> direct = LedgerEvent.create("a1", "finish", {"status": "completed", "job_id": "j1"})
        >>> adopted = LedgerEvent.create("a2", "settle", {"status": "completed", "job_id": "j1", "origin": "reconciled"})
        >>> rows = fold_attempts({"a2": [adopted], "a1": [direct]})
        >>> rows["a1"]["job_id"], rows["a2"]["job_id"], rows["a2"]["status"]
        ('j1', None, 'unknown')
    """
    groups = {attempt_id: list(events) for attempt_id, events in events_by_attempt.items() if events}
    lost: dict[str, set[str]] = {}
    while True:
        rows = {}
        for attempt_id, events in groups.items():
            dropped = lost.get(attempt_id, set())
            rows[attempt_id] = fold_events(
                [
                    dataclasses.replace(
                        e, fields={k: v for k, v in e.fields.items() if k in DESCRIPTION_FIELDS}, clear=()
                    )
                    if e.fields.get("job_id") in dropped
                    else e
                    for e in events
                ]
            )
        holders: dict[str, list[str]] = {}
        for attempt_id, row in rows.items():
            if row["job_id"] is not None and row["origin"] != "external":
                holders.setdefault(row["job_id"], []).append(attempt_id)
        contested = {job: ids for job, ids in holders.items() if len(ids) > 1}
        if not contested:
            break
        for job_id, ids in contested.items():
            winner = min(ids, key=lambda a: _job_rank(groups[a], job_id, a))
            for attempt_id in ids:
                if attempt_id != winner:
                    lost.setdefault(attempt_id, set()).add(job_id)
    for attempt_id, jobs in lost.items():
        row = rows[attempt_id]
        if row["status"] in (None, "pending"):
            row["status"] = "unknown"
            row["error"] = (
                f"job {', '.join(sorted(jobs))} is held by another attempt the server answered directly;"
                " this attempt's outcome is unknown again"
            )
    return rows


@dataclasses.dataclass(frozen=True)
class AttemptRecord:
    """One row of the ledger: one ``POST /process`` attempt, or one job seen only in ``GET /jobs``.

    All timestamps are naive UTC. ``credits_consumed`` is the deduction the API reported (None
    while unknown); ``estimated_credits`` the upper bound from ``/estimate-credits``.

    Example:
        >>> rec = AttemptRecord.from_row({"attempt_id": "a1", "status": "pending"})
        >>> rec.status, rec.job_id
        ('pending', None)
    """

    attempt_id: str
    status: str
    origin: str | None = None
    run_id: str | None = None
    asset: str | None = None
    sku: str | None = None
    fingerprint: str | None = None
    prompt: str | None = None
    model_tier: str | None = None
    provider: str | None = None
    image_id: str | None = None
    image_url: str | None = None
    style_id: str | None = None
    character_id: str | None = None
    source_ref: str | None = None
    job_id: str | None = None
    job_status: str | None = None
    provider_used: str | None = None
    credits_consumed: int | None = None
    estimated_credits: int | None = None
    processing_ms: int | None = None
    result_url: str | None = None
    result_image_id: str | None = None
    result_path: str | None = None
    result_sha256: str | None = None
    error: str | None = None
    sent_at: datetime | None = None
    job_created_at: datetime | None = None
    completed_at: datetime | None = None
    server_sent_at: datetime | None = None
    clock_error_ms: int | None = None
    recorded_at: datetime | None = None
    updated_at: datetime | None = None
    revision: int | None = None

    @classmethod
    def from_row(cls, row: Mapping[str, Any]) -> AttemptRecord:
        """Build a record from a column -> value mapping (extra keys are ignored)."""
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in row.items() if k in names})

    @classmethod
    def from_values(cls, values: Sequence[Any]) -> AttemptRecord:
        """Build a record from one row of the attempts table's ``COLUMNS``, in that order."""
        return cls.from_row(dict(zip(COLUMNS, values, strict=True)))


def job_row_fields(job_row: Mapping[str, Any]) -> dict[str, Any]:
    """Map a ``GET /jobs`` row onto ledger fields, ignoring fields the ledger does not keep.

    Unknown keys (including anything a misbehaving server might echo, such as a key) are dropped;
    the job's ``pending``/``processing`` become attempt status ``pending``.

    Raises:
        ValueError: The row has no ``job_id``.

    Example:
        >>> job_row_fields({"job_id": "j1", "status": "processing", "credits_consumed": 0})["status"]
        'pending'
    """
    job_id = job_row.get("job_id")
    if not job_id:
        raise ValueError("job row has no job_id")
    job_status = job_row.get("status")
    status = job_status if job_status in ("completed", "failed") else "pending"
    provider_used = job_row.get("provider_used")
    provider = job_row.get("provider") or ("platform" if provider_used == "system" else provider_used)
    fields: dict[str, Any] = {
        "job_id": str(job_id),
        "job_status": job_status,
        "status": status,
        "provider": provider,
        "provider_used": provider_used,
        "job_created_at": job_row.get("created_at"),
        "completed_at": job_row.get("completed_at"),
    }
    for name in (
        "prompt",
        "model_tier",
        "image_id",
        "image_url",
        "style_id",
        "character_id",
        "result_url",
        "result_image_id",
        "credits_consumed",
        "processing_ms",
        "error",
    ):
        fields[name] = job_row.get(name)
    return fields
