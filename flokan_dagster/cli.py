"""``flokan-dagster``: the headless commands, for cron and CI.

- ``materialize [--asset NAME]... [--sku SKU]... [--force] [--batch-size N] [--verbose]``: sync
  the catalog's SKUs into the Dagster instance, materialize the image assets for those SKUs
  through Dagster in batches (as a backfill from the UI would), then the cost report and the
  gallery. Exit 1 if any SKU failed.
- ``reconcile``: one reconciliation pass over ``GET /jobs`` (the sensor's code).
- ``report [--json]``: the cost report from the ledger.
- ``sql "SELECT ..." [--format table|csv|json]``: a read-only query of the ledger.
- ``gallery``: write the gallery (HTML page and contact sheet) and print where it is.
- ``stop-emulator``: stop the local emulator of the data directory.
- ``ledger doctor [--resolve FILE [--note TEXT]] [--ledger PATH]``: list the ledger's spool files
  that could not be read (quarantined) and what they may concern; resolve one once checked.

The Dagster instance is ``DAGSTER_HOME``'s when set, else the one ``make dev`` uses
(``$FLOKAN_DATA_DIR/dagster_home``); the command says which.

Example:
    $ flokan-dagster materialize --sku MUG-001 --sku TEE-001
"""

from __future__ import annotations

import argparse
import csv
import difflib
import json
import logging
import os
import sys
import traceback
from collections import Counter
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import dagster as dg

from flokan_dagster.api.client import FlokanClient
from flokan_dagster.assets import SKU_PARTITIONS_NAME, progress_logger
from flokan_dagster.batch import SkuOutcome
from flokan_dagster.catalog import CatalogFile, partition_changes
from flokan_dagster.demo import (
    CATALOG_ASSET,
    HERO_MAPPING,
    IMAGE_ASSETS,
    DemoSettings,
    build_demo_definitions,
    dagster_home_dir,
    data_dir_from_env,
    gallery_dir,
    images_dir,
    ledger_path,
    open_demo_ledger,
    open_demo_store,
    prepare_dagster_home,
)
from flokan_dagster.gallery import write_gallery
from flokan_dagster.ledger import CreditLedger, cost_summary, render_markdown
from flokan_dagster.reconcile import reconcile
from flokan_dagster.runs import console_log_level, materialize_skus

# Dagster's console logger at this level shows nothing: each SKU's failure is printed once, by us.
QUIET = "CRITICAL"


class UsageError(Exception):
    """A bad argument or missing prerequisite: printed as one line, exit code 2."""


class _Progress(logging.Handler):
    """Prints ``[n/N] asset SKU seconds credits outcome`` as each SKU finishes; keeps only counts."""

    def __init__(self, total: int) -> None:
        super().__init__()
        self.total = total
        self.done = 0
        self.counts: Counter[str] = Counter()
        self.credits = 0
        self.reported: Counter[str] = Counter()  # SKUs reported per asset (to spot a run that died)

    def emit(self, record: logging.LogRecord) -> None:
        """Print one finished SKU."""
        outcome: SkuOutcome | None = getattr(record, "flokan_outcome", None)
        if outcome is None:
            return
        asset = getattr(record, "flokan_asset", "?")
        self.done += 1
        self.counts[outcome.kind] += 1
        self.credits += outcome.credits_spent
        self.reported[asset] += 1
        state = outcome.kind if outcome.kind != "failed" else f"FAILED: {outcome.error}"
        width = len(str(self.total))
        try:
            print(f"[{self.done:>{width}}/{self.total}] {asset:<16} {outcome.sku:<14} {outcome.seconds:6.1f}s "
                  f"{outcome.credits_spent:5d} credits  {state}", flush=True)  # fmt: skip
        except BrokenPipeError:
            # `materialize | head`: the runs go on (stopping mid-batch would leave paid work unrecorded
            # in Dagster) and the exit code still tells; only the printing stops.
            _silence_stdout()


