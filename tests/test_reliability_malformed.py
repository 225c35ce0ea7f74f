"""Malformed answers from Flokan: runs fail cleanly or adopt, and the ledger pays only what was charged.

The emulator's ``malformed`` fault breaks a successful body (an HTML page, fields missing, wrong
types, a huge body, a truncated one). For ``/process`` the job still ran and was charged, so the
client cannot read what it paid for: the run must find the job in ``GET /jobs`` and adopt it, or
leave it ``unknown`` for the reconciliation pass, never pay again and never record a charge that
did not happen.
"""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import pytest

from flokan_dagster import FlokanClient, FlokanResource
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.reconcile import ReconcileSettings, reconcile
from tests.support import Admin, Workspace, png_bytes
from tests.test_assets import Pipeline, make_pipeline, rows_for

VARIANTS = ("non_json", "missing_fields", "wrong_types", "truncated")
OVER_THE_CLIENT_LIMIT = 17 * 1024 * 1024  # the client reads at most 16 MiB of an API answer


def failure_description(result: dg.ExecuteInProcessResult) -> str:
    failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
    return failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]


def reconcile_once(pipeline: Pipeline) -> None:
    with pipeline.client() as client:
        result = reconcile(client, pipeline.ledger, ImageStore(pipeline.tmp / "images"), None, ReconcileSettings(budget_s=20))
    assert result.summary.error is None, result.summary.error


def assert_ledger_pays_only_what_was_charged(ledger: CreditLedger, workspace: Workspace, client: FlokanClient) -> None:
    """Every credit in the ledger is a charge the emulator made, once; and the totals agree."""
    jobs = {job.job_id: job for job in client.iter_jobs()}
    records = ledger.attempts_for()
    paid = [r for r in records if (r.credits_consumed or 0) > 0]
    for record in paid:
        job = jobs.get(record.job_id or "")
        assert job is not None, f"{record.sku}: ledger says paid, but job {record.job_id} does not exist"
        assert job.status == "completed" and job.credits_consumed == record.credits_consumed, (record, job)
    held = [r.job_id for r in records if r.job_id]
    assert len(held) == len(set(held)), "a job is recorded twice"
    assert sum(r.credits_consumed or 0 for r in records) == workspace.info()["credits_deducted"]


def test_unreadable_process_answers_are_adopted_from_get_jobs_never_paid_twice(
    tmp_path: Path, admin: Admin, workspace: Workspace
) -> None:
    broken = {f"SKU-{i:02d}": variant for i, variant in enumerate(VARIANTS)}
    for sku, variant in broken.items():
        admin.fault("malformed", prompt_contains=f"{sku} ", variant=variant)
    admin.fault("malformed", prompt_contains="SKU-04 ", variant="huge", bytes=OVER_THE_CLIENT_LIMIT)
    admin.fault("malformed", prompt_contains="SKU-05 ", variant="huge", bytes=256 * 1024)  # readable: extra field
    skus = [f"SKU-{i:02d}" for i in range(7)]
    pipeline = make_pipeline(tmp_path, workspace, rows_for(7, **{sku: {"title": f"{sku} "} for sku in skus}))

    [result] = pipeline.run("hero_images", skus)

    assert result.success
    outcomes = {sku: m.metadata["flokan/outcome"].value for sku, m in pipeline.materialized("hero_images").items()}
    assert outcomes == {**{sku: "adopted" for sku in [*broken, "SKU-04"]}, "SKU-05": "made", "SKU-06": "made"}
    assert workspace.info()["jobs"] == 7  # one /process per SKU: nothing was paid twice
    records = pipeline.ledger.attempts_for(asset="hero_images")
    assert {r.sku: (r.status, r.credits_consumed) for r in records} == {sku: ("completed", 20) for sku in skus}
    with pipeline.client() as client:
        assert_ledger_pays_only_what_was_charged(pipeline.ledger, workspace, client)


