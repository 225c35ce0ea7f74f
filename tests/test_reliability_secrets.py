"""The API key never leaks, and the image store never writes outside its root.

Runs go through a Dagster instance on disk (temporary DAGSTER_HOME: run and event-log SQLite
files, compute logs of stdout/stderr, our Python loggers managed into the event log at DEBUG),
with failures on purpose: exceptions are where keys leak. Afterwards every byte Dagster, the
ledger (every table and view, the DuckDB files, the spool) and the image store wrote is searched
for the key, and the emulator's storage log shows that no request to the upload or image hosts
carried an Authorization header.
"""

from __future__ import annotations

import json
import logging
import threading
import traceback
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import dagster as dg
import duckdb
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from flokan_dagster import FlokanClient, FlokanResource
from flokan_dagster.api.errors import FlokanError
from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.catalog import CatalogMapping
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.resource import FlokanLedgerResource, ImageStoreResource
from flokan_dagster.runs import materialize_skus
from flokan_dagster.sensors import build_flokan_reconciliation_sensor
from tests.support import Admin, Workspace, png_bytes, wait_for
from tests.test_assets import HERO, rows_for, write_catalog

KEY_ENV = "FLOKAN_TEST_SECRET_KEY"
READ_TIMEOUT_S = 5.0  # far above a normal answer from the emulator, even on a loaded machine
SETTLE_S = 2.0  # the dropped answer's job is found at the first look; this only bounds the search
SLOW_ANSWER_MS = 12_000  # well past READ_TIMEOUT_S + SETTLE_S


def secret_forms(key: str) -> list[bytes]:
    """The key and its secret part, as UTF-8 and as it would sit in a JSON or UTF-16 dump."""
    forms = {key, key.removeprefix("flk_")}
    return [*(f.encode() for f in forms), *(f.encode("utf-16-le") for f in forms)]


def assert_no_secret(blob: bytes | str, key: str, where: str) -> None:
    data = blob.encode("utf-8", "surrogateescape") if isinstance(blob, str) else blob
    for form in secret_forms(key):
        assert form not in data, f"the API key leaked into {where}"


def assert_no_secret_under(root: Path, key: str) -> int:
    """Search every file under ``root`` (SQLite, DuckDB, logs, spool, images); return how many."""
    files = [p for p in root.rglob("*") if p.is_file()]
    for path in files:
        assert_no_secret(path.read_bytes(), key, str(path))
        assert_no_secret(str(path), key, f"the file name {path}")
    return len(files)


def dump_ledger(database: Path) -> str:
    """Every row of every table and view of the ledger, as text."""
    with duckdb.connect(str(database), read_only=True) as conn:
        relations = conn.execute(
            "SELECT table_name FROM information_schema.tables WHERE table_schema = 'main' ORDER BY table_name"
        ).fetchall()
        assert {"attempts", "attempt_events", "credits_by_sku"} <= {name for (name,) in relations}
        return "\n".join(f"{name}: {conn.execute(f'SELECT * FROM {name}').fetchall()!r}" for (name,) in relations)


@pytest.fixture
def dagster_home(tmp_path: Path) -> Iterator[dg.DagsterInstance]:
    """An instance on disk whose event log also holds our Python loggers' records at DEBUG."""
    overrides = {"python_logs": {"managed_python_loggers": ["flokan_dagster", "httpx", "httpcore"],
                                 "python_log_level": "DEBUG"}}  # fmt: skip
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home"), overrides=overrides) as instance:
        yield instance


