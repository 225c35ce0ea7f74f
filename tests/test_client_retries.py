"""The retry matrix, unknown outcomes, malformed answers and key secrecy, counted server side."""

from __future__ import annotations

import asyncio
import socket
from datetime import datetime, timezone

import dagster as dg
import pytest

from flokan_dagster import (
    AsyncFlokanClient,
    FlokanClient,
    FlokanConnectionError,
    FlokanError,
    FlokanRateLimitError,
    FlokanResource,
    FlokanResponseError,
    FlokanServerError,
    FlokanUnknownOutcomeError,
)
from flokan_dagster.api.ratelimit import RateLimitTracker
from flokan_dagster.api.retry import parse_retry_after
from tests.support import Admin, Workspace, png_bytes, wait_for

FAST = {"backoff_base_s": 0.01, "backoff_max_s": 0.05}


def client_for(workspace: Workspace, **options: object) -> FlokanClient:
    return FlokanClient(api_key=workspace.api_key, base_url=workspace.admin.base_url, **{**FAST, **options})


def only_job(client: FlokanClient):  # type: ignore[no-untyped-def]
    jobs = client.list_jobs().jobs
    assert len(jobs) == 1
    return jobs[0]


def test_dropped_connection_after_completion_is_sent_once_and_reported_unknown(admin: Admin, workspace: Workspace) -> None:
    admin.fault("drop_after_complete", prompt_contains="drop-me")
    hits = admin.hits("POST /process")
    before = workspace.info()["credits"]
    with client_for(workspace) as client:
        with pytest.raises(FlokanUnknownOutcomeError) as err:
            client.process("drop-me please", "pro")
        job = only_job(client)
    assert admin.hits("POST /process") == hits + 1
    assert err.value.request.prompt == "drop-me please"
    assert err.value.sent_at <= datetime.now(timezone.utc)
    assert job.status == "completed" and job.credits_consumed == 50
    assert workspace.info()["credits"] == before - 50


@pytest.mark.parametrize("status", [500, 502, 503, 504])
def test_process_5xx_is_unknown_outcome_never_retried(admin: Admin, workspace: Workspace, status: int) -> None:
    kind, params = ("provider_error", {}) if status == 500 else ("http_error", {"status": status})
    admin.fault(kind, prompt_contains=f"five-{status}", **params)
    hits = admin.hits("POST /process")
    with client_for(workspace) as client, pytest.raises(FlokanUnknownOutcomeError) as err:
        client.process(f"five-{status}", "standard")
    assert admin.hits("POST /process") == hits + 1
    assert err.value.status_code == status and err.value.cause == f"HTTP {status}"


def test_process_is_retried_after_429_honouring_retry_after(admin: Admin, workspace: Workspace) -> None:
    admin.fault("rate_limit", prompt_contains="busy", retry_after=1)
    hits = admin.hits("POST /process")
    with client_for(workspace) as client:
        result = client.process("busy hour", "standard")
        waits = list(client.stats.waits_s)
    assert result.status == "completed"
    assert admin.hits("POST /process") == hits + 2
    assert waits and waits[0] >= 1.0


def test_429_retry_creates_one_job_only(admin: Admin, workspace: Workspace) -> None:
    admin.fault("rate_limit", prompt_contains="single", retry_after=0)
    with client_for(workspace) as client:
        client.process("single job", "standard")
        assert client.list_jobs().meta.total == 1


def test_process_read_timeout_is_unknown_and_the_job_still_completes(admin: Admin, workspace: Workspace) -> None:
    admin.fault("latency", prompt_contains="slowpoke", ms=1500)
    hits = admin.hits("POST /process")
    with client_for(workspace, read_timeout_s=0.3) as client:
        with pytest.raises(FlokanUnknownOutcomeError) as err:
            client.process("slowpoke", "standard")
        assert admin.hits("POST /process") == hits + 1
        assert err.value.cause == "ReadTimeout"
        wait_for(lambda: only_job(client).status == "completed", 60, "the job to complete")
        job = only_job(client)
    assert job.status == "completed" and job.credits_consumed == 20


