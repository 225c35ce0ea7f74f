"""Self-describing events, quarantined spool files and one job per row (issue 10's ledger parts)."""

from __future__ import annotations

import dataclasses
import itertools
import random
import subprocess
import sys
from pathlib import Path

import duckdb
import pytest

from flokan_dagster.cli import main as cli_main
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.ledger.journal import apply_events
from flokan_dagster.ledger.records import LedgerEvent, external_attempt_id
from flokan_dagster.ledger.schema import ensure_schema
from flokan_dagster.ledger.spool import sku_tag
from tests.test_ledger_contention import lock_held


def test_every_event_carries_the_attempts_identity_so_a_finish_alone_rebuilds_the_row(tmp_path: Path) -> None:
    database = str(tmp_path / "ledger.duckdb")
    ledger = CreditLedger(database)
    aid = ledger.begin_attempt(asset="images", sku="MUG-1", prompt="p", model_tier="pro", fingerprint="fp", run_id="r1")
    ledger.finish_attempt(aid, status="completed", job_id="j1", credits_consumed=50)
    # Another process (the sensor) settling a second attempt it did not begin reads the identity back.
    other = ledger.begin_attempt(asset="images", sku="MUG-2", prompt="p", model_tier="pro", fingerprint="fp2", run_id="r1")
    ledger.finish_attempt(other, status="unknown", error="timeout")
    subprocess.run(
        [sys.executable, "-c", "import sys; from flokan_dagster.ledger import CreditLedger; "
         "CreditLedger(sys.argv[1]).settle_attempt(sys.argv[2], {'job_id': 'j2', 'status': 'completed', 'credits_consumed': 40})",
         database, other],
        check=True, cwd=Path(__file__).resolve().parents[1],
    )
    with duckdb.connect(database, read_only=True) as conn:
        events = [LedgerEvent.from_json(r[0]) for r in conn.execute("SELECT payload FROM attempt_events").fetchall()]
    for event in events:
        assert {k: event.fields.get(k) for k in ("asset", "run_id")} == {"asset": "images", "run_id": "r1"}, event
        assert event.fields.get("sku") in ("MUG-1", "MUG-2") and event.fields.get("fingerprint") in ("fp", "fp2")

    # The begin event lost: the finish alone still says which SKU was paid for, and it is reusable.
    finish = next(e for e in events if e.kind == "finish" and e.attempt_id == aid)
    fresh = duckdb.connect()
    ensure_schema(fresh)
    apply_events(fresh, [finish])
    assert fresh.execute("SELECT asset, sku, fingerprint, run_id, status, job_id FROM attempts").fetchall() == [
        ("images", "MUG-1", "fp", "r1", "completed", "j1")]


