"""Pydantic models of Flokan's Image Editor API requests and responses.

Requests are strict: they are built through ``create`` class methods that check every documented
rule (``rules.py``) and refuse unknown fields, so nothing invalid is ever sent. Responses are
tolerant: the real service may add fields or omit optional ones, so every response model ignores
extra fields and defaults whatever the document does not promise.

Example:
    >>> req = ProcessRequest.create("Studio photo of a red mug", "pro")
    >>> req.body()
    {'prompt': 'Studio photo of a red mug', 'model_tier': 'pro'}
"""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from flokan_dagster.api import rules

ModelTier = Literal["pro", "standard", "creative"]
Provider = Literal["platform", "openai", "google", "fal", "kie"]
JobStatus = Literal["pending", "processing", "completed", "failed"]


class _Request(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)

    def body(self) -> dict[str, Any]:
        """Return the JSON body to send: set fields only."""
        return self.model_dump(exclude_none=True)


class ProcessRequest(_Request):
    """The body of ``POST /process``."""

    prompt: str
    model_tier: ModelTier
    image_id: str | None = None
    image_url: str | None = None
    style_id: str | None = None
    character_id: str | None = None
    provider: Provider | None = None

    @classmethod
    def create(
        cls,
        prompt: str,
        model_tier: str,
        *,
        image_id: str | None = None,
        image_url: str | None = None,
        style_id: str | None = None,
        character_id: str | None = None,
        provider: str | None = None,
    ) -> ProcessRequest:
        """Check every documented rule, then build the request.

        Raises:
            rules.RuleViolation: naming the field and the rule broken.
        """
        rules.check_prompt(prompt)
        rules.check_tier_provider(model_tier, provider)
        return cls(
            prompt=prompt,
            model_tier=model_tier,  # type: ignore[arg-type]
            image_id=rules.check_uuid("image_id", image_id) if image_id is not None else None,
            image_url=rules.check_image_url(image_url) if image_url is not None else None,
            style_id=rules.check_uuid("style_id", style_id) if style_id is not None else None,
            character_id=rules.check_uuid("character_id", character_id) if character_id is not None else None,
            provider=provider,  # type: ignore[arg-type]
        )


class UploadUrlRequest(_Request):
    """The body of ``POST /upload-url``."""

    file_name: str
    mime_type: str
    file_size: int | None = None

    @classmethod
    def create(cls, file_name: str, mime_type: str, file_size: int | None = None) -> UploadUrlRequest:
        """Check the file name and mime type rules, then build the request."""
        rules.check_file_name(file_name)
        rules.check_mime_type(mime_type)
        return cls(file_name=file_name, mime_type=mime_type, file_size=file_size)


class EstimateRequest(_Request):
    """The body of ``POST /estimate-credits``."""

    model_tier: ModelTier
    provider: Provider | None = None

    @classmethod
    def create(cls, model_tier: str, provider: str | None = None) -> EstimateRequest:
        """Check the tier, provider and BYOK matrix, then build the request."""
        rules.check_tier_provider(model_tier, provider)
        return cls(model_tier=model_tier, provider=provider)  # type: ignore[arg-type]


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True)


# Credits and durations are counts: a negative one, or one beyond a 64-bit integer (what the
# ledger stores), is a malformed answer, not a value to record.
_Count = Annotated[int, Field(ge=0, le=2**63 - 1)]


class UploadTicket(_Response):
    """The answer of ``POST /upload-url``: where to PUT the bytes."""

    image_id: str
    upload_url: str
    public_url: str | None = None
    expires_in: int | None = None


class ProcessResult(_Response):
    """The answer of ``POST /process``: the finished job."""

    job_id: str
    status: str
    result_url: str | None = None
    result_image_id: str | None = None
    model_tier: str | None = None
    provider_used: str | None = None
    credits_consumed: _Count | None = None
    processing_ms: _Count | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None


class CreditEstimate(_Response):
    """The answer of ``POST /estimate-credits``. ``estimated_credits`` is an upper bound."""

    model_tier: str | None = None
    provider: str | None = None
    estimated_credits: _Count
    is_exact: bool | None = None
    available_credits: int | None = None
    can_proceed: bool | None = None
    byok_skips_credits: bool | None = None


class Job(_Response):
    """One job row of ``GET /jobs`` or ``GET /jobs/:jobId`` (fields per the project's assumptions)."""

    job_id: str
    status: str
    prompt: str | None = None
    model_tier: str | None = None
    provider: str | None = None
    provider_used: str | None = None
    image_id: str | None = None
    image_url: str | None = None
    style_id: str | None = None
    character_id: str | None = None
    result_url: str | None = None
    result_image_id: str | None = None
    credits_consumed: _Count | None = None
    processing_ms: _Count | None = None
    error: str | None = None
    created_at: datetime | None = None
    completed_at: datetime | None = None


class PageMeta(_Response):
    """Paging information of a list answer."""

    page: int | None = None
    per_page: int | None = None
    total: int | None = None
    total_pages: int | None = None


class JobPage(_Response):
    """One page of ``GET /jobs``, newest first."""

    jobs: list[Job]
    meta: PageMeta = PageMeta()
