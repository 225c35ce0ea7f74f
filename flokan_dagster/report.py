"""The cost report asset: the ledger's credits as a markdown table, a chart and numeric totals.

Example:
    >>> report = build_cost_report_asset(deps=["hero_images"])
    >>> report.key.to_user_string()
    'flokan_cost_report'
"""

import base64
import io
from collections.abc import Sequence
from typing import Any

import dagster as dg
from PIL import Image, ImageDraw

from flokan_dagster.ledger import cost_summary, render_markdown
from flokan_dagster.resource import FlokanResourceKeys
from flokan_dagster.translator import METADATA_PREFIX

_BAR_COLORS = [(52, 101, 164), (115, 210, 22), (245, 121, 0), (117, 80, 123), (204, 0, 0), (193, 125, 17)]


def render_chart(summary: dict[str, Any], width: int = 640) -> bytes:
    """A PNG bar chart: credits per tier and provider, then per recent day.

    Example:
        >>> render_chart({"by_tier_provider": [], "recent_days": []})[:4]
        b'\\x89PNG'
    """
    bars: list[tuple[str, int, tuple[int, int, int]]] = []
    for index, row in enumerate(summary.get("by_tier_provider", [])):
        label = f"{row['model_tier']} / {row['provider']}"
        bars.append((label, int(row["credits"]), _BAR_COLORS[index % len(_BAR_COLORS)]))
    for row in reversed(summary.get("recent_days", [])[:10]):
        bars.append((str(row["day"]), int(row["credits"]), (90, 90, 90)))
    row_height, label_width, margin = 22, 170, 10
    height = max(60, margin * 2 + 24 + row_height * len(bars))
    image = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(image)
    draw.text((margin, margin), "Credits by tier/provider and by day (UTC)", fill="black")
    top = max((credits for _, credits, _ in bars), default=0) or 1
    for i, (label, credits, color) in enumerate(bars):
        y = margin + 24 + i * row_height
        draw.text((margin, y + 4), label[:26], fill="black")
        length = int((width - label_width - 80) * credits / top)
        draw.rectangle([label_width, y + 2, label_width + max(length, 1), y + row_height - 4], fill=color)
        draw.text((label_width + length + 6, y + 4), f"{credits:,}", fill="black")
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def report_metadata(summary: dict[str, Any]) -> dict[str, Any]:
    """Dagster metadata for a cost summary: the markdown report, the chart and numeric totals."""
    by_status = summary.get("by_status", {})
    by_origin = summary.get("by_origin", {})
    chart = base64.b64encode(render_chart(summary)).decode("ascii")
    estimate = summary.get("estimate_vs_actual", {"estimated": 0, "actual": 0})
    fields = {
        "report": dg.MetadataValue.md(render_markdown(summary)),
        "chart": dg.MetadataValue.md(f"![credits](data:image/png;base64,{chart})"),
        "total_credits": dg.MetadataValue.int(int(summary["credits"])),
        "attempts": dg.MetadataValue.int(int(summary["attempts"])),
        "skus": dg.MetadataValue.int(int(summary["skus"])),
        "completed_jobs": dg.MetadataValue.int(int(by_status.get("completed", {}).get("attempts", 0))),
        "failed_attempts": dg.MetadataValue.int(int(by_status.get("failed", {}).get("attempts", 0))),
        "unknown_attempts": dg.MetadataValue.int(int(by_status.get("unknown", {}).get("attempts", 0))),
        "external_credits": dg.MetadataValue.int(int(by_origin.get("external", {}).get("credits", 0))),
        "estimated_credits_completed": dg.MetadataValue.int(int(estimate["estimated"])),
        "charged_credits_completed": dg.MetadataValue.int(int(estimate["actual"])),
        "spooled_events": dg.MetadataValue.int(int(summary.get("spooled_events", 0))),
    }
    return {METADATA_PREFIX + name: value for name, value in fields.items()}


