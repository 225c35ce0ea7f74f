"""The demo pipeline, the `flokan-dagster` CLI, the cost report and the local emulator launcher."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
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
    out, err = capsys.readouterr()
    assert code == 0, out + err
    home = demo_env.parent.parent / "data" / "dagster_home"
    assert f"Dagster instance: {home} (the one `make dev` shows" in out  # not a temporary instance
    lines = [line for line in out.splitlines() if line.startswith("[")]
    assert len(lines) == 6 and lines[-1].startswith("[6/6]")
    assert [line.split()[1] for line in lines].count("hero_images") == 3  # every line names its asset
    assert [line.split()[1] for line in lines].count("lifestyle_images") == 3
    assert "made 6, adopted 0, reused 0, failed 0; 120 credits spent" in out
    assert workspace.api_key not in out + err
    assert err == ""  # no telemetry or "No dagster.yaml" banner
    assert dg.DagsterInstance.from_config(str(home)).get_latest_materialization_event(dg.AssetKey("hero_images"))  # `make dev` sees the runs

    assert cli.main(["report", "--json"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["credits"] == workspace.info()["credits_deducted"] == 120
    assert summary["by_status"]["completed"]["attempts"] == 6
    assert {row["sku"]: row["credits"] for row in summary["top_skus"]} == {"MUG-001": 40, "TEE-002": 40, "BAG-001": 40}
    assert summary["by_tier_provider"][0]["credits"] == 120
    assert summary["by_tier_provider"][0]["provider"] == "platform"
    assert sorted((r["asset"], r["attempts"], r["credits"]) for r in summary["by_asset"]) == [
        ("hero_images", 3, 60), ("lifestyle_images", 3, 60)]  # fmt: skip
    assert cli.main(["report"]) == 0
    markdown = capsys.readouterr().out
    assert "## By asset" in markdown and "| hero_images | 3 | 60 |" in markdown
    assert "| standard | platform | platform | 6 | 120 |" in markdown
    # The SKU's metadata names the provider as the report does (the API's "system" is "platform").
    instance = dg.DagsterInstance.from_config(str(home))
    event = instance.get_latest_materialization_event(dg.AssetKey("hero_images"))
    assert event is not None and event.asset_materialization is not None
    assert event.asset_materialization.metadata["flokan/provider_used"].value == "platform"

    assert cli.main(["materialize", "--sku", "MUG-001"]) == 0
    assert "made 0, adopted 0, reused 2, failed 0; 0 credits spent" in capsys.readouterr().out


def test_materialize_exits_1_when_a_sku_fails(demo_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    text = demo_env.read_text().replace("CAP-001,baseball cap", "CAP-001,forbidden cap")
    demo_env.write_text(text)
    code = cli.main(["materialize", "--asset", "hero_images", "--sku", "CAP-001", "--sku", "SOCK-001"])
    out, err = capsys.readouterr()
    assert code == 1
    assert "CAP-001" in out and "FAILED: FlokanSafetyFilterError" in out
    assert (out + err).count("FlokanSafetyFilterError") == 1  # the failure once, with its reason
    assert "Traceback" not in out + err
    assert "made 1, adopted 0, reused 0, failed 1" in out

    # The gallery shows the failure beside the image that was made.
    assert cli.main(["gallery"]) == 0
    index = Path(capsys.readouterr().out.split("gallery: ")[1].split()[0])
    page = index.read_text()
    assert 'data-sku="CAP-001"' in page and 'data-sku="SOCK-001"' in page
    assert "safety filter" in page and 'data-status="rejected"' in page


def test_unknown_sku_is_refused_with_a_suggestion(demo_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["materialize", "--sku", "NOPE-1"]) == 2
    assert capsys.readouterr().err.strip() == "flokan-dagster: not in the catalog: NOPE-1"
    assert cli.main(["materialize", "--sku", "mug-001", "--sku", "TEE-02"]) == 2
    err = capsys.readouterr().err
    assert "mug-001 (did you mean MUG-001?)" in err and "TEE-02 (did you mean TEE-002?)" in err


@pytest.mark.parametrize(("argv", "words"), [
    (["materialize", "--batch-size", "0"], "--batch-size: must be at least 1, got 0"),
    (["materialize", "--batch-size", "ten"], "--batch-size: expected a whole number, got 'ten'"),
    (["materialize", "--asset", "heroes"], "invalid choice: 'heroes'"),
    (["sql"], "the following arguments are required: query"),
])  # fmt: skip
def test_bad_arguments_are_one_clear_line(argv: list[str], words: str, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_:
        cli.main(argv)
    assert exit_.value.code == 2
    err = capsys.readouterr().err
    assert words in err and "Traceback" not in err


def test_a_command_in_a_pipe_stops_quietly(demo_env: Path) -> None:
    """`flokan-dagster sql ... | head -1`: the reader goes away; no BrokenPipeError, exit 0."""
    assert cli.main(["sql", "SELECT 1"]) == 2  # no ledger yet
    from flokan_dagster.ledger import CreditLedger

    (demo_env.parent.parent / "data").mkdir()
    CreditLedger(str(demo_env.parent.parent / "data" / "ledger.duckdb")).flush_spool()  # an empty ledger on disk
    command = [str(PROJECT / ".venv" / "bin" / "flokan-dagster"), "sql", "SELECT * FROM range(300000)"]
    if not Path(command[0]).exists():
        command[0:1] = [sys.executable, "-m", "flokan_dagster.cli"]
    writer = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=os.environ.copy())
    assert writer.stdout is not None and writer.stderr is not None
    assert writer.stdout.readline().split() == [b"range"]
    writer.stdout.close()  # like `head -1` exiting
    err = writer.stderr.read().decode()
    assert writer.wait(timeout=120) == 0, err
    assert err == ""


def test_sql_queries_the_ledger_read_only(demo_env: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert cli.main(["materialize", "--asset", "hero_images", "--sku", "MUG-001"]) == 0
    capsys.readouterr()
    assert cli.main(["sql", "SELECT asset, sku, credits FROM credits_by_sku JOIN attempts USING (sku)"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["asset", "|", "sku", "|", "credits"]
    assert out[2].split() == ["hero_images", "|", "MUG-001", "|", "20"] and out[-1] == "(1 row)"
    assert cli.main(["sql", "SELECT sku, credits_consumed FROM attempts", "--format", "json"]) == 0
    assert json.loads(capsys.readouterr().out) == [{"sku": "MUG-001", "credits_consumed": 20}]
    assert cli.main(["sql", "DELETE FROM attempts"]) == 2
    assert "read-only" in capsys.readouterr().err
    assert cli.main(["sql", "SELECT count(*) AS n FROM attempts", "--format", "csv"]) == 0
    assert capsys.readouterr().out == "n\n1\n"


def test_report_without_a_ledger(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    monkeypatch.setenv("FLOKAN_DATA_DIR", str(tmp_path))
    assert cli.main(["report"]) == 2
    assert "no ledger" in capsys.readouterr().err


def test_demo_definitions_and_cost_report_asset(tmp_path: Path, workspace: Workspace, admin: Admin) -> None:
    settings = DemoSettings(workspace.api_key, admin.base_url, tmp_path, DEMO_CATALOG, uses_emulator=True)
    defs = build_demo_definitions(settings)
    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {"product_catalog", "hero_images", "lifestyle_images", "flokan_cost_report", "flokan_gallery"}
    instance = dg.DagsterInstance.ephemeral()
    job = defs.resolve_implicit_global_asset_job_def()
    catalog = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("product_catalog")])
    assert catalog.success
    [event] = catalog.asset_materializations_for_node("product_catalog")
    assert event.metadata["flokan/skus"].value == 12 and event.metadata["flokan/invalid_rows"].value == 0

    report = job.execute_in_process(instance=instance, asset_selection=[dg.AssetKey("flokan_cost_report")])
    [event] = report.asset_materializations_for_node("flokan_cost_report")
    assert event.metadata["flokan/total_credits"].value == 0
    assert event.metadata["flokan/chart"].value.startswith("![credits](data:image/png;base64,")
    assert event.metadata["flokan/report"].value.startswith("# Flokan credit report")


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
