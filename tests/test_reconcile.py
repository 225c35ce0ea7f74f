"""The reconciliation pass against the emulator over HTTP and a DuckDB ledger on disk."""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest

from flokan_dagster import FlokanClient, FlokanUnknownOutcomeError
from flokan_dagster.api.models import JobPage
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.reconcile import ReconcileCursor, ReconcileSettings, reconcile
from tests.support import Admin, Workspace, wait_for


class PagingClient(FlokanClient):
    """A client that runs ``between`` after each ``GET /jobs`` page (jobs arriving mid-tick)."""

    def __init__(self, between: Callable[[int], None], **options: Any) -> None:
        super().__init__(**options)
        self.between = between

    def list_jobs(self, page: int = 1, per_page: int = 50, status: str | None = None) -> JobPage:
        result = super().list_jobs(page, per_page, status)
        self.between(page)
        return result


@pytest.fixture
def ledger(tmp_path: Path) -> CreditLedger:
    return CreditLedger(str(tmp_path / "ledger.duckdb"))


@pytest.fixture
def store(tmp_path: Path) -> ImageStore:
    return ImageStore(tmp_path / "images")


def client_for(workspace: Workspace, **options: Any) -> FlokanClient:
    return FlokanClient(api_key=workspace.api_key, base_url=workspace.admin.base_url, backoff_base_s=0.01, **options)


def all_job_ids(workspace: Workspace) -> list[str]:
    with client_for(workspace) as client:
        return [job.job_id for job in client.iter_jobs()]


def lose_answer(client: FlokanClient, ledger: CreditLedger, admin: Admin, sku: str, prompt: str, *, fault: str = "drop_after_complete") -> str:
    """A Dagster-style attempt whose /process answer is lost: written ahead, then marked unknown."""
    admin.fault(fault, prompt_contains=prompt)
    attempt = ledger.begin_attempt(asset="hero_images", sku=sku, prompt=prompt, model_tier="standard", fingerprint="fp", estimated_credits=20)
    with pytest.raises(FlokanUnknownOutcomeError) as lost:
        client.process(prompt, "standard")
    ledger.finish_attempt(attempt, status="unknown", error=str(lost.value))
    return attempt


def test_unknown_outcome_is_settled_and_adopted_without_a_second_process(
    admin: Admin, workspace: Workspace, ledger: CreditLedger, store: ImageStore
) -> None:
    with client_for(workspace) as client:
        attempt = lose_answer(client, ledger, admin, "SKU-1", "red mug on oak")
        hits = admin.hits("POST /process")
        result = reconcile(client, ledger, store)
        assert admin.hits("POST /process") == hits
        summary = result.summary
        assert (summary.new, summary.settled, summary.adopted, summary.external, summary.caught_up) == (1, 1, 1, 0, True)
        [adoption] = result.adoptions
        assert (adoption.asset, adoption.sku, adoption.record.attempt_id) == ("hero_images", "SKU-1", attempt)
        record = ledger.get_attempt(attempt)
        assert record is not None and (record.status, record.origin, record.credits_consumed) == ("completed", "reconciled", 20)
        assert record.result_sha256 == adoption.stored.sha256 and Path(record.result_path or "").is_file()
        assert ledger.find_reusable("hero_images", "SKU-1", "fp") is not None  # the next run reuses it

        again = reconcile(client, ledger, store, result.cursor.to_json())
        assert (again.summary.new, again.summary.settled, again.summary.requests) == (0, 0, 1)
        assert again.adoptions == []
    assert workspace.info()["credits_deducted"] == sum(a.credits_consumed or 0 for a in ledger.attempts_for()) == 20


def test_a_job_first_seen_in_flight_is_merged_into_its_attempt(
    admin: Admin, workspace: Workspace, ledger: CreditLedger, store: ImageStore
) -> None:
    """The sensor sees the job while the attempt is still pending: external for now, then settled."""
    with client_for(workspace) as client:
        admin.fault("drop_after_complete", prompt_contains="blue vase")
        attempt = ledger.begin_attempt(asset="hero_images", sku="SKU-2", prompt="blue vase", model_tier="standard")
        with pytest.raises(FlokanUnknownOutcomeError):
            client.process("blue vase", "standard")
        first = reconcile(client, ledger, store)
        assert (first.summary.new, first.summary.in_flight, first.summary.external) == (1, 1, 0)
        assert [a.origin for a in ledger.attempts_for()] == ["dagster", "external"]

        ledger.finish_attempt(attempt, status="unknown", error="connection dropped")
        second = reconcile(client, ledger, store, first.cursor)
        assert (second.summary.new, second.summary.settled, second.summary.adopted) == (0, 1, 1)
    rows = ledger.attempts_for()
    assert [(a.attempt_id, a.origin, a.status) for a in rows] == [(attempt, "reconciled", "completed")]