def test_malformed_estimates_refuse_the_run_before_any_process_call(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    pipeline = make_pipeline(tmp_path, workspace, rows_for(3))
    for variant in VARIANTS:
        admin.fault("malformed", route="POST /estimate-credits", variant=variant)
        [result] = pipeline.run("hero_images", ["SKU-00", "SKU-01", "SKU-02"])
        assert not result.success
        description = failure_description(result)
        assert "3 of 3 SKU(s) failed" in description
        for sku in ("SKU-00", "SKU-01", "SKU-02"):
            assert f"- {sku}: estimating standard/platform failed: malformed response from POST /estimate-credits" in description
    assert workspace.info()["jobs"] == 0 and workspace.info()["credits_deducted"] == 0
    records = pipeline.ledger.attempts_for(asset="hero_images")
    assert len(records) == 3 * len(VARIANTS) and {(r.status, r.credits_consumed) for r in records} == {("rejected", 0)}


def test_malformed_job_listings_fail_the_sku_by_name_and_reconciliation_settles_it_later(
    tmp_path: Path, admin: Admin, workspace: Workspace
) -> None:
    (tmp_path / "photo.png").write_bytes(png_bytes())
    rows = rows_for(4, **{"SKU-01": {"title": "lost answer"}, "SKU-03": {"photo": "photo.png"}})
    pipeline = make_pipeline(tmp_path, workspace, rows)
    admin.fault("malformed", prompt_contains="lost answer", variant="truncated")  # charged, answer unreadable
    admin.fault("malformed", route="GET /jobs", times=None, variant="missing_fields")  # and the listing too
    admin.fault("malformed", route="POST /upload-url", variant="non_json")

    [result] = pipeline.run("hero_images", ["SKU-00", "SKU-01", "SKU-02", "SKU-03"])

    assert not result.success
    description = failure_description(result)
    assert "2 of 4 SKU(s) failed" in description
    assert "- SKU-01: " in description and "malformed response from GET /jobs" in description
    assert "- SKU-03: uploading" in description and "malformed response from POST /upload-url" in description
    assert sorted(pipeline.materialized("hero_images")) == ["SKU-00", "SKU-02"]
    assert workspace.info()["jobs"] == 3  # nothing sent for SKU-03; SKU-01 ran once and was charged
    lost = pipeline.ledger.attempts_for(asset="hero_images", sku="SKU-01")
    assert [(a.status, a.credits_consumed, a.job_id) for a in lost] == [("unknown", None, None)]

    # A pass while the listing is still broken ends cleanly and records nothing it cannot read.
    with pipeline.client() as client:
        broken = reconcile(client, pipeline.ledger, ImageStore(tmp_path / "images"), None, ReconcileSettings(budget_s=20))
    assert broken.summary.error is not None and "GET /jobs" in broken.summary.error
    assert [a.status for a in pipeline.ledger.attempts_for(asset="hero_images", sku="SKU-01")] == ["unknown"]

    for variant in ("non_json", "wrong_types", "truncated"):
        admin.clear_faults()
        admin.fault("malformed", route="GET /jobs", variant=variant)
        with pipeline.client() as client:
            again = reconcile(client, pipeline.ledger, ImageStore(tmp_path / "images"), None, ReconcileSettings(budget_s=20))
        assert again.summary.error is not None and "malformed response from GET /jobs" in again.summary.error

    admin.clear_faults()
    reconcile_once(pipeline)
    [settled] = pipeline.ledger.attempts_for(asset="hero_images", sku="SKU-01")
    assert settled.status == "completed" and settled.credits_consumed == 20 and settled.origin == "reconciled"
    with pipeline.client() as client:
        assert_ledger_pays_only_what_was_charged(pipeline.ledger, workspace, client)


def test_an_oversized_download_fails_the_sku_and_the_next_run_fetches_it_without_paying(
    tmp_path: Path, admin: Admin, workspace: Workspace
) -> None:
    pipeline = make_pipeline(tmp_path, workspace, rows_for(2))
    resources = dict(pipeline.defs.resources or {})
    strict = FlokanResource(api_key=workspace.api_key, base_url=admin.base_url, max_download_bytes=200)
    pipeline.defs = dg.Definitions(assets=pipeline.defs.assets, resources={**resources, "flokan": strict})  # type: ignore[arg-type]

    [result] = pipeline.run("hero_images", ["SKU-00", "SKU-01"])

    assert not result.success
    description = failure_description(result)
    assert "2 of 2 SKU(s) failed" in description and "is paid but its image could not be stored" in description
    assert "exceeds 200 bytes" in description
    records = pipeline.ledger.attempts_for(asset="hero_images")
    assert {(r.status, r.credits_consumed, r.result_path) for r in records} == {("completed", 20, None)}
    with pipeline.client() as client:
        assert_ledger_pays_only_what_was_charged(pipeline.ledger, workspace, client)

    pipeline.defs = dg.Definitions(assets=pipeline.defs.assets, resources=resources)  # type: ignore[arg-type]
    [again] = pipeline.run("hero_images", ["SKU-00", "SKU-01"])
    assert again.success and workspace.info()["jobs"] == 2
    assert {m.metadata["flokan/outcome"].value for m in pipeline.materialized("hero_images").values()} == {"reused"}
    with pipeline.client() as client:
        assert_ledger_pays_only_what_was_charged(pipeline.ledger, workspace, client)


# ---------------------------------------------------------------- values the ledger cannot hold


def test_a_value_duckdb_cannot_hold_never_poisons_the_spool(tmp_path: Path) -> None:
    """A server's absurd number or a lone surrogate (legal in JSON) must not brick every later write and read."""
    ledger = CreditLedger(str(tmp_path / "ledger.duckdb"))
    attempt = ledger.begin_attempt(asset="hero_images", sku="A", prompt="p", model_tier="pro")
    surrogate = json.loads('"provider said \\udcff\\ud800"')
    assert ledger.finish_attempt(attempt, status="failed", error=surrogate, credits_consumed=0)
    ledger.record_external_job({"job_id": "j1", "status": "failed", "prompt": surrogate, "error": surrogate})
    with pytest.raises(ValueError, match="credits_consumed"):
        ledger.finish_attempt(attempt, status="completed", job_id="j2", credits_consumed=10**30)
    with pytest.raises(ValueError, match="processing_ms"):
        ledger.record_external_job({"job_id": "j3", "status": "completed", "processing_ms": -(2**64)})
    assert ledger.spooled_count() == 0
    later = ledger.begin_attempt(asset="hero_images", sku="B", prompt="p", model_tier="pro")
    rows = {r.sku or r.job_id: r for r in ledger.attempts_for()}
    assert set(rows) == {"A", "B", "j1"} and rows["B"].attempt_id == later
    assert rows["A"].status == "failed" and "provider said" in (rows["A"].error or "")


class _AbsurdFlokan:
    """A Flokan that answers with values no ledger column can hold (served by a thread)."""

    def __init__(self) -> None:
        job = {"job_id": "00000000-0000-4000-8000-0000000000aa", "status": "completed", "prompt": "Studio photo of item 0 in red",
               "model_tier": "standard", "provider": "platform", "provider_used": "system",
               "result_url": "http://127.0.0.1:1/x.png", "credits_consumed": 10**30, "processing_ms": 5,
               "created_at": "2099-01-01T00:00:00.000Z"}  # fmt: skip

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:  # noqa: N802
                body = json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0)) or b"{}")
                if self.path.endswith("/estimate-credits"):
                    self._send(200, {"success": True, "data": {"estimated_credits": 20, "available_credits": 10**6}})
                elif "item 1 " in body.get("prompt", ""):  # a refusal whose text is not valid Unicode
                    self._send(422, {"success": False, "error": "rejected \ud800 by the provider"})
                else:
                    self._send(201, {"success": True, "data": job})

            def do_GET(self) -> None:  # noqa: N802
                self._send(200, {"success": True, "data": [job], "meta": {"page": 1, "per_page": 100, "total": 1, "total_pages": 1}})

            def _send(self, status: int, payload: dict[str, Any]) -> None:
                data = json.dumps(payload).encode()  # ensure_ascii: a lone surrogate travels as a \\ud800 escape
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(target=self.server.serve_forever, daemon=True).start()
        self.base_url = f"http://127.0.0.1:{self.server.server_address[1]}/api/v1/image-editor"


