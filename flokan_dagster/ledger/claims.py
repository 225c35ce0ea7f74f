"""Claims: which run may spend on a SKU right now, held in the ledger and judged on evidence.

Before a run sends anything it claims each (asset, SKU) it will spend on, atomically (never
through the spool: a claim must be decided, not deferred): as files beside a local ledger
(:class:`FileClaims`), or in the ``claims`` table of a shared one, in one transaction. A
SKU claimed by another live run is refused by name. A claim is released when its run finishes;
one held by a dead run is taken over on *evidence*, never by a long timer: the Dagster run is
finished in the instance, or its process is gone (same host: pid and process start time), or,
from another host, its heartbeat stopped.

Example:
    >>> me = ProcessIdentity.current()
    >>> claim = Claim("images", "MUG-1", "fp1", "run-1", me.hostname, me.pid, me.started,
    ...               utc_now(), utc_now())
    >>> holder_evidence(claim).alive  # this process holds no live run "run-1"
    False
"""

from __future__ import annotations

import os
import socket
import threading
from collections import Counter
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path
from typing import Final

import duckdb

from flokan_dagster.ledger.records import utc_now

CLAIMS_TABLE: Final = """
    CREATE TABLE IF NOT EXISTS claims (
        asset VARCHAR NOT NULL,
        sku VARCHAR NOT NULL,
        fingerprint VARCHAR,
        run_id VARCHAR NOT NULL,
        hostname VARCHAR,
        pid BIGINT,
        process_started BIGINT,
        claimed_at TIMESTAMP NOT NULL,
        heartbeat_at TIMESTAMP NOT NULL
    )
"""
_COLUMNS: Final = (
    "asset", "sku", "fingerprint", "run_id", "hostname", "pid", "process_started", "claimed_at", "heartbeat_at",
)  # fmt: skip
_SELECT: Final = ", ".join(_COLUMNS)

#: How often a run refreshes its claims' heartbeat, and how old a heartbeat from another host
#: may be before its run counts as dead (several missed beats, not one slow one).
HEARTBEAT_EVERY_S: Final = 20.0
HEARTBEAT_STALE_S: Final = 120.0

# Runs holding claims in this process: a claim naming this very process is alive only while its
# run is here (a finished run of a long-lived process, e.g. a test or a code server, is not).
_LIVE_RUNS: Counter[str] = Counter()
_LIVE_RUNS_LOCK = threading.Lock()


@dataclass(frozen=True)
class ProcessIdentity:
    """Who holds a claim: host, pid and the process's start time (a reused pid differs in it)."""

    hostname: str
    pid: int
    started: int | None

    @classmethod
    def current(cls) -> ProcessIdentity:
        """This process. Its host key includes the pid namespace: a container sharing the host's
        name (``--network host``, a hostNetwork pod) has pids that mean nothing here."""
        return cls(host_key(), os.getpid(), process_start_ticks(os.getpid()))


def host_key() -> str:
    """The host name, plus the pid namespace where one shows (``w1 pid:[4026531836]``).

    Example:
        >>> host_key().startswith(socket.gethostname())
        True
    """
    try:
        namespace = os.readlink("/proc/self/ns/pid")
    except OSError:
        return socket.gethostname()
    return f"{socket.gethostname()} {namespace}"


@dataclass(frozen=True)
class Claim:
    """One row of the ``claims`` table."""

    asset: str
    sku: str
    fingerprint: str | None
    run_id: str
    hostname: str | None
    pid: int | None
    process_started: int | None
    claimed_at: datetime
    heartbeat_at: datetime


@dataclass(frozen=True)
class Liveness:
    """Whether a claim's run is alive, and the evidence, in words for the user."""

    alive: bool
    why: str


@dataclass
class ClaimOutcome:
    """What a run's claim step got.

    Attributes:
        granted: SKU -> the claim taken over from a dead run (None when the SKU was free or ours).
        refused: SKU -> why it is not sent (held by a live run, or the ledger stayed locked).
    """

    granted: dict[str, Claim | None] = field(default_factory=dict)
    refused: dict[str, str] = field(default_factory=dict)


Judge = Callable[[Claim], Liveness]