def test_the_key_appears_nowhere_after_good_and_failing_runs_and_a_sensor_tick(
    tmp_path: Path, admin: Admin, workspace: Workspace, dagster_home: dg.DagsterInstance,
    monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture,
) -> None:  # fmt: skip
    key = workspace.api_key
    monkeypatch.setenv(KEY_ENV, key)
    caplog.set_level(logging.DEBUG)
    (tmp_path / "photo.png").write_bytes(png_bytes())
    rows = rows_for(6, **{
        "SKU-00": {"photo": "photo.png"},  # uploaded to the storage host, then edited
        "SKU-01": {"title": "a forbidden item"},  # safety filter (422)
        "SKU-02": {"title": "provider trouble"},  # provider error (500 after the job was created)
        "SKU-03": {"title": "dropped answer"},  # unknown outcome, adopted from GET /jobs
        "SKU-04": {"title": "slow answer"},  # unknown outcome left unknown, settled by the sensor
    })  # fmt: skip
    admin.fault("provider_error", prompt_contains="provider trouble", times=None)
    admin.fault("drop_after_complete", prompt_contains="dropped answer")
    # SKU-04's answer comes long after the client's read timeout plus the settle window, so its
    # attempt is left unknown however slow the machine is; normal answers have that timeout to spare.
    admin.fault("latency", prompt_contains="slow answer", ms=SLOW_ANSWER_MS)
    storage_before = len(admin.storage_log())
    catalog = write_catalog(tmp_path / "catalog.csv", rows)
    asset = build_flokan_image_asset("hero_images", catalog=catalog, mapping=HERO, settle_timeout_s=SETTLE_S, settle_poll_s=0.1)
    database = tmp_path / "ledger.duckdb"
    resources = {
        "flokan": FlokanResource(api_key=dg.EnvVar(KEY_ENV), base_url=admin.base_url, backoff_base_s=0.01, read_timeout_s=READ_TIMEOUT_S),
        "flokan_ledger": FlokanLedgerResource(database=str(database)),
        "flokan_images": ImageStoreResource(directory=str(tmp_path / "images")),
    }
    sensor = build_flokan_reconciliation_sensor(["hero_images"], rerun_failed=True)
    defs = dg.Definitions(assets=[asset], sensors=[sensor], resources=resources)
    dagster_home.add_dynamic_partitions(SKU_PARTITIONS.name, [row["sku"] for row in rows])

    [failing] = materialize_skus(defs, dagster_home, ["hero_images"], [r["sku"] for r in rows],
                                 partitions_name=SKU_PARTITIONS.name, batch_size=10)  # fmt: skip
    assert not failing.success
    ledger = CreditLedger(str(database))
    statuses = {a.sku: a.status for a in ledger.attempts_for(asset="hero_images")}
    assert statuses == {"SKU-00": "completed", "SKU-01": "rejected", "SKU-02": "failed", "SKU-03": "completed",
                        "SKU-04": "unknown", "SKU-05": "completed"}  # fmt: skip

    # The sensor's tick adopts SKU-04 and asks for re-runs of the failed SKUs; run what it asks.
    wait_for(lambda: not workspace.info()["jobs_by_status"].get("processing"), SLOW_ANSWER_MS / 1000 + 60,
             "SKU-04's job to finish server side")
    with dg.build_sensor_context(instance=dagster_home, definitions=defs, resources=resources) as context:
        tick = sensor(context)
    assert isinstance(tick, dg.SensorResult)
    assert [e.partition for e in tick.asset_events or []] == ["SKU-04"]
    for event in tick.asset_events or []:
        assert_no_secret(repr(event), key, "a sensor materialization")
    job = defs.resolve_implicit_global_asset_job_def()
    assert tick.run_requests
    for request in tick.run_requests:
        rerun = job.execute_in_process(instance=dagster_home, asset_selection=request.asset_selection,
                                       partition_key=request.partition_key, tags=request.tags,
                                       raise_on_error=False)  # fmt: skip
        assert not rerun.success  # the safety filter and the provider still refuse

    # A run with a wrong key fails with a 401 that must not show the wrong key either.
    wrong = "flk_" + "0123456789abcdef" * 2
    monkeypatch.setenv(KEY_ENV, wrong)
    [unauthorized] = materialize_skus(defs, dagster_home, ["hero_images"], ["SKU-05"], partitions_name=SKU_PARTITIONS.name,
                                      batch_size=10, run_config={"force": True})  # fmt: skip
    assert not unauthorized.success

    runs = dagster_home.get_runs()
    assert len(runs) == 3  # the batch, the sensor's re-run, the wrong key
    for run in runs:
        for record in dagster_home.all_logs(run.run_id):
            for secret in (key, wrong):
                assert_no_secret(repr(record), secret, f"the event log of run {run.run_id}")
                assert_no_secret(dg.serialize_value(record), secret, f"the event log of run {run.run_id}")
        assert_no_secret(repr(run), key, "a run's record")
    messages = [r.user_message for run in runs for r in dagster_home.all_logs(run.run_id) if r.user_message]
    assert any("SKU-01" in m and "FlokanSafetyFilterError" in m for m in messages)  # the failures did happen
    assert any("401" in m for m in messages)
    home = Path(dagster_home.root_directory)
    compute_logs = [p for p in home.rglob("*") if p.suffix in (".out", ".err")]
    assert compute_logs, "no compute logs were captured"
    for secret in (key, wrong):
        assert assert_no_secret_under(home, secret) > 5  # run, event-log and schedule SQLite files, compute logs
        assert_no_secret("\n".join(r.getMessage() + repr(r.__dict__) for r in caplog.records), secret, "Python logging")

    assert ledger.flush_spool() == 0
    for secret in (key, wrong):
        assert_no_secret(dump_ledger(database), secret, "the ledger's tables and views")
        assert_no_secret_under(tmp_path / "images", secret)
        for path in [database, *tmp_path.glob("ledger.duckdb*")]:
            if path.is_file():
                assert_no_secret(path.read_bytes(), secret, str(path))
            elif path.is_dir():  # the spool
                assert_no_secret_under(path, secret)
        assert_no_secret(repr(resources["flokan"]) + repr(ledger), secret, "a repr")

    storage = admin.storage_log()[storage_before:]
    assert {entry["method"] for entry in storage} >= {"PUT", "GET"}  # an upload and the downloads
    assert not [entry for entry in admin.storage_log() if entry["authorization"]]


