"""Server-side request validation, as the real service applies it: every failure is a 400
whose message names the field and the rule (``"model_tier: must be one of ..."``).

The emulator imports nothing from the rest of the package, so the documented rules are
restated here; the client's copy lives in ``flokan_dagster.api.rules``.

Example:
    >>> validate_process({"prompt": "a red chair", "model_tier": "pro"}).provider
    'platform'
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from flokan_dagster.emulator.errors import ApiError

MODEL_TIERS: tuple[str, ...] = ("pro", "standard", "creative")
PLATFORM = "platform"
BYOK_TIERS: dict[str, tuple[str, ...]] = {
    "openai": ("pro", "standard"),
    "google": ("pro",),
    "fal": ("pro", "standard", "creative"),
    "kie": ("pro", "standard", "creative"),
}
PROVIDERS: tuple[str, ...] = (PLATFORM, *BYOK_TIERS)
MIME_TYPES: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp", "image/gif")
JOB_STATUSES: tuple[str, ...] = ("pending", "processing", "completed", "failed")
PROMPT_MAX = 10_000
IMAGE_URL_MAX = 2_000
FILE_NAME_MAX = 255
PER_PAGE_MAX = 100

_UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")
_DIGITS = re.compile(r"^[0-9]{1,9}$")


@dataclass(frozen=True)
class ProcessRequest:
    """A validated ``POST /process`` body (uuids lower-cased, provider defaulted)."""

    prompt: str
    model_tier: str
    provider: str
    image_id: str | None
    image_url: str | None
    style_id: str | None
    character_id: str | None


@dataclass(frozen=True)
class UploadRequest:
    """A validated ``POST /upload-url`` body."""

    file_name: str
    mime_type: str
    file_size: int | None


@dataclass(frozen=True)
class JobsQuery:
    """Validated ``GET /jobs`` query parameters."""

    page: int
    per_page: int
    status: str | None


def _show(value: object) -> str:
    """``repr`` of a client value, cut short so an error message stays readable."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


def invalid(field: str, rule: str) -> ApiError:
    """Return the 400 ApiError for ``field`` breaking ``rule``."""
    return ApiError(400, f"{field}: {rule}")


def parse_json_object(raw: bytes) -> dict[str, Any]:
    """Decode a request body that must be a JSON object, else raise a 400."""
    try:
        body = json.loads(raw or b"null")
    except (ValueError, UnicodeDecodeError):
        raise ApiError(400, "body: must be valid JSON") from None
    if not isinstance(body, dict):
        raise ApiError(400, "body: must be a JSON object")
    return body


def _text(body: Mapping[str, Any], field: str) -> str | None:
    value = body.get(field)
    if value is not None and not isinstance(value, str):
        raise invalid(field, f"must be a string, got {type(value).__name__}")
    return value


def _uuid(body: Mapping[str, Any], field: str) -> str | None:
    value = _text(body, field)
    if value is not None and not _UUID.match(value):
        raise invalid(field, f"must be a UUID, got {_show(value)}")
    return value.lower() if value is not None else None


def _tier_and_provider(body: Mapping[str, Any]) -> tuple[str, str]:
    tier = body.get("model_tier")
    if tier is None:
        raise invalid("model_tier", "is required (pro, standard or creative)")
    if tier not in MODEL_TIERS:
        raise invalid("model_tier", f"must be one of {', '.join(MODEL_TIERS)}, got {_show(tier)}")
    provider = body.get("provider")
    if provider is None:
        provider = PLATFORM
    if provider not in PROVIDERS:
        raise invalid("provider", f"must be one of {', '.join(PROVIDERS)}, got {_show(provider)}")
    allowed = BYOK_TIERS.get(provider)
    if allowed is not None and tier not in allowed:
        raise invalid("provider", f"{provider!r} allows model_tier {', '.join(allowed)}, not {tier!r}")
    return tier, provider


