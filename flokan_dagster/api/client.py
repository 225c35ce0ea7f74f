"""``FlokanClient`` and ``AsyncFlokanClient``: every endpoint of Flokan's Image Editor API.

Both clients validate requests before sending, never send the API key anywhere but Flokan's API,
retry only what cannot pay twice, pace themselves by ``X-RateLimit-*``, and raise a
:class:`~flokan_dagster.api.errors.FlokanError` subclass for every failure.

Example:
    >>> client = FlokanClient(api_key="flk_...", base_url="http://127.0.0.1:8000/api/v1/image-editor")  # doctest: +SKIP
    >>> result = client.process("Studio photo of a red mug", "standard")  # doctest: +SKIP
    >>> image = client.download(result.result_url)  # doctest: +SKIP
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterable, Iterator
from datetime import datetime
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import httpx

from flokan_dagster.api import rules
from flokan_dagster.api.concurrency import CallKind, ConcurrencyController, Slot
from flokan_dagster.api.errors import FlokanValidationError, RateLimitState
from flokan_dagster.api.models import (
    CreditEstimate,
    EstimateRequest,
    Job,
    JobPage,
    PageMeta,
    ProcessRequest,
    ProcessResult,
    UploadTicket,
    UploadUrlRequest,
)
from flokan_dagster.api.retry import RetryPolicy, utcnow
from flokan_dagster.api.server_clock import ServerClock
from flokan_dagster.api.transport import Call, ClientStats, Engine, rule_error

logger = logging.getLogger("flokan_dagster.client")

DEFAULT_CONNECT_TIMEOUT_S = 10.0
# Above the server's 300 s hard limit, so a slow job is not cut off by our own timeout.
DEFAULT_READ_TIMEOUT_S = 330.0
DEFAULT_WRITE_TIMEOUT_S = 60.0
DEFAULT_MAX_DOWNLOAD_BYTES = 64 * 1024 * 1024
#: A cap, not the plan: the controller sizes calls in flight from the rate limit and latency.
DEFAULT_MAX_CONCURRENCY = 64

ImageSource = str | Path | bytes


class _ClientBase:
    """Configuration and call building shared by the sync and async clients."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str = rules.DEFAULT_BASE_URL,
        connect_timeout_s: float = DEFAULT_CONNECT_TIMEOUT_S,
        read_timeout_s: float = DEFAULT_READ_TIMEOUT_S,
        write_timeout_s: float = DEFAULT_WRITE_TIMEOUT_S,
        max_attempts: int = 5,
        backoff_base_s: float = 0.5,
        backoff_max_s: float = 30.0,
        max_total_wait_s: float = 120.0,
        max_download_bytes: int = DEFAULT_MAX_DOWNLOAD_BYTES,
        allow_insecure_http: bool = False,
    ) -> None:
        if max_attempts < 1:
            raise FlokanValidationError("max_attempts must be at least 1", field="max_attempts")
        self._engine = Engine(
            api_key=api_key,
            base_url=base_url,
            retry=RetryPolicy(
                max_attempts=max_attempts,
                backoff_base_s=backoff_base_s,
                backoff_max_s=backoff_max_s,
                max_total_wait_s=max_total_wait_s,
            ),
            allow_insecure_http=allow_insecure_http,
        )
        self._timeout = httpx.Timeout(
            connect=connect_timeout_s, read=read_timeout_s, write=write_timeout_s, pool=read_timeout_s
        )
        self._max_download_bytes = max_download_bytes

    def __repr__(self) -> str:
        return f"{type(self).__name__}(base_url={self._engine.base_url!r})"

    @property
    def base_url(self) -> str:
        """The API base URL, without a trailing slash."""
        return self._engine.base_url

    @property
    def rate_limit(self) -> RateLimitState | None:
        """The latest ``X-RateLimit-*`` state seen, or None before the first answer."""
        return self._engine.rate_limit.state

    @property
    def server_clock(self) -> ServerClock:
        """The server's clock as the answers so far show it (compare job times with it)."""
        return self._engine.clock

    @property
    def stats(self) -> ClientStats:
        """Counters of requests, retries and pauses made by this client."""
        return self._engine.stats

    def _process_call(
        self, prompt: str, model_tier: str, before_send: Callable[[], Awaitable[None]] | None = None, **fields: str | None
    ) -> Call:
        try:
            request = ProcessRequest.create(prompt, model_tier, **fields)
        except rules.RuleViolation as exc:
            raise rule_error(exc) from None
        return self._engine.api_call(
            "POST", "/process", json=request.body(), idempotent=False, process=request, before_send=before_send
        )

    def _estimate_call(self, model_tier: str, provider: str | None) -> Call:
        try:
            request = EstimateRequest.create(model_tier, provider)
        except rules.RuleViolation as exc:
            raise rule_error(exc) from None
        return self._engine.api_call("POST", "/estimate-credits", json=request.body())

    def _list_call(self, page: int, per_page: int, status: str | None) -> Call:
        if not isinstance(page, int) or page < 1:
            raise FlokanValidationError(f"page: must be an integer >= 1, got {page!r}", field="page")
        if not isinstance(per_page, int) or not 1 <= per_page <= rules.PER_PAGE_MAX:
            raise FlokanValidationError(
                f"per_page: must be an integer 1-{rules.PER_PAGE_MAX}, got {per_page!r}", field="per_page"
            )
        if status is not None and status not in rules.JOB_STATUSES:
            raise FlokanValidationError(
                f"status: must be one of {', '.join(rules.JOB_STATUSES)}, got {status!r}", field="status"
            )
        params: dict[str, Any] = {"page": page, "per_page": per_page}
        if status is not None:
            params["status"] = status
        return self._engine.api_call("GET", "/jobs", params=params)

    def _job_call(self, job_id: str) -> Call:
        try:
            job_id = rules.check_uuid("job_id", job_id)
        except rules.RuleViolation as exc:
            raise rule_error(exc) from None
        return self._engine.api_call("GET", f"/jobs/{job_id}")

    def _upload_ticket_call(
        self, source: ImageSource, mime_type: str | None, file_name: str | None
    ) -> tuple[Call, bytes, str]:
        data, default_name = _read_source(source)
        sniffed = rules.sniff_mime_type(data)
        if sniffed is None:
            raise FlokanValidationError(
                f"mime_type: the content of {default_name!r} is not a JPEG, PNG, WebP or GIF image",
                field="mime_type",
                rule="content must be image/jpeg, image/png, image/webp or image/gif",
            )
        if mime_type is not None and mime_type != sniffed:
            raise FlokanValidationError(
                f"mime_type: declared {mime_type!r} but the content of {default_name!r} is {sniffed}",
                field="mime_type",
                rule="the declared mime type must match the file's content",
            )
        try:
            request = UploadUrlRequest.create(default_name if file_name is None else file_name, sniffed, len(data))
        except rules.RuleViolation as exc:
            raise rule_error(exc) from None
        return self._engine.api_call("POST", "/upload-url", json=request.body()), data, sniffed

    def _put_call(self, ticket: UploadTicket, data: bytes, mime_type: str) -> Call:
        return self._engine.storage_call("PUT", ticket.upload_url, content=data, headers={"Content-Type": mime_type})

    def _download_call(self, url: str) -> Call:
        if not url.startswith(("https://", "http://")):
            raise FlokanValidationError(f"url: must be an http(s) URL, got {url[:80]!r}", field="url")
        return self._engine.storage_call("GET", url, max_body_bytes=self._max_download_bytes)

    def _job_page(self, call: Call, response: httpx.Response, body: bytes, sent_at: datetime) -> JobPage:
        envelope = self._engine.envelope(call, response, body, sent_at)
        page = {"jobs": envelope["data"], "meta": envelope.get("meta") or {}}
        return self._engine.validate(JobPage, page, call, response, sent_at)


