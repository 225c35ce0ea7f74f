"""Cost report queries over the ledger's SQL views: a summary dict and a Markdown report.

Every figure is aggregated inside DuckDB. A shared PostgreSQL ledger's rows cross the wire once,
into one grouping-sets scan (the SKU and day groups ranked afterwards); a DuckDB file is scanned
twice, grouped by the report's low-cardinality columns and by SKU, which costs less CPU
(``benchmarks/bench_ledger.py``; 10,000,000 rows in ``benchmarks/bench_scale.py``).

Example:
    >>> import tempfile, os
    >>> from flokan_dagster.ledger.store import CreditLedger
    >>> ledger = CreditLedger(os.path.join(tempfile.mkdtemp(), "l.duckdb"))
    >>> aid = ledger.begin_attempt(asset="images", sku="MUG-1", prompt="p", model_tier="pro")
    >>> _ = ledger.finish_attempt(aid, status="completed", job_id="j1", credits_consumed=50)
    >>> cost_summary(ledger)["credits"]
    50
"""

from __future__ import annotations

from typing import Any

import duckdb

from flokan_dagster.ledger.backend import uses_postgres
from flokan_dagster.ledger.store import CreditLedger

# The whole report in one scan of the ledger: every grouping at once, one group per SKU and per
# day among them, materialized once and then cut down to the top SKUs and the latest days. On the
# shared backend the scan crosses the wire from PostgreSQL, so one scan instead of four (the
# totals, the SKUs, the latest day and its days) is most of the report's time.
_REPORT_SQL = """
WITH groups AS MATERIALIZED (
    SELECT
        GROUPING(status) AS g_status,
        GROUPING(origin) AS g_origin,
        GROUPING(model_tier, provider, billing) AS g_tier,
        GROUPING(asset) AS g_asset,
        GROUPING(sku) AS g_sku,
        GROUPING(day) AS g_day,
        status, origin, model_tier, coalesce(provider, 'platform') AS provider, billing, asset, sku, day,
        count(*) AS attempts,
        sum(credits) AS credits,
        sum(estimated_credits) FILTER (WHERE status = 'completed' AND credits_consumed IS NOT NULL) AS estimated,
        sum(credits_consumed) FILTER (WHERE status = 'completed' AND estimated_credits IS NOT NULL) AS actual
    FROM ledger_costs
    GROUP BY GROUPING SETS ((), (status), (origin), (model_tier, provider, billing), (asset), (sku), (day))
),
skus AS (SELECT * FROM groups WHERE g_sku = 0 AND sku IS NOT NULL)
SELECT *, (SELECT count(*) FROM skus) AS skus FROM (
    SELECT * FROM groups WHERE g_sku = 1 AND g_day = 1
    UNION ALL (SELECT * FROM skus ORDER BY credits DESC, sku LIMIT {top_skus:d})
    UNION ALL SELECT * FROM groups
              WHERE g_day = 0 AND day > (SELECT max(day) FROM groups WHERE g_day = 0) - {days:d}
)
"""

# A DuckDB file is read where it lies, so two scans cost less than one that feeds seven groupings
# (1.4 s of CPU against 3.3 s at 10,000,000 rows): one grouped by every low-cardinality column the
# report breaks down by (a few thousand groups, summed per breakdown in Python), one by SKU.
_ROLLUP_SQL = """
SELECT status, origin, model_tier, coalesce(provider, 'platform') AS provider, billing, asset, day,
    count(*) AS attempts,
    sum(credits) AS credits,
    sum(estimated_credits) FILTER (WHERE status = 'completed' AND credits_consumed IS NOT NULL) AS estimated,
    sum(credits_consumed) FILTER (WHERE status = 'completed' AND estimated_credits IS NOT NULL) AS actual
FROM ledger_costs
GROUP BY ALL
"""

# count(*) OVER () counts the SKU groups: far cheaper than a count(DISTINCT sku).
_TOP_SKUS_SQL = """
SELECT sku, sum(credits) AS credits, count(*) AS attempts, count(*) OVER () AS skus
FROM ledger_costs WHERE sku IS NOT NULL GROUP BY sku ORDER BY credits DESC, sku LIMIT ?
"""


