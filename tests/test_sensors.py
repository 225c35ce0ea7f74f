"""The sensors and the schedule on a real Dagster instance, with the emulator over HTTP."""

from __future__ import annotations

import time
from collections.abc import Iterator
from contextlib import ExitStack
from datetime import datetime, timezone
from pathlib import Path

import dagster as dg
import pytest

from flokan_dagster import FlokanResource
from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.reconcile import ReconcileCursor, ReconcileSettings
from flokan_dagster.runs import RANGE_END_TAG, RANGE_START_TAG, materialize_skus
from flokan_dagster.sensors import (
    build_flokan_catalog_sensor,
    build_flokan_reconciliation_sensor,
    build_flokan_refresh_schedule,
    tick_read_timeout_s,
    tick_settings,
)
from tests.support import Admin, Workspace, wait_for
from tests.test_assets import HERO, Pipeline, make_pipeline, rows_for, write_catalog

RECONCILE = build_flokan_reconciliation_sensor(["hero_images", "lifestyle_images"], rerun_failed=True,
                                               settings=ReconcileSettings(budget_s=20))  # fmt: skip


@pytest.fixture
def stack() -> Iterator[ExitStack]:
    with ExitStack() as resources:
        yield resources


def tick(pipeline: Pipeline, sensor: dg.SensorDefinition, cursor: str | None = None) -> dg.SensorResult:
    defs = dg.Definitions(assets=list(pipeline.defs.assets or []), sensors=[sensor], resources=pipeline.defs.resources)
    # Entered and left here: a context left to the garbage collector resets Dagster's defs-state
    # storage (a context variable) to a stale value whenever it happens to be collected.
    with dg.build_sensor_context(instance=pipeline.instance, cursor=cursor, definitions=defs,
                                 resources=pipeline.defs.resources) as context:  # fmt: skip
        result = sensor(context)
    assert isinstance(result, dg.SensorResult | dg.SkipReason)
    return result  # type: ignore[return-value]


def test_reconciliation_tick_adopts_an_unknown_outcome_and_materializes_the_sku(
    tmp_path: Path, admin: Admin, workspace: Workspace
) -> None:
    # SKU-00's answer outlasts the impatient client's read timeout by far; SKU-01's normal answer
    # comes well within it, even on a loaded machine.
    admin.fault("latency", prompt_contains="item 0 ", times=1, ms=6000)
    pipeline = make_pipeline(tmp_path, workspace, rows_for(2, **{"SKU-00": {"title": "item 0 "}}))
    impatient = dg.Definitions(
        assets=[build_flokan_image_asset("hero_images", catalog=pipeline.catalog, mapping=HERO, settle_timeout_s=0)],
        resources={**pipeline.defs.resources, "flokan": FlokanResource(
            api_key=workspace.api_key, base_url=admin.base_url, read_timeout_s=2.0)},
    )  # fmt: skip
    [gave_up] = materialize_skus(impatient, pipeline.instance, ["hero_images"], ["SKU-00", "SKU-01"],
                                 partitions_name=SKU_PARTITIONS.name, batch_size=10)  # fmt: skip
    assert not gave_up.success
    assert {a.sku: a.status for a in pipeline.ledger.attempts_for(asset="hero_images")} == {"SKU-00": "unknown", "SKU-01": "completed"}
    # The job finishes server side and is charged, whoever listens.
    wait_for(lambda: not workspace.info()["jobs_by_status"].get("processing"), 60, "SKU-00's job to finish")
    hits = admin.hits("POST /process")

    result = tick(pipeline, RECONCILE)
    [event] = result.asset_events
    assert isinstance(event, dg.AssetMaterialization)
    assert (event.asset_key, event.partition) == (dg.AssetKey("hero_images"), "SKU-00")
    assert event.metadata["flokan/outcome"].value == "adopted" and event.metadata["flokan/job_credits"].value == 20
    assert result.run_requests == []
    cursor = ReconcileCursor.from_json(result.cursor or "")
    assert cursor.resume is None and cursor.newest is not None

    [again] = pipeline.run("hero_images", ["SKU-00"])
    assert again.success and pipeline.materialized("hero_images")["SKU-00"].metadata["flokan/outcome"].value == "reused"
    assert admin.hits("POST /process") == hits  # adopted, never generated again
    assert workspace.info()["credits_deducted"] == sum(a.credits_consumed or 0 for a in pipeline.ledger.attempts_for()) == 40
    quiet = tick(pipeline, RECONCILE, result.cursor)
    assert quiet.asset_events == [] and quiet.run_requests == []