def refresh_after_images() -> dg.AutomationCondition:
    """The cost report's default automation: refresh once image materializations land.

    True when any image asset (any SKU partition, from a run, a backfill or the reconciliation
    sensor's adoptions) was updated since the report was last requested or updated, and neither
    an image asset nor the report is in progress: a backfill refreshes the report once, when its
    runs are done, not once per run. An automation condition sensor evaluates it
    (:func:`build_automation_sensor`, running by default; the Dagster daemon runs sensors).

    Example:
        >>> refresh_after_images().get_label()
        'refresh after image materializations'
    """
    return (
        dg.AutomationCondition.any_deps_updated().since_last_handled()
        & ~dg.AutomationCondition.any_deps_in_progress()
        & ~dg.AutomationCondition.in_progress()
    ).with_label("refresh after image materializations")


def build_automation_sensor(
    assets: Sequence[dg.AssetsDefinition | dg.AssetKey],
    *,
    name: str = "flokan_cost_report_automation",
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    minimum_interval_seconds: int = 30,
    description: str = "Evaluates the cost report's automation condition: it refreshes after image materializations.",
) -> dg.AutomationConditionSensorDefinition:
    """The sensor that evaluates the automation conditions of ``assets`` (the daemon runs it).

    Dagster's default automation condition sensor starts stopped; the cost report's refresh spends
    nothing, so its own sensor starts running. Give image assets with ``on_cron`` conditions their
    own sensor, stopped by default like the refresh schedule (it launches paid runs).

    Example:
        >>> build_automation_sensor([build_cost_report_asset()]).name
        'flokan_cost_report_automation'
    """
    return dg.AutomationConditionSensorDefinition(
        name, target=dg.AssetSelection.assets(*assets), default_status=default_status,
        minimum_interval_seconds=minimum_interval_seconds, description=description,
    )  # fmt: skip


def build_cost_report_asset(
    name: str = "flokan_cost_report",
    *,
    deps: Sequence[dg.AssetsDefinition | dg.AssetKey | str] = (),
    key: dg.AssetKey | str | Sequence[str] | None = None,
    group_name: str = "flokan",
    owners: Sequence[str] | None = None,
    tags: dict[str, str] | None = None,
    automation_condition: dg.AutomationCondition | None = None,
    refresh_automatically: bool = True,
    top_skus: int = 20,
    days: int = 14,
    resource_keys: FlokanResourceKeys = FlokanResourceKeys(),
) -> dg.AssetsDefinition:
    """Make the cost report asset over the ledger (every origin: Dagster, reconciled, external).

    Args:
        name: Asset name (its key unless ``key`` is given).
        deps: The image assets it reports on (for lineage and automation; the figures cover the
            whole ledger).
        key: The asset key, e.g. ``["shop", "flokan_cost_report"]``.
        group_name: Asset group.
        owners: Asset owners.
        tags: Asset tags.
        automation_condition: When Dagster refreshes the report (default
            :func:`refresh_after_images`).
        refresh_automatically: False for no automation condition at all.
        top_skus: SKUs listed in the report, by credits.
        days: Recent UTC days listed.
        resource_keys: The ledger resource's key is ``resource_keys.ledger``.
    """
    if key is None:
        asset_key = dg.AssetKey(name)
    elif isinstance(key, str):
        asset_key = dg.AssetKey.from_user_string(key)
    else:
        asset_key = dg.AssetKey.from_coercible(key)
    condition = (automation_condition or refresh_after_images()) if refresh_automatically else None
    dep_keys = [dep.key if isinstance(dep, dg.AssetsDefinition) else
                dg.AssetKey.from_user_string(dep) if isinstance(dep, str) else dep for dep in deps]  # fmt: skip

    @dg.asset(key=asset_key, deps=dep_keys, group_name=group_name, kinds={"duckdb"}, owners=owners, tags=tags,
              automation_condition=condition, required_resource_keys={resource_keys.ledger},
              description="Credits spent with Flokan, from the DuckDB ledger.")  # fmt: skip
    def _cost_report(context: dg.AssetExecutionContext) -> dg.MaterializeResult:
        ledger = resource_keys.ledger_of(context.resources).get_ledger()
        waiting = ledger.flush_spool()
        if waiting:
            context.log.warning(f"{waiting} ledger write(s) still wait in the spool; the report omits them")
        summary = cost_summary(ledger, top_skus=top_skus, days=days)
        context.log.info(f"{summary['credits']} credits over {summary['attempts']} attempts")
        return dg.MaterializeResult(metadata=report_metadata(summary))

    return _cost_report
