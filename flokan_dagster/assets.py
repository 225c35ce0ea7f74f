"""The per-SKU image asset factory.

``build_flokan_image_asset`` makes an asset partitioned by SKU that generates (text-to-image) or
edits (a local photo, an https URL, or an upstream image asset's result) one image per SKU. A run
covers a batch of SKUs, processed concurrently; each SKU is materialized with its own metadata
as soon as it is done, and only the SKUs that failed are marked failed, by name.

Example:
    >>> from flokan_dagster.catalog import CatalogMapping
    >>> hero = build_flokan_image_asset(
    ...     "hero_images",
    ...     catalog="data/catalog.csv",
    ...     mapping=CatalogMapping(prompt_template="Studio photo of {title} in {color}"),
    ... )
    >>> hero.key.to_user_string()
    'hero_images'
"""

import logging
import time
import warnings
from collections.abc import AsyncIterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import dagster as dg
from pydantic import Field

from flokan_dagster.api import rules
from flokan_dagster.background import LogFunction, LogLine, iterate_in_thread
from flokan_dagster.batch import BatchRunner, SettleSettings, SkuOutcome
from flokan_dagster.budget import BudgetLimits, enforce_budget
from flokan_dagster.catalog import Catalog, CatalogFile, CatalogFileError, CatalogMapping
from flokan_dagster.image_store import inspect_image, thumbnail_data_uri
from flokan_dagster.ledger.claims import ClaimHold
from flokan_dagster.planning import claim_tasks, plan_batch
from flokan_dagster.resource import FlokanResourceKeys
from flokan_dagster.runs import claim_judge
from flokan_dagster.translator import METADATA_PREFIX, DagsterFlokanTranslator, FlokanImageAssetProps

SKU_PARTITIONS_NAME = "flokan_skus"
SKU_PARTITIONS = dg.DynamicPartitionsDefinition(name=SKU_PARTITIONS_NAME)
# Each SKU's outcome is also logged here (record attribute ``flokan_outcome``) so an in-process
# caller such as the CLI can show progress live.
progress_logger = logging.getLogger("flokan_dagster.progress")
CHECK_IMAGE = "stored_image_is_valid"
CHECK_CREDITS = "credits_within_estimate"


class FlokanImageConfig(dg.Config):
    """Run configuration of a Flokan image asset (set it in the launchpad)."""

    force: bool = Field(default=False, description="Regenerate SKUs whose inputs did not change (pays again).")
    run_budget_credits: int | None = Field(
        default=None, ge=0, description="Refuse the run if its estimate exceeds this many credits (overrides the asset's default)."
    )