def test_process_connect_failure_is_retried_then_a_connection_error() -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]  # closed once the block ends: nothing listens there
    client = FlokanClient(api_key="flk_x", base_url=f"http://127.0.0.1:{port}/api", max_attempts=3, **FAST)
    with pytest.raises(FlokanConnectionError) as err:
        client.process("never sent", "pro")
    assert not isinstance(err.value, FlokanUnknownOutcomeError)
    assert client.stats.requests == 3


CALLS = {
    "GET /jobs": lambda c: c.list_jobs(),
    "POST /estimate-credits": lambda c: c.estimate_credits("pro"),
    "POST /upload-url": lambda c: c.upload_image(png_bytes()),
}


@pytest.mark.parametrize("route", list(CALLS))
@pytest.mark.parametrize(("kind", "params"), [
    ("http_error", {"status": 502}), ("http_error", {"status": 503}), ("http_error", {"status": 504}),
    ("rate_limit", {"retry_after": 0}),
])  # fmt: skip
def test_idempotent_calls_retry_502_to_504_and_429(
    admin: Admin, workspace: Workspace, route: str, kind: str, params: dict[str, int]
) -> None:
    admin.fault(kind, route=route, times=2, **params)
    hits = admin.hits(route)
    with client_for(workspace) as client:
        CALLS[route](client)
    assert admin.hits(route) == hits + 3


def test_idempotent_500_is_not_retried(admin: Admin, workspace: Workspace) -> None:
    admin.fault("http_error", route="GET /jobs", times=1, status=500)
    hits = admin.hits("GET /jobs")
    with client_for(workspace) as client, pytest.raises(FlokanServerError):
        client.list_jobs()
    assert admin.hits("GET /jobs") == hits + 1


def test_retries_are_bounded(admin: Admin, workspace: Workspace) -> None:
    admin.fault("rate_limit", route="GET /jobs", times=None, retry_after=0)
    hits = admin.hits("GET /jobs")
    with client_for(workspace, max_attempts=3) as client, pytest.raises(FlokanRateLimitError) as err:
        client.list_jobs()
    assert admin.hits("GET /jobs") == hits + 3
    assert err.value.retry_after_s == 0 and err.value.status_code == 429


def test_total_wait_is_bounded(admin: Admin, workspace: Workspace) -> None:
    admin.fault("rate_limit", route="GET /jobs", times=None, retry_after=30)
    with client_for(workspace, max_total_wait_s=1.0) as client, pytest.raises(FlokanRateLimitError):
        client.list_jobs()
    assert client.stats.waits_s == []


@pytest.mark.parametrize("variant", ["non_json", "missing_fields", "wrong_types", "truncated"])
def test_malformed_answers(admin: Admin, workspace: Workspace, variant: str) -> None:
    with client_for(workspace, max_attempts=1) as client:
        client.process("a job for the listing to break", "standard")
        admin.fault("malformed", route="GET /jobs", variant=variant)
        admin.fault("malformed", prompt_contains=f"bad-{variant}", variant=variant)
        with pytest.raises((FlokanResponseError, FlokanConnectionError)) as listing:
            client.list_jobs()
        with pytest.raises(FlokanUnknownOutcomeError) as processing:
            client.process(f"bad-{variant}", "standard")
    assert "GET /jobs" in str(listing.value)
    assert processing.value.request.prompt == f"bad-{variant}"


def test_huge_answers_are_refused(admin: Admin, workspace: Workspace) -> None:
    admin.fault("malformed", route="GET /jobs", variant="huge", bytes=17 * 1024 * 1024)
    with client_for(workspace) as client, pytest.raises(FlokanResponseError) as err:
        client.list_jobs()
    assert "exceeds" in str(err.value)


