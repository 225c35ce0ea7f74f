"""The documented request rules of Flokan's Image Editor API, in one place.

Both the client (before sending) and the catalog (before a run spends anything) check requests
against these rules, so that a bad value is refused locally with a message naming the field and
the rule, and never reaches a paid endpoint.

Example:
    >>> check_tier_provider("pro", "google")
    >>> check_tier_provider("creative", "google")
    Traceback (most recent call last):
    ...
    flokan_dagster.api.rules.RuleViolation: provider: 'google' allows model_tier pro, not 'creative'
"""

from __future__ import annotations

import re
import uuid
from urllib.parse import urlsplit

DEFAULT_BASE_URL = "https://app.flokan.com/api/v1/image-editor"

MODEL_TIERS: tuple[str, ...] = ("pro", "standard", "creative")
PLATFORM_PROVIDER = "platform"
BYOK_PROVIDERS: tuple[str, ...] = ("openai", "google", "fal", "kie")
PROVIDERS: tuple[str, ...] = (PLATFORM_PROVIDER, *BYOK_PROVIDERS)
# What the API's ``provider_used`` says for a call on Flokan's own keys; we call that ``platform``.
SYSTEM_PROVIDER_USED = "system"


def provider_name(provider_used: str | None) -> str | None:
    """The provider as metadata and reports name it: the API's ``system`` is ``platform``.

    Example:
        >>> provider_name("system"), provider_name("openai"), provider_name(None)
        ('platform', 'openai', None)
    """
    return PLATFORM_PROVIDER if provider_used == SYSTEM_PROVIDER_USED else provider_used
BYOK_TIERS: dict[str, tuple[str, ...]] = {
    "openai": ("pro", "standard"),
    "google": ("pro",),
    "fal": ("pro", "standard", "creative"),
    "kie": ("pro", "standard", "creative"),
}
MIME_TYPES: tuple[str, ...] = ("image/jpeg", "image/png", "image/webp", "image/gif")
JOB_STATUSES: tuple[str, ...] = ("pending", "processing", "completed", "failed")

PROMPT_MAX = 10_000
IMAGE_URL_MAX = 2_000
FILE_NAME_MAX = 255
PER_PAGE_MAX = 100


class RuleViolation(ValueError):
    """A request value breaks one of the API's documented rules.

    Attributes:
        field: The request field (or catalog column) at fault.
        rule: A human sentence stating the rule that was broken.
    """

    def __init__(self, field: str, rule: str) -> None:
        super().__init__(f"{field}: {rule}")
        self.field = field
        self.rule = rule


def check_prompt(prompt: object) -> str:
    """Return ``prompt`` if it is a string of 1-10000 characters, else raise RuleViolation."""
    if not isinstance(prompt, str):
        raise RuleViolation("prompt", f"must be a string, got {type(prompt).__name__}")
    if not prompt.strip():
        raise RuleViolation("prompt", "must not be empty (1-10000 characters)")
    if len(prompt) > PROMPT_MAX:
        raise RuleViolation("prompt", f"must be at most {PROMPT_MAX} characters, got {len(prompt)}")
    return prompt


def check_model_tier(model_tier: object) -> str:
    """Return ``model_tier`` if it is one of pro, standard, creative."""
    if model_tier not in MODEL_TIERS:
        raise RuleViolation("model_tier", f"must be one of {', '.join(MODEL_TIERS)}, got {model_tier!r}")
    return str(model_tier)


def check_provider(provider: object) -> str:
    """Return the provider (``None`` means ``platform``) if it is a documented one."""
    if provider is None:
        return PLATFORM_PROVIDER
    if provider not in PROVIDERS:
        raise RuleViolation("provider", f"must be one of {', '.join(PROVIDERS)}, got {provider!r}")
    return str(provider)


def check_tier_provider(model_tier: object, provider: object) -> None:
    """Check the tier, the provider, and the BYOK provider x tier matrix together."""
    tier = check_model_tier(model_tier)
    prov = check_provider(provider)
    allowed = BYOK_TIERS.get(prov)
    if allowed is not None and tier not in allowed:
        raise RuleViolation("provider", f"{prov!r} allows model_tier {', '.join(allowed)}, not {tier!r}")


def check_uuid(field: str, value: object) -> str:
    """Return ``value`` (canonical lowercase) if it is a UUID string."""
    try:
        return str(uuid.UUID(str(value)))
    except (ValueError, TypeError, AttributeError):
        raise RuleViolation(field, f"must be a UUID, got {str(value)[:80]!r}") from None


def check_image_url(url: object) -> str:
    """Return ``url`` if it is an absolute HTTPS URL of at most 2000 characters."""
    if not isinstance(url, str) or not url:
        raise RuleViolation("image_url", "must be a non-empty string")
    if len(url) > IMAGE_URL_MAX:
        raise RuleViolation("image_url", f"must be at most {IMAGE_URL_MAX} characters, got {len(url)}")
    if any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise RuleViolation("image_url", "must not contain spaces or control characters")
    try:
        parts = urlsplit(url)
    except ValueError:
        raise RuleViolation("image_url", "must be a valid URL") from None
    if parts.scheme.lower() != "https":
        raise RuleViolation("image_url", f"must be an https:// URL, got scheme {parts.scheme or '(none)'!r}")
    if not parts.hostname:
        raise RuleViolation("image_url", "must name a host")
    return url


def check_file_name(file_name: object) -> str:
    """Return ``file_name`` if it is a string of 1-255 characters."""
    if not isinstance(file_name, str) or not (1 <= len(file_name) <= FILE_NAME_MAX):
        raise RuleViolation("file_name", f"must be 1-{FILE_NAME_MAX} characters")
    return file_name


def check_mime_type(mime_type: object) -> str:
    """Return ``mime_type`` if it is one of the four accepted image types."""
    if mime_type not in MIME_TYPES:
        raise RuleViolation("mime_type", f"must be one of {', '.join(MIME_TYPES)}, got {mime_type!r}")
    return str(mime_type)


def sniff_mime_type(data: bytes) -> str | None:
    """Return the image mime type that ``data``'s magic bytes announce, or None.

    Example:
        >>> sniff_mime_type(b"\\x89PNG\\r\\n\\x1a\\n...")
        'image/png'
    """
    if data.startswith(b"\x89PNG\r\n\x1a\n"):
        return "image/png"
    if data.startswith(b"\xff\xd8\xff"):
        return "image/jpeg"
    if data[:6] in (b"GIF87a", b"GIF89a"):
        return "image/gif"
    if len(data) >= 12 and data[:4] == b"RIFF" and data[8:12] == b"WEBP":
        return "image/webp"
    return None


_EXTENSION_MIME = {
    ".png": "image/png",
    ".jpg": "image/jpeg",
    ".jpeg": "image/jpeg",
    ".webp": "image/webp",
    ".gif": "image/gif",
}


def mime_type_for_name(name: str) -> str | None:
    """Return the mime type a file name's extension suggests, or None."""
    match = re.search(r"\.[A-Za-z0-9]+$", name)
    return _EXTENSION_MIME.get(match.group(0).lower()) if match else None
