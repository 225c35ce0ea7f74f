"""Generate or edit the images of a batch of SKUs concurrently, each with its own outcome.

Per SKU: settle any earlier attempt whose outcome is unknown, upload a local source, write the
attempt to the ledger, call ``/process``, record the job at once (it is paid), then download and
store the image. An unknown outcome is looked up in ``GET /jobs`` and adopted; the SKU is tried
again only when its job is proven absent. Outcomes are yielded as SKUs finish, so the asset can
materialize each partition as soon as it is done.
"""

from __future__ import annotations

import asyncio
import dataclasses
import functools
import logging
import math
import time
import traceback
import uuid
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any, Literal

from flokan_dagster.api.client import AsyncFlokanClient
from flokan_dagster.api.concurrency import Slot
from flokan_dagster.api.errors import FlokanError, FlokanUnknownOutcomeError
from flokan_dagster.api.models import Job, ProcessResult
from flokan_dagster.api.retry import utcnow
from flokan_dagster.background import Level, LogFunction
from flokan_dagster.catalog import SkuSpec
from flokan_dagster.image_store import ImageStore, StoredImage, thumbnail_data_uri
from flokan_dagster.ledger import AttemptRecord, CreditLedger, LedgerLockedError
from flokan_dagster.ledger.store import SendCheck
from flokan_dagster.settle import (
    TERMINAL_STATUSES,
    JobMatcher,
    RequestFields,
    Settlement,
    find_job_async,
    sent_time,
    server_now,
    settle_decision,
)

logger = logging.getLogger("flokan_dagster.batch")

OutcomeKind = Literal["made", "adopted", "reused", "failed"]


@dataclass
class SkuTask:
    """One SKU to produce in a batch.

    Attributes:
        spec: The validated catalog request.
        fingerprint: Hash of the inputs (with the upstream image for chained edits).
        upstream: The upstream asset's completed attempt, for a chained edit.
        unsettled: Earlier attempts with this fingerprint whose outcome is unknown.
        reuse: A completed, paid attempt with this fingerprint whose image must be downloaded again.
        estimated_credits: The per-call upper bound from ``/estimate-credits``.
        known_results: The latest completed attempt with this fingerprint the plan saw (and chose
            not to reuse, e.g. ``force``); only a result finished since then is reused at send time.
    """

    spec: SkuSpec
    fingerprint: str
    upstream: AttemptRecord | None = None
    unsettled: list[AttemptRecord] = field(default_factory=list)
    reuse: AttemptRecord | None = None
    estimated_credits: int | None = None
    known_results: frozenset[str] = frozenset()


@dataclass
class SkuOutcome:
    """What happened to one SKU.

    Attributes:
        sku: The partition key.
        kind: made (new job), adopted (an unknown outcome's job found and used), reused (an
            unchanged SKU's stored image), failed.
        record: The ledger row of the job the image came from.
        stored: The stored image, when there is one.
        error: Why it failed.
        seconds: Wall time spent on this SKU in this run.
        credits_spent: Credits this run spent on the SKU (0 when reused).
        requests: ``POST /process`` calls made for the SKU in this run.
        thumbnail: The stored image as a small JPEG ``data:`` URI, made on a worker thread from
            the downloaded bytes (None: the materialization makes it from the stored file).
    """

    sku: str
    kind: OutcomeKind
    record: AttemptRecord | None = None
    stored: StoredImage | None = None
    error: str | None = None
    seconds: float = 0.0
    credits_spent: int = 0
    requests: int = 0
    thumbnail: str | None = None


class SkuFailed(Exception):
    """One SKU cannot be produced in this run; the message says why."""


@dataclass(frozen=True)
class SettleSettings:
    """How long a run looks for the job of an unknown outcome.

    Attributes:
        timeout_s: Total time to wait for the job to appear and finish.
        poll_s: Pause between looks.
    """

    timeout_s: float = 120.0
    poll_s: float = 2.0


