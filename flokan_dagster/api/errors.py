"""One exception class per failure a caller treats differently.

Every failure the client raises is a :class:`FlokanError`. None of them ever holds the API key or
any request header: messages are built from the server's ``error`` text, the method and the path.

Example:
    >>> try:
    ...     raise FlokanInsufficientCreditsError("insufficient AI credits", status_code=402)
    ... except FlokanError as exc:
    ...     print(exc.status_code, exc)
    402 insufficient AI credits (HTTP 402)
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from flokan_dagster.api.models import ProcessRequest


@dataclass(frozen=True)
class RateLimitState:
    """The rate-limit headers of the latest response.

    Attributes:
        limit: ``X-RateLimit-Limit``: requests allowed per window.
        remaining: ``X-RateLimit-Remaining``: requests left in the window.
        reset_s: ``X-RateLimit-Reset``: seconds until the window resets, when observed.
        observed_at: ``time.monotonic()`` when the headers were read.
    """

    limit: int | None
    remaining: int | None
    reset_s: float | None
    observed_at: float


class FlokanError(Exception):
    """Base class of every error the Flokan client raises.

    Attributes:
        message: The server's ``error`` text, or a description of the local failure.
        status_code: The HTTP status, or None when no response was received.
        request_id: The response's request id header, when it has one.
        rate_limit: The last rate-limit state the client saw.
        method: HTTP method of the failed call, e.g. ``POST``.
        path: Path of the failed call relative to the base URL, e.g. ``/process``.
    """

    def __init__(
        self,
        message: str,
        *,
        status_code: int | None = None,
        request_id: str | None = None,
        rate_limit: RateLimitState | None = None,
        method: str | None = None,
        path: str | None = None,
    ) -> None:
        self.message = message
        self.status_code = status_code
        self.request_id = request_id
        self.rate_limit = rate_limit
        self.method = method
        self.path = path
        super().__init__(self._describe())

    def _describe(self) -> str:
        label = f"{self.method} {self.path}" if self.method and self.path else ""
        where = f" on {label}" if label and label not in self.message else ""
        status = f" (HTTP {self.status_code}{where})" if self.status_code else (f" ({where.strip()})" if where else "")
        request = f" [request {self.request_id}]" if self.request_id else ""
        return f"{self.message}{status}{request}"


class FlokanValidationError(FlokanError):
    """A request broke a rule: found locally before sending (``status_code`` None) or a 400.

    Attributes:
        field: The request field at fault, when known.
        rule: The rule that was broken, when known.
    """

    def __init__(self, message: str, *, field: str | None = None, rule: str | None = None, **kwargs: Any) -> None:
        self.field = field
        self.rule = rule
        super().__init__(message, **kwargs)


class FlokanAuthenticationError(FlokanError):
    """401: the API key is missing or invalid."""


class FlokanInsufficientCreditsError(FlokanError):
    """402: the workspace has too few AI credits."""


class FlokanPermissionError(FlokanError):
    """403: the key lacks the ``image_editor`` scope or its creator the image-editor permission."""


class FlokanNotFoundError(FlokanError):
    """404: the image, style, character or job does not exist in this workspace."""


class FlokanUnprocessableError(FlokanError):
    """422 whose message names neither a safety rejection nor a BYOK configuration problem."""


class FlokanSafetyFilterError(FlokanUnprocessableError):
    """422: the provider's safety filter rejected the prompt."""


class FlokanByokNotConfiguredError(FlokanUnprocessableError):
    """422: the BYOK provider is not configured and enabled, or the plan has no BYOK."""


class FlokanRateLimitError(FlokanError):
    """429 after the client's retries ran out.

    Attributes:
        retry_after_s: The server's ``Retry-After`` in seconds, when it sent one.
    """

    def __init__(self, message: str, *, retry_after_s: float | None = None, **kwargs: Any) -> None:
        self.retry_after_s = retry_after_s
        super().__init__(message, **kwargs)


class FlokanServerError(FlokanError):
    """5xx on a call that is not ``/process`` (or a 5xx after the retries ran out)."""


class FlokanResponseError(FlokanError):
    """The response was not the documented JSON envelope (non-JSON, truncated, wrong types, too big)."""


class FlokanConnectionError(FlokanError):
    """The service could not be reached (connect failures, timeouts) after the retries ran out."""


class FlokanUploadError(FlokanError):
    """The presigned PUT to the storage host failed."""


class FlokanUnknownOutcomeError(FlokanError):
    """``POST /process`` was sent but its outcome is unknown: it may have run and been charged.

    Raised on a read timeout, a dropped connection, a 5xx or an unreadable body after the request
    was sent. Do not retry blindly: look the job up in ``GET /jobs`` (match the request's fields
    around ``sent_at``) and adopt it if it exists.

    Attributes:
        request: The request that was sent (prompt, tier, provider, source, style, character).
        sent_at: UTC time just before the request was sent.
        cause: What went wrong, e.g. ``ReadTimeout`` or ``HTTP 502``.
    """

    def __init__(self, message: str, *, request: ProcessRequest, sent_at: datetime, cause: str, **kwargs: Any) -> None:
        self.request = request
        self.sent_at = sent_at
        self.cause = cause
        super().__init__(message, **kwargs)


STATUS_ERRORS: dict[int, type[FlokanError]] = {
    400: FlokanValidationError,
    401: FlokanAuthenticationError,
    402: FlokanInsufficientCreditsError,
    403: FlokanPermissionError,
    404: FlokanNotFoundError,
    429: FlokanRateLimitError,
}


def error_class_for(status_code: int, message: str) -> type[FlokanError]:
    """Pick the exception class for an error response.

    The two 422 causes share a status; Flokan tells them apart only in the message.

    Example:
        >>> error_class_for(422, "BYOK provider openai is not configured").__name__
        'FlokanByokNotConfiguredError'
    """
    if status_code == 422:
        text = message.lower()
        if "byok" in text or "not configured" in text or "not enabled" in text or "plan" in text:
            return FlokanByokNotConfiguredError
        if "safety" in text or "rejected" in text or "content policy" in text:
            return FlokanSafetyFilterError
        return FlokanUnprocessableError
    if status_code >= 500:
        return FlokanServerError
    return STATUS_ERRORS.get(status_code, FlokanError)
