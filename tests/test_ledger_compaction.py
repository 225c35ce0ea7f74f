"""Compacting a ledger file (``ledger/compaction.py``) changes the attempts' order and nothing else.

What must hold: every row survives a compaction exactly (every column), in one transaction that a
failed check or a SIGKILL rolls back whole; writers that find the ledger held spool and merge
afterwards without losing a record; the table keeps its primary key, so later writes update rows
as before; a compaction that is not due does nothing; and runs read a batch of neighbouring SKUs
whole from a compacted file, planning the same as from every attempt (``test_scale_queries``
runs its equality checks on a compacted ledger too).
"""

from __future__ import annotations

import random
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import duckdb
import pytest

from flokan_dagster.ledger import CreditLedger, LedgerCompactionError, compaction
from flokan_dagster.ledger.compaction import SORT_ORDER, layout
from flokan_dagster.ledger.locking import LedgerFileLock, LockTimeout
from flokan_dagster.ledger.records import COLUMNS
from tests.servers import ledger_on

PROJECT = Path(__file__).resolve().parent.parent
_ALL = ", ".join(COLUMNS)


def small_ledger(path: Path) -> CreditLedger:
    """Attempts over two assets and six SKUs written out of SKU order, some settled, some not."""
    ledger = CreditLedger(str(path))
    rng = random.Random(3)
    for n in range(30):
        sku = f"SKU-{rng.randint(0, 5)}"
        aid = ledger.begin_attempt(asset=rng.choice(["hero", "life"]), sku=sku, prompt="p", model_tier="pro",
                                   fingerprint=f"fp{n % 2}", run_id=f"run-{n // 5}", estimated_credits=20)  # fmt: skip
        if n % 4:
            ledger.finish_attempt(aid, status="completed" if n % 3 else "failed", job_id=f"job-{n}",
                                  credits_consumed=20, result_image_id=f"img-{n}")  # fmt: skip
    ledger.record_external_jobs([{"job_id": "ext-1", "status": "completed", "credits_consumed": 7}])
    return ledger


def table_rows(path: Path) -> list[tuple[object, ...]]:
    """Every attempt row, every column, in the table's physical order."""
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute(f"SELECT {_ALL} FROM attempts").fetchall()


def journal_rows(path: Path) -> list[tuple[object, ...]]:
    """Every journalled event, by id."""
    with duckdb.connect(str(path), read_only=True) as conn:
        return conn.execute("SELECT * FROM attempt_events ORDER BY event_id").fetchall()


def placed(rows: list[tuple[object, ...]]) -> list[tuple[object, ...]]:
    """(asset, SKU) of each row, None as DuckDB sorts it (last), comparable in Python."""
    return [(r[2] is None, r[2] or "", r[3] is None, r[3] or "") for r in rows]


def big_ledger(path: Path, rows: int) -> CreditLedger:
    """A ledger of ``rows`` generated attempts (SQL, no API), so that a compaction takes a while."""
    ledger = CreditLedger(str(path))
    ledger.begin_attempt(asset="hero", sku="SKU-seed", prompt="p", model_tier="pro")
    with duckdb.connect(str(path)) as conn:
        conn.execute(
            """INSERT INTO attempts (attempt_id, asset, sku, fingerprint, prompt, model_tier, job_id, status,
                                     credits_consumed, origin, recorded_at, updated_at, revision)
               SELECT 'gen-' || i, 'hero', 'SKU-' || lpad(((i * 7919) % 20000)::VARCHAR, 5, '0'), md5(i::VARCHAR),
                      'p', 'pro', 'job-' || i, 'completed', 20, 'dagster',
                      TIMESTAMP '2025-01-01' + to_seconds(i), TIMESTAMP '2025-01-01' + to_seconds(i), 1
               FROM range(?) t(i)""",
            [rows],
        )
    return ledger


def test_a_compaction_keeps_every_row_and_sorts_them(tmp_path: Path) -> None:
    database = tmp_path / "ledger.duckdb"
    ledger = small_ledger(database)
    before = table_rows(database)
    assert placed(before) != sorted(placed(before)), "written out of order to begin with"
    journal = journal_rows(database)

    done = ledger.compact(force=True)

    assert done.compacted and done.before.rows == len(before) and done.seconds > 0
    after = table_rows(database)
    assert sorted(map(repr, after)) == sorted(map(repr, before))
    assert placed(after) == sorted(placed(after))
    # The journal is untouched, and no table of the rewrite is left behind.
    assert journal_rows(database) == journal
    with duckdb.connect(str(database), read_only=True) as conn:
        assert layout(conn).unsorted_rows == 0
        assert {r[0] for r in conn.execute("SELECT table_name FROM duckdb_tables()").fetchall()} >= {"attempts", "attempts_layout"}
        assert conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'attempts_compacted'").fetchone() == (0,)


