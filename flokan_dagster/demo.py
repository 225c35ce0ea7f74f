"""The demo pipeline: product_catalog -> hero images -> lifestyle variants -> cost report and gallery.

Configured by the environment:

- ``FLOKAN_API_KEY`` and ``FLOKAN_BASE_URL`` select a real Flokan workspace;
- with neither set, the local emulator's demo workspace is used, started in the background;
- ``FLOKAN_DATA_DIR`` holds the ledger, the image store and the emulator's state
  (default: ``.data`` in the project, git-ignored);
- ``FLOKAN_CATALOG`` points at another catalog (default: ``data/catalog.csv``);
- ``FLOKAN_STYLE_ID`` is the style preset of the lifestyle variants on a real workspace;
- ``FLOKAN_REFRESH_CRON`` is the refresh schedule (default ``0 4 * * *``, UTC);
- ``FLOKAN_LEDGER_DATABASE`` (e.g. ``postgresql://flokan@db:5432/flokan``), ``FLOKAN_LEDGER_SPOOL_DIR``,
  ``FLOKAN_IMAGE_STORE`` (e.g. ``s3://bucket/flokan``) and ``FLOKAN_S3_ENDPOINT_URL`` put the ledger
  and the images on shared servers for runs on several machines (see ``deploy/``).

Example:
    >>> defs = build_demo_definitions(DemoSettings(api_key="flk_x", base_url="https://x", data_dir=Path("/tmp/d")))
    >>> sorted(key.to_user_string() for key in defs.resolve_all_asset_keys())
    ['flokan_cost_report', 'flokan_gallery', 'hero_images', 'lifestyle_images', 'product_catalog']
"""

import os
from dataclasses import dataclass
from pathlib import Path

import dagster as dg

from flokan_dagster.api import rules
from flokan_dagster.assets import build_flokan_image_asset
from flokan_dagster.catalog import CatalogMapping
from flokan_dagster.catalog_asset import build_flokan_catalog_asset
from flokan_dagster.gallery import build_gallery_asset
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.report import build_automation_sensor, build_cost_report_asset
from flokan_dagster.resource import FlokanLedgerResource, FlokanResource, ImageStoreResource
from flokan_dagster.sensors import (
    build_flokan_catalog_sensor,
    build_flokan_reconciliation_sensor,
    build_flokan_refresh_schedule,
)

PROJECT_DIR = Path(__file__).resolve().parent.parent
DEMO_CATALOG = PROJECT_DIR / "data" / "catalog.csv"

HERO_MAPPING = CatalogMapping(
    prompt_template="Studio product photo of a {color} {material} {title} on a plain white background",
    source_column="supplier_photo",
    model_tier="standard",
)


def data_dir_from_env() -> Path:
    """``FLOKAN_DATA_DIR``, or ``.data`` in the project."""
    return Path(os.environ.get("FLOKAN_DATA_DIR") or PROJECT_DIR / ".data").resolve()


def ledger_path(data_dir: Path) -> Path:
    """The demo's DuckDB ledger in ``data_dir``."""
    return data_dir / "ledger.duckdb"


def images_dir(data_dir: Path) -> Path:
    """The demo's image store in ``data_dir``."""
    return data_dir / "images"


def gallery_dir(data_dir: Path) -> Path:
    """The demo's gallery (``index.html``, ``contact_sheet.png``) in ``data_dir``."""
    return data_dir / "gallery"


def dagster_home_dir(data_dir: Path) -> Path:
    """The demo's Dagster instance directory in ``data_dir``: the one ``make dev`` and the CLI use."""
    return data_dir / "dagster_home"


# Written into a Dagster home the demo creates: no telemetry banner or "join us" dialog in a
# command's output or the UI (a user's own DAGSTER_HOME is left as it is).
DEMO_DAGSTER_YAML = """\
# Created by flokan-dagster for the demo's Dagster instance (`make dev`, `flokan-dagster materialize`).
telemetry:
  enabled: false
nux:
  enabled: false
"""


def prepare_dagster_home(home: Path) -> Path:
    """Create ``home`` with :data:`DEMO_DAGSTER_YAML` unless it already has a ``dagster.yaml``."""
    home.mkdir(parents=True, exist_ok=True)
    config = home / "dagster.yaml"
    if not config.exists():
        config.write_text(DEMO_DAGSTER_YAML)
    return home


@dataclass(frozen=True)
class DemoSettings:
    """Where the demo sends requests and keeps its files."""

    api_key: str
    base_url: str
    data_dir: Path
    catalog: Path = DEMO_CATALOG
    style_id: str | None = None
    uses_emulator: bool = False

    @classmethod
    def from_env(cls) -> "DemoSettings":
        """Read the environment; start the local emulator when no Flokan workspace is configured."""
        data_dir = data_dir_from_env()
        catalog = Path(os.environ.get("FLOKAN_CATALOG") or DEMO_CATALOG).resolve()
        key, base_url = os.environ.get("FLOKAN_API_KEY"), os.environ.get("FLOKAN_BASE_URL")
        if key:
            return cls(key, base_url or rules.DEFAULT_BASE_URL, data_dir, catalog, os.environ.get("FLOKAN_STYLE_ID"))
        if base_url:
            raise RuntimeError("FLOKAN_BASE_URL is set but FLOKAN_API_KEY is not: set both, or neither for the emulator")
        # Imported here so that the real-service path never loads the emulator.
        from flokan_dagster.emulator.seed import DEMO_STYLE_ID
        from flokan_dagster.local_emulator import ensure_local_emulator

        emulator = ensure_local_emulator(data_dir)
        return cls(emulator.api_key, emulator.base_url, data_dir, catalog, DEMO_STYLE_ID, uses_emulator=True)