def summarize(conn: duckdb.DuckDBPyConnection, *, top_skus: int = 20, days: int = 14) -> dict[str, Any]:
    """Compute the cost summary on an open connection to a ledger database.

    Args:
        conn: Any DuckDB connection (read-only is enough) to a database holding the ledger.
        top_skus: How many SKUs to list, by credits descending.
        days: How many most recent days (UTC) to list.

    Returns:
        ``credits``, ``attempts``, ``skus``, ``by_status``, ``by_origin``, ``by_tier_provider``
        (list of dicts with model_tier, provider, billing, credits, attempts), ``by_asset`` (list
        of dicts with asset, attempts, credits; asset None for jobs made outside Dagster), ``top_skus``,
        ``recent_days`` and ``estimate_vs_actual`` (estimated, actual).

    Example:
        >>> summarize(duckdb.connect("ledger.duckdb", read_only=True))["credits"]  # doctest: +SKIP
        12450
    """
    summary: dict[str, Any] = {
        "credits": 0,
        "attempts": 0,
        "skus": 0,
        "by_status": {},
        "by_origin": {},
        "by_tier_provider": [],
        "by_asset": [],
        "estimate_vs_actual": {"estimated": 0, "actual": 0},
    }
    if not uses_postgres(conn):
        return _summarize_file(conn, summary, top_skus, days)
    top: list[dict[str, Any]] = []
    recent: list[dict[str, Any]] = []
    rows = conn.execute(_REPORT_SQL.format(top_skus=int(top_skus), days=int(days))).fetchall()
    for (g_status, g_origin, g_tier, g_asset, g_sku, g_day, status, origin, tier, provider, billing, asset, sku, day,
         n, credits, est, act, skus) in rows:  # fmt: skip
        credits = int(credits or 0)
        summary["skus"] = int(skus)
        if not g_sku:
            top.append({"sku": sku, "credits": credits, "attempts": int(n)})
        elif not g_day:
            recent.append({"day": day.isoformat(), "credits": credits, "attempts": int(n)})
        elif not g_asset:
            summary["by_asset"].append({"asset": asset, "attempts": int(n), "credits": credits})
        elif g_status and g_origin and g_tier == 7:
            summary.update(credits=credits, attempts=int(n))
            summary["estimate_vs_actual"] = {"estimated": int(est or 0), "actual": int(act or 0)}
        elif not g_status:
            summary["by_status"][status] = {"attempts": int(n), "credits": credits}
        elif not g_origin:
            summary["by_origin"][origin] = {"attempts": int(n), "credits": credits}
        else:
            summary["by_tier_provider"].append(
                {"model_tier": tier, "provider": provider, "billing": billing, "attempts": int(n), "credits": credits}
            )
    summary["by_tier_provider"].sort(key=lambda r: (-r["credits"], str(r["model_tier"]), str(r["provider"])))
    summary["by_asset"].sort(key=lambda r: (-r["credits"], str(r["asset"])))
    summary["top_skus"] = sorted(top, key=lambda r: (-r["credits"], r["sku"]))
    summary["recent_days"] = sorted(recent, key=lambda r: r["day"], reverse=True)
    return summary


def _summarize_file(conn: duckdb.DuckDBPyConnection, summary: dict[str, Any], top_skus: int, days: int) -> dict[str, Any]:
    """``summarize`` on a DuckDB file: the rollup's groups summed per breakdown, then the top SKUs."""
    by_status: dict[Any, list[int]] = {}
    by_origin: dict[Any, list[int]] = {}
    by_tier: dict[tuple[Any, Any, Any], list[int]] = {}
    by_asset: dict[Any, list[int]] = {}
    by_day: dict[Any, list[int]] = {}
    estimated = actual = 0
    for status, origin, tier, provider, billing, asset, day, n, credits, est, act in conn.execute(_ROLLUP_SQL).fetchall():
        n, credits = int(n), int(credits or 0)
        for groups, key in ((by_status, status), (by_origin, origin), (by_tier, (tier, provider, billing)),
                            (by_asset, asset), (by_day, day)):  # fmt: skip
            totals = groups.setdefault(key, [0, 0])
            totals[0] += n
            totals[1] += credits
        summary["attempts"] += n
        summary["credits"] += credits
        estimated += int(est or 0)
        actual += int(act or 0)
    summary["estimate_vs_actual"] = {"estimated": estimated, "actual": actual}
    summary["by_status"] = {k: {"attempts": n, "credits": c} for k, (n, c) in by_status.items()}
    summary["by_origin"] = {k: {"attempts": n, "credits": c} for k, (n, c) in by_origin.items()}
    summary["by_tier_provider"] = sorted(
        ({"model_tier": t, "provider": p, "billing": b, "attempts": n, "credits": c} for (t, p, b), (n, c) in by_tier.items()),
        key=lambda r: (-r["credits"], str(r["model_tier"]), str(r["provider"])),
    )
    summary["by_asset"] = sorted(
        ({"asset": a, "attempts": n, "credits": c} for a, (n, c) in by_asset.items()), key=lambda r: (-r["credits"], str(r["asset"]))
    )
    dated = sorted((day for day in by_day if day is not None), reverse=True)
    summary["recent_days"] = [
        {"day": day.isoformat(), "credits": by_day[day][1], "attempts": by_day[day][0]} for day in dated if (dated[0] - day).days < days
    ]
    top = conn.execute(_TOP_SKUS_SQL, [int(top_skus)]).fetchall()
    summary["skus"] = int(top[0][3]) if top else 0
    summary["top_skus"] = [{"sku": sku, "credits": int(c or 0), "attempts": int(n)} for sku, c, n, _ in top]
    return summary