def test_an_unreadable_spool_file_is_quarantined_and_blocks_only_its_sku_until_resolved(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    database = str(tmp_path / "ledger.duckdb")
    CreditLedger(database).flush_spool()
    ledger = CreditLedger(database, lock_timeout_s=0.0, read_timeout_s=5.0)
    with lock_held(database, 60.0):
        aid = ledger.begin_attempt(asset="images", sku="MUG 1/é", prompt="p", model_tier="pro", fingerprint="fp")
        ledger.finish_attempt(aid, status="completed", job_id="j1", credits_consumed=50)
        other = ledger.begin_attempt(asset="images", sku="MUG-2", prompt="p", model_tier="pro")
    begin_file = next(p for p in ledger.spool.directory.glob("*.event.json") if "~begin~" in p.name and sku_tag("images", "MUG 1/é") in p.name)
    begin_file.write_bytes(b"\x00\x17garbage")  # damaged beyond reading, the name still says what it was

    assert ledger.flush_spool() == 0
    blocks = ledger.quarantine_blocks("images", ["MUG 1/é", "MUG-2", "MUG-3"])
    assert list(blocks) == ["MUG 1/é"]
    assert begin_file.name in blocks["MUG 1/é"] and "ledger doctor --resolve" in blocks["MUG 1/é"]
    assert ledger.quarantine_blocks("other_asset", ["MUG 1/é"]) == {}
    # The file is kept, not deleted; the row is rebuilt from the finish and stays reusable.
    assert (ledger.spool.directory / "quarantine" / begin_file.name).read_bytes() == b"\x00\x17garbage"
    row = ledger.get_attempt(aid)
    assert row is not None and (row.sku, row.fingerprint, row.status, row.job_id) == ("MUG 1/é", "fp", "completed", "j1")
    assert ledger.get_attempt(other).status == "pending"

    assert cli_main(["ledger", "doctor", "--ledger", database]) == 1
    shown = capsys.readouterr().out
    assert begin_file.name in shown and "begin event" in shown and "1 quarantined" in shown
    assert cli_main(["ledger", "doctor", "--ledger", database, "--resolve", begin_file.name, "--note", "job j1 is in the ledger"]) == 0
    assert "Its SKUs may be generated again" in capsys.readouterr().out
    assert ledger.quarantine_blocks("images", ["MUG 1/é"]) == {}
    assert (ledger.spool.directory / "resolved" / begin_file.name).exists()
    assert "job j1 is in the ledger" in (ledger.spool.directory / "resolved" / f"{begin_file.name}.why").read_text()
    assert cli_main(["ledger", "doctor", "--ledger", database]) == 0


def test_a_quarantined_file_revealing_nothing_blocks_every_sku_and_legible_remains_narrow_it(tmp_path: Path) -> None:
    ledger = CreditLedger(str(tmp_path / "ledger.duckdb"))
    ledger.spool.directory.mkdir(parents=True)
    # Named as before tags existed and unreadable: it may concern anything.
    (ledger.spool.directory / f"{1:020d}-abc.event.json").write_bytes(b"\xff\xfe")
    # A truncated event whose SKU is still legible.
    event = LedgerEvent.create("a9", "finish", {"status": "completed", "asset": "images", "sku": "TEE-9"})
    (ledger.spool.directory / f"{2:020d}-def.event.json").write_text(event.to_json()[:-40])
    # A job seen in GET /jobs (no SKU): blocks nothing.
    external = LedgerEvent.create("x1", "external", {"status": "completed", "job_id": "j"})
    (ledger.spool.directory / f"{3:020d}-ghi~external~none.event.json").write_text(external.to_json()[:10])
    assert ledger.spooled_count() == 3
    assert ledger.quarantine_blocks("hero", ["A", "B"]).keys() == {"A", "B"}
    names = [f.name for f in ledger.quarantined_files()]
    assert len(names) == 3
    ledger.resolve_quarantined(names[0])
    assert ledger.quarantine_blocks("hero", ["A", "TEE-9"]) == {}
    assert list(ledger.quarantine_blocks("images", ["A", "TEE-9"])) == ["TEE-9"]


DIRECT = "finish"


def job_events() -> list[LedgerEvent]:
    """Two attempts claiming one job: one adopted it (settle), the other got it as its answer."""
    return [
        LedgerEvent.create("adopter", "begin", {"status": "pending", "asset": "images", "sku": "A", "origin": "dagster"}),
        LedgerEvent.create("adopter", "finish", {"status": "unknown", "asset": "images", "sku": "A", "error": "timeout"}),
        LedgerEvent.create("adopter", "settle", {"status": "completed", "job_id": "j1", "credits_consumed": 40,
                                                 "origin": "reconciled", "asset": "images", "sku": "A"}, clear=("error",)),
        LedgerEvent.create("direct", "begin", {"status": "pending", "asset": "images", "sku": "B", "origin": "dagster"}),
        LedgerEvent.create("direct", DIRECT, {"status": "completed", "job_id": "j1", "credits_consumed": 40,
                                              "asset": "images", "sku": "B"}),
        LedgerEvent.create("x", "external", {"status": "completed", "job_id": "j1", "credits_consumed": 40, "origin": "external"}),
    ]


def test_a_direct_answer_wins_a_job_over_an_adoption_whatever_order_events_arrive() -> None:
    events = job_events()
    # The external row's id must be the job's for the journal to fold it with the job's other rows.
    events[-1] = dataclasses.replace(events[-1], attempt_id=external_attempt_id("j1"))
    results = set()
    orders = list(itertools.permutations(range(len(events))))
    for order in random.Random(7).sample(orders, 24):
        conn = duckdb.connect()
        ensure_schema(conn)
        for i in order:
            apply_events(conn, [events[i]])
        apply_events(conn, events[:2])  # a replay changes nothing
        results.add(tuple(conn.execute(
            "SELECT attempt_id, status, job_id, credits_consumed, origin, error IS NOT NULL FROM attempts ORDER BY attempt_id"
        ).fetchall()))
    assert len(results) == 1
    rows = {r[0]: r for r in results.pop()}
    assert rows["direct"][1:5] == ("completed", "j1", 40, "dagster")
    assert rows["adopter"][1:6] == ("unknown", None, None, "dagster", True)
    assert set(rows) == {"direct", "adopter"}  # the external row yields to the attempt


def test_the_spool_overlay_keeps_one_attempt_per_job_before_the_merge(tmp_path: Path) -> None:
    database = str(tmp_path / "ledger.duckdb")
    ledger = CreditLedger(database)
    adopter = ledger.begin_attempt(asset="images", sku="A", prompt="p", model_tier="pro")
    ledger.finish_attempt(adopter, status="unknown", error="timeout")
    ledger.settle_attempt(adopter, {"job_id": "j1", "status": "completed", "credits_consumed": 40})
    direct = ledger.begin_attempt(asset="images", sku="B", prompt="p", model_tier="pro")
    spooled = CreditLedger(database, lock_timeout_s=0.0, read_timeout_s=10.0)
    with lock_held(database, 60.0):
        spooled.finish_attempt(direct, status="completed", job_id="j1", credits_consumed=40)
    assert spooled.spooled_count() == 1
    rows = {r.attempt_id: r for r in spooled.attempts_for()}
    assert (rows[direct].job_id, rows[adopter].job_id, rows[adopter].status) == ("j1", None, "unknown")
    assert spooled.flush_spool() == 0
    rows = {r.attempt_id: r for r in spooled.attempts_for()}
    assert (rows[direct].job_id, rows[adopter].job_id, rows[adopter].status) == ("j1", None, "unknown")
    assert [a.attempt_id for a in spooled.unknown_attempts("images")] == [adopter]
