"""Client overhead per ``POST /process``: FlokanClient against a bare httpx loop, same run.

Both make the same requests to the same emulator (a subprocess, zero latency), interleaved in
rounds so that drift in the machine's load hits both alike. Target: at most 1.3x.

Usage:
    python benchmarks/bench_client.py [--requests 300] [--rounds 5]
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # run from a checkout without installing

import httpx  # noqa: E402
from results import result  # noqa: E402

from flokan_dagster import FlokanClient  # noqa: E402
from flokan_dagster.emulator import EmulatorConfig, EmulatorProcess  # noqa: E402


def bare(base_url: str, api_key: str, prompts: list[str]) -> float:
    """Seconds for plain httpx to POST every prompt and parse the JSON answer."""
    with httpx.Client(timeout=30) as http:
        started = time.perf_counter()
        for prompt in prompts:
            response = http.post(
                base_url + "/process",
                json={"prompt": prompt, "model_tier": "standard"},
                headers={"Authorization": f"Bearer {api_key}"},
            )
            response.raise_for_status()
            response.json()["data"]["job_id"]
        return time.perf_counter() - started


def flokan(base_url: str, api_key: str, prompts: list[str]) -> float:
    """Seconds for FlokanClient to process every prompt (validation, retries, models included)."""
    with FlokanClient(api_key=api_key, base_url=base_url) as client:
        started = time.perf_counter()
        for prompt in prompts:
            _ = client.process(prompt, "standard").job_id
        return time.perf_counter() - started


def main() -> None:
    """Run the benchmark and print its figures."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--requests", type=int, default=300, help="requests per client per round")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    with EmulatorProcess(EmulatorConfig(latency="zero", image_size=(64, 64))) as emulator:
        workspace = emulator.admin.create_workspace(credits=10**9, rate_limit_per_minute=10**7)
        api_key = emulator.admin.create_key(workspace)
        flokan(emulator.base_url, api_key, ["warm up"] * 20)
        bare_times, flokan_times = [], []
        for round_number in range(args.rounds):
            prompts = [f"round {round_number} request {i}" for i in range(args.requests)]
            bare_times.append(bare(emulator.base_url, api_key, [p + " bare" for p in prompts]))
            flokan_times.append(flokan(emulator.base_url, api_key, [p + " flokan" for p in prompts]))
    per_bare = statistics.median(bare_times) / args.requests * 1000
    per_flokan = statistics.median(flokan_times) / args.requests * 1000
    print(f"POST /process at zero latency, {args.requests} requests x {args.rounds} rounds (median round)")
    print(f"  bare httpx loop   {per_bare:7.2f} ms/request")
    print(f"  FlokanClient      {per_flokan:7.2f} ms/request")
    print(f"  ratio             {per_flokan / per_bare:7.2f}x   target <= 1.3x")
    result("client overhead per /process vs bare httpx", f"{per_flokan / per_bare:.2f}x "
           f"({per_flokan:.2f} vs {per_bare:.2f} ms)", "<= 1.3x", per_flokan / per_bare <= 1.3)


if __name__ == "__main__":
    main()
