"""One reconciliation pass: what Flokan did (``GET /jobs``) against what the ledger recorded.

A pass pages ``GET /jobs`` from the newest job down to the region an earlier pass already saw
(the cursor's newest ``created_at``, minus an overlap window for rows that commit late), within a
time budget; a backlog larger than the budget is continued by the next pass from a saved page
position. Offset pages shift while jobs arrive at the head, so every row is deduplicated by job
id and by the scan's ``created_at`` boundaries, and nothing is skipped. The pass then:

- records jobs no Dagster attempt owns with origin ``external`` (Flokan's UI, n8n, scripts), so
  the cost report covers the whole workspace;
- settles ``unknown`` attempts (and ``pending`` ones a dead run left behind) onto their job by
  request fields and time window (:mod:`flokan_dagster.settle`), and adopts a completed job:
  its image is downloaded and stored, and the caller materializes the SKU. Nothing is paid again;
- refreshes pending rows from the listing or ``GET /jobs/:id`` and corrects credits to the job
  row's deduction (the truth; the estimate is only an upper bound);
- lists SKUs whose latest attempt failed since the previous pass, for optional re-runs.

It needs no Dagster: the sensor (:mod:`flokan_dagster.sensors`) and the CLI both call
:func:`reconcile`.

Example:
    >>> result = reconcile(client, ledger, store, cursor=None)  # doctest: +SKIP
    >>> print(result.summary.describe())  # doctest: +SKIP
    caught up: 3 new job(s) (2 external, 0 in flight), 1 settled, 1 adopted, ... lag 0.0s
    >>> next_cursor = result.cursor.to_json()  # doctest: +SKIP
"""

from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from flokan_dagster.api import rules
from flokan_dagster.api.client import FlokanClient
from flokan_dagster.api.errors import FlokanError, FlokanNotFoundError, FlokanRateLimitError
from flokan_dagster.api.models import Job
from flokan_dagster.api.retry import utcnow
from flokan_dagster.image_store import ImageStore, StoredImage
from flokan_dagster.ledger import AttemptRecord, CreditLedger
from flokan_dagster.ledger.claims import holder_evidence
from flokan_dagster.settle import (
    DEFAULT_WINDOW_S,
    TERMINAL_STATUSES,
    JobMatcher,
    RequestFields,
    as_utc,
    sent_time,
    server_now,
    settle_decision,
)

logger = logging.getLogger("flokan_dagster.reconcile")

CURSOR_VERSION = 1


class CursorError(ValueError):
    """A serialized reconciliation cursor that cannot be read."""


@dataclass(frozen=True)
class ReconcileSettings:
    """How one pass pages and how long it may take.

    Attributes:
        per_page: Rows per ``GET /jobs`` page (1-100).
        budget_s: Wall-clock budget of a pass; keep it well under Dagster's 60 s tick limit.
        overlap_s: How far below the newest ``created_at`` already seen a pass still looks, for
            rows that commit slightly out of order (deduplicated by job id).
        stale_after_s: A ``pending`` attempt with no job id older than this is settled like an
            ``unknown`` one even if its run still seems to hold the SKU's claim (sooner when the
            claim shows the run is gone: released, taken over, or its process dead).
        window_s: How long after an attempt was sent (on the server's clock) its job may have been
            created.
    """

    per_page: int = rules.PER_PAGE_MAX
    budget_s: float = 40.0
    overlap_s: float = 30.0
    stale_after_s: float = 900.0
    window_s: float = DEFAULT_WINDOW_S

    def __post_init__(self) -> None:
        if not 1 <= self.per_page <= rules.PER_PAGE_MAX:
            raise ValueError(f"per_page must be 1-{rules.PER_PAGE_MAX}, got {self.per_page}")
        if self.budget_s <= 0 or self.overlap_s < 0 or self.stale_after_s <= 0:
            raise ValueError("budget_s and stale_after_s must be positive and overlap_s not negative")

    @property
    def reserve_s(self) -> float:
        """Budget kept back from paging for settling, refreshing and adopting."""
        return min(5.0, self.budget_s / 4)