def test_external_jobs_are_recorded_once_and_owned_jobs_are_not(
    workspace: Workspace, ledger: CreditLedger, store: ImageStore
) -> None:
    with client_for(workspace) as client:
        for prompt in ("made in the UI", "made by n8n"):
            client.process(prompt, "pro")
        attempt = ledger.begin_attempt(asset="hero_images", sku="SKU-3", prompt="made by dagster", model_tier="standard")
        made = client.process("made by dagster", "standard")
        ledger.finish_attempt(attempt, status="completed", job_id=made.job_id, credits_consumed=made.credits_consumed)
        result = reconcile(client, ledger, store)
        assert (result.summary.new, result.summary.external) == (2, 2)
        client.process("made by a script", "creative")
        again = reconcile(client, ledger, store, result.cursor)
        assert (again.summary.new, again.summary.external) == (1, 1)
    external = [a for a in ledger.attempts_for() if a.origin == "external"]
    assert sorted(a.prompt or "" for a in external) == ["made by a script", "made by n8n", "made in the UI"]
    assert sum(a.credits_consumed or 0 for a in ledger.attempts_for()) == workspace.info()["credits_deducted"] == 50 + 50 + 20 + 30


def test_no_job_is_missed_when_jobs_arrive_between_pages(
    admin: Admin, workspace: Workspace, ledger: CreditLedger, store: ImageStore
) -> None:
    admin.call("POST", f"/_emulator/workspaces/{workspace.workspace_id}/jobs/bulk", json={"count": 9, "step_ms": 10})
    settings = ReconcileSettings(per_page=2)
    with client_for(workspace) as maker:

        arriving = {"on": True}

        def arrive(page: int) -> None:
            if arriving["on"] and page <= 4:
                maker.process(f"arrived after page {page}", "standard")
                maker.process(f"also arrived after page {page}", "standard")

        with PagingClient(arrive, api_key=workspace.api_key, base_url=admin.base_url) as client:
            first = reconcile(client, ledger, store, settings=settings)
            assert first.summary.caught_up and first.summary.new == 9
            arriving["on"] = False
            second = reconcile(client, ledger, store, first.cursor, settings=settings)
    assert second.summary.caught_up and second.summary.new == 8
    recorded = [a.job_id for a in ledger.attempts_for()]
    assert len(recorded) == len(set(recorded)) == 17
    assert set(recorded) == set(all_job_ids(workspace))


def test_a_429_mid_tick_ends_it_and_keeps_the_progress(
    admin: Admin, workspace: Workspace, ledger: CreditLedger, store: ImageStore
) -> None:
    admin.call("POST", f"/_emulator/workspaces/{workspace.workspace_id}/jobs/bulk", json={"count": 10, "step_ms": 10})

    def throttle(page: int) -> None:
        if page == 2:
            admin.fault("rate_limit", route="GET /jobs", times=None, retry_after=0)

    settings = ReconcileSettings(per_page=2)
    with PagingClient(throttle, api_key=workspace.api_key, base_url=admin.base_url, max_attempts=1) as client:
        first = reconcile(client, ledger, store, settings=settings)
        assert first.summary.rate_limited and not first.summary.caught_up
        assert (first.summary.pages, first.summary.new) == (2, 4)
        assert first.cursor.resume is not None and first.cursor.resume.page == 3
        admin.clear_faults()
        second = reconcile(client, ledger, store, first.cursor.to_json(), settings=settings)
    assert second.summary.caught_up and second.summary.new == 6 and second.summary.pages == 3
    assert sorted(a.job_id or "" for a in ledger.attempts_for()) == sorted(all_job_ids(workspace))


def test_a_backlog_larger_than_the_budget_resumes_across_passes(
    admin: Admin, workspace: Workspace, ledger: CreditLedger, store: ImageStore
) -> None:
    admin.call("POST", f"/_emulator/workspaces/{workspace.workspace_id}/jobs/bulk", json={"count": 30, "step_ms": 10})
    calls = {"n": 0}

    def count(page: int) -> None:
        calls["n"] += 1

    # A budget that lets exactly one page through per pass: the reserve is a quarter of it.
    settings = ReconcileSettings(per_page=4, budget_s=0.4)
    cursor: ReconcileCursor | None = None
    passes = 0
    with PagingClient(count, api_key=workspace.api_key, base_url=admin.base_url) as client:
        while passes < 20:
            passes += 1
            result = reconcile(client, ledger, store, cursor, settings=settings)
            cursor = result.cursor
            if result.summary.caught_up:
                break
    assert passes > 1 and len({a.job_id for a in ledger.attempts_for()}) == 30


