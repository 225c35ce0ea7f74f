"""``FlokanImagesComponent``: the per-SKU image pipeline configured from a ``defs.yaml``.

A Dagster Component that builds, from YAML, the same pieces as the Python API: a hero image
asset per SKU (and optionally a lifestyle asset that edits each hero image), the cost report
asset, and the ``flokan``, ``flokan_ledger`` and ``flokan_images`` resources. Relative paths
resolve against the folder of the ``defs.yaml``.

The API key is read when a run starts from the environment variable named by
``flokan.api_key_env_var`` (``dg.EnvVar``): a key templated into the YAML with
``{{ env.FLOKAN_API_KEY }}`` would be resolved when the code location loads and stored in its
snapshot, which the Dagster UI shows.

Example ``defs.yaml``::

    type: flokan_dagster.FlokanImagesComponent
    attributes:
      catalog: catalog.csv
      columns: {sku: sku, source: supplier_photo}
      hero:
        prompt_template: "Studio product photo of a {color} {title} on a plain white background"
      lifestyle:
        prompt_template: "The {title} in a bright, modern home"
      ledger_database: data/ledger.duckdb
      image_directory: data/images
      flokan:
        base_url: "{{ env.FLOKAN_BASE_URL }}"

Example:
    >>> component = FlokanImagesComponent(
    ...     catalog="catalog.csv",
    ...     hero=ImageAssetSettings(prompt_template="Studio photo of {title}"),
    ...     ledger_database="ledger.duckdb",
    ...     image_directory="images",
    ... )
    >>> component.mapping_for(component.hero).prompt_template
    'Studio photo of {title}'
"""

import re
from pathlib import Path
from typing import Literal, Self

import dagster as dg
from pydantic import Field, ValidationError, model_validator

from flokan_dagster.api import rules
from flokan_dagster.assets import build_flokan_image_asset
from flokan_dagster.catalog import CatalogMapping
from flokan_dagster.report import build_cost_report_asset
from flokan_dagster.resource import FlokanLedgerResource, FlokanResource, ImageStoreResource
from flokan_dagster.sensors import (
    build_flokan_catalog_sensor,
    build_flokan_reconciliation_sensor,
    build_flokan_refresh_schedule,
)

ModelTier = Literal["pro", "standard", "creative"]
"""The API's model tiers (``rules.MODEL_TIERS``), spelled out so a wrong one fails the load, named."""
Provider = Literal["platform", "openai", "google", "fal", "kie"]
"""The API's providers (``rules.PROVIDERS``)."""
HERO_ASSET = "hero_images"
LIFESTYLE_ASSET = "lifestyle_images"
# "md:flokan", "s3://..." and other connection strings are passed through, not treated as paths.
_URI = re.compile(r"^[A-Za-z][A-Za-z0-9+.-]*:")


class FlokanConnection(dg.Resolvable, dg.Model):
    """Where the Flokan API is and which environment variable holds its key.

    Example:
        >>> FlokanConnection(base_url="http://127.0.0.1:8700/api/v1/image-editor").api_key_env_var
        'FLOKAN_API_KEY'
    """

    api_key_env_var: str = Field(
        default="FLOKAN_API_KEY",
        min_length=1,
        description="Environment variable holding the API key; read when a run starts, never stored in the snapshot.",
    )
    base_url: str = Field(default=rules.DEFAULT_BASE_URL, description="Base URL of the Image Editor API.")


class CatalogColumns(dg.Resolvable, dg.Model):
    """The catalog columns every image asset reads (besides its prompt).

    Example:
        >>> CatalogColumns(source="supplier_photo").sku
        'sku'
    """

    sku: str = Field(default="sku", description="Column holding the SKU (the partition key).")
    source: str | None = Field(
        default=None, description="Column with a local image path or an https URL the hero asset edits."
    )
    tier: str | None = Field(default=None, description="Column overriding the model tier per row.")
    provider: str | None = Field(default=None, description="Column overriding the provider per row.")
    style: str | None = Field(default=None, description="Column overriding the style preset per row.")
    character: str | None = Field(default=None, description="Column overriding the character preset per row.")