def instance_home() -> Path:
    """The Dagster home the CLI uses: ``DAGSTER_HOME``, else the demo's (the one ``make dev`` uses)."""
    home = os.environ.get("DAGSTER_HOME")
    return Path(home).resolve() if home else dagster_home_dir(data_dir_from_env())


def open_instance() -> dg.DagsterInstance:
    """The Dagster instance at :func:`instance_home`; the demo's is created (with a quiet ``dagster.yaml``) when new."""
    home = instance_home()
    if os.environ.get("DAGSTER_HOME"):
        print(f"Dagster instance: {home} (DAGSTER_HOME)")
        return dg.DagsterInstance.get()
    prepare_dagster_home(home)
    print(f"Dagster instance: {home} (the one `make dev` shows; set DAGSTER_HOME for another)")
    return dg.DagsterInstance.from_config(str(home))


def sync_partitions(instance: dg.DagsterInstance, catalog_keys: Sequence[str]) -> tuple[list[str], list[str]]:
    """Add the catalog's new SKUs to the dynamic partitions and delete the removed ones."""
    adds, deletes = partition_changes(catalog_keys, instance.get_dynamic_partitions(SKU_PARTITIONS_NAME))
    if adds:
        instance.add_dynamic_partitions(SKU_PARTITIONS_NAME, adds)
    for key in deletes:
        instance.delete_dynamic_partition(SKU_PARTITIONS_NAME, key)
    return adds, deletes


def check_skus(requested: Sequence[str], catalog_keys: Sequence[str]) -> list[str]:
    """The requested SKUs in the catalog's spelling; a UsageError naming each unknown one, with a suggestion.

    Example:
        >>> check_skus(["MUG-001"], ["MUG-001", "TEE-001"])
        ['MUG-001']
        >>> check_skus(["mug-001"], ["MUG-001", "TEE-001"])
        Traceback (most recent call last):
        ...
        flokan_dagster.cli.UsageError: not in the catalog: mug-001 (did you mean MUG-001?)
    """
    known = set(catalog_keys)
    by_folded: dict[str, str] = {}
    for key in catalog_keys:
        by_folded.setdefault(key.casefold(), key)
    problems = []
    for sku in dict.fromkeys(requested):
        if sku in known:
            continue
        guess = by_folded.get(sku.strip().casefold())
        if guess is None:
            close = difflib.get_close_matches(sku.casefold(), list(by_folded), n=1, cutoff=0.75)
            guess = by_folded[close[0]] if close else None
        problems.append(sku + (f" (did you mean {guess}?)" if guess else ""))
    if problems:
        raise UsageError(f"not in the catalog: {', '.join(problems)}")
    return list(dict.fromkeys(requested))