def process_start_ticks(pid: int) -> int | None:
    """The process's start time in clock ticks since boot (Linux), or None where unknown."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) may hold spaces and parentheses: split after its last ')'.
    fields = stat[stat.rfind(")") + 2 :].split()
    try:
        return int(fields[19])
    except (IndexError, ValueError):
        return None


def _process_state(pid: int, started: int | None) -> str:
    """``gone`` (no such process, a zombie, or its pid reused) or ``alive``."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return "gone"
    except PermissionError:
        pass  # exists, belongs to another user
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
        if stat[stat.rfind(")") + 2 :].split()[0] in ("Z", "X"):
            return "gone"
    except (OSError, IndexError):
        pass
    current = process_start_ticks(pid)
    if started is not None and current is not None and current != started:
        return "gone"
    return "alive"


def holder_evidence(claim: Claim, now: datetime | None = None, heartbeat_stale_s: float = HEARTBEAT_STALE_S) -> Liveness:
    """Whether the process holding ``claim`` still runs, judged without Dagster.

    Same host: the pid and its start time (this very process: whether the run is still here).
    Another host: the heartbeat the run refreshes every ``HEARTBEAT_EVERY_S``.
    """
    me = ProcessIdentity.current()
    where = f"process {claim.pid} on host {claim.hostname}"
    if claim.hostname == me.hostname and claim.pid is not None:
        if claim.pid == me.pid and claim.process_started == me.started:
            with _LIVE_RUNS_LOCK:
                here = _LIVE_RUNS[claim.run_id] > 0
            return Liveness(here, f"its {where} (this process) {'is running it' if here else 'runs it no more'}")
        state = _process_state(claim.pid, claim.process_started)
        return Liveness(state == "alive", f"its {where} is {state}")
    age_s = ((now or utc_now()) - claim.heartbeat_at).total_seconds()
    if age_s > heartbeat_stale_s:
        return Liveness(False, f"its heartbeat from {where} stopped {age_s:.0f} s ago")
    return Liveness(True, f"its heartbeat from {where} came {age_s:.0f} s ago")


@contextmanager
def live_run(run_id: str) -> Iterator[None]:
    """Mark ``run_id`` as running in this process while the block runs (for :func:`holder_evidence`)."""
    with _LIVE_RUNS_LOCK:
        _LIVE_RUNS[run_id] += 1
    try:
        yield
    finally:
        with _LIVE_RUNS_LOCK:
            _LIVE_RUNS[run_id] -= 1
            if _LIVE_RUNS[run_id] <= 0:
                del _LIVE_RUNS[run_id]


class ClaimHold:
    """A run's hold on its claims: marks the run live in this process, refreshes the claims'
    heartbeat every ``every_s`` in a background thread, and releases them on :meth:`close`.

    Args:
        run_id: The run.
        beat: Refreshes the heartbeat (e.g. ``lambda: ledger.heartbeat_claims(run_id, asset)``).
        release: Releases the claims (e.g. ``lambda: ledger.release_claims(run_id, asset)``).
        every_s: Seconds between heartbeats.
    """

    def __init__(
        self, run_id: str, beat: Callable[[], object], release: Callable[[], object], every_s: float = HEARTBEAT_EVERY_S
    ) -> None:
        self.run_id = run_id
        self._release = release
        self._stop = threading.Event()
        self._live = live_run(run_id)
        self._live.__enter__()

        def loop() -> None:
            while not self._stop.wait(every_s):
                try:
                    beat()
                except Exception:  # noqa: BLE001 - a missed beat is retried; a stale one only lets a claim go
                    pass

        self._thread = threading.Thread(target=loop, name=f"claims-heartbeat-{run_id[:8]}", daemon=True)
        self._thread.start()

    def close(self) -> None:
        """Stop the heartbeat, release the claims and mark the run gone from this process."""
        if self._stop.is_set():
            return
        self._stop.set()
        self._thread.join()
        try:
            self._release()
        finally:
            self._live.__exit__(None, None, None)