class BatchRunner:
    """Runs the ``/process`` work of one asset's batch.

    Args:
        client: The async client (its concurrency controller paces the batch).
        ledger: The credit ledger.
        store: Where result images go.
        asset: The asset key string, as recorded in the ledger.
        run_id: The Dagster run id.
        settle: Unknown-outcome settling bounds.
        log: ``log(level, message)``; by default Python logging.
    """

    def __init__(
        self,
        *,
        client: AsyncFlokanClient,
        ledger: CreditLedger,
        store: ImageStore,
        asset: str,
        run_id: str | None,
        settle: SettleSettings = SettleSettings(),
        log: LogFunction | None = None,
    ) -> None:
        self.client = client
        self.ledger = ledger
        self.store = store
        self.asset = asset
        self.run_id = run_id
        self.settle = settle
        self.log: LogFunction = log or _python_log
        self._checks = _SendChecks(ledger, asset, run_id or "")
        self._merges = _SpoolMerges(ledger, after=self._checks.read_done)

    async def run(self, tasks: list[SkuTask]) -> AsyncIterator[SkuOutcome]:
        """Produce every task concurrently; yield each outcome as soon as it is known."""
        self._checks.expect(tasks)
        merging = asyncio.ensure_future(self._merges.run())
        pending = {asyncio.ensure_future(self._timed(task)) for task in tasks}
        try:
            for next_done in asyncio.as_completed(pending):
                yield await next_done
            await asyncio.to_thread(self.ledger.merge_spooled)
        finally:
            merging.cancel()
            for future in pending:
                future.cancel()

    async def _timed(self, task: SkuTask) -> SkuOutcome:
        started = time.monotonic()
        counter = _Counter()
        try:
            outcome = await self._produce(task, counter)
        except SkuFailed as exc:
            outcome = SkuOutcome(task.spec.sku, "failed", error=str(exc))
        except Exception as exc:  # one SKU's bug or outage must not take the batch down
            self.log("error", f"SKU {task.spec.sku!r}: unexpected error\n{traceback.format_exc()}")
            outcome = SkuOutcome(task.spec.sku, "failed", error=f"unexpected {type(exc).__name__}: {exc}")
        outcome.seconds = time.monotonic() - started
        outcome.requests = counter.requests
        outcome.credits_spent = counter.credits
        return outcome

    async def _produce(self, task: SkuTask, counter: _Counter) -> SkuOutcome:
        sku = task.spec.sku
        if task.reuse is not None:
            return await self._store_result(task.reuse, sku, "reused")
        settled: set[str] = set()
        for earlier in task.unsettled:
            settled.add(earlier.attempt_id)
            adopted = await self._settle_earlier(earlier, sku)
            if adopted is not None:
                return adopted
        image_id, image_url = await self._source(task)
        for attempt_number in (1, 2):
            while True:
                # First the controller's slot (it may wait for the rate limit), then the claim check
                # that must hold right before the request goes out, then the send under that same
                # slot. The write-ahead record is made the instant before it is on the wire, so its
                # sent_at stays within the settle window however long the batch's queue is.
                async with self.client.concurrency.slot("process") as slot:
                    check = await self._check_before_send(task)
                    if check.reusable is not None and check.reusable.attempt_id in task.known_results:
                        check = dataclasses.replace(check, reusable=None)
                    if check.reusable is None and not _new(check.unsettled, settled):
                        record, outcome = await self._send(task, image_id, image_url, counter, slot)
                        break
                # Another run finished or left an attempt since this one planned: no new job for it.
                if check.reusable is not None:
                    self.log("info", f"SKU {sku!r}: a finished result appeared since planning; reused, not paid again")
                    return await self._store_result(check.reusable, sku, "reused")
                for earlier in _new(check.unsettled, settled):
                    settled.add(earlier.attempt_id)
                    adopted = await self._settle_earlier(earlier, sku)
                    if adopted is not None:
                        return adopted
            if isinstance(outcome, ProcessResult):
                counter.credits += outcome.credits_consumed or 0
                return await self._complete(record, sku, outcome, "made")
            exc = outcome
            await asyncio.to_thread(self.ledger.finish_attempt, record.attempt_id, status="unknown", error=str(exc))
            self.log("warning", f"SKU {sku!r}: outcome unknown ({exc.cause}); looking the job up in GET /jobs")
            verdict = await self._lookup(record)
            if verdict.decision == "absent" and attempt_number == 1:
                await asyncio.to_thread(
                    self.ledger.finish_attempt, record.attempt_id, status="failed", credits_consumed=0,
                    error=f"{exc.cause}: {verdict.reason}; sent again",
                )  # fmt: skip
                continue
            if verdict.job is not None and verdict.job.status == "completed" and verdict.decision == "adopt":
                counter.credits += verdict.job.credits_consumed or 0
            return await self._adopt(record, sku, verdict)
        raise SkuFailed("no job was created after two attempts")  # pragma: no cover - loop always returns

    async def _check_before_send(self, task: SkuTask) -> SendCheck:
        """Right before a send: the claim is still this run's; a finished or unsettled attempt shows up.

        Raises:
            SkuFailed: Another run holds the SKU's claim now, or the ledger cannot be read.
        """
        sku = task.spec.sku
        try:
            check = await self._checks.get(sku)
        except LedgerLockedError as exc:
            raise SkuFailed(f"the claim could not be checked before sending ({exc}); not sent, nothing paid") from None
        if self.run_id is not None and (check.holder is None or check.holder.run_id != self.run_id):
            holder = "nobody" if check.holder is None else f"run {check.holder.run_id}"
            raise SkuFailed(
                f"SKU {sku!r} is no longer claimed by this run (held by {holder}); not sending a second request"
            )
        return check

    async def _send(
        self, task: SkuTask, image_id: str | None, image_url: str | None, counter: _Counter, slot: Slot
    ) -> tuple[AttemptRecord, ProcessResult | FlokanUnknownOutcomeError]:
        """Call ``/process``, writing the attempt the instant before it goes out; a refusal raises SkuFailed.

        The write-ahead record is made durable in the spool (no wait for the database) right
        before the request is on the wire (under ``slot``), so a record without a job means a request that was
        at most that instant from being sent, and its sent_at is when it left.
        """
        fields: dict[str, Any] = dict(
            asset=self.asset, sku=task.spec.sku, prompt=task.spec.prompt, model_tier=task.spec.model_tier,
            provider=task.spec.provider or "platform", fingerprint=task.fingerprint, run_id=self.run_id,
            image_id=image_id, image_url=image_url, style_id=task.spec.style_id,
            character_id=task.spec.character_id, source_ref=_source_ref(task),
            estimated_credits=task.estimated_credits,
        )  # fmt: skip
        attempt_id = str(uuid.uuid4())
        written = False

        async def write_ahead() -> None:
            nonlocal written
            if written:
                return
            fields["sent_at"] = utcnow()
            clock = self.client.server_clock.estimate()
            if clock is not None:  # kept with the attempt: whoever settles it compares on the server's clock
                fields.update(server_sent_at=clock.to_server(fields["sent_at"]), clock_error_ms=math.ceil(clock.error_s * 1000))
            try:
                await asyncio.to_thread(
                    functools.partial(self.ledger.begin_attempt, attempt_id=attempt_id, merge=False, **fields)
                )
            except LedgerLockedError as exc:  # a shared ledger out of reach: no record, so no request
                raise SkuFailed(str(exc)) from None
            written = True
            self._merges.wanted()

        counter.requests += 1
        try:
            result = await self.client.process(
                task.spec.prompt, task.spec.model_tier, image_id=image_id, image_url=image_url,
                style_id=task.spec.style_id, character_id=task.spec.character_id, provider=task.spec.provider,
                slot=slot, before_send=write_ahead,
            )  # fmt: skip
        except FlokanUnknownOutcomeError as exc:
            await write_ahead()
            return self._written(attempt_id, fields), exc
        except FlokanError as exc:
            await write_ahead()  # refused before sending (a rule): recorded all the same
            status = "rejected" if exc.status_code is not None and exc.status_code < 500 else "failed"
            await asyncio.to_thread(
                self.ledger.finish_attempt, attempt_id, status=status, credits_consumed=0, error=str(exc)
            )
            raise SkuFailed(f"{type(exc).__name__}: {exc}") from None
        await write_ahead()
        return self._written(attempt_id, fields), result

    @staticmethod
    def _written(attempt_id: str, fields: dict[str, Any]) -> AttemptRecord:
        # The row as written, kept in memory: reading it back for every SKU would cost more than the call.
        return AttemptRecord(attempt_id=attempt_id, status="pending", origin="dagster", **fields)

    async def _source(self, task: SkuTask) -> tuple[str | None, str | None]:
        """The ``image_id`` / ``image_url`` to edit (uploading a local file first), or neither."""
        if task.upstream is not None:
            upstream = task.upstream
            if not upstream.result_image_id and upstream.job_id:
                upstream = await self._filled(upstream)  # optional in job rows; a chained edit needs it
            if not upstream.result_image_id:
                raise SkuFailed(f"upstream {upstream.asset} has no result_image_id for this SKU (job {upstream.job_id})")
            return upstream.result_image_id, None
        source = task.spec.source
        if source is None:
            return None, None
        if source.kind == "url":
            return None, source.value
        try:
            return await self.client.upload_image(source.value, mime_type=source.mime_type), None
        except FlokanError as exc:
            raise SkuFailed(f"uploading {source.value!r} failed: {exc}") from None

    async def _filled(self, record: AttemptRecord) -> AttemptRecord:
        """``record`` with ``result_url`` / ``result_image_id`` a job listing omitted, from ``GET /jobs/:id``."""
        try:
            job = await self.client.get_job(record.job_id or "")
        except FlokanError as exc:
            raise SkuFailed(f"job {record.job_id}: its row lacks result fields and GET /jobs/:id failed ({exc})") from None
        result_url, result_image_id = job.result_url or record.result_url, job.result_image_id or record.result_image_id
        await asyncio.to_thread(functools.partial(
            self.ledger.finish_attempt, record.attempt_id, status=record.status,
            result_url=result_url, result_image_id=result_image_id,
        ))  # fmt: skip
        return dataclasses.replace(record, result_url=result_url, result_image_id=result_image_id)

    async def _complete(self, record: AttemptRecord, sku: str, result: ProcessResult | Job, kind: OutcomeKind) -> SkuOutcome:
        """Record a finished job at once (it is paid), then download and store its image."""
        fields = _result_fields(result)
        # Durable in the spool at once (the job is paid); merged into the database with the batch's other records.
        await asyncio.to_thread(
            functools.partial(self.ledger.finish_attempt, record.attempt_id, status="completed", merge=False, **fields)
        )
        self._merges.wanted()
        return await self._store_result(dataclasses.replace(record, status="completed", **fields), sku, kind)

    async def _store_result(self, record: AttemptRecord, sku: str, kind: OutcomeKind) -> SkuOutcome:
        """Download a paid job's image into the store and record where it is."""
        if not record.result_url and record.job_id:
            record = await self._filled(record)
        if not record.result_url:
            raise SkuFailed(f"job {record.job_id} completed without a result_url")
        try:
            data = await self.client.download(record.result_url)
            stored, thumbnail = await asyncio.to_thread(self._store_with_thumbnail, sku, data)
        except (FlokanError, ValueError, OSError) as exc:
            raise SkuFailed(
                f"job {record.job_id} is paid but its image could not be stored ({exc}); the next run downloads it "
                "again without paying (force=True regenerates)"
            ) from None
        await asyncio.to_thread(functools.partial(
            self.ledger.finish_attempt, record.attempt_id, status="completed",
            result_path=str(stored.path), result_sha256=stored.sha256, merge=False,
        ))  # fmt: skip
        self._merges.wanted()
        record = dataclasses.replace(record, result_path=str(stored.path), result_sha256=stored.sha256)
        return SkuOutcome(sku, kind, record=record, stored=stored, thumbnail=thumbnail)

    def _store_with_thumbnail(self, sku: str, data: bytes) -> tuple[StoredImage, str | None]:
        """Store ``data``, and make its thumbnail while the bytes are at hand (a worker thread, not
        the step's, which handles every SKU's Dagster events in turn)."""
        stored = self.store.write(self.asset, sku, data)
        try:
            return stored, thumbnail_data_uri(data)
        except (OSError, ValueError):  # stored and decodable, so unexpected: the materialization tries again
            return stored, None

    async def _adopt(self, record: AttemptRecord, sku: str, verdict: Settlement) -> SkuOutcome:
        """Settle an unknown attempt onto its finished job, or leave it unknown to be settled later."""
        job = verdict.job
        if verdict.decision != "adopt" or job is None:
            raise SkuFailed(
                f"outcome unknown, will be settled: {verdict.reason} (looked for {self.settle.timeout_s:.0f} s); "
                f"attempt {record.attempt_id} is left unsettled in the ledger for the next run or the reconciliation "
                "sensor; it will not be paid twice"
            )
        job = await self._full_row(job)
        try:
            await asyncio.to_thread(self.ledger.settle_attempt, record.attempt_id, job.model_dump(mode="json"))
        except ValueError as exc:  # another attempt took the job between the lookup and now
            raise SkuFailed(f"cannot adopt job {job.job_id}: {exc}") from None
        if job.status == "failed":
            raise SkuFailed(f"job {job.job_id} failed: {job.error or 'no error given'}")
        self.log("info", f"SKU {sku!r}: adopted job {job.job_id} instead of paying again")
        return await self._complete(dataclasses.replace(record, origin="reconciled"), sku, job, "adopted")

    async def _full_row(self, job: Job) -> Job:
        """``job`` with the optional fields a listing left out filled from ``GET /jobs/:id``."""
        if job.status != "completed" or (job.result_url and job.result_image_id):
            return job
        try:
            return await self.client.get_job(job.job_id)
        except FlokanError:
            return job  # what the listing said is still the truth about the charge

    async def _settle_earlier(self, earlier: AttemptRecord, sku: str) -> SkuOutcome | None:
        """Settle an attempt another run left unsettled; its finished job is adopted.

        Returns None when it is settled without a result (proven absent, or its job failed), so
        the SKU may be sent; raises SkuFailed while its outcome stays unknown.
        """
        verdict = await self._lookup(earlier)
        if verdict.decision == "absent":
            await asyncio.to_thread(
                self.ledger.finish_attempt, earlier.attempt_id, status="failed", credits_consumed=0, error=verdict.reason,
            )  # fmt: skip
            return None
        if verdict.decision == "adopt" and verdict.job is not None and verdict.job.status == "failed":
            await asyncio.to_thread(self.ledger.settle_attempt, earlier.attempt_id, verdict.job.model_dump(mode="json"))
            return None
        if verdict.decision != "adopt":
            run = f" of run {earlier.run_id}" if earlier.run_id else ""
            raise SkuFailed(
                f"outcome unknown, will be settled: earlier attempt {earlier.attempt_id}{run} was sent and "
                f"{verdict.reason}; not sending again until it is settled by the next run or the reconciliation "
                "sensor; it will not be paid twice"
            )
        return await self._adopt(earlier, sku, verdict)

    async def _lookup(self, attempt: AttemptRecord) -> Settlement:
        """:meth:`_find`, failing the SKU by name when ``GET /jobs`` itself fails.

        The attempt stays ``unknown`` (or ``pending``): its job may be paid, so the SKU is not sent
        again until the job is found or proven absent, by a later run or the reconciliation sensor.
        """
        try:
            return await self._find(attempt)
        except FlokanError as exc:
            raise SkuFailed(
                f"outcome unknown and looking its job up in GET /jobs failed ({type(exc).__name__}: {exc}); "
                f"attempt {attempt.attempt_id} left unsettled in the ledger for the reconciliation sensor; "
                "it will not be paid twice"
            ) from None

    async def _find(self, attempt: AttemptRecord) -> Settlement:
        """Look for a sent request's job until :func:`settle_decision` adopts or proves it absent,
        or time runs out (then its last word, ``wait``, stands)."""
        fields = RequestFields.of(attempt)
        deadline = time.monotonic() + self.settle.timeout_s
        while True:
            # Every comparison on the server's clock; re-read each time, the listing refines it.
            sent = sent_time(attempt, self.client.server_clock.estimate())
            matcher = JobMatcher(fields, sent)
            await find_job_async(self.client, matcher)
            owned = await asyncio.to_thread(
                self.ledger.owned_job_ids, [job.job_id for job in matcher.candidates], attempt.attempt_id
            )
            matcher.candidates = [job for job in matcher.candidates if job.job_id not in owned]
            job = matcher.best()
            if job is not None and job.status not in TERMINAL_STATUSES:
                job = await self.client.get_job(job.job_id)
            twins = bool(job) and bool(await asyncio.to_thread(self.ledger.pending_twins, fields, attempt.attempt_id))
            clock = self.client.server_clock.estimate()
            verdict = settle_decision(job, sent_time(attempt, clock), server_now(clock), twin_pending=twins)
            if verdict.decision != "wait" or time.monotonic() + self.settle.poll_s > deadline:
                return verdict
            await asyncio.sleep(self.settle.poll_s)


