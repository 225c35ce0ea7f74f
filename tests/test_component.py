"""FlokanImagesComponent: loaded from a defs.yaml the way Dagster loads a project's defs folder."""

from __future__ import annotations

import importlib.metadata
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
from flokan_dagster.assets import SKU_PARTITIONS
from flokan_dagster.component import FlokanImagesComponent, ImageAssetSettings, ModelTier, Provider
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
  flokan:
    api_key_env_var: FLOKAN_TEST_KEY
    base_url: "{{ env.FLOKAN_TEST_BASE_URL }}"
"""


@pytest.fixture
def project(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[Path]:
    """A dg project in tmp_path (dg.toml, src/<module>/defs/flokan/defs.yaml) and a small catalog."""
    module = f"flokan_component_test_{uuid.uuid4().hex[:8]}"
    (tmp_path / "dg.toml").write_text(f'directory_type = "project"\n\n[project]\nroot_module = "{module}"\n')
    (tmp_path / "src" / module / "defs" / "flokan").mkdir(parents=True)
    (tmp_path / "src" / module / "__init__.py").write_text("")
    (tmp_path / "src" / module / "defs" / "flokan" / "defs.yaml").write_text(DEFS_YAML)
    (tmp_path / "data").mkdir()
    (tmp_path / "data" / "catalog.csv").write_text("product_id,title,color\nMUG-1,mug,red\nTEE-1,t-shirt,blue\n")
    monkeypatch.syspath_prepend(str(tmp_path / "src"))
    yield tmp_path
    for name in [name for name in sys.modules if name == module or name.startswith(module + ".")]:
        del sys.modules[name]


def defs_yaml(project: Path) -> Path:
    """The project's one defs.yaml."""
    [path] = project.glob("src/*/defs/flokan/defs.yaml")
    return path


def test_defs_yaml_builds_the_pipeline_and_materializes_a_sku(
    project: Path, workspace: Workspace, admin: Admin, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("FLOKAN_TEST_KEY", workspace.api_key)
    monkeypatch.setenv("FLOKAN_TEST_BASE_URL", admin.base_url)
    defs = dg.load_from_defs_folder(path_within_project=project)

    keys = {key.to_user_string() for key in defs.resolve_all_asset_keys()}
    assert keys == {"hero_images", "lifestyle_images", "flokan_cost_report"}
    assert defs.resources["flokan_ledger"].database == str(defs_yaml(project).parent / "data" / "ledger.duckdb")
    assert workspace.api_key not in repr(defs.resources["flokan"])

    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, ["MUG-1", "TEE-1"])
    results = materialize_skus(
        defs, instance, ["hero_images", "lifestyle_images"], ["MUG-1"], partitions_name=SKU_PARTITIONS.name, batch_size=5
    )
    assert [result.success for result in results] == [True, True]
    [hero] = results[0].asset_materializations_for_node("hero_images")
    [lifestyle] = results[1].asset_materializations_for_node("lifestyle_images")
    assert hero.partition == lifestyle.partition == "MUG-1"
    assert hero.metadata["outcome"].value == lifestyle.metadata["outcome"].value == "made"
    assert hero.metadata["model_tier"].value == "standard" and lifestyle.metadata["model_tier"].value == "creative"
    charged = hero.metadata["credits_consumed"].value + lifestyle.metadata["credits_consumed"].value
    assert charged == workspace.info()["credits_deducted"] == 20 + 30
    assert hero.metadata["thumbnail"].value.startswith("![MUG-1](data:image/")

    report = defs.resolve_implicit_global_asset_job_def().execute_in_process(
        instance=instance, asset_selection=[dg.AssetKey("flokan_cost_report")]
    )
    [event] = report.asset_materializations_for_node("flokan_cost_report")
    assert event.metadata["total_credits"].value == charged


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
        (("  ledger_database: data/ledger.duckdb\n", ""), "attributes.ledger_database at "),
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


def test_relative_paths_resolve_against_the_defs_folder_and_connection_strings_pass_through(tmp_path: Path) -> None:
    component = FlokanImagesComponent(
        catalog="catalog.csv",
        hero=ImageAssetSettings(prompt_column="prompt"),
        ledger_database="md:flokan",
        image_directory="images",
    )
    defs = component.build_defs(dg.ComponentTree.for_test().load_context.for_path(tmp_path))
    assert defs.resources["flokan_ledger"].database == "md:flokan"
    assert defs.resources["flokan_images"].directory == str(tmp_path / "images")
    assert {key.to_user_string() for key in defs.resolve_all_asset_keys()} == {"hero_images", "flokan_cost_report"}
    assert sorted(sensor.name for sensor in defs.sensors or []) == ["flokan_catalog_sync", "flokan_reconciliation"]
    assert [schedule.cron_schedule for schedule in defs.schedules or []] == ["0 4 * * *"]