def build_flokan_image_asset(
    name: str,
    *,
    catalog: str | Path,
    mapping: CatalogMapping,
    catalog_table: str | None = None,
    upstream: dg.AssetsDefinition | dg.AssetKey | str | None = None,
    catalog_asset: dg.AssetsDefinition | dg.AssetKey | str | None = None,
    partitions_def: dg.DynamicPartitionsDefinition = SKU_PARTITIONS,
    batch_size: int = 25,
    run_budget_credits: int | None = None,
    daily_budget_credits: int | None = None,
    expected_format: str = "PNG",
    expected_size: tuple[int, int] | None = None,
    settle_timeout_s: float = 120.0,
    settle_poll_s: float = 2.0,
    pool: str = "flokan",
    key: dg.AssetKey | str | Sequence[str] | None = None,
    key_prefix: str | Sequence[str] | None = None,
    group_name: str | None = None,
    owners: Sequence[str] | None = None,
    tags: Mapping[str, str] | None = None,
    description: str | None = None,
    metadata: Mapping[str, Any] | None = None,
    automation_condition: dg.AutomationCondition | None = None,
    translator: DagsterFlokanTranslator | None = None,
    resource_keys: FlokanResourceKeys = FlokanResourceKeys(),
) -> dg.AssetsDefinition:
    """Make an asset that produces one Flokan image per SKU partition.

    Its spec comes from ``translator`` (:class:`~flokan_dagster.translator.DagsterFlokanTranslator`
    by default); the spec arguments below (``key`` to ``automation_condition``) then override it.
    The ledger records each SKU under the asset's full key (``AssetKey.to_user_string()``, e.g.
    ``shop/hero_images``; a one-part key is its plain name, as in ledgers written before keys
    could have a prefix).

    Args:
        name: Asset name (the translator's default key is ``AssetKey(name)``).
        catalog: The catalog file (CSV, Parquet, or a DuckDB database with ``catalog_table``).
        mapping: Which columns hold the SKU, the prompt (or its template), the source image and
            per-row tier, provider, style and character, with the defaults.
        catalog_table: Table name when ``catalog`` is a DuckDB database.
        upstream: An image asset whose result each SKU edits (a chained edit via its
            ``result_image_id``, never re-uploaded).
        catalog_asset: The asset validating the catalog (e.g. ``build_flokan_catalog_asset``'s),
            drawn as this asset's upstream.
        partitions_def: The SKU partitions (shared by every image asset of a pipeline).
        batch_size: SKUs per run when backfilling (``BackfillPolicy.multi_run``).
        run_budget_credits: Refuse a run whose estimate exceeds this.
        daily_budget_credits: Refuse a run that would take today's (UTC) spending past this.
        expected_format: Image format the stored-image check expects.
        expected_size: ``(width, height)`` the stored-image check expects, if fixed.
        settle_timeout_s: How long a run looks for the job of an unknown outcome.
        settle_poll_s: Pause between those looks.
        pool: Dagster concurrency pool shared by every run calling Flokan.
        key: The asset key (default: the translator's, ``AssetKey(name)``).
        key_prefix: A prefix put before the key.
        group_name: Asset group (default: the translator's, ``flokan``).
        owners: Owners (``team:...`` or e-mail addresses), added to the translator's.
        tags: Tags, added to the translator's.
        description: Asset description (default: the translator's, saying what the asset makes).
        metadata: Definition metadata, added to the translator's.
        automation_condition: When Dagster's automation requests the asset, e.g.
            ``dg.AutomationCondition.on_cron("0 4 * * *")`` (an alternative to the refresh schedule).
        translator: Shapes the spec; subclass ``DagsterFlokanTranslator`` to shape every asset.
        resource_keys: The resource keys the asset reads (``flokan``, ``flokan_ledger``,
            ``flokan_images`` by default).

    Returns:
        The asset, with its two checks: stored image valid (blocking: a failed check stops a
        chained asset downstream in the same run) and credits within estimate.
    """
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    upstream_key = _key_of(upstream) if upstream is not None else None
    catalog_path = str(catalog)
    props = FlokanImageAssetProps(
        name=name, catalog=catalog_path, mapping=mapping, upstream=upstream_key,
        catalog_asset=_key_of(catalog_asset) if catalog_asset is not None else None,
    )  # fmt: skip
    spec = _shape_spec(
        (translator or DagsterFlokanTranslator()).get_asset_spec(props),
        key=key, key_prefix=key_prefix, group_name=group_name, owners=owners, tags=tags,
        description=description, metadata=metadata, automation_condition=automation_condition,
    )  # fmt: skip
    asset_key = spec.key
    # The ledger, the image store and the sensors know an asset by its full key string.
    asset_name = asset_key.to_user_string()
    settle = SettleSettings(timeout_s=settle_timeout_s, poll_s=settle_poll_s)
    expected = expected_format + (f" of {expected_size[0]}x{expected_size[1]}" if expected_size else "")

    with warnings.catch_warnings():
        # backfill_policy is Dagster's (beta) way to batch partitions into one run; we rely on it knowingly.
        warnings.filterwarnings("ignore", message="Parameter `backfill_policy`", category=dg.BetaWarning)
        define = dg.multi_asset(
            name=asset_key.to_python_identifier(),
            specs=[spec.replace_attributes(partitions_def=partitions_def, skippable=True)],
            partitions_def=partitions_def,
            backfill_policy=dg.BackfillPolicy.multi_run(batch_size),
            pool=pool,
            required_resource_keys=resource_keys.all(),
            check_specs=[
                # Blocking: a chained edit in the same run must not start from a bad image.
                dg.AssetCheckSpec(CHECK_IMAGE, asset=asset_key, blocking=True,
                                  description=f"Stored images decode as {expected}"),
                dg.AssetCheckSpec(CHECK_CREDITS, asset=asset_key, description="Credits charged do not exceed the estimate"),
            ],  # fmt: skip
        )

    @define
    def _image_asset(context: dg.AssetExecutionContext, config: FlokanImageConfig):  # type: ignore[no-untyped-def]
        # (no return annotation: Dagster would read it as the type of the step's outputs)
        flokan = resource_keys.flokan_of(context.resources)
        ledger = resource_keys.ledger_of(context.resources).get_ledger()
        store = resource_keys.images_of(context.resources).get_store()
        skus = list(context.partition_keys)
        run_id = context.run.run_id
        claims = ClaimHold(run_id, lambda: ledger.heartbeat_claims(run_id, asset_name), lambda: ledger.release_claims(run_id, asset_name))
        try:
            table = _batch_catalog(catalog_path, mapping, catalog_table, skus)
            plan = plan_batch(
                skus, table, ledger=ledger, store=store, asset=asset_name, run_id=run_id,
                upstream=upstream_key.to_user_string() if upstream_key else None, force=config.force,
            )  # fmt: skip
            # A stage of its own: claim every SKU to be sent; another live run's SKUs fail by name.
            plan = claim_tasks(plan, ledger=ledger, asset=asset_name, run_id=run_id, judge=claim_judge(context.instance))
            limits = BudgetLimits(
                run_budget_credits=config.run_budget_credits if config.run_budget_credits is not None else run_budget_credits,
                daily_budget_credits=daily_budget_credits,
            )

            async def work(log: LogFunction) -> AsyncIterator[SkuOutcome]:
                for outcome in plan.settled:
                    yield outcome
                async with flokan.get_async_client() as client:
                    decision = await enforce_budget(client, ledger, plan.tasks, limits, asset=asset_name, run_id=run_id)
                    for outcome in decision.rejected:
                        yield outcome
                    log("info", f"{len(plan.tasks)} SKU(s) to process, estimated at up to {decision.estimated_credits} credits")
                    if decision.refusal is not None:
                        log("error", decision.refusal)
                        for task in plan.tasks:
                            yield SkuOutcome(task.spec.sku, "failed", error=decision.refusal)
                        return
                    runner = BatchRunner(client=client, ledger=ledger, store=store, asset=asset_name, run_id=run_id,
                                         settle=settle, log=log)  # fmt: skip
                    async for outcome in runner.run(plan.tasks):
                        yield outcome

            outcomes: list[SkuOutcome] = []
            progress = _ProgressLog(context, len(skus))
            # The batch runs on its own event loop so Dagster's handling of each event never pauses it.
            for item in iterate_in_thread(work):
                if isinstance(item, LogLine):
                    getattr(context.log, item.level)(item.message)
                    continue
                outcomes.append(item)
                progress.add(item)
                if item.kind != "failed":
                    yield sku_materialization(asset_key, item)
            progress.flush()
            ledger.flush_spool()
            yield _image_check(asset_key, outcomes, expected_format, expected_size)
            yield _credits_check(asset_key, outcomes)
            failed = [o for o in outcomes if o.kind == "failed"]
            if failed:
                raise dg.Failure(
                    description=f"{len(failed)} of {len(skus)} SKU(s) failed:\n"
                    + "\n".join(f"- {o.sku}: {o.error}" for o in failed),
                    metadata={f"{METADATA_PREFIX}failed_skus": dg.MetadataValue.json({o.sku: o.error for o in failed})},
                    allow_retries=False,
                )
        finally:
            claims.close()

    return _image_asset