def test_the_compacted_table_keeps_its_key_and_takes_later_writes(tmp_path: Path) -> None:
    database = tmp_path / "ledger.duckdb"
    ledger = small_ledger(database)
    pending = next(a for a in ledger.attempts_for() if a.status == "pending")
    assert ledger.compact(force=True).compacted

    assert ledger.finish_attempt(pending.attempt_id, status="completed", job_id="job-late", credits_consumed=20)
    fresh = ledger.begin_attempt(asset="hero", sku="SKU-9", prompt="p", model_tier="pro")
    rows = table_rows(database)
    assert sum(1 for r in rows if r[0] == pending.attempt_id) == 1, "one row per attempt, updated in place"
    assert ledger.get_attempt(pending.attempt_id).status == "completed"
    assert ledger.get_attempt(fresh).status == "pending"
    with duckdb.connect(str(database)) as conn, pytest.raises(duckdb.ConstraintException):
        conn.execute(f"INSERT INTO attempts SELECT * FROM attempts WHERE attempt_id = '{fresh}'")
    with duckdb.connect(str(database), read_only=True) as conn:
        assert layout(conn).unsorted_rows == 1  # the new attempt; the rewritten one keeps the count


def test_a_failed_check_rolls_the_compaction_back(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    database = tmp_path / "ledger.duckdb"
    ledger = small_ledger(database)
    before = table_rows(database)
    real = compaction._digest
    monkeypatch.setattr(compaction, "_digest", lambda conn, table: (0, 0) if table == "attempts_compacted" else real(conn, table))

    with pytest.raises(LedgerCompactionError, match="differ"):
        ledger.compact(force=True)

    assert table_rows(database) == before
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name LIKE 'attempts_%'").fetchone() == (0,)
    monkeypatch.undo()
    assert ledger.compact(force=True).compacted


def test_a_compaction_runs_only_when_due(tmp_path: Path) -> None:
    ledger = small_ledger(tmp_path / "ledger.duckdb")
    assert ledger.compact().compacted  # never compacted: every row is unsorted
    skipped = ledger.compact()
    assert not skipped.compacted and "0 of 31 attempts" in skipped.describe()
    for n in range(4):
        ledger.begin_attempt(asset="hero", sku=f"SKU-{n}", prompt="p", model_tier="pro")
    assert not ledger.compact(fraction=0.2).compacted  # 4 of 35
    assert ledger.compact(fraction=0.1).compacted
    assert not CreditLedger(str(tmp_path / "none.duckdb")).compact().compacted


def test_a_shared_ledger_is_not_compacted(request: pytest.FixtureRequest, tmp_path: Path) -> None:
    ledger = ledger_on("postgres", request, tmp_path)
    ledger.begin_attempt(asset="hero", sku="SKU-1", prompt="p", model_tier="pro")
    done = ledger.compact(force=True)
    assert not done.compacted and "indexes" in done.reason and "postgres" in done.reason


_COMPACT = textwrap.dedent(
    """
    import sys
    from flokan_dagster.ledger import CreditLedger
    print(CreditLedger(sys.argv[1], lock_timeout_s=120).compact(force=True).describe(), flush=True)
    """
)


def _start_compaction(database: Path) -> subprocess.Popen[str]:
    """A compaction in another process, returned once it holds the ledger (its exclusive lock)."""
    compacting = subprocess.Popen([sys.executable, "-c", _COMPACT, str(database)], cwd=PROJECT, text=True,
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE)  # fmt: skip
    probe = LedgerFileLock(str(database) + ".lock")
    while compacting.poll() is None:
        try:
            with probe.hold(exclusive=False, timeout_s=0):
                pass
        except LockTimeout:
            return compacting
        time.sleep(0.005)  # a poll, not a wait for long enough: the child is still importing
    raise AssertionError(f"the compaction ended before it was seen holding the ledger: {compacting.communicate()}")


@pytest.mark.parametrize("delay_s", [0.0, 0.3, 0.8])
def test_a_sigkilled_compaction_loses_and_changes_nothing(tmp_path: Path, delay_s: float) -> None:
    database = tmp_path / "ledger.duckdb"
    big_ledger(database, 200_000)
    before = sorted(table_rows(database))

    compacting = _start_compaction(database)
    try:
        compacting.wait(timeout=delay_s)  # wherever the kill lands, the ledger must be whole
    except subprocess.TimeoutExpired:
        pass
    compacting.send_signal(signal.SIGKILL)
    compacting.wait(timeout=60)

    assert sorted(table_rows(database)) == before
    assert CreditLedger(str(database)).compact(force=True).compacted, "a later compaction still works"
    assert sorted(table_rows(database)) == before


def test_writers_spool_while_a_compaction_holds_the_ledger_and_lose_nothing(tmp_path: Path) -> None:
    database = tmp_path / "ledger.duckdb"
    big_ledger(database, 200_000)
    before = sorted(table_rows(database))
    writer = CreditLedger(str(database), lock_timeout_s=0.05)

    compacting = _start_compaction(database)
    written = []
    for n in range(3):
        aid = writer.begin_attempt(asset="hero", sku=f"SKU-new-{n}", prompt="p", model_tier="pro", estimated_credits=20)
        writer.finish_attempt(aid, status="completed", job_id=f"job-new-{n}", credits_consumed=20)
        written.append(aid)
    spooled_during, held_throughout = writer.spooled_count(), compacting.poll() is None
    out, err = compacting.communicate(timeout=300)
    assert compacting.returncode == 0, err
    assert "200,001 attempts rewritten" in out

    if held_throughout:  # the compaction held the ledger from before the first write to after the last
        assert spooled_during == 2 * len(written), "every write waited in the spool"
    assert writer.flush_spool() == 0
    for aid in written:
        record = writer.get_attempt(aid)
        assert record is not None and record.status == "completed" and record.credits_consumed == 20
    after = table_rows(database)
    assert sorted(r for r in after if not str(r[0]).startswith(tuple(written))) == before


def test_a_batch_of_neighbouring_skus_is_read_whole_from_a_compacted_ledger(tmp_path: Path) -> None:
    ledger = small_ledger(tmp_path / "ledger.duckdb")
    wanted = {"SKU-1": "fp1", "SKU-2": "fp0"}
    every = sorted(a.attempt_id for a in ledger.attempts_for_skus("hero", wanted))
    chosen = sorted(a.attempt_id for a in ledger.deciding_attempts("hero", wanted))
    assert len(chosen) < len(every), "before any compaction only the deciding attempts are read"

    ledger.compact(force=True)
    assert sorted(a.attempt_id for a in ledger.deciding_attempts("hero", wanted)) == every


def test_a_spread_batch_on_a_compacted_ledger_reads_only_the_deciding_attempts(tmp_path: Path,
                                                                                monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    ledger = small_ledger(tmp_path / "ledger.duckdb")
    ledger.compact(force=True)
    wanted = {"SKU-0": "fp1", "SKU-5": "fp0"}
    every = ledger.attempts_for_skus("hero", wanted)
    monkeypatch.setattr(compaction, "TOGETHER_MIN_ROWS", 2)
    monkeypatch.setattr(compaction, "TOGETHER_ROWS_PER_SKU", 1)
    deciding = ledger.deciding_attempts("hero", wanted)
    assert 0 < len(deciding) < len(every)


def test_the_sort_order_names_real_columns() -> None:
    assert all(column.strip() in COLUMNS for column in SORT_ORDER.split(","))


def test_the_cli_compacts_when_due_and_says_what_it_did(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from flokan_dagster.cli import main as cli_main

    database = tmp_path / "ledger.duckdb"
    small_ledger(database)
    assert cli_main(["ledger", "compact", "--ledger", str(database)]) == 0
    assert "31 attempts rewritten in (asset, SKU) order" in capsys.readouterr().out
    assert cli_main(["ledger", "compact", "--ledger", str(database)]) == 0
    assert "nothing to do: 0 of 31 attempts" in capsys.readouterr().out
    assert cli_main(["ledger", "compact", "--ledger", str(tmp_path / "missing.duckdb")]) == 2
    assert "no ledger at" in capsys.readouterr().err


def test_the_dagster_job_compacts_and_reports_it_in_metadata(tmp_path: Path) -> None:
    import dagster as dg

    from flokan_dagster import FlokanLedgerResource, build_flokan_ledger_compaction_job, build_flokan_ledger_compaction_schedule

    database = tmp_path / "ledger.duckdb"
    small_ledger(database)
    job = build_flokan_ledger_compaction_job()
    resources = {"flokan_ledger": FlokanLedgerResource(database=str(database))}
    first = job.execute_in_process(resources=resources)
    second = job.execute_in_process(resources=resources)

    def metadata(result: dg.ExecuteInProcessResult) -> dict[str, object]:
        (output,) = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
        return {k: v.value for k, v in output.step_output_data.metadata.items()}

    assert metadata(first)["compacted"] is True and metadata(first)["attempts"] == 31
    assert metadata(second)["compacted"] is False and metadata(second)["written_since_last"] == 0
    assert placed(table_rows(database)) == sorted(placed(table_rows(database)))
    schedule = build_flokan_ledger_compaction_schedule(cron_schedule="0 3 * * *")
    defs = dg.Definitions(schedules=[schedule], resources=resources)
    assert defs.resolve_job_def("flokan_ledger_compaction").name == schedule.job_name


@pytest.mark.parametrize("addition", ["ALTER TABLE attempts ADD COLUMN invoice_ref VARCHAR",
                                      "CREATE INDEX attempts_by_sku ON attempts (sku)"])  # fmt: skip
def test_a_column_or_index_this_code_does_not_know_stops_the_compaction(tmp_path: Path, addition: str) -> None:
    # A newer version's migration or an analyst's column would be dropped by the rewrite: refused.
    database = tmp_path / "ledger.duckdb"
    ledger = small_ledger(database)
    with duckdb.connect(str(database)) as conn:
        conn.execute(addition)
    before = table_rows(database)

    with pytest.raises(LedgerCompactionError, match="does not know") as refused:
        ledger.compact(force=True)

    assert ("invoice_ref" in str(refused.value)) == ("invoice_ref" in addition)
    assert table_rows(database) == before
    with duckdb.connect(str(database), read_only=True) as conn:
        assert conn.execute("SELECT count(*) FROM duckdb_tables() WHERE table_name = 'attempts_compacted'").fetchone() == (0,)
