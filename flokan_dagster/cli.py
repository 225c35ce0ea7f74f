"""``flokan-dagster``: the headless commands, for cron and CI.

- ``flokan-dagster materialize [--asset NAME]... [--sku SKU]... [--force]``: sync the catalog's
  SKUs into the Dagster instance, materialize the image assets for those SKUs through Dagster in
  batches (as a backfill from the UI would), then the cost report. Exit 1 if any SKU failed.
- ``flokan-dagster reconcile``: one reconciliation pass over ``GET /jobs`` (the sensor's code).
- ``flokan-dagster report [--json]``: the cost report from the ledger.
- ``flokan-dagster stop-emulator``: stop the local emulator of the data directory.

The instance is ``DAGSTER_HOME``'s when set, else a temporary one.

Example:
    $ flokan-dagster materialize --sku MUG-001 --sku TEE-001
"""

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from typing import Any

import dagster as dg

from flokan_dagster.api.client import FlokanClient
from flokan_dagster.assets import SKU_PARTITIONS, progress_logger
from flokan_dagster.batch import SkuOutcome
from flokan_dagster.catalog import load_catalog, partition_changes
from flokan_dagster.demo import (
    HERO_MAPPING,
    IMAGE_ASSETS,
    DemoSettings,
    build_demo_definitions,
    data_dir_from_env,
    images_dir,
    ledger_path,
)
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import CreditLedger, cost_summary, render_markdown
from flokan_dagster.reconcile import reconcile
from flokan_dagster.runs import console_log_level, materialize_skus


class _Progress(logging.Handler):
    """Prints ``[n/N] SKU  seconds  credits`` as each SKU of a batch finishes, and tallies."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.done = 0
        self.outcomes: list[tuple[str, SkuOutcome]] = []

    def emit(self, record: logging.LogRecord) -> None:
        """Print one finished SKU."""
        outcome: SkuOutcome | None = getattr(record, "flokan_outcome", None)
        if outcome is None:
            return
        self.done += 1
        self.outcomes.append((getattr(record, "flokan_asset", "?"), outcome))
        state = outcome.kind if outcome.kind != "failed" else f"FAILED: {outcome.error}"
        print(f"[{self.done}/{self.total}] {outcome.sku:<14} {outcome.seconds:6.1f}s {outcome.credits_spent:5d} credits  {state}",
              flush=True)  # fmt: skip


def _instance() -> dg.DagsterInstance:
    return dg.DagsterInstance.get() if os.environ.get("DAGSTER_HOME") else dg.DagsterInstance.ephemeral()


def sync_partitions(instance: dg.DagsterInstance, catalog_keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Add the catalog's new SKUs to the dynamic partitions and delete the removed ones."""
    adds, deletes = partition_changes(catalog_keys, instance.get_dynamic_partitions(SKU_PARTITIONS.name))
    if adds:
        instance.add_dynamic_partitions(SKU_PARTITIONS.name, adds)
    for key in deletes:
        instance.delete_dynamic_partition(SKU_PARTITIONS.name, key)
    return adds, deletes


def materialize(args: argparse.Namespace) -> int:
    """The ``materialize`` command."""
    settings = DemoSettings.from_env()
    defs = build_demo_definitions(settings)
    catalog = load_catalog(settings.catalog, HERO_MAPPING)
    for problem in catalog.unkeyed:
        print(f"skipped: {problem.message}", file=sys.stderr)
    instance = _instance()
    adds, deletes = sync_partitions(instance, catalog.partition_keys)
    print(f"catalog {settings.catalog.name}: {len(catalog.partition_keys)} SKUs (+{len(adds)} -{len(deletes)})")
    print(f"Flokan: {settings.base_url}" + (" (local emulator)" if settings.uses_emulator else ""))
    skus = args.sku or catalog.partition_keys
    unknown = sorted(set(skus) - set(catalog.partition_keys))
    if unknown:
        print(f"not in the catalog: {', '.join(unknown)}", file=sys.stderr)
        return 2
    assets = args.asset or list(IMAGE_ASSETS)
    progress = _Progress(total=len(skus) * len(assets))
    progress_logger.addHandler(progress)
    progress_logger.setLevel(logging.INFO)
    log_level = "DEBUG" if args.verbose else "ERROR"
    try:
        materialize_skus(defs, instance, assets, skus, partitions_name=SKU_PARTITIONS.name, batch_size=args.batch_size,
                         run_config={"force": True} if args.force else None, log_level=log_level)  # fmt: skip
        report = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            run_config=console_log_level(log_level), instance=instance,
            asset_selection=[dg.AssetKey("flokan_cost_report")], raise_on_error=False,
        )  # fmt: skip
    finally:
        progress_logger.removeHandler(progress)
    counts = {kind: sum(1 for _, o in progress.outcomes if o.kind == kind) for kind in ("made", "adopted", "reused", "failed")}
    missing = progress.total - progress.done  # SKUs whose run died before reporting them
    credits = sum(o.credits_spent for _, o in progress.outcomes)
    print(
        f"\nmade {counts['made']}, adopted {counts['adopted']}, reused {counts['reused']}, "
        f"failed {counts['failed'] + missing}; {credits} credits spent"
    )
    print(f"ledger: {ledger_path(settings.data_dir)}   images: {images_dir(settings.data_dir)}")
    if not report.success:
        print("the cost report failed", file=sys.stderr)
    return 0 if counts["failed"] == 0 and missing == 0 and report.success else 1