def _shape_spec(
    spec: dg.AssetSpec,
    *,
    key: dg.AssetKey | str | Sequence[str] | None,
    key_prefix: str | Sequence[str] | None,
    group_name: str | None,
    owners: Sequence[str] | None,
    tags: Mapping[str, str] | None,
    description: str | None,
    metadata: Mapping[str, Any] | None,
    automation_condition: dg.AutomationCondition | None,
) -> dg.AssetSpec:
    """The translator's spec with the factory's explicit arguments applied over it."""
    replace: dict[str, Any] = {}
    if key is not None:
        replace["key"] = dg.AssetKey.from_coercible(key) if not isinstance(key, str) else dg.AssetKey.from_user_string(key)
    if key_prefix is not None:
        replace["key"] = replace.get("key", spec.key).with_prefix(key_prefix)
    if group_name is not None:
        replace["group_name"] = group_name
    if description is not None:
        replace["description"] = description
    if automation_condition is not None:
        replace["automation_condition"] = automation_condition
    merge: dict[str, Any] = {}
    if owners:
        merge["owners"] = list(owners)
    if tags:
        merge["tags"] = dict(tags)
    if metadata:
        merge["metadata"] = dict(metadata)
    if replace:
        spec = spec.replace_attributes(**replace)
    return spec.merge_attributes(**merge) if merge else spec


