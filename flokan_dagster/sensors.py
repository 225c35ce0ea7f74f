"""Dagster sensors and a schedule: reconciliation over ``GET /jobs``, catalog sync, refresh.

- :func:`build_flokan_reconciliation_sensor` runs :func:`~flokan_dagster.reconcile.reconcile`
  each tick: adopted jobs become per-SKU materializations, failed SKUs optionally re-run.
- :func:`build_flokan_catalog_sensor` keeps the dynamic SKU partitions equal to the catalog and
  requests new or changed SKUs when the catalog file changes.
- :func:`build_flokan_refresh_schedule` requests the stale SKUs on a cron.

"Stale" means the catalog row's fingerprint differs from the latest completed attempt's of the
first asset given (or there is none). Give the root asset first: a chained asset (one that edits
another's result) runs in the same batched runs, and its own fingerprint check regenerates it
only when its upstream image changed. Runs cover contiguous ranges of the partitions, at most
``batch_size`` SKUs each, and SKUs already in a queued or running run are not requested again.

Example:
    >>> import dagster as dg
    >>> from flokan_dagster.assets import build_flokan_image_asset
    >>> from flokan_dagster.catalog import CatalogMapping
    >>> mapping = CatalogMapping(prompt_template="Studio photo of {title}")
    >>> hero = build_flokan_image_asset("hero_images", catalog="data/catalog.csv", mapping=mapping)
    >>> defs = dg.Definitions(
    ...     assets=[hero],
    ...     sensors=[
    ...         build_flokan_reconciliation_sensor([hero], rerun_failed=True),
    ...         build_flokan_catalog_sensor([hero], catalog="data/catalog.csv", mapping=mapping),
    ...     ],
    ...     schedules=[build_flokan_refresh_schedule([hero], catalog="data/catalog.csv", mapping=mapping)],
    ... )
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import dagster as dg

from flokan_dagster.assets import SKU_PARTITIONS, partitions_name, sku_materialization
from flokan_dagster.batch import SkuOutcome
from flokan_dagster.catalog import Catalog, CatalogFile, CatalogFileError, CatalogMapping, load_catalog
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.reconcile import FailedSku, ReconcileResult, ReconcileSettings, reconcile
from flokan_dagster.resource import FlokanResourceKeys
from flokan_dagster.runs import RANGE_END_TAG, RANGE_START_TAG, sku_ranges

AssetRef = dg.AssetsDefinition | dg.AssetKey | str

# Dagster's documented run tag for a single-partition run.
PARTITION_TAG = "dagster/partition"
# Dagster's default limit of a sensor or schedule evaluation (its gRPC call), in seconds.
DEFAULT_TICK_TIMEOUT_S = 60.0


def tick_timeout_s(kind: str = "sensor") -> float:
    """How long Dagster waits for a sensor (or schedule) evaluation before giving up on the tick.

    Read as Dagster reads it: ``DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS`` (or
    ``DAGSTER_SCHEDULE_GRPC_TIMEOUT_SECONDS``), else ``DAGSTER_GRPC_TIMEOUT_SECONDS``, else 60.

    Example:
        >>> tick_timeout_s() if "DAGSTER_GRPC_TIMEOUT_SECONDS" not in os.environ else 60.0  # doctest: +SKIP
        60.0
    """
    for variable in (f"DAGSTER_{kind.upper()}_GRPC_TIMEOUT_SECONDS", "DAGSTER_GRPC_TIMEOUT_SECONDS"):
        value = os.environ.get(variable)
        if value:
            try:
                seconds = float(value)
            except ValueError:
                raise ValueError(f"{variable}={value!r} is not a number of seconds") from None
            if seconds <= 0:
                raise ValueError(f"{variable}={value!r} must be positive")
            return seconds
    return DEFAULT_TICK_TIMEOUT_S


def tick_read_timeout_s(kind: str = "sensor") -> float:
    """How long a tick waits for a locked ledger: a third of the tick's limit.

    A ledger locked longer fails that tick only (the next one tries again), rather than the tick
    being cut off by Dagster.
    """
    return tick_timeout_s(kind) / 3


def tick_settings(settings: ReconcileSettings | None = None) -> ReconcileSettings:
    """The reconciliation settings of a tick: ``settings``, or a budget of two thirds of the tick's limit.

    Example:
        >>> tick_settings(ReconcileSettings(budget_s=10)).budget_s
        10
    """
    if settings is not None:
        return settings
    return ReconcileSettings(budget_s=tick_timeout_s("sensor") * 2 / 3)
# Dagster's daemon applies a partitions request key by key (an existence check each), so a
# 100,000-SKU catalog is added over a few ticks, in requests of a bounded size.
PARTITIONS_PER_TICK = 40_000
PARTITION_CHUNK = 10_000
_ACTIVE_RUN_STATUSES = [
    dg.DagsterRunStatus.QUEUED,
    dg.DagsterRunStatus.NOT_STARTED,
    dg.DagsterRunStatus.STARTING,
    dg.DagsterRunStatus.STARTED,
]


def build_flokan_reconciliation_sensor(
    assets: Sequence[AssetRef] = (),
    *,
    name: str = "flokan_reconciliation",
    settings: ReconcileSettings | None = None,
    rerun_failed: bool = False,
    max_reruns: int = 2,
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    resource_keys: FlokanResourceKeys = FlokanResourceKeys(),
) -> dg.SensorDefinition:
    """Make the sensor that reconciles ``GET /jobs`` with the credit ledger each tick.

    Each tick pages the new jobs within ``settings.budget_s`` (resuming a large backlog on the
    next tick), records external jobs, settles unknown outcomes and materializes the SKUs whose
    paid job it adopted (never paying again), refreshes pending rows, corrects credits, and logs
    what it did. A 429 ends the tick early and keeps its progress in the cursor.

    Args:
        assets: The image assets; required for re-runs (a re-run targets the failed SKU's asset).
        name: Sensor name.
        settings: Paging, overlap and time budget of a tick (default: a budget of two thirds of
            Dagster's sensor timeout, ``DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS`` or
            ``DAGSTER_GRPC_TIMEOUT_SECONDS``, 60 s unless set; read when the tick runs).
        rerun_failed: Request a run of each SKU whose latest attempt failed since the last tick.
        max_reruns: Re-run a SKU while it has at most this many failed attempts; each request's
            ``run_key`` is ``<asset>:<sku>:<failed attempts>``, so one is made per failure.
        minimum_interval_seconds: Seconds between ticks.
        default_status: Whether the sensor starts running when deployed.
        resource_keys: Keys of the resources it uses.

    Returns:
        The sensor; it needs the ``flokan``, ``flokan_ledger`` and ``flokan_images`` resources.

    Example:
        >>> sensor = build_flokan_reconciliation_sensor(["hero_images"], rerun_failed=True)
        >>> sensor.name
        'flokan_reconciliation'
    """
    keys = [_key_of(asset) for asset in assets]
    if rerun_failed and not keys:
        raise ValueError("rerun_failed needs the assets whose failed SKUs are re-run")
    if max_reruns < 0:
        raise ValueError("max_reruns must not be negative")

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        target=keys or None,
        required_resource_keys=resource_keys.all(),
        description="Reconciles Flokan's GET /jobs with the credit ledger: external jobs, unknown outcomes, credits.",
    )
    def _reconciliation_sensor(context: dg.SensorEvaluationContext, **_resources: object) -> dg.SensorResult:
        # (a direct call, as in tests, also passes the resources by key; they are read from the context)
        tick = tick_settings(settings)
        flokan = resource_keys.flokan_of(context.resources)
        # A long Retry-After or a hung read must end the tick (progress kept), not hold it past its budget:
        # two reads of a quarter of the budget each plus the capped waiting fit in it (five attempts,
        # the resource's default, did not: a tick of a 6 s timeout took 6.4 s against a server that hung).
        bounded = flokan.model_copy(update={
            "max_total_wait_s": min(flokan.max_total_wait_s, tick.reserve_s),
            "read_timeout_s": min(flokan.read_timeout_s, tick.budget_s / 4),
            "max_attempts": min(flokan.max_attempts, 2),
        })  # fmt: skip
        with bounded.get_client() as client:
            result = reconcile(
                client, resource_keys.ledger_of(context.resources).get_ledger(read_timeout_s=tick.budget_s / 4),
                resource_keys.images_of(context.resources).get_store(), context.cursor, tick, log=context.log,
            )
        context.log.info(f"Flokan reconciliation: {result.summary.describe()}")
        for failed in result.failed:
            context.log.warning(
                f"{failed.asset}/{failed.sku}: latest attempt failed ({failed.failed_attempts} failed so far): {failed.error}"
            )
        reruns = rerun_requests(result.failed, keys, max_reruns, context.log) if rerun_failed else []
        return dg.SensorResult(
            asset_events=adoption_materializations(result), run_requests=reruns, cursor=result.cursor.to_json()
        )

    return _reconciliation_sensor


def adoption_materializations(result: ReconcileResult) -> list[dg.AssetMaterialization]:
    """One materialization per adopted SKU, with the same metadata a run would give it.

    Example:
        >>> adoption_materializations(result)[0].partition  # doctest: +SKIP
        'MUG-1'
    """
    return [
        sku_materialization(
            dg.AssetKey.from_user_string(adoption.asset),
            SkuOutcome(
                adoption.sku, "adopted", record=adoption.record, stored=adoption.stored,
                credits_spent=int(adoption.record.credits_consumed or 0),
            ),
        )  # fmt: skip
        for adoption in result.adoptions
    ]


def rerun_requests(failed: Sequence[FailedSku], keys: Sequence[dg.AssetKey], max_reruns: int, log: Any) -> list[dg.RunRequest]:
    """Run requests for failed SKUs of ``keys``, one per failure, while under ``max_reruns``.

    Example:
        >>> rerun_requests([FailedSku("hero_images", "MUG-1", "HTTP 500", "j1", 1)],
        ...                [dg.AssetKey("hero_images")], 2, None)[0].run_key
        'hero_images:MUG-1:1'
    """
    by_name = {key.to_user_string(): key for key in keys}
    requests = []
    for sku in failed:
        key = by_name.get(sku.asset)
        if key is None:
            continue
        if sku.failed_attempts > max_reruns:
            log.warning(f"{sku.asset}/{sku.sku}: {sku.failed_attempts} failed attempts, not re-run again (cap {max_reruns})")
            continue
        requests.append(
            dg.RunRequest(
                run_key=f"{sku.asset}:{sku.sku}:{sku.failed_attempts}",
                asset_selection=[key],
                partition_key=sku.sku,
                tags={"flokan/rerun_attempt": str(sku.failed_attempts)},
            )
        )
    return requests


def build_flokan_catalog_sensor(
    assets: Sequence[AssetRef],
    *,
    catalog: str | Path,
    mapping: CatalogMapping,
    catalog_table: str | None = None,
    partitions_def: dg.DynamicPartitionsDefinition = SKU_PARTITIONS,
    batch_size: int = 25,
    max_runs_per_tick: int = 100,
    partitions_per_tick: int = PARTITIONS_PER_TICK,
    name: str = "flokan_catalog_sync",
    minimum_interval_seconds: int = 60,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.STOPPED,
    resource_keys: FlokanResourceKeys = FlokanResourceKeys(),
) -> dg.SensorDefinition:
    """Make the sensor that keeps the SKU partitions equal to the catalog and runs new or changed SKUs.

    A tick does nothing while the catalog file's content is unchanged. Otherwise it adds the new
    SKUs to the dynamic partitions, removes the deleted ones, and requests batched runs of every
    valid SKU whose fingerprint differs from its latest completed image (new SKUs included).
    Invalid rows become partitions but are not run: the tick logs their problems by name.

    The partition diff and the staleness check are SQL over the catalog and the ledger. A large
    change is spread over ticks: at most ``partitions_per_tick`` partitions are added or removed
    per tick (in requests of ``PARTITION_CHUNK`` keys, which Dagster applies key by key), and at
    most ``max_runs_per_tick`` runs requested; until everything is done the cursor keeps the
    catalog as unfinished, so the next tick goes on from where this one stopped.

    Args:
        assets: The image assets to run, root asset first (its fingerprint decides "changed").
        catalog: The catalog file (CSV, Parquet, or a DuckDB database with ``catalog_table``).
        mapping: The same mapping the root asset uses.
        catalog_table: Table name when ``catalog`` is a DuckDB database.
        partitions_def: The SKU partitions.
        batch_size: SKUs per run.
        max_runs_per_tick: Run requests per tick; the rest follow on the next ticks.
        partitions_per_tick: Partitions added plus deleted per tick; the rest follow on the next ticks.
        name: Sensor name.
        minimum_interval_seconds: Seconds between ticks.
        default_status: Whether the sensor starts running when deployed.
        resource_keys: The resource keys the sensor reads (the ledger's).

    Returns:
        The sensor; it needs the ``flokan_ledger`` resource.

    Example:
        >>> sensor = build_flokan_catalog_sensor(["hero_images"], catalog="data/catalog.csv",
        ...                                      mapping=CatalogMapping(prompt_column="prompt"))
        >>> sensor.name
        'flokan_catalog_sync'
    """
    keys = _keys_of(assets)
    _check_batching(batch_size, max_runs_per_tick)
    if partitions_per_tick < 1:
        raise ValueError("partitions_per_tick must be at least 1")
    root = keys[0].to_user_string()

    @dg.sensor(
        name=name,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        target=keys,
        required_resource_keys={resource_keys.ledger},
        description=f"Syncs the SKU partitions with {Path(catalog).name} and runs new or changed SKUs.",
    )
    def _catalog_sensor(context: dg.SensorEvaluationContext, **_resources: object) -> dg.SensorResult | dg.SkipReason:
        flokan_ledger = resource_keys.ledger_of(context.resources)
        state = _CatalogCursor.decode(context.cursor, context.log)
        digest = catalog_digest(catalog, catalog_table)
        if digest == state.digest:
            return dg.SkipReason("catalog unchanged")
        try:
            catalog_file = CatalogFile.open(catalog, mapping, catalog_table)
        except CatalogFileError as exc:
            context.log.error(str(exc))
            return dg.SkipReason(str(exc))
        with catalog_file:
            existing = context.instance.get_dynamic_partitions(partitions_name(partitions_def))
            added, deleted = catalog_file.partition_changes(existing)
            # Deletions first (a removed SKU must stop being run), then additions, within the tick's share.
            deleting = deleted[:partitions_per_tick]
            adding = added[: partitions_per_tick - len(deleting)]
            table = catalog_file.catalog()
        _log_problems(context.log, table)
        gone = set(deleting)
        ordered = [key for key in existing if key not in gone] + adding
        busy = skus_in_active_runs(context.instance, ordered, keys)
        present = set(ordered)
        ledger = flokan_ledger.get_ledger(read_timeout_s=tick_read_timeout_s("sensor"))
        stale = [sku for sku in stale_skus(table, ledger, root) if sku in present and sku not in busy]
        ranges = sku_ranges(ordered, stale, batch_size)
        prefix = f"catalog:{digest[:12]}:{state.ticks}"
        requests = [_range_request(prefix, keys, first, last) for first, last in ranges[:max_runs_per_tick]]
        left = len(added) - len(adding) + len(deleted) - len(deleting)
        context.log.info(
            f"catalog {Path(catalog).name}: {len(table.specs)} valid SKU(s), {len(adding)} of {len(added)} added, "
            f"{len(deleting)} of {len(deleted)} deleted, {len(stale)} new or changed, {len(busy)} in queued or running "
            f"runs; {len(requests)} run(s) requested" + (f"; {left} partition change(s) left for the next ticks" if left else "")
        )
        partition_requests: list[dg.AddDynamicPartitionsRequest | dg.DeleteDynamicPartitionsRequest] = []
        partition_requests += [partitions_def.build_delete_request(chunk) for chunk in _chunks(deleting)]
        partition_requests += [partitions_def.build_add_request(chunk) for chunk in _chunks(adding)]
        # With partitions or runs left for later ticks the digest is not saved, so the next tick goes on.
        done = not left and len(ranges) <= max_runs_per_tick
        cursor = _CatalogCursor(digest if done else state.digest, state.ticks + 1)
        return dg.SensorResult(run_requests=requests, dynamic_partitions_requests=partition_requests, cursor=cursor.encode())

    return _catalog_sensor


def build_flokan_refresh_schedule(
    assets: Sequence[AssetRef],
    *,
    catalog: str | Path,
    mapping: CatalogMapping,
    catalog_table: str | None = None,
    cron_schedule: str = "0 4 * * *",
    execution_timezone: str = "UTC",
    partitions_def: dg.DynamicPartitionsDefinition = SKU_PARTITIONS,
    batch_size: int = 25,
    max_runs_per_tick: int = 400,
    name: str = "flokan_refresh",
    default_status: dg.DefaultScheduleStatus = dg.DefaultScheduleStatus.STOPPED,
    resource_keys: FlokanResourceKeys = FlokanResourceKeys(),
) -> dg.ScheduleDefinition:
    """Make a schedule that requests, in batched runs, only the stale SKUs of the partitions.

    Staleness is one SQL join of the catalog's fingerprints with the ledger
    (:meth:`CreditLedger.stale_skus`).

    Args:
        assets: The image assets to run, root asset first (its fingerprint decides "stale").
        catalog: The catalog file.
        mapping: The same mapping the root asset uses.
        catalog_table: Table name when ``catalog`` is a DuckDB database.
        cron_schedule: When to refresh (cron syntax).
        execution_timezone: Time zone of ``cron_schedule``.
        partitions_def: The SKU partitions.
        batch_size: SKUs per run.
        max_runs_per_tick: Run requests per evaluation; the rest wait for the next one.
        name: Schedule name.
        default_status: Whether the schedule starts running when deployed.

    Returns:
        The schedule; it needs the ``flokan_ledger`` resource.

    Example:
        >>> schedule = build_flokan_refresh_schedule(["hero_images"], catalog="data/catalog.csv",
        ...                                          mapping=CatalogMapping(prompt_column="prompt"),
        ...                                          cron_schedule="0 3 * * 1")
        >>> schedule.cron_schedule
        '0 3 * * 1'
    """
    keys = _keys_of(assets)
    _check_batching(batch_size, max_runs_per_tick)
    root = keys[0].to_user_string()

    @dg.schedule(
        cron_schedule=cron_schedule,
        name=name,
        execution_timezone=execution_timezone,
        default_status=default_status,
        target=keys,
        required_resource_keys={resource_keys.ledger},
        description=f"Regenerates the SKUs of {Path(catalog).name} whose inputs changed since their last image.",
    )
    def _refresh_schedule(context: dg.ScheduleEvaluationContext, **_resources: object) -> list[dg.RunRequest] | dg.SkipReason:
        flokan_ledger = resource_keys.ledger_of(context.resources)
        try:
            table = load_catalog(catalog, mapping, table=catalog_table)
        except CatalogFileError as exc:
            context.log.error(str(exc))
            return dg.SkipReason(str(exc))
        ordered = context.instance.get_dynamic_partitions(partitions_name(partitions_def))
        partitions = set(ordered)
        busy = skus_in_active_runs(context.instance, ordered, keys)
        ledger = flokan_ledger.get_ledger(read_timeout_s=tick_read_timeout_s("schedule"))
        stale = [s for s in stale_skus(table, ledger, root) if s in partitions and s not in busy]
        if not stale:
            return dg.SkipReason(f"no stale SKU among {len(partitions)} partition(s)")
        moment = context.scheduled_execution_time or datetime.now(timezone.utc)
        ranges = sku_ranges(ordered, stale, batch_size)
        context.log.info(f"{len(stale)} stale SKU(s) in {len(ranges)} run(s); requesting {min(len(ranges), max_runs_per_tick)}")
        return [_range_request(f"refresh:{moment.isoformat()}", keys, first, last) for first, last in ranges[:max_runs_per_tick]]

    return _refresh_schedule


def stale_skus(catalog: Catalog, ledger: CreditLedger, asset: str) -> list[str]:
    """Valid SKUs whose fingerprint differs from their latest completed image of ``asset`` (or that have none).

    The comparison is SQL in the ledger (:meth:`CreditLedger.stale_skus`).

    Example:
        >>> stale_skus(load_catalog("data/catalog.csv", mapping), ledger, "hero_images")  # doctest: +SKIP
        ['MUG-2']
    """
    return ledger.stale_skus(asset, {sku: spec.fingerprint() for sku, spec in catalog.specs.items()})


def skus_in_active_runs(instance: dg.DagsterInstance, ordered_keys: Sequence[str], keys: Sequence[dg.AssetKey]) -> set[str]:
    """SKUs that a queued or running run of any of ``keys`` already covers.

    Example:
        >>> skus_in_active_runs(dg.DagsterInstance.ephemeral(), ["A"], [dg.AssetKey("x")])
        set()
    """
    wanted, busy = set(keys), set()
    position = {key: index for index, key in enumerate(ordered_keys)}
    for record in instance.get_run_records(filters=dg.RunsFilter(statuses=_ACTIVE_RUN_STATUSES)):
        run = record.dagster_run
        if not run.asset_selection or not wanted & set(run.asset_selection):
            continue
        tags = run.tags
        if PARTITION_TAG in tags:
            busy.add(tags[PARTITION_TAG])
        elif tags.get(RANGE_START_TAG) in position and tags.get(RANGE_END_TAG) in position:
            busy.update(ordered_keys[position[tags[RANGE_START_TAG]] : position[tags[RANGE_END_TAG]] + 1])
    return busy


def catalog_digest(catalog: str | Path, catalog_table: str | None = None) -> str:
    """SHA-256 of the catalog file's bytes (and the table name): what the catalog sensor compares.

    Example:
        >>> catalog_digest("data/catalog.csv")  # doctest: +SKIP
        '3b1f...'
    """
    digest = hashlib.sha256((catalog_table or "").encode() + b"\0")
    with open(catalog, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class _CatalogCursor:
    """The catalog sensor's cursor: the last fully handled catalog digest and a tick counter."""

    digest: str | None = None
    ticks: int = 0

    def encode(self) -> str:
        """The cursor as Dagster stores it."""
        return json.dumps({"v": 1, "digest": self.digest, "ticks": self.ticks}, separators=(",", ":"))

    @classmethod
    def decode(cls, text: str | None, log: Any) -> _CatalogCursor:
        """Read a stored cursor; a corrupt one is logged and starts afresh."""
        if not text:
            return cls()
        try:
            data = json.loads(text)
            digest, ticks = data["digest"], data["ticks"]
            if data.get("v") != 1 or not isinstance(ticks, int) or not (digest is None or isinstance(digest, str)):
                raise ValueError("not a version 1 catalog cursor")
            return cls(digest, ticks)
        except (ValueError, TypeError, KeyError) as exc:
            log.warning(f"catalog sensor cursor ignored ({type(exc).__name__}: {exc}); re-syncing the catalog")
            return cls()


def _range_request(prefix: str, keys: Sequence[dg.AssetKey], first: str, last: str) -> dg.RunRequest:
    return dg.RunRequest(
        run_key=f"{prefix}:{first}:{last}", asset_selection=list(keys), tags={RANGE_START_TAG: first, RANGE_END_TAG: last}
    )


def _log_problems(log: Any, catalog: Catalog, limit: int = 20) -> None:
    problems = [*catalog.problems.values(), *catalog.unkeyed]
    for problem in problems[:limit]:
        log.warning(f"catalog row not run: {problem.message}")
    if len(problems) > limit:
        log.warning(f"... and {len(problems) - limit} more invalid catalog row(s)")


def _chunks(keys: Sequence[str], size: int = PARTITION_CHUNK) -> list[Sequence[str]]:
    return [keys[start : start + size] for start in range(0, len(keys), size)]


def _check_batching(batch_size: int, max_runs_per_tick: int) -> None:
    if batch_size < 1 or max_runs_per_tick < 1:
        raise ValueError("batch_size and max_runs_per_tick must be at least 1")


def _keys_of(assets: Sequence[AssetRef]) -> list[dg.AssetKey]:
    if not assets:
        raise ValueError("give at least one image asset (the root asset first)")
    return [_key_of(asset) for asset in assets]


def _key_of(asset: AssetRef) -> dg.AssetKey:
    if isinstance(asset, dg.AssetsDefinition):
        return asset.key
    # A string is the full key as the ledger writes it ("shop/hero_images").
    return dg.AssetKey.from_user_string(asset) if isinstance(asset, str) else asset