def build_demo_definitions(settings: DemoSettings | None = None) -> dg.Definitions:
    """The whole demo: assets, resources, the reconciliation and catalog-sync sensors, the refresh schedule."""
    settings = settings or DemoSettings.from_env()
    catalog_asset = build_flokan_catalog_asset(settings.catalog, HERO_MAPPING)
    hero = build_flokan_image_asset(
        "hero_images", catalog=settings.catalog, mapping=HERO_MAPPING, catalog_asset=catalog_asset,
        description="A studio hero image per SKU (an edit of the supplier photo when there is one).",
    )  # fmt: skip
    lifestyle = build_flokan_image_asset(
        "lifestyle_images",
        catalog=settings.catalog,
        mapping=CatalogMapping(prompt_template="The {title} in a bright, modern home", model_tier="standard",
                               style_id=settings.style_id),  # fmt: skip
        upstream=hero,
        catalog_asset=catalog_asset,
        description="A lifestyle variant per SKU: a chained edit of its hero image with a style preset.",
    )
    report = build_cost_report_asset(deps=[hero, lifestyle])
    data_dir = settings.data_dir
    gallery = build_gallery_asset(image_assets=[hero, lifestyle], directory=gallery_dir(data_dir))
    return dg.Definitions(
        assets=[catalog_asset, hero, lifestyle, report, gallery],
        sensors=[
            # Reconciliation spends nothing (re-runs of failed SKUs, which would, are off), so it runs
            # by default; the sensor and schedule that launch paid runs wait to be turned on.
            build_flokan_reconciliation_sensor([hero, lifestyle], default_status=dg.DefaultSensorStatus.RUNNING),
            build_flokan_catalog_sensor([hero, lifestyle], catalog=settings.catalog, mapping=HERO_MAPPING),
            # The cost report refreshes itself after image materializations (a backfill from the UI included).
            build_automation_sensor([report]),
        ],
        schedules=[
            build_flokan_refresh_schedule([hero, lifestyle], catalog=settings.catalog, mapping=HERO_MAPPING,
                                          cron_schedule=os.environ.get("FLOKAN_REFRESH_CRON", "0 4 * * *")),
        ],  # fmt: skip
        resources={
            "flokan": FlokanResource(
                api_key=settings.api_key if settings.uses_emulator else dg.EnvVar("FLOKAN_API_KEY"),
                base_url=settings.base_url,
            ),
            "flokan_ledger": ledger_resource(data_dir),
            "flokan_images": image_store_resource(data_dir),
        },
    )


def ledger_resource(data_dir: Path) -> FlokanLedgerResource:
    """The demo's ledger: ``FLOKAN_LEDGER_DATABASE`` when set (read when a run starts, so a password
    in it stays out of the code location's snapshot), else the DuckDB file in ``data_dir``."""
    if not os.environ.get("FLOKAN_LEDGER_DATABASE"):
        return FlokanLedgerResource(database=str(ledger_path(data_dir)))
    spool = os.environ.get("FLOKAN_LEDGER_SPOOL_DIR") or str(data_dir / "ledger.spool")
    return FlokanLedgerResource(database=dg.EnvVar("FLOKAN_LEDGER_DATABASE"), spool_dir=spool)


def open_demo_ledger(data_dir: Path) -> CreditLedger:
    """The ledger the demo's runs write to (shared when ``FLOKAN_LEDGER_DATABASE`` is set), for the CLI."""
    return ledger_resource(data_dir).process_config_and_initialize().get_ledger()


def open_demo_store(data_dir: Path) -> ImageStore:
    """The image store the demo's runs write to (shared when ``FLOKAN_IMAGE_STORE`` is set), for the CLI."""
    return image_store_resource(data_dir).get_store()


def image_store_resource(data_dir: Path) -> ImageStoreResource:
    """The demo's image store: ``FLOKAN_IMAGE_STORE`` (a directory or ``s3://...`` URL) when set,
    with ``FLOKAN_S3_ENDPOINT_URL`` for an S3-compatible server, else ``images`` in ``data_dir``."""
    endpoint = os.environ.get("FLOKAN_S3_ENDPOINT_URL")
    return ImageStoreResource(
        directory=os.environ.get("FLOKAN_IMAGE_STORE") or str(images_dir(data_dir)),
        storage_options={"endpoint_url": endpoint} if endpoint else {},
    )


IMAGE_ASSETS = ("hero_images", "lifestyle_images")
CATALOG_ASSET = "product_catalog"
