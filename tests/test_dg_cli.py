"""FlokanImagesComponent through the ``dg`` CLI itself: scaffold two instances, check, list, launch.

A project is laid out as ``dg`` expects (``dg.toml``, ``src/<module>/definitions.py`` loading the
defs folder), two instances are scaffolded with ``dg scaffold defs`` (one with parameters, one
with none), then ``dg check defs`` and ``dg list defs --json`` must pass and show both pipelines
under their own names, and ``dg launch`` materializes the catalog and one SKU of one instance
against the test emulator, in a DAGSTER_HOME of its own.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest
import yaml

from flokan_dagster.ledger import CreditLedger
from tests.support import Admin, Workspace

BIN = Path(sys.executable).parent
DG = BIN / "dg"
MODULE = "flokan_dg_project"
DEFINITIONS_PY = """\
from pathlib import Path

import dagster as dg


@dg.definitions
def defs() -> dg.Definitions:
    return dg.load_from_defs_folder(path_within_project=Path(__file__).parent)
"""

pytestmark = pytest.mark.skipif(not DG.exists(), reason="dagster-dg-cli is not installed (pip install -e '.[dev]')")


def run_dg(project: Path, env: dict[str, str], *args: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    """Run ``dg`` in the project; fail with its output when it fails."""
    done = subprocess.run([str(DG), *args], cwd=project, env=env, capture_output=True, text=True, timeout=timeout)
    assert done.returncode == 0, f"dg {' '.join(args)} exited {done.returncode}:\n{done.stdout}\n{done.stderr}"
    return done


@pytest.fixture
def project(tmp_path: Path, workspace: Workspace, admin: Admin) -> tuple[Path, dict[str, str]]:
    """An empty dg project with a catalog, and the environment dg runs in (emulator key, own DAGSTER_HOME)."""
    root = tmp_path / "shop"
    (root / "src" / MODULE / "defs").mkdir(parents=True)
    (root / "dg.toml").write_text(f'directory_type = "project"\n\n[project]\nroot_module = "{MODULE}"\n')
    (root / "src" / MODULE / "__init__.py").write_text("")
    (root / "src" / MODULE / "definitions.py").write_text(DEFINITIONS_PY)
    (root / "data").mkdir()
    (root / "data" / "mugs.csv").write_text("sku,title\nMUG-1,mug\nMUG-2,tall mug\n")
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {
        **os.environ,
        "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
        "PYTHONPATH": str(root / "src"),
        "DAGSTER_HOME": str(home),
        "FLOKAN_API_KEY": workspace.api_key,
        "FLOKAN_TEST_BASE_URL": admin.base_url,
        "NO_COLOR": "1",
    }
    return root, env


# Seven `dg` processes one after another, each loading Dagster and the project: on a busy machine
# (load ~15) the whole took more than the suite's 300 s default. Each step keeps its own 240 s bound.
@pytest.mark.timeout(1200)
def test_scaffold_two_instances_check_list_and_launch(project: tuple[Path, dict[str, str]], workspace: Workspace) -> None:
    root, env = project
    component = "flokan_dagster.FlokanImagesComponent"
    run_dg(root, env, "scaffold", "defs", component, "mugs", "--catalog", "data/mugs.csv",
           "--prompt-template", "Studio photo of a {title}", "--lifestyle-prompt-template", "The {title} at home")  # fmt: skip
    run_dg(root, env, "scaffold", "defs", component, "shirts")  # no parameters: the defaults must load too
    mugs_yaml = root / "src" / MODULE / "defs" / "mugs" / "defs.yaml"
    written = yaml.safe_load(mugs_yaml.read_text())
    assert written["type"] == component
    assert written["attributes"]["catalog"] == "data/mugs.csv"
    assert written["attributes"]["lifestyle"] == {"prompt_template": "The {title} at home"}
    # Point the first instance at the test emulator, as a user points it at a real workspace.
    written["attributes"]["flokan"]["base_url"] = "{{ env.FLOKAN_TEST_BASE_URL }}"
    mugs_yaml.write_text(yaml.safe_dump(written, sort_keys=False))

    check = run_dg(root, env, "check", "defs")
    assert "All definitions loaded successfully" in check.stdout + check.stderr

    listed = json.loads(run_dg(root, env, "list", "defs", "--json").stdout)
    assets = {asset["asset_key"]: asset for asset in listed["assets"]}
    for name in ("mugs", "shirts"):
        assert {f"{name}/product_catalog", f"{name}/hero_images", f"{name}/flokan_cost_report"} <= set(assets)
    assert "mugs/lifestyle_images" in assets and "shirts/lifestyle_images" not in assets
    report = assets["mugs/flokan_cost_report"]
    assert report["automation_condition"]["label"] == "refresh after image materializations"
    assert set(report["dependency_keys"]) == {"mugs/hero_images", "mugs/lifestyle_images"}
    assert set(assets["mugs/hero_images"]["dependency_keys"]) == {"mugs/product_catalog"}
    sensors = {sensor["name"] for sensor in listed["sensors"]}
    assert {"mugs_reconciliation", "mugs_catalog_sync", "mugs_cost_report_automation", "shirts_reconciliation",
            "shirts_catalog_sync", "shirts_cost_report_automation"} <= sensors  # fmt: skip
    assert {schedule["name"] for schedule in listed["schedules"]} == {"mugs_refresh", "shirts_refresh"}
    assert {"mugs_flokan", "mugs_flokan_ledger", "shirts_flokan"} <= {r["name"] for r in listed["resources"]}

    run_dg(root, env, "launch", "--assets", "mugs/product_catalog")
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        instance.add_dynamic_partitions("mugs_skus", ["MUG-1", "MUG-2"])
    finally:
        instance.dispose()
    run_dg(root, env, "launch", "--assets", "mugs/hero_images", "--partition", "MUG-1")

    assert workspace.info()["credits_deducted"] == 20
    ledger = CreditLedger(str(root / ".data" / "mugs" / "ledger.duckdb"))
    [attempt] = ledger.attempts_for(asset="mugs/hero_images")
    assert (attempt.sku, attempt.status, attempt.credits_consumed) == ("MUG-1", "completed", 20)
    instance = dg.DagsterInstance.from_config(env["DAGSTER_HOME"])
    try:
        catalog = instance.get_latest_materialization_event(dg.AssetKey(["mugs", "product_catalog"]))
        assert catalog is not None and catalog.asset_materialization is not None
        assert catalog.asset_materialization.metadata["flokan/valid_rows"].value == 2
        [record] = instance.fetch_materializations(dg.AssetKey(["mugs", "hero_images"]), limit=5).records
        assert record.partition_key == "MUG-1"
        assert record.asset_materialization.metadata["flokan/credits"].value == 20  # type: ignore[union-attr]
    finally:
        instance.dispose()
