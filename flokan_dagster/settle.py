"""Find the job an unknown-outcome ``POST /process`` became, and decide whether it may be paid again.

A ``/process`` whose answer was lost may still have run and been charged, and it may even reach
the server late (a gateway answered 502 and delivered it seconds or minutes later). Its job is
found in ``GET /jobs`` by the request's fields (prompt, tier, provider, source, style, character)
within a window of the *server's* clock around when it was sent, skipping jobs the ledger already
gives to other attempts. :func:`settle_decision` is the one rule saying what to do then.

Example:
    >>> from datetime import datetime, timezone
    >>> sent = ServerTime(datetime(2026, 5, 4, 11, 0, tzinfo=timezone.utc), error_s=0.5)
    >>> matcher = JobMatcher(RequestFields("red mug", "pro"), sent)
    >>> matcher.best() is None
    True
    >>> settle_decision(None, sent, ServerTime(datetime(2026, 5, 4, 11, 0, 5, tzinfo=timezone.utc), 0.5)).decision
    'wait'
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any, Literal

from flokan_dagster.api import rules
from flokan_dagster.api.client import AsyncFlokanClient
from flokan_dagster.api.models import Job, ProcessRequest
from flokan_dagster.api.server_clock import ClockOffset

TERMINAL_STATUSES = frozenset({"completed", "failed"})
#: The server abandons a request after this much processing (Part A); a request it has not
#: accepted by then never will be.
SERVER_LIMIT_S = 300.0
#: Added to the server's limit before an absence counts as proof (queues in front of the server).
ABSENCE_MARGIN_S = 60.0
#: How long after it was sent (server clock) a request's job may have been created.
DEFAULT_WINDOW_S = SERVER_LIMIT_S + ABSENCE_MARGIN_S
#: A job created this long before the request left (server clock, beyond the clock's error) is not its job.
EARLY_SLACK_S = 2.0
#: The error assumed when no answer has shown the server's clock yet: matching then spans hours
#: either way, and absence is never proven.
UNKNOWN_CLOCK_ERROR_S = 3 * 3600.0

Decision = Literal["adopt", "wait", "absent"]


@dataclass(frozen=True)
class ServerTime:
    """A moment on the server's clock, known within ``± error_s``.

    Attributes:
        moment: The best estimate (aware UTC).
        error_s: The true moment is within ``moment ± error_s``.
    """

    moment: datetime
    error_s: float

    @classmethod
    def of(cls, local: datetime, clock: ClockOffset | None) -> ServerTime:
        """A local-clock moment on the server's clock (an unknown clock makes the error hours wide)."""
        if clock is None:
            return cls(as_utc(local), UNKNOWN_CLOCK_ERROR_S)
        return cls(clock.to_server(local), clock.error_s)

    @property
    def earliest(self) -> datetime:
        """The earliest the moment can be."""
        return self.moment - timedelta(seconds=self.error_s)

    @property
    def latest(self) -> datetime:
        """The latest the moment can be."""
        return self.moment + timedelta(seconds=self.error_s)


@dataclass(frozen=True)
class Settlement:
    """What to do with an unknown outcome, and why.

    Attributes:
        decision: ``adopt`` the job (it finished; completed or failed), ``wait`` (the outcome is
            still unknown: do not send again, settle later), or ``absent`` (proven: no job was or
            will be created, so sending again cannot pay twice).
        job: The job to adopt, or the unfinished job waited for.
        reason: The rule that decided, in words for the user.
    """

    decision: Decision
    job: Job | None
    reason: str


def settle_decision(
    job: Job | None,
    sent: ServerTime,
    server_now: ServerTime | None,
    *,
    twin_pending: bool = False,
) -> Settlement:
    """The one rule for an unknown outcome: adopt its job, wait, or treat it as never created.

    - A finished job matching the request is adopted (a completed one is paid: never pay again),
      unless another SKU's request with the same fields is still in flight: the two jobs cannot
      be told apart until that SKU records its own, so adopting now could take its job.
    - An unfinished job is waited for.
    - No job: a request can reach the server late (a gateway answers 502 and delivers it later),
      and the server accepts it at any time until its own 300 s limit. So absence proves nothing
      until the server's clock shows that limit plus a margin has passed since the request left,
      counting the clock's error against the proof. Until then the outcome stays unknown: the SKU
      fails by name and the next run or the reconciliation sensor settles it.

    Args:
        job: The best matching job not owned by another attempt, or None.
        sent: When the request left, on the server's clock.
        server_now: Now on the server's clock (None when unknown: absence is never proven then).
        twin_pending: Another SKU's pending attempt has the same request fields.

    Example:
        >>> sent = ServerTime(datetime(2026, 5, 4, 11, 0, tzinfo=timezone.utc), 1.0)
        >>> later = ServerTime(sent.moment + timedelta(minutes=7), 1.0)
        >>> settle_decision(None, sent, later).decision
        'absent'
    """
    if job is not None and twin_pending:
        return Settlement(
            "wait", None,
            f"job {job.job_id} matches, but another SKU's request with the same fields is still in flight "
            "and the two cannot be told apart yet",
        )  # fmt: skip
    if job is not None and job.status in TERMINAL_STATUSES:
        return Settlement("adopt", job, f"job {job.job_id} is {job.status}")
    if job is not None:
        return Settlement("wait", job, f"job {job.job_id} is still {job.status}")
    if server_now is None or max(sent.error_s, server_now.error_s) >= UNKNOWN_CLOCK_ERROR_S:
        return Settlement("wait", None, "its job is not in GET /jobs and the server's clock is not known yet")
    waited_s = (server_now.earliest - sent.latest).total_seconds()
    if waited_s < DEFAULT_WINDOW_S:
        return Settlement(
            "wait", None,
            f"its job is not in GET /jobs {max(waited_s, 0.0):.0f} s after it was sent (server clock), but a request "
            f"can still be accepted late until the server's {SERVER_LIMIT_S:.0f} s limit "
            f"+ {ABSENCE_MARGIN_S:.0f} s have passed",
        )  # fmt: skip
    return Settlement(
        "absent", None,
        f"no job was created: absent from GET /jobs {waited_s:.0f} s after it was sent (server clock), past the "
        f"server's {SERVER_LIMIT_S:.0f} s limit + {ABSENCE_MARGIN_S:.0f} s",
    )  # fmt: skip


