"""FlokanImagesComponent: loaded from a defs.yaml the way Dagster loads a project's defs folder."""

from __future__ import annotations

import importlib.metadata
import json
import sys
import traceback
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import get_args

import dagster as dg
import pytest

import flokan_dagster
from flokan_dagster.api import rules
from flokan_dagster.component import (
    FlokanConnection,
    FlokanImagesComponent,
    ImageAssetSettings,
    ModelTier,
    Provider,
    SensorToggles,
)
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.local_emulator import stop_local_emulator
from flokan_dagster.runs import materialize_skus
from tests.support import Admin, Workspace

DEFS_YAML = """\
type: flokan_dagster.FlokanImagesComponent
attributes:
  catalog: "{{ context.project_root }}/data/catalog.csv"
  columns:
    sku: product_id
  hero:
    prompt_template: "Studio photo of a {color} {title} on a plain white background"
  lifestyle:
    prompt_template: "The {title} in a bright, modern home"
    model_tier: creative
  model_tier: standard
  batch_size: 5
  run_budget_credits: 500
  ledger_database: data/ledger.duckdb
  image_directory: data/images
  translation:
    owners: [team:catalog]
    tags:
      tier: "{{ props.mapping.model_tier }}"
  flokan:
    api_key_env_var: FLOKAN_TEST_KEY
    base_url: "{{ env.FLOKAN_TEST_BASE_URL }}"
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A dg project in tmp_path (dg.toml, src/<module>/defs/product_images/defs.yaml) and a small catalog."""
    module = f"flokan_component_test_{uuid.uuid4().hex[:8]}"
    (tmp_path / "dg.toml").write_text(f'directory_type = "project"\n\n[project]\nroot_module = "{module}"\n')
    (tmp_path / "src" / module / "defs" / "product_images").mkdir(parents=True)
    (tmp_path / "src" / module / "__init__.py").write_text("")
    (tmp_path / "src" / module / "defs" / "product_images" / "defs.yaml").write_text(DEFS_YAML)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "catalog.csv").write_text("product_id,title,color\nMUG-1,mug,red\nTEE-1,t-shirt,blue\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield tmp_path
    for name in [name for name in sys.modules if name == module or name.startswith(module + ".")]:
        del sys.modules[name]


def defs_yaml(project: Path) -> Path:
    """The project's one defs.yaml."""
    [path] = project.glob("src/*/defs/product_images/defs.yaml")
    return path


def test_defs_yaml_builds_the_pipeline_and_materializes_a_sku(
    project: Path, workspace: Workspace, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOKAN_TEST_KEY", workspace.api_key)
    monkeypatch.setenv("FLOKAN_TEST_BASE_URL", admin.base_url)
    defs = dg.load_from_defs_folder(path_within_project=project)

    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {f"product_images/{name}" for name in
                    ("product_catalog", "hero_images", "lifestyle_images", "flokan_cost_report")}  # fmt: skip
    # Relative paths resolve against the project root, not the defs folder.
    assert defs.resources["product_images_flokan_ledger"].database == str(project / "data" / "ledger.duckdb")
    assert workspace.api_key not in repr(defs.resources["product_images_flokan"])
    [hero_spec] = defs.resolve_assets_def(dg.AssetKey.from_user_string("product_images/hero_images")).specs
    lifestyle_def = defs.resolve_assets_def(dg.AssetKey.from_user_string("product_images/lifestyle_images"))
    [lifestyle_spec] = lifestyle_def.specs
    assert hero_spec.owners == ["team:catalog"] and hero_spec.tags["tier"] == "standard"
    assert lifestyle_spec.tags["tier"] == "creative"  # the translation's template saw each asset's props
    assert hero_spec.description != lifestyle_spec.description
    assert {dep.asset_key.to_user_string() for dep in lifestyle_spec.deps} == {
        "product_images/hero_images", "product_images/product_catalog"}  # fmt: skip

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions("product_images_skus", ["MUG-1", "TEE-1"])
    results = materialize_skus(
        defs, instance, ["product_images/hero_images", "product_images/lifestyle_images"], ["MUG-1"],
        partitions_name="product_images_skus", batch_size=5,
    )  # fmt: skip
    assert [result.success for result in results] == [True, True]
    [hero] = results[0].asset_materializations_for_node("product_images__hero_images")
    [lifestyle] = results[1].asset_materializations_for_node("product_images__lifestyle_images")
    assert hero.partition == lifestyle.partition == "MUG-1"
    assert hero.metadata["flokan/outcome"].value == lifestyle.metadata["flokan/outcome"].value == "made"
    assert hero.metadata["flokan/model_tier"].value == "standard" and lifestyle.metadata["flokan/model_tier"].value == "creative"
    charged = hero.metadata["flokan/credits"].value + lifestyle.metadata["flokan/credits"].value
    assert charged == workspace.info()["credits_deducted"] == 20 + 30
    assert hero.metadata["flokan/thumbnail"].value.startswith("![MUG-1](data:image/")
    assert CreditLedger(str(project / "data" / "ledger.duckdb")).attempts_for(asset="product_images/hero_images")

    report = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey(["product_images", "flokan_cost_report"])]
    )
    [event] = report.asset_materializations_for_node("product_images__flokan_cost_report")
    assert event.metadata["flokan/total_credits"].value == charged


