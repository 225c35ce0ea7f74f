"""Per-SKU image assets end to end: a real Dagster instance, the emulator over HTTP, DuckDB on disk."""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from flokan_dagster import FlokanClient, FlokanResource
from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.catalog import CatalogMapping
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.resource import FlokanLedgerResource, ImageStoreResource
from flokan_dagster.runs import materialize_skus
from tests.support import Admin, Workspace, png_bytes, wait_for

HERO = CatalogMapping(prompt_template="Studio photo of {title} in {color}", source_column="photo", tier_column="tier")
LIFESTYLE = CatalogMapping(prompt_template="{title} in a sunny kitchen", model_tier="standard")


@dataclass
class Pipeline:
    """A catalog, the two image assets, resources and an instance, wired to one emulator workspace."""

    workspace: Workspace
    tmp: Path
    catalog: Path
    defs: dg.Definitions
    instance: dg.DagsterInstance
    ledger: CreditLedger

    def run(self, asset: str, skus: list[str], batch_size: int = 50, **config: Any) -> list[dg.ExecuteInProcessResult]:
        return materialize_skus(
            self.defs, self.instance, [asset], skus, partitions_name=SKU_PARTITIONS.name,
            batch_size=batch_size, run_config=config or None,
        )  # fmt: skip

    def materialized(self, asset: str) -> dict[str, dg.AssetMaterialization]:
        records = self.instance.fetch_materializations(dg.AssetKey(asset), limit=1000).records
        latest: dict[str, dg.AssetMaterialization] = {}
        for record in reversed(records):  # oldest first, so the newest wins
            latest[record.partition_key] = record.asset_materialization  # type: ignore[index,assignment]
        return latest

    def client(self) -> FlokanClient:
        return FlokanClient(api_key=self.workspace.api_key, base_url=self.workspace.admin.base_url)


def write_catalog(path: Path, rows: list[dict[str, str]]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=["sku", "title", "color", "photo", "tier"])
        writer.writeheader()
        writer.writerows(rows)
    return path


def make_pipeline(tmp: Path, workspace: Workspace, rows: list[dict[str, str]], **asset_options: Any) -> Pipeline:
    catalog = write_catalog(tmp / "catalog.csv", rows)
    hero = build_flokan_image_asset("hero_images", catalog=catalog, mapping=HERO, settle_timeout_s=10,
                                    settle_poll_s=0.2, **asset_options)  # fmt: skip
    lifestyle = build_flokan_image_asset("lifestyle_images", catalog=catalog, mapping=LIFESTYLE, upstream=hero,
                                         settle_timeout_s=10, settle_poll_s=0.2)  # fmt: skip
    database = str(tmp / "ledger.duckdb")
    defs = dg.Definitions(
        assets=[hero, lifestyle],
        resources={
            "flokan": FlokanResource(api_key=workspace.api_key, base_url=workspace.admin.base_url, backoff_base_s=0.01,
                                     max_concurrency=6),  # fmt: skip
            "flokan_ledger": FlokanLedgerResource(database=database),
            "flokan_images": ImageStoreResource(directory=str(tmp / "images")),
        },
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, [row["sku"] for row in rows])
    return Pipeline(workspace, tmp, catalog, defs, instance, CreditLedger(database))


def rows_for(count: int, **overrides: dict[str, str]) -> list[dict[str, str]]:
    rows = [{"sku": f"SKU-{i:02d}", "title": f"item {i}", "color": "red", "photo": "", "tier": "standard"}
            for i in range(count)]  # fmt: skip
    for row in rows:
        row.update(overrides.get(row["sku"], {}))
    return rows


def ledger_credits(ledger: CreditLedger) -> int:
    return sum(a.credits_consumed or 0 for a in ledger.attempts_for())