def materialize(args: argparse.Namespace) -> int:
    """The ``materialize`` command."""
    settings = DemoSettings.from_env()
    defs = build_demo_definitions(settings)
    # The SKUs only: each run validates its own rows (no 100,000 specs built here first).
    with CatalogFile.open(settings.catalog, HERO_MAPPING) as catalog_file:
        unkeyed, partition_keys = catalog_file.unkeyed, catalog_file.partition_keys
    for problem in unkeyed:
        print(f"skipped: {problem.message}", file=sys.stderr)
    skus = check_skus(args.sku, partition_keys) if args.sku else partition_keys
    instance = open_instance()
    adds, deletes = sync_partitions(instance, partition_keys)
    print(f"catalog {settings.catalog.name}: {len(partition_keys)} SKUs (+{len(adds)} -{len(deletes)})")
    print(f"Flokan: {settings.base_url}" + (" (local emulator)" if settings.uses_emulator else ""), flush=True)
    assets = list(dict.fromkeys(args.asset or IMAGE_ASSETS))
    progress = _Progress(total=len(skus) * len(assets))
    log_level = "DEBUG" if args.verbose else QUIET
    run_errors: list[str] = []

    def on_result(key: dg.AssetKey, sku_range: tuple[str, str], result: dg.ExecuteInProcessResult) -> None:
        run_errors.extend(_unreported_failures(key, sku_range, result, verbose=args.verbose))

    progress_logger.addHandler(progress)
    progress_logger.setLevel(logging.INFO)
    try:
        # The validated catalog snapshot first: the image assets' upstream, as in the lineage graph.
        defs.resolve_implicit_global_asset_job_def().execute_in_process(
            run_config=console_log_level(log_level), instance=instance,
            asset_selection=[dg.AssetKey(CATALOG_ASSET)], raise_on_error=False,
        )  # fmt: skip
        materialize_skus(defs, instance, assets, skus, partitions_name=SKU_PARTITIONS_NAME, batch_size=args.batch_size,
                         run_config={"force": True} if args.force else None, log_level=log_level,
                         on_result=on_result, keep_results=False)  # fmt: skip
        finale = defs.resolve_implicit_global_asset_job_def().execute_in_process(
            run_config=console_log_level(log_level), instance=instance,
            asset_selection=[dg.AssetKey("flokan_cost_report"), dg.AssetKey("flokan_gallery")], raise_on_error=False,
        )  # fmt: skip
    finally:
        progress_logger.removeHandler(progress)
    run_errors.extend(_unreported_failures(dg.AssetKey("flokan_cost_report"), None, finale, verbose=args.verbose))
    missing = progress.total - progress.done  # SKUs whose run died before reporting them
    counts = progress.counts
    print(
        f"\nmade {counts['made']}, adopted {counts['adopted']}, reused {counts['reused']}, "
        f"failed {counts['failed'] + missing}; {progress.credits} credits spent"
    )
    print(f"ledger: {ledger_path(settings.data_dir)}   images: {images_dir(settings.data_dir)}")
    if finale.success:
        print(f"gallery: {gallery_dir(settings.data_dir) / 'index.html'}")
    for error in run_errors:
        print(error, file=sys.stderr)
    if run_errors and not args.verbose:
        print("(--verbose shows Dagster's run log and stack traces)", file=sys.stderr)
    return 0 if counts["failed"] == 0 and missing == 0 and finale.success else 1


def _unreported_failures(
    key: dg.AssetKey, sku_range: tuple[str, str] | None, result: dg.ExecuteInProcessResult, *, verbose: bool
) -> list[str]:
    """One line per failed step whose failure is not already a per-SKU line (e.g. a run that died)."""
    errors = []
    for event in result.all_events:
        if event.event_type != dg.DagsterEventType.STEP_FAILURE:
            continue
        data = event.step_failure_data
        user = data.user_failure_data if data is not None else None
        if user is not None and "flokan/failed_skus" in (user.metadata or {}):
            continue  # each SKU's failure was printed as it happened
        error = data.error if data is not None else None
        where = event.step_key or key.to_user_string()
        if sku_range is not None:
            where += f" ({sku_range[0]}..{sku_range[1]})"
        reason = (user.description if user is not None and user.description else None) or _root_cause(error)
        errors.append(f"error: {where}: {reason}")
        if verbose and error is not None:
            errors.append(error.to_string())
    return errors


def _root_cause(error: Any) -> str:
    """The first line of the innermost cause of a Dagster error (what went wrong, not where)."""
    if error is None:
        return "failed"
    while getattr(error, "cause", None) is not None:
        error = error.cause
    lines = [line for line in str(error.message).strip().splitlines() if line.strip()]
    return lines[0] if lines else str(error.cls_name or "failed")