@dataclass(frozen=True)
class RequestFields:
    """The fields of a ``/process`` request that identify its job."""

    prompt: str | None
    model_tier: str | None
    provider: str | None = None
    image_id: str | None = None
    image_url: str | None = None
    style_id: str | None = None
    character_id: str | None = None

    @classmethod
    def of(cls, source: ProcessRequest | Any) -> RequestFields:
        """From a ProcessRequest, a ledger AttemptRecord or anything with those attributes."""
        return cls(*(getattr(source, name, None) for name in cls.__dataclass_fields__))

    def matches(self, job: Job) -> bool:
        """Whether ``job`` was made from a request with these fields."""
        if job.prompt != self.prompt or job.model_tier != self.model_tier:
            return False
        if _provider_of(job) != (self.provider or rules.PLATFORM_PROVIDER):
            return False
        # The server ignores image_url when image_id is set, and may not echo it.
        if (job.image_id or None) != (self.image_id or None):
            return False
        if self.image_id is None and (job.image_url or None) != (self.image_url or None):
            return False
        return (job.style_id or None) == (self.style_id or None) and (job.character_id or None) == (
            self.character_id or None
        )


def _provider_of(job: Job) -> str:
    if job.provider:
        return job.provider
    if job.provider_used and job.provider_used != "system":
        return job.provider_used
    return rules.PLATFORM_PROVIDER


def as_utc(moment: datetime) -> datetime:
    """``moment`` as an aware UTC datetime; a naive one (as the ledger stores them) is taken as UTC.

    Example:
        >>> as_utc(datetime(2026, 5, 4, 11, 0)).isoformat()
        '2026-05-04T11:00:00+00:00'
    """
    return moment.astimezone(timezone.utc) if moment.tzinfo else moment.replace(tzinfo=timezone.utc)


class JobMatcher:
    """Collects the jobs of a newest-first listing that match one sent request.

    Every comparison is on the server's clock: ``created_at`` against when the request left,
    widened by that moment's error.

    Args:
        fields: The request's identifying fields.
        sent: When the request left, on the server's clock.
        window_s: How long after ``sent`` the job may have been created.
    """

    def __init__(self, fields: RequestFields, sent: ServerTime, window_s: float = DEFAULT_WINDOW_S) -> None:
        self.fields = fields
        self.sent = sent
        self.earliest = sent.earliest - timedelta(seconds=EARLY_SLACK_S)
        self.latest = sent.latest + timedelta(seconds=window_s)
        self.candidates: list[Job] = []

    def consider(self, job: Job) -> bool:
        """Look at the next job of the listing; False once the listing is older than the window."""
        if job.created_at is None:
            return True
        created = as_utc(job.created_at)
        if created < self.earliest:
            return False
        if created <= self.latest and self.fields.matches(job):
            self.candidates.append(job)
        return True

    def best(self) -> Job | None:
        """The matching job created closest after the request left, or None."""
        if not self.candidates:
            return None
        sent = self.sent.moment
        return min(self.candidates, key=lambda job: abs((as_utc(job.created_at) - sent).total_seconds()))  # type: ignore[arg-type]


def sent_time(attempt: Any, clock: ClockOffset | None) -> ServerTime:
    """When an attempt's request left, on the server's clock.

    The estimate kept with the attempt when it was sent wins; an attempt without one (recorded
    before the server's clock was known) is converted with ``clock``, today's estimate.
    """
    server_sent_at = getattr(attempt, "server_sent_at", None)
    error_ms = getattr(attempt, "clock_error_ms", None)
    if server_sent_at is not None and error_ms is not None:
        return ServerTime(as_utc(server_sent_at), error_ms / 1000)
    local = getattr(attempt, "sent_at", None) or getattr(attempt, "recorded_at", None)
    return ServerTime.of(local or datetime.now(timezone.utc), clock)


def server_now(clock: ClockOffset | None) -> ServerTime | None:
    """Now on the server's clock, or None before any answer showed it."""
    return None if clock is None else ServerTime.of(datetime.now(timezone.utc), clock)


async def find_job_async(client: AsyncFlokanClient, matcher: JobMatcher) -> Job | None:
    """Scan ``GET /jobs`` newest first until older than the window; return the best match."""
    async for job in client.iter_jobs():
        if not matcher.consider(job):
            break
    return matcher.best()
