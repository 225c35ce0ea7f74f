"""The demo pipeline, the `flokan-dagster` CLI, the cost report and the local emulator launcher."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import dagster as dg
import pytest

from flokan_dagster import cli
from flokan_dagster.demo import DEMO_CATALOG, DemoSettings, build_demo_definitions
from flokan_dagster.local_emulator import ensure_local_emulator, stop_local_emulator
from tests.support import Admin, Workspace

PROJECT = Path(__file__).resolve().parent.parent


@pytest.fixture
def demo_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, workspace: Workspace) -> Path:
    """The CLI pointed at a fresh emulator workspace and a copy of the demo catalog."""
    catalog_dir = tmp_path / "catalog"
    shutil.copytree(DEMO_CATALOG.parent, catalog_dir)
    monkeypatch.setenv("FLOKAN_API_KEY", workspace.api_key)
    monkeypatch.setenv("FLOKAN_BASE_URL", workspace.admin.base_url)
    monkeypatch.setenv("FLOKAN_DATA_DIR", str(tmp_path / "data"))
    monkeypatch.setenv("FLOKAN_CATALOG", str(catalog_dir / "catalog.csv"))
    monkeypatch.delenv("DAGSTER_HOME", raising=False)
    return catalog_dir / "catalog.csv"


def test_materialize_then_report(demo_env: Path, workspace: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["materialize", "--sku", "MUG-001", "--sku", "TEE-002", "--sku", "BAG-001"])
    out = capsys.readouterr().out
    assert code == 0, out
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 6 and lines[-1].startswith("[6/6]")
    assert "made 6, adopted 0, reused 0, failed 0; 120 credits spent" in out
    assert workspace.api_key not in out

    assert cli.main(["report", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["credits"] == workspace.info()["credits_deducted"] == 120
    assert summary["by_status"]["completed"]["attempts"] == 6
    assert {row["sku"]: row["credits"] for row in summary["top_skus"]} == {"MUG-001": 40, "TEE-002": 40, "BAG-001": 40}
    assert summary["by_tier_provider"][0]["credits"] == 120

    assert cli.main(["materialize", "--sku", "MUG-001"]) == 0
    assert "made 0, adopted 0, reused 2, failed 0; 0 credits spent" in capsys.readouterr().out


def test_materialize_exits_1_when_a_sku_fails(demo_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = demo_env.read_text().replace("CAP-001,baseball cap", "CAP-001,forbidden cap")
    demo_env.write_text(text)
    code = cli.main(["materialize", "--asset", "hero_images", "--sku", "CAP-001", "--sku", "SOCK-001"])
    out = capsys.readouterr().out
    assert code == 1
    assert "CAP-001" in out and "FAILED: FlokanSafetyFilterError" in out
    assert "made 1, adopted 0, reused 0, failed 1" in out


def test_unknown_sku_is_refused(demo_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["materialize", "--sku", "NOPE-1"]) == 2
    assert "not in the catalog: NOPE-1" in capsys.readouterr().err


def test_report_without_a_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLOKAN_DATA_DIR", str(tmp_path))
    assert cli.main(["report"]) == 1
    assert "no ledger" in capsys.readouterr().err


def test_demo_definitions_and_cost_report_asset(tmp_path: Path, workspace: Workspace, admin: Admin) -> None:
    settings = DemoSettings(workspace.api_key, admin.base_url, tmp_path, DEMO_CATALOG, uses_emulator=True)
    defs = build_demo_definitions(settings)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {"product_catalog", "hero_images", "lifestyle_images", "flokan_cost_report"}
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_implicit_global_asset_job_def()
    catalog = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("product_catalog")])
    assert catalog.success
    [event] = catalog.asset_materializations_for_node("product_catalog")
    assert event.metadata["skus"].value == 12 and event.metadata["invalid_rows"].value == 0

    report = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("flokan_cost_report")])
    [event] = report.asset_materializations_for_node("flokan_cost_report")
    assert event.metadata["total_credits"].value == 0
    assert event.metadata["chart"].value.startswith("![credits](data:image/png;base64,")
    assert event.metadata["report"].value.startswith("# Flokan credit report")


def test_local_emulator_is_started_once_and_found_again(tmp_path: Path) -> None:
    first = ensure_local_emulator(tmp_path)
    try:
        again = ensure_local_emulator(tmp_path)
        assert again == first
        assert first.base_url.startswith("http://127.0.0.1:") and first.api_key.startswith("flk_demo_")
    finally:
        assert stop_local_emulator(tmp_path)
    assert not stop_local_emulator(tmp_path)


def test_reconcile_records_jobs_made_outside_dagster(demo_env: Path, workspace: Workspace, capsys: pytest.CaptureFixture[str]) -> None:
    from flokan_dagster import FlokanClient

    assert cli.main(["materialize", "--asset", "hero_images", "--sku", "MUG-001"]) == 0
    with FlokanClient(api_key=workspace.api_key, base_url=workspace.admin.base_url) as client:
        client.process("Made in Flokan's UI, not by Dagster", "pro")
    capsys.readouterr()
    assert cli.main(["reconcile"]) == 0
    out = capsys.readouterr().out
    assert "external" in out
    assert cli.main(["report", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["by_origin"]["external"] == {"attempts": 1, "credits": 50}
    assert summary["credits"] == workspace.info()["credits_deducted"] == 70
    assert cli.main(["reconcile"]) == 0  # nothing new: the cursor remembers what it saw
    capsys.readouterr()
    assert cli.main(["report", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["by_origin"]["external"] == {"attempts": 1, "credits": 50}
