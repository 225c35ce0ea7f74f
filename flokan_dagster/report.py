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
from flokan_dagster.resource import FlokanLedgerResource

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
    return {
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


def build_cost_report_asset(
    name: str = "flokan_cost_report",
    *,
    deps: Sequence[dg.AssetsDefinition | dg.AssetKey | str] = (),
    group_name: str = "flokan",
    top_skus: int = 20,
    days: int = 14,
) -> dg.AssetsDefinition:
    """Make the cost report asset over the ledger (every origin: Dagster, reconciled, external).

    Args:
        name: Asset name.
        deps: The image assets it reports on (for lineage; the figures cover the whole ledger).
        group_name: Asset group.
        top_skus: SKUs listed in the report, by credits.
        days: Recent UTC days listed.
    """

    @dg.asset(name=name, deps=list(deps), group_name=group_name, kinds={"duckdb"},
              description="Credits spent with Flokan, from the DuckDB ledger.")  # fmt: skip
    def _cost_report(context: dg.AssetExecutionContext, flokan_ledger: FlokanLedgerResource) -> dg.MaterializeResult:
        ledger = flokan_ledger.get_ledger()
        waiting = ledger.flush_spool()
        if waiting:
            context.log.warning(f"{waiting} ledger write(s) still wait in the spool; the report omits them")
        summary = cost_summary(ledger, top_skus=top_skus, days=days)
        context.log.info(f"{summary['credits']} credits over {summary['attempts']} attempts")
        return dg.MaterializeResult(metadata=report_metadata(summary))

    return _cost_report