def test_absurd_answers_fail_their_skus_cleanly_and_the_ledger_keeps_working(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    fake = _AbsurdFlokan()
    try:
        pipeline = make_pipeline(tmp_path, workspace, rows_for(2, **{"SKU-01": {"title": "item 1 "}}))
        resources = dict(pipeline.defs.resources or {})
        resources["flokan"] = FlokanResource(api_key="flk_test_absurd", base_url=fake.base_url, max_attempts=1)
        pipeline.defs = dg.Definitions(assets=pipeline.defs.assets, resources=resources)  # type: ignore[arg-type]
        [result] = pipeline.run("hero_images", ["SKU-00", "SKU-01"])
    finally:
        fake.server.shutdown()
        fake.server.server_close()
    assert not result.success
    description = failure_description(result)
    assert "- SKU-00: " in description and "credits_consumed" in description
    assert "- SKU-01: FlokanSafetyFilterError: rejected \\ud800 by the provider" in description
    assert pipeline.ledger.spooled_count() == 0
    records = {r.sku: r for r in pipeline.ledger.attempts_for(asset="hero_images")}
    assert records["SKU-00"].status == "unknown" and records["SKU-00"].credits_consumed is None
    assert records["SKU-01"].status == "rejected" and "rejected" in (records["SKU-01"].error or "")
