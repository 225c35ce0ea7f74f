"""Batched throughput at the workspace's rate limit, whatever the latency.

1. 200 SKUs in one in-process run at 1, 10 and 30 s of ``/process`` latency against 120/min and
   600/min workspaces, resource defaults (``max_concurrency`` 64, the controller sizing calls in
   flight). Where the rate is the limit (rate x latency <= 64 calls in flight) the ideal is
   N / rate + latency and the target 90 %; where the cap of 64 is, the ideal is
   N x latency / 64 + latency (reported). 429 answers at most 2 % of ``POST /process`` calls.
2. Two runs of 100 SKUs at once (two processes, one ledger) on one 120/min workspace at 10 s:
   together at least 85 % of 200 / rate + latency, at most 2 % 429s.
3. A backfill of 200 SKUs launched the way the UI launches it: GraphQL ``launchPartitionBackfill``
   to ``dagster dev`` (webserver + daemon, queued run coordinator, default run launcher: one
   process per run), batch sizes 50 and 100, 120/min at 10 s; its wall time (launch to the
   backfill marked complete) against the in-process run of the same cell, as a ratio.
4. One Dagster run per SKU against the batched run (the per-run overhead batching removes).

Latency is simulated by the emulator; ``--latency-scale`` shortens it (the output says so).

Usage:
    python benchmarks/bench_batch.py [--skus 200] [--latency-scale 1.0] [--skip-daemon]
    python benchmarks/bench_batch.py --cell 600:1 [--cell 600:10 ...]   # only those one-run cells (rate:latency)
"""

from __future__ import annotations

import argparse
import multiprocessing
import os
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import httpx
from results import result
from sku_pipeline import SkuPipeline, write_catalog
from stages import StageTimer, time_batch_stages

from flokan_dagster import SKU_PARTITIONS
from flokan_dagster.api.client import DEFAULT_MAX_CONCURRENCY
from flokan_dagster.emulator import EmulatorConfig, EmulatorProcess

HERE = Path(__file__).resolve().parent
LATENCIES_S = (1.0, 10.0, 30.0)
RATES_PER_MIN = (120, 600)
SHARED_RATE, SHARED_LATENCY_S = 120, 10.0
DAEMON_BATCHES = (50, 100)
DAEMON_PORT = 3115


@dataclass
class Cell:
    """One measured run: its wall time, ideal, and the 429 share of its /process calls."""

    label: str
    wall_s: float
    ideal_s: float
    rate_limited: bool
    process_calls: int
    refused: int
    cpu_s: float | None = None

    @property
    def ratio(self) -> float:
        """Ideal over measured (1.0 = the ideal reached)."""
        return self.ideal_s / self.wall_s

    @property
    def refused_share(self) -> float:
        """429 answers over every POST /process the emulator answered."""
        return self.refused / self.process_calls if self.process_calls else 0.0


def ideal_s(skus: int, rate_per_min: int, latency_s: float, cap: int = DEFAULT_MAX_CONCURRENCY) -> tuple[float, bool]:
    """The shortest wall time for ``skus`` and whether the rate (not the cap) is the limit."""
    rate_per_s = rate_per_min / 60
    rate_limited = rate_per_s * latency_s <= cap
    if rate_limited:
        return skus / rate_per_s + latency_s, True
    return skus * latency_s / cap + latency_s, False


def process_answers(emulator: EmulatorProcess) -> tuple[int, int]:
    """POST /process calls answered and 429s among them since the last stats reset."""
    stats = emulator.admin.stats()
    answers: dict[str, int] = stats.get("answers", {})
    total = sum(n for key, n in answers.items() if key.startswith("POST /process "))
    return total, answers.get("POST /process 429", 0)


def one_run(emulator: EmulatorProcess, work: Path, skus: list[str], rate: int, latency_s: float) -> Cell:
    """All ``skus`` in one in-process run on a fresh workspace, resource defaults."""
    work.mkdir(parents=True)
    pipeline = SkuPipeline.create(emulator, work, skus, batch_size=len(skus), rate_limit_per_minute=rate)
    emulator.admin.reset_stats()
    cpu = time.process_time()
    wall = pipeline.materialize()
    cpu = time.process_time() - cpu
    calls, refused = process_answers(emulator)
    ideal, limited = ideal_s(len(skus), rate, latency_s)
    return Cell(f"{len(skus)} SKUs, 1 run, {latency_s:g} s, {rate}/min", wall, ideal, limited, calls, refused, cpu)


def _run_child(api_key: str, base_url: str, work: str, skus: list[str], batch_size: int, start: Any, out: Any) -> None:
    pipeline = SkuPipeline.attach(api_key, base_url, Path(work), skus, batch_size=batch_size)
    start.wait()
    began = time.time()
    pipeline.materialize()
    out.put((began, time.time()))