def test_the_key_appears_in_no_exception(admin: Admin, workspace: Workspace) -> None:
    admin.fault("drop_after_complete", prompt_contains="leak-1")
    admin.fault("provider_error", prompt_contains="leak-2")
    admin.fault("malformed", prompt_contains="leak-3", variant="non_json")
    errors: list[BaseException] = []
    with client_for(workspace, max_attempts=1) as client:
        for attempt in (
            lambda: client.process("leak-1", "pro"),
            lambda: client.process("leak-2", "pro"),
            lambda: client.process("leak-3", "pro"),
            lambda: client.process("forbidden", "pro"),
            lambda: client.get_job("00000000-0000-4000-8000-000000000000"),
            lambda: FlokanClient(api_key=workspace.api_key + "x", base_url=admin.base_url).list_jobs(),
        ):
            with pytest.raises(FlokanError) as err:
                attempt()
            errors.append(err.value)
        text = repr(client) + "".join(str(e) + repr(e) + repr(vars(e)) for e in errors)
    assert len(errors) == 6
    assert workspace.api_key not in text and workspace.api_key[4:] not in text


def test_retry_after_parsing() -> None:
    assert parse_retry_after("7") == 7.0
    assert parse_retry_after("Sun, 06 Nov 1994 08:49:37 GMT", now=784111777.0 - 5) == 5.0
    assert parse_retry_after("garbage") is None and parse_retry_after(None) is None


def test_tracker_waits_for_the_reset_when_nothing_remains() -> None:
    tracker = RateLimitTracker()
    tracker.observe({"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "1", "X-RateLimit-Reset": "5"})
    assert tracker.wait_before_request() == 0.0  # the last request of the window goes
    assert 4.0 < tracker.wait_before_request() <= 5.0  # then it waits for the reset
    tracker.observe({"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "0"})
    assert tracker.wait_before_request() == 0.0  # the window already reset
    tracker.observe({"X-RateLimit-Limit": "10", "X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "50"})
    tracker.defer_to_retry_after()
    assert tracker.wait_before_request() == 0.0  # a 429's Retry-After governs instead


def test_async_client_bounds_concurrency(admin: Admin, workspace: Workspace) -> None:
    admin.fault("latency", prompt_contains="bounded", times=None, ms=200)

    async def run() -> list[str]:
        async with AsyncFlokanClient(
            api_key=workspace.api_key, base_url=admin.base_url, max_concurrency=2, **FAST
        ) as client:
            results = await asyncio.gather(*(client.process(f"bounded {i}", "standard") for i in range(6)))
            return [r.job_id for r in results]

    job_ids = asyncio.run(run())
    with client_for(workspace) as client:
        jobs = [client.get_job(job_id) for job_id in job_ids]
    # At any job's start, at most two jobs (itself included) were running on the server.
    for job in jobs:
        running = [o for o in jobs if o.created_at <= job.created_at < o.completed_at]
        assert len(running) <= 2
    assert len(set(job_ids)) == 6


def test_async_client_upload_list_and_iterate(workspace: Workspace) -> None:
    async def run() -> tuple[str, list[str], int]:
        async with AsyncFlokanClient(api_key=workspace.api_key, base_url=workspace.admin.base_url) as client:
            image_id = await client.upload_image(png_bytes())
            result = await client.process("Async edit", "standard", image_id=image_id)
            estimate = await client.estimate_credits("standard")
            ids = [job.job_id async for job in client.iter_jobs(per_page=1)]
            job = await client.get_job(result.job_id)
            assert (await client.download(result.result_url)).startswith(b"\x89PNG")
            return job.image_id or "", ids, estimate.estimated_credits

    image_id, ids, estimate = asyncio.run(run())
    assert image_id and len(ids) == 1 and estimate >= 20


def test_resource_configures_a_client_and_keeps_the_key_out_of_dagster(workspace: Workspace) -> None:
    resource = FlokanResource(api_key=workspace.api_key, base_url=workspace.admin.base_url, max_concurrency=3)
    assert workspace.api_key not in repr(resource)

    @dg.asset
    def probe(context, flokan: FlokanResource):  # type: ignore[no-untyped-def]
        with flokan.get_client() as client:
            estimate = client.estimate_credits("pro")
        context.log.info(f"resource: {flokan!r}")
        assert flokan.get_async_client().max_concurrency == 3
        return dg.MaterializeResult(metadata={"estimate": estimate.estimated_credits})

    instance = dg.DagsterInstance.ephemeral()
    result = dg.materialize([probe], resources={"flokan": resource}, instance=instance)
    assert result.success
    records = instance.all_logs(result.run_id)
    assert records and not any(workspace.api_key in str(record) for record in records)
