"""``flokan-emulator``: serve the local Flokan Image Editor API until interrupted.

The first lines printed are machine-readable ``KEY=value`` pairs (``FLOKAN_BASE_URL``,
``FLOKAN_STORAGE_URL``, ``FLOKAN_API_KEY``, ``FLOKAN_ADMIN_TOKEN``, ``FLOKAN_STATE_DIR``, then
``FLOKAN_EMULATOR_READY=1``), so a script can ``eval`` them or EmulatorProcess can parse them.

Example:
    $ flokan-emulator --port 8700 --state-dir .flokan-emulator --latency fast
"""

from __future__ import annotations

import argparse
import signal
import threading
from pathlib import Path
from typing import Any

from flokan_dagster.emulator.config import EmulatorConfig, FaultPlan
from flokan_dagster.emulator.seed import DEMO_API_KEY
from flokan_dagster.emulator.server import EmulatorServer


def _size(text: str) -> tuple[int, int]:
    width, _, height = text.lower().partition("x")
    try:
        return int(width), int(height or width)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected WIDTHxHEIGHT, got {text!r}") from None


def build_parser() -> argparse.ArgumentParser:
    """The CLI's argument parser (options left out keep the config file's or default value)."""
    p = argparse.ArgumentParser(prog="flokan-emulator", description="Local emulator of Flokan's Image Editor API.")
    p.add_argument("--host", default="127.0.0.1", help="interface to bind (default 127.0.0.1)")
    p.add_argument("--port", type=int, default=0, help="API port (default: a free port)")
    p.add_argument("--storage-port", type=int, default=0, help="storage-host port (default: a free port)")
    p.add_argument("--state-dir", type=Path, help="keep SQLite state here across restarts (default: temporary)")
    p.add_argument("--config", type=Path, help="EmulatorConfig as JSON; the options below override it")
    p.add_argument("--latency", choices=["zero", "fast", "realistic"], help="latency profile (default fast)")
    p.add_argument("--latency-ms", type=int, help="fixed /process latency, overrides the profile")
    p.add_argument("--time-scale", type=float, help="multiply every simulated latency")
    p.add_argument("--image-size", type=_size, help="result size, e.g. 512x512")
    p.add_argument("--safety-words", help="comma-separated words the safety filter rejects")
    p.add_argument("--upload-max-bytes", type=int, help="upload size limit")
    p.add_argument("--admin-token", help="X-Emulator-Admin token")
    p.add_argument("--demo-credits", type=int, help="credits of the demo workspace when first created")
    p.add_argument("--demo-rate-limit", type=int, help="requests per minute of the demo workspace when first created")
    p.add_argument("--seed", type=int, help="fault plan seed")
    p.add_argument("--drop-rate", type=float, help="share of /process calls dropped after completion")
    p.add_argument("--provider-error-rate", type=float, help="share of /process calls failing with a provider error")
    p.add_argument("--rate-limit-rate", type=float, help="share of /process calls answered 429")
    p.add_argument("--slow-rate", type=float, help="share of /process calls made slow")
    p.add_argument("--slow-ms", type=int, help="latency of a slow call")
    return p


def config_from_args(args: argparse.Namespace) -> EmulatorConfig:
    """Merge the config file (if any) with the command-line options."""
    config = EmulatorConfig.model_validate_json(args.config.read_text()) if args.config else EmulatorConfig()
    fields = {
        "state_dir": args.state_dir, "latency": args.latency, "latency_ms": args.latency_ms,
        "time_scale": args.time_scale, "image_size": args.image_size, "upload_max_bytes": args.upload_max_bytes,
        "admin_token": args.admin_token, "demo_credits": args.demo_credits,
        "demo_rate_limit_per_minute": args.demo_rate_limit,
        "safety_words": tuple(w.strip() for w in args.safety_words.split(",") if w.strip())
        if args.safety_words is not None else None,
    }
    plan_fields = {
        "seed": args.seed, "drop_after_complete_rate": args.drop_rate,
        "provider_error_rate": args.provider_error_rate, "rate_limit_rate": args.rate_limit_rate,
        "slow_rate": args.slow_rate, "slow_ms": args.slow_ms,
    }
    update: dict[str, Any] = {k: v for k, v in fields.items() if v is not None}
    plan_update = {k: v for k, v in plan_fields.items() if v is not None}
    if plan_update:
        update["faults"] = FaultPlan.model_validate({**config.faults.model_dump(), **plan_update})
    return EmulatorConfig.model_validate({**config.model_dump(), **update})


def main(argv: list[str] | None = None) -> int:
    """Run the emulator until SIGINT or SIGTERM; returns the exit status."""
    args = build_parser().parse_args(argv)
    config = config_from_args(args)
    stop = threading.Event()
    signal.signal(signal.SIGTERM, lambda *_: stop.set())
    signal.signal(signal.SIGINT, lambda *_: stop.set())
    server = EmulatorServer(config, host=args.host, port=args.port, storage_port=args.storage_port).start()
    try:
        print(f"FLOKAN_BASE_URL={server.base_url}", flush=True)
        print(f"FLOKAN_STORAGE_URL={server.storage_url}", flush=True)
        print(f"FLOKAN_API_KEY={DEMO_API_KEY}", flush=True)
        print(f"FLOKAN_ADMIN_TOKEN={config.admin_token}", flush=True)
        print(f"FLOKAN_STATE_DIR={server.state_dir}", flush=True)
        print("FLOKAN_EMULATOR_READY=1", flush=True)
        origin = server.base_url.removesuffix("/api/v1/image-editor")
        print(
            f"\nFlokan emulator serving {server.base_url}\n"
            f"  demo API key: {DEMO_API_KEY}\n"
            f"  storage host: {server.storage_url}\n"
            f"  OpenAPI:      {origin}/openapi.json\n"
            f"  latency:      {config.latency_ms if config.latency_ms is not None else config.latency}"
            f" (x{config.time_scale})\n"
            f"  state:        {server.state_dir}\n"
            "Press Ctrl+C to stop.",
            flush=True,
        )
        stop.wait()
    finally:
        server.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
