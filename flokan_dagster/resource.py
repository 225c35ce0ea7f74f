"""``FlokanResource``: Flokan's Image Editor API as a configurable Dagster resource.

The resource holds configuration only; ``get_client()`` returns a plain
:class:`~flokan_dagster.api.client.FlokanClient` that is testable without Dagster.

Example:
    >>> import dagster as dg
    >>> flokan = FlokanResource(api_key=dg.EnvVar("FLOKAN_API_KEY"))
    >>> defs = dg.Definitions(resources={"flokan": flokan})
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from flokan_dagster.api import rules
from flokan_dagster.api.client import (
    DEFAULT_CONNECT_TIMEOUT_S,
    DEFAULT_MAX_CONCURRENCY,
    DEFAULT_MAX_DOWNLOAD_BYTES,
    DEFAULT_READ_TIMEOUT_S,
    DEFAULT_WRITE_TIMEOUT_S,
    AsyncFlokanClient,
    FlokanClient,
)
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import CreditLedger


class FlokanResource(dg.ConfigurableResource):
    """Connection settings for Flokan's Image Editor API.

    Set ``api_key`` with ``dg.EnvVar("FLOKAN_API_KEY")`` so the key stays out of code and of
    Dagster's stored run config; the resource never shows it in its repr.

    Example:
        >>> resource = FlokanResource(api_key=dg.EnvVar("FLOKAN_API_KEY"), max_concurrency=4)
        >>> with resource.get_client() as client:  # doctest: +SKIP
        ...     print(client.estimate_credits("pro").estimated_credits)
    """

    api_key: str = Field(description='Workspace API key "flk_..." with the image_editor scope. Use dg.EnvVar("FLOKAN_API_KEY").')
    base_url: str = Field(default=rules.DEFAULT_BASE_URL, description="Base URL of the Image Editor API.")
    connect_timeout_s: float = Field(default=DEFAULT_CONNECT_TIMEOUT_S, gt=0, description="Seconds to open a connection.")
    read_timeout_s: float = Field(
        default=DEFAULT_READ_TIMEOUT_S,
        gt=0,
        description="Seconds to wait for an answer. Keep it above the server's 300 s limit for /process.",
    )
    write_timeout_s: float = Field(default=DEFAULT_WRITE_TIMEOUT_S, gt=0, description="Seconds to send a request body.")
    max_attempts: int = Field(default=5, ge=1, description="Attempts per call, the first included (POST /process only repeats after a 429 or a failed connect).")
    backoff_base_s: float = Field(default=0.5, ge=0, description="First retry backoff in seconds; doubles per attempt, with jitter.")
    backoff_max_s: float = Field(default=30.0, ge=0, description="Cap of one retry backoff in seconds.")
    max_total_wait_s: float = Field(default=120.0, ge=0, description="Cap of all retry and rate-limit waiting within one call, in seconds.")
    max_concurrency: int = Field(
        default=DEFAULT_MAX_CONCURRENCY,
        ge=1,
        description="Cap of requests in flight per async client (one run's batch). Within it the client sizes its calls "
        "in flight from the workspace's rate-limit headers and the observed latency.",
    )
    max_download_bytes: int = Field(default=DEFAULT_MAX_DOWNLOAD_BYTES, gt=0, description="Largest result image accepted, in bytes.")
    allow_insecure_http: bool = Field(default=False, description="Allow http:// to a non-loopback host (the key would travel in clear text).")

    def __repr_args__(self) -> Any:
        # Pydantic's repr lists every field; the key must never reach a log line or the UI.
        return [(name, "**********" if name == "api_key" else value) for name, value in super().__repr_args__()]

    def _client_options(self) -> dict[str, Any]:
        return {
            "api_key": self.api_key,
            "base_url": self.base_url,
            "connect_timeout_s": self.connect_timeout_s,
            "read_timeout_s": self.read_timeout_s,
            "write_timeout_s": self.write_timeout_s,
            "max_attempts": self.max_attempts,
            "backoff_base_s": self.backoff_base_s,
            "backoff_max_s": self.backoff_max_s,
            "max_total_wait_s": self.max_total_wait_s,
            "max_download_bytes": self.max_download_bytes,
            "allow_insecure_http": self.allow_insecure_http,
        }

    def get_client(self) -> FlokanClient:
        """A new synchronous client with these settings (close it, or use it as a context manager)."""
        return FlokanClient(**self._client_options())

    def get_async_client(self) -> AsyncFlokanClient:
        """A new async client, paced by the rate limit and capped by ``max_concurrency`` (use ``async with``)."""
        return AsyncFlokanClient(max_concurrency=self.max_concurrency, **self._client_options())


class FlokanLedgerResource(dg.ConfigurableResource):
    """Where the DuckDB credit ledger lives.

    Example:
        >>> ledger = FlokanLedgerResource(database="data/flokan/ledger.duckdb")
        >>> shared = FlokanLedgerResource(database=dg.EnvVar("FLOKAN_LEDGER_DSN"), spool_dir="/var/lib/flokan/spool")
    """

    database: str = Field(
        description=(
            "Where the ledger lives: a DuckDB file path (default, one machine), 'postgresql://user@host:5432/db' "
            "(the shared backend for several machines: tables in PostgreSQL, DuckDB answering every cost query), "
            "or another DuckDB connection string such as 'md:flokan'."
        )
    )
    spool_dir: str | None = Field(
        default=None,
        description=(
            "Directory where records wait while the database is locked or unreachable "
            "(default: '<database>.spool'; required for postgresql:// and md:, on a disk that outlives the run)."
        ),
    )
    lock_timeout_s: float = Field(default=10.0, ge=0, description="Seconds a write retries a locked database before it is spooled.")
    read_timeout_s: float = Field(
        default=120.0,
        ge=0,
        description="Seconds a read (a run's planning, the sensor) waits for a locked database before failing; nothing is spent meanwhile.",
    )

    def get_ledger(self, read_timeout_s: float | None = None) -> CreditLedger:
        """A ledger handle (cheap: connections are opened per write).

        Args:
            read_timeout_s: Override of ``read_timeout_s``, e.g. to fit within a sensor tick.
        """
        return CreditLedger(
            self.database,
            spool_dir=Path(self.spool_dir) if self.spool_dir else None,
            lock_timeout_s=self.lock_timeout_s,
            read_timeout_s=self.read_timeout_s if read_timeout_s is None else read_timeout_s,
        )


class ImageStoreResource(dg.ConfigurableResource):
    """Where result images are written: a local directory or object storage.

    Example:
        >>> images = ImageStoreResource(directory="data/flokan/images")
        >>> shared = ImageStoreResource(directory="s3://my-bucket/flokan",
        ...                             storage_options={"endpoint_url": "http://127.0.0.1:9000"})
    """

    directory: str = Field(
        description="Local directory (created when missing) or object-storage URL such as s3://bucket/prefix, gs://..., az://..."
    )
    storage_options: dict[str, str] = Field(
        default_factory=dict,
        description="fsspec options for an object-storage URL, e.g. endpoint_url for an S3-compatible server; keep credentials in the environment.",
    )

    def get_store(self) -> ImageStore:
        """The image store."""
        return ImageStore(self.directory, storage_options=self.storage_options or None)


@dataclass(frozen=True)
class FlokanResourceKeys:
    """The resource keys a pipeline's assets, sensors and schedule use.

    The defaults suit one pipeline per code location; a second pipeline (a second
    ``FlokanImagesComponent``) needs its own keys, since Dagster allows one definition per key.

    Example:
        >>> FlokanResourceKeys.prefixed("outdoor").ledger
        'outdoor_flokan_ledger'
    """

    flokan: str = "flokan"
    ledger: str = "flokan_ledger"
    images: str = "flokan_images"

    @classmethod
    def prefixed(cls, prefix: str) -> FlokanResourceKeys:
        """Keys ``<prefix>_flokan``, ``<prefix>_flokan_ledger`` and ``<prefix>_flokan_images``."""
        return cls(f"{prefix}_flokan", f"{prefix}_flokan_ledger", f"{prefix}_flokan_images")

    def all(self) -> set[str]:
        """The three keys."""
        return {self.flokan, self.ledger, self.images}

    def flokan_of(self, resources: Any) -> FlokanResource:
        """The API resource among a context's ``resources``."""
        return getattr(resources, self.flokan)

    def ledger_of(self, resources: Any) -> FlokanLedgerResource:
        """The ledger resource among a context's ``resources``."""
        return getattr(resources, self.ledger)

    def images_of(self, resources: Any) -> ImageStoreResource:
        """The image store resource among a context's ``resources``."""
        return getattr(resources, self.images)