def test_reconciliation_tick_re_runs_a_failed_sku_with_a_fresh_run_key_up_to_the_cap(
    tmp_path: Path, admin: Admin, workspace: Workspace
) -> None:
    admin.fault("provider_error", prompt_contains="item 1 ", times=None)
    pipeline = make_pipeline(tmp_path, workspace, rows_for(2, **{"SKU-01": {"title": "item 1 "}}))
    cursor = None
    keys = []
    for _ in range(3):
        pipeline.run("hero_images", ["SKU-00", "SKU-01"])
        result = tick(pipeline, RECONCILE, cursor)
        cursor = result.cursor
        keys.append([(r.run_key, r.partition_key, r.asset_selection) for r in result.run_requests])
    hero = [dg.AssetKey("hero_images")]
    assert keys == [[("hero_images:SKU-01:1", "SKU-01", hero)], [("hero_images:SKU-01:2", "SKU-01", hero)], []]


def test_catalog_sensor_syncs_partitions_and_requests_new_and_changed_skus(
    tmp_path: Path, admin: Admin, workspace: Workspace
) -> None:
    rows = rows_for(3)
    pipeline = make_pipeline(tmp_path, workspace, rows)
    pipeline.instance = dg.DagsterInstance.ephemeral()  # no partitions yet
    sensor = build_flokan_catalog_sensor(["hero_images", "lifestyle_images"], catalog=pipeline.catalog, mapping=HERO)

    first = tick(pipeline, sensor)
    assert isinstance(first, dg.SensorResult)
    [add] = first.dynamic_partitions_requests or []
    assert isinstance(add, dg.AddDynamicPartitionsRequest) and list(add.partition_keys) == ["SKU-00", "SKU-01", "SKU-02"]
    [request] = first.run_requests or []
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == ("SKU-00", "SKU-02")
    assert request.asset_selection == [dg.AssetKey("hero_images"), dg.AssetKey("lifestyle_images")]
    pipeline.instance.add_dynamic_partitions(SKU_PARTITIONS.name, list(add.partition_keys))
    pipeline.run("hero_images", ["SKU-00", "SKU-01", "SKU-02"])

    assert isinstance(tick(pipeline, sensor, first.cursor), dg.SkipReason)  # same catalog bytes

    rows[1]["color"] = "green"  # changed
    del rows[2]  # deleted
    rows.append({"sku": "SKU-03", "title": "item 3", "color": "red", "photo": "", "tier": "standard"})  # new
    rows.append({"sku": "SKU-04", "title": "item 4", "color": "red", "photo": "", "tier": "ultra"})  # new but invalid
    write_catalog(pipeline.catalog, rows)
    second = tick(pipeline, sensor, first.cursor)
    assert isinstance(second, dg.SensorResult)
    changes = {type(r).__name__: list(r.partition_keys) for r in second.dynamic_partitions_requests or []}
    assert changes == {"AddDynamicPartitionsRequest": ["SKU-03", "SKU-04"], "DeleteDynamicPartitionsRequest": ["SKU-02"]}
    [request] = second.run_requests or []
    assert (request.tags[RANGE_START_TAG], request.tags[RANGE_END_TAG]) == ("SKU-01", "SKU-03")  # SKU-02 is gone
    assert request.run_key != first.run_requests[0].run_key  # type: ignore[index]


