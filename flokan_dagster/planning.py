"""Decide, per SKU of a run, what it needs before anything is spent.

An unchanged SKU whose image is in the store is reused (nothing spent); one whose paid image is
missing from the store is downloaded again; a bad catalog row, or a chained edit whose upstream
has no image yet, fails by name. Everything else becomes a task for ``/process``, carrying any
earlier attempt whose outcome is still unknown so it is settled before paying again.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass, field

from flokan_dagster.batch import SkuOutcome, SkuTask
from flokan_dagster.catalog import Catalog
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import AttemptRecord, CreditLedger

UNSETTLED = ("unknown", "pending")


@dataclass
class BatchPlan:
    """What a run will do.

    Attributes:
        tasks: SKUs that need the API (a new job, a settlement, or a re-download).
        settled: SKUs decided without the API: reused images and refusals.
    """

    tasks: list[SkuTask] = field(default_factory=list)
    settled: list[SkuOutcome] = field(default_factory=list)


def plan_batch(
    skus: list[str],
    catalog: Catalog,
    *,
    ledger: CreditLedger,
    store: ImageStore,
    asset: str,
    run_id: str | None,
    upstream: str | None = None,
    force: bool = False,
) -> BatchPlan:
    """Plan a batch: reuse what is unchanged, refuse what is invalid, queue the rest.

    Refusals of invalid rows are recorded in the ledger as ``rejected`` (nothing spent).
    """
    plan = BatchPlan()
    history = _by_sku(ledger.attempts_for(asset=asset))
    upstream_history = _by_sku(ledger.attempts_for(asset=upstream)) if upstream else {}
    for sku in skus:
        problem = catalog.problems.get(sku)
        spec = catalog.specs.get(sku)
        if spec is None:
            error = problem.message if problem else f"SKU {sku!r} is not in the catalog any more"
            ledger.record_rejected(asset=asset, sku=sku, error=error, run_id=run_id)
            plan.settled.append(SkuOutcome(sku, "failed", error=error))
            continue
        source = None
        if upstream is not None:
            source = _latest_completed(upstream_history.get(sku, []))
            if source is None or not source.result_sha256:
                error = f"SKU {sku!r}: upstream asset {upstream!r} has no stored image for this SKU yet; materialize it first"
                plan.settled.append(SkuOutcome(sku, "failed", error=error))
                continue
        fingerprint = spec.fingerprint(upstream=source.result_sha256 if source else None)
        attempts = history.get(sku, [])
        if not force:
            reusable = _latest_completed([a for a in attempts if a.fingerprint == fingerprint])
            if reusable is not None:
                stored = (
                    store.find(reusable.result_path, reusable.result_sha256)
                    if reusable.result_path and reusable.result_sha256
                    else None
                )
                if stored is not None:
                    plan.settled.append(SkuOutcome(sku, "reused", record=reusable, stored=stored))
                    continue
                plan.tasks.append(SkuTask(spec, fingerprint, upstream=source, reuse=reusable))
                continue
        unsettled = [a for a in attempts if a.status in UNSETTLED and a.fingerprint == fingerprint and a.run_id != run_id]
        plan.tasks.append(SkuTask(spec, fingerprint, upstream=source, unsettled=unsettled))
    return plan


def _by_sku(records: list[AttemptRecord]) -> dict[str, list[AttemptRecord]]:
    grouped: dict[str, list[AttemptRecord]] = defaultdict(list)
    for record in records:
        if record.sku is not None:
            grouped[record.sku].append(record)
    return grouped


def _latest_completed(records: list[AttemptRecord]) -> AttemptRecord | None:
    done = [r for r in records if r.status == "completed" and r.result_image_id]
    return max(done, key=lambda r: (r.completed_at or r.updated_at or r.recorded_at, r.revision or 0), default=None)