class FileClaims:
    """Claims of a ledger kept in a local file: one small file per claimed SKU beside it.

    A reader holding the DuckDB file (an analyst's notebook) must not stop runs from claiming,
    and a claim needs a transaction, not the spool: so claims on a local ledger are files in
    ``<database>.claims/``, changed only under an exclusive ``flock`` of ``.lock`` there (held for
    milliseconds, by the claiming process alone) and replaced atomically, so readers never see
    half a claim. A shared (remote) ledger keeps them in its ``claims`` table instead.

    Args:
        directory: The claims directory.
    """

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    @contextmanager
    def _locked(self, timeout_s: float) -> Iterator[None]:
        import fcntl
        import time

        from flokan_dagster.ledger.connection import LedgerLockedError

        self.directory.mkdir(parents=True, exist_ok=True)
        deadline = time.monotonic() + timeout_s
        with open(self.directory / ".lock", "a+") as handle:
            while True:
                try:
                    fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LedgerLockedError(f"claims {self.directory} stayed locked for {timeout_s:.1f}s") from None
                    time.sleep(0.01)
            try:
                yield
            finally:
                fcntl.flock(handle.fileno(), fcntl.LOCK_UN)

    def _path(self, asset: str, sku: str) -> Path:
        import hashlib

        return self.directory / (hashlib.sha256(f"{asset}\0{sku}".encode()).hexdigest()[:40] + ".json")

    def _load(self, path: Path) -> Claim | None:
        import json

        try:
            data = json.loads(path.read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None
        for key in ("claimed_at", "heartbeat_at"):
            data[key] = datetime.fromisoformat(data[key])
        return Claim(**{name: data.get(name) for name in _COLUMNS})  # type: ignore[arg-type]

    def _store(self, claim: Claim) -> None:
        import json

        path = self._path(claim.asset, claim.sku)
        temporary = path.with_suffix(f".{os.getpid()}.tmp")
        data = {name: getattr(claim, name) for name in _COLUMNS}
        data.update(claimed_at=claim.claimed_at.isoformat(), heartbeat_at=claim.heartbeat_at.isoformat())
        temporary.write_text(json.dumps(data), encoding="utf-8")
        os.replace(temporary, path)

    def claims_for(self, asset: str, skus: list[str]) -> dict[str, Claim]:
        """The current claims on ``skus`` of ``asset``."""
        found = {}
        for sku in skus:
            held = self._load(self._path(asset, sku))
            if held is not None:
                found[sku] = held
        return found

    def _all(self) -> list[tuple[Path, Claim]]:
        if not self.directory.is_dir():
            return []
        return [(path, c) for path in self.directory.glob("*.json") if (c := self._load(path)) is not None]

    def claim(
        self, asset: str, run_id: str, fingerprints: Mapping[str, str | None], judge: Judge, holder: ProcessIdentity,
        timeout_s: float,
    ) -> ClaimOutcome:
        """Like :func:`claim`, on the files."""
        outcome = ClaimOutcome()
        with self._locked(timeout_s):
            now = utc_now()
            held = self.claims_for(asset, list(fingerprints))
            for sku, fingerprint in fingerprints.items():
                current = held.get(sku)
                if current is not None and current.run_id != run_id:
                    liveness = judge(current)
                    if liveness.alive:
                        outcome.refused[sku] = _refusal(sku, current, liveness)
                        continue
                outcome.granted[sku] = current if current is not None and current.run_id != run_id else None
                self._store(Claim(asset, sku, fingerprint, run_id, holder.hostname, holder.pid, holder.started, now, now))
        return outcome

    def release(self, run_id: str, asset: str, timeout_s: float) -> int:
        """Drop the claims of ``run_id`` on ``asset``."""
        with self._locked(timeout_s):
            mine = [path for path, c in self._all() if c.run_id == run_id and c.asset == asset]
            for path in mine:
                path.unlink(missing_ok=True)
        return len(mine)

    def heartbeat(self, run_id: str, asset: str, timeout_s: float) -> None:
        """Refresh the heartbeat of ``run_id``'s claims on ``asset``."""
        import dataclasses as _dc

        with self._locked(timeout_s):
            now = utc_now()
            for _, c in self._all():
                if c.run_id == run_id and c.asset == asset:
                    self._store(_dc.replace(c, heartbeat_at=now))


def _refusal(sku: str, current: Claim, liveness: Liveness) -> str:
    return (
        f"SKU {sku!r} is being generated by run {current.run_id} (claimed {current.claimed_at:%Y-%m-%d %H:%M:%S} UTC; "
        f"it counts as alive because {liveness.why}); not sending a second request"
    )


def claims_for(conn: duckdb.DuckDBPyConnection, asset: str, skus: list[str]) -> dict[str, Claim]:
    """The current claims on ``skus`` of ``asset``."""
    rows = conn.execute(
        f"SELECT {_SELECT} FROM claims WHERE asset = ? AND sku IN (SELECT unnest(?))", [asset, skus]
    ).fetchall()
    return {row[1]: Claim(*row) for row in rows}


def claim(
    conn: duckdb.DuckDBPyConnection,
    asset: str,
    run_id: str,
    fingerprints: Mapping[str, str | None],
    judge: Judge,
    holder: ProcessIdentity,
) -> ClaimOutcome:
    """Claim ``fingerprints``' SKUs for ``run_id`` inside the caller's read-write transaction.

    A SKU free or already ours is granted; one held by a run ``judge`` finds dead is taken over
    (the old claim is returned so its attempt is settled before anything is paid); one held by a
    live run is refused with the evidence.
    """
    outcome = ClaimOutcome()
    now = utc_now()
    held = claims_for(conn, asset, list(fingerprints))
    fresh: list[str] = []
    for sku, fingerprint in fingerprints.items():
        current = held.get(sku)
        if current is None:
            fresh.append(sku)
            outcome.granted[sku] = None
            continue
        if current.run_id != run_id:
            liveness = judge(current)
            if liveness.alive:
                outcome.refused[sku] = _refusal(sku, current, liveness)
                continue
            outcome.granted[sku] = current
        else:
            outcome.granted[sku] = None
        conn.execute(
            "UPDATE claims SET fingerprint = ?, run_id = ?, hostname = ?, pid = ?, process_started = ?, claimed_at = ?,"
            " heartbeat_at = ? WHERE asset = ? AND sku = ?",
            [fingerprint, run_id, holder.hostname, holder.pid, holder.started, now, now, asset, sku],
        )
    if fresh:
        columns = ", ".join(f"unnest(?) AS {c}" for c in _COLUMNS)
        conn.execute(
            f"INSERT INTO claims ({_SELECT}) SELECT * FROM (SELECT {columns})",
            [
                [asset] * len(fresh), fresh, [fingerprints[s] for s in fresh], [run_id] * len(fresh),
                [holder.hostname] * len(fresh), [holder.pid] * len(fresh), [holder.started] * len(fresh),
                [now] * len(fresh), [now] * len(fresh),
            ],
        )  # fmt: skip
    return outcome


def release(conn: duckdb.DuckDBPyConnection, run_id: str, asset: str) -> int:
    """Drop the claims of ``run_id`` on ``asset``; returns how many there were.

    Per asset: another step of the same run (another asset) may still be sending.
    """
    row = conn.execute("SELECT count(*) FROM claims WHERE run_id = ? AND asset = ?", [run_id, asset]).fetchone()
    conn.execute("DELETE FROM claims WHERE run_id = ? AND asset = ?", [run_id, asset])
    return int(row[0]) if row else 0


def heartbeat(conn: duckdb.DuckDBPyConnection, run_id: str, asset: str) -> None:
    """Refresh the heartbeat of the claims of ``run_id`` on ``asset``."""
    conn.execute("UPDATE claims SET heartbeat_at = ? WHERE run_id = ? AND asset = ?", [utc_now(), run_id, asset])


__all__ = [
    "CLAIMS_TABLE",
    "HEARTBEAT_EVERY_S",
    "HEARTBEAT_STALE_S",
    "Claim",
    "ClaimHold",
    "ClaimOutcome",
    "FileClaims",
    "Judge",
    "Liveness",
    "ProcessIdentity",
    "claim",
    "claims_for",
    "heartbeat",
    "holder_evidence",
    "live_run",
    "process_start_ticks",
    "release",
]
