"""The catalog asset: a validated snapshot of the catalog with counts, problems and digest as metadata."""

from __future__ import annotations

import hashlib
from pathlib import Path

import dagster as dg

from flokan_dagster.catalog_asset import build_flokan_catalog_asset
from tests.test_assets import HERO, rows_for, write_catalog


def test_counts_problems_and_digest_of_the_catalog(tmp_path: Path) -> None:
    rows = rows_for(4, **{"SKU-02": {"tier": "ultra"}, "SKU-03": {"sku": "BAD|SKU"}})
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    asset = build_flokan_catalog_asset(catalog, HERO, key=["shop", "product_catalog"])
    result = dg.materialize([asset], instance=dg.DagsterInstance.ephemeral())
    [event] = result.asset_materializations_for_node("shop__product_catalog")
    metadata = {name: value.value for name, value in event.metadata.items()}
    assert metadata["flokan/valid_rows"] == 2 and metadata["flokan/invalid_rows"] == 2
    assert metadata["flokan/skus"] == 3  # an unkeyable SKU cannot be a partition
    problems = str(metadata["flokan/problems"])
    assert "| SKU-02 | 3 | tier |" in problems and len(problems.splitlines()) == 2 + 2  # header, rule, two rows
    assert metadata["flokan/sha256"] == hashlib.sha256(b"\0" + catalog.read_bytes()).hexdigest()
    assert all(name.startswith("flokan/") for name in metadata)
