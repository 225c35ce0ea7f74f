"""Run every benchmark and write ``benchmarks/RESULTS.md``: the machine, the date, each figure beside its target.

Each ``bench_*.py`` runs in its own process; its ``RESULT|...`` lines make the summary table and
its whole output follows below it.

Usage:
    python benchmarks/run_all.py [bench_client bench_batch ...]
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

HERE = Path(__file__).resolve().parent


def machine() -> str:
    """One line describing this machine."""
    memory = ""
    try:
        kib = next(int(line.split()[1]) for line in Path("/proc/meminfo").read_text().splitlines() if line.startswith("MemTotal"))
        memory = f", {kib / 1024 / 1024:.0f} GiB RAM"
    except (OSError, StopIteration, ValueError):
        pass
    cpu = platform.processor() or platform.machine()
    return f"{platform.system()} {platform.release()}, {os.cpu_count()} cores ({cpu}){memory}, Python {platform.python_version()}"


def main() -> int:
    """Run the benchmarks and write the report; exit 1 if one failed or missed its target."""
    wanted = set(sys.argv[1:])
    scripts = [p for p in sorted(HERE.glob("bench_*.py")) if not wanted or p.stem in wanted]
    rows: list[list[str]] = []
    sections: list[str] = []
    failed = False
    for script in scripts:
        print(f"== {script.name}", flush=True)
        started = time.perf_counter()
        done = subprocess.run([sys.executable, str(script)], capture_output=True, text=True, cwd=HERE.parent)
        elapsed = time.perf_counter() - started
        output = done.stdout + (f"\n[stderr]\n{done.stderr[-3000:]}" if done.returncode else "")
        print(done.stdout, flush=True)
        for line in done.stdout.splitlines():
            if line.startswith("RESULT|"):
                _, figure, value, target, met = line.split("|", 4)
                rows.append([script.stem, figure, value, target, met])
                failed |= met == "NO"
        if done.returncode:
            failed = True
            rows.append([script.stem, "(benchmark failed)", f"exit {done.returncode}", "", "NO"])
        body = "\n".join(line for line in output.splitlines() if not line.startswith("RESULT|"))
        sections.append(f"### {script.name} ({elapsed:.0f} s)\n\n```\n{body.strip()}\n```\n")
    table = ["| benchmark | figure | result | target | met |", "|---|---|---|---|---|"]
    table += ["| " + " | ".join(row) + " |" for row in rows]
    report = [
        "# Benchmark results",
        "",
        f"- Machine: {machine()}",
        f"- Date: {datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC",
        "- Produced by `make bench` (`benchmarks/run_all.py`); figures vary with the machine's load.",
        "",
        *table,
        "",
        "## Output",
        "",
        *sections,
    ]
    (HERE / "RESULTS.md").write_text("\n".join(report))
    print(f"wrote {HERE / 'RESULTS.md'}")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