def reconcile_command(args: argparse.Namespace) -> int:
    """The ``reconcile`` command: one pass of the reconciliation sensor's code."""
    settings = DemoSettings.from_env()
    ledger = CreditLedger(str(ledger_path(settings.data_dir)))
    cursor_file = settings.data_dir / "reconcile_cursor.json"
    cursor = cursor_file.read_text() if cursor_file.exists() else None
    with FlokanClient(api_key=settings.api_key, base_url=settings.base_url) as client:
        result = reconcile(client, ledger, ImageStore(images_dir(settings.data_dir)), cursor)
    cursor_file.write_text(result.cursor.to_json())
    ledger.flush_spool()
    print(result.summary.describe())
    for adoption in result.adoptions:
        print(f"adopted {adoption.asset}/{adoption.sku}: job {adoption.record.job_id}")
    for failed in result.failed:
        print(f"failed {failed.asset}/{failed.sku}: {failed.error}")
    return 0 if result.summary.error is None else 1


def report(args: argparse.Namespace) -> int:
    """The ``report`` command."""
    database = ledger_path(data_dir_from_env())
    if not database.exists():
        print(f"no ledger at {database}: run `flokan-dagster materialize` first", file=sys.stderr)
        return 1
    # The JSON totals cover every SKU; the markdown report lists the top ones.
    summary: dict[str, Any] = cost_summary(CreditLedger(str(database)), top_skus=2**31 - 1 if args.json else 20)
    print(json.dumps(summary, indent=2, default=str) if args.json else render_markdown(summary))
    return 0


def stop_emulator(args: argparse.Namespace) -> int:
    """The ``stop-emulator`` command."""
    from flokan_dagster.local_emulator import stop_local_emulator

    print("stopped" if stop_local_emulator(data_dir_from_env()) else "no local emulator was running")
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(prog="flokan-dagster", description="Flokan product images through Dagster.")
    commands = parser.add_subparsers(dest="command", required=True)
    run = commands.add_parser("materialize", help="materialize image assets for catalog SKUs, then the cost report")
    run.add_argument("--asset", action="append", choices=IMAGE_ASSETS, help="image asset (repeatable; default: all)")
    run.add_argument("--sku", action="append", help="SKU (repeatable; default: every SKU of the catalog)")
    run.add_argument("--force", action="store_true", help="regenerate unchanged SKUs (pays again)")
    run.add_argument("--batch-size", type=int, default=25, help="SKUs per Dagster run (default 25)")
    run.add_argument("--verbose", action="store_true", help="show Dagster's own run log")
    run.set_defaults(handler=materialize)
    rep = commands.add_parser("report", help="the cost report from the ledger")
    rep.add_argument("--json", action="store_true", help="totals as JSON")
    rep.set_defaults(handler=report)
    rec = commands.add_parser("reconcile", help="one reconciliation pass over GET /jobs (the sensor's code)")
    rec.set_defaults(handler=reconcile_command)
    stop = commands.add_parser("stop-emulator", help="stop the local emulator")
    stop.set_defaults(handler=stop_emulator)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flokan-dagster`` console script."""
    args = build_parser().parse_args(argv)
    return int(args.handler(args))


if __name__ == "__main__":
    sys.exit(main())
