"""Benchmark: the shared mode's costs against the embedded defaults.

- Per-attempt write latency (``begin_attempt`` + ``finish_attempt``) on each ledger backend (a
  DuckDB file; PostgreSQL attached by DuckDB), one writer alone and 8 writer processes at once,
  and one writer on a ledger that already holds 200,000 attempts and their journal (a write must
  not grow with the ledger). On that DuckDB file, the read-side price of the deferred checkpoint
  (``ledger/checkpoints.py``): a read with no WAL against one with the WAL near its limit.
- The cost report (``cost_summary``) over 1,000,000 ledger rows on each backend.
- The image store: seconds per image uploaded to an S3-compatible server (moto) against a write
  to a local directory.

Starts its own PostgreSQL and moto server with the CI scripts unless ``FLOKAN_TEST_PG_DSN`` /
``FLOKAN_TEST_S3_ENDPOINT`` are set.

Usage:
    python benchmarks/bench_shared.py [--rows 1000000] [--attempts 40] [--images 20] [--grown 200000]
"""

from __future__ import annotations

import argparse
import io
import json
import os
import random
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator
from contextlib import ExitStack, contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import duckdb  # noqa: E402
from bench_ledger import _GENERATE  # noqa: E402
from PIL import Image  # noqa: E402
from results import result  # noqa: E402

from flokan_dagster.image_store import ImageStore  # noqa: E402
from flokan_dagster.ledger import CreditLedger, cost_summary  # noqa: E402
from flokan_dagster.ledger.backend import open_database, postgres_extension_path  # noqa: E402
from flokan_dagster.ledger.checkpoints import wal_bytes, wal_limit  # noqa: E402
from flokan_dagster.ledger.schema import ensure_schema  # noqa: E402
from tests.servers import fresh_database, script_env  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
WRITE_TARGET_MS = 1000.0  # per attempt: small beside a 10-60 s image generation
REPORT_TARGET_S = 10.0  # a report is an occasional read, not on any SKU's path
WRITERS = 8

_WRITER = """
import faulthandler, sys, time, json
faulthandler.enable()  # a crash in an extension shows its stack on stderr
from pathlib import Path
from flokan_dagster.ledger import CreditLedger
database, spool, worker, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ledger = CreditLedger(database, spool_dir=Path(spool) if spool else None, lock_timeout_s=30)
ledger.begin_attempt(asset="warm", sku=worker, prompt="p", model_tier="pro")  # connect once
print("ready", flush=True)
sys.stdin.readline()
times = []
for i in range(count):
    started = time.perf_counter()
    aid = ledger.begin_attempt(asset="images", sku=f"{worker}-{i}", prompt="p", model_tier="pro", estimated_credits=50)
    ledger.finish_attempt(aid, status="completed", job_id=f"job-{worker}-{i}", credits_consumed=50)
    times.append(time.perf_counter() - started)
left = ledger.flush_spool()
print(json.dumps({"times": times, "left": left}), flush=True)
"""


@contextmanager
def servers() -> Iterator[tuple[str, str]]:
    """A PostgreSQL connection string and an S3 endpoint, started here unless given."""
    with ExitStack() as stack:
        dsn = os.environ.get("FLOKAN_TEST_PG_DSN")
        if not dsn:
            env = script_env(subprocess.run(["bash", str(ROOT / ".ci/start-postgres")], check=True,
                                             capture_output=True, text=True).stdout)
            stack.callback(subprocess.run, ["bash", str(ROOT / ".ci/stop-postgres"), env["FLOKAN_TEST_PG_DIR"]])
            dsn = env["FLOKAN_TEST_PG_DSN"]
        endpoint = os.environ.get("FLOKAN_TEST_S3_ENDPOINT")
        if not endpoint:
            directory = tempfile.mkdtemp(prefix="bench-s3-")
            env = script_env(subprocess.run(["bash", str(ROOT / ".ci/start-s3"), directory, sys.executable],
                                             check=True, capture_output=True, text=True).stdout)
            stack.callback(subprocess.run, ["bash", str(ROOT / ".ci/stop-s3"), directory])
            endpoint = env["FLOKAN_TEST_S3_ENDPOINT"]
        yield dsn, endpoint


