"""Running the emulator: in a background thread of this process (EmulatorServer) or as the
``flokan-emulator`` CLI in a subprocess (EmulatorProcess).

Example:
    >>> from flokan_dagster.emulator import EmulatorConfig, EmulatorServer
    >>> with EmulatorServer(EmulatorConfig(latency="zero")) as emu:
    ...     emu.base_url.endswith("/api/v1/image-editor")
    True
"""

from __future__ import annotations

import asyncio
import logging
import os
import queue
import socket
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import IO, Self

import httpx
import uvicorn

from flokan_dagster.emulator.admin import EmulatorAdmin
from flokan_dagster.emulator.app import build_api_app
from flokan_dagster.emulator.config import EmulatorConfig
from flokan_dagster.emulator.runtime import API_PREFIX, Runtime
from flokan_dagster.emulator.seed import seed_demo
from flokan_dagster.emulator.state import Store
from flokan_dagster.emulator.storage import build_storage_app

STATE_FILE = "flokan-emulator.sqlite3"


class _ExpectedDrop(logging.Filter):
    """Hide uvicorn's complaint about the responses drop_after_complete cuts short on purpose."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "returned without completing response" not in record.getMessage()


_EXPECTED_DROP = _ExpectedDrop()


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    # proto must be IPPROTO_TCP, not 0: asyncio only sets TCP_NODELAY on such sockets, and
    # without it every response waits out the peer's delayed ACK (about 40 ms).
    sock = socket.socket(family, socket.SOCK_STREAM, socket.IPPROTO_TCP)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind((host, port))
    sock.set_inheritable(True)
    return sock


def _url_host(host: str) -> str:
    if host in ("0.0.0.0", ""):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def _wait_until_up(urls: list[str], deadline: float) -> None:
    for url in urls:
        while True:
            try:
                if httpx.get(url, timeout=1.0).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"the emulator did not answer at {url}")
            time.sleep(0.02)


class EmulatorServer:
    """The emulator's two origins (API and storage) served by uvicorn in a background thread.

    Args:
        config: Emulator settings (defaults: fast latency, temporary state directory).
        host: Interface to bind both origins to.
        port: API origin port; 0 picks a free one (read ``base_url`` after ``start()``).
        storage_port: Storage origin port; 0 picks a free one.

    Example:
        >>> with EmulatorServer(EmulatorConfig(latency="zero")) as emu:
        ...     httpx.get(emu.base_url + "/jobs").status_code
        401
    """

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0, storage_port: int = 0
    ) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self.storage_port = storage_port
        self.base_url = ""
        self.storage_url = ""
        self.state_dir: Path | None = None
        self._tmp: tempfile.TemporaryDirectory[str] | None = None
        self._thread: threading.Thread | None = None
        self._servers: list[uvicorn.Server] = []
        self._runtime: Runtime | None = None
        self._admin: EmulatorAdmin | None = None

    @property
    def admin(self) -> EmulatorAdmin:
        """An EmulatorAdmin bound to this server (available after ``start()``)."""
        if self._admin is None:
            raise RuntimeError("start the emulator first")
        return self._admin

    @property
    def runtime(self) -> Runtime:
        """The live shared state (for in-process inspection in tests)."""
        if self._runtime is None:
            raise RuntimeError("start the emulator first")
        return self._runtime

    def start(self, timeout: float = 15.0) -> Self:
        """Bind both ports, open the state, seed the demo workspace and serve; returns when
        both origins answer."""
        if self.config.state_dir is None:
            self._tmp = tempfile.TemporaryDirectory(prefix="flokan-emulator-")
            self.state_dir = Path(self._tmp.name)
        else:
            self.state_dir = Path(self.config.state_dir)
        api_sock = _bind(self.host, self.port)
        storage_sock = _bind(self.host, self.storage_port)
        self.port, self.storage_port = api_sock.getsockname()[1], storage_sock.getsockname()[1]
        url_host = _url_host(self.host)
        self.base_url = f"http://{url_host}:{self.port}{API_PREFIX}"
        self.storage_url = f"http://{url_host}:{self.storage_port}"
        store = Store(self.state_dir / STATE_FILE)
        seed_demo(store, self.config)
        self._runtime = Runtime(self.config, store, self.storage_url)
        logging.getLogger("uvicorn.error").addFilter(_EXPECTED_DROP)
        self._servers = [
            uvicorn.Server(uvicorn.Config(app, log_level="warning", access_log=False, lifespan="off", ws="none",
                                          timeout_graceful_shutdown=1, backlog=4096, date_header=False))
            for app in (build_api_app(self._runtime), build_storage_app(self._runtime))
        ]
        sockets = [api_sock, storage_sock]

        async def serve() -> None:
            await asyncio.gather(*(s.serve(sockets=[sock]) for s, sock in zip(self._servers, sockets, strict=True)))

        self._thread = threading.Thread(target=asyncio.run, args=(serve(),), name="flokan-emulator", daemon=True)
        self._thread.start()
        _wait_until_up([f"http://{url_host}:{self.port}/_emulator/health", f"{self.storage_url}/_health"],
                       time.monotonic() + timeout)
        self._admin = EmulatorAdmin(self.base_url, self.config.admin_token)
        return self

    def stop(self) -> None:
        """Stop serving (jobs still running are abandoned and marked failed at the next start)."""
        for server in self._servers:
            server.should_exit = True
        if self._thread is not None:
            self._thread.join(timeout=15)
            self._thread = None
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self._runtime is not None:
            self._runtime.close()
            self._runtime.store.close()
            self._runtime = None
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()


class EmulatorProcess:
    """The emulator as a ``flokan-emulator`` subprocess (its own interpreter and GIL).

    Same attributes as EmulatorServer: ``base_url``, ``storage_url``, ``admin``, ``start()``,
    ``stop()``, context manager.

    Example:
        >>> with EmulatorProcess(EmulatorConfig(latency="zero")) as emu:
        ...     emu.api_key == "flk_demo_0000000000000000000000000000"
        True
    """

    def __init__(
        self, config: EmulatorConfig | None = None, host: str = "127.0.0.1", port: int = 0, storage_port: int = 0
    ) -> None:
        self.config = config or EmulatorConfig()
        self.host = host
        self.port = port
        self.storage_port = storage_port
        self.base_url = ""
        self.storage_url = ""
        self.api_key = ""
        self.state_dir: Path | None = None
        self._proc: subprocess.Popen[str] | None = None
        self._files: tempfile.TemporaryDirectory[str] | None = None
        self._admin: EmulatorAdmin | None = None

    @property
    def admin(self) -> EmulatorAdmin:
        """An EmulatorAdmin bound to the subprocess (available after ``start()``)."""
        if self._admin is None:
            raise RuntimeError("start the emulator first")
        return self._admin

    @property
    def log_path(self) -> Path:
        """The file the subprocess's stderr (uvicorn's log) goes to."""
        if self._files is None:
            raise RuntimeError("start the emulator first")
        return Path(self._files.name) / "stderr.log"

    def start(self, timeout: float = 30.0) -> Self:
        """Launch the CLI and wait for its ``FLOKAN_*=`` lines."""
        self._files = tempfile.TemporaryDirectory(prefix="flokan-emulator-proc-")
        config_path = Path(self._files.name) / "config.json"
        config_path.write_text(self.config.model_dump_json())
        cmd = [sys.executable, "-m", "flokan_dagster.emulator.cli", "--config", str(config_path),
               "--host", self.host, "--port", str(self.port), "--storage-port", str(self.storage_port)]
        stderr = open(self.log_path, "w")  # noqa: SIM115 - handed to the child, closed below
        # The child must import this very package even when it is not installed (a checkout).
        package_root = str(Path(__file__).resolve().parents[2])
        python_path = os.pathsep.join(p for p in (package_root, os.environ.get("PYTHONPATH")) if p)
        env = {**os.environ, "PYTHONUNBUFFERED": "1", "PYTHONPATH": python_path}
        self._proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=stderr, text=True, env=env)
        stderr.close()
        values = self._read_banner(self._proc.stdout, timeout)
        self.base_url = values["FLOKAN_BASE_URL"]
        self.storage_url = values["FLOKAN_STORAGE_URL"]
        self.api_key = values["FLOKAN_API_KEY"]
        self.state_dir = Path(values["FLOKAN_STATE_DIR"])
        self._admin = EmulatorAdmin(self.base_url, self.config.admin_token)
        return self

    def _read_banner(self, stdout: IO[str] | None, timeout: float) -> dict[str, str]:
        assert stdout is not None
        lines: queue.Queue[str | None] = queue.Queue()

        def pump() -> None:
            # Keep draining stdout for the child's whole life so it can never block on a full pipe.
            for line in stdout:
                lines.put(line)
            lines.put(None)

        threading.Thread(target=pump, name="flokan-emulator-stdout", daemon=True).start()
        values: dict[str, str] = {}
        deadline = time.monotonic() + timeout
        while "FLOKAN_EMULATOR_READY" not in values:
            try:
                line = lines.get(timeout=max(0.01, deadline - time.monotonic()))
            except queue.Empty:
                line = None
            if line is None:
                self.stop()
                raise RuntimeError(f"flokan-emulator did not start; see {self.log_path}")
            key, sep, value = line.strip().partition("=")
            if sep and key.startswith("FLOKAN_"):
                values[key] = value
        return values

    def stop(self) -> None:
        """Terminate the subprocess (SIGTERM, then SIGKILL after 10 s)."""
        if self._admin is not None:
            self._admin.close()
            self._admin = None
        if self._proc is not None:
            self._proc.terminate()
            try:
                self._proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self._proc.kill()
                self._proc.wait()
            self._proc = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc_info: object) -> None:
        self.stop()