def two_instances(project: Path) -> Path:
    """A second instance ``outdoor`` beside ``product_images``: same catalog, its own ledger and names."""
    second = defs_yaml(project).parent.parent / "outdoor" / "defs.yaml"
    second.parent.mkdir()
    second.write_text(
        "type: flokan_dagster.FlokanImagesComponent\n"
        "attributes:\n"
        "  catalog: data/catalog.csv\n"
        "  columns: {sku: product_id}\n"
        "  hero: {prompt_template: 'Outdoor photo of the {title}'}\n"
        "  refresh: automation\n"
        "  refresh_cron: '0 5 * * *'\n"
        "  sensors: {catalog_sync: false}\n"
        "  flokan: {api_key_env_var: FLOKAN_TEST_KEY, base_url: '{{ env.FLOKAN_TEST_BASE_URL }}'}\n"
    )
    return second


def automation_of(defs: dg.Definitions, name: str) -> dg.AutomationCondition | None:
    """The automation condition of the asset ``name`` (a full key string)."""
    key = dg.AssetKey.from_user_string(name)
    return defs.resolve_assets_def(key).automation_conditions_by_key.get(key)


def test_two_instances_in_one_project_with_their_own_names_and_toggles(
    project: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOKAN_TEST_BASE_URL", "http://127.0.0.1:9/api/v1/image-editor")
    two_instances(project)
    defs = dg.load_from_defs_folder(path_within_project=project)

    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert {"outdoor/hero_images", "outdoor/flokan_cost_report", "product_images/hero_images"} <= keys
    assert set(defs.resources or {}) == {f"{name}_{suffix}" for name in ("product_images", "outdoor")
                                         for suffix in ("flokan", "flokan_ledger", "flokan_images")}  # fmt: skip
    assert defs.resources["outdoor_flokan_ledger"].database == str(project / ".data" / "outdoor" / "ledger.duckdb")
    assert sorted(sensor.name for sensor in defs.sensors or []) == [
        "outdoor_cost_report_automation", "outdoor_reconciliation", "outdoor_refresh_automation",
        "product_images_catalog_sync", "product_images_cost_report_automation", "product_images_reconciliation"]  # fmt: skip
    statuses = {sensor.name: sensor.default_status for sensor in defs.sensors or []}
    assert statuses["outdoor_refresh_automation"] == dg.DefaultSensorStatus.STOPPED  # it would launch paid runs
    assert statuses["outdoor_cost_report_automation"] == dg.DefaultSensorStatus.RUNNING  # it spends nothing
    # refresh: automation replaces the schedule by an on_cron condition on the catalog and image assets.
    assert [schedule.name for schedule in defs.schedules or []] == ["product_images_refresh"]
    for name in ("outdoor/hero_images", "outdoor/product_catalog"):
        condition = automation_of(defs, name)
        assert condition is not None and "0 5 * * *" in str(condition.get_label() or condition)
    assert automation_of(defs, "product_images/hero_images") is None
    for name in ("outdoor/flokan_cost_report", "product_images/flokan_cost_report"):
        report = automation_of(defs, name)
        assert report is not None and report.get_label() == "refresh after image materializations"
    partitions = {defs.resolve_assets_def(dg.AssetKey.from_user_string(n)).partitions_def.name for n in ("outdoor/hero_images", "product_images/hero_images")}  # type: ignore[union-attr]
    assert partitions == {"outdoor_skus", "product_images_skus"}


def test_with_no_flokan_variables_the_local_emulator_is_used(project: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path = defs_yaml(project)
    text = path.read_text()
    text = text[: text.index("  flokan:\n")] + "  data_directory: state\n"
    path.write_text(text)
    for name in ("FLOKAN_API_KEY", "FLOKAN_BASE_URL"):
        monkeypatch.delenv(name, raising=False)
    try:
        defs = dg.load_from_defs_folder(path_within_project=project)
        emulator = json.loads((project / "state" / "emulator.json").read_text())
        flokan = defs.resources["product_images_flokan"]
        assert flokan.base_url == emulator["base_url"] and flokan.base_url.startswith("http://127.0.0.1:")
        with flokan.get_client() as client:
            assert client.estimate_credits("standard").estimated_credits == 20  # it answers
    finally:
        stop_local_emulator(project / "state")


@pytest.mark.parametrize(
    ("change", "expected"),
    [
        (("  model_tier: standard\n", "  model_tier: premium\n"), "Input should be 'pro', 'standard' or 'creative'"),
        (("  batch_size: 5\n", "  batch_size: 0\n"), "batch_size"),
        (("  flokan:\n", "  api_key: flk_x\n  flokan:\n"), "attributes.api_key at "),
        (("    model_tier: creative\n", "    prompt_column: prompt\n"),
         "lifestyle: give exactly one of prompt_column or prompt_template"),
        (("  model_tier: standard\n", "  model_tier: creative\n  provider: google\n"),
         "hero: provider: 'google' allows model_tier pro, not 'creative'"),
        (("  batch_size: 5\n", "  batch_size: 5\n  refresh: hourly\n"), "Input should be 'schedule', 'automation' or 'none'"),
        (("  model_tier: standard\n", "  model_tier: standard\n  sensors: {catalog_sync: maybe}\n"), "catalog_sync"),
    ],
)  # fmt: skip
def test_bad_attributes_fail_the_load_with_a_clear_error(
    project: Path, monkeypatch: pytest.MonkeyPatch, change: tuple[str, str], expected: str
) -> None:
    monkeypatch.setenv("FLOKAN_TEST_BASE_URL", "http://127.0.0.1:9/api/v1/image-editor")
    path = defs_yaml(project)
    old, new = change
    assert old in path.read_text()
    path.write_text(path.read_text().replace(old, new, 1))
    with pytest.raises(Exception) as info:
        dg.load_from_defs_folder(path_within_project=project)
    message = "".join(traceback.format_exception(info.value))
    assert "defs.yaml (FlokanImagesComponent)" in message
    assert expected in message


def test_registered_for_dg_and_exported() -> None:
    [entry] = [e for e in importlib.metadata.entry_points(group="dagster_dg_cli.registry_modules") if e.name == "flokan_dagster"]
    assert entry.load() is flokan_dagster
    assert flokan_dagster.FlokanImagesComponent is FlokanImagesComponent
    assert "FlokanImagesComponent" in flokan_dagster.__all__
    # The YAML-facing literals must match the API rules they spell out.
    assert get_args(ModelTier) == rules.MODEL_TIERS
    assert get_args(Provider) == rules.PROVIDERS


def test_connection_strings_pass_through_and_names_derive_from_the_folder(tmp_path: Path) -> None:
    component = FlokanImagesComponent(
        catalog="catalog.csv",
        hero=ImageAssetSettings(prompt_column="prompt"),
        ledger_database="md:flokan",
        image_directory="images",
        flokan=FlokanConnection(base_url="https://flokan.example/api/v1/image-editor"),
        sensors=SensorToggles(reconciliation=False, catalog_sync=False),
        refresh="none",
        key_prefix=[],
    )
    context = dg.ComponentTree.for_test().load_context.for_path(tmp_path / "shop")
    defs = component.build_defs(context)
    assert defs.resources["shop_flokan_ledger"].database == "md:flokan"
    assert defs.resources["shop_flokan_images"].directory == str(Path(context.project_root) / "images")
    assert {key.to_user_string() for key in defs.resolve_all_asset_keys()} == {
        "product_catalog", "hero_images", "flokan_cost_report"}  # fmt: skip
    assert [sensor.name for sensor in defs.sensors or []] == ["shop_cost_report_automation"] and not defs.schedules


def test_the_summary_shows_no_markup() -> None:
    summary = (FlokanImagesComponent.__doc__ or "").strip().splitlines()[0]
    assert "``" not in summary and summary.endswith(".")
