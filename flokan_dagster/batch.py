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
import time
import traceback
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, Literal

from flokan_dagster.api.client import AsyncFlokanClient
from flokan_dagster.api.concurrency import Slot
from flokan_dagster.api.errors import FlokanError, FlokanUnknownOutcomeError
from flokan_dagster.api.models import Job, ProcessResult
from flokan_dagster.api.retry import utcnow
from flokan_dagster.background import Level, LogFunction
from flokan_dagster.catalog import SkuSpec
from flokan_dagster.image_store import ImageStore, StoredImage
from flokan_dagster.ledger import AttemptRecord, CreditLedger
from flokan_dagster.settle import TERMINAL_STATUSES, JobMatcher, RequestFields, as_utc, find_job_async

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
    """

    spec: SkuSpec
    fingerprint: str
    upstream: AttemptRecord | None = None
    unsettled: list[AttemptRecord] = field(default_factory=list)
    reuse: AttemptRecord | None = None
    estimated_credits: int | None = None


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
    """

    sku: str
    kind: OutcomeKind
    record: AttemptRecord | None = None
    stored: StoredImage | None = None
    error: str | None = None
    seconds: float = 0.0
    credits_spent: int = 0
    requests: int = 0


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

    async def run(self, tasks: list[SkuTask]) -> AsyncIterator[SkuOutcome]:
        """Produce every task concurrently; yield each outcome as soon as it is known."""
        pending = {asyncio.ensure_future(self._timed(task)) for task in tasks}
        try:
            for next_done in asyncio.as_completed(pending):
                yield await next_done
        finally:
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
        for earlier in task.unsettled:
            adopted = await self._settle_earlier(earlier, sku)
            if adopted is not None:
                return adopted
        image_id, image_url = await self._source(task)
        for attempt_number in (1, 2):
            # First the controller's slot (it may wait for the rate limit), then whatever must
            # hold right before the request goes out, then the send under that same slot. The
            # write-ahead record is made here, so its sent_at stays within the settle window
            # however long the batch's queue is.
            async with self.client.concurrency.slot("process") as slot:
                record, outcome = await self._send(task, image_id, image_url, counter, slot)
            if isinstance(outcome, ProcessResult):
                counter.credits += outcome.credits_consumed or 0
                return await self._complete(record, sku, outcome, "made")
            exc = outcome
            await asyncio.to_thread(self.ledger.finish_attempt, record.attempt_id, status="unknown", error=str(exc))
            self.log("warning", f"SKU {sku!r}: outcome unknown ({exc.cause}); looking the job up in GET /jobs")
            job = await self._lookup(RequestFields.of(exc.request), exc.sent_at, record.attempt_id)
            if job is None and attempt_number == 1:
                await asyncio.to_thread(
                    self.ledger.finish_attempt, record.attempt_id, status="failed", credits_consumed=0,
                    error=f"{exc.cause}: no job was created (absent from GET /jobs); tried again",
                )  # fmt: skip
                continue
            if job is not None and job.status == "completed":
                counter.credits += job.credits_consumed or 0
            return await self._adopt(record, sku, job, str(exc))
        raise SkuFailed("no job was created after two attempts")  # pragma: no cover - loop always returns

    async def _send(
        self, task: SkuTask, image_id: str | None, image_url: str | None, counter: _Counter, slot: Slot
    ) -> tuple[AttemptRecord, ProcessResult | FlokanUnknownOutcomeError]:
        """Write the attempt, then call ``/process`` under ``slot``; a refusal raises SkuFailed."""
        fields: dict[str, Any] = dict(
            asset=self.asset, sku=task.spec.sku, prompt=task.spec.prompt, model_tier=task.spec.model_tier,
            provider=task.spec.provider or "platform", fingerprint=task.fingerprint, run_id=self.run_id,
            image_id=image_id, image_url=image_url, style_id=task.spec.style_id,
            character_id=task.spec.character_id, source_ref=_source_ref(task),
            estimated_credits=task.estimated_credits, sent_at=utcnow(),
        )  # fmt: skip
        attempt_id = await asyncio.to_thread(functools.partial(self.ledger.begin_attempt, **fields))
        # The row as written, kept in memory: reading it back for every SKU would cost more than the call.
        record = AttemptRecord(attempt_id=attempt_id, status="pending", origin="dagster", **fields)
        counter.requests += 1
        try:
            result = await self.client.process(
                task.spec.prompt, task.spec.model_tier, image_id=image_id, image_url=image_url,
                style_id=task.spec.style_id, character_id=task.spec.character_id, provider=task.spec.provider,
                slot=slot,
            )  # fmt: skip
        except FlokanUnknownOutcomeError as exc:
            return record, exc
        except FlokanError as exc:
            status = "rejected" if exc.status_code is not None and exc.status_code < 500 else "failed"
            await asyncio.to_thread(
                self.ledger.finish_attempt, record.attempt_id, status=status, credits_consumed=0, error=str(exc)
            )
            raise SkuFailed(f"{type(exc).__name__}: {exc}") from None
        return record, result

    async def _source(self, task: SkuTask) -> tuple[str | None, str | None]:
        """The ``image_id`` / ``image_url`` to edit (uploading a local file first), or neither."""
        if task.upstream is not None:
            if not task.upstream.result_image_id:
                raise SkuFailed(f"upstream {task.upstream.asset} has no result_image_id for this SKU")
            return task.upstream.result_image_id, None
        source = task.spec.source
        if source is None:
            return None, None
        if source.kind == "url":
            return None, source.value
        try:
            return await self.client.upload_image(source.value, mime_type=source.mime_type), None
        except FlokanError as exc:
            raise SkuFailed(f"uploading {source.value!r} failed: {exc}") from None

    async def _complete(self, record: AttemptRecord, sku: str, result: ProcessResult | Job, kind: OutcomeKind) -> SkuOutcome:
        """Record a finished job at once (it is paid), then download and store its image."""
        fields = _result_fields(result)
        await asyncio.to_thread(functools.partial(self.ledger.finish_attempt, record.attempt_id, status="completed", **fields))
        return await self._store_result(dataclasses.replace(record, status="completed", **fields), sku, kind)

    async def _store_result(self, record: AttemptRecord, sku: str, kind: OutcomeKind) -> SkuOutcome:
        """Download a paid job's image into the store and record where it is."""
        if not record.result_url:
            raise SkuFailed(f"job {record.job_id} completed without a result_url")
        try:
            data = await self.client.download(record.result_url)
            stored = await asyncio.to_thread(self.store.write, self.asset, sku, data)
        except (FlokanError, ValueError, OSError) as exc:
            raise SkuFailed(
                f"job {record.job_id} is paid but its image could not be stored ({exc}); the next run downloads it "
                "again without paying (force=True regenerates)"
            ) from None
        await asyncio.to_thread(
            self.ledger.finish_attempt, record.attempt_id, status="completed",
            result_path=str(stored.path), result_sha256=stored.sha256,
        )  # fmt: skip
        record = dataclasses.replace(record, result_path=str(stored.path), result_sha256=stored.sha256)
        return SkuOutcome(sku, kind, record=record, stored=stored)

    async def _adopt(self, record: AttemptRecord, sku: str, job: Job | None, why: str) -> SkuOutcome:
        """Settle an unknown attempt onto its job, or leave it unknown for the sensor."""
        if job is None or job.status not in TERMINAL_STATUSES:
            state = "its job was not found" if job is None else f"job {job.job_id} is still {job.status}"
            raise SkuFailed(
                f"outcome unknown after {self.settle.timeout_s:.0f}s ({state}); the attempt is left unsettled in the "
                "ledger for the reconciliation sensor; it will not be paid twice"
            )
        try:
            await asyncio.to_thread(self.ledger.settle_attempt, record.attempt_id, job.model_dump(mode="json"))
        except ValueError as exc:  # another attempt took the job between the lookup and now
            raise SkuFailed(f"cannot adopt job {job.job_id}: {exc}") from None
        if job.status == "failed":
            raise SkuFailed(f"job {job.job_id} failed: {job.error or why}")
        self.log("info", f"SKU {sku!r}: adopted job {job.job_id} instead of paying again")
        return await self._complete(dataclasses.replace(record, origin="reconciled"), sku, job, "adopted")

    async def _settle_earlier(self, earlier: AttemptRecord, sku: str) -> SkuOutcome | None:
        """Settle an attempt a previous run left unknown; its finished job is adopted."""
        sent_at = as_utc(earlier.sent_at) if earlier.sent_at else utcnow()
        job = await self._lookup(RequestFields.of(earlier), sent_at, earlier.attempt_id)
        if job is None:
            await asyncio.to_thread(
                self.ledger.finish_attempt, earlier.attempt_id, status="failed", credits_consumed=0,
                error="no job was created (absent from GET /jobs)",
            )  # fmt: skip
            return None
        if job.status == "failed":
            await asyncio.to_thread(self.ledger.settle_attempt, earlier.attempt_id, job.model_dump(mode="json"))
            return None
        return await self._adopt(earlier, sku, job, "earlier attempt")

    async def _lookup(self, fields: RequestFields, sent_at: datetime, attempt_id: str) -> Job | None:
        """:meth:`_find`, failing the SKU by name when ``GET /jobs`` itself fails.

        The attempt stays ``unknown`` (or ``pending``): its job may be paid, so the SKU is not sent
        again until the job is found or proven absent, by a later run or the reconciliation sensor.
        """
        try:
            return await self._find(fields, sent_at, attempt_id)
        except FlokanError as exc:
            raise SkuFailed(
                f"outcome unknown and looking its job up in GET /jobs failed ({type(exc).__name__}: {exc}); "
                f"attempt {attempt_id} left unsettled in the ledger for the reconciliation sensor; "
                "it will not be paid twice"
            ) from None

    async def _find(self, fields: RequestFields, sent_at: datetime, attempt_id: str) -> Job | None:
        """Look for the job of a sent request until it is terminal, proven absent, or time runs out."""
        deadline = time.monotonic() + self.settle.timeout_s
        misses = 0
        while True:
            matcher = JobMatcher(fields, sent_at)
            await find_job_async(self.client, matcher)
            owned = await asyncio.to_thread(
                self.ledger.owned_job_ids, [job.job_id for job in matcher.candidates], attempt_id
            )
            matcher.candidates = [job for job in matcher.candidates if job.job_id not in owned]
            job = matcher.best()
            if job is not None and job.status not in TERMINAL_STATUSES:
                job = await self.client.get_job(job.job_id)
            if job is not None and job.status in TERMINAL_STATUSES:
                return job
            misses += job is None
            # A job is created when /process is accepted, so two clean misses prove it absent.
            if misses >= 2 or time.monotonic() + self.settle.poll_s > deadline:
                return job
            await asyncio.sleep(self.settle.poll_s)


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