def reconcile_command(args: argparse.Namespace) -> int:
    """The ``reconcile`` command: one pass of the reconciliation sensor's code."""
    settings = DemoSettings.from_env()
    ledger = open_demo_ledger(settings.data_dir)
    cursor_file = settings.data_dir / "reconcile_cursor.json"
    cursor = cursor_file.read_text() if cursor_file.exists() else None
    with FlokanClient(api_key=settings.api_key, base_url=settings.base_url) as client:
        result = reconcile(client, ledger, open_demo_store(settings.data_dir), cursor)
    cursor_file.write_text(result.cursor.to_json())
    ledger.flush_spool()
    print(result.summary.describe())
    for adoption in result.adoptions:
        print(f"adopted {adoption.asset}/{adoption.sku}: job {adoption.record.job_id}")
    for failed in result.failed:
        print(f"failed {failed.asset}/{failed.sku}: {failed.error}")
    return 0 if result.summary.error is None else 1


def _existing_ledger() -> CreditLedger:
    if os.environ.get("FLOKAN_LEDGER_DATABASE"):  # the shared ledger (deploy/): always there
        return open_demo_ledger(data_dir_from_env())
    database = ledger_path(data_dir_from_env())
    if not database.exists():
        raise UsageError(f"no ledger at {database}: run `flokan-dagster materialize` (or `make demo`) first")
    return CreditLedger(str(database))


def report(args: argparse.Namespace) -> int:
    """The ``report`` command."""
    ledger = _existing_ledger()
    # The JSON totals cover every SKU; the markdown report lists the top ones.
    summary: dict[str, Any] = cost_summary(ledger, top_skus=2**31 - 1 if args.json else 20)
    print(json.dumps(summary, indent=2, default=str) if args.json else render_markdown(summary))
    return 0


def sql(args: argparse.Namespace) -> int:
    """The ``sql`` command: one query on a read-only connection to the ledger."""
    import duckdb

    ledger = _existing_ledger()

    def run(conn: duckdb.DuckDBPyConnection) -> tuple[list[str], list[tuple[Any, ...]]]:
        try:
            cursor = conn.execute(args.query)
        except duckdb.Error as exc:
            raise UsageError(f"the query failed: {str(exc).splitlines()[0]}") from None
        if cursor.description is None:
            return [], []
        return [column[0] for column in cursor.description], cursor.fetchall()

    columns, rows = ledger.read(run)
    if args.format == "json":
        print(json.dumps([dict(zip(columns, row, strict=True)) for row in rows], indent=2, default=str))
    elif args.format == "csv":
        writer = csv.writer(sys.stdout, lineterminator="\n")
        writer.writerow(columns)
        writer.writerows(rows)
    else:
        print(render_table(columns, rows))
    return 0


def render_table(columns: Sequence[str], rows: Sequence[Sequence[Any]]) -> str:
    """Rows as an aligned text table with a header and a row count.

    Example:
        >>> print(render_table(["sku", "credits"], [("MUG-001", 40)]))
        sku     | credits
        --------+--------
        MUG-001 |      40
        (1 row)
    """
    cells = [["" if value is None else str(value) for value in row] for row in rows]
    numeric = [all(isinstance(row[i], int | float) or row[i] is None for row in rows) and bool(rows) for i in range(len(columns))]
    widths = [max([len(name), *(len(row[i]) for row in cells)]) for i, name in enumerate(columns)]

    def line(values: Sequence[str]) -> str:
        return " | ".join(
            v.rjust(w) if numeric[i] else v.ljust(w) for i, (v, w) in enumerate(zip(values, widths, strict=True))
        ).rstrip()

    out = [line(list(columns)), "-+-".join("-" * w for w in widths)] if columns else []
    out.extend(line(row) for row in cells)
    out.append(f"({len(rows)} row{'' if len(rows) == 1 else 's'})")
    return "\n".join(out)


def gallery(args: argparse.Namespace) -> int:
    """The ``gallery`` command: write the gallery from the ledger and the image store, print its paths."""
    data_dir = data_dir_from_env()
    written = write_gallery(_existing_ledger(), gallery_dir(data_dir), IMAGE_ASSETS, open_demo_store(data_dir))
    print(f"{written.skus} SKUs, {written.images} images, {written.credits} credits; "
          f"{written.failing} SKU(s) whose latest attempt did not complete")  # fmt: skip
    print(f"gallery: {written.index}")
    print(f"contact sheet: {written.contact_sheet}")
    return 0