@dataclass(frozen=True)
class ScanPosition:
    """Where an unfinished scan of ``GET /jobs`` stopped, so the next pass continues it.

    Attributes:
        page: The next page to read. Jobs arriving at the head only push rows to later pages,
            so re-reading from this page number never skips a row (repeats are deduplicated).
        stop: The scan ends at rows older than this minus the overlap (the newest row of the
            previous scan); None reads the whole history.
        stop_ids: Job ids at exactly ``stop``, already seen.
        last: ``created_at`` of the oldest row this scan has processed.
        last_ids: Job ids at exactly ``last`` that this scan has processed.
        started: When the scan began (rows newer than its head wait for the next scan).
    """

    page: int
    stop: datetime | None
    stop_ids: tuple[str, ...]
    last: datetime | None
    last_ids: tuple[str, ...]
    started: datetime

    def done(self, job: Job) -> bool:
        """Whether this scan processed ``job`` already (on an earlier, since shifted, page)."""
        if self.last is None or job.created_at is None:
            return False
        created = as_utc(job.created_at)
        return created > self.last or (created == self.last and job.job_id in self.last_ids)


@dataclass(frozen=True)
class ReconcileCursor:
    """What the passes have seen so far; serialized as the sensor's cursor.

    JSON: ``{"v": 1, "newest": iso | null, "ids_at_newest": [...], "resume": {...} | null,
    "failures_since": iso | null}``.

    Attributes:
        newest: The newest ``created_at`` seen in ``GET /jobs`` (None before the first pass).
        ids_at_newest: Job ids at exactly ``newest``.
        resume: An unfinished scan, continued by the next pass.
        failures_since: Failed attempts updated since then are reported by the next pass.
    """

    newest: datetime | None = None
    ids_at_newest: tuple[str, ...] = ()
    resume: ScanPosition | None = None
    failures_since: datetime | None = None

    def to_json(self) -> str:
        """Serialize (the inverse of :meth:`from_json`)."""
        resume = None
        if self.resume is not None:
            r = self.resume
            resume = {
                "page": r.page, "stop": _iso(r.stop), "stop_ids": list(r.stop_ids), "last": _iso(r.last),
                "last_ids": list(r.last_ids), "started": _iso(r.started),
            }  # fmt: skip
        return json.dumps(
            {
                "v": CURSOR_VERSION,
                "newest": _iso(self.newest),
                "ids_at_newest": list(self.ids_at_newest),
                "resume": resume,
                "failures_since": _iso(self.failures_since),
            },
            separators=(",", ":"),
        )

    @classmethod
    def from_json(cls, text: str) -> ReconcileCursor:
        """Parse a serialized cursor.

        Raises:
            CursorError: Not a cursor of this version (the caller decides the fallback).

        Example:
            >>> ReconcileCursor.from_json(ReconcileCursor().to_json()) == ReconcileCursor()
            True
        """
        try:
            data = json.loads(text)
            if not isinstance(data, dict) or data.get("v") != CURSOR_VERSION:
                raise CursorError(f"not a version {CURSOR_VERSION} reconciliation cursor")
            raw = data.get("resume")
            resume = None
            if raw is not None:
                resume = ScanPosition(
                    page=_positive_int(raw["page"]), stop=_parse_time(raw.get("stop")),
                    stop_ids=_ids(raw.get("stop_ids")), last=_parse_time(raw.get("last")),
                    last_ids=_ids(raw.get("last_ids")), started=_parse_time(raw["started"]) or utcnow(),
                )  # fmt: skip
            return cls(
                newest=_parse_time(data.get("newest")),
                ids_at_newest=_ids(data.get("ids_at_newest")),
                resume=resume,
                failures_since=_parse_time(data.get("failures_since")),
            )
        except CursorError:
            raise
        except (ValueError, TypeError, KeyError, AttributeError) as exc:
            raise CursorError(f"{type(exc).__name__}: {exc}") from None


@dataclass(frozen=True)
class Adoption:
    """A paid job adopted for a SKU: its image is stored; the caller materializes the partition.

    Attributes:
        asset: The asset key string recorded in the ledger.
        sku: The partition key.
        record: The settled ledger row (origin ``reconciled``).
        stored: The stored image.
    """

    asset: str
    sku: str
    record: AttemptRecord
    stored: StoredImage


