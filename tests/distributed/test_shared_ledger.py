"""The shared ledger backend on a real PostgreSQL: an unreachable server delays records through the
durable spool, and writer processes on "different machines" (separate spools) lose nothing."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from urllib.parse import urlsplit

import pytest

from flokan_dagster.ledger import CreditLedger, LedgerLockedError
from tests.servers import fresh_database

ROOT = Path(__file__).resolve().parents[2]


class TcpGate:
    """A loopback TCP forwarder to the PostgreSQL server that can be shut (the network drops)."""

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.port = self.listener.getsockname()[1]
        self.open = True
        self.connections: list[socket.socket] = []
        threading.Thread(target=self._accept, daemon=True).start()

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self.listener.accept()
            except OSError:
                return
            if not self.open:
                client.close()
                continue
            upstream = socket.create_connection(("127.0.0.1", self.target_port))
            self.connections += [client, upstream]
            for a, b in ((client, upstream), (upstream, client)):
                threading.Thread(target=self._pipe, args=(a, b), daemon=True).start()

    @staticmethod
    def _pipe(source: socket.socket, sink: socket.socket) -> None:
        try:
            while data := source.recv(65536):
                sink.sendall(data)
        except OSError:
            pass
        finally:
            for s in (source, sink):
                try:
                    s.shutdown(socket.SHUT_RDWR)
                except OSError:
                    pass

    def shut(self) -> None:
        """Refuse new connections and cut the open ones."""
        self.open = False
        for s in self.connections:
            try:
                s.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        self.connections.clear()

    def reopen(self) -> None:
        """Let connections through again."""
        self.open = True


def _through(gate: TcpGate, database: str) -> str:
    parts = urlsplit(database)
    return parts._replace(netloc=f"{parts.username}@127.0.0.1:{gate.port}").geturl()


def test_an_unreachable_server_delays_writes_in_the_spool_and_loses_none(postgres_dsn: str, tmp_path: Path) -> None:
    database = fresh_database(postgres_dsn)
    gate = TcpGate(urlsplit(database).port or 5432)
    ledger = CreditLedger(_through(gate, database), spool_dir=tmp_path / "spool", lock_timeout_s=0.5)
    first = ledger.begin_attempt(asset="images", sku="S1", prompt="p", model_tier="pro", estimated_credits=50)
    assert ledger.spool.count() == 0

    gate.shut()
    # The request was sent and charged; the outcome must survive the database being away.
    assert ledger.finish_attempt(first, status="completed", job_id="job-1", credits_consumed=50) is False
    # A request must not go out with a write-ahead record other machines cannot see: the begin
    # refuses (the caller sends nothing) and the attempt is kept as rejected, not as in flight.
    with pytest.raises(LedgerLockedError, match="did not take the write-ahead record"):
        ledger.begin_attempt(asset="images", sku="S2", prompt="p", model_tier="pro", attempt_id="never-sent")
    assert ledger.spool.count() == 3  # the finish, the refused begin and its rejection wait on local disk

    gate.reopen()
    assert ledger.flush_spool() == 0
    direct = CreditLedger(database, spool_dir=tmp_path / "other-spool")
    got = {a.attempt_id: a for a in direct.attempts_for()}
    assert got[first].status == "completed" and got[first].credits_consumed == 50 and got[first].job_id == "job-1"
    assert got["never-sent"].status == "rejected" and got["never-sent"].sku == "S2"
    assert got["never-sent"].credits_consumed == 0 and "not sent" in (got["never-sent"].error or "")
    third = ledger.begin_attempt(asset="images", sku="S3", prompt="p", model_tier="pro", merge=False)
    assert ledger.spool.count() == 0  # committed before returning, even when asked not to wait
    assert direct.get_attempt(third) is not None


_WRITER = """
import sys
from pathlib import Path
from flokan_dagster.ledger import CreditLedger
database, spool, worker, count = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
ledger = CreditLedger(database, spool_dir=Path(spool), lock_timeout_s=5)
for i in range(count):
    aid = ledger.begin_attempt(asset="images", sku=f"{worker}-{i}", prompt="p", model_tier="pro",
                               estimated_credits=50, attempt_id=f"{worker}-{i}")
    ledger.finish_attempt(aid, status="completed", job_id=f"job-{worker}-{i}", credits_consumed=i)