class _EchoingServer(BaseHTTPRequestHandler):
    """A misbehaving gateway that echoes the request's Authorization header in its answers."""

    def do_GET(self) -> None:  # noqa: N802
        self._answer()

    def do_POST(self) -> None:  # noqa: N802
        self._answer()

    def _answer(self) -> None:
        self.rfile.read(int(self.headers.get("Content-Length") or 0))
        header = self.headers.get("Authorization", "")
        if self.path.endswith("/estimate-credits"):
            status, body = 401, json.dumps({"success": False, "error": f"invalid API key in '{header}'"}).encode()
        elif self.path.endswith("/process"):
            status, body = 502, f"<html>bad gateway for {header}</html>".encode()
        else:
            status, body = 400, json.dumps({"success": False, "error": f"bad request: headers were {dict(self.headers)}"}).encode()
        self.send_response(status)
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args: Any) -> None:
        pass


@pytest.fixture
def echoing_server() -> Iterator[str]:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _EchoingServer)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}/api/v1/image-editor"
    server.shutdown()
    server.server_close()


def test_a_server_that_echoes_the_key_back_does_not_put_it_in_an_exception(echoing_server: str) -> None:
    key = "flk_" + "feedface" * 4
    with FlokanClient(api_key=key, base_url=echoing_server, max_attempts=1) as client:
        calls = [
            lambda: client.estimate_credits("pro"),
            lambda: client.process("a red mug", "pro"),
            lambda: client.list_jobs(),
        ]
        for call in calls:
            with pytest.raises(FlokanError) as caught:
                call()
            error = caught.value
            shown = "".join(traceback.format_exception(error)) + repr(error) + repr(vars(error)) + repr(error.args)
            assert_no_secret(shown, key, f"{type(error).__name__}")
            assert error.status_code in (400, 401, 502)


def test_a_run_against_an_echoing_server_keeps_the_key_out_of_dagster(
    tmp_path: Path, echoing_server: str, dagster_home: dg.DagsterInstance, monkeypatch: pytest.MonkeyPatch
) -> None:
    key = "flk_" + "c0ffee00" * 4
    monkeypatch.setenv(KEY_ENV, key)
    catalog = write_catalog(tmp_path / "catalog.csv", rows_for(2))
    defs = dg.Definitions(
        assets=[build_flokan_image_asset("hero_images", catalog=catalog, mapping=HERO)],
        resources={
            "flokan": FlokanResource(api_key=dg.EnvVar(KEY_ENV), base_url=echoing_server, max_attempts=1),
            "flokan_ledger": FlokanLedgerResource(database=str(tmp_path / "ledger.duckdb")),
            "flokan_images": ImageStoreResource(directory=str(tmp_path / "images")),
        },
    )
    dagster_home.add_dynamic_partitions(SKU_PARTITIONS.name, ["SKU-00", "SKU-01"])
    [result] = materialize_skus(defs, dagster_home, ["hero_images"], ["SKU-00", "SKU-01"],
                                partitions_name=SKU_PARTITIONS.name, batch_size=10)  # fmt: skip
    assert not result.success
    assert any("401" in (r.user_message or "") for r in dagster_home.all_logs(result.run_id))
    assert_no_secret_under(Path(dagster_home.root_directory), key)
    assert_no_secret_under(tmp_path, key)


