"""What the sync and async clients share: building calls, deciding retries, reading answers.

The two clients differ only in how they wait and do I/O; every decision (retry or not, how
long to wait, which error to raise, how to read the envelope) lives here, without I/O, once.
"""

from __future__ import annotations

import ipaddress
import json
import logging
import re
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any, TypeVar
from urllib.parse import urlsplit

import httpx
from pydantic import BaseModel, ValidationError

from flokan_dagster.api import rules
from flokan_dagster.api.errors import (
    FlokanConnectionError,
    FlokanError,
    FlokanRateLimitError,
    FlokanResponseError,
    FlokanUnknownOutcomeError,
    FlokanUploadError,
    FlokanValidationError,
    error_class_for,
)
from flokan_dagster.api.models import ProcessRequest, ProcessResult
from flokan_dagster.api.ratelimit import RateLimitTracker
from flokan_dagster.api.retry import (
    NOT_SENT_ERRORS,
    RetryPolicy,
    is_retryable_exception,
    is_retryable_status,
    parse_retry_after,
    utcnow,
)
from flokan_dagster.api.server_clock import ServerClock

logger = logging.getLogger("flokan_dagster.client")

ModelT = TypeVar("ModelT", bound=BaseModel)

MAX_API_BODY_BYTES = 16 * 1024 * 1024
# Flokan keys look like ``flk_<key>``: masked in any server text an error carries.
_KEY_SHAPED = re.compile(r"flk_[A-Za-z0-9_\-]{4,}")
REDACTED_KEY = "flk_[REDACTED]"


@dataclass(frozen=True)
class Call:
    """One logical API call, retried as a unit.

    Attributes:
        method: HTTP method.
        url: Absolute URL.
        label: ``METHOD /path`` for messages and logs (never the query string: it may be signed).
        api: True for Flokan's API (sends the key); False for storage and image hosts.
        idempotent: Whether repeating the call cannot charge twice.
        process: The ``/process`` request, for unknown-outcome errors.
        max_body_bytes: Largest answer accepted.
        before_send: Awaited right before each time the request goes on the wire (the async
            client's ``/process`` write-ahead record: as close to the send as it can be).
    """

    method: str
    url: str
    label: str
    api: bool = True
    idempotent: bool = True
    json: dict[str, Any] | None = None
    params: dict[str, Any] | None = None
    content: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    process: ProcessRequest | None = None
    max_body_bytes: int = MAX_API_BODY_BYTES
    before_send: Callable[[], Awaitable[None]] | None = None

    @property
    def path(self) -> str:
        """The path part of ``label`` (never the query string)."""
        return self.label.split(" ", 1)[1]


@dataclass
class ClientStats:
    """Counters of what the client did, for tests, benchmarks and logs.

    Attributes:
        requests: HTTP requests sent (retries included).
        retries: Requests that were repeats of an earlier failed one.
        waits_s: Every pause taken (backoff, ``Retry-After``, rate-limit reset), in order.
    """

    requests: int = 0
    retries: int = 0
    waits_s: list[float] = field(default_factory=list)


def rule_error(violation: rules.RuleViolation) -> FlokanValidationError:
    """Turn a local rule violation into the client's validation error (nothing was sent)."""
    return FlokanValidationError(str(violation), field=violation.field, rule=violation.rule)


