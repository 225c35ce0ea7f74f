"""The catalog asset: a validated snapshot of the product catalog, upstream of the image assets.

Each materialization reads the catalog, validates every row with the image assets' mapping and
records what it found: the file's SHA-256 (the snapshot the image runs read, when unchanged),
row counts and each bad row's SKU, row, column and rule. The image assets name it as their
upstream (``build_flokan_image_asset(..., catalog_asset=...)``), so the lineage graph shows
catalog -> images -> cost report.

Example:
    >>> from flokan_dagster.catalog import CatalogMapping
    >>> asset = build_flokan_catalog_asset("data/catalog.csv", CatalogMapping(prompt_column="prompt"))
    >>> asset.key.to_user_string()
    'product_catalog'
"""


from collections.abc import Sequence
from pathlib import Path

import dagster as dg

from flokan_dagster.catalog import Catalog, CatalogFileError, CatalogMapping, load_catalog
from flokan_dagster.sensors import catalog_digest
from flokan_dagster.translator import DEFAULT_GROUP, METADATA_PREFIX

PROBLEMS_SHOWN = 200
"""Bad rows listed in the problems table (all are counted)."""


def catalog_metadata(parsed: Catalog, catalog: str | Path, digest: str) -> dict[str, dg.MetadataValue]:
    """The catalog asset's metadata: counts, the problems table, the file and its digest.

    Example:
        >>> from flokan_dagster.catalog import parse_rows
        >>> parsed = parse_rows([{"sku": "A", "prompt": "x"}], CatalogMapping(prompt_column="prompt"))
        >>> catalog_metadata(parsed, "c.csv", "ab")["flokan/valid_rows"].value
        1
    """
    problems = [*parsed.problems.values(), *parsed.unkeyed]
    lines = [f"| {p.sku} | {p.row_number} | {p.column} | {p.rule} |" for p in problems[:PROBLEMS_SHOWN]]
    if len(problems) > PROBLEMS_SHOWN:
        lines.append(f"| ... | | | {len(problems) - PROBLEMS_SHOWN} more |")
    table = "| sku | row | column | rule |\n|---|---|---|---|\n" + "\n".join(lines) if problems else "No problems."
    fields: dict[str, dg.MetadataValue] = {
        "skus": dg.MetadataValue.int(len(parsed.partition_keys)),
        "valid_rows": dg.MetadataValue.int(len(parsed.specs)),
        "invalid_rows": dg.MetadataValue.int(len(problems)),
        "problems": dg.MetadataValue.md(table),
        "path": dg.MetadataValue.path(str(catalog)),
        "sha256": dg.MetadataValue.text(digest),
    }
    return {METADATA_PREFIX + name: value for name, value in fields.items()}


def build_flokan_catalog_asset(
    catalog: str | Path,
    mapping: CatalogMapping,
    *,
    name: str = "product_catalog",
    key: dg.AssetKey | Sequence[str] | None = None,
    catalog_table: str | None = None,
    group_name: str = DEFAULT_GROUP,
    automation_condition: dg.AutomationCondition | None = None,
) -> dg.AssetsDefinition:
    """Make the asset that validates the catalog and records its counts, problems and digest.

    Args:
        catalog: The catalog file (CSV, Parquet, or a DuckDB database with ``catalog_table``).
        mapping: The root image asset's mapping (the rules rows are checked by).
        name: Asset name (its key unless ``key`` is given).
        key: The asset key, e.g. ``["shop", "product_catalog"]``.
        catalog_table: Table name when ``catalog`` is a DuckDB database.
        group_name: Asset group.
        automation_condition: When Dagster's automation re-validates it (e.g. the same
            ``on_cron`` as image assets that refresh by automation).
    """
    asset_key = dg.AssetKey.from_coercible(key) if key is not None else dg.AssetKey(name)

    @dg.asset(key=asset_key, group_name=group_name, kinds={"csv"} if str(catalog).endswith(".csv") else {"duckdb"},
              automation_condition=automation_condition,
              description=f"The product catalog {Path(catalog).name}, validated row by row: counts, bad rows, digest.")  # fmt: skip
    def _catalog(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        try:
            parsed = load_catalog(catalog, mapping, table=catalog_table)
        except CatalogFileError as exc:  # a bad file is one message naming it and the fix, not a traceback
            raise dg.Failure(description=str(exc), allow_retries=False) from None
        metadata = catalog_metadata(parsed, catalog, catalog_digest(catalog, catalog_table))
        context.log.info(
            f"{Path(catalog).name}: {metadata['flokan/valid_rows'].value} valid row(s), "
            f"{metadata['flokan/invalid_rows'].value} invalid"
        )
        return dg.MaterializeResult(metadata=metadata)

    return _catalog
