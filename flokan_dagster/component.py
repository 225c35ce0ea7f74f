"""``FlokanImagesComponent``: the per-SKU image pipeline configured from a ``defs.yaml``.

A Dagster Component that builds, from YAML, the same pieces as the Python API: the validated
catalog asset, a hero image asset per SKU (and optionally a lifestyle asset that edits each hero
image), the cost report (refreshed by automation after image materializations), the
reconciliation and catalog-sync sensors, the refresh schedule and the three resources.

Several instances can live in one project: each has a ``name`` (by default its defs folder's
name) from which its asset key prefix, resource keys, sensor and schedule names and SKU
partitions are derived. Relative paths resolve against the project root. With neither the API
key variable nor ``flokan.base_url`` set, the local emulator is started and used, as in the demo.

The API key is read when a run starts from the environment variable named by
``flokan.api_key_env_var`` (``dg.EnvVar``): a key templated into the YAML with
``{{ env.FLOKAN_API_KEY }}`` would be resolved when the code location loads and stored in its
snapshot, which the Dagster UI shows.

``dg scaffold defs flokan_dagster.FlokanImagesComponent product_images --catalog data/catalog.csv
--prompt-template "Studio photo of {title}"`` writes a ``defs.yaml`` that loads as it is.

Example ``defs.yaml``::

    type: flokan_dagster.FlokanImagesComponent
    attributes:
      catalog: data/catalog.csv
      columns: {sku: sku, source: supplier_photo}
      hero:
        prompt_template: "Studio product photo of a {color} {title} on a plain white background"
      lifestyle:
        prompt_template: "The {title} in a bright, modern home"
      translation:
        owners: [team:catalog]
        tags: {tier: "{{ props.mapping.model_tier }}"}

Example:
    >>> component = FlokanImagesComponent(
    ...     catalog="catalog.csv",
    ...     hero=ImageAssetSettings(prompt_template="Studio photo of {title}"),
    ... )
    >>> component.mapping_for(component.hero).prompt_template
    'Studio photo of {title}'
"""

import os
import re
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Literal, Self

import dagster as dg
from dagster.components.utils.translation import TranslationFn, TranslationFnResolver
from pydantic import BaseModel, Field, ValidationError, model_validator

from flokan_dagster.api import rules
from flokan_dagster.assets import build_flokan_image_asset
from flokan_dagster.catalog import CatalogMapping
from flokan_dagster.catalog_asset import build_flokan_catalog_asset
from flokan_dagster.report import build_automation_sensor, build_cost_report_asset
from flokan_dagster.resource import FlokanLedgerResource, FlokanResource, FlokanResourceKeys, ImageStoreResource
from flokan_dagster.sensors import (
    build_flokan_catalog_sensor,
    build_flokan_reconciliation_sensor,
    build_flokan_refresh_schedule,
)
from flokan_dagster.translator import DagsterFlokanTranslator, FlokanImageAssetProps

ModelTier = Literal["pro", "standard", "creative"]
"""The API's model tiers (``rules.MODEL_TIERS``), spelled out so a wrong one fails the load, named."""
Provider = Literal["platform", "openai", "google", "fal", "kie"]
"""The API's providers (``rules.PROVIDERS``)."""
HERO_ASSET = "hero_images"
LIFESTYLE_ASSET = "lifestyle_images"
CATALOG_ASSET = "product_catalog"
REPORT_ASSET = "flokan_cost_report"
RefreshMode = Literal["schedule", "automation", "none"]
"""How stale SKUs are refreshed: the refresh schedule, an ``on_cron`` automation condition, or not at all."""
_NOT_A_NAME = re.compile(r"[^A-Za-z0-9_]+")
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
    base_url: str | None = Field(
        default=None,
        description="Base URL of the Image Editor API (Flokan's when the key variable is set; unset with no key: the local emulator).",
    )
    local_emulator: bool | None = Field(
        default=None,
        description="Use the local emulator (started when needed). Default: when neither the key variable nor base_url is set.",
    )

    def uses_emulator(self) -> bool:
        """Whether the pipeline talks to the local emulator (read when the code location loads)."""
        if self.local_emulator is not None:
            return self.local_emulator
        return not os.environ.get(self.api_key_env_var) and not self.base_url