def _batch_catalog(path: str, mapping: CatalogMapping, table: str | None, skus: list[str]) -> Catalog:
    """The batch's rows of the catalog (the file is read once, only these rows become specs)."""
    try:
        with CatalogFile.open(path, mapping, table) as catalog_file:
            return catalog_file.catalog_for(skus)
    except CatalogFileError as exc:
        raise dg.Failure(description=str(exc), allow_retries=False) from None


def partitions_name(partitions_def: dg.DynamicPartitionsDefinition) -> str:
    """The name of a dynamic partitions definition (the SKU partitions are always named).

    Example:
        >>> partitions_name(SKU_PARTITIONS)
        'flokan_skus'
    """
    if partitions_def.name is None:
        raise ValueError("the SKU partitions need a name: dg.DynamicPartitionsDefinition(name=...)")
    return partitions_def.name


def _key_of(upstream: dg.AssetsDefinition | dg.AssetKey | str) -> dg.AssetKey:
    if isinstance(upstream, dg.AssetsDefinition):
        return upstream.key
    if isinstance(upstream, str):
        return dg.AssetKey.from_user_string(upstream)  # "shop/hero_images", as the ledger writes it
    return upstream


class _ProgressLog:
    """The run log's progress lines: every failure at once, successes summed up at most every ``every_s``.

    Each line in the run log is an event Dagster stores on the step's thread, which also handles
    every SKU's materialization; at ten SKUs a second one line per success cost the batch about
    a fifth of that thread's time (issue 15). ``progress_logger`` (the CLI's live output) still
    gets every SKU.
    """

    def __init__(self, context: dg.AssetExecutionContext, total: int, every_s: float = 1.0) -> None:
        self.context, self.total, self.every_s = context, total, every_s
        self.done = 0
        self._since: list[SkuOutcome] = []
        self._last_line = time.monotonic()

    def add(self, outcome: SkuOutcome) -> None:
        """Count one SKU's outcome; log it (a failure) or the successes since the last line when due."""
        self.done += 1
        progress_logger.info(
            "%s %s", self.context.asset_key.to_user_string(), outcome.sku,
            extra={"flokan_outcome": outcome, "flokan_asset": self.context.asset_key.to_user_string()},
        )  # fmt: skip
        if outcome.kind == "failed":
            self.context.log.error(f"[{self.done}/{self.total}] {outcome.sku} failed after {outcome.seconds:.1f}s: {outcome.error}")
            return
        self._since.append(outcome)
        if self.done == 1 or time.monotonic() - self._last_line >= self.every_s:
            self.flush()

    def flush(self) -> None:
        """Log the successes not logged yet, one line (the SKU itself when there is one)."""
        since, self._since = self._since, []
        self._last_line = time.monotonic()
        if len(since) == 1:
            one = since[0]
            self.context.log.info(f"[{self.done}/{self.total}] {one.sku} {one.kind} in {one.seconds:.1f}s, {one.credits_spent} credits")
        elif since:
            kinds = ", ".join(f"{sum(o.kind == kind for o in since)} {kind}" for kind in ("made", "adopted", "reused")
                              if any(o.kind == kind for o in since))  # fmt: skip
            slowest = max(since, key=lambda o: o.seconds)
            self.context.log.info(
                f"[{self.done}/{self.total}] {len(since)} SKUs done ({kinds}), {sum(o.credits_spent for o in since)} credits, "
                f"{since[0].sku} .. {since[-1].sku}; slowest {slowest.sku} in {slowest.seconds:.1f}s"
            )