def runs_at_once(emulator: EmulatorProcess, work: Path, skus: list[str], runs: int, rate: int, latency_s: float) -> Cell:
    """``runs`` runs (processes) splitting ``skus``, started together on one workspace and ledger."""
    work.mkdir(parents=True)
    per_run = len(skus) // runs
    workspace = emulator.admin.create_workspace(credits=10**9, rate_limit_per_minute=rate)
    api_key = emulator.admin.create_key(workspace)
    write_catalog(work, skus, per_run)
    context = multiprocessing.get_context("spawn")
    start, out = context.Barrier(runs), context.Queue()
    children = [
        context.Process(target=_run_child, args=(api_key, emulator.base_url, str(work), skus[i * per_run : (i + 1) * per_run],
                                                 per_run, start, out))  # fmt: skip
        for i in range(runs)
    ]
    emulator.admin.reset_stats()
    for child in children:
        child.start()
    spans = [out.get(timeout=3600) for _ in children]
    for child in children:
        child.join()
        if child.exitcode:
            raise SystemExit(f"a run of the {runs} at once failed (exit {child.exitcode})")
    wall = max(end for _, end in spans) - min(began for began, _ in spans)
    calls, refused = process_answers(emulator)
    ideal, limited = ideal_s(len(skus), rate, latency_s)
    return Cell(f"{runs} runs of {per_run} SKUs at once, {latency_s:g} s, {rate}/min", wall, ideal, limited, calls, refused)


_DEFS = """
import os, sys
from pathlib import Path
sys.path.insert(0, {bench!r})
from sku_pipeline import build_defs
defs = build_defs(os.environ["FLOKAN_API_KEY"], {base_url!r}, Path({work!r}), {batch})
"""

_LAUNCH = """mutation($params: LaunchBackfillParams!) { launchPartitionBackfill(backfillParams: $params) {
  __typename ... on LaunchBackfillSuccess { backfillId } ... on PythonError { message } ... on InvalidSubsetError { message } } }"""
_STATUS = """query($id: String!) { partitionBackfillOrError(backfillId: $id) { __typename ... on PartitionBackfill { status } } }"""


def _graphql(port: int, query: str, variables: dict[str, Any]) -> dict[str, Any]:
    response = httpx.post(f"http://127.0.0.1:{port}/graphql", json={"query": query, "variables": variables}, timeout=60)
    response.raise_for_status()
    body = response.json()
    if body.get("errors"):
        raise SystemExit(f"GraphQL error: {body['errors']}")
    return body["data"]


def daemon_backfill(emulator: EmulatorProcess, work: Path, skus: list[str], rate: int, latency_s: float, batch: int) -> Cell:
    """A backfill of ``skus`` launched through ``dagster dev``'s GraphQL, run by its daemon."""
    work.mkdir(parents=True)
    workspace = emulator.admin.create_workspace(credits=10**9, rate_limit_per_minute=rate)
    api_key = emulator.admin.create_key(workspace)
    write_catalog(work, skus, batch)
    defs_file = work / "defs.py"
    defs_file.write_text(_DEFS.format(bench=str(HERE), base_url=emulator.base_url, work=str(work), batch=batch))
    home = work / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    env = {**os.environ, "DAGSTER_HOME": str(home), "FLOKAN_API_KEY": api_key}
    dagster = Path(sys.executable).with_name("dagster")
    log = (work / "dagster-dev.log").open("w")
    proc = subprocess.Popen([str(dagster), "dev", "-f", str(defs_file), "-h", "127.0.0.1", "-p", str(DAEMON_PORT)],
                            env=env, cwd=work, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)  # fmt: skip
    try:
        deadline = time.monotonic() + 300
        while True:
            try:
                if httpx.get(f"http://127.0.0.1:{DAEMON_PORT}/server_info", timeout=2).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise SystemExit(f"dagster dev did not come up; see {work / 'dagster-dev.log'}")
            time.sleep(0.5)
        instance = dg.DagsterInstance.from_config(str(home))
        instance.add_dynamic_partitions(SKU_PARTITIONS.name, skus)
        emulator.admin.reset_stats()
        started = time.perf_counter()
        params = {"partitionNames": skus, "assetSelection": [{"path": ["images"]}]}
        launched = _graphql(DAEMON_PORT, _LAUNCH, {"params": params})["launchPartitionBackfill"]
        if launched["__typename"] != "LaunchBackfillSuccess":
            raise SystemExit(f"backfill not launched: {launched}")
        status = "REQUESTED"
        while status in ("REQUESTED", "CANCELING", "FAILING"):
            time.sleep(0.5)
            status = _graphql(DAEMON_PORT, _STATUS, {"id": launched["backfillId"]})["partitionBackfillOrError"]["status"]
        wall = time.perf_counter() - started
        launched_at = time.time() - wall
        records = instance.fetch_materializations(dg.AssetKey("images"), limit=len(skus) + 1).records
        made = len(records)
        run_records = instance.get_run_records()
        runs = len(run_records)
        starts = sorted(r.start_time for r in run_records if r.start_time)
        print(f"    backfill timeline (s after launch): runs started at {', '.join(f'{t - launched_at:.0f}' for t in starts)}; "
              f"last SKU materialized at {max(r.timestamp for r in records) - launched_at:.0f}; backfill complete at {wall:.0f}")
        if status not in ("COMPLETED", "COMPLETED_SUCCESS") or made != len(skus):
            raise SystemExit(f"backfill ended {status} with {made} of {len(skus)} SKUs; see {work / 'dagster-dev.log'}")
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=60)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
        log.close()
    calls, refused = process_answers(emulator)
    ideal, limited = ideal_s(len(skus), rate, latency_s)
    label = f"daemon backfill of {len(skus)} SKUs ({runs} runs of {batch}), {latency_s:g} s, {rate}/min"
    return Cell(label, wall, ideal, limited, calls, refused)


