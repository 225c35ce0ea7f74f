"""A batch's ledger writes: records spooled now and merged in groups, on every backend (a DuckDB
file on disk, a real PostgreSQL). Values of every kind survive the JSON the merge and the spool
overlay pass them through."""

from __future__ import annotations

from datetime import datetime
from pathlib import Path

import pytest

from flokan_dagster.ledger import CreditLedger
from flokan_dagster.ledger.connection import database_file
from tests.servers import LEDGER_BACKENDS, ledger_on

# Quotes, a question mark (the PostgreSQL backend inlines parameters at each '?'), backslashes,
# newlines, a tab, accents, an emoji beyond the BMP, JSON-looking text.
AWKWARD = 'it\'s a "mug" ? 50%\\n\n\tcafé 😀 {"job_id": null} [1, 2]'


@pytest.fixture(params=LEDGER_BACKENDS)
def ledger(request: pytest.FixtureRequest, tmp_path: Path) -> CreditLedger:
    return ledger_on(request.param, request, tmp_path, lock_timeout_s=2.0)


def test_awkward_values_are_the_same_from_the_spool_and_from_the_database(ledger: CreditLedger) -> None:
    sent_at = datetime(2026, 5, 4, 11, 0, 0, 123456)
    aid = ledger.begin_attempt(asset="images", sku="MUG-1", prompt=AWKWARD, model_tier="pro", fingerprint="fp-1",
                               run_id="run-1", estimated_credits=2**40, sent_at=sent_at, source_ref=AWKWARD,
                               merge=False)  # fmt: skip
    ledger.finish_attempt(aid, status="completed", job_id="job-1", credits_consumed=2**40 + 1, processing_ms=0,
                          result_url="https://images.flokan.com/u/processed/job-1.png", error=None,
                          job_created_at="2026-05-04T11:00:00.000Z", completed_at=datetime(2026, 5, 4, 11, 0, 18, 432000),
                          merge=False)  # fmt: skip

    def check(record: object) -> None:
        assert record is not None
        assert (record.prompt, record.source_ref, record.sku, record.status) == (AWKWARD, AWKWARD, "MUG-1", "completed")  # type: ignore[attr-defined]
        assert (record.estimated_credits, record.credits_consumed, record.processing_ms) == (2**40, 2**40 + 1, 0)  # type: ignore[attr-defined]
        assert record.sent_at == sent_at  # type: ignore[attr-defined]
        assert record.job_created_at == datetime(2026, 5, 4, 11, 0)  # type: ignore[attr-defined]
        assert record.completed_at == datetime(2026, 5, 4, 11, 0, 18, 432000)  # type: ignore[attr-defined]
        assert record.error is None  # type: ignore[attr-defined]

    check(ledger.get_attempt(aid))  # from the spool overlay (a file ledger) or the database
    assert ledger.flush_spool() == 0
    check(ledger.get_attempt(aid))  # from the database
    checks = ledger.send_checks("images", {"MUG-1": "fp-1"}, "run-2")
    assert checks["MUG-1"].reusable is not None and checks["MUG-1"].reusable.attempt_id == aid


def test_a_finish_left_in_the_spool_is_durable_seen_at_once_and_merged_in_a_group(tmp_path: Path) -> None:
    database = str(tmp_path / "ledger.duckdb")
    ledger = CreditLedger(database)
    ids = [ledger.begin_attempt(asset="images", sku=f"MUG-{n}", prompt="red mug", model_tier="pro", fingerprint=f"fp-{n}",
                                run_id="run-1", merge=False) for n in range(3)]  # fmt: skip
    assert [ledger.finish_attempt(aid, status="completed", job_id=f"job-{n}", credits_consumed=50, merge=False)
            for n, aid in enumerate(ids)] == [False, False, False]  # fmt: skip
    assert ledger.spooled_count() == 6  # fsync'd files: a crash now loses none of them
    # Another process (a fresh ledger object, no shared memory) sees them before any merge.
    other = CreditLedger(database)
    assert [other.get_attempt(aid).status for aid in ids] == ["completed"] * 3  # type: ignore[union-attr]
    assert ledger.merge_spooled() is True
    assert ledger.spooled_count() == 0
    assert ledger.read(lambda conn: conn.execute("SELECT count(*), sum(credits_consumed) FROM attempts").fetchone()) == (3, 150)


def test_a_shared_ledger_merges_a_finish_at_once_whatever_it_is_asked(ledger: CreditLedger) -> None:
    aid = ledger.begin_attempt(asset="images", sku="MUG-1", prompt="red mug", model_tier="pro")
    merged = ledger.finish_attempt(aid, status="completed", job_id="job-1", credits_consumed=50, merge=False)
    if database_file(ledger.database) is None:
        # Other machines cannot see this machine's spool: a paid job's record goes to the database now.
        assert merged is True and ledger.spooled_count() == 0
    else:
        assert merged is False and ledger.spooled_count() == 1
    assert ledger.get_attempt(aid).credits_consumed == 50  # type: ignore[union-attr]