@dataclass(frozen=True)
class FailedSku:
    """A SKU whose latest attempt failed since the previous pass.

    Attributes:
        asset: The asset key string.
        sku: The partition key.
        error: Why the latest attempt failed.
        job_id: Its job, when one was created.
        failed_attempts: How many attempts of this asset and SKU failed so far (caps re-runs).
    """

    asset: str
    sku: str
    error: str | None
    job_id: str | None
    failed_attempts: int


@dataclass
class ReconcileSummary:
    """What one pass did, for the tick log.

    Attributes:
        listed: Rows read from ``GET /jobs`` outside the region seen before.
        new: Of those, jobs the ledger did not hold.
        external: New jobs recorded as made outside Dagster.
        in_flight: New jobs matching a Dagster ``/process`` still in flight (recorded as
            external for now; the ledger merges the row into the attempt when it finishes).
        settled: Unknown (or abandoned pending) attempts settled onto their job.
        adopted: Settled completed jobs whose image was stored for their SKU.
        refreshed: Pending rows brought up to date.
        corrected: Attempts whose credits were corrected to the job row's deduction.
        failed_jobs: Failed jobs first seen failed in this pass.
        absent: Unknown attempts proven to have created no job (marked failed, 0 credits).
        pages: ``GET /jobs`` pages read.
        requests: HTTP requests made (retries included).
        caught_up: The scan reached the region seen before (no backlog left).
        rate_limited: A 429 ended the pass early; its progress is kept in the cursor.
        error: Another API failure that ended the pass early.
        lag_s: How long rows at the head may have waited unseen (0 when caught up).
        seconds: Wall time of the pass.
    """

    listed: int = 0
    new: int = 0
    external: int = 0
    in_flight: int = 0
    settled: int = 0
    adopted: int = 0
    refreshed: int = 0
    corrected: int = 0
    failed_jobs: int = 0
    absent: int = 0
    pages: int = 0
    requests: int = 0
    caught_up: bool = False
    rate_limited: bool = False
    error: str | None = None
    lag_s: float = 0.0
    seconds: float = 0.0

    def describe(self) -> str:
        """One log line."""
        state = "caught up" if self.caught_up else "backlog left (resumes next tick)"
        if self.rate_limited:
            state = "rate limited (429): stopped early, progress kept"
        elif self.error:
            state = f"stopped early: {self.error}"
        return (
            f"{state}: {self.new} new job(s) ({self.external} external, {self.in_flight} in flight) of "
            f"{self.listed} listed on {self.pages} page(s); {self.settled} settled, {self.adopted} adopted, "
            f"{self.refreshed} refreshed, {self.corrected} credit correction(s), {self.failed_jobs} failed job(s), "
            f"{self.absent} proven absent; {self.requests} request(s) in {self.seconds:.2f}s; lag {self.lag_s:.1f}s"
        )


@dataclass
class ReconcileResult:
    """The outcome of a pass.

    Attributes:
        summary: Counts for the log.
        cursor: The cursor for the next pass.
        adoptions: SKUs to materialize (their images are stored).
        failed: SKUs whose latest attempt failed since the previous pass.
    """

    summary: ReconcileSummary
    cursor: ReconcileCursor
    adoptions: list[Adoption] = field(default_factory=list)
    failed: list[FailedSku] = field(default_factory=list)


def reconcile(
    client: FlokanClient,
    ledger: CreditLedger,
    store: ImageStore,
    cursor: str | ReconcileCursor | None = None,
    settings: ReconcileSettings = ReconcileSettings(),
    *,
    log: logging.Logger | Any = logger,
) -> ReconcileResult:
    """Run one reconciliation pass.

    Args:
        client: A client of the workspace (``max_attempts=1`` makes a 429 end the pass at once).
        ledger: The credit ledger.
        store: Where adopted images are stored.
        cursor: The previous pass's cursor (object or JSON). None starts from the whole history,
            paged over as many passes as the budget needs. An unreadable cursor is logged and
            replaced by a safe default: the ledger's newest job (or now) minus the overlap, never
            the whole history.
        settings: Paging and budget.
        log: Where to report (a ``logging.Logger`` or a Dagster log manager).

    Returns:
        The summary, the next cursor, the adoptions to materialize and the failed SKUs.
    """
    return _Pass(client, ledger, store, settings, log).run(_decode(cursor, ledger, settings, log))


