"""GET /jobs (list envelope, newest first, paging, status filter) and GET /jobs/{jobId}."""

from __future__ import annotations

import re
import uuid
from collections.abc import Callable
from datetime import UTC, datetime

import httpx
import pytest

from flokan_dagster.emulator import EmulatorServer
from tests.emulator.helpers import Workspace

ISO_MS = re.compile(r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z$")
ROW_FIELDS = {"job_id", "status", "prompt", "model_tier", "provider", "provider_used", "image_id", "image_url",
              "style_id", "character_id", "result_url", "result_image_id", "credits_consumed", "processing_ms",
              "error", "created_at", "completed_at"}


def _process(ws: Workspace, prompt: str, **extra: object) -> dict[str, object]:
    response = ws.client.post("/process", json={"prompt": prompt, "model_tier": "standard", **extra})
    assert response.status_code == 201, response.text
    return dict(response.json()["data"])


def test_list_envelope_and_row_fields(emu: EmulatorServer, ws: Workspace) -> None:
    made = _process(ws, "first")
    body = ws.client.get("/jobs").json()
    assert set(body) == {"success", "data", "meta"} and body["success"] is True
    assert body["meta"] == {"page": 1, "per_page": 50, "total": 1, "total_pages": 1}
    (row,) = body["data"]
    assert set(row) == ROW_FIELDS
    assert row["job_id"] == made["job_id"] and row["status"] == "completed" and row["prompt"] == "first"
    assert (row["provider"], row["provider_used"], row["credits_consumed"]) == ("platform", "system", 20)
    assert row["result_url"] == made["result_url"] and row["error"] is None
    assert ISO_MS.match(row["created_at"]) and ISO_MS.match(row["completed_at"])


def test_empty_workspace_lists_nothing(ws: Workspace) -> None:
    body = ws.client.get("/jobs").json()
    assert body["data"] == [] and body["meta"]["total"] == 0 and body["meta"]["total_pages"] == 0


def test_newest_first_with_paging(ws: Workspace) -> None:
    ids = [_process(ws, f"job {i}")["job_id"] for i in range(5)]
    pages = [ws.client.get("/jobs", params={"page": p, "per_page": 2}).json() for p in (1, 2, 3, 4)]
    assert [[r["job_id"] for r in page["data"]] for page in pages] == [ids[4:2:-1], ids[2:0:-1], ids[:1], []]
    assert {page["meta"]["total_pages"] for page in pages} == {3}
    assert {page["meta"]["total"] for page in pages} == {5}


def test_status_filter(emu: EmulatorServer, ws: Workspace) -> None:
    _process(ws, "ok")
    failed = ws.client.post("/process", json={"prompt": "boom", "model_tier": "pro"},
                            headers={"X-Emulator-Fault": "provider_error"})
    assert failed.status_code == 500
    completed = ws.client.get("/jobs", params={"status": "completed"}).json()
    assert [r["prompt"] for r in completed["data"]] == ["ok"] and completed["meta"]["total"] == 1
    failures = ws.client.get("/jobs", params={"status": "failed"}).json()["data"]
    assert [r["prompt"] for r in failures] == ["boom"]
    assert failures[0]["error"] and failures[0]["result_url"] is None and failures[0]["credits_consumed"] == 0
    assert ws.client.get("/jobs", params={"status": "pending"}).json()["data"] == []


def test_bulk_history_keeps_stable_newest_first_order(emu: EmulatorServer, ws: Workspace) -> None:
    start = datetime(2026, 1, 1, tzinfo=UTC)
    assert emu.admin.bulk_jobs(ws.workspace_id, count=250, start=start, step_ms=0) == 250
    emu.admin.bulk_jobs(ws.workspace_id, count=3, status="failed", start=start.replace(month=2), step_ms=1000)
    seen: list[str] = []
    for page in (1, 2, 3):
        seen += [r["job_id"] for r in ws.client.get("/jobs", params={"page": page, "per_page": 100}).json()["data"]]
    assert len(seen) == len(set(seen)) == 253
    first = ws.client.get("/jobs", params={"per_page": 3}).json()["data"]
    assert [r["status"] for r in first] == ["failed"] * 3
    assert first[0]["created_at"] == "2026-02-01T00:00:02.000Z"
    tied = ws.client.get("/jobs", params={"per_page": 100, "status": "completed"}).json()["data"]
    assert all(r["created_at"] == "2026-01-01T00:00:00.000Z" for r in tied)
    again = ws.client.get("/jobs", params={"per_page": 100, "status": "completed"}).json()["data"]
    assert [r["job_id"] for r in again] == [r["job_id"] for r in tied]
    # Synthetic history has no stored result: it is rendered on demand.
    assert httpx.get(tied[0]["result_url"]).status_code == 200


@pytest.mark.parametrize(
    ("params", "field"),
    [({"page": "0"}, "page"), ({"page": "x"}, "page"), ({"page": "-1"}, "page"), ({"per_page": "0"}, "per_page"),
     ({"per_page": "101"}, "per_page"), ({"per_page": "1.5"}, "per_page"), ({"status": "done"}, "status")],
)
def test_query_validation(ws: Workspace, params: dict[str, str], field: str) -> None:
    response = ws.client.get("/jobs", params=params)
    assert response.status_code == 400
    assert response.json()["error"].startswith(f"{field}:")


def test_per_page_100_is_allowed(ws: Workspace) -> None:
    assert ws.client.get("/jobs", params={"per_page": "100"}).json()["meta"]["per_page"] == 100


def test_get_one_job_full_row(ws: Workspace) -> None:
    made = _process(ws, "one", image_url="https://example.invalid/a.png")
    response = ws.client.get(f"/jobs/{made['job_id']}")
    assert response.status_code == 200
    row = response.json()["data"]
    assert set(row) == ROW_FIELDS
    assert row["image_url"] == "https://example.invalid/a.png" and row["style_id"] is None
    assert row["processing_ms"] == made["processing_ms"] and row["completed_at"] == made["completed_at"]
    upper = ws.client.get(f"/jobs/{str(made['job_id']).upper()}")
    assert upper.status_code == 200


def test_jobs_are_isolated_between_workspaces(ws: Workspace, make_workspace: Callable[..., Workspace]) -> None:
    made = _process(ws, "mine")
    other = make_workspace()
    response = other.client.get(f"/jobs/{made['job_id']}")
    assert response.status_code == 404 and response.json()["error"].startswith("jobId:")
    assert other.client.get("/jobs").json()["data"] == []


def test_unknown_or_malformed_job_id_is_404(ws: Workspace) -> None:
    for job_id in (str(uuid.uuid4()), "not-a-uuid", "1"):
        assert ws.client.get(f"/jobs/{job_id}").status_code == 404
