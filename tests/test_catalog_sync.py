"""The catalog-sync sensor spreads a large catalog change over ticks and resumes with its cursor."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from flokan_dagster.assets import SKU_PARTITIONS
from flokan_dagster.catalog import CatalogMapping
from flokan_dagster.resource import FlokanLedgerResource
from flokan_dagster.runs import RANGE_END_TAG, RANGE_START_TAG
from flokan_dagster.sensors import build_flokan_catalog_sensor

MAPPING = CatalogMapping(prompt_template="photo of {title}")


def write(path: Path, skus: list[str]) -> Path:
    path.write_text("sku,title\n" + "".join(f"{sku},item {sku}\n" for sku in skus), encoding="utf-8")
    return path


def evaluate(sensor: dg.SensorDefinition, **context_args: object) -> dg.SensorResult | dg.SkipReason:
    """One tick, its context entered and left here (a context left to the garbage collector resets
    Dagster's defs-state storage to a stale value whenever it happens to be collected)."""
    with dg.build_sensor_context(**context_args) as context:  # type: ignore[arg-type]
        result = sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result


def apply(instance: dg.DagsterInstance, result: dg.SensorResult) -> None:
    """What Dagster's daemon does with a tick's partition requests."""
    for request in result.dynamic_partitions_requests or []:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            instance.add_dynamic_partitions(request.partitions_def_name, list(request.partition_keys))
        else:
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)


def test_a_large_change_is_spread_over_ticks_and_resumed_from_the_cursor(tmp_path: Path) -> None:
    catalog = write(tmp_path / "catalog.csv", [f"S-{i}" for i in range(7)])
    sensor = build_flokan_catalog_sensor(["hero_images"], catalog=catalog, mapping=MAPPING, batch_size=2,
                                         max_runs_per_tick=10, partitions_per_tick=3)  # fmt: skip
    resources = {"flokan_ledger": FlokanLedgerResource(database=str(tmp_path / "ledger.duckdb"))}
    instance = dg.DagsterInstance.ephemeral()
    cursor, added, ranges = None, [], []
    for _ in range(3):
        result = evaluate(sensor, instance=instance, cursor=cursor, resources=resources)
        assert isinstance(result, dg.SensorResult)
        added.append(sorted(k for r in result.dynamic_partitions_requests or [] for k in r.partition_keys))
        # Runs only over partitions that exist once this tick's requests are applied.
        ranges.append([(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in result.run_requests or []])
        apply(instance, result)
        cursor = result.cursor
    assert added == [["S-0", "S-1", "S-2"], ["S-3", "S-4", "S-5"], ["S-6"]]
    assert ranges[0] == [("S-0", "S-1"), ("S-2", "S-2")]
    assert instance.get_dynamic_partitions(SKU_PARTITIONS.name) == [f"S-{i}" for i in range(7)]
    finished = evaluate(sensor, instance=instance, cursor=cursor, resources=resources)
    assert isinstance(finished, dg.SkipReason)  # the third tick finished the catalog: its digest is saved

    # Deletions come first within a tick's share.
    write(catalog, ["S-0", "S-6", "S-7", "S-8"])
    result = evaluate(sensor, instance=instance, cursor=cursor, resources=resources)
    assert isinstance(result, dg.SensorResult)
    kinds = [(type(r).__name__, list(r.partition_keys)) for r in result.dynamic_partitions_requests or []]
    assert kinds == [("DeleteDynamicPartitionsRequest", ["S-1", "S-2", "S-3"])]
    apply(instance, result)
    result = evaluate(sensor, instance=instance, cursor=result.cursor, resources=resources)
    assert isinstance(result, dg.SensorResult)
    kinds = [(type(r).__name__, list(r.partition_keys)) for r in result.dynamic_partitions_requests or []]
    assert kinds == [("DeleteDynamicPartitionsRequest", ["S-4", "S-5"]), ("AddDynamicPartitionsRequest", ["S-7"])]


def test_an_unreadable_catalog_skips_the_tick_with_its_message(tmp_path: Path) -> None:
    catalog = tmp_path / "catalog.csv"
    catalog.write_text("product,title\nA,b\n", encoding="utf-8")
    sensor = build_flokan_catalog_sensor(["hero_images"], catalog=catalog, mapping=MAPPING)
    resources = {"flokan_ledger": FlokanLedgerResource(database=str(tmp_path / "ledger.duckdb"))}
    result = evaluate(sensor, instance=dg.DagsterInstance.ephemeral(), resources=resources)
    assert isinstance(result, dg.SkipReason)
    assert "has no column 'sku'" in (result.skip_message or "") and str(catalog) in (result.skip_message or "")