def write_latency(database: str, spools: Path, writers: int, attempts: int) -> list[float]:
    """Seconds per begin+finish of ``writers`` processes writing ``attempts`` each, all at once."""
    procs = []
    for w in range(writers):
        spool = str(spools / f"spool-{w}") if database.startswith("postgresql") else ""
        procs.append(subprocess.Popen([sys.executable, "-c", _WRITER, database, spool, f"w{w}-{uuid.uuid4().hex[:6]}",
                                       str(attempts)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, cwd=ROOT))
    for proc in procs:
        assert proc.stdout is not None
        line = proc.stdout.readline().strip()
        if line != "ready":  # its traceback, if any, is on stderr above
            try:
                code = proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                code = None
            raise RuntimeError(f"a writer did not start: read {line!r}, exit code {code}")
    for proc in procs:
        assert proc.stdin is not None
        proc.stdin.write("go\n")
        proc.stdin.flush()
    times: list[float] = []
    for proc in procs:
        out, _ = proc.communicate(timeout=900)
        report = json.loads(out.strip().splitlines()[-1])
        if report["left"]:
            print(f"  {report['left']} write(s) still in a writer's spool after flush_spool()")
        times += report["times"]
    return times


def build_report_ledger(database: str, rows: int) -> float:
    """Fill ``database`` with ``rows`` generated attempts; return seconds taken."""
    started = time.perf_counter()
    if database.startswith("postgresql"):
        open_database(database, read_only=False).close()  # creates the tables
        with duckdb.connect() as local:
            ensure_schema(local)
            local.execute(_GENERATE, {"rows": rows, "skus": 20_000})
            local.execute(f"LOAD '{postgres_extension_path()}'")
            local.execute(f"ATTACH '{database}' AS pg (TYPE postgres)")
            local.execute("INSERT INTO pg.public.attempts SELECT * FROM memory.main.attempts")
    else:
        with duckdb.connect(database) as conn:
            ensure_schema(conn)
            conn.execute(_GENERATE, {"rows": rows, "skus": 20_000})
            conn.execute("CHECKPOINT")
    return time.perf_counter() - started


# The journal and job index of the generated attempts, as the writer would have left them.
_JOURNAL = """
INSERT INTO attempt_events
SELECT attempt_id || '-' || kind, attempt_id, revision, recorded_at, kind,
       '{"event_id": "' || attempt_id || '-' || kind || '", "attempt_id": "' || attempt_id || '", "kind": "' || kind
       || '", "fields": {"asset": "' || asset || '", "sku": "' || sku || '", "prompt": "' || prompt
       || '", "model_tier": "' || model_tier || '", "job_id": "' || job_id || '", "status": "' || status
       || '", "result_url": "' || result_url || '"}, "revision": ' || revision || '}'
FROM attempts, (VALUES ('begin'), ('finish')) AS k(kind);
INSERT INTO attempt_jobs SELECT attempt_id || '-finish', attempt_id, job_id FROM attempts WHERE job_id IS NOT NULL;
"""


def build_grown_ledger(database: str, rows: int) -> None:
    """``rows`` generated attempts with their journal (two events each) and job index."""
    build_report_ledger(database, rows)
    if database.startswith("postgresql"):
        with open_database(database, read_only=False) as conn:
            conn.execute("CALL postgres_execute('flokan_ledger', ?)", [_JOURNAL])
    else:
        with duckdb.connect(database) as conn:
            conn.execute(_JOURNAL)
            conn.execute("CHECKPOINT")


def wal_read_cost(database: str, spools: Path) -> tuple[float, float, int]:
    """Median ms of a ledger read with no WAL, then with the WAL written up to near its limit
    (what the deferred checkpoint costs every reader at worst), and that WAL's size in bytes."""
    with duckdb.connect(database) as conn:
        conn.execute("CHECKPOINT")
    ledger = CreditLedger(database, spool_dir=spools / "wal-read")

    def read_ms() -> float:
        times = []
        for _ in range(9):
            started = time.perf_counter()
            ledger.get_attempt("no-such-attempt")
            times.append(time.perf_counter() - started)
        return statistics.median(times) * 1000

    bare = read_ms()
    growth = 0
    for n in range(1000):
        before = wal_bytes(database)
        if before + 2 * growth > wal_limit(database):
            break
        aid = ledger.begin_attempt(asset="images", sku=f"wal-{n}", prompt="p", model_tier="pro", estimated_credits=50)
        ledger.finish_attempt(aid, status="completed", job_id=f"job-wal-{n}", credits_consumed=50)
        growth = max(growth, wal_bytes(database) - before)
    return bare, read_ms(), wal_bytes(database)


def png(size: int, seed: int) -> bytes:
    """A noisy RGB PNG (noise keeps it near a real photo's size after compression)."""
    rng = random.Random(seed)
    image = Image.frombytes("RGB", (size, size), bytes(rng.getrandbits(8) for _ in range(size * size * 3)))
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return buffer.getvalue()


def main() -> None:
    """Run the three measurements and print them beside their targets."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=1_000_000)
    parser.add_argument("--attempts", type=int, default=40, help="per writer alone; a quarter of it per writer with 8")
    parser.add_argument("--images", type=int, default=20)
    parser.add_argument("--grown", type=int, default=200_000, help="attempts already in the ledger for the grown-ledger write")
    parser.add_argument("--parts", default="writes,grown,report,store", help="which measurements to run")
    args = parser.parse_args()
    parts = set(args.parts.split(","))
    failed = False
    print("load average at start: {:.2f} {:.2f} {:.2f} (1, 5, 15 min; 2 cores)".format(*os.getloadavg()))
    with servers() as (dsn, endpoint), tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        backends = {"duckdb file": lambda name: str(work / f"{name}.duckdb"), "postgresql": lambda name: fresh_database(dsn)}

        for label, make in backends.items() if "writes" in parts else ():
            for writers, attempts in ((1, args.attempts), (WRITERS, max(2, args.attempts // 4))):
                times = write_latency(make(f"w{writers}"), work / f"spools-{writers}", writers, attempts)
                median, p95 = statistics.median(times) * 1000, sorted(times)[int(len(times) * 0.95) - 1] * 1000
                ok = median < WRITE_TARGET_MS if writers == 1 else None
                failed |= ok is False
                print(f"{label:12} {writers} writer(s): begin+finish median {median:.0f} ms, p95 {p95:.0f} ms ({len(times)} attempts)")
                result(f"ledger write begin+finish, {label}, {writers} writer(s)", f"{median:.0f} ms median, {p95:.0f} ms p95",
                       f"< {WRITE_TARGET_MS:.0f} ms" if writers == 1 else "", ok)

        for label, make in backends.items() if "grown" in parts else ():
            database = make("grown")
            build_grown_ledger(database, args.grown)
            times = write_latency(database, work / "spools-grown", 1, max(4, args.attempts // 4))
            median, p95 = statistics.median(times) * 1000, sorted(times)[int(len(times) * 0.95) - 1] * 1000
            ok = median < WRITE_TARGET_MS
            failed |= not ok
            print(f"{label:12} 1 writer, {args.grown:,} attempts already: begin+finish median {median:.0f} ms, p95 {p95:.0f} ms")
            result(f"ledger write begin+finish, {label}, 1 writer, {args.grown:,} attempts already",
                   f"{median:.0f} ms median, {p95:.0f} ms p95", f"< {WRITE_TARGET_MS:.0f} ms", ok)
            if label == "duckdb file":
                bare, full, wal = wal_read_cost(database, work / "spools-grown")
                print(f"{label:12} a read on {args.grown:,} attempts: {bare:.0f} ms with no WAL, {full:.0f} ms with "
                      f"{wal / 1024:.0f} KiB of WAL (its limit {wal_limit(database) / 1024:.0f} KiB)")
                result(f"ledger read (open, one lookup, close), duckdb file, {args.grown:,} attempts, WAL empty / near its limit",
                       f"{bare:.0f} ms / {full:.0f} ms ({wal / 1024:.0f} KiB)")

        report_s: dict[str, float] = {}
        for label, make in backends.items() if "report" in parts else ():
            database = make("report")
            print(f"{label}: building {args.rows:,} rows in {build_report_ledger(database, args.rows):.1f} s")
            ledger = CreditLedger(database, spool_dir=work / "report-spool")
            times = []
            for _ in range(3):
                started = time.perf_counter()
                cost_summary(ledger)
                times.append(time.perf_counter() - started)
            median = statistics.median(times)
            report_s[label] = median
            print(f"{label}: cost_summary over {args.rows:,} rows: {median * 1000:.0f} ms median")
            result(f"cost report over {args.rows:,} rows, {label}", f"{median * 1000:.0f} ms median")
        if "report" in parts:
            ratio = report_s["postgresql"] / report_s["duckdb file"]
            ok = report_s["postgresql"] < REPORT_TARGET_S
            failed |= not ok
            result("cost report, postgresql vs duckdb file", f"{ratio:.1f}x ({report_s['postgresql']:.2f} s)",
                   f"< {REPORT_TARGET_S:.0f} s on postgresql", ok)

        if "store" not in parts:
            print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
            raise SystemExit(1 if failed else 0)
        images = [png(512, i) for i in range(args.images)]
        mean_size = statistics.mean(len(i) for i in images)
        local = ImageStore(work / "images")
        import s3fs

        options = {"endpoint_url": endpoint, "key": "testing", "secret": "testing"}
        bucket = f"bench-images-{uuid.uuid4().hex[:8]}"
        s3fs.S3FileSystem(**options).mkdir(bucket)
        shared = ImageStore(f"s3://{bucket}/flokan", storage_options=options)
        per_image = {}
        for label, store in (("local directory", local), ("s3 (moto)", shared)):
            started = time.perf_counter()
            for n, data in enumerate(images):
                store.write("hero_images", f"SKU-{n}", data)
            per_image[label] = (time.perf_counter() - started) / len(images)
            print(f"image store, {label}: {per_image[label] * 1000:.1f} ms per {mean_size / 1024:.0f} KiB image")
        for label, seconds in per_image.items():
            result(f"image store write per {mean_size / 1024:.0f} KiB image, {label}", f"{seconds * 1000:.1f} ms")
        ratio = per_image["s3 (moto)"] / per_image["local directory"]
        result("s3 upload vs local write", f"{ratio:.1f}x", "< 1 s per image", per_image["s3 (moto)"] < 1.0)
        print("load average at end: {:.2f} {:.2f} {:.2f}".format(*os.getloadavg()))
    raise SystemExit(1 if failed else 0)


if __name__ == "__main__":
    main()
