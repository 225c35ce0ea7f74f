"""Asset specs shaped by DagsterFlokanTranslator and the factory's arguments; full keys in the ledger and sensors."""

from __future__ import annotations

from pathlib import Path

import dagster as dg

from flokan_dagster import FlokanResource
from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.catalog import load_catalog
from flokan_dagster.catalog_asset import build_flokan_catalog_asset
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.resource import FlokanLedgerResource, FlokanResourceKeys, ImageStoreResource
from flokan_dagster.runs import materialize_skus
from flokan_dagster.sensors import build_flokan_catalog_sensor, stale_skus
from flokan_dagster.translator import DagsterFlokanTranslator, FlokanImageAssetProps
from tests.support import Admin, Workspace
from tests.test_assets import HERO, LIFESTYLE, rows_for, write_catalog


class TeamTranslator(DagsterFlokanTranslator):
    """Every image asset under ``shop/``, owned by the catalog team, tagged with its tier."""

    def get_asset_spec(self, props: FlokanImageAssetProps) -> dg.AssetSpec:
        spec = super().get_asset_spec(props)
        return spec.replace_attributes(key=spec.key.with_prefix("shop"), owners=["team:catalog"]).merge_attributes(
            tags={"tier": props.mapping.model_tier}
        )


def test_translator_and_factory_arguments_shape_the_spec(tmp_path: Path) -> None:
    catalog = write_catalog(tmp_path / "catalog.csv", rows_for(1))
    validated = build_flokan_catalog_asset(catalog, HERO)
    hero = build_flokan_image_asset(
        "hero_images", catalog=catalog, mapping=HERO, catalog_asset=validated, translator=TeamTranslator(),
        group_name="images", tags={"domain": "retail"}, metadata={"flokan/owner_note": "x"},
        automation_condition=dg.AutomationCondition.on_cron("0 4 * * *"),
    )  # fmt: skip
    lifestyle = build_flokan_image_asset("lifestyle", catalog=catalog, mapping=LIFESTYLE, upstream=hero,
                                         key_prefix=["brand"], owners=["ana@example.com"])  # fmt: skip
    [spec] = hero.specs
    assert spec.key == dg.AssetKey(["shop", "hero_images"])
    assert spec.group_name == "images" and spec.owners == ["team:catalog"]
    assert spec.tags["tier"] == "standard" and spec.tags["domain"] == "retail"
    assert spec.metadata["flokan/owner_note"] == "x" and "flokan/catalog" in spec.metadata
    assert spec.automation_condition is not None and "cron" in (spec.automation_condition.get_label() or "").lower()
    assert [dep.asset_key for dep in spec.deps] == [dg.AssetKey("product_catalog")]
    [lspec] = lifestyle.specs
    assert lspec.key == dg.AssetKey(["brand", "lifestyle"]) and lspec.group_name == "flokan"
    assert [dep.asset_key for dep in lspec.deps] == [dg.AssetKey(["shop", "hero_images"])]
    # The two assets describe what each makes, not one shared sentence.
    assert spec.description != lspec.description and "chained edit of the SKU's shop/hero_images" in (lspec.description or "")
    blocking = {c.name: c.blocking for c in hero.check_specs_by_output_name.values()}
    assert blocking == {"stored_image_is_valid": True, "credits_within_estimate": False}


def test_a_prefixed_key_is_the_ledger_and_sensor_name_and_credits_sum_over_events(
    tmp_path: Path, admin: Admin, workspace: Workspace
) -> None:
    rows = rows_for(2)
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    keys = FlokanResourceKeys.prefixed("shop")
    hero = build_flokan_image_asset("hero_images", catalog=catalog, mapping=HERO, key_prefix="shop", resource_keys=keys)
    database = str(tmp_path / "ledger.duckdb")
    resources = {
        keys.flokan: FlokanResource(api_key=workspace.api_key, base_url=admin.base_url),
        keys.ledger: FlokanLedgerResource(database=database),
        keys.images: ImageStoreResource(directory=str(tmp_path / "images")),
    }
    defs = dg.Definitions(assets=[hero], resources=resources)
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, ["SKU-00", "SKU-01"])
    for _ in range(2):  # made, then reused
        [result] = materialize_skus(defs, instance, ["shop/hero_images"], ["SKU-00", "SKU-01"],
                                    partitions_name=SKU_PARTITIONS.name, batch_size=5)  # fmt: skip
        assert result.success
    ledger = CreditLedger(database)
    assert {a.asset for a in ledger.attempts_for()} == {"shop/hero_images"}
    records = instance.fetch_materializations(dg.AssetKey(["shop", "hero_images"]), limit=10).records
    events = [r.asset_materialization for r in records]
    assert sorted(e.metadata["flokan/outcome"].value for e in events if e) == ["made", "made", "reused", "reused"]
    assert all(name.startswith("flokan/") for e in events if e for name in e.metadata)
    # Summed over every event (as Insights sums), the per-event figure equals what was charged.
    assert sum(e.metadata["flokan/credits"].value for e in events if e) == workspace.info()["credits_deducted"] == 40
    assert sum(e.metadata["flokan/job_credits"].value for e in events if e) == 80  # the job's charge, repeated on reuse

    # The sensors read the ledger under the same full key: nothing is stale.
    assert stale_skus(load_catalog(catalog, HERO), ledger, "shop/hero_images") == []
    sensor = build_flokan_catalog_sensor(["shop/hero_images"], catalog=catalog, mapping=HERO, resource_keys=keys)
    with dg.build_sensor_context(instance=instance, resources=resources) as context:
        result = sensor(context)
    assert isinstance(result, dg.SensorResult) and not result.run_requests


def test_plain_names_of_older_ledgers_still_match_one_part_keys(tmp_path: Path) -> None:
    hero = build_flokan_image_asset("hero_images", catalog=tmp_path / "c.csv", mapping=HERO)
    assert hero.key.to_user_string() == "hero_images"  # what ledgers written before prefixes hold