class _SendChecks:
    """The ledger's word on the batch's SKUs before each send, read for all of them at once.

    Sends that start together (a batch opening, slots freeing up) share one read, not one each:
    every read-only open is a moment another process cannot open the file read-write.
    """

    def __init__(self, ledger: CreditLedger, asset: str, run_id: str, fresh_s: float = 1.0) -> None:
        self.ledger, self.asset, self.run_id, self.fresh_s = ledger, asset, run_id, fresh_s
        self._fingerprints: dict[str, str] = {}
        self._checks: dict[str, SendCheck] = {}
        self._read_at = -float("inf")
        self._lock = asyncio.Lock()
        #: Set as each read ends: the batch's merges go right after one, not in the way of the next.
        self.read_done = asyncio.Event()

    def expect(self, tasks: list[SkuTask]) -> None:
        """The SKUs (and fingerprints) the batch may send."""
        self._fingerprints.update({task.spec.sku: task.fingerprint for task in tasks})

    async def get(self, sku: str) -> SendCheck:
        """The check for ``sku``, read at most ``fresh_s`` ago (after this call began waiting)."""
        asked = time.monotonic()
        async with self._lock:
            if self._read_at < asked - self.fresh_s or sku not in self._checks:
                self._checks = await asyncio.to_thread(self.ledger.send_checks, self.asset, self._fingerprints, self.run_id)
                self._read_at = time.monotonic()
                self.read_done.set()
            return self._checks[sku]