def _decode(
    cursor: str | ReconcileCursor | None, ledger: CreditLedger, settings: ReconcileSettings, log: Any
) -> ReconcileCursor:
    if isinstance(cursor, ReconcileCursor):
        return cursor
    if cursor is None or cursor == "":
        return ReconcileCursor()
    try:
        return ReconcileCursor.from_json(cursor)
    except CursorError as exc:
        known = ledger.newest_job_created_at()
        newest = as_utc(known) if known is not None else utcnow() - timedelta(seconds=settings.overlap_s)
        log.warning(
            f"reconciliation cursor ignored ({exc}); starting from {newest.isoformat()} minus the overlap window "
            "(the ledger's newest job, or now when the ledger has none)"
        )
        return ReconcileCursor(newest=newest)


class _Pass:
    """The state of one pass (not reusable)."""

    def __init__(self, client: FlokanClient, ledger: CreditLedger, store: ImageStore, settings: ReconcileSettings, log: Any) -> None:
        self.client, self.ledger, self.store, self.settings, self.log = client, ledger, store, settings, log
        self.now = utcnow()
        self.deadline = time.monotonic() + settings.budget_s
        self.summary = ReconcileSummary()
        self.seen: set[str] = set()  # job ids read in this pass
        self.external: set[str] = set()  # new job ids recorded as external in this pass
        self.in_flight: set[str] = set()
        self.to_adopt: list[str] = []  # attempt ids settled onto a completed job
        pending = ledger.in_flight_attempts()
        dead = _claim_shows_dead(ledger, pending)
        self.abandoned = [a for a in pending if a.attempt_id in dead or _age_s(a, self.now) >= settings.stale_after_s]
        self.flying = [self._matcher(a) for a in pending if a.attempt_id not in dead and _age_s(a, self.now) < settings.stale_after_s]

    def run(self, cursor: ReconcileCursor) -> ReconcileResult:
        started, requests = time.monotonic(), self.client.stats.requests
        failures_since = cursor.failures_since or self.now - timedelta(seconds=self.settings.overlap_s)
        cursor = self._scan(cursor)
        if not self._stopped:
            self._settle_unknown()
        if not self._stopped:
            self._refresh_open()
        adoptions = [] if self._stopped else self._adopt()
        failed = self._failed_skus(failures_since)
        s = self.summary
        s.external = len(self.external - self.in_flight)
        s.in_flight = len(self.in_flight & self.external)
        s.adopted = len(adoptions)
        s.requests = self.client.stats.requests - requests
        s.seconds = time.monotonic() - started
        s.lag_s = 0.0 if cursor.resume is None else (self.now - cursor.resume.started).total_seconds()
        return ReconcileResult(
            s, ReconcileCursor(cursor.newest, cursor.ids_at_newest, cursor.resume, self.now), adoptions, failed
        )

    @property
    def _stopped(self) -> bool:
        return self.summary.rate_limited or self.summary.error is not None

    def _time_left(self) -> float:
        return self.deadline - time.monotonic()

    def _call(self, fn: Any, *args: Any) -> Any:
        """Make one API call; a 429 or another API failure ends the pass (None is returned)."""
        try:
            return fn(*args)
        except FlokanRateLimitError as exc:
            self.summary.rate_limited = True
            self.log.warning(f"reconciliation: rate limited ({exc}); ending the pass, progress kept")
        except FlokanNotFoundError:
            raise
        except FlokanError as exc:
            self.summary.error = f"{type(exc).__name__}: {exc}"
            self.log.warning(f"reconciliation: {self.summary.error}; ending the pass, progress kept")
        return None

    # ------------------------------------------------------------------ paging

    def _scan(self, cursor: ReconcileCursor) -> ReconcileCursor:
        """Page from the head (or the saved position) down to the seen region or the budget."""
        position = cursor.resume or ScanPosition(1, cursor.newest, cursor.ids_at_newest, None, (), self.now)
        newest, newest_ids = cursor.newest, cursor.ids_at_newest
        floor = position.stop - timedelta(seconds=self.settings.overlap_s) if position.stop else None
        while self._time_left() > self.settings.reserve_s:
            number = position.page
            page = self._call(self.client.list_jobs, number, self.settings.per_page)
            if page is None:
                break
            self.summary.pages += 1
            if number == 1 and cursor.resume is None and page.jobs and page.jobs[0].created_at:
                head = as_utc(page.jobs[0].created_at)
                if newest is None or head >= newest:
                    ids = tuple(j.job_id for j in page.jobs if j.created_at and as_utc(j.created_at) == head)
                    newest, newest_ids = head, ids if head != newest else tuple({*newest_ids, *ids})
            fresh, examined, reached = [], [], False
            for job in page.jobs:
                if position.done(job):
                    continue
                created = as_utc(job.created_at) if job.created_at else None
                if floor is not None and created is not None and created < floor:
                    reached = True
                    break
                examined.append(job)
                if not (created == position.stop and job.job_id in position.stop_ids):
                    fresh.append(job)
            self._ingest(fresh)
            position = _advanced(position, examined)
            total_pages = page.meta.total_pages
            last_page = len(page.jobs) < self.settings.per_page or (total_pages is not None and number >= total_pages)
            if reached or last_page:
                self.summary.caught_up = True
                return ReconcileCursor(newest, newest_ids, None)
        return ReconcileCursor(newest, newest_ids, position)

    def _ingest(self, jobs: list[Job]) -> None:
        """Record what a page says: new jobs, changed external rows, owned rows to update."""
        self.summary.listed += len(jobs)
        if not jobs:
            return
        held = {r.job_id: r for r in self.ledger.attempts_for_jobs(j.job_id for j in jobs)}
        rows: list[dict[str, Any]] = []
        for job in jobs:
            self.seen.add(job.job_id)
            record = held.get(job.job_id)
            if record is None:
                self.summary.new += 1
                self.summary.failed_jobs += job.status == "failed"
                self.external.add(job.job_id)
                if any(_matches(m, job) for m in self.flying):
                    self.in_flight.add(job.job_id)
                rows.append(_row(job))
            elif record.origin == "external":
                if _differs(record, job):
                    rows.append(_row(job))
                    self._count_refresh(record, job)
            else:
                self._update_owned(record, job)
        self.ledger.record_external_jobs(rows)

    def _update_owned(self, record: AttemptRecord, job: Job) -> None:
        """Bring a Dagster attempt up to date with its job row."""
        if record.status == "pending":
            if not _differs(record, job):
                return
            self.ledger.settle_attempt(record.attempt_id, _row(job))
            self._count_refresh(record, job)
            if job.status == "completed":
                self.to_adopt.append(record.attempt_id)
        elif job.status in TERMINAL_STATUSES and job.credits_consumed is not None and record.credits_consumed != job.credits_consumed:
            self.ledger.finish_attempt(record.attempt_id, status=record.status, credits_consumed=job.credits_consumed)
            self.summary.corrected += 1
            self.log.info(
                f"attempt {record.attempt_id} ({record.asset}/{record.sku}): credits {record.credits_consumed} -> "
                f"{job.credits_consumed} from job {job.job_id}"
            )

    def _count_refresh(self, record: AttemptRecord, job: Job) -> None:
        self.summary.refreshed += 1
        if job.status == "failed" and record.job_status != "failed":
            self.summary.failed_jobs += 1

    # ------------------------------------------------------------------ settling

    def _matcher(self, attempt: AttemptRecord) -> JobMatcher:
        sent = sent_time(attempt, self.client.server_clock.estimate())
        return JobMatcher(RequestFields.of(attempt), sent, window_s=self.settings.window_s)

    def _settle_unknown(self) -> None:
        """Settle unknown (and abandoned pending) attempts onto the jobs the ledger holds as external."""
        for attempt in [*self.ledger.unknown_attempts(), *self.abandoned]:
            if self._time_left() <= 0 or self._stopped:
                return
            matcher = self._matcher(attempt)
            for record in self.ledger.external_jobs_between(matcher.earliest, matcher.latest):
                matcher.consider(_job_of(record))
            job = matcher.best()
            if job is None:
                self._maybe_absent(attempt, matcher)
                continue
            if self.ledger.pending_twins(attempt, attempt.attempt_id):
                # Another SKU's request with the same fields is in flight: this job may be its.
                self.log.info(f"attempt {attempt.attempt_id}: job {job.job_id} matches, but a twin request is in flight; later")
                continue
            if job.status not in TERMINAL_STATUSES:
                try:
                    job = self._call(self.client.get_job, job.job_id) or job
                except FlokanNotFoundError:
                    continue
            try:
                self.ledger.settle_attempt(attempt.attempt_id, _row(job))
            except ValueError as exc:  # another attempt took the job meanwhile
                self.log.warning(f"attempt {attempt.attempt_id}: not settled onto job {job.job_id}: {exc}")
                continue
            self.summary.settled += 1
            self.external.discard(job.job_id)
            self.log.info(f"attempt {attempt.attempt_id} ({attempt.asset}/{attempt.sku}) settled onto job {job.job_id} ({job.status})")
            if job.status == "completed":
                self.to_adopt.append(attempt.attempt_id)

    def _maybe_absent(self, attempt: AttemptRecord, matcher: JobMatcher) -> None:
        """Mark an attempt failed once a caught-up scan shows no job, past the server's own limit (settle_decision)."""
        if not self.summary.caught_up:
            return
        verdict = settle_decision(None, matcher.sent, server_now(self.client.server_clock.estimate()))
        if verdict.decision != "absent":
            return
        self.ledger.finish_attempt(
            attempt.attempt_id, status="failed", credits_consumed=0, error=f"{verdict.reason} (reconciliation)",
        )  # fmt: skip
        self.summary.absent += 1
        self.log.info(f"attempt {attempt.attempt_id} ({attempt.asset}/{attempt.sku}): no job was created; marked failed")

    def _refresh_open(self) -> None:
        """``GET /jobs/:id`` for pending rows with a job id that the listing did not show."""
        for record in self.ledger.open_attempts():
            if record.job_id in self.seen:
                continue
            if self._time_left() <= 0 or self._stopped:
                return
            try:
                job = self._call(self.client.get_job, record.job_id)
            except FlokanNotFoundError:
                self.log.warning(f"job {record.job_id} of ledger row {record.attempt_id} is not found in the workspace")
                continue
            if job is None:
                return
            self.seen.add(job.job_id)
            if record.origin != "external":
                self._update_owned(record, job)
            elif _differs(record, job):
                self.ledger.record_external_jobs([_row(job)])
                self._count_refresh(record, job)

    def _adopt(self) -> list[Adoption]:
        """Store the images of completed jobs settled onto a SKU's attempt."""
        adoptions = []
        for attempt_id in dict.fromkeys(self.to_adopt):
            record = self.ledger.get_attempt(attempt_id)
            if record is None or not (record.asset and record.sku and record.result_url) or record.result_path:
                continue
            try:
                stored = self.store.write(record.asset, record.sku, self.client.download(record.result_url))
            except (FlokanError, ValueError, OSError) as exc:
                self.log.warning(
                    f"{record.asset}/{record.sku}: job {record.job_id} is paid but its image could not be stored "
                    f"({exc}); the next run downloads it without paying"
                )
                continue
            self.ledger.finish_attempt(attempt_id, status="completed", result_path=str(stored.path), result_sha256=stored.sha256)
            adopted = self.ledger.get_attempt(attempt_id) or record
            adoptions.append(Adoption(record.asset, record.sku, adopted, stored))
            self.log.info(f"{record.asset}/{record.sku}: adopted job {record.job_id} ({record.credits_consumed} credits)")
        return adoptions

    def _failed_skus(self, since: datetime) -> list[FailedSku]:
        """SKUs whose latest attempt failed since ``since``, with their count of failed attempts."""
        failed = []
        keys = dict.fromkeys((a.asset, a.sku) for a in self.ledger.failed_since(since) if a.asset and a.sku)
        for asset, sku in keys:
            history = self.ledger.attempts_for(asset=asset, sku=sku)
            latest = max(history, key=lambda a: (a.recorded_at or self.now.replace(tzinfo=None), a.revision or 0))
            if latest.status == "failed":
                count = sum(a.status == "failed" for a in history)
                failed.append(FailedSku(asset, sku, latest.error, latest.job_id, count))  # type: ignore[arg-type]
        return failed