def test_batch_of_20_with_three_bad_skus(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    admin.fault("provider_error", prompt_contains="item 13 ", times=None)
    rows = rows_for(20, **{
        "SKU-05": {"title": "a forbidden item 5"},  # safety filter
        "SKU-13": {"title": "item 13 "},  # provider 500
        "SKU-17": {"tier": "ultra"},  # invalid catalog row
    })  # fmt: skip
    pipeline = make_pipeline(tmp_path, workspace, rows)
    hits = admin.hits("POST /process")

    [result] = pipeline.run("hero_images", [row["sku"] for row in rows])

    assert not result.success
    materialized = pipeline.materialized("hero_images")
    assert sorted(materialized) == sorted(r["sku"] for r in rows if r["sku"] not in ("SKU-05", "SKU-13", "SKU-17"))
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    message = failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
    assert "3 of 20 SKU(s) failed" in message
    assert "SKU-05: FlokanSafetyFilterError" in message and "SKU-13: job" in message
    assert "SKU-17" in message and "'tier'" in message
    status = pipeline.instance.get_status_by_partition(
        dg.AssetKey("hero_images"), [r["sku"] for r in rows], SKU_PARTITIONS
    )
    assert {k for k, v in status.items() if v == dg.AssetPartitionStatus.FAILED} == {"SKU-05", "SKU-13", "SKU-17"}
    assert admin.hits("POST /process") == hits + 19  # the invalid row never reached the API

    metadata = materialized["SKU-00"].metadata
    assert metadata["flokan/job_credits"].value == 20 and isinstance(metadata["flokan/job_credits"].value, int)
    assert metadata["flokan/process_calls"].value == 1
    for name in ("job_id", "model_tier", "provider_used", "processing_ms", "result_image_id", "fingerprint",
                 "width", "height", "bytes", "sha256"):  # fmt: skip
        assert f"flokan/{name}" in metadata, name
    assert metadata["flokan/result_url"].value.startswith("http://127.0.0.1")
    assert "data:image/jpeg;base64," in metadata["flokan/thumbnail"].value
    assert Path(metadata["flokan/path"].value).is_file()

    deducted = workspace.info()["credits_deducted"]
    assert deducted == 17 * 20
    assert ledger_credits(pipeline.ledger) == deducted
    checks = [e.asset_check_evaluation_data for e in result.all_events if e.event_type == dg.DagsterEventType.ASSET_CHECK_EVALUATION]
    assert {c.check_name: c.passed for c in checks} == {"stored_image_is_valid": True, "credits_within_estimate": True}

    # Re-running the good SKUs spends nothing and makes no /process call.
    hits = admin.hits("POST /process")
    good = sorted(materialized)
    again = pipeline.run("hero_images", good)
    assert len(again) == 4 and all(r.success for r in again)  # four contiguous ranges around the bad SKUs
    assert admin.hits("POST /process") == hits
    assert workspace.info()["credits_deducted"] == deducted
    reused = pipeline.materialized("hero_images").values()
    assert {m.metadata["flokan/outcome"].value for m in reused} == {"reused"}
    assert {m.metadata["flokan/process_calls"].value for m in reused} == {0}


def test_force_regenerates(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    pipeline = make_pipeline(tmp_path, workspace, rows_for(2))
    pipeline.run("hero_images", ["SKU-00", "SKU-01"])
    hits = admin.hits("POST /process")
    [result] = pipeline.run("hero_images", ["SKU-00"], force=True)
    assert result.success and admin.hits("POST /process") == hits + 1


def test_changed_row_is_regenerated_and_missing_image_downloaded_again(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    rows = rows_for(3)
    pipeline = make_pipeline(tmp_path, workspace, rows)
    pipeline.run("hero_images", ["SKU-00", "SKU-01", "SKU-02"])
    rows[1]["color"] = "green"
    write_catalog(pipeline.catalog, rows)
    Path(pipeline.materialized("hero_images")["SKU-02"].metadata["flokan/path"].value).unlink()
    hits, deducted = admin.hits("POST /process"), workspace.info()["credits_deducted"]
    [result] = pipeline.run("hero_images", ["SKU-00", "SKU-01", "SKU-02"])
    assert result.success
    outcomes = {k: m.metadata["flokan/outcome"].value for k, m in pipeline.materialized("hero_images").items()}
    assert outcomes == {"SKU-00": "reused", "SKU-01": "made", "SKU-02": "reused"}
    assert admin.hits("POST /process") == hits + 1
    assert workspace.info()["credits_deducted"] == deducted + 20


def test_chained_edit_uses_the_upstream_result_image_id(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    pipeline = make_pipeline(tmp_path, workspace, rows_for(2))
    [blocked] = pipeline.run("lifestyle_images", ["SKU-00"])
    assert not blocked.success  # no hero image yet: refused by name, nothing spent
    pipeline.run("hero_images", ["SKU-00", "SKU-01"])
    uploads = admin.hits("POST /upload-url")
    [result] = pipeline.run("lifestyle_images", ["SKU-00", "SKU-01"])
    assert result.success
    hero, lifestyle = pipeline.materialized("hero_images"), pipeline.materialized("lifestyle_images")
    with pipeline.client() as client:
        for sku in ("SKU-00", "SKU-01"):
            job = client.get_job(lifestyle[sku].metadata["flokan/job_id"].value)
            assert job.image_id == hero[sku].metadata["flokan/result_image_id"].value
    assert admin.hits("POST /upload-url") == uploads
    assert lifestyle["SKU-00"].metadata["flokan/sha256"].value != hero["SKU-00"].metadata["flokan/sha256"].value


def test_local_photo_is_uploaded_and_edited(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    (tmp_path / "photo.png").write_bytes(png_bytes((10, 120, 200)))
    pipeline = make_pipeline(tmp_path, workspace, rows_for(1, **{"SKU-00": {"photo": "photo.png"}}))
    uploads = admin.hits("POST /upload-url")
    [result] = pipeline.run("hero_images", ["SKU-00"])
    assert result.success and admin.hits("POST /upload-url") == uploads + 1
    with pipeline.client() as client:
        job = client.get_job(pipeline.materialized("hero_images")["SKU-00"].metadata["flokan/job_id"].value)
    assert job.image_id is not None


def test_dropped_connection_is_adopted_not_paid_twice(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    admin.fault("drop_after_complete", prompt_contains="item 1 ", times=1)
    pipeline = make_pipeline(tmp_path, workspace, rows_for(3, **{"SKU-01": {"title": "item 1 "}}))
    hits = admin.hits("POST /process")
    [result] = pipeline.run("hero_images", ["SKU-00", "SKU-01", "SKU-02"])
    assert result.success
    assert admin.hits("POST /process") == hits + 3
    adopted = pipeline.materialized("hero_images")["SKU-01"]
    assert adopted.metadata["flokan/outcome"].value == "adopted"
    [attempt] = pipeline.ledger.attempts_for(asset="hero_images", sku="SKU-01")
    assert attempt.origin == "reconciled" and attempt.status == "completed" and attempt.credits_consumed == 20
    assert workspace.info()["credits_deducted"] == ledger_credits(pipeline.ledger) == 60


def test_unknown_outcome_from_an_earlier_run_is_settled_before_paying(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    # Still processing when the impatient run gives up and looks it up once, however loaded the
    # machine; done well within the next run's settle window.
    admin.fault("latency", prompt_contains="item 0 ", times=1, ms=5000)
    pipeline = make_pipeline(tmp_path, workspace, rows_for(1, **{"SKU-00": {"title": "item 0 "}}))
    impatient = dg.Definitions(
        assets=[build_flokan_image_asset("hero_images", catalog=pipeline.catalog, mapping=HERO, settle_timeout_s=0)],
        resources={**pipeline.defs.resources, "flokan": FlokanResource(
            api_key=workspace.api_key, base_url=admin.base_url, read_timeout_s=0.3)},
    )  # fmt: skip
    [first] = materialize_skus(impatient, pipeline.instance, ["hero_images"], ["SKU-00"],
                               partitions_name=SKU_PARTITIONS.name, batch_size=10)  # fmt: skip
    assert not first.success  # the job was still processing when the run gave up on it
    assert [a.status for a in pipeline.ledger.attempts_for(asset="hero_images")] == ["unknown"]
    hits = admin.hits("POST /process")
    [second] = pipeline.run("hero_images", ["SKU-00"])
    assert second.success and admin.hits("POST /process") == hits
    assert pipeline.materialized("hero_images")["SKU-00"].metadata["flokan/outcome"].value == "adopted"
    assert workspace.info()["credits_deducted"] == ledger_credits(pipeline.ledger) == 20


@pytest.mark.parametrize(("credits", "options", "words"), [
    (30, {}, "workspace has 30 available"),
    (100_000, {"run_budget_credits": 30}, "over the run budget of 30"),
    (100_000, {"daily_budget_credits": 30}, "over the daily budget of 30"),
])  # fmt: skip
def test_budget_guard_refuses_before_spending(tmp_path: Path, admin: Admin, credits: int, options: dict[str, int], words: str) -> None:
    workspace = admin.workspace(credits=credits)
    pipeline = make_pipeline(tmp_path, workspace, rows_for(2), **options)
    hits = admin.hits("POST /process")
    [result] = pipeline.run("hero_images", ["SKU-00", "SKU-01"])
    assert not result.success and admin.hits("POST /process") == hits
    assert workspace.info()["credits_deducted"] == 0
    rejected = pipeline.ledger.attempts_for(asset="hero_images")
    assert {a.status for a in rejected} == {"rejected"} and all(words in (a.error or "") for a in rejected)


def test_byok_runs_skip_the_credit_check(tmp_path: Path, admin: Admin) -> None:
    workspace = admin.workspace(credits=0, byok_in_plan=True, byok_providers={"fal": {"enabled": True}})
    rows = rows_for(2)
    pipeline = make_pipeline(tmp_path, workspace, rows)
    mapping = HERO.model_copy(update={"provider": "fal"})
    pipeline.defs = dg.Definitions(
        assets=[build_flokan_image_asset("hero_images", catalog=pipeline.catalog, mapping=mapping)],
        resources=pipeline.defs.resources,
    )
    [result] = pipeline.run("hero_images", ["SKU-00", "SKU-01"])
    assert result.success
    assert {m.metadata["flokan/provider_used"].value for m in pipeline.materialized("hero_images").values()} == {"fal"}


# Takes the database read-write as soon as no one else has it open (the run opens it briefly for
# each record, so a single try could meet it), holds it for argv[2] seconds.
HOLD_WHEN_FREE = """
import sys, time, duckdb
deadline = time.monotonic() + 60
while True:
    try:
        c = duckdb.connect(sys.argv[1])
        break
    except duckdb.IOException:
        if time.monotonic() > deadline:
            raise
        time.sleep(0.01)
print("held", flush=True)
time.sleep(float(sys.argv[2]))
"""


def test_a_run_while_another_process_holds_the_ledger_loses_no_record(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    import subprocess
    import sys
    import threading

    # The answers are held long enough for the holder process to start and take the file on a
    # loaded machine; the holder keeps it past them, so the outcomes must go through the spool.
    admin.fault("latency", prompt_contains="held item", times=None, ms=6000)
    pipeline = make_pipeline(tmp_path, workspace, rows_for(6, **{f"SKU-{i:02d}": {"title": f"held item {i}"} for i in range(6)}))
    database = tmp_path / "ledger.duckdb"
    pipeline.defs = dg.Definitions(
        assets=pipeline.defs.assets,  # type: ignore[arg-type]
        resources={**pipeline.defs.resources,
                   "flokan_ledger": FlokanLedgerResource(database=str(database), lock_timeout_s=0.3)},
    )  # fmt: skip
    results: list[dg.ExecuteInProcessResult] = []
    hits = admin.hits("POST /process")
    run = threading.Thread(target=lambda: results.extend(pipeline.run("hero_images", [f"SKU-{i:02d}" for i in range(6)])))
    run.start()
    wait_for(lambda: admin.hits("POST /process") != hits, 60, "the run's first /process call")
    # The run is waiting on Flokan now: an analyst's notebook takes the database read-write.
    holder = subprocess.Popen([sys.executable, "-c", HOLD_WHEN_FREE, str(database), "10"], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        run.join(timeout=120)
        assert results and results[0].success
        assert pipeline.ledger.spooled_count() > 0  # the outcomes wait in the spool while the file is held
    finally:
        holder.wait(timeout=30)
    assert pipeline.ledger.flush_spool() == 0
    records = pipeline.ledger.attempts_for(asset="hero_images")
    assert len(records) == 6 and {r.status for r in records} == {"completed"}
    assert all(r.result_sha256 and r.job_id for r in records)
    assert ledger_credits(pipeline.ledger) == workspace.info()["credits_deducted"] == 120


def test_a_sku_another_live_run_is_sending_is_not_sent_again(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    import threading

    # The first run's request is held until the second run has certainly planned, however loaded the machine.
    admin.fault("latency", prompt_contains="item 0 ", times=1, ms=10_000)
    pipeline = make_pipeline(tmp_path, workspace, rows_for(1, **{"SKU-00": {"title": "item 0 "}}))
    first: list[dg.ExecuteInProcessResult] = []
    runner = threading.Thread(target=lambda: first.extend(pipeline.run("hero_images", ["SKU-00"])))
    hits = admin.hits("POST /process")
    runner.start()
    wait_for(lambda: admin.hits("POST /process") != hits, 60, "the first run's /process call")
    [second] = pipeline.run("hero_images", ["SKU-00"])  # while the first run's request is in flight
    runner.join(timeout=120)
    assert first and first[0].success
    assert not second.success
    failure = next(e for e in second.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    assert "is being generated by run" in failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
    assert admin.hits("POST /process") == hits + 1
    assert workspace.info()["credits_deducted"] == 20
