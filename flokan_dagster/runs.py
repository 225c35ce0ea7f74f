"""Dagster runs: materialize chosen SKUs in batches, and tell a live run from a dead one.

A batched run covers a contiguous range of the dynamic SKU partitions (in the instance's order),
at most ``batch_size`` long, exactly like ``BackfillPolicy.multi_run`` splits a backfill.

Example:
    >>> sku_ranges(["A", "B", "C", "D", "E"], ["A", "B", "D"], batch_size=10)
    [('A', 'B'), ('D', 'D')]
"""

from collections.abc import Callable, Iterable, Sequence
from typing import Any

import dagster as dg

from flokan_dagster.ledger.claims import HEARTBEAT_STALE_S, Claim, Judge, Liveness, holder_evidence
from flokan_dagster.ledger.records import utc_now

# Dagster's documented run tags for a partition range (a batched run of a partitioned asset).
RANGE_START_TAG = "dagster/asset_partition_range_start"
RANGE_END_TAG = "dagster/asset_partition_range_end"


def sku_ranges(ordered_keys: Sequence[str], selected: Iterable[str], batch_size: int) -> list[tuple[str, str]]:
    """Split ``selected`` into contiguous ranges of ``ordered_keys``, each at most ``batch_size`` long."""
    if batch_size < 1:
        raise ValueError("batch_size must be at least 1")
    wanted = set(selected)
    missing = wanted - set(ordered_keys)
    if missing:
        raise ValueError(f"not partitions of the instance: {', '.join(sorted(missing))}")
    ranges: list[tuple[str, str]] = []
    start: int | None = None
    for index, key in enumerate([*ordered_keys, None]):
        if key is not None and key in wanted:
            if start is None:
                start = index
            elif index - start == batch_size:
                ranges.append((ordered_keys[start], ordered_keys[index - 1]))
                start = index
        elif start is not None:
            ranges.append((ordered_keys[start], ordered_keys[index - 1]))
            start = None
    return ranges


def materialize_skus(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    assets: Sequence[dg.AssetKey | str],
    skus: Iterable[str],
    *,
    partitions_name: str,
    batch_size: int,
    run_config: dict[str, Any] | None = None,
    log_level: str | None = None,
    on_result: Callable[[dg.AssetKey, tuple[str, str], dg.ExecuteInProcessResult], None] | None = None,
    keep_results: bool = True,
) -> list[dg.ExecuteInProcessResult]:
    """Run each asset (in the given order) over ``skus`` in batched runs; never raises on a failed run.

    Args:
        defs: The definitions holding the assets and their resources.
        instance: The Dagster instance (its dynamic partitions must already hold the SKUs).
        assets: Asset keys in dependency order (upstream first).
        skus: Partition keys to materialize.
        partitions_name: Name of the dynamic partitions definition.
        batch_size: SKUs per run.
        run_config: The asset's config applied to each run (e.g. ``{"force": True}``).
        log_level: Level of Dagster's console logger for these runs (e.g. ``WARNING``).
        on_result: Called after each run.
        keep_results: Return every run's result; False keeps none (each holds its run's events,
            too many to keep for a 100,000-SKU catalog: use ``on_result``).

    Returns:
        Every run's result, in order (empty when not ``keep_results``).
    """
    ordered = instance.get_dynamic_partitions(partitions_name)
    chosen = list(dict.fromkeys(skus))
    results = []
    job = defs.resolve_implicit_global_asset_job_def()
    for asset in assets:
        key = dg.AssetKey.from_user_string(asset) if isinstance(asset, str) else asset
        config: dict[str, Any] = console_log_level(log_level)
        if run_config:
            config["ops"] = {key.to_python_identifier(): {"config": run_config}}
        for first, last in sku_ranges(ordered, chosen, batch_size):
            result = job.execute_in_process(
                run_config=config or None,
                instance=instance,
                asset_selection=[key],
                tags={RANGE_START_TAG: first, RANGE_END_TAG: last},
                raise_on_error=False,
            )
            if on_result is not None:
                on_result(key, (first, last), result)
            if keep_results:
                results.append(result)
    return results


def console_log_level(level: str | None) -> dict[str, Any]:
    """Run config setting Dagster's console logger to ``level`` (empty when None)."""
    return {"loggers": {"console": {"config": {"log_level": level}}}} if level else {}


def claim_judge(instance: dg.DagsterInstance) -> Judge:
    """Judge another run's SKU claim on evidence: is that run still spending?

    Dead when the Dagster run is finished (success, failure or canceled) in ``instance``, or when
    its process is gone (same host: pid and start time; another host: its heartbeat stopped). A
    run STARTED in the instance whose process died is dead: no timer has to run out.

    Example:
        >>> judge = claim_judge(dg.DagsterInstance.ephemeral())  # doctest: +SKIP
        >>> judge(claim).why  # doctest: +SKIP
        'run 3f2c... is not in this Dagster instance and its process 4242 on host w1 is gone'
    """

    def judge(claim: Claim) -> Liveness:
        try:
            run = instance.get_run_by_id(claim.run_id)
        except Exception:  # noqa: BLE001 - an unreadable run storage is no evidence either way
            run = None
        process = holder_evidence(claim)
        if run is not None and run.is_finished:
            # Dagster marks a run finished without waiting for its process (a forced termination,
            # run monitoring giving up): a process still running it, still beating, is sending.
            beat_s = (utc_now() - claim.heartbeat_at).total_seconds()
            if process.alive and beat_s <= HEARTBEAT_STALE_S:
                return Liveness(True, f"run {claim.run_id} is {run.status.value} in the Dagster instance, but {process.why}"
                                f" and its heartbeat came {beat_s:.0f} s ago")  # fmt: skip
            return Liveness(False, f"run {claim.run_id} is {run.status.value} in the Dagster instance")
        state = f"is {run.status.value} in the Dagster instance" if run is not None else "is not in this Dagster instance"
        return Liveness(process.alive, f"run {claim.run_id} {state} and {process.why}")

    return judge