class SensorToggles(dg.Resolvable, dg.Model):
    """Which sensors the component adds.

    Example:
        >>> SensorToggles(catalog_sync=False).reconciliation
        True
    """

    reconciliation: bool = Field(default=True, description="The reconciliation sensor (running; it spends nothing).")
    catalog_sync: bool = Field(
        default=True, description="The catalog-sync sensor (stopped until turned on: it launches paid runs)."
    )
    rerun_failed: bool = Field(default=False, description="Let the reconciliation sensor re-run failed SKUs (pays again).")


def _resolve_translation(props: FlokanImageAssetProps) -> dict[str, object]:
    return {"props": props}


TranslationField = Annotated[
    TranslationFn[FlokanImageAssetProps],
    TranslationFnResolver[FlokanImageAssetProps](_resolve_translation),
]


class _TranslatingTranslator(DagsterFlokanTranslator):
    """The default spec, then the component's ``translation`` over it."""

    def __init__(self, translate: Callable[[dg.AssetSpec, FlokanImageAssetProps], dg.AssetSpec]) -> None:
        self.translate = translate

    def get_asset_spec(self, props: FlokanImageAssetProps) -> dg.AssetSpec:
        return self.translate(super().get_asset_spec(props), props)


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


class FlokanScaffoldParams(BaseModel):
    """What ``dg scaffold defs flokan_dagster.FlokanImagesComponent <path>`` asks for (all optional).

    Example:
        >>> FlokanScaffoldParams(catalog="data/shop.csv").sku_column
        'sku'
    """

    catalog: str = Field(default="data/catalog.csv", description="Catalog file, relative to the project root.")
    prompt_template: str = Field(
        default="Studio product photo of {title} on a plain white background",
        description="The hero images' prompt template over catalog columns.",
    )
    sku_column: str = Field(default="sku", description="Column holding the SKU.")
    source_column: str | None = Field(default=None, description="Column with a photo path or https URL to edit.")
    lifestyle_prompt_template: str | None = Field(
        default=None, description="Adds a lifestyle asset editing each hero image with this prompt template."
    )
    model_tier: ModelTier = Field(default="standard", description="pro, standard or creative.")


class FlokanImagesScaffolder(dg.Scaffolder[FlokanScaffoldParams]):
    """Writes a ``defs.yaml`` for ``FlokanImagesComponent`` that loads as it is."""

    @classmethod
    def get_scaffold_params(cls) -> type[FlokanScaffoldParams]:
        """The parameters ``dg scaffold defs`` accepts (``--catalog``, ``--prompt-template`` ...)."""
        return FlokanScaffoldParams

    def scaffold(self, request: dg.ScaffoldRequest[FlokanScaffoldParams]) -> None:
        """Write the ``defs.yaml``."""
        params = request.params or FlokanScaffoldParams()
        columns: dict[str, str] = {"sku": params.sku_column}
        if params.source_column:
            columns["source"] = params.source_column
        attributes: dict[str, object] = {
            "catalog": params.catalog,
            "columns": columns,
            "hero": {"prompt_template": params.prompt_template},
        }
        if params.lifestyle_prompt_template:
            attributes["lifestyle"] = {"prompt_template": params.lifestyle_prompt_template}
        attributes |= {
            "model_tier": params.model_tier,
            "batch_size": 25,
            "refresh": "schedule",
            "flokan": {"api_key_env_var": "FLOKAN_API_KEY"},
        }
        dg.scaffold_component(request, attributes)