def check_base_url(base_url: str, allow_insecure_http: bool) -> str:
    """Refuse a base URL that would send the key in clear text to another machine."""
    parts = urlsplit(base_url)
    if parts.scheme not in ("http", "https") or not parts.hostname:
        raise FlokanValidationError(f"base_url must be an http(s) URL, got {base_url!r}", field="base_url")
    if parts.scheme == "http" and not allow_insecure_http and not _is_loopback(parts.hostname):
        raise FlokanValidationError(
            "base_url must use https:// for a non-loopback host (the API key would travel in clear text); "
            "pass allow_insecure_http=True to override",
            field="base_url",
        )
    return base_url.rstrip("/")


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class Engine:
    """The I/O-free part of a client: configuration, call building and every decision."""

    def __init__(
        self,
        *,
        api_key: str,
        base_url: str,
        retry: RetryPolicy,
        allow_insecure_http: bool = False,
    ) -> None:
        if not api_key or not isinstance(api_key, str):
            raise FlokanValidationError("api_key is required (set FLOKAN_API_KEY)", field="api_key")
        self.__api_key = api_key
        self.base_url = check_base_url(base_url, allow_insecure_http)
        self.retry = retry
        self.rate_limit = RateLimitTracker()
        self.stats = ClientStats()
        self.clock = ServerClock()

    def redact(self, text: str) -> str:
        """``text`` with this client's key, its secret part and anything key-shaped masked.

        Example:
            >>> Engine(api_key="flk_abcdef123456", base_url="https://x.example", retry=RetryPolicy()).redact(
            ...     "bad key flk_abcdef123456, or abcdef123456")
            'bad key flk_[REDACTED], or [REDACTED]'
        """
        text = text.replace(self.__api_key, REDACTED_KEY)
        secret = self.__api_key.removeprefix("flk_")
        if len(secret) >= 8:
            text = text.replace(secret, "[REDACTED]")
        return _KEY_SHAPED.sub(REDACTED_KEY, text)

    def api_call(self, method: str, path: str, **kwargs: Any) -> Call:
        """A call to Flokan's API at ``path`` (relative to the base URL)."""
        return Call(method=method, url=self.base_url + path, label=f"{method} {path}", **kwargs)

    def storage_call(self, method: str, url: str, **kwargs: Any) -> Call:
        """A call to a storage or image host: never carries the key."""
        path = urlsplit(url).path or "/"
        return Call(method=method, url=url, label=f"{method} {path}", api=False, **kwargs)

    def build_request(self, http: httpx.Client | httpx.AsyncClient, call: Call) -> httpx.Request:
        """The httpx request for one attempt; only API calls get the Authorization header."""
        headers = dict(call.headers)
        if call.api:
            headers["Authorization"] = f"Bearer {self.__api_key}"
            headers["Accept"] = "application/json"
        return http.build_request(
            call.method, call.url, json=call.json, params=call.params, content=call.content, headers=headers
        )

    def pause_before(self, call: Call, waited_s: float) -> float:
        """Seconds to wait for the rate-limit window before sending ``call`` (within the budget)."""
        if not call.api:
            return 0.0
        pause = self.rate_limit.wait_before_request()
        return max(0.0, min(pause, self.retry.max_total_wait_s - waited_s))

    def note_sent(self, attempt: int) -> None:
        """Count one request sent."""
        self.stats.requests += 1
        if attempt:
            self.stats.retries += 1

    def note_wait(self, seconds: float) -> None:
        """Record a pause taken."""
        if seconds > 0:
            self.stats.waits_s.append(seconds)

    def after_exception(self, call: Call, exc: Exception, attempt: int, waited_s: float, sent_at: datetime) -> float:
        """Decide after a transport failure: return seconds to wait before retrying, or raise."""
        name = type(exc).__name__
        if is_retryable_exception(exc, idempotent=call.idempotent):
            wait = self.retry.backoff(attempt)
            if attempt + 1 < self.retry.max_attempts and waited_s + wait <= self.retry.max_total_wait_s:
                logger.info("%s failed (%s); retrying in %.2fs", call.label, name, wait)
                return wait
        if call.process is not None and not isinstance(exc, NOT_SENT_ERRORS):
            raise FlokanUnknownOutcomeError(
                f"the outcome of {call.label} is unknown ({name} after the request was sent); "
                "the job may have run and been charged: settle it from GET /jobs before retrying",
                request=call.process,
                sent_at=sent_at,
                cause=name,
                **self._context(call),
            ) from None
        kind = "timed out" if isinstance(exc, httpx.TimeoutException) else "could not be completed"
        error_class = FlokanUploadError if not call.api and call.method == "PUT" else FlokanConnectionError
        raise error_class(
            f"{call.label} {kind} after {attempt + 1} attempt(s): {name}",
            **self._context(call),
        ) from None

    def after_response(
        self, call: Call, response: httpx.Response, body: bytes, attempt: int, waited_s: float, sent_at: datetime
    ) -> float | None:
        """Decide after an answer: None when it is a success, seconds to wait to retry, or raise."""
        if call.api:
            self.rate_limit.observe(response.headers)
            # Job times are on the server's clock: every API answer's Date header bounds its offset.
            self.clock.observe_date(response.headers.get("Date"), sent_at, utcnow())
        status = response.status_code
        if 200 <= status < 300:
            return None
        retry_after = parse_retry_after(response.headers.get("Retry-After"))
        if status == 429 and retry_after is not None and call.api:
            self.rate_limit.defer_to_retry_after()
        if is_retryable_status(status, idempotent=call.idempotent) and attempt + 1 < self.retry.max_attempts:
            wait = retry_after if retry_after is not None else self.retry.backoff(attempt)
            if waited_s + wait <= self.retry.max_total_wait_s:
                logger.info("%s answered %s; retrying in %.2fs", call.label, status, wait)
                return wait
        # A proxy or gateway may echo the request (its Authorization header) in its error text.
        message = self.redact(_error_message(body) or f"HTTP {status}")
        common = self._context(call, response)
        if call.process is not None and status >= 500:
            raise FlokanUnknownOutcomeError(
                f"{message}: the outcome of {call.label} is unknown (HTTP {status} after the request was sent); "
                "settle it from GET /jobs before retrying",
                request=call.process,
                sent_at=sent_at,
                cause=f"HTTP {status}",
                **common,
            )
        if not call.api and call.method == "PUT":
            raise FlokanUploadError(f"upload refused: {message}", **common)
        error_class = error_class_for(status, message)
        if error_class is FlokanRateLimitError:
            raise FlokanRateLimitError(message, retry_after_s=retry_after, **common)
        raise error_class(message, **common)

    def envelope(self, call: Call, response: httpx.Response, body: bytes, sent_at: datetime) -> dict[str, Any]:
        """The ``{"success": true, "data": ...}`` envelope of a success, or a clear error."""
        try:
            parsed = json.loads(body)
        except (UnicodeDecodeError, ValueError):
            raise self._malformed(call, response, sent_at, "the body is not JSON") from None
        if not isinstance(parsed, dict) or parsed.get("success") is not True or "data" not in parsed:
            raise self._malformed(call, response, sent_at, "the body is not a success envelope with data")
        return parsed

    def parse(self, model: type[ModelT], call: Call, response: httpx.Response, body: bytes, sent_at: datetime) -> ModelT:
        """Validate the envelope's ``data`` against ``model``."""
        parsed = self.validate(model, self.envelope(call, response, body, sent_at)["data"], call, response, sent_at)
        if isinstance(parsed, ProcessResult):
            # The job was created on the server while this request was open.
            self.clock.observe_stamp(parsed.created_at, sent_at, utcnow())
        return parsed

    def validate(self, model: type[ModelT], data: Any, call: Call, response: httpx.Response, sent_at: datetime) -> ModelT:
        """Validate already-decoded ``data`` against ``model``, or raise a clear error."""
        try:
            return model.model_validate(data)
        except ValidationError as exc:
            problems = "; ".join(f"{'.'.join(map(str, e['loc']))}: {e['msg']}" for e in exc.errors()[:3])
            raise self._malformed(call, response, sent_at, f"unexpected fields ({problems})") from None

    def too_big(self, call: Call, response: httpx.Response, sent_at: datetime) -> FlokanError:
        """The error for an answer larger than ``call.max_body_bytes``."""
        return self._malformed(call, response, sent_at, f"the body exceeds {call.max_body_bytes} bytes")

    def _context(self, call: Call, response: httpx.Response | None = None) -> dict[str, Any]:
        """What every error of ``call`` carries: status, request id, rate-limit state, method and path."""
        context: dict[str, Any] = {"rate_limit": self.rate_limit.state, "method": call.method, "path": call.path}
        if response is not None:
            context.update(status_code=response.status_code, request_id=response.headers.get("X-Request-Id"))
        return context

    def _malformed(self, call: Call, response: httpx.Response, sent_at: datetime, what: str) -> FlokanError:
        """The error for an answer that is not the documented envelope."""
        if call.process is not None:
            # A 2xx from /process means the job ran and was charged even if we cannot read it.
            return FlokanUnknownOutcomeError(
                f"{call.label} answered {response.status_code} but {what}; the job may have been charged: "
                "settle it from GET /jobs",
                request=call.process,
                sent_at=sent_at,
                cause="malformed response",
                **self._context(call, response),
            )
        return FlokanResponseError(f"malformed response from {call.label}: {what}", **self._context(call, response))


def _error_message(body: bytes) -> str | None:
    try:
        parsed = json.loads(body)
    except (UnicodeDecodeError, ValueError):
        text = body[:200].decode("utf-8", "replace").strip()
        return f"non-JSON error body: {text!r}" if text else None
    if isinstance(parsed, dict) and isinstance(parsed.get("error"), str):
        # JSON may carry lone surrogates (``\\ud800``); an exception message must stay valid text.
        return parsed["error"].encode("utf-8", "backslashreplace").decode("utf-8")
    return None