def sku_materialization(key: dg.AssetKey, outcome: SkuOutcome) -> dg.AssetMaterialization:
    """One SKU's materialization, with everything a person auditing the image needs.

    Shared by the asset (as each SKU finishes) and the reconciliation sensor (a job adopted
    after an unknown outcome), so both show the same metadata. Every key is under ``flokan/``.
    ``flokan/credits`` is what this event spent (0 when an unchanged SKU's image is reused), so
    summing it over events, as Dagster+ Insights does, gives the credits really spent;
    ``flokan/job_credits`` is the charge of the job the image came from, repeated on reuse.

    Args:
        key: The image asset.
        outcome: The SKU's outcome; it must carry its ledger record and stored image.
    """
    record, stored = outcome.record, outcome.stored
    assert record is not None and stored is not None
    fields: dict[str, Any] = {
        "outcome": outcome.kind,
        # This event's spend: sums correctly over events (0 when reused), unlike the job's charge.
        "credits": dg.MetadataValue.int(outcome.credits_spent),
        "job_credits": dg.MetadataValue.int(int(record.credits_consumed or 0)),
        "estimated_credits": dg.MetadataValue.int(int(record.estimated_credits or 0)),
        "process_calls": dg.MetadataValue.int(outcome.requests),
        "job_id": record.job_id or "",
        "status": record.status,
        "model_tier": record.model_tier or "",
        "provider_used": rules.provider_name(record.provider_used) or "",  # "platform", as in the report
        "processing_ms": dg.MetadataValue.int(int(record.processing_ms or 0)),
        "seconds": dg.MetadataValue.float(round(outcome.seconds, 3)),
        "result_url": dg.MetadataValue.url(record.result_url or ""),
        "result_image_id": record.result_image_id or "",
        "fingerprint": record.fingerprint or "",
        "width": dg.MetadataValue.int(stored.width),
        "height": dg.MetadataValue.int(stored.height),
        "bytes": dg.MetadataValue.int(stored.size_bytes),
        "sha256": stored.sha256,
        "path": dg.MetadataValue.path(str(stored.path)),
        "thumbnail": dg.MetadataValue.md(f"![{outcome.sku}]({outcome.thumbnail or thumbnail_data_uri(stored.path.read_bytes())})"),
    }
    metadata = {METADATA_PREFIX + name: value for name, value in fields.items()}
    return dg.AssetMaterialization(asset_key=key, partition=outcome.sku, metadata=metadata)


def _image_check(
    key: dg.AssetKey, outcomes: list[SkuOutcome], expected_format: str, expected_size: tuple[int, int] | None
) -> dg.AssetCheckResult:
    problems: dict[str, str] = {}
    checked = 0
    for outcome in outcomes:
        if outcome.stored is None:
            continue
        checked += 1
        try:
            width, height, fmt = inspect_image(outcome.stored.path.read_bytes())
        except (OSError, ValueError) as exc:
            problems[outcome.sku] = str(exc)
            continue
        if fmt != expected_format:
            problems[outcome.sku] = f"format {fmt}, expected {expected_format}"
        elif expected_size is not None and (width, height) != tuple(expected_size):
            problems[outcome.sku] = f"size {width}x{height}, expected {expected_size[0]}x{expected_size[1]}"
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CHECK_IMAGE,
        passed=not problems,
        metadata={f"{METADATA_PREFIX}checked": checked, f"{METADATA_PREFIX}problems": dg.MetadataValue.json(problems)},
    )


def _credits_check(key: dg.AssetKey, outcomes: list[SkuOutcome]) -> dg.AssetCheckResult:
    over: dict[str, str] = {}
    checked = 0
    for outcome in outcomes:
        record = outcome.record
        if record is None or outcome.kind == "reused" or record.estimated_credits is None:
            continue
        checked += 1
        if (record.credits_consumed or 0) > record.estimated_credits:
            over[outcome.sku] = f"charged {record.credits_consumed}, estimated {record.estimated_credits}"
    return dg.AssetCheckResult(
        asset_key=key,
        check_name=CHECK_CREDITS,
        passed=not over,
        severity=dg.AssetCheckSeverity.WARN,
        metadata={f"{METADATA_PREFIX}checked": checked, f"{METADATA_PREFIX}over_estimate": dg.MetadataValue.json(over)},
    )