@dg.scaffold_with(FlokanImagesScaffolder)
class FlokanImagesComponent(dg.Component, dg.Resolvable, dg.Model):
    """Per-SKU Flokan product images, their catalog, cost report, sensors and resources, from YAML.

    Each instance is named (``name``, by default its defs folder's name); its assets are keyed
    under that prefix, partitioned by the dynamic partitions ``<name>_skus``, and use the resources
    ``<name>_flokan``, ``<name>_flokan_ledger`` and ``<name>_flokan_images``, so several
    instances live side by side. The hero asset generates an image per SKU, or edits the row's
    source image when ``columns.source`` names one; the optional lifestyle asset edits each SKU's
    hero image (a chained edit).

    Example:
        >>> component = FlokanImagesComponent(
        ...     catalog="catalog.csv",
        ...     hero=ImageAssetSettings(prompt_template="Studio photo of {title}"),
        ...     lifestyle=ImageAssetSettings(prompt_template="The {title} at home"),
        ... )
        >>> component.lifestyle_name
        'lifestyle_images'
    """

    name: str | None = Field(
        default=None,
        description="This pipeline's name: its key prefix, resource keys, sensor, schedule and partition names derive from it (default: the defs folder's name).",
    )
    catalog: str = Field(description="Catalog file (CSV, Parquet or DuckDB), relative to the project root.")
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
    refresh_cron: str = Field(default="0 4 * * *", description="Cron (UTC) of the refresh of stale SKUs.")
    refresh: RefreshMode = Field(
        default="schedule",
        description="schedule: a schedule launching only stale SKUs (stopped until turned on); automation: an on_cron "
        "automation condition on the catalog and image assets (unchanged SKUs are reused, not paid); none.",
    )
    sensors: SensorToggles = Field(default_factory=SensorToggles, description="Which sensors to add.")
    key_prefix: list[str] | None = Field(
        default=None, description="Key prefix of every asset (default: [name]; [] for none)."
    )
    translation: TranslationField | None = Field(
        default=None,
        description="Asset attributes (key, group_name, owners, tags, description, metadata, automation_condition...) "
        "applied to each image asset's spec; templates see {{ props }} (name, catalog, mapping, upstream) and {{ spec }}.",
    )
    run_budget_credits: int | None = Field(default=None, ge=0, description="Refuse a run whose estimate exceeds this.")
    daily_budget_credits: int | None = Field(
        default=None, ge=0, description="Refuse a run that would take today's (UTC) spending past this."
    )
    data_directory: str = Field(
        default=".data", description="Where the ledger, images and local emulator live by default, relative to the project root."
    )
    ledger_database: str | None = Field(
        default=None,
        description="DuckDB ledger: a path relative to the project root, or a connection string such as md:flokan "
        "(default: <data_directory>/<name>/ledger.duckdb).",
    )
    image_directory: str | None = Field(
        default=None, description="Directory of the image store, relative to the project root (default: <data_directory>/<name>/images)."
    )
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

    def instance_name(self, context: dg.ComponentLoadContext) -> str:
        """``name``, or the defs folder's name, as a Python identifier."""
        folder = context.path.parent if context.path.is_file() else context.path
        return _NOT_A_NAME.sub("_", self.name or folder.name).strip("_") or "flokan"

    def build_defs(self, context: dg.ComponentLoadContext) -> dg.Definitions:
        """The catalog, image and report assets, the sensors and schedule, and the three resources they need."""
        name = self.instance_name(context)
        root = Path(context.project_root)
        prefix = [name] if self.key_prefix is None else list(self.key_prefix)
        keys = FlokanResourceKeys.prefixed(name)
        partitions = dg.DynamicPartitionsDefinition(name=f"{name}_skus")
        catalog = _resolve(root, self.catalog)
        data_dir = Path(_resolve(root, self.data_directory))
        on_cron = dg.AutomationCondition.on_cron(self.refresh_cron) if self.refresh == "automation" else None
        translator = _TranslatingTranslator(self.translation) if self.translation else None
        hero_mapping = self.mapping_for(self.hero)

        catalog_asset = build_flokan_catalog_asset(
            catalog, hero_mapping, key=[*prefix, CATALOG_ASSET], catalog_table=self.catalog_table,
            automation_condition=on_cron,
        )  # fmt: skip

        def image_asset(
            asset_name: str, settings: ImageAssetSettings, upstream: dg.AssetsDefinition | None = None
        ) -> dg.AssetsDefinition:
            return build_flokan_image_asset(
                asset_name, catalog=catalog, catalog_table=self.catalog_table, upstream=upstream,
                catalog_asset=catalog_asset, partitions_def=partitions,
                mapping=self.mapping_for(settings, chained=upstream is not None), batch_size=self.batch_size,
                run_budget_credits=self.run_budget_credits, daily_budget_credits=self.daily_budget_credits,
                description=settings.description, key_prefix=prefix or None, automation_condition=on_cron,
                translator=translator, resource_keys=keys,
            )  # fmt: skip

        hero = image_asset(self.hero_name, self.hero)
        assets = [hero]
        if self.lifestyle is not None and self.lifestyle_name is not None:
            assets.append(image_asset(self.lifestyle_name, self.lifestyle, upstream=hero))
        report = build_cost_report_asset(key=[*prefix, REPORT_ASSET], deps=assets, resource_keys=keys)
        sensors: list[dg.SensorDefinition] = []
        if self.sensors.reconciliation:
            # As in the demo: reconciliation spends nothing and runs (unless it re-runs failed SKUs).
            sensors.append(build_flokan_reconciliation_sensor(
                assets, name=f"{name}_reconciliation", resource_keys=keys, rerun_failed=self.sensors.rerun_failed,
                default_status=dg.DefaultSensorStatus.STOPPED if self.sensors.rerun_failed else dg.DefaultSensorStatus.RUNNING,
            ))  # fmt: skip
        if self.sensors.catalog_sync:
            sensors.append(build_flokan_catalog_sensor(
                assets, name=f"{name}_catalog_sync", catalog=catalog, mapping=hero_mapping,
                catalog_table=self.catalog_table, partitions_def=partitions, batch_size=self.batch_size,
                resource_keys=keys,
            ))  # fmt: skip
        sensors.append(build_automation_sensor([report], name=f"{name}_cost_report_automation"))
        if self.refresh == "automation":
            # on_cron launches paid runs for changed SKUs: stopped until turned on, like the schedule.
            sensors.append(build_automation_sensor(
                [catalog_asset, *assets], name=f"{name}_refresh_automation", default_status=dg.DefaultSensorStatus.STOPPED,
                description=f"Evaluates the on_cron ({self.refresh_cron}) conditions of the catalog and image assets.",
            ))  # fmt: skip
        schedules = []
        if self.refresh == "schedule":
            schedules.append(build_flokan_refresh_schedule(
                assets, name=f"{name}_refresh", catalog=catalog, mapping=hero_mapping,
                catalog_table=self.catalog_table, partitions_def=partitions, batch_size=self.batch_size,
                cron_schedule=self.refresh_cron, resource_keys=keys,
            ))  # fmt: skip
        return dg.Definitions(
            assets=[catalog_asset, *assets, report],
            sensors=sensors,
            schedules=schedules,
            resources={
                keys.flokan: self._flokan_resource(data_dir),
                keys.ledger: FlokanLedgerResource(
                    database=_resolve(root, self.ledger_database) if self.ledger_database else str(data_dir / name / "ledger.duckdb")
                ),
                keys.images: ImageStoreResource(
                    directory=_resolve(root, self.image_directory) if self.image_directory else str(data_dir / name / "images")
                ),
            },
        )

    def _flokan_resource(self, data_dir: Path) -> FlokanResource:
        if self.flokan.uses_emulator():
            # Imported here so that the real-service path never loads the emulator.
            from flokan_dagster.local_emulator import ensure_local_emulator

            emulator = ensure_local_emulator(data_dir)
            # The emulator's demo key guards nothing outside this machine's loopback.
            return FlokanResource(api_key=emulator.api_key, base_url=emulator.base_url)
        return FlokanResource(
            api_key=dg.EnvVar(self.flokan.api_key_env_var), base_url=self.flokan.base_url or rules.DEFAULT_BASE_URL
        )


def _resolve(base: Path, value: str) -> str:
    """``value`` as an absolute path against ``base`` (the project root), unless absolute or a connection string."""
    if Path(value).is_absolute() or _URI.match(value):
        return value
    return str(base / value)
