"""Issue 10, scenario 5: a damaged spool file holding a paid attempt's ``begin`` event.

Through Dagster against the emulator: the first run's records wait in the spool (another process
reads the ledger the whole time, so no write can merge), then the spool file of one SKU's begin
event is damaged. The next run must not pay for that SKU again, and fails it by name, naming the
file, until ``flokan-dagster ledger doctor`` resolves it; afterwards the SKU is reused from its
surviving (self-describing) events. No request is charged twice, and the ledger's credits equal
the emulator's deductions.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import dagster as dg
import pytest

from flokan_dagster import FlokanResource
from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.cli import main as cli_main
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.ledger.spool import sku_tag
from flokan_dagster.resource import FlokanLedgerResource, ImageStoreResource
from flokan_dagster.runs import materialize_skus
from tests.support import Workspace
from tests.test_assets import HERO, rows_for, write_catalog
from tests.test_ledger_contention import _HOLD_LEDGER_LOCK, ROOT
from tests.test_reliability_malformed import assert_ledger_pays_only_what_was_charged

ASSET = "hero_images"


def test_a_damaged_begin_event_never_pays_twice_and_fails_the_sku_by_name_until_doctor_resolves(
    tmp_path: Path, workspace: Workspace, capsys: pytest.CaptureFixture[str]
) -> None:
    skus = [f"SKU-{i:02d}" for i in range(4)]
    catalog = write_catalog(tmp_path / "catalog.csv", rows_for(len(skus)))
    database = str(tmp_path / "ledger.duckdb")
    defs = dg.Definitions(
        assets=[build_flokan_image_asset(ASSET, catalog=catalog, mapping=HERO, settle_timeout_s=10, settle_poll_s=0.2)],
        resources={
            "flokan": FlokanResource(api_key=workspace.api_key, base_url=workspace.admin.base_url, backoff_base_s=0.01),
            # Writes give up on a locked ledger quickly (they are spooled, never lost).
            "flokan_ledger": FlokanLedgerResource(database=database, lock_timeout_s=0.5),
            "flokan_images": ImageStoreResource(directory=str(tmp_path / "images")),
        },
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, skus)
    ledger = CreditLedger(database)
    ledger.flush_spool()  # the file exists, so readers open it (shared) while writers cannot

    def run() -> dict[str, str]:
        [result] = materialize_skus(defs, instance, [ASSET], skus, partitions_name=SKU_PARTITIONS.name,
                                    batch_size=10, log_level="ERROR")  # fmt: skip
        failures = [e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE]
        return {"": failures[0].step_failure_data.user_failure_data.description} if failures else {}  # type: ignore[union-attr]

    reader = subprocess.Popen([sys.executable, "-c", _HOLD_LEDGER_LOCK, database, "shared"], cwd=ROOT,
                              stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)  # fmt: skip
    try:
        assert reader.stdout is not None and reader.stdout.readline().strip() == "locked"
        assert run() == {}
        assert workspace.info()["jobs"] == len(skus)
        # Every record of the run is still in the spool; damage SKU-01's begin event beyond reading.
        [begin] = [p for p in ledger.spool.directory.glob("*.event.json")
                   if "~begin~" in p.name and sku_tag(ASSET, "SKU-01") in p.name]  # fmt: skip
        begin.write_bytes(b"\x00" * 64)
    finally:
        assert reader.stdin is not None
        reader.stdin.close()
        reader.wait(timeout=30)

    failure = run()
    assert workspace.info()["jobs"] == len(skus), "the damaged SKU was paid again"
    [description] = failure.values()
    assert "SKU-01" in description and begin.name in description and "ledger doctor --resolve" in description
    assert sum(1 for sku in skus if sku in description) == 1  # only the SKU the file concerns
    assert (ledger.spool.directory / "quarantine" / begin.name).read_bytes() == b"\x00" * 64  # kept

    assert cli_main(["ledger", "doctor", "--ledger", database]) == 1
    assert begin.name in capsys.readouterr().out
    assert run() != {}, "the SKU stays blocked until the file is resolved"
    assert workspace.info()["jobs"] == len(skus)
    assert cli_main(["ledger", "doctor", "--ledger", database, "--resolve", begin.name]) == 0

    assert run() == {}
    assert workspace.info()["jobs"] == len(skus), "resolving must not make the SKU paid again"
    latest = {sku: ledger.find_reusable(ASSET, sku, r.fingerprint) for sku in skus
              for r in ledger.attempts_for(asset=ASSET, sku=sku) if r.fingerprint}  # fmt: skip
    assert all(record is not None and record.status == "completed" for record in latest.values())
    assert ledger.flush_spool() == 0
    with FlokanResource(api_key=workspace.api_key, base_url=workspace.admin.base_url).get_client() as client:
        assert_ledger_pays_only_what_was_charged(ledger, workspace, client)
