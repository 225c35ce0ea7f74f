"""Credit ledger behaviour on every backend (a DuckDB file on disk, a real PostgreSQL): round trips,
reuse, reconciliation, views."""

from __future__ import annotations

from datetime import datetime, timedelta
from pathlib import Path

import duckdb
import pytest

from flokan_dagster.ledger import (
    SCHEMA_VERSION,
    VIEW_NAMES,
    CreditLedger,
    LedgerSchemaError,
    cost_report_markdown,
    cost_summary,
)
from flokan_dagster.ledger.backend import open_database
from flokan_dagster.ledger.connection import describe
from tests.servers import LEDGER_BACKENDS, ledger_on


@pytest.fixture(params=LEDGER_BACKENDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> CreditLedger:
    return ledger_on(request.param, request, tmp_path, lock_timeout_s=2.0)


def job_row(job_id: str, **overrides: object) -> dict[str, object]:
    row: dict[str, object] = {
        "job_id": job_id,
        "status": "completed",
        "prompt": "red mug on white",
        "model_tier": "pro",
        "provider": "platform",
        "provider_used": "system",
        "result_url": f"https://images.flokan.com/u/processed/{job_id}.png",
        "result_image_id": f"img-{job_id}",
        "credits_consumed": 50,
        "processing_ms": 18432,
        "error": None,
        "created_at": "2026-05-04T11:00:00.000Z",
        "completed_at": "2026-05-04T11:00:18.432Z",
    }
    row.update(overrides)
    return row


def begin(ledger: CreditLedger, sku: str = "MUG-1", **kwargs: object) -> str:
    args: dict[str, object] = {"asset": "images", "sku": sku, "prompt": "red mug on white", "model_tier": "pro"}
    args.update(kwargs)
    return ledger.begin_attempt(**args)  # type: ignore[arg-type]


def test_begin_then_finish_round_trip(ledger: CreditLedger) -> None:
    aid = begin(ledger, fingerprint="fp1", run_id="run-1", estimated_credits=50, image_url="https://x.test/a.png")
    pending = ledger.get_attempt(aid)
    assert pending is not None
    assert (pending.status, pending.origin, pending.run_id, pending.estimated_credits) == ("pending", "dagster", "run-1", 50)
    assert pending.sent_at is not None and pending.job_id is None

    assert ledger.finish_attempt(
        aid,
        status="completed",
        job_id="job-1",
        credits_consumed=48,
        processing_ms=1200,
        result_url="https://images.flokan.com/r.png",
        result_image_id="img-1",
        result_path="/data/images/MUG-1.png",
        result_sha256="ab" * 32,
        job_created_at="2026-05-04T11:00:00.000Z",
        completed_at=datetime(2026, 5, 4, 11, 0, 1),
    )
    done = ledger.get_attempt(aid)
    assert done is not None
    assert (done.status, done.job_id, done.credits_consumed, done.processing_ms) == ("completed", "job-1", 48, 1200)
    # The request fields written before the call survive the outcome write (COALESCE semantics).
    assert (done.prompt, done.image_url, done.fingerprint, done.estimated_credits) == (
        "red mug on white", "https://x.test/a.png", "fp1", 50)
    assert done.job_created_at == datetime(2026, 5, 4, 11, 0)
    assert done.recorded_at is not None and done.updated_at is not None
    assert done.recorded_at <= done.updated_at
    assert ledger.spooled_count() == 0


def test_finish_refuses_pending_and_unknown_status_values(ledger: CreditLedger) -> None:
    aid = begin(ledger)
    with pytest.raises(ValueError):
        ledger.finish_attempt(aid, status="pending")
    with pytest.raises(ValueError):
        ledger.finish_attempt(aid, status="done")


def test_find_reusable_returns_latest_completed_with_fingerprint(ledger: CreditLedger) -> None:
    old = begin(ledger, fingerprint="fp1")
    ledger.finish_attempt(old, status="completed", job_id="j-old", credits_consumed=50, completed_at="2026-05-01T00:00:00Z")
    new = begin(ledger, fingerprint="fp1")
    ledger.finish_attempt(new, status="completed", job_id="j-new", credits_consumed=50, completed_at="2026-05-02T00:00:00Z")
    failed = begin(ledger, fingerprint="fp1")
    ledger.finish_attempt(failed, status="failed", error="provider 500")
    other = begin(ledger, fingerprint="fp2")
    ledger.finish_attempt(other, status="completed", job_id="j-other", credits_consumed=50)

    found = ledger.find_reusable("images", "MUG-1", "fp1")
    assert found is not None and found.attempt_id == new
    assert ledger.find_reusable("images", "MUG-1", "fp-unseen") is None
    assert ledger.find_reusable("thumbnails", "MUG-1", "fp1") is None


def test_unknown_then_settle_adopts_job_row(ledger: CreditLedger) -> None:
    aid = begin(ledger, fingerprint="fp1")
    ledger.finish_attempt(aid, status="unknown", error="read timeout after send")
    assert [a.attempt_id for a in ledger.unknown_attempts()] == [aid]
    assert [a.attempt_id for a in ledger.unknown_attempts("images")] == [aid]
    assert ledger.unknown_attempts("other") == []

    ledger.settle_attempt(aid, job_row("job-7"))
    settled = ledger.get_attempt(aid)
    assert settled is not None
    assert (settled.status, settled.origin, settled.job_id, settled.credits_consumed) == (
        "completed", "reconciled", "job-7", 50)
    assert settled.error is None, "a settled success must not keep the timeout error"
    assert settled.prompt == "red mug on white"
    assert ledger.unknown_attempts() == []
    assert ledger.find_reusable("images", "MUG-1", "fp1") == settled


def test_settle_with_running_job_becomes_open_attempt(ledger: CreditLedger) -> None:
    aid = begin(ledger)
    ledger.finish_attempt(aid, status="unknown")
    ledger.settle_attempt(aid, job_row("job-8", status="processing", credits_consumed=None, completed_at=None))
    assert [(a.attempt_id, a.status, a.job_status) for a in ledger.open_attempts()] == [(aid, "pending", "processing")]
    ledger.settle_attempt(aid, job_row("job-8"))
    assert ledger.open_attempts() == []


def test_terminal_status_is_not_downgraded_by_a_later_unknown(ledger: CreditLedger) -> None:
    aid = begin(ledger)
    ledger.settle_attempt(aid, job_row("job-9"))
    ledger.finish_attempt(aid, status="unknown", error="late timeout report")
    rec = ledger.get_attempt(aid)
    assert rec is not None and rec.status == "completed" and rec.credits_consumed == 50


def test_external_job_recorded_once(ledger: CreditLedger) -> None:
    first = ledger.record_external_job(job_row("ext-1", status="processing", credits_consumed=None))
    again = ledger.record_external_job(job_row("ext-1", status="processing", credits_consumed=None))
    done = ledger.record_external_job(job_row("ext-1"))
    assert first == again == done
    rows = ledger.attempts_for()
    assert [(r.job_id, r.origin, r.status, r.credits_consumed) for r in rows] == [("ext-1", "external", "completed", 50)]
    # Re-seeing an unchanged job row adds nothing to the journal.
    ledger.record_external_job(job_row("ext-1"))
    events = ledger.read(lambda c: c.execute("SELECT count(*) FROM attempt_events").fetchone()[0])
    assert events == 2
    assert ledger.known_job_ids(["ext-1", "nope"]) == {"ext-1"}
    assert ledger.known_job_ids([]) == set()


def test_settle_merges_a_job_already_recorded_as_external(ledger: CreditLedger) -> None:
    aid = begin(ledger)
    ledger.finish_attempt(aid, status="unknown")
    ledger.record_external_job(job_row("job-x"))
    assert ledger.credits_spent(datetime(2026, 1, 1), include_in_flight=False) == 50

    ledger.settle_attempt(aid, job_row("job-x"))
    rows = ledger.attempts_for()
    assert [(r.attempt_id, r.origin, r.job_id) for r in rows] == [(aid, "reconciled", "job-x")]
    assert ledger.credits_spent(datetime(2026, 1, 1)) == 50
    # The sensor seeing the job again must not bring the external row back.
    ledger.record_external_job(job_row("job-x"))
    assert len(ledger.attempts_for()) == 1


def test_finish_with_job_id_absorbs_external_row(ledger: CreditLedger) -> None:
    aid = begin(ledger)
    ledger.record_external_job(job_row("job-y", status="processing"))
    ledger.finish_attempt(aid, status="completed", job_id="job-y", credits_consumed=50)
    assert [(r.attempt_id, r.origin) for r in ledger.attempts_for()] == [(aid, "dagster")]


def test_settle_refuses_a_job_owned_by_another_attempt(ledger: CreditLedger) -> None:
    a = begin(ledger)
    b = begin(ledger)
    ledger.settle_attempt(a, job_row("job-z"))
    with pytest.raises(ValueError, match="already settled"):
        ledger.settle_attempt(b, job_row("job-z"))
    ledger.settle_attempt(a, job_row("job-z"))  # settling the owner again is fine


def test_record_rejected_spends_nothing(ledger: CreditLedger) -> None:
    rid = ledger.record_rejected(asset="images", sku="BAD-1", error="prompt: must not be empty", estimated_credits=50)
    rec = ledger.get_attempt(rid)
    assert rec is not None
    assert (rec.status, rec.credits_consumed, rec.error, rec.job_id) == ("rejected", 0, "prompt: must not be empty", None)
    assert ledger.credits_spent(datetime(2000, 1, 1)) == 0


def test_credits_spent_counts_in_flight_estimates(ledger: CreditLedger) -> None:
    now = datetime.utcnow()
    done = begin(ledger, estimated_credits=50)
    ledger.finish_attempt(done, status="completed", credits_consumed=40)
    begin(ledger, estimated_credits=50)  # pending: probably being charged right now
    lost = begin(ledger, estimated_credits=20)
    ledger.finish_attempt(lost, status="unknown")
    failed = begin(ledger, estimated_credits=50)
    ledger.finish_attempt(failed, status="failed", credits_consumed=0)
    since = now - timedelta(minutes=1)
    assert ledger.credits_spent(since) == 40 + 50 + 20
    assert ledger.credits_spent(since, include_in_flight=False) == 40
    assert ledger.credits_spent(now + timedelta(hours=1)) == 0


def test_api_keys_never_reach_the_ledger(ledger: CreditLedger, tmp_path: Path) -> None:
    aid = begin(ledger, prompt="mug flk_live_SECRET123 please")
    ledger.finish_attempt(aid, status="failed", error="401 Unauthorized: Bearer flk_live_SECRET123")
    ledger.record_external_job({**job_row("j-k"), "api_key": "flk_live_SECRET123", "authorization": "Bearer flk_x"})
    with pytest.raises(TypeError):
        ledger.begin_attempt(asset="a", sku="s", prompt="p", model_tier="pro", api_key="flk_live_SECRET123")  # type: ignore[call-arg]
    raw = b"".join(p.read_bytes() for p in tmp_path.rglob("*") if p.is_file())
    dump = ledger.read(lambda c: str(c.execute("SELECT * FROM attempts").fetchall())
                       + str(c.execute("SELECT * FROM attempt_events").fetchall()))
    assert "SECRET123" not in dump
    assert b"SECRET123" not in raw
    rec = ledger.get_attempt(aid)
    assert rec is not None and rec.error == "401 Unauthorized: Bearer flk_[REDACTED]"


def test_attempts_for_filters(ledger: CreditLedger) -> None:
    a = begin(ledger, sku="A")
    b = begin(ledger, sku="B")
    c = begin(ledger, sku="B", asset="thumbs")
    assert [r.attempt_id for r in ledger.attempts_for()] == [a, b, c]
    assert [r.attempt_id for r in ledger.attempts_for(sku="B")] == [b, c]
    assert [r.attempt_id for r in ledger.attempts_for(asset="images", sku="B")] == [b]


def test_reopen_existing_file_and_schema_version(tmp_path: Path) -> None:
    path = str(tmp_path / "l.duckdb")
    first = CreditLedger(path)
    aid = begin(first)
    second = CreditLedger(path)
    second.finish_attempt(aid, status="failed", error="x")
    rec = second.get_attempt(aid)
    assert rec is not None and rec.status == "failed"
    with duckdb.connect(path, read_only=True) as conn:
        assert conn.execute("SELECT version FROM schema_version").fetchall() == [(SCHEMA_VERSION,)]

    with duckdb.connect(path) as conn:
        conn.execute("INSERT INTO schema_version (version) VALUES (?)", [SCHEMA_VERSION + 1])
    with pytest.raises(LedgerSchemaError):
        CreditLedger(path).flush_spool()


def test_reading_before_anything_was_written(ledger: CreditLedger) -> None:
    assert ledger.attempts_for() == []
    assert ledger.credits_spent(datetime(2000, 1, 1)) == 0
    assert cost_summary(ledger)["credits"] == 0


def test_database_strings(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        CreditLedger(":memory:")
    with pytest.raises(ValueError, match="spool_dir"):
        CreditLedger("md:ledger?motherduck_token=tok")
    remote = CreditLedger("md:ledger?motherduck_token=tok", spool_dir=tmp_path / "spool")
    assert remote.database == "md:ledger?motherduck_token=tok", "md: strings pass through untouched"
    assert "tok" not in repr(remote) and "tok" not in describe(remote.database)
    local = CreditLedger(str(tmp_path / "x.duckdb"))
    assert local.spool.directory == tmp_path / "x.duckdb.spool"


def test_views_return_the_right_sums(ledger: CreditLedger, tmp_path: Path) -> None:
    def attempt(sku: str, tier: str, provider: str, status: str, credits: int | None, estimate: int, day: str) -> None:
        aid = begin(ledger, sku=sku, model_tier=tier, provider=provider, estimated_credits=estimate,
                    sent_at=datetime.fromisoformat(day))
        ledger.finish_attempt(aid, status=status, credits_consumed=credits, job_id=f"{sku}-{day}-{status}",
                              job_created_at=datetime.fromisoformat(day))

    attempt("A", "pro", "platform", "completed", 50, 50, "2026-05-01T10:00")
    attempt("A", "pro", "platform", "completed", 45, 50, "2026-05-02T10:00")
    attempt("B", "standard", "platform", "completed", 20, 25, "2026-05-02T11:00")
    attempt("B", "pro", "openai", "completed", 0, 0, "2026-05-02T12:00")
    attempt("C", "creative", "platform", "failed", 0, 10, "2026-05-02T13:00")
    attempt("C", "creative", "platform", "unknown", None, 10, "2026-05-02T14:00")
    ledger.record_external_job(job_row("ext-1", created_at="2026-05-01T09:00:00.000Z", credits_consumed=30))

    def q(sql: str) -> list[tuple[object, ...]]:
        return ledger.read(lambda c: c.execute(sql).fetchall())

    assert q("SELECT CAST(day AS VARCHAR), credits, attempts FROM credits_by_day ORDER BY day") == [
        ("2026-05-01", 80, 2), ("2026-05-02", 65, 5)]
    assert q("SELECT sku, credits FROM credits_by_sku ORDER BY sku NULLS LAST") == [
        ("A", 95), ("B", 20), ("C", 0), (None, 30)]
    assert q("SELECT asset, credits, completed FROM credits_by_asset ORDER BY asset NULLS LAST") == [
        ("images", 115, 4), (None, 30, 1)]
    assert q("SELECT model_tier, provider, billing, credits FROM credits_by_tier_provider ORDER BY ALL") == [
        ("creative", "platform", "platform", 0), ("pro", "openai", "byok", 0),
        ("pro", "platform", "platform", 125), ("standard", "platform", "platform", 20)]
    assert q("SELECT model_tier, provider, estimated_credits, actual_credits FROM estimate_vs_actual ORDER BY ALL") == [
        ("pro", "openai", 0, 0), ("pro", "platform", 100, 95), ("standard", "platform", 25, 20)]
    assert q("SELECT status, sku FROM failed_and_unknown_attempts ORDER BY status") == [("failed", "C"), ("unknown", "C")]

    # Analysts query the same views with plain DuckDB (a PostgreSQL ledger attached by DuckDB).
    with open_database(ledger.database, read_only=True) as conn:
        for view in VIEW_NAMES:
            conn.execute(f"SELECT * FROM {view}").fetchall()

    summary = cost_summary(ledger)
    assert summary["credits"] == 145 and summary["attempts"] == 7 and summary["skus"] == 3
    assert summary["by_status"]["completed"] == {"attempts": 5, "credits": 145}
    assert summary["by_status"]["unknown"] == {"attempts": 1, "credits": 0}
    assert summary["by_origin"]["external"] == {"attempts": 1, "credits": 30}
    assert summary["top_skus"][0] == {"sku": "A", "credits": 95, "attempts": 2}
    assert summary["estimate_vs_actual"] == {"estimated": 125, "actual": 115}
    assert {(r["model_tier"], r["billing"]): r["credits"] for r in summary["by_tier_provider"]}[("pro", "platform")] == 125
    assert summary["recent_days"] == [{"day": "2026-05-02", "credits": 65, "attempts": 5},
                                      {"day": "2026-05-01", "credits": 80, "attempts": 2}]  # fmt: skip
    assert [r["sku"] for r in summary["top_skus"]] == ["A", "B", "C"]
    narrow = cost_summary(ledger, top_skus=2, days=1)  # the top SKUs and the latest day only
    assert [r["sku"] for r in narrow["top_skus"]] == ["A", "B"] and narrow["skus"] == 3
    assert [r["day"] for r in narrow["recent_days"]] == ["2026-05-02"]
    report = cost_report_markdown(ledger)
    assert report.startswith("# Flokan credit report")
    assert "**145 credits**" in report and "| A | 2 | 95 |" in report


AWKWARD_TEXT = "it's ''quoted'' \\ back\\slash ? $1 $$dollar$$ %s; DROP TABLE attempts; --\nnewline \t tab é 🖼"


def test_awkward_text_and_times_round_trip_exactly(ledger: CreditLedger) -> None:
    """What a prompt, an error or a job id may hold is stored as it is on every backend (the
    shared ledger writes PostgreSQL's SQL with the values as literals)."""
    from datetime import timezone

    aid = begin(ledger, sku="MUG-'1'", prompt=AWKWARD_TEXT, fingerprint="fp'?")
    ledger.finish_attempt(aid, status="completed", job_id="job-'?'\\", credits_consumed=50, error=AWKWARD_TEXT,
                          job_created_at=datetime(2026, 5, 4, 13, 0, tzinfo=timezone(timedelta(hours=2))))  # fmt: skip
    ledger.record_external_job(job_row("ext-'$$'", prompt=AWKWARD_TEXT))
    done = ledger.get_attempt(aid)
    assert done is not None
    assert (done.sku, done.prompt, done.fingerprint, done.job_id) == ("MUG-'1'", AWKWARD_TEXT, "fp'?", "job-'?'\\")
    assert done.error == AWKWARD_TEXT
    assert done.job_created_at == datetime(2026, 5, 4, 11, 0)  # naive UTC
    (external,) = [a for a in ledger.attempts_for() if a.origin == "external"]
    assert (external.job_id, external.prompt) == ("ext-'$$'", AWKWARD_TEXT)


def test_merging_the_same_events_again_keeps_the_earliest_copy(ledger: CreditLedger) -> None:
    """A merge replayed (a spool file merged twice, a crash between commit and removal) changes nothing."""
    import dataclasses

    from flokan_dagster.ledger.journal import apply_events
    from flokan_dagster.ledger.records import LedgerEvent

    begin_event = LedgerEvent.create("a-replay", "begin", {"status": "pending", "sku": "MUG-9", "asset": "images"})
    finish = LedgerEvent.create("a-replay", "finish", {"status": "completed", "job_id": "job-replay", "credits_consumed": 20})
    later_copy = dataclasses.replace(finish, revision=finish.revision + 10**9, fields={**finish.fields, "credits_consumed": 99})
    begin(ledger)  # the tables exist
    with open_database(ledger.database, read_only=False) as conn:
        apply_events(conn, [begin_event, finish])
        apply_events(conn, [finish, later_copy, begin_event])
        journal = conn.execute("SELECT count(*), max(revision) FROM attempt_events WHERE attempt_id = 'a-replay'").fetchone()
        jobs = conn.execute("SELECT count(*) FROM attempt_jobs WHERE attempt_id = 'a-replay'").fetchone()
    assert journal == (2, finish.revision)
    assert jobs == (1,)
    row = ledger.get_attempt("a-replay")
    assert row is not None and (row.status, row.job_id, row.credits_consumed) == ("completed", "job-replay", 20)


def test_ledger_connections_draw_no_progress_bar(ledger: CreditLedger) -> None:
    """DuckDB draws a progress bar on stdout for a statement over two seconds (a write waiting for
    another machine's merge): it would land in run logs and in the stdout of programs."""
    begin(ledger)
    for read_only in (False, True):
        with open_database(ledger.database, read_only=read_only) as conn:
            assert conn.execute("SELECT current_setting('enable_progress_bar')").fetchone() == (False,)