def _read_source(source: ImageSource) -> tuple[bytes, str]:
    if isinstance(source, bytes | bytearray | memoryview):
        data = bytes(source)
        ext = {"image/png": "png", "image/jpeg": "jpg", "image/webp": "webp", "image/gif": "gif"}
        return data, f"upload.{ext.get(rules.sniff_mime_type(data) or '', 'bin')}"
    path = Path(source)
    try:
        return path.read_bytes(), path.name
    except OSError as exc:
        raise FlokanValidationError(
            f"source: cannot read {str(path)!r}: {exc.strerror}", field="source", rule="must be a readable file"
        ) from None


def _next_pages(seen: set[str], page: JobPage) -> tuple[list[Job], bool]:
    """The jobs of ``page`` not seen before, and whether another page may follow."""
    fresh = [job for job in page.jobs if job.job_id not in seen]
    seen.update(job.job_id for job in fresh)
    meta: PageMeta = page.meta
    more = bool(page.jobs) and (meta.total_pages is None or (meta.page or 0) < meta.total_pages)
    return fresh, more


class FlokanClient(_ClientBase):
    """Synchronous client of Flokan's Image Editor API.

    Args:
        api_key: A workspace key ``flk_...`` with the ``image_editor`` scope.
        base_url: The API base URL; Flokan's by default.
        connect_timeout_s: Seconds to establish a connection.
        read_timeout_s: Seconds to wait for an answer; above the server's 300 s limit by default.
        write_timeout_s: Seconds to send a request body.
        max_attempts: Attempts per call, the first included.
        backoff_base_s: First retry backoff (doubles, capped by ``backoff_max_s``, with jitter).
        backoff_max_s: Cap of one backoff.
        max_total_wait_s: Cap of all waiting within one call.
        max_download_bytes: Largest image ``download`` accepts.
        allow_insecure_http: Allow ``http://`` to a non-loopback host (the key would be in clear).

    Example:
        >>> with FlokanClient(api_key="flk_...", base_url=url) as client:  # doctest: +SKIP
        ...     image_id = client.upload_image("mug.png")
        ...     edited = client.process("Make it blue", "standard", image_id=image_id)
    """

    def __init__(self, *, api_key: str, **options: Any) -> None:
        super().__init__(api_key=api_key, **options)
        self._http = httpx.Client(timeout=self._timeout, follow_redirects=False)

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        self.close()

    def close(self) -> None:
        """Close the connection pool."""
        self._http.close()

    def process(
        self,
        prompt: str,
        model_tier: str,
        *,
        image_id: str | None = None,
        image_url: str | None = None,
        style_id: str | None = None,
        character_id: str | None = None,
        provider: str | None = None,
    ) -> ProcessResult:
        """Generate (prompt only) or edit (``image_id`` or ``image_url``) an image; waits for the result.

        Raises:
            FlokanUnknownOutcomeError: the request was sent but its outcome is unknown; settle it
                from ``GET /jobs`` instead of calling again (a second call is a second charge).
        """
        call = self._process_call(
            prompt, model_tier, image_id=image_id, image_url=image_url, style_id=style_id,
            character_id=character_id, provider=provider,
        )  # fmt: skip
        return self._engine.parse(ProcessResult, call, *self._send(call))

    def estimate_credits(self, model_tier: str, provider: str | None = None) -> CreditEstimate:
        """Upper bound of the credits one ``/process`` with this tier and provider costs."""
        call = self._estimate_call(model_tier, provider)
        return self._engine.parse(CreditEstimate, call, *self._send(call))

    def upload_image(self, source: ImageSource, mime_type: str | None = None, file_name: str | None = None) -> str:
        """Upload a local image (a path or bytes) and return its new ``image_id``.

        The mime type is read from the content; a declared ``mime_type`` must agree with it.
        """
        call, data, mime = self._upload_ticket_call(source, mime_type, file_name)
        ticket = self._engine.parse(UploadTicket, call, *self._send(call))
        self._send(self._put_call(ticket, data, mime))
        return ticket.image_id

    def list_jobs(self, page: int = 1, per_page: int = 50, status: str | None = None) -> JobPage:
        """One page of the workspace's jobs, newest first."""
        call = self._list_call(page, per_page, status)
        return self._job_page(call, *self._send(call))

    def iter_jobs(self, status: str | None = None, per_page: int = rules.PER_PAGE_MAX) -> Iterator[Job]:
        """Every job, newest first, each once (pages shift while new jobs arrive: dedupe by id)."""
        seen: set[str] = set()
        page = 1
        while True:
            fresh, more = _next_pages(seen, self.list_jobs(page, per_page, status))
            yield from fresh
            if not more:
                return
            page += 1

    def get_job(self, job_id: str) -> Job:
        """One job's full row."""
        call = self._job_call(job_id)
        return self._engine.parse(Job, call, *self._send(call))

    def download(self, url: str) -> bytes:
        """The bytes at an image URL (no Authorization header is sent)."""
        _response, body, _ = self._send(self._download_call(url))
        return body

    def _send(self, call: Call) -> tuple[httpx.Response, bytes, datetime]:
        attempt, waited = 0, 0.0
        while True:
            pause = self._engine.pause_before(call, waited)
            if pause:
                time.sleep(pause)
                self._engine.note_wait(pause)
                waited += pause
            request = self._engine.build_request(self._http, call)
            sent_at = utcnow()
            self._engine.note_sent(attempt)
            try:
                response = self._http.send(request, stream=True, follow_redirects=not call.api)
                try:
                    body = _read_capped(response.iter_bytes(), call.max_body_bytes)
                finally:
                    response.close()
            except httpx.RequestError as exc:
                wait = self._engine.after_exception(call, exc, attempt, waited, sent_at)
            else:
                if body is None:
                    raise self._engine.too_big(call, response, sent_at)
                logger.debug("%s -> %s", call.label, response.status_code)
                pause_next = self._engine.after_response(call, response, body, attempt, waited, sent_at)
                if pause_next is None:
                    return response, body, sent_at
                wait = pause_next
            time.sleep(wait)
            self._engine.note_wait(wait)
            waited += wait
            attempt += 1