def per_sku_runs(emulator: EmulatorProcess, work: Path, skus: list[str]) -> float:
    """Wall time of one Dagster run per SKU (no rate limit, the emulator's current latency)."""
    work.mkdir(parents=True)
    return SkuPipeline.create(emulator, work, skus, batch_size=1).materialize()


def machine_load() -> str:
    """The 1, 5 and 15 minute load averages and the core count, for the output beside the figures."""
    one, five, fifteen = os.getloadavg()
    return f"load average {one:.2f}, {five:.2f}, {fifteen:.2f} on {os.cpu_count()} cores"


def parse_cell(text: str) -> tuple[int, float]:
    """``RATE:LATENCY`` (e.g. ``600:1``) as a (rate per minute, latency in seconds) pair."""
    try:
        rate, latency = text.split(":")
        return int(rate), float(latency)
    except ValueError:
        raise argparse.ArgumentTypeError(f"--cell {text!r}: expected RATE:LATENCY, e.g. 600:1") from None


def show(cell: Cell, scale: float) -> None:
    """One line per measured cell."""
    kind = "rate-limited" if cell.rate_limited else f"cap-limited ({DEFAULT_MAX_CONCURRENCY} in flight)"
    note = f" (latency x{scale:g})" if scale != 1 else ""
    print(f"  {cell.label:<58}{note} {cell.wall_s:7.1f} s  ideal {cell.ideal_s:6.1f} s  {cell.ratio:5.0%}  "
          f"429s {cell.refused}/{cell.process_calls} ({cell.refused_share:.1%})  {kind}")  # fmt: skip
    if cell.cpu_s is not None:  # the run's own process (the emulator's is apart): a figure the machine's load barely moves
        skus = int(cell.label.split()[0])
        print(f"    the run's CPU: {cell.cpu_s:.1f} s, {cell.cpu_s / skus * 1000:.0f} ms per SKU (all its threads)")


