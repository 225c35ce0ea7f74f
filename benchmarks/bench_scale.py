"""Benchmark: per-run and per-tick cost at 1,000 to 100,000 SKUs and 0 to 10,000,000 ledger rows.

A grid of catalog sizes by ledger sizes, each cell the wall time of what a 25-SKU run does before
it spends anything: read the catalog (``CatalogFile.open`` + ``catalog_for``) and plan the batch
(``plan_batch``: its ledger history, reuse checks, refusals). Then the ticks at 100,000 SKUs: the
catalog-sync sensor adding every SKU as partitions (each tick evaluated, then its partition
requests applied the way Dagster's daemon does, key by key), the refresh schedule over a
1,000,000-row ledger, the cost report over 10,000,000 rows, and the peak memory of planning in a
fresh process.

Ledgers are generated with SQL (no API calls) and cached with the catalogs under
``benchmarks/out/``; the first run builds them (the 10,000,000-row one takes a few minutes). The
grid reads each ledger as maintenance leaves it at its worst: compacted (``flokan-dagster ledger
compact``) with the last 5 % of its attempts written since, unsorted. The target cell is also
measured on a ledger never compacted, and with 25 SKUs spread over the catalog instead of
neighbours; the compaction itself is timed at 100,000 and 1,000,000 attempts.
Catalog copies (``catalog_cache``) go to the run's temporary directory: the first open of each
catalog is timed apart, and the grid's warm-up call writes the copy later runs read, as the first
run of a backfill does. The catalog-sync figure is the sensor's tick evaluation; Dagster's daemon
then checks every requested key on its own (estimated from a sample, printed apart).

Usage:
    python benchmarks/bench_scale.py [--no-profile] [--quick]

It prints pyinstrument profiles (if installed) of the 100,000-SKU / 1,000,000-row planning, of a
catalog-sync tick at 10,000 SKUs and of a refresh-schedule tick unless ``--no-profile``; ``--quick`` leaves out the 10,000,000-row
ledger.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import dagster as dg  # noqa: E402
import duckdb  # noqa: E402
from results import result  # noqa: E402

from flokan_dagster import SKU_PARTITIONS, CatalogMapping, FlokanLedgerResource  # noqa: E402
from flokan_dagster.catalog import CatalogFile  # noqa: E402
from flokan_dagster.image_store import ImageStore  # noqa: E402
from flokan_dagster.ledger import CreditLedger, cost_summary  # noqa: E402
from flokan_dagster.ledger.checkpoints import wal_bytes, wal_limit, wal_path  # noqa: E402
from flokan_dagster.ledger.compaction import DUE_FRACTION  # noqa: E402
from flokan_dagster.ledger.records import COLUMNS  # noqa: E402
from flokan_dagster.ledger.schema import ensure_schema  # noqa: E402
from flokan_dagster.planning import plan_batch  # noqa: E402
from flokan_dagster.sensors import build_flokan_catalog_sensor, build_flokan_refresh_schedule  # noqa: E402

OUT = Path(__file__).resolve().parent / "out"
ASSET = "hero_images"
CATALOG_SIZES = (1_000, 10_000, 100_000)
LEDGER_SIZES = (0, 100_000, 1_000_000, 10_000_000)
BATCH = 25
MAPPING = CatalogMapping(prompt_template="Studio photo of a {color} {material} {title}")

TARGET_PLAN_S, TARGET_PLAN_RATIO = 0.3, 2.0
TARGET_SYNC_TICKS, TARGET_TICK_S = 3, 40.0
TARGET_REFRESH_S = 10.0
TARGET_REPORT_S = 1.0
TARGET_MEMORY_MB = 300

# Attempts spread over 100,000 SKUs in time order (as a ledger grows), a tenth for another asset.
_GENERATED_COLUMNS = [c for c in COLUMNS if c not in ("server_sent_at", "clock_error_ms")]
_GENERATE = f"""
INSERT INTO attempts ({", ".join(_GENERATED_COLUMNS)})
SELECT
    uuid()::VARCHAR, 'run-' || (i // 25), CASE WHEN i % 10 = 0 THEN 'lifestyle_images' ELSE 'hero_images' END,
    'SKU-' || lpad(((i * 7919) % 100000)::VARCHAR, 6, '0'), md5(i::VARCHAR),
    'Studio photo of product ' || (i % 1000), ['pro', 'standard', 'creative'][1 + i % 3], 'platform',
    NULL, NULL, NULL, NULL, NULL, 'job-' || i, CASE WHEN status IN ('completed', 'failed') THEN status END, 'system',
    status, CASE WHEN status = 'completed' THEN 20 ELSE 0 END, 25, 5000 + i % 40000,
    'https://images.flokan.com/u/processed/job-' || i || '.png', 'img-' || i,
    '/data/images/hero/' || i || '.png', md5('sha' || i), NULL,
    CASE WHEN i % 97 = 0 THEN 'external' ELSE 'dagster' END,
    ts, ts, ts + INTERVAL 20 SECOND, ts, ts + INTERVAL 21 SECOND, 1
FROM (
    SELECT i, TIMESTAMP '2024-01-01' + to_seconds(i * 3) AS ts,
           CASE WHEN i % 50 = 0 THEN 'failed' WHEN i % 211 = 0 THEN 'unknown' ELSE 'completed' END AS status
    FROM range($start, $stop) AS t(i)
)
"""


def catalog_file(skus: int) -> Path:
    """The cached CSV catalog of ``skus`` SKUs (``SKU-000000`` ...)."""
    path = OUT / f"catalog_{skus}.csv"
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        with duckdb.connect() as conn:
            conn.execute(
                f"""COPY (SELECT 'SKU-' || lpad(i::VARCHAR, 6, '0') AS sku, 'product ' || i AS title,
                                 ['red', 'navy', 'sage green'][1 + i % 3] AS color, ['ceramic', 'linen', 'oak'][1 + i % 3] AS material
                          FROM range({skus}) t(i)) TO '{path}' (HEADER, DELIMITER ',')"""
            )
    return path


_MIGRATED: set[Path] = set()


def cached_ledger(path: Path, build: Callable[[Path], str]) -> Path:
    """``path``, built first if missing (``build(partial)`` fills a file renamed into place and
    returns what to print of it); a cached file from an older schema is brought up to date as a
    real ledger is (``ensure_schema``, the first time this process uses it)."""
    if not path.exists():
        OUT.mkdir(parents=True, exist_ok=True)
        started = time.perf_counter()
        partial = path.with_suffix(".building")
        partial.unlink(missing_ok=True)
        said = build(partial)
        partial.rename(path)
        print(f"  (built {path.name} in {time.perf_counter() - started:.0f} s{said})", flush=True)
    elif path not in _MIGRATED:
        with duckdb.connect(str(path)) as conn:
            conn.execute("SET enable_progress_bar = false")
            ensure_schema(conn)
    _MIGRATED.add(path)
    return path


def _generate(path: Path, start: int, stop: int) -> None:
    """Append generated attempts ``start`` to ``stop`` to the ledger file ``path`` (schema ensured)."""
    with duckdb.connect(str(path)) as conn:
        conn.execute("SET enable_progress_bar = false")
        ensure_schema(conn)
        if stop > start:
            conn.execute(_GENERATE, {"start": start, "stop": stop})
        conn.execute("CHECKPOINT")


def ledger_file(rows: int) -> Path:
    """The cached ledger of ``rows`` generated attempts (built with SQL, in the ledger's own schema)."""

    def build(partial: Path) -> str:
        _generate(partial, 0, rows)
        return ""

    return cached_ledger(OUT / f"ledger_{rows}.duckdb", build)


def maintained_file(rows: int) -> Path:
    """The cached ledger of ``rows`` generated attempts as maintenance leaves it at its worst.

    The same attempts as :func:`ledger_file`: the first 95 % written and then compacted
    (``CreditLedger.compact``), the last 5 % written since, unsorted: the most a ledger holds
    when a compaction runs whenever one is due (``compaction.DUE_FRACTION``; the nightly schedule
    does so while less than 5 % is written a day).
    """
    if rows == 0:
        return ledger_file(0)

    def build(partial: Path) -> str:
        settled = rows - int(rows * DUE_FRACTION)
        _generate(partial, 0, settled)
        compacted = CreditLedger(str(partial), lock_timeout_s=600).compact(force=True)
        _generate(partial, settled, rows)
        return f"; its compaction: {compacted.describe()}"

    return cached_ledger(OUT / f"ledger_{rows}_maintained_{DUE_FRACTION:.0%}.duckdb", build)


def working_copy(rows: int, work: Path) -> str:
    """The cached maintained ledger itself: the benchmark's batches are valid SKUs, so planning writes nothing.

    (Copying the 10,000,000-row file for each case would take longer than the cases.)
    """
    return str(maintained_file(rows))


@contextmanager
def scratch_copy(source: Path, copy: Path) -> Iterator[Path]:
    """A copy of the ledger file ``source`` at ``copy`` for the block; it and its WAL removed after."""
    shutil.copyfile(source, copy)
    try:
        yield copy
    finally:
        for leftover in (copy, Path(wal_path(str(copy)))):
            leftover.unlink(missing_ok=True)


def live_planning(work: Path, catalog: Path, store: ImageStore) -> tuple[float, int]:
    """(seconds, WAL bytes): the target cell on a copy of the maintained 1,000,000-row ledger whose
    last writes wait in the WAL, about half its limit, as between two checkpoints of a live ledger."""
    with scratch_copy(maintained_file(1_000_000), work / "live_1000000.duckdb") as copy:
        ledger = CreditLedger(str(copy))
        n = 0
        while wal_bytes(str(copy)) < wal_limit(str(copy)) // 2:
            attempt = ledger.begin_attempt(asset=ASSET, sku=f"SKU-{n:06d}", prompt="p", model_tier="pro", estimated_credits=20)
            ledger.finish_attempt(attempt, status="completed", job_id=f"live-{n}", credits_consumed=20)
            n += 1
        return timed(5, lambda: read_and_plan(catalog, ledger, store, batch_of(100_000))), wal_bytes(str(copy))


def compaction_seconds(rows: int, work: Path) -> float:
    """Seconds a compaction holds a copy of the never-compacted ``rows``-attempt ledger."""
    with scratch_copy(ledger_file(rows), work / f"compact_{rows}.duckdb") as copy:
        return CreditLedger(str(copy), lock_timeout_s=600).compact(force=True).seconds


def batch_of(skus: int) -> list[str]:
    """25 SKUs from the middle of the catalog."""
    start = skus // 2
    return [f"SKU-{i:06d}" for i in range(start, start + BATCH)]


def read_and_plan(catalog: Path, ledger: CreditLedger, store: ImageStore, skus: list[str]) -> int:
    """What a run does before spending: read its catalog rows, plan its batch. Returns the tasks planned."""
    with CatalogFile.open(catalog, MAPPING) as opened:
        table = opened.catalog_for(skus)
    plan = plan_batch(skus, table, ledger=ledger, store=store, asset=ASSET, run_id="bench-run")
    return len(plan.tasks)


def timed(runs: int, fn: Callable[[], object]) -> float:
    """Median wall time of ``runs`` calls (after one warm-up call)."""
    fn()
    times = []
    for _ in range(runs):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return statistics.median(times)


def planning_grid(work: Path, ledger_sizes: tuple[int, ...]) -> dict[tuple[int, int], float]:
    """Seconds to read the catalog and plan a 25-SKU run, per (catalog SKUs, ledger rows)."""
    grid: dict[tuple[int, int], float] = {}
    store = ImageStore(work / "images")
    for rows in ledger_sizes:
        ledger = CreditLedger(working_copy(rows, work))
        for skus in CATALOG_SIZES:
            catalog = catalog_file(skus)
            grid[skus, rows] = timed(5, lambda: read_and_plan(catalog, ledger, store, batch_of(skus)))  # noqa: B023 (called here, in this iteration)
    return grid


def print_grid(grid: dict[tuple[int, int], float], ledger_sizes: tuple[int, ...]) -> None:
    print(f"catalog read + planning of a {BATCH}-SKU run (median of 5, seconds)")
    print(f"{'catalog SKUs':>14} | " + " | ".join(f"{rows:>11,} rows" for rows in ledger_sizes))
    print("-" * 16 + "|" + "|".join("-" * 18 for _ in ledger_sizes))
    for skus in CATALOG_SIZES:
        print(f"{skus:>14,} | " + " | ".join(f"{grid[skus, rows]:>14.3f} s " for rows in ledger_sizes))


def planning_memory(work: Path) -> float:
    """Peak RSS (MB) of a fresh process that reads the 100,000-SKU catalog and plans against 1,000,000 rows."""
    database = working_copy(1_000_000, work)
    code = (
        "import resource, sys; sys.path.insert(0, 'benchmarks'); import bench_scale as b; from pathlib import Path;"
        "from flokan_dagster.ledger import CreditLedger; from flokan_dagster.image_store import ImageStore;"
        f"b.read_and_plan(b.catalog_file(100_000), CreditLedger({database!r}), ImageStore(Path({str(work / 'images')!r})),"
        " b.batch_of(100_000));"
        # VmHWM is this process's own peak: ru_maxrss also keeps the peak of the parent it was
        # forked from (Linux carries it across exec), which read 591 MB here after the grid.
        "status = open('/proc/self/status').read() if sys.platform == 'linux' else '';"
        "hwm = [int(line.split()[1]) for line in status.splitlines() if line.startswith('VmHWM:')];"
        "print(hwm[0] / 1024 if hwm else resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024)"
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                          cwd=Path(__file__).resolve().parents[1])  # fmt: skip
    return float(done.stdout.strip().splitlines()[-1])


DAEMON_SAMPLE = 1_000


def apply_like_the_daemon(instance: dg.DagsterInstance, requests: list[object]) -> tuple[float, float]:
    """Apply a tick's partition requests; return (seconds taken, seconds Dagster's sensor daemon would take).

    The daemon checks every key with ``has_dynamic_partition`` before one bulk add (a delete is
    one call per key). That is done here for the first ``DAEMON_SAMPLE`` keys of each request
    and timed; the rest of the keys are checked with one read, and the daemon's time is
    estimated from the sampled per-key cost (at 100,000 keys the real loop alone takes minutes).
    """
    started = time.perf_counter()
    per_key: list[float] = []
    estimate = 0.0
    for request in requests:
        if not isinstance(request, (dg.AddDynamicPartitionsRequest, dg.DeleteDynamicPartitionsRequest)):
            continue
        name, keys = request.partitions_def_name, list(request.partition_keys)
        sampled, rest = keys[:DAEMON_SAMPLE], keys[DAEMON_SAMPLE:]
        checked = time.perf_counter()
        present = {k for k in sampled if instance.has_dynamic_partition(name, k)}
        per_key.append((time.perf_counter() - checked) / max(1, len(sampled)))
        if rest:
            existing = set(instance.get_dynamic_partitions(name))
            present |= {k for k in rest if k in existing}
        estimate += per_key[-1] * len(keys)
        changed = time.perf_counter()
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            new = [k for k in keys if k not in present]
            if new:
                instance.add_dynamic_partitions(name, new)
        else:
            for key in keys:
                if key in present:
                    instance.delete_dynamic_partition(name, key)
        estimate += time.perf_counter() - changed
    return time.perf_counter() - started, estimate


def catalog_sync(work: Path, skus: int = 100_000, profile: bool = False) -> list[tuple[float, float, int, int]]:
    """Ticks of the catalog-sync sensor until ``skus`` new SKUs are partitions: (evaluate s, daemon apply s (estimated), added, runs).

    With ``profile``, only the first tick, under pyinstrument.
    """
    catalog = catalog_file(skus)
    empty = work / f"sync_ledger_{skus}.duckdb"
    shutil.copyfile(ledger_file(0), empty)
    resources = {"flokan_ledger": FlokanLedgerResource(database=str(empty))}
    sensor = build_flokan_catalog_sensor([ASSET], catalog=catalog, mapping=MAPPING)
    ticks: list[tuple[float, float, int, int]] = []
    home = work / f"dagster_sync_{skus}_{int(profile)}"
    home.mkdir()
    with dg.instance_for_test(temp_dir=str(home)) as instance:
        cursor = None
        while len(instance.get_dynamic_partitions(SKU_PARTITIONS.name)) < skus and len(ticks) < 10:
            before = len(instance.get_dynamic_partitions(SKU_PARTITIONS.name))
            with (
                dg.build_sensor_context(instance=instance, cursor=cursor, resources=resources) as context,
                _profiler(profile, f"catalog-sync sensor tick evaluation, {skus:,} new SKUs"),
            ):  # fmt: skip
                started = time.perf_counter()
                evaluated = sensor(context)
                evaluate_s = time.perf_counter() - started
            if profile:
                return [(evaluate_s, 0.0, 0, len(evaluated.run_requests or []))]
            taken_s, daemon_s = apply_like_the_daemon(instance, list(evaluated.dynamic_partitions_requests or []))
            cursor = evaluated.cursor
            added = len(instance.get_dynamic_partitions(SKU_PARTITIONS.name)) - before
            ticks.append((evaluate_s, daemon_s, added, len(evaluated.run_requests or [])))
            print(f"  sync tick {len(ticks)}: evaluated in {evaluate_s:.1f} s; {added:,} partitions added "
                  f"(Dagster's daemon: ~{daemon_s:.0f} s estimated from {DAEMON_SAMPLE:,} keys a request checked key by key; "
                  f"{taken_s:.1f} s here); {len(evaluated.run_requests or [])} run(s) requested", flush=True)  # fmt: skip
    return ticks


def refresh_tick(work: Path, profile: bool) -> tuple[float, int]:
    """One refresh-schedule evaluation over 100,000 partitions and a 1,000,000-row ledger: (seconds, runs)."""
    resources = {"flokan_ledger": FlokanLedgerResource(database=working_copy(1_000_000, work))}
    schedule = build_flokan_refresh_schedule([ASSET], catalog=catalog_file(100_000), mapping=MAPPING)
    (work / "dagster_refresh").mkdir()
    with dg.instance_for_test(temp_dir=str(work / "dagster_refresh")) as instance:
        keys = [f"SKU-{i:06d}" for i in range(100_000)]
        for start in range(0, len(keys), 10_000):
            instance.add_dynamic_partitions(SKU_PARTITIONS.name, keys[start : start + 10_000])
        with (
            dg.build_schedule_context(instance=instance, resources=resources,
                                      scheduled_execution_time=datetime.now(timezone.utc)) as context,
            _profiler(profile, "refresh schedule tick, 100,000 SKUs, 1,000,000 rows"),
        ):  # fmt: skip
            started = time.perf_counter()
            requests = schedule(context)
            seconds = time.perf_counter() - started
    return seconds, len(requests) if isinstance(requests, list) else 0


class _profiler:
    """pyinstrument around a block when asked (``--profile``), printing the slow calls."""

    def __init__(self, enabled: bool, title: str) -> None:
        self.enabled, self.title, self.profiler = enabled, title, None

    def __enter__(self) -> None:
        if self.enabled:
            try:
                from pyinstrument import Profiler
            except ImportError:
                print(f"(no profile of {self.title}: pip install pyinstrument)")
                return

            self.profiler = Profiler(interval=0.001)
            self.profiler.start()

    def __exit__(self, *exc: object) -> None:
        if self.profiler is not None:
            self.profiler.stop()
            print(f"\n--- profile: {self.title}")
            print(self.profiler.output_text(unicode=False, color=False, show_all=False))


def main() -> None:
    """Run the grid and the tick benchmarks; print the table and the figures beside their targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--no-profile", dest="profile", action="store_false",
                        help="leave out the pyinstrument profiles of the 100k/1M cases")  # fmt: skip
    parser.add_argument("--quick", action="store_true", help="leave out the 10,000,000-row ledger")
    args = parser.parse_args()
    ledger_sizes = LEDGER_SIZES[:-1] if args.quick else LEDGER_SIZES
    print(f"load at start: {_uptime()}", flush=True)
    print("preparing catalogs and ledgers in benchmarks/out/ ...", flush=True)
    for skus in CATALOG_SIZES:
        catalog_file(skus)
    for rows in ledger_sizes:
        ledger_file(rows)
        maintained_file(rows)
    with tempfile.TemporaryDirectory(prefix="bench-scale-") as tmp:
        work = Path(tmp)
        # Catalog copies (catalog_cache) in this run's directory: the first open of each catalog
        # (the grid's warm-up call) writes its copy, as a backfill's first run does.
        os.environ["FLOKAN_CATALOG_CACHE"] = str(work / "catalog-cache")
        cold = first_open(catalog_file(100_000))
        print(f"first open of the 100,000-SKU catalog (file parsed, keyed, copy written): {cold:.3f} s")
        grid = planning_grid(work, ledger_sizes)
        print_grid(grid, ledger_sizes)
        if args.profile:
            ledger = CreditLedger(working_copy(1_000_000, work))
            store = ImageStore(work / "images")
            with _profiler(True, "catalog read + planning, 100,000 SKUs, 1,000,000 rows (10 runs)"):
                for _ in range(10):
                    read_and_plan(catalog_file(100_000), ledger, store, batch_of(100_000))
        big, small = grid[100_000, 1_000_000], grid[1_000, 0]
        ratio = big / small
        result(f"catalog read + planning of a {BATCH}-SKU run, 100,000 SKUs, 1,000,000 rows",
               f"{big:.3f} s ({ratio:.1f}x the {small:.3f} s at 1,000 SKUs, empty ledger)",
               f"< {TARGET_PLAN_S} s and < {TARGET_PLAN_RATIO:.0f}x", big < TARGET_PLAN_S and ratio < TARGET_PLAN_RATIO)  # fmt: skip
        if 10_000_000 in ledger_sizes:
            result(f"catalog read + planning of a {BATCH}-SKU run, 100,000 SKUs, 10,000,000 rows",
                   f"{grid[100_000, 10_000_000]:.3f} s")  # fmt: skip
        store = ImageStore(work / "images")
        catalog = catalog_file(100_000)
        never = CreditLedger(str(ledger_file(1_000_000)))
        unkept = timed(5, lambda: read_and_plan(catalog, never, store, batch_of(100_000)))
        result("the same on a ledger never compacted (1,000,000 rows in write order)",
               f"{unkept:.3f} s ({unkept / small:.1f}x)")  # fmt: skip
        spread = [f"SKU-{i:06d}" for i in sorted(random.Random(7).sample(range(100_000), BATCH))]
        kept = CreditLedger(working_copy(1_000_000, work))
        for label, ledger in (("maintained", kept), ("never compacted", never)):
            seconds = timed(5, lambda: read_and_plan(catalog, ledger, store, spread))  # noqa: B023 (called here, in this iteration)
            result(f"{BATCH} SKUs spread over the catalog, 100,000 SKUs, 1,000,000 rows, {label}",
                   f"{seconds:.3f} s ({seconds / small:.1f}x)")  # fmt: skip
        for rows in (100_000, 1_000_000):
            result(f"compaction of a never-compacted ledger of {rows:,} attempts (ledger held)",
                   f"{compaction_seconds(rows, work):.1f} s")  # fmt: skip
        live, wal = live_planning(work, catalog, store)
        result("the target cell on a live ledger between checkpoints (readers replay its WAL)",
               f"{live:.3f} s ({live / small:.1f}x) with {wal / 1024:.0f} KiB of WAL")  # fmt: skip
        memory = planning_memory(work)
        print(f"peak memory of a fresh process planning at 100,000 SKUs / 1,000,000 rows: {memory:.0f} MB")
        result("peak memory of planning, 100,000 SKUs, 1,000,000 rows", f"{memory:.0f} MB", f"< {TARGET_MEMORY_MB} MB",
               memory < TARGET_MEMORY_MB)  # fmt: skip

        if args.profile:
            catalog_sync(work, 10_000, profile=True)
        print("\ncatalog-sync sensor, 100,000 new SKUs, empty partitions:")
        ticks = catalog_sync(work)
        slowest = max(e for e, _, _, _ in ticks)
        result("catalog-sync sensor adding 100,000 new SKUs (tick evaluation)",
               f"{len(ticks)} tick(s), slowest evaluated in {slowest:.1f} s",
               f"<= {TARGET_SYNC_TICKS} ticks, each < {TARGET_TICK_S:.0f} s",
               len(ticks) <= TARGET_SYNC_TICKS and slowest < TARGET_TICK_S)  # fmt: skip
        result("catalog-sync: Dagster's daemon applying a tick's partitions (estimated, not ours)",
               f"slowest ~{max(a for _, a, _, _ in ticks):.0f} s for {max(n for _, _, n, _ in ticks):,} keys")  # fmt: skip

        seconds, runs = refresh_tick(work, args.profile)
        print(f"\nrefresh schedule tick over 100,000 SKUs and 1,000,000 rows: {seconds:.1f} s, {runs} run(s) requested")
        result("refresh schedule tick over 100,000 SKUs, 1,000,000 rows", f"{seconds:.1f} s", f"< {TARGET_REFRESH_S:.0f} s",
               seconds < TARGET_REFRESH_S)  # fmt: skip

        report_rows = max(ledger_sizes)
        ledger = CreditLedger(working_copy(report_rows, work))
        report_s = timed(3, lambda: cost_summary(ledger))
        summary = cost_summary(ledger)
        print(f"\ncost report over {report_rows:,} rows: {report_s:.3f} s median "
              f"({summary['attempts']:,} attempts, {summary['credits']:,} credits)")  # fmt: skip
        result(f"cost report over {report_rows:,} ledger rows", f"{report_s:.3f} s", f"< {TARGET_REPORT_S:.0f} s",
               report_s < TARGET_REPORT_S)  # fmt: skip
        print(json.dumps({f"{k[0]}x{k[1]}": round(v, 4) for k, v in grid.items()}))
        print(f"load at end: {_uptime()}")


def first_open(catalog: Path) -> float:
    """Seconds to open ``catalog`` with no cached copy yet and read a batch (the copy is written)."""
    started = time.perf_counter()
    with CatalogFile.open(catalog, MAPPING) as opened:
        opened.catalog_for(batch_of(100_000))
    return time.perf_counter() - started


def _uptime() -> str:
    """The machine's load (``uptime``), printed beside the figures."""
    try:
        return subprocess.run(["uptime"], capture_output=True, text=True, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "load unknown (no uptime)"


if __name__ == "__main__":
    main()