assert ledger.flush_spool() == 0
"""


def test_writer_processes_with_their_own_spools_lose_nothing(postgres_dsn: str, tmp_path: Path) -> None:
    database = fresh_database(postgres_dsn)
    workers, count = 4, 25
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", _WRITER, database, str(tmp_path / f"spool-{w}"), f"w{w}", str(count)], cwd=ROOT
        )
        for w in range(workers)
    ]
    assert [p.wait(timeout=240) for p in procs] == [0] * workers
    ledger = CreditLedger(database, spool_dir=tmp_path / "reader-spool")
    rows = ledger.attempts_for()
    assert len(rows) == workers * count
    assert all(r.status == "completed" and r.sku and r.job_id and r.estimated_credits == 50 for r in rows)
    assert sum(r.credits_consumed or 0 for r in rows) == workers * sum(range(count))
    events = ledger.read(lambda c: c.execute("SELECT count(*) FROM attempt_events").fetchone()[0])
    assert events == 2 * workers * count


def test_a_merge_that_waited_for_another_folds_the_events_that_one_committed(postgres_dsn: str, tmp_path: Path) -> None:
    """Merges from two machines of events of one attempt, queued behind a third: whichever runs
    second must see what the first committed while it waited (not a snapshot from before)."""
    from flokan_dagster.ledger.backend import open_database, serialize_writers
    from flokan_dagster.ledger.journal import apply_events
    from flokan_dagster.ledger.records import LedgerEvent

    database = fresh_database(postgres_dsn)
    CreditLedger(database, spool_dir=tmp_path / "s").flush_spool()  # the tables
    begin = LedgerEvent.create("a1", "begin", {"status": "pending", "sku": "MUG-1", "asset": "images",
                                                "estimated_credits": 50})  # fmt: skip
    finish = LedgerEvent.create("a1", "finish", {"status": "completed", "job_id": "job-1", "credits_consumed": 50})
    holder = open_database(database, read_only=False)
    holder.execute("BEGIN TRANSACTION")
    serialize_writers(holder)  # every merge below now waits for this one
    errors: list[BaseException] = []

    def merge(event: LedgerEvent) -> None:
        conn = open_database(database, read_only=False)
        try:
            apply_events(conn, [event])
        except BaseException as exc:  # noqa: BLE001 - reported by the test
            errors.append(exc)
        finally:
            conn.close()

    threads = [threading.Thread(target=merge, args=(e,)) for e in (finish, begin)]
    for thread in threads:
        thread.start()
    waiting = open_database(database, read_only=True)
    deadline = 60.0
    started = time.monotonic()
    while time.monotonic() - started < deadline:  # both merges are blocked on the lock
        blocked = waiting.execute(
            "SELECT * FROM postgres_query('flokan_ledger', 'SELECT count(*) FROM pg_locks WHERE locktype = ''advisory'' AND NOT granted')"
        ).fetchone()[0]
        if blocked == 2:
            break
        time.sleep(0.05)
    assert blocked == 2, "the two merges never queued behind the lock"
    holder.execute("COMMIT")
    for thread in threads:
        thread.join(timeout=60)
    assert not errors, errors
    row = CreditLedger(database, spool_dir=tmp_path / "s").get_attempt("a1")
    assert row is not None
    assert (row.status, row.sku, row.estimated_credits, row.job_id, row.credits_consumed) == (
        "completed", "MUG-1", 50, "job-1", 50)  # fmt: skip


def test_the_cli_reports_from_the_shared_ledger(postgres_dsn: str, tmp_path: Path) -> None:
    database = fresh_database(postgres_dsn)
    ledger = CreditLedger(database, spool_dir=tmp_path / "spool")
    attempt = ledger.begin_attempt(asset="hero_images", sku="MUG-1", prompt="p", model_tier="pro")
    ledger.finish_attempt(attempt, status="completed", job_id="job-1", credits_consumed=50)
    env = {**os.environ, "FLOKAN_LEDGER_DATABASE": database, "FLOKAN_LEDGER_SPOOL_DIR": str(tmp_path / "cli-spool"),
           "FLOKAN_DATA_DIR": str(tmp_path / "data")}  # fmt: skip
    out = subprocess.run([sys.executable, "-m", "flokan_dagster.cli", "report", "--json"], env=env, cwd=ROOT,
                         capture_output=True, text=True, timeout=120)  # fmt: skip
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout)["credits"] == 50