def _claim_shows_dead(ledger: CreditLedger, pending: list[AttemptRecord]) -> set[str]:
    """Attempt ids whose SKU's claim shows their run stopped spending: taken over by another run,
    or still held but its process gone (or, from another host, its heartbeat stopped).

    A run holds a SKU's claim from before its attempt is written until its outcome is, so such a
    pending attempt was abandoned: it is settled now, not after a long stale window. An attempt
    whose SKU has no claim at all is left to the stale window (no evidence either way).
    """
    claims = ledger.claims_on((a.asset, a.sku) for a in pending if a.asset and a.sku and a.run_id)
    dead = set()
    for attempt in pending:
        claim = claims.get((attempt.asset or "", attempt.sku or ""))
        if claim is not None and (claim.run_id != attempt.run_id or not holder_evidence(claim).alive):
            dead.add(attempt.attempt_id)
    return dead


def _advanced(position: ScanPosition, examined: list[Job]) -> ScanPosition:
    """The position after a page whose rows ``examined`` were processed (newest first)."""
    dated = [j for j in examined if j.created_at is not None]
    last, last_ids = position.last, position.last_ids
    if dated:
        oldest = as_utc(dated[-1].created_at)  # type: ignore[arg-type]
        ids = tuple(j.job_id for j in dated if as_utc(j.created_at) == oldest)  # type: ignore[arg-type]
        last_ids = tuple({*last_ids, *ids}) if oldest == last else ids
        last = oldest
    return ScanPosition(position.page + 1, position.stop, position.stop_ids, last, last_ids, position.started)


