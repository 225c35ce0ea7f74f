"""Dagster integration for Flokan's Image Editor API: per-SKU product images, every credit accounted for.

Example:
    >>> import dagster as dg
    >>> from flokan_dagster import FlokanResource
    >>> flokan = FlokanResource(api_key=dg.EnvVar("FLOKAN_API_KEY"))
"""

from flokan_dagster.api.client import AsyncFlokanClient, FlokanClient
from flokan_dagster.api.errors import (
    FlokanAuthenticationError,
    FlokanByokNotConfiguredError,
    FlokanConnectionError,
    FlokanError,
    FlokanInsufficientCreditsError,
    FlokanNotFoundError,
    FlokanPermissionError,
    FlokanRateLimitError,
    FlokanResponseError,
    FlokanSafetyFilterError,
    FlokanServerError,
    FlokanUnknownOutcomeError,
    FlokanUnprocessableError,
    FlokanUploadError,
    FlokanValidationError,
    RateLimitState,
)
from flokan_dagster.api.models import CreditEstimate, Job, JobPage, ProcessRequest, ProcessResult
from flokan_dagster.resource import FlokanResource

__all__ = [
    "AsyncFlokanClient",
    "CreditEstimate",
    "FlokanAuthenticationError",
    "FlokanByokNotConfiguredError",
    "FlokanClient",
    "FlokanConnectionError",
    "FlokanError",
    "FlokanInsufficientCreditsError",
    "FlokanNotFoundError",
    "FlokanPermissionError",
    "FlokanRateLimitError",
    "FlokanResource",
    "FlokanResponseError",
    "FlokanSafetyFilterError",
    "FlokanServerError",
    "FlokanUnknownOutcomeError",
    "FlokanUnprocessableError",
    "FlokanUploadError",
    "FlokanValidationError",
    "Job",
    "JobPage",
    "ProcessRequest",
    "ProcessResult",
    "RateLimitState",
]