class ImageAssetSettings(dg.Resolvable, dg.Model):
    """One image asset: its prompt, and defaults overriding the component's.

    Example:
        >>> ImageAssetSettings(prompt_column="prompt", model_tier="pro").model_tier
        'pro'
    """

    name: str | None = Field(default=None, description="Asset name (hero_images or lifestyle_images by default).")
    prompt_template: str | None = Field(
        default=None, description='Prompt template over catalog columns, e.g. "Studio photo of {title}".'
    )
    prompt_column: str | None = Field(default=None, description="Column holding a ready prompt (instead of a template).")
    model_tier: ModelTier | None = Field(default=None, description="Model tier of this asset (the component's by default).")
    provider: Provider | None = Field(default=None, description="Provider of this asset (the component's by default).")
    style_id: str | None = Field(default=None, description="Style preset of this asset (the component's by default).")
    character_id: str | None = Field(
        default=None, description="Character preset of this asset (the component's by default)."
    )
    description: str | None = Field(default=None, description="Asset description shown in the UI.")


class FlokanImagesComponent(dg.Component, dg.Resolvable, dg.Model):
    """Per-SKU Flokan product images, their cost report and resources, from a ``defs.yaml``.

    Every image asset is partitioned by the dynamic SKU partitions ``flokan_skus``. The hero
    asset generates an image per SKU, or edits the row's source image when ``columns.source``
    names one; the optional lifestyle asset edits each SKU's hero image (a chained edit).

    Example:
        >>> component = FlokanImagesComponent(
        ...     catalog="catalog.csv",
        ...     hero=ImageAssetSettings(prompt_template="Studio photo of {title}"),
        ...     lifestyle=ImageAssetSettings(prompt_template="The {title} at home"),
        ...     ledger_database="ledger.duckdb",
        ...     image_directory="images",
        ... )
        >>> component.lifestyle_name
        'lifestyle_images'
    """

    catalog: str = Field(description="Catalog file (CSV, Parquet or DuckDB), relative to this defs.yaml's folder.")
    catalog_table: str | None = Field(default=None, description="Table name when the catalog is a DuckDB database.")
    columns: CatalogColumns = Field(default_factory=CatalogColumns, description="Catalog columns.")
    hero: ImageAssetSettings = Field(description="The hero image asset (generated, or an edit of the row's source).")
    lifestyle: ImageAssetSettings | None = Field(
        default=None, description="An optional asset editing each SKU's hero image (a chained edit)."
    )
    model_tier: ModelTier = Field(default="standard", description="Default model tier: pro, standard or creative.")
    provider: Provider | None = Field(default=None, description="Default provider (platform when unset, or a BYOK provider).")
    style_id: str | None = Field(default=None, description="Default style preset id.")
    character_id: str | None = Field(default=None, description="Default character preset id.")
    batch_size: int = Field(default=25, ge=1, description="SKUs per run when backfilling.")
    refresh_cron: str = Field(
        default="0 4 * * *", description="Cron (UTC) of the schedule that regenerates stale SKUs (stopped until turned on)."
    )
    run_budget_credits: int | None = Field(default=None, ge=0, description="Refuse a run whose estimate exceeds this.")
    daily_budget_credits: int | None = Field(
        default=None, ge=0, description="Refuse a run that would take today's (UTC) spending past this."
    )
    ledger_database: str = Field(
        description="DuckDB ledger: a path relative to this defs.yaml's folder, or a connection string such as md:flokan."
    )
    image_directory: str = Field(description="Directory of the image store, relative to this defs.yaml's folder.")
    flokan: FlokanConnection = Field(default_factory=FlokanConnection, description="The Flokan API connection.")

    @model_validator(mode="after")
    def _valid_before_any_run(self) -> Self:
        # Refuse a bad prompt, tier/provider pair or preset when the code location loads, not per SKU in a run.
        problems: list[str] = []
        for label, settings in (("hero", self.hero), ("lifestyle", self.lifestyle)):
            if settings is None:
                continue
            try:
                mapping = self.mapping_for(settings)
                rules.check_tier_provider(mapping.model_tier, mapping.provider)
                for field, value in (("style_id", mapping.style_id), ("character_id", mapping.character_id)):
                    if value is not None:
                        rules.check_uuid(field, value)
            except ValidationError as exc:
                problems += [f"{label}: {error['msg'].removeprefix('Value error, ')}" for error in exc.errors()]
            except rules.RuleViolation as exc:
                problems.append(f"{label}: {exc}")
        if self.lifestyle is not None and self.lifestyle_name == self.hero_name:
            problems.append(f"lifestyle: name must differ from the hero asset's, both are {self.hero_name!r}")
        if problems:
            raise ValueError("invalid FlokanImagesComponent attributes:\n" + "\n".join(problems))
        return self

    @property
    def hero_name(self) -> str:
        """The hero asset's name."""
        return self.hero.name or HERO_ASSET

    @property
    def lifestyle_name(self) -> str | None:
        """The lifestyle asset's name, or None when there is no lifestyle asset."""
        if self.lifestyle is None:
            return None
        return self.lifestyle.name or LIFESTYLE_ASSET

    def mapping_for(self, settings: ImageAssetSettings, *, chained: bool = False) -> CatalogMapping:
        """The catalog mapping of one image asset: its prompt, the shared columns and the defaults.

        Args:
            settings: The asset's settings.
            chained: The asset edits an upstream image asset, so the source column does not apply.
        """
        return CatalogMapping(
            sku_column=self.columns.sku,
            prompt_template=settings.prompt_template,
            prompt_column=settings.prompt_column,
            source_column=None if chained else self.columns.source,
            model_tier=settings.model_tier or self.model_tier,
            tier_column=self.columns.tier,
            provider=settings.provider or self.provider,
            provider_column=self.columns.provider,
            style_id=settings.style_id or self.style_id,
            style_column=self.columns.style,
            character_id=settings.character_id or self.character_id,
            character_column=self.columns.character,
        )

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The image asset(s), the cost report, the sensors and schedule, and the three resources they need."""
        base = context.path if context.path.is_dir() else context.path.parent
        catalog = _resolve(base, self.catalog)

        def image_asset(
            name: str, settings: ImageAssetSettings, upstream: dg.AssetsDefinition | None = None
        ) -> dg.AssetsDefinition:
            return build_flokan_image_asset(
                name, catalog=catalog, catalog_table=self.catalog_table, upstream=upstream,
                mapping=self.mapping_for(settings, chained=upstream is not None), batch_size=self.batch_size,
                run_budget_credits=self.run_budget_credits, daily_budget_credits=self.daily_budget_credits,
                description=settings.description,
            )  # fmt: skip

        hero = image_asset(self.hero_name, self.hero)
        assets = [hero]
        if self.lifestyle is not None and self.lifestyle_name is not None:
            assets.append(image_asset(self.lifestyle_name, self.lifestyle, upstream=hero))
        hero_mapping = self.mapping_for(self.hero)
        return dg.Definitions(
            assets=[*assets, build_cost_report_asset(deps=assets)],
            # As in the demo: reconciliation spends nothing and runs; what launches paid runs waits to be turned on.
            sensors=[
                build_flokan_reconciliation_sensor(assets, default_status=dg.DefaultSensorStatus.RUNNING),
                build_flokan_catalog_sensor(assets, catalog=catalog, mapping=hero_mapping, catalog_table=self.catalog_table,
                                            batch_size=self.batch_size),
            ],
            schedules=[
                build_flokan_refresh_schedule(assets, catalog=catalog, mapping=hero_mapping, catalog_table=self.catalog_table,
                                              batch_size=self.batch_size, cron_schedule=self.refresh_cron),
            ],  # fmt: skip
            resources={
                "flokan": FlokanResource(api_key=dg.EnvVar(self.flokan.api_key_env_var), base_url=self.flokan.base_url),
                "flokan_ledger": FlokanLedgerResource(database=_resolve(base, self.ledger_database)),
                "flokan_images": ImageStoreResource(directory=_resolve(base, self.image_directory)),
            },
        )


def _resolve(base: Path, value: str) -> str:
    """``value`` as an absolute path against ``base``, unless it is absolute or a connection string."""
    if Path(value).is_absolute() or _URI.match(value):
        return value
    return str(base / value)