def _matches(matcher: JobMatcher, job: Job) -> bool:
    """Whether ``job`` is a candidate of ``matcher`` (request fields and time window)."""
    before = len(matcher.candidates)
    matcher.consider(job)
    return len(matcher.candidates) > before


def _differs(record: AttemptRecord, job: Job) -> bool:
    """Whether a job row says more than the ledger row holds."""
    return (
        record.job_status != job.status
        or (job.credits_consumed is not None and record.credits_consumed != job.credits_consumed)
        or (job.result_url is not None and record.result_url != job.result_url)
    )


def _row(job: Job) -> dict[str, Any]:
    return job.model_dump(mode="json", exclude_none=True)


def _job_of(record: AttemptRecord) -> Job:
    """A job row rebuilt from the ledger's external row (for matching)."""
    return Job(
        job_id=record.job_id or "", status=record.job_status or "pending", prompt=record.prompt,
        model_tier=record.model_tier, provider=record.provider, provider_used=record.provider_used,
        image_id=record.image_id, image_url=record.image_url, style_id=record.style_id,
        character_id=record.character_id, result_url=record.result_url, result_image_id=record.result_image_id,
        credits_consumed=record.credits_consumed, processing_ms=record.processing_ms, error=record.error,
        created_at=as_utc(record.job_created_at) if record.job_created_at else None,
        completed_at=as_utc(record.completed_at) if record.completed_at else None,
    )  # fmt: skip


def _age_s(attempt: AttemptRecord, now: datetime) -> float:
    sent = attempt.sent_at or attempt.recorded_at
    return (now - as_utc(sent)).total_seconds() if sent else 0.0


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else as_utc(moment).isoformat()


def _parse_time(value: Any) -> datetime | None:
    if value is None:
        return None
    if not isinstance(value, str):
        raise CursorError(f"expected an ISO timestamp, got {type(value).__name__}")
    return as_utc(datetime.fromisoformat(value))


def _ids(value: Any) -> tuple[str, ...]:
    if value is None:
        return ()
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise CursorError("expected a list of job ids")
    return tuple(value)


def _positive_int(value: Any) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or value < 1:
        raise CursorError(f"expected a page number >= 1, got {value!r}")
    return value