def stop_emulator(args: argparse.Namespace) -> int:
    """The ``stop-emulator`` command."""
    from flokan_dagster.local_emulator import stop_local_emulator

    print("stopped" if stop_local_emulator(data_dir_from_env()) else "no local emulator was running")
    return 0


def positive_int(text: str) -> int:
    """An argparse type: an integer of at least 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1, got {value}")
    return value


def build_parser() -> argparse.ArgumentParser:
    """The command-line parser."""
    parser = argparse.ArgumentParser(
        prog="flokan-dagster", description="Flokan product images through Dagster.",
        epilog="Data: $FLOKAN_DATA_DIR (default .data/). Dagster instance: $DAGSTER_HOME, else $FLOKAN_DATA_DIR/dagster_home.",
    )  # fmt: skip
    commands = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    run = commands.add_parser("materialize", help="materialize image assets for catalog SKUs, then the report and gallery")
    run.add_argument("--asset", action="append", choices=IMAGE_ASSETS, help="image asset (repeatable; default: all)")
    run.add_argument("--sku", action="append", help="SKU (repeatable; default: every SKU of the catalog)")
    run.add_argument("--force", action="store_true", help="regenerate unchanged SKUs (pays again)")
    run.add_argument("--batch-size", type=positive_int, default=25, metavar="N", help="SKUs per Dagster run (default 25)")
    run.add_argument("--verbose", action="store_true", help="show Dagster's own run log and stack traces")
    run.set_defaults(handler=materialize)
    rec = commands.add_parser("reconcile", help="one reconciliation pass over GET /jobs (the sensor's code)")
    rec.set_defaults(handler=reconcile_command)
    rep = commands.add_parser("report", help="the cost report from the ledger")
    rep.add_argument("--json", action="store_true", help="totals as JSON")
    rep.set_defaults(handler=report)
    query = commands.add_parser("sql", help="run a read-only SQL query on the ledger (DuckDB)",
                                description="Tables: attempts, attempt_events. Views: credits_by_day, credits_by_sku, "
                                            "credits_by_asset, credits_by_tier_provider, estimate_vs_actual, "
                                            "failed_and_unknown_attempts, ledger_costs.")  # fmt: skip
    query.add_argument("query", help='e.g. "SELECT * FROM credits_by_sku ORDER BY credits DESC LIMIT 10"')
    query.add_argument("--format", choices=("table", "csv", "json"), default="table", help="output format (default table)")
    query.set_defaults(handler=sql)
    gal = commands.add_parser("gallery", help="write the gallery (HTML page and contact sheet) and print its path")
    gal.set_defaults(handler=gallery)
    stop = commands.add_parser("stop-emulator", help="stop the local emulator")
    stop.set_defaults(handler=stop_emulator)
    led = commands.add_parser("ledger", help="ledger maintenance (doctor, compact)")
    maintenance = led.add_subparsers(dest="ledger_command", required=True, metavar="SUBCOMMAND")
    doctor = maintenance.add_parser(
        "doctor", help="show spool files that could not be read and the SKUs they block; --resolve one once checked"
    )
    doctor.add_argument("--resolve", metavar="FILE", help="mark this quarantined file resolved (it is kept, in resolved/)")
    doctor.add_argument("--note", default="", help="what you checked, kept beside the resolved file")
    doctor.add_argument("--ledger", type=Path, metavar="PATH", help="the ledger database (default: the data directory's)")
    doctor.set_defaults(handler=ledger_doctor)
    compact = maintenance.add_parser(
        "compact", help="rewrite the ledger file's attempts in (asset, SKU) order, so runs read only their batch's rows"
    )
    compact.add_argument("--force", action="store_true", help="rewrite even when few attempts were written since the last time")
    compact.add_argument("--ledger", type=Path, metavar="PATH", help="the ledger database (default: the data directory's)")
    compact.set_defaults(handler=ledger_compact)
    return parser


def ledger_doctor(args: argparse.Namespace) -> int:
    """The ``ledger doctor`` command: exit 0 when nothing is quarantined (or after resolving), 1 otherwise."""
    database = args.ledger or ledger_path(data_dir_from_env())
    ledger = CreditLedger(str(database))
    if args.resolve:
        try:
            moved = ledger.resolve_quarantined(args.resolve, args.note)
        except FileNotFoundError as exc:
            raise UsageError(str(exc).strip('"')) from None
        print(f"resolved {moved.name}: kept at {moved}")
        print("Its SKUs may be generated again. Resolving says you checked that the attempt it may have")
        print("recorded is accounted for: its job is in the ledger (`flokan-dagster reconcile` records")
        print("every job Flokan charged), or it was never sent. The next run reuses or settles what the")
        print("ledger holds for those SKUs before paying.")
        return 0
    damaged = ledger.quarantined_files()
    print(f"ledger {database}: {ledger.spooled_count()} event(s) waiting in the spool, {len(damaged)} quarantined")
    for item in damaged:
        print(f"  {item.describe()}")
    if damaged:
        print("Spending on the SKUs each file may concern waits until it is resolved. Check those SKUs' jobs")
        print("(`flokan-dagster reconcile`), then: flokan-dagster ledger doctor --resolve FILE")
    return 1 if damaged else 0


def ledger_compact(args: argparse.Namespace) -> int:
    """The ``ledger compact`` command: compact the ledger file when due (or ``--force``); exit 0."""
    database = args.ledger or ledger_path(data_dir_from_env())
    if not Path(database).exists():
        raise UsageError(f"no ledger at {database}; pass --ledger PATH or set FLOKAN_DATA_DIR")
    # A compaction holds the ledger for seconds per million attempts: wait for running writers that long too.
    done = CreditLedger(str(database), lock_timeout_s=600).compact(force=args.force)
    print(f"ledger {database}: {done.describe()}")
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``flokan-dagster`` console script.

    Exit codes: 0 done, 1 some SKU or step failed, 2 bad arguments or a problem to fix first.
    An error is one line naming what to fix; ``--verbose`` adds the stack trace.
    """
    args = build_parser().parse_args(argv)
    verbose = bool(getattr(args, "verbose", False))
    try:
        with _quiet_dagster():
            return int(args.handler(args))
    except BrokenPipeError:
        # The reader went away (`flokan-dagster report | head`): stop quietly, as Unix tools do.
        _silence_stdout()
        return 0
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UsageError as exc:
        print(f"flokan-dagster: {exc}", file=sys.stderr)
        return 2
    except Exception as exc:  # one clear line instead of a traceback; --verbose keeps the trace
        if verbose:
            traceback.print_exc()
        print(f"flokan-dagster: {type(exc).__name__}: {exc}", file=sys.stderr)
        if not verbose and "verbose" in vars(args):
            print("(--verbose shows the stack trace)", file=sys.stderr)
        return 2


class _quiet_dagster:
    """Keep Dagster's instance banner ("No dagster instance configuration file ...") out of the output."""

    def __enter__(self) -> None:
        self._filter = _DropMessages("No dagster instance configuration file")
        logging.getLogger("dagster").addFilter(self._filter)

    def __exit__(self, *exc: object) -> None:
        logging.getLogger("dagster").removeFilter(self._filter)


class _DropMessages(logging.Filter):
    def __init__(self, prefix: str) -> None:
        super().__init__()
        self.prefix = prefix

    def filter(self, record: logging.LogRecord) -> bool:
        return not str(record.msg).startswith(self.prefix)


def _silence_stdout() -> None:
    # Python flushes stdout at exit; pointing it at /dev/null keeps that flush from raising again.
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
    except (OSError, ValueError):
        pass


if __name__ == "__main__":
    sys.exit(main())
