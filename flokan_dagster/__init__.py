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
from flokan_dagster.assets import SKU_PARTITIONS, FlokanImageConfig, build_flokan_image_asset
from flokan_dagster.catalog import Catalog, CatalogMapping, load_catalog, partition_changes
from flokan_dagster.catalog_asset import build_flokan_catalog_asset
from flokan_dagster.component import FlokanImagesComponent
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import AttemptRecord, CreditLedger, LedgerLockedError, cost_report_markdown, cost_summary
from flokan_dagster.maintenance import build_flokan_ledger_compaction_job, build_flokan_ledger_compaction_schedule
from flokan_dagster.reconcile import ReconcileCursor, ReconcileResult, ReconcileSettings, ReconcileSummary, reconcile
from flokan_dagster.report import build_automation_sensor, build_cost_report_asset, refresh_after_images
from flokan_dagster.resource import FlokanLedgerResource, FlokanResource, FlokanResourceKeys, ImageStoreResource
from flokan_dagster.runs import materialize_skus
from flokan_dagster.sensors import (
    build_flokan_catalog_sensor,
    build_flokan_reconciliation_sensor,
    build_flokan_refresh_schedule,
    stale_skus,
)
from flokan_dagster.translator import DagsterFlokanTranslator, FlokanImageAssetProps

__all__ = [
    "SKU_PARTITIONS",
    "AsyncFlokanClient",
    "AttemptRecord",
    "Catalog",
    "CatalogMapping",
    "CreditEstimate",
    "CreditLedger",
    "DagsterFlokanTranslator",
    "FlokanAuthenticationError",
    "FlokanByokNotConfiguredError",
    "FlokanClient",
    "FlokanConnectionError",
    "FlokanError",
    "FlokanImageAssetProps",
    "FlokanImageConfig",
    "FlokanImagesComponent",
    "FlokanInsufficientCreditsError",
    "FlokanLedgerResource",
    "FlokanNotFoundError",
    "FlokanPermissionError",
    "FlokanRateLimitError",
    "FlokanResource",
    "FlokanResourceKeys",
    "FlokanResponseError",
    "FlokanSafetyFilterError",
    "FlokanServerError",
    "FlokanUnknownOutcomeError",
    "FlokanUnprocessableError",
    "FlokanUploadError",
    "FlokanValidationError",
    "ImageStore",
    "ImageStoreResource",
    "Job",
    "JobPage",
    "LedgerLockedError",
    "ProcessRequest",
    "ProcessResult",
    "RateLimitState",
    "ReconcileCursor",
    "ReconcileResult",
    "ReconcileSettings",
    "ReconcileSummary",
    "build_automation_sensor",
    "build_cost_report_asset",
    "build_flokan_catalog_asset",
    "build_flokan_catalog_sensor",
    "build_flokan_image_asset",
    "build_flokan_ledger_compaction_job",
    "build_flokan_ledger_compaction_schedule",
    "build_flokan_reconciliation_sensor",
    "build_flokan_refresh_schedule",
    "cost_report_markdown",
    "cost_summary",
    "load_catalog",
    "materialize_skus",
    "partition_changes",
    "reconcile",
    "refresh_after_images",
    "stale_skus",
]