def result_line(cell: Cell, skus: int, rate: int, latency: float) -> None:
    """The RESULT line of one one-run cell (rate-limited cells against 90 %)."""
    target, met = (">= 90%", cell.ratio >= 0.90) if cell.rate_limited else ("(cap-limited)", None)
    result(f"one run of {skus} SKUs at {latency:g} s, {rate}/min, vs N/rate + latency"
           if cell.rate_limited else f"one run of {skus} SKUs at {latency:g} s, {rate}/min, vs N x latency/64 + latency",
           f"{cell.ratio:.0%} ({cell.wall_s:.1f} s vs {cell.ideal_s:.1f} s)", target, met)  # fmt: skip


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--skus", type=int, default=200)
    parser.add_argument("--latency-scale", type=float, default=1.0, help="multiply every simulated latency")
    parser.add_argument("--per-sku-runs", type=int, default=60, help="SKUs for the one-run-per-SKU comparison")
    parser.add_argument("--skip-daemon", action="store_true", help="leave out the daemon-launched backfill")
    parser.add_argument("--cell", type=parse_cell, action="append", metavar="RATE:LATENCY",
                        help="run only this one-run cell (repeatable), e.g. 600:1; prints its figure and stops")  # fmt: skip
    parser.add_argument("--stages", action="store_true", help="with --cell: print the wall time of each per-SKU stage")
    args = parser.parse_args()
    scale = args.latency_scale
    skus = [f"SKU-{i:04d}" for i in range(args.skus)]
    print(f"{args.skus} SKUs; /process latency simulated by the emulator"
          + (f", scaled by {scale:g} (wall time)" if scale != 1 else " at full length (not scaled)"))  # fmt: skip
    print(f"machine at start: {machine_load()}")
    cells: dict[tuple[int, float], Cell] = {}
    wanted = args.cell or [(rate, latency) for rate in RATES_PER_MIN for latency in LATENCIES_S]
    with tempfile.TemporaryDirectory() as tmp, EmulatorProcess(EmulatorConfig(image_size=(64, 64))) as emulator:
        root = Path(tmp)
        print("one run, resource defaults:")
        for rate, latency in wanted:
            emulator.admin.set_latency(latency_ms=int(latency * scale * 1000))
            timer = StageTimer()
            if args.stages and args.cell:
                time_batch_stages(timer)
                timer.wrap(SkuPipeline, "materialize", "the whole run (materialize)")
            try:
                cells[rate, latency] = cell = one_run(emulator, root / f"one-{rate}-{latency:g}", skus, rate, latency * scale)
            finally:
                timer.restore()
            show(cell, scale)
            if timer.seconds:
                print(f"  wall time per stage (summed over threads; nested stages counted in each):\n{timer.report(len(skus))}")
        if args.cell:
            print(f"machine at end: {machine_load()}")
            for (rate, latency), cell in cells.items():
                result_line(cell, args.skus, rate, latency)
            return
        emulator.admin.set_latency(latency_ms=int(SHARED_LATENCY_S * scale * 1000))
        print("several runs on one workspace:")
        shared = runs_at_once(emulator, root / "two-runs", skus, 2, SHARED_RATE, SHARED_LATENCY_S * scale)
        show(shared, scale)
        daemons: dict[int, Cell] = {}
        for batch in () if args.skip_daemon else DAEMON_BATCHES:
            daemons[batch] = daemon_backfill(emulator, root / f"daemon-{batch}", skus, SHARED_RATE,
                                             SHARED_LATENCY_S * scale, batch)  # fmt: skip
            show(daemons[batch], scale)
        emulator.admin.set_latency(latency_ms=int(1000 * scale))
        per_sku = per_sku_runs(emulator, root / "per-sku", skus[: args.per_sku_runs])
    limited = [c for c in cells.values() if c.rate_limited]
    worst = min(limited, key=lambda c: c.ratio)
    print(f"rate-limited cells: worst {worst.ratio:.0%} ({worst.label}); cap-limited cells are reported, not targeted")
    print(f"machine at end: {machine_load()}")
    for (rate, latency), cell in sorted(cells.items()):
        result_line(cell, args.skus, rate, latency)
    calls = sum(c.process_calls for c in cells.values())
    refused = sum(c.refused for c in cells.values())
    worst_share = max(cells.values(), key=lambda c: c.refused_share)
    result("429 answers per POST /process, one run (all cells)", f"{refused}/{calls} ({refused / calls:.1%}); worst cell "
           f"{worst_share.refused_share:.1%}", "<= 2% per cell", worst_share.refused_share <= 0.02)  # fmt: skip
    result(f"two runs of {args.skus // 2} SKUs at once, {SHARED_RATE}/min at {SHARED_LATENCY_S:g} s, vs ideal",
           f"{shared.ratio:.0%} ({shared.wall_s:.1f} s vs {shared.ideal_s:.1f} s)", ">= 85%", shared.ratio >= 0.85)
    result("429 answers per POST /process, two runs at once", f"{shared.refused}/{shared.process_calls} "
           f"({shared.refused_share:.1%})", "<= 2%", shared.refused_share <= 0.02)  # fmt: skip
    in_process = cells[SHARED_RATE, SHARED_LATENCY_S]
    for batch, daemon in daemons.items():
        result(f"daemon-launched backfill of {args.skus} SKUs (batch {batch}) vs the in-process run",
               f"{in_process.wall_s / daemon.wall_s:.2f}x the in-process speed ({daemon.wall_s:.1f} s vs {in_process.wall_s:.1f} s; "
               f"{daemon.ratio:.0%} of ideal, 429s {daemon.refused}/{daemon.process_calls})")  # fmt: skip
    batched = cells[600, 1.0]
    per_sku_rate = args.per_sku_runs / per_sku
    print(f"one Dagster run per SKU: {args.per_sku_runs} SKUs in {per_sku:.1f} s ({per_sku_rate:.2f} SKU/s) vs "
          f"{args.skus / batched.wall_s:.2f} SKU/s batched (600/min, 1 s)")  # fmt: skip
    result("batched vs one Dagster run per SKU", f"{args.skus / batched.wall_s / per_sku_rate:.1f}x faster "
           f"({args.skus / batched.wall_s:.2f} vs {per_sku_rate:.2f} SKU/s)")  # fmt: skip


if __name__ == "__main__":
    main()