class _SpoolMerges:
    """Merges the batch's ledger records into the database in groups, away from every send.

    Each record is durable in the spool the moment it is written (fsync'd and renamed; reads
    see it at once), so merging it can wait a little. A merge costs about the same for one record
    as for thirty (open the file, one transaction, a checkpoint when one is due), and it holds the
    ledger's lock that the check right before each send also needs: merged one by one, a batch
    at ten SKUs a second kept that lock busy most of the time. Here one merge takes every record
    written since the last, at most every ``min_interval_s`` and for at most ``busy_share`` of
    the time (a slow merge on a busy machine spaces the next one out), each right after a
    send-time read ends (``after``) so that the next read finds the ledger free and the spool short.
    """

    def __init__(
        self, ledger: CreditLedger, min_interval_s: float = 0.5, busy_share: float = 1 / 3, after: asyncio.Event | None = None
    ) -> None:
        self.ledger, self.min_interval_s, self.busy_share = ledger, min_interval_s, busy_share
        self._wanted = asyncio.Event()
        self._after = after

    def wanted(self) -> None:
        """A record was spooled: merge it with the next group."""
        self._wanted.set()

    async def run(self) -> None:
        """Merge groups until cancelled (the batch merges what is left when it ends)."""
        while True:
            await self._wanted.wait()
            if self._after is not None:
                # Sends wait for the send-time read, and a read waits for a merge in progress: so a
                # merge goes right after a read ends (or after a short wait when no read comes).
                self._after.clear()
                try:
                    await asyncio.wait_for(self._after.wait(), timeout=2 * self.min_interval_s)
                except TimeoutError:
                    pass
            self._wanted.clear()
            started = time.monotonic()
            try:
                await asyncio.to_thread(self.ledger.merge_spooled)
            except Exception:  # the records stay durable in the spool; the batch's last merge reports it
                logger.warning("merging the batch's spooled ledger records failed; trying again later", exc_info=True)
            took = time.monotonic() - started
            await asyncio.sleep(max(self.min_interval_s, took * (1 / self.busy_share - 1)))


def _python_log(level: Level, message: str) -> None:
    getattr(logger, level)(message)


@dataclass
class _Counter:
    requests: int = 0
    credits: int = 0


def _source_ref(task: SkuTask) -> str | None:
    if task.upstream is not None:
        return f"upstream:{task.upstream.asset}:{task.upstream.result_sha256}"
    source = task.spec.source
    if source is None:
        return None
    return f"file:{source.value}#sha256={source.sha256}" if source.kind == "file" else source.value


def _new(attempts: list[AttemptRecord], settled: set[str]) -> list[AttemptRecord]:
    return [a for a in attempts if a.attempt_id not in settled]


def _result_fields(result: ProcessResult | Job) -> dict[str, Any]:
    return {
        "job_id": result.job_id,
        "credits_consumed": result.credits_consumed,
        "processing_ms": result.processing_ms,
        "result_url": result.result_url,
        "result_image_id": result.result_image_id,
        "job_created_at": result.created_at,
        "completed_at": result.completed_at,
        "provider_used": result.provider_used,
    }
