"""The DuckDB credit ledger: write-ahead attempt records, a durable spool, and cost views.

Example:
    >>> import tempfile, os
    >>> ledger = CreditLedger(os.path.join(tempfile.mkdtemp(), "ledger.duckdb"))
    >>> aid = ledger.begin_attempt(asset="images", sku="MUG-1", prompt="red mug",
    ...                            model_tier="pro", fingerprint="fp1")
    >>> ledger.finish_attempt(aid, status="completed", job_id="j1", credits_consumed=50)
    True
    >>> ledger.find_reusable("images", "MUG-1", "fp1").job_id
    'j1'
"""

from flokan_dagster.ledger.compaction import Compaction, LedgerCompactionError
from flokan_dagster.ledger.connection import LedgerLockedError
from flokan_dagster.ledger.records import ORIGINS, STATUSES, AttemptOrigin, AttemptRecord, AttemptStatus
from flokan_dagster.ledger.schema import SCHEMA_VERSION, VIEW_NAMES, LedgerSchemaError
from flokan_dagster.ledger.store import CreditLedger
from flokan_dagster.ledger.views import cost_report_markdown, cost_summary, render_markdown, summarize

__all__ = [
    "ORIGINS",
    "SCHEMA_VERSION",
    "STATUSES",
    "VIEW_NAMES",
    "AttemptOrigin",
    "AttemptRecord",
    "AttemptStatus",
    "Compaction",
    "CreditLedger",
    "LedgerCompactionError",
    "LedgerLockedError",
    "LedgerSchemaError",
    "cost_report_markdown",
    "cost_summary",
    "render_markdown",
    "summarize",
]