# ---------------------------------------------------------------- the image store stays in its root

NASTY_SKUS = [
    "../../etc/passwd", "/etc/passwd", "..", ".", "a/../../b", "./../x", "..\\..\\windows", "C:\\temp\\x",
    "~/x", "$HOME", "x" * 200, "日本語/../商品", "caf\u00e9", "cafe\u0301", "\u202eevil.png", "a\x00b", "",
]  # fmt: skip


def _inside(root: Path, path: Path) -> bool:
    return path.resolve().is_relative_to(root.resolve())


@settings(max_examples=200, deadline=None)
@given(sku=st.one_of(st.text(), st.sampled_from(NASTY_SKUS)), asset=st.one_of(st.just("hero_images"), st.text(max_size=20)))
def test_store_paths_never_leave_the_root(sku: str, asset: str) -> None:
    root = Path("/srv/flokan/images")
    path = ImageStore(root).path_for(asset, sku, "ab" * 32)
    assert _inside(root, path) and path.parent.parent.parent == root
    assert len(path.name.encode()) < 255 and all(len(part.encode()) < 255 for part in path.parts)


def test_store_writes_nasty_skus_under_the_root_in_distinct_places(tmp_path: Path) -> None:
    store = ImageStore(tmp_path / "images")
    image = png_bytes()
    paths = {sku: store.write("hero_images", sku, image).path for sku in NASTY_SKUS}
    assert all(_inside(tmp_path / "images", p) and p.is_file() for p in paths.values())
    assert len({p.parent for p in paths.values()}) == len(NASTY_SKUS)  # no two SKUs share a folder
    assert [p for p in tmp_path.rglob("*") if p.is_file() and not _inside(tmp_path / "images", p)] == []
    for sku, path in paths.items():
        assert store.find(path, store.write("hero_images", sku, image).sha256) is not None
    assert store.find(tmp_path / "images" / ".." / "outside.png", "ab" * 32) is None


def test_a_run_over_path_like_skus_writes_every_image_under_the_store(tmp_path: Path, admin: Admin, workspace: Workspace) -> None:
    skus = ["../../etc/passwd", "/tmp/absolute", "a/../../b", "..", "x" * 200, "日本語/../商品"]
    (tmp_path / "work").mkdir()
    catalog = write_catalog(tmp_path / "work" / "catalog.csv",
                            [{"sku": s, "title": f"item {i}", "color": "red", "photo": "", "tier": "standard"}
                             for i, s in enumerate(skus)])  # fmt: skip
    store_root = tmp_path / "work" / "images"
    defs = dg.Definitions(
        assets=[build_flokan_image_asset("hero_images", catalog=catalog, mapping=CatalogMapping(
            prompt_template="Studio photo of {title} in {color}"))],
        resources={
            "flokan": FlokanResource(api_key=workspace.api_key, base_url=admin.base_url),
            "flokan_ledger": FlokanLedgerResource(database=str(tmp_path / "work" / "ledger.duckdb")),
            "flokan_images": ImageStoreResource(directory=str(store_root)),
        },
    )
    instance = dg.DagsterInstance.ephemeral()
    instance.add_dynamic_partitions(SKU_PARTITIONS.name, skus)
    [result] = materialize_skus(defs, instance, ["hero_images"], skus, partitions_name=SKU_PARTITIONS.name, batch_size=10)
    assert result.success
    records = instance.fetch_materializations(dg.AssetKey("hero_images"), limit=20).records
    paths = {r.partition_key: Path(r.asset_materialization.metadata["flokan/path"].value) for r in records}  # type: ignore[union-attr]
    assert sorted(paths) == sorted(skus)
    assert all(_inside(store_root, p) and p.is_file() for p in paths.values())
    assert len(set(paths.values())) == len(skus)
    outside = [p for p in tmp_path.rglob("*.png") if not _inside(store_root, p)]
    assert outside == [] and not (tmp_path / "etc").exists() and not Path("/tmp/absolute").exists()
