"""Find the job an unknown-outcome ``POST /process`` became, instead of paying for it again.

A ``/process`` whose answer was lost may still have run and been charged. Its job is found in
``GET /jobs`` by the request's fields (prompt, tier, provider, source, style, character) within a
time window around when it was sent, skipping jobs the ledger already gives to other attempts.

Example:
    >>> from datetime import datetime, timezone
    >>> fields = RequestFields("red mug", "pro")
    >>> matcher = JobMatcher(fields, datetime(2026, 5, 4, 11, 0, tzinfo=timezone.utc))
    >>> matcher.best() is None
    True
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from typing import Any

from flokan_dagster.api import rules
from flokan_dagster.api.client import AsyncFlokanClient
from flokan_dagster.api.models import Job, ProcessRequest

TERMINAL_STATUSES = frozenset({"completed", "failed"})
DEFAULT_SKEW_S = 120.0
DEFAULT_WINDOW_S = 900.0


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

    Args:
        fields: The request's identifying fields.
        sent_at: When the request was sent (client clock).
        skew_s: Tolerated clock difference between client and server.
        window_s: How long after ``sent_at`` the job may have been created.
    """

    def __init__(
        self,
        fields: RequestFields,
        sent_at: datetime,
        skew_s: float = DEFAULT_SKEW_S,
        window_s: float = DEFAULT_WINDOW_S,
    ) -> None:
        self.fields = fields
        self.sent_at = as_utc(sent_at)
        self.earliest = self.sent_at - timedelta(seconds=skew_s)
        self.latest = self.sent_at + timedelta(seconds=window_s)
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
        """The matching job created closest to ``sent_at``, or None."""
        if not self.candidates:
            return None
        return min(self.candidates, key=lambda job: abs((as_utc(job.created_at) - self.sent_at).total_seconds()))  # type: ignore[arg-type]


async def find_job_async(client: AsyncFlokanClient, matcher: JobMatcher) -> Job | None:
    """Scan ``GET /jobs`` newest first until older than the window; return the best match."""
    async for job in client.iter_jobs():
        if not matcher.consider(job):
            break
    return matcher.best()