class AsyncFlokanClient(_ClientBase):
    """Asynchronous client of Flokan's Image Editor API, sized to the workspace's rate limit.

    Takes the same options as :class:`FlokanClient`, plus:

    - ``max_concurrency``: a cap on calls in flight (default 64). Within it, one
      :class:`~flokan_dagster.api.concurrency.ConcurrencyController` decides how many calls go at
      once from the ``X-RateLimit-*`` headers, ``Retry-After`` and the latency it measures (about
      rate × latency), pausing at the window's end instead of provoking 429s and backing off at
      once when one comes. Every call draws on it: ``/process``, estimates, ``GET /jobs``,
      uploads and downloads (these first, so a paid image is never stuck behind new calls).
    - ``rate_limit_window_s``: length of the server's rate-limit window (Flokan's is a minute).

    A caller that must check something right before a ``/process`` goes out takes the slot
    itself, checks, and passes it in: ``async with client.concurrency.slot() as slot: ...;
    await client.process(..., slot=slot)``.

    Example:
        >>> async with AsyncFlokanClient(api_key=key, base_url=url) as client:  # doctest: +SKIP
        ...     results = await asyncio.gather(*(client.process(p, "standard") for p in prompts))
    """

    def __init__(
        self,
        *,
        api_key: str,
        max_concurrency: int = DEFAULT_MAX_CONCURRENCY,
        rate_limit_window_s: float = 60.0,
        **options: Any,
    ) -> None:
        if max_concurrency < 1:
            raise FlokanValidationError("max_concurrency must be at least 1", field="max_concurrency")
        super().__init__(api_key=api_key, **options)
        self.max_concurrency = max_concurrency
        self.concurrency = ConcurrencyController(max_concurrency, window_s=rate_limit_window_s)
        self._http = httpx.AsyncClient(
            timeout=self._timeout,
            follow_redirects=False,
            limits=httpx.Limits(max_connections=max_concurrency + 4, max_keepalive_connections=max_concurrency + 4),
        )

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(self, *exc: tuple[type[BaseException] | None, BaseException | None, TracebackType | None]) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Close the connection pool."""
        await self._http.aclose()

    async def process(
        self,
        prompt: str,
        model_tier: str,
        *,
        image_id: str | None = None,
        image_url: str | None = None,
        style_id: str | None = None,
        character_id: str | None = None,
        provider: str | None = None,
        slot: Slot | None = None,
        before_send: Callable[[], Awaitable[None]] | None = None,
    ) -> ProcessResult:
        """Async :meth:`FlokanClient.process`.

        Args:
            slot: A slot the caller took from :attr:`concurrency` for this call (so that checks
                made right before the send stay true); by default the call takes its own. It is
                given back when the answer is in, and taken again for a retry after a 429;
                releasing it again afterwards is harmless.
            before_send: Awaited right before the request goes on the wire (each time, retries
                included): where a write-ahead record belongs, so that a record without a job
                means a request that was at most an instant from being sent.
        """
        call = self._process_call(
            prompt, model_tier, before_send, image_id=image_id, image_url=image_url, style_id=style_id,
            character_id=character_id, provider=provider,
        )  # fmt: skip
        return self._engine.parse(ProcessResult, call, *await self._send(call, slot))

    async def estimate_credits(self, model_tier: str, provider: str | None = None) -> CreditEstimate:
        """Async :meth:`FlokanClient.estimate_credits`."""
        call = self._estimate_call(model_tier, provider)
        return self._engine.parse(CreditEstimate, call, *await self._send(call))

    async def upload_image(
        self, source: ImageSource, mime_type: str | None = None, file_name: str | None = None
    ) -> str:
        """Async :meth:`FlokanClient.upload_image`."""
        call, data, mime = self._upload_ticket_call(source, mime_type, file_name)
        ticket = self._engine.parse(UploadTicket, call, *await self._send(call))
        await self._send(self._put_call(ticket, data, mime))
        return ticket.image_id

    async def list_jobs(self, page: int = 1, per_page: int = 50, status: str | None = None) -> JobPage:
        """Async :meth:`FlokanClient.list_jobs`."""
        call = self._list_call(page, per_page, status)
        return self._job_page(call, *await self._send(call))

    async def iter_jobs(self, status: str | None = None, per_page: int = rules.PER_PAGE_MAX) -> AsyncIterator[Job]:
        """Async :meth:`FlokanClient.iter_jobs`."""
        seen: set[str] = set()
        page = 1
        while True:
            fresh, more = _next_pages(seen, await self.list_jobs(page, per_page, status))
            for job in fresh:
                yield job
            if not more:
                return
            page += 1

    async def get_job(self, job_id: str) -> Job:
        """Async :meth:`FlokanClient.get_job`."""
        call = self._job_call(job_id)
        return self._engine.parse(Job, call, *await self._send(call))

    async def download(self, url: str) -> bytes:
        """Async :meth:`FlokanClient.download`."""
        _response, body, _ = await self._send(self._download_call(url))
        return body

    async def _send(self, call: Call, slot: Slot | None = None) -> tuple[httpx.Response, bytes, datetime]:
        """Send ``call`` under a slot of the controller (the caller's, or one taken here), with retries.

        The controller does the pacing (the window's budget, a 429's pause), so the engine's
        own rate-limit pause is not used here; waiting for a slot counts against no retry budget.
        """
        owned = slot is None
        if slot is None:
            slot = await self.concurrency.acquire(_kind_of(call))
        attempt, waited = 0, 0.0
        try:
            while True:
                await self.concurrency.reacquire(slot)
                request = self._engine.build_request(self._http, call)
                if call.before_send is not None:
                    await call.before_send()
                sent_at = utcnow()
                self._engine.note_sent(attempt)
                try:
                    response = await self._http.send(request, stream=True, follow_redirects=not call.api)
                    try:
                        body = await _aread_capped(response.aiter_bytes(), call.max_body_bytes)
                    finally:
                        await response.aclose()
                except httpx.RequestError as exc:
                    self.concurrency.release(slot)
                    wait = self._engine.after_exception(call, exc, attempt, waited, sent_at)
                else:
                    self.concurrency.observe(slot, response.status_code, response.headers)
                    self.concurrency.release(slot)
                    if body is None:
                        raise self._engine.too_big(call, response, sent_at)
                    logger.debug("%s -> %s", call.label, response.status_code)
                    pause_next = self._engine.after_response(call, response, body, attempt, waited, sent_at)
                    if pause_next is None:
                        return response, body, sent_at
                    wait = pause_next
                await asyncio.sleep(wait)
                self._engine.note_wait(wait)
                waited += wait
                attempt += 1
        finally:
            if owned:
                self.concurrency.release(slot)


def _kind_of(call: Call) -> CallKind:
    if call.process is not None:
        return "process"
    return "api" if call.api else "storage"


def _read_capped(chunks: Iterable[bytes], limit: int) -> bytes | None:
    """The whole body, or None once it exceeds ``limit`` bytes."""
    parts, size = [], 0
    for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)


async def _aread_capped(chunks: AsyncIterator[bytes], limit: int) -> bytes | None:
    """Async :func:`_read_capped`."""
    parts, size = [], 0
    async for chunk in chunks:
        size += len(chunk)
        if size > limit:
            return None
        parts.append(chunk)
    return b"".join(parts)