def test_catalog_sensor_tolerates_a_corrupt_cursor(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    pipeline = make_pipeline(tmp_path, workspace, rows_for(2))
    sensor = build_flokan_catalog_sensor(["hero_images"], catalog=pipeline.catalog, mapping=HERO)
    result = tick(pipeline, sensor, "{broken")
    assert isinstance(result, dg.SensorResult) and not result.dynamic_partitions_requests
    assert [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in result.run_requests or []] == [("SKU-00", "SKU-01")]


def test_refresh_schedule_requests_only_stale_skus_in_batches(
    tmp_path: Path, admin: Admin, workspace: Workspace, stack: ExitStack
) -> None:
    rows = rows_for(6)
    pipeline = make_pipeline(tmp_path, workspace, rows)
    # A schedule context needs a persistent instance (an ephemeral one has no instance ref). Not
    # `with instance_for_test()`: Dagster 1.13's DagsterInstance.__exit__ leaves the instance's
    # defs-state storage set for the process, breaking every later definitions load in it.
    (tmp_path / "dagster_home").mkdir()
    pipeline.instance = dg.DagsterInstance.local_temp(str(tmp_path / "dagster_home"))
    stack.callback(pipeline.instance.dispose)
    pipeline.instance.add_dynamic_partitions(SKU_PARTITIONS.name, [r["sku"] for r in rows])
    pipeline.run("hero_images", [r["sku"] for r in rows])
    schedule = build_flokan_refresh_schedule(["hero_images"], catalog=pipeline.catalog, mapping=HERO, batch_size=2,
                                             cron_schedule="0 3 * * *")  # fmt: skip
    moment = datetime(2026, 5, 4, 3, tzinfo=timezone.utc)

    def evaluate() -> list[dg.RunRequest] | dg.SkipReason:
        with dg.build_schedule_context(instance=pipeline.instance, scheduled_execution_time=moment,
                                       resources=pipeline.defs.resources) as context:  # fmt: skip
            return schedule(context)  # type: ignore[return-value]

    assert isinstance(evaluate(), dg.SkipReason)
    for sku in ("SKU-01", "SKU-02", "SKU-03", "SKU-05"):
        rows[int(sku[-1])]["color"] = "blue"
    write_catalog(pipeline.catalog, rows)
    requests = evaluate()
    assert isinstance(requests, list)
    assert [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in requests] == [
        ("SKU-01", "SKU-02"), ("SKU-03", "SKU-03"), ("SKU-05", "SKU-05"),
    ]  # fmt: skip
    assert len({r.run_key for r in requests}) == 3

    running = dg.DagsterRun(job_name="__ASSET_JOB", status=dg.DagsterRunStatus.STARTED,
                           tags={RANGE_START_TAG: "SKU-01", RANGE_END_TAG: "SKU-02"},
                           asset_selection=frozenset({dg.AssetKey("hero_images")}))  # fmt: skip
    pipeline.instance.add_run(running)
    requests = evaluate()
    assert isinstance(requests, list)
    assert [(r.tags[RANGE_START_TAG], r.tags[RANGE_END_TAG]) for r in requests] == [("SKU-03", "SKU-03"), ("SKU-05", "SKU-05")]


def test_tick_budgets_follow_dagsters_grpc_timeout(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS", "DAGSTER_SCHEDULE_GRPC_TIMEOUT_SECONDS", "DAGSTER_GRPC_TIMEOUT_SECONDS"):
        monkeypatch.delenv(name, raising=False)
    assert tick_settings().budget_s == 40 and tick_read_timeout_s() == 20  # Dagster's 60 s default
    monkeypatch.setenv("DAGSTER_GRPC_TIMEOUT_SECONDS", "180")
    assert tick_settings().budget_s == 120 and tick_read_timeout_s("schedule") == 60
    monkeypatch.setenv("DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS", "15")  # the sensor-specific one wins
    assert tick_settings().budget_s == 10 and tick_read_timeout_s("sensor") == 5
    assert tick_settings(ReconcileSettings(budget_s=3)).budget_s == 3  # explicit settings are kept
    monkeypatch.setenv("DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS", "soon")
    with pytest.raises(ValueError, match="DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS='soon' is not a number of seconds"):
        tick_settings()


def test_a_reconciliation_tick_keeps_within_a_short_configured_timeout(
    tmp_path: Path, admin: Admin, workspace: Workspace, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Every GET /jobs answer takes 8 s. Under Dagster's default 60 s the tick would wait for it (its
    # reads may take 10 s); with a 6 s sensor timeout configured, the tick's budget is 4 s and its
    # reads 1 s, so it gives up on the page and returns in time (cursor kept) instead of being cut off.
    pipeline = make_pipeline(tmp_path, workspace, rows_for(3))
    pipeline.run("hero_images", ["SKU-00", "SKU-01", "SKU-02"])
    admin.fault("latency", route="GET /jobs", times=None, ms=8000)
    monkeypatch.setenv("DAGSTER_SENSOR_GRPC_TIMEOUT_SECONDS", "6")
    sensor = build_flokan_reconciliation_sensor(["hero_images"], settings=None)
    started = time.monotonic()
    result = tick(pipeline, sensor)
    assert time.monotonic() - started < 6
    assert result.cursor
