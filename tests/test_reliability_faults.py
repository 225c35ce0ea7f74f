"""100 SKUs through Dagster against an emulator with faults on: never pay twice, never lose a record.

A dedicated emulator (its own state directory, so the session emulator's tests never meet these
faults) runs a seeded FaultPlan on every ``POST /process``: about 10 % of connections dropped after
the job completed and was charged, 5 % provider 500s, 5 % 429s, 10 % slow answers; a burst of
429s opens the batch and ``GET /jobs`` fails a few times while unknown outcomes are being settled.
The SKUs run in batched Dagster runs, then the reconciliation pass catches up, then a second
batched run covers every SKU that did not materialize.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import dagster as dg
import pytest

from flokan_dagster.emulator import EmulatorConfig, EmulatorServer, FaultPlan
from flokan_dagster.image_store import ImageStore
from flokan_dagster.reconcile import ReconcileCursor, reconcile
from flokan_dagster.runs import sku_ranges
from tests.reliability import (
    ASSET,
    Pipeline,
    build_pipeline,
    charged_jobs,
    charges_per_prompt,
    ledger_charges,
    prompt_of,
    run_outcomes,
    sku_names,
)
from tests.support import Admin

PLAN = FaultPlan(
    seed=20260504, drop_after_complete_rate=0.10, provider_error_rate=0.05, rate_limit_rate=0.05, slow_rate=0.10,
    slow_ms=200,
)  # fmt: skip
BATCH = 25


@pytest.fixture(scope="module")
def faulty(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Admin]:
    config = EmulatorConfig(state_dir=tmp_path_factory.mktemp("faulty-emulator"), latency_ms=30, faults=PLAN)
    with EmulatorServer(config) as server:
        yield Admin.of(server)


def check_every_sku_has_an_outcome(
    results: list[dg.ExecuteInProcessResult], skus: list[str]
) -> tuple[dict[str, str], dict[str, str]]:
    """Each run accounts for each of its SKUs exactly once: materialized, or failed by name with a reason."""
    made_all: dict[str, str] = {}
    failed_all: dict[str, str] = {}
    ranges = sku_ranges(sorted(skus), skus, BATCH)
    assert len(results) == len(ranges) > 1
    for result, (first, last) in zip(results, ranges, strict=True):
        expected = {s for s in skus if first <= s <= last}
        made, failed = run_outcomes(result)
        assert set(made) | set(failed) == expected
        assert result.success == (not failed)
        made_all.update(made)
        failed_all.update(failed)
    return made_all, failed_all


def reconcile_until_caught_up(pipeline: Pipeline) -> list[str]:
    """Reconciliation passes until one is caught up with nothing left to settle; the adopted SKUs."""
    store = ImageStore(pipeline.directory / "images")
    cursor: ReconcileCursor | None = None
    adopted: list[str] = []
    with pipeline.client() as client:
        for _ in range(10):
            result = reconcile(client, pipeline.ledger, store, cursor)
            cursor = result.cursor
            adopted += [a.sku for a in result.adoptions]
            if result.summary.caught_up and result.summary.error is None and not pipeline.ledger.unknown_attempts():
                return adopted
    raise AssertionError(f"reconciliation did not catch up: {result.summary.describe()}")


def check_accounts(pipeline: Pipeline, workspace_info: dict) -> None:
    """No prompt charged twice; the ledger holds every charged job, to the credit."""
    assert pipeline.ledger.flush_spool() == 0
    twice = {prompt: n for prompt, n in charges_per_prompt(pipeline).items() if n > 1}
    assert not twice, f"paid twice: {twice}"
    server = charged_jobs(pipeline)
    ledger = ledger_charges(pipeline.ledger)
    assert ledger == server
    assert sum(ledger.values()) == workspace_info["credits_deducted"]
    assert sum(a.credits_consumed or 0 for a in pipeline.ledger.attempts_for()) == workspace_info["credits_deducted"]


def test_100_skus_with_faults_never_pay_twice_nor_lose_a_record(tmp_path: Path, faulty: Admin) -> None:
    workspace = faulty.workspace(credits=1_000_000)
    skus = sku_names(100)
    pipeline = build_pipeline(tmp_path, workspace.api_key, faulty.base_url, skus, settle_timeout_s=2.0)
    # A 429 burst at the start, and GET /jobs failing while the first unknown outcomes are looked up.
    faulty.fault("rate_limit", times=8, retry_after=0)
    faulty.fault("provider_error", route="GET /jobs", times=3)
    try:
        first = pipeline.run(skus, BATCH)
    finally:
        faulty.clear_faults()
    made, failed = check_every_sku_has_an_outcome(first, skus)
    outcomes = list(made.values())
    # The faults did happen: some answers were lost and adopted, some SKUs failed by name.
    assert outcomes.count("adopted") >= 3 and outcomes.count("made") >= 50
    assert any("ServerError" in reason or "provider" in reason.lower() for reason in failed.values())
    # Settling met the GET /jobs 500s: the SKU fails by name, its attempt left for the reconciliation.
    assert any("looking its job up in GET /jobs failed" in reason for reason in failed.values())
    assert not any(reason.startswith("unexpected") for reason in failed.values()), failed
    # Before reconciling, a charged job the ledger lacks must be the job of an unsettled attempt.
    assert pipeline.ledger.flush_spool() == 0
    assert max(charges_per_prompt(pipeline).values()) == 1
    server, ledger = charged_jobs(pipeline), ledger_charges(pipeline.ledger)
    unsettled = pipeline.ledger.unknown_attempts()
    assert ledger.items() <= server.items() and len(unsettled) > 0
    assert len(set(server) - set(ledger)) <= len(unsettled)

    adopted_by_pass = reconcile_until_caught_up(pipeline)
    assert adopted_by_pass  # the paid jobs of the lookups GET /jobs failed were adopted, not paid again
    check_accounts(pipeline, workspace.info())
    for record in pipeline.ledger.attempts_for(asset=ASSET):
        assert record.status not in ("pending", "unknown"), record

    deducted = workspace.info()["credits_deducted"]
    hits = faulty.hits("POST /process")
    retry = sorted(failed)
    second = materialize_again(pipeline, retry)
    made2, failed2 = {}, {}
    for result in second:
        m, f = run_outcomes(result)
        made2.update(m)
        failed2.update(f)
    assert set(made2) | set(failed2) == set(retry)
    # SKUs whose paid job the reconciliation adopted are reused: not sent, not paid again.
    for sku in adopted_by_pass:
        assert made2.get(sku) == "reused", (sku, made2.get(sku), failed2.get(sku))
    # The rest paid at most once more each (a new job, or a new job whose answer was lost and adopted).
    spent = {
        e.event_specific_data.materialization.partition: e.event_specific_data.materialization.metadata[  # type: ignore[union-attr]
            "flokan/credits"
        ].value
        for result in second
        for e in result.get_asset_materialization_events()
    }
    assert all(spent[s] == (20 if kind in ("made", "adopted") else 0) for s, kind in made2.items()), (made2, spent)
    assert faulty.hits("POST /process") - hits >= sum(kind != "reused" for kind in made2.values())
    assert workspace.info()["credits_deducted"] - deducted == sum(spent.values())
    reconcile_until_caught_up(pipeline)
    check_accounts(pipeline, workspace.info())
    per_prompt = charges_per_prompt(pipeline)
    assert all(per_prompt[prompt_of(sku)] <= 1 for sku in skus) and set(per_prompt) <= {prompt_of(s) for s in skus}
    assert not [r for r in pipeline.ledger.attempts_for() if r.status in ("pending", "unknown")]


def materialize_again(pipeline: Pipeline, skus: list[str]) -> list[dg.ExecuteInProcessResult]:
    return pipeline.run(skus, BATCH)
