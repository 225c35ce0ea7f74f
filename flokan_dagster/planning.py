"""Decide, per SKU of a run, what it needs before anything is spent.

Planning has three stages, each reading or writing only the batch's own SKUs:

1. **Read**: the batch's catalog rows (:meth:`CatalogFile.catalog_for`, done by the caller) and
   the attempts that decide the batch, the asset's and its upstream's (:func:`read_history`:
   the latest completed ones and the unsettled ones for the current inputs, chosen in SQL;
   never the whole ledger).
2. **Decide** (:func:`decide`): an unchanged SKU whose image is in the store is reused (nothing
   spent); one whose paid image is missing from the store is downloaded again; a bad catalog
   row, or a chained edit whose upstream has no image yet, fails by name. Everything else
   becomes a task for ``/process``, carrying any earlier attempt whose outcome is still unknown
   so it is settled before paying again.
3. **Record**: refusals of invalid rows go to the ledger as ``rejected`` (nothing spent).

Claiming the tasks' SKUs against other runs is a separate step after planning, on the plan's
tasks (:func:`claim_tasks`): a SKU another live run holds fails by name and is not sent.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import dataclass, field

from flokan_dagster.batch import SkuOutcome, SkuTask
from flokan_dagster.catalog import Catalog
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import AttemptRecord, CreditLedger
from flokan_dagster.ledger.claims import Judge

UNSETTLED = ("unknown", "pending")


@dataclass
class BatchPlan:
    """What a run will do.

    Attributes:
        tasks: SKUs that need the API (a new job, a settlement, or a re-download).
        settled: SKUs decided without the API: reused images and refusals.
        rejected: Refusals of invalid catalog rows to record in the ledger, as (SKU, error).
    """

    tasks: list[SkuTask] = field(default_factory=list)
    settled: list[SkuOutcome] = field(default_factory=list)
    rejected: list[tuple[str, str]] = field(default_factory=list)


@dataclass
class BatchHistory:
    """The attempts that decide a batch's SKUs, by SKU: the asset's own and its upstream's.

    Holds what :meth:`CreditLedger.deciding_attempts` returns (the latest completed attempts and
    the unsettled ones for the current inputs); :func:`decide` gives the same plan for it as for
    every attempt.

    Attributes:
        attempts: The asset's attempts per SKU, oldest first.
        upstream: The upstream asset's attempts per SKU (empty without an upstream).
    """

    attempts: dict[str, list[AttemptRecord]] = field(default_factory=dict)
    upstream: dict[str, list[AttemptRecord]] = field(default_factory=dict)


def read_history(
    ledger: CreditLedger, catalog: Catalog, skus: Iterable[str], asset: str, upstream: str | None = None
) -> BatchHistory:
    """Read the attempts that decide ``skus``: the upstream's latest image, then the asset's attempts for the current inputs.

    Two queries sized by the batch (:meth:`CreditLedger.deciding_attempts`): the upstream's
    latest completed attempt per SKU (whose image is part of the fingerprint), then the asset's
    attempts for each SKU's current fingerprint.

    Example:
        >>> read_history(ledger, catalog, ["MUG-1"], "hero_images").attempts["MUG-1"][0].status  # doctest: +SKIP
        'completed'
    """
    wanted = [sku for sku in dict.fromkeys(skus) if sku in catalog.specs]
    history = BatchHistory()
    if upstream is not None:
        history.upstream = _by_sku(ledger.deciding_attempts(upstream, dict.fromkeys(wanted)))
    prints: dict[str, str | None] = {}
    for sku in wanted:
        source = _latest_completed(history.upstream.get(sku, [])) if upstream is not None else None
        if upstream is not None and (source is None or not source.result_sha256):
            continue  # decided without the asset's history: the upstream image is missing
        prints[sku] = catalog.specs[sku].fingerprint(upstream=source.result_sha256 if source else None)
    history.attempts = _by_sku(ledger.deciding_attempts(asset, prints))
    return history


def _by_sku(records: list[AttemptRecord]) -> dict[str, list[AttemptRecord]]:
    grouped: dict[str, list[AttemptRecord]] = defaultdict(list)
    for record in records:
        if record.sku is not None:
            grouped[record.sku].append(record)
    return dict(grouped)


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
    """Plan a batch: read its history, decide each SKU, record the refusals of invalid rows.

    Args:
        skus: The run's SKUs.
        catalog: At least the batch's catalog rows (``CatalogFile.catalog_for(skus)``).
        ledger: The credit ledger (read for the batch's SKUs only; refusals written).
        store: Where images are kept (a reusable image must still be there).
        asset: The asset key string.
        run_id: This run's id (its own earlier attempts are not "another run's").
        upstream: The upstream asset of a chained edit.
        force: Regenerate even unchanged SKUs.
    """
    # A damaged spool file may hold part of these SKUs' history (even a paid attempt's record):
    # nothing is decided for them, not even reuse, until `flokan-dagster ledger doctor` resolves it.
    quarantined = ledger.quarantine_blocks(asset, skus)
    open_skus = [sku for sku in skus if sku not in quarantined]
    history = read_history(ledger, catalog, open_skus, asset, upstream)
    plan = decide(open_skus, catalog, history, store=store, run_id=run_id, upstream=upstream, force=force)
    plan.settled.extend(SkuOutcome(sku, "failed", error=f"SKU {sku!r}: {why}") for sku, why in quarantined.items())
    for sku, error in plan.rejected:
        ledger.record_rejected(asset=asset, sku=sku, error=error, run_id=run_id)
    return plan


def decide(
    skus: list[str],
    catalog: Catalog,
    history: BatchHistory,
    *,
    store: ImageStore,
    run_id: str | None,
    upstream: str | None = None,
    force: bool = False,
) -> BatchPlan:
    """Decide each SKU from its catalog row and its history; reads nothing but the image store.

    Example:
        >>> decide(["GONE"], Catalog(), BatchHistory(), store=store, run_id=None).settled[0].error  # doctest: +SKIP
        "SKU 'GONE' is not in the catalog any more"
    """
    plan = BatchPlan()
    for sku in skus:
        problem = catalog.problems.get(sku)
        spec = catalog.specs.get(sku)
        if spec is None:
            error = problem.message if problem else f"SKU {sku!r} is not in the catalog any more"
            plan.rejected.append((sku, error))
            plan.settled.append(SkuOutcome(sku, "failed", error=error))
            continue
        source = None
        if upstream is not None:
            source = _latest_completed(history.upstream.get(sku, []))
            if source is None or not source.result_sha256:
                error = f"SKU {sku!r}: upstream asset {upstream!r} has no stored image for this SKU yet; materialize it first"
                plan.settled.append(SkuOutcome(sku, "failed", error=error))
                continue
        fingerprint = spec.fingerprint(upstream=source.result_sha256 if source else None)
        attempts = history.attempts.get(sku, [])
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
        # This run's own unsettled attempts are included: a step retried by Dagster (RetryPolicy)
        # runs under the same run id, and its first try's requests may be paid already.
        # Another live run's SKUs are refused by claim_tasks, not here.
        unsettled = [a for a in attempts if a.status in UNSETTLED and a.fingerprint == fingerprint]
        # The send-time check reuses the latest completed attempt unless it is the one seen here
        # (force): the latest is all it needs, and all a batch-sized history read returns.
        seen = _latest_completed([a for a in attempts if a.fingerprint == fingerprint])
        known = frozenset([seen.attempt_id]) if seen is not None else frozenset()
        plan.tasks.append(SkuTask(spec, fingerprint, upstream=source, unsettled=unsettled, known_results=known))
    return plan


def claim_tasks(plan: BatchPlan, *, ledger: CreditLedger, asset: str, run_id: str, judge: Judge) -> BatchPlan:
    """Claim the SKU of every task of ``plan`` for ``run_id``; the refused ones fail by name.

    A SKU claimed by another run that ``judge`` finds alive (or a ledger that stays locked) is
    not sent: its task becomes a failed outcome naming the run and the evidence. A claim taken
    over from a dead run keeps the task, whose earlier attempts are settled before any send.

    Returns:
        The plan with only claimed tasks left.
    """
    if not plan.tasks:
        return plan
    outcome = ledger.claim_skus(asset, run_id, {task.spec.sku: task.fingerprint for task in plan.tasks}, judge)
    kept = []
    for task in plan.tasks:
        refusal = outcome.refused.get(task.spec.sku)
        if refusal is None:
            kept.append(task)
        else:
            plan.settled.append(SkuOutcome(task.spec.sku, "failed", error=refusal))
    plan.tasks = kept
    return plan


def _latest_completed(records: list[AttemptRecord]) -> AttemptRecord | None:
    # A row may lack result_image_id (an optional field of job rows): it is filled from
    # GET /jobs/:id when a chained edit needs it, and reuse does not need it at all.
    done = [r for r in records if r.status == "completed"]
    return max(done, key=lambda r: (r.completed_at or r.updated_at or r.recorded_at, r.revision or 0), default=None)