@pytest.mark.parametrize("corrupt", ["{not json", json.dumps({"v": 99}), json.dumps({"v": 1, "resume": {"page": -3}}), "[]"])
def test_a_corrupt_cursor_restarts_from_the_ledger_not_the_whole_history(
    admin: Admin, workspace: Workspace, ledger: CreditLedger, store: ImageStore, corrupt: str, caplog: pytest.LogCaptureFixture
) -> None:
    admin.call("POST", f"/_emulator/workspaces/{workspace.workspace_id}/jobs/bulk", json={"count": 250, "step_ms": 1000})
    with client_for(workspace) as client:
        assert reconcile(client, ledger, store).summary.new == 250
        client.process("new since", "standard")
        with caplog.at_level(logging.WARNING, logger="flokan_dagster.reconcile"):
            result = reconcile(client, ledger, store, corrupt)
    assert "cursor" in caplog.text
    assert (result.summary.new, result.summary.pages, result.summary.caught_up) == (1, 1, True)
    assert ReconcileCursor.from_json(result.cursor.to_json()).newest == result.cursor.newest


def test_a_corrupt_cursor_with_an_empty_ledger_reads_only_the_overlap_window(
    admin: Admin, workspace: Workspace, ledger: CreditLedger, store: ImageStore
) -> None:
    admin.call("POST", f"/_emulator/workspaces/{workspace.workspace_id}/jobs/bulk", json={"count": 500, "step_ms": 60_000})
    with client_for(workspace) as client:
        result = reconcile(client, ledger, store, "garbage", settings=ReconcileSettings(overlap_s=30))
    assert result.summary.pages == 1 and result.summary.caught_up and result.summary.new <= 1


def test_pending_rows_are_refreshed_and_credits_follow_the_job_row(
    admin: Admin, workspace: Workspace, ledger: CreditLedger, store: ImageStore
) -> None:
    admin.fault("latency", prompt_contains="slow lamp", ms=5000)  # outlasts the first pass on a loaded machine
    with client_for(workspace) as client, client_for(workspace) as maker:
        worker = threading.Thread(target=maker.process, args=("slow lamp", "pro"))
        worker.start()
        try:
            wait_for(lambda: any(j.prompt == "slow lamp" for j in client.iter_jobs()), 60, "the slow job to appear")
            first = reconcile(client, ledger, store)
        finally:
            worker.join()
        [row] = ledger.attempts_for()
        assert (row.origin, row.status, row.credits_consumed) == ("external", "pending", 0)
        second = reconcile(client, ledger, store, first.cursor)
    assert (second.summary.refreshed, second.summary.new) == (1, 0)
    [row] = ledger.attempts_for()
    assert (row.status, row.credits_consumed, row.job_status) == ("completed", 50, "completed")


def test_failed_jobs_are_reported_with_their_skus(
    admin: Admin, workspace: Workspace, ledger: CreditLedger, store: ImageStore
) -> None:
    with client_for(workspace) as client:
        attempt = lose_answer(client, ledger, admin, "SKU-9", "cracked bowl", fault="provider_error")
        result = reconcile(client, ledger, store)
    assert (result.summary.settled, result.summary.failed_jobs, result.summary.adopted) == (1, 1, 0)
    [failed] = result.failed
    assert (failed.asset, failed.sku, failed.failed_attempts) == ("hero_images", "SKU-9", 1)
    record = ledger.get_attempt(attempt)
    assert record is not None and (record.status, record.credits_consumed) == ("failed", 0)


def test_an_unknown_attempt_without_a_job_is_proven_absent(
    workspace: Workspace, ledger: CreditLedger, store: ImageStore
) -> None:
    long_ago = datetime.now(timezone.utc) - timedelta(hours=2)
    attempt = ledger.begin_attempt(asset="hero_images", sku="SKU-4", prompt="never arrived", model_tier="pro", sent_at=long_ago)
    ledger.finish_attempt(attempt, status="unknown", error="connect reset")
    with client_for(workspace) as client:
        result = reconcile(client, ledger, store)
    assert result.summary.absent == 1
    record = ledger.get_attempt(attempt)
    assert record is not None and (record.status, record.credits_consumed) == ("failed", 0)
