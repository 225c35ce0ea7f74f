"""Run every benchmark and write ``benchmarks/RESULTS.md``: the machine, the date, each figure beside its target.

Each ``bench_*.py`` runs in its own process; its ``RESULT|...`` lines make the summary table and
its whole output follows below it. Naming benchmarks runs only those and replaces only their rows
and sections, keeping the other benchmarks' figures already in ``RESULTS.md`` (each section says
when it ran).

Usage:
    python benchmarks/run_all.py [bench_client bench_batch ...]
"""

from __future__ import annotations

import os
import platform
import re
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


def previous_results(path: Path) -> tuple[dict[str, list[list[str]]], dict[str, str]]:
    """The rows and output sections of an existing RESULTS.md, by benchmark name."""
    rows: dict[str, list[list[str]]] = {}
    sections: dict[str, str] = {}
    if not path.exists():
        return rows, sections
    text = path.read_text()
    for line in text.splitlines():
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        if line.startswith("| bench_") and len(cells) == 5:
            rows.setdefault(cells[0], []).append(cells)
    for match in re.finditer(r"^### (bench_\w+)\.py .*?(?=^### |\Z)", text, flags=re.S | re.M):
        sections[match.group(1)] = match.group(0).rstrip() + "\n"
    return rows, sections


def main() -> int:
    """Run the benchmarks and write the report; exit 1 if one failed or missed its target."""
    wanted = set(sys.argv[1:])
    scripts = [p for p in sorted(HERE.glob("bench_*.py")) if not wanted or p.stem in wanted]
    old_rows, old_sections = previous_results(HERE / "RESULTS.md") if wanted else ({}, {})
    rows_by: dict[str, list[list[str]]] = {}
    sections_by: dict[str, str] = {}
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
                rows_by.setdefault(script.stem, []).append([script.stem, figure, value, target, met])
                failed |= met == "NO"
        if done.returncode:
            failed = True
            rows_by.setdefault(script.stem, []).append([script.stem, "(benchmark failed)", f"exit {done.returncode}", "", "NO"])
        body = "\n".join(line for line in output.splitlines() if not line.startswith("RESULT|"))
        ran = f"{datetime.now(timezone.utc):%Y-%m-%d %H:%M} UTC"
        sections_by[script.stem] = f"### {script.name} ({elapsed:.0f} s, {ran})\n\n```\n{body.strip()}\n```\n"
    names = sorted(set(old_rows) | set(old_sections) | set(rows_by) | set(sections_by))
    rows = [row for name in names for row in rows_by.get(name, old_rows.get(name, []))]
    sections = [sections_by.get(name, old_sections.get(name, "")) for name in names]
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