def cost_summary(ledger: CreditLedger, *, top_skus: int = 20, days: int = 14) -> dict[str, Any]:
    """Return the cost summary of ``ledger`` (committed rows) plus its spool backlog.

    The extra key ``spooled_events`` counts writes still waiting for a locked database; they
    are not in the figures yet.

    Example:
        >>> cost_summary(ledger)["by_status"]["completed"]  # doctest: +SKIP
        {'attempts': 1, 'credits': 50}
    """
    summary = ledger.read(lambda conn: summarize(conn, top_skus=top_skus, days=days))
    summary["spooled_events"] = ledger.spooled_count()
    return summary


def render_markdown(summary: dict[str, Any]) -> str:
    """Render a ``cost_summary`` dict as a Markdown report.

    Example:
        >>> print(render_markdown({"credits": 0, "attempts": 0, "skus": 0}).splitlines()[0])
        # Flokan credit report
    """
    lines = [
        "# Flokan credit report",
        "",
        f"**{summary['credits']:,} credits** over {summary['attempts']:,} attempts and {summary['skus']:,} SKUs.",
    ]
    if summary.get("spooled_events"):
        lines.append(f"\n_{summary['spooled_events']} ledger write(s) wait in the spool and are not counted yet._")
    ev = summary.get("estimate_vs_actual")
    if ev and ev["estimated"]:
        lines.append(f"\nEstimated {ev['estimated']:,} credits for completed jobs; charged {ev['actual']:,}.")

    def table(title: str, header: list[str], rows: list[list[Any]]) -> None:
        if not rows:
            return
        lines.extend(["", f"## {title}", "", "| " + " | ".join(header) + " |", "|" + "---|" * len(header)])
        lines.extend("| " + " | ".join("" if v is None else f"{v:,}" if isinstance(v, int) else str(v) for v in row) + " |" for row in rows)

    table("By status", ["status", "attempts", "credits"],
          [[k, v["attempts"], v["credits"]] for k, v in sorted(summary.get("by_status", {}).items())])
    table("By asset", ["asset", "attempts", "credits"],
          [[r["asset"] if r["asset"] is not None else "(outside Dagster)", r["attempts"], r["credits"]]
           for r in summary.get("by_asset", [])])
    table("By tier and provider", ["tier", "provider", "billing", "attempts", "credits"],
          [[r["model_tier"], r["provider"], r["billing"], r["attempts"], r["credits"]]
           for r in summary.get("by_tier_provider", [])])
    table("Top SKUs", ["sku", "attempts", "credits"],
          [[r["sku"], r["attempts"], r["credits"]] for r in summary.get("top_skus", [])])
    table("Recent days (UTC)", ["day", "attempts", "credits"],
          [[r["day"], r["attempts"], r["credits"]] for r in summary.get("recent_days", [])])
    table("By origin", ["origin", "attempts", "credits"],
          [[k, v["attempts"], v["credits"]] for k, v in sorted(summary.get("by_origin", {}).items())])
    return "\n".join(lines) + "\n"


def cost_report_markdown(ledger: CreditLedger, *, top_skus: int = 20, days: int = 14) -> str:
    """Return the ledger's cost report as Markdown (for ``MetadataValue.md`` or a file).

    Example:
        >>> print(cost_report_markdown(ledger))  # doctest: +SKIP
        # Flokan credit report
        ...
    """
    return render_markdown(cost_summary(ledger, top_skus=top_skus, days=days))
