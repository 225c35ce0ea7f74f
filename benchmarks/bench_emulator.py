"""Benchmark of the Flokan emulator, run in a subprocess so the load generator has its own GIL.

Prints:
  * requests per second for ``GET /jobs`` and for ``POST /process`` at zero latency;
  * the wall time of 200 concurrent ``POST /process`` calls with 1 s latency, and its ratio to 1 s.

The load generator speaks HTTP/1.1 over plain asyncio streams (keep-alive, one request in flight
per connection): httpx's connection pool costs more CPU than the server at these rates and
would measure itself (with it, the 200-call burst takes ~6 s while the server needs ~1.2 s).

Usage:
    python benchmarks/bench_emulator.py [--duration 5] [--concurrency 16] [--in-flight 200]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from collections.abc import Callable
from pathlib import Path
from urllib.parse import urlencode, urlsplit

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

from results import result  # noqa: E402

from flokan_dagster.emulator import (  # noqa: E402
    DEMO_API_KEY,
    DEMO_WORKSPACE_ID,
    EmulatorConfig,
    EmulatorProcess,
)

Request = tuple[str, str, bytes]  # method, path with query, body


class Connection:
    """One keep-alive HTTP/1.1 connection to the API origin."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter, host: str) -> None:
        self.reader = reader
        self.writer = writer
        self.host = host

    @classmethod
    async def open(cls, base_url: str) -> Connection:
        """Connect to the host and port of ``base_url``."""
        parts = urlsplit(base_url)
        reader, writer = await asyncio.open_connection(parts.hostname, parts.port)
        return cls(reader, writer, parts.netloc)

    async def send(self, method: str, path: str, body: bytes = b"") -> tuple[int, bytes]:
        """Send one request and read the whole response; returns (status, body)."""
        head = (f"{method} {path} HTTP/1.1\r\nHost: {self.host}\r\nAuthorization: Bearer {DEMO_API_KEY}\r\n"
                f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n")
        self.writer.write(head.encode() + body)
        status = int((await self.reader.readline()).split()[1])
        length = 0
        while (line := await self.reader.readline()) not in (b"\r\n", b""):
            name, _, value = line.decode("latin-1").partition(":")
            if name.lower() == "content-length":
                length = int(value)
        return status, await self.reader.readexactly(length)

    def close(self) -> None:
        """Close the socket."""
        self.writer.close()


async def _throughput(
    connections: list[Connection], make: Callable[[int], Request], duration: float
) -> tuple[float, int]:
    """One worker per connection, each sending ``make(n)`` for ``duration`` s; (req/s, errors)."""
    done = 0
    errors = 0
    deadline = time.perf_counter() + duration

    async def worker(worker_id: int, connection: Connection) -> None:
        nonlocal done, errors
        n = 0
        while time.perf_counter() < deadline:
            status, _ = await connection.send(*make(worker_id * 1_000_000 + n))
            n += 1
            done += 1
            errors += status >= 400

    started = time.perf_counter()
    await asyncio.gather(*(worker(i, c) for i, c in enumerate(connections)))
    return done / (time.perf_counter() - started), errors


async def _run(emu: EmulatorProcess, duration: float, concurrency: int, in_flight: int) -> None:
    api = urlsplit(emu.base_url).path
    connections = [await Connection.open(emu.base_url) for _ in range(max(concurrency, in_flight))]
    workers = connections[:concurrency]
    try:
        def jobs(n: int) -> Request:
            return "GET", f"{api}/jobs?{urlencode({'per_page': 50, 'page': 1 + n % 20})}", b""

        def process(n: int) -> Request:
            return "POST", f"{api}/process", json.dumps({"prompt": f"sku {n}", "model_tier": "pro"}).encode()

        rps, errors = await _throughput(workers, jobs, duration)
        print(f"GET /jobs (per_page=50 of 1000+ jobs):  {rps:8.0f} req/s  ({errors} errors, {concurrency} connections)")
        result("emulator GET /jobs throughput", f"{rps:.0f} req/s")
        rps, errors = await _throughput(workers, process, duration)
        print(f"POST /process, zero latency, 512x512:  {rps:8.0f} req/s  ({errors} errors, {concurrency} connections)")
        result("emulator POST /process throughput, zero latency", f"{rps:.0f} req/s")

        emu.admin.set_latency(latency_ms=1000)
        burst = connections[:in_flight]
        started = time.perf_counter()
        answers = await asyncio.gather(*(c.send(*process(10**9 + i)) for i, c in enumerate(burst)))
        wall = time.perf_counter() - started
        failed = sum(status != 201 for status, _ in answers)
        print(f"{in_flight} concurrent POST /process, 1 s latency: {wall:.2f} s wall, "
              f"ratio to 1 s = {wall:.2f}  ({failed} failed)")
        result(f"emulator: {in_flight} concurrent /process at 1 s latency", f"{wall:.2f} s wall (ratio {wall:.2f})",
               "about 1 s", failed == 0 and wall < 1.5)
    finally:
        for connection in connections:
            connection.close()


def main() -> None:
    """Start the emulator subprocess, raise the demo workspace's limits, and print the figures."""
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration", type=float, default=5.0, help="seconds per throughput run")
    parser.add_argument("--concurrency", type=int, default=16, help="connections for the throughput runs")
    parser.add_argument("--in-flight", type=int, default=200, help="concurrent calls in the latency run")
    args = parser.parse_args()
    with EmulatorProcess(EmulatorConfig(latency="zero")) as emu:
        emu.admin.update_workspace(DEMO_WORKSPACE_ID, rate_limit_per_minute=10**9, credits=10**12)
        emu.admin.bulk_jobs(DEMO_WORKSPACE_ID, count=1000)
        asyncio.run(_run(emu, args.duration, args.concurrency, args.in_flight))


if __name__ == "__main__":
    main()