def _image_url(body: Mapping[str, Any]) -> str | None:
    url = _text(body, "image_url")
    if url is None:
        return None
    if not url:
        raise invalid("image_url", "must be a non-empty string")
    if len(url) > IMAGE_URL_MAX:
        raise invalid("image_url", f"must be at most {IMAGE_URL_MAX} characters, got {len(url)}")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise invalid("image_url", "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
        host = parts.hostname
        _ = parts.port  # raises on a port that is not a number in 0-65535
    except ValueError:
        raise invalid("image_url", "must be a valid URL") from None
    if parts.scheme.lower() != "https":
        raise invalid("image_url", f"must be an https:// URL, got scheme {parts.scheme or '(none)'!r}")
    if not host:
        raise invalid("image_url", "must name a host")
    return url


def validate_process(body: Mapping[str, Any]) -> ProcessRequest:
    """Check a ``POST /process`` body field by field; the first broken rule is the 400.

    Example:
        >>> validate_process({"prompt": "x", "model_tier": "creative", "provider": "google"})
        Traceback (most recent call last):
        ...
        flokan_dagster.emulator.errors.ApiError: provider: 'google' allows model_tier pro, not 'creative'
    """
    prompt = body.get("prompt")
    if prompt is None:
        raise invalid("prompt", "is required (1-10000 characters)")
    if not isinstance(prompt, str):
        raise invalid("prompt", f"must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise invalid("prompt", "must not be empty (1-10000 characters)")
    if len(prompt) > PROMPT_MAX:
        raise invalid("prompt", f"must be at most {PROMPT_MAX} characters, got {len(prompt)}")
    tier, provider = _tier_and_provider(body)
    image_id = _uuid(body, "image_id")
    image_url = _image_url(body)
    style_id = _uuid(body, "style_id")
    character_id = _uuid(body, "character_id")
    return ProcessRequest(prompt, tier, provider, image_id, image_url, style_id, character_id)


def validate_estimate(body: Mapping[str, Any]) -> tuple[str, str]:
    """Check a ``POST /estimate-credits`` body; return ``(model_tier, provider)``."""
    return _tier_and_provider(body)


def validate_upload(body: Mapping[str, Any]) -> UploadRequest:
    """Check a ``POST /upload-url`` body."""
    file_name = body.get("file_name")
    if file_name is None:
        raise invalid("file_name", f"is required (1-{FILE_NAME_MAX} characters)")
    if not isinstance(file_name, str):
        raise invalid("file_name", f"must be a string, got {type(file_name).__name__}")
    if not 1 <= len(file_name) <= FILE_NAME_MAX:
        raise invalid("file_name", f"must be 1-{FILE_NAME_MAX} characters, got {len(file_name)}")
    mime_type = body.get("mime_type")
    if mime_type is None:
        raise invalid("mime_type", f"is required ({', '.join(MIME_TYPES)})")
    if mime_type not in MIME_TYPES:
        raise invalid("mime_type", f"must be one of {', '.join(MIME_TYPES)}, got {_show(mime_type)}")
    file_size = body.get("file_size")
    if file_size is not None and (isinstance(file_size, bool) or not isinstance(file_size, int) or file_size < 0):
        raise invalid("file_size", f"must be a non-negative integer, got {_show(file_size)}")
    return UploadRequest(file_name, mime_type, file_size)


def _int_param(params: Mapping[str, str], name: str, default: int, low: int, high: int | None) -> int:
    raw = params.get(name)
    if raw is None:
        return default
    if not _DIGITS.match(raw):
        raise invalid(name, f"must be an integer, got {_show(raw)}")
    value = int(raw)
    if value < low or (high is not None and value > high):
        bound = f"between {low} and {high}" if high is not None else f"at least {low}"
        raise invalid(name, f"must be {bound}, got {value}")
    return value


def validate_jobs_query(params: Mapping[str, str]) -> JobsQuery:
    """Check ``GET /jobs`` query parameters: page >= 1, per_page 1-100, a known status."""
    page = _int_param(params, "page", 1, 1, None)
    per_page = _int_param(params, "per_page", 50, 1, PER_PAGE_MAX)
    status = params.get("status")
    if status is not None and status not in JOB_STATUSES:
        raise invalid("status", f"must be one of {', '.join(JOB_STATUSES)}, got {_show(status)}")
    return JobsQuery(page, per_page, status)
