"""The embedded default: find or start a local Flokan emulator for users without an account.

Every process that loads the demo definitions (``dagster dev``'s code server, each run worker,
the CLI) asks for the emulator; the first starts it in the background with its state under the
data directory, the others find it through ``emulator.json``. A file lock keeps two processes
from starting two emulators.

Example:
    >>> emulator = ensure_local_emulator(Path(".data"))  # doctest: +SKIP
    >>> emulator.base_url  # doctest: +SKIP
    'http://127.0.0.1:41234/api/v1/image-editor'
"""

import fcntl
import json
import os
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import httpx

_INFO = "emulator.json"


@dataclass(frozen=True)
class LocalEmulator:
    """Where the running local emulator answers."""

    base_url: str
    storage_url: str
    api_key: str
    pid: int


def ensure_local_emulator(data_dir: Path, timeout_s: float = 60.0) -> LocalEmulator:
    """Return the running local emulator for ``data_dir``, starting it first if needed."""
    data_dir.mkdir(parents=True, exist_ok=True)
    with (data_dir / "emulator.lock").open("w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        running = _running(data_dir)
        if running is not None:
            return running
        return _start(data_dir, timeout_s)


def stop_local_emulator(data_dir: Path) -> bool:
    """Stop the local emulator of ``data_dir``; False if none was running."""
    running = _running(data_dir)
    (data_dir / _INFO).unlink(missing_ok=True)
    if running is None:
        return False
    try:
        os.kill(running.pid, signal.SIGTERM)
    except ProcessLookupError:
        return False
    return True


def _running(data_dir: Path) -> LocalEmulator | None:
    try:
        info = LocalEmulator(**json.loads((data_dir / _INFO).read_text()))
    except (OSError, ValueError, TypeError):
        return None
    try:
        response = httpx.get(
            info.base_url + "/jobs", params={"per_page": 1},
            headers={"Authorization": f"Bearer {info.api_key}"}, timeout=2.0,
        )  # fmt: skip
    except httpx.HTTPError:
        return None
    return info if response.status_code in (200, 429) else None


def _start(data_dir: Path, timeout_s: float) -> LocalEmulator:
    banner = data_dir / "emulator.out"
    banner.unlink(missing_ok=True)
    command = [sys.executable, "-m", "flokan_dagster.emulator.cli", "--state-dir", str(data_dir / "emulator"),
               "--latency", "fast"]  # fmt: skip
    with banner.open("w") as out, (data_dir / "emulator.log").open("a") as log:
        # Its own session: the emulator outlives the process that started it (a short run worker).
        process = subprocess.Popen(command, stdout=out, stderr=log, stdin=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + timeout_s
    values: dict[str, str] = {}
    while "FLOKAN_EMULATOR_READY" not in values:
        if process.poll() is not None:
            raise RuntimeError(f"the local Flokan emulator exited ({process.returncode}); see {data_dir / 'emulator.log'}")
        if time.monotonic() > deadline:
            process.terminate()
            raise RuntimeError(f"the local Flokan emulator did not start within {timeout_s:.0f}s")
        time.sleep(0.1)
        for line in banner.read_text().splitlines():
            key, sep, value = line.partition("=")
            if sep:
                values[key.strip()] = value.strip()
    info = LocalEmulator(values["FLOKAN_BASE_URL"], values["FLOKAN_STORAGE_URL"], values["FLOKAN_API_KEY"], process.pid)
    (data_dir / _INFO).write_text(json.dumps(info.__dict__))
    return info
