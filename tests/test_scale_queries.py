"""The batch-sized reads return exactly what the whole-ledger and whole-catalog reads did.

Runs read only their own SKUs (``attempts_for_skus``, ``CatalogFile.catalog_for``) and the
sensors compare in SQL (``stale_skus``, ``CatalogFile.partition_changes``); each is checked
here against the whole-history answer filtered in Python, on a ledger with several assets,
repeated attempts, external rows and events still waiting in the spool.
"""

from __future__ import annotations

import random
from datetime import datetime, timedelta
from pathlib import Path

import pytest

from flokan_dagster.catalog import Catalog, CatalogFile, CatalogMapping, SkuSpec, load_catalog, partition_changes
from flokan_dagster.image_store import ImageStore
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.ledger.records import LedgerEvent
from flokan_dagster.planning import BatchHistory, decide, read_history
from tests.servers import LEDGER_BACKENDS, ledger_on

ASSETS = ("hero", "lifestyle", "thumbs")
SKUS = [f"S-{i}" for i in range(12)] + ["Café-1", "  padded  "]


@pytest.fixture(scope="module", params=["spooled", "merged", "compacted"])
def ledger(tmp_path_factory: pytest.TempPathFactory, request: pytest.FixtureRequest) -> CreditLedger:
    """A ledger of 40 attempts over 3 assets and 14 SKUs, a few external jobs, and 5 events either
    still in the spool (reads overlay them), merged (reads go to the table), or merged into a
    compacted table that later writes left partly unsorted (runs read a batch's rows whole)."""
    rng = random.Random(11)
    ledger = CreditLedger(str(tmp_path_factory.mktemp("scale") / "ledger.duckdb"))
    start = datetime(2026, 5, 1)
    for n in range(40):
        sku, asset = rng.choice(SKUS), rng.choice(ASSETS)
        aid = ledger.begin_attempt(asset=asset, sku=sku, prompt="p", model_tier="pro", fingerprint=f"fp{rng.randint(0, 2)}",
                                   run_id=f"run-{n % 7}", sent_at=start + timedelta(minutes=n))  # fmt: skip
        status = rng.choice(["completed", "completed", "failed", "unknown", None])
        if status is not None:
            ledger.finish_attempt(aid, status=status, job_id=f"job-{n}", result_image_id=f"img-{n}",
                                  completed_at=start + timedelta(minutes=n, seconds=rng.randint(1, 50)))  # fmt: skip
    ledger.record_external_jobs([{"job_id": f"ext-{n}", "status": "completed", "credits_consumed": 5} for n in range(4)])
    # Events left in the spool (a locked database): reads overlay them, and so must the filtered reads.
    for n in range(5):
        fields = {"asset": "hero", "sku": SKUS[n], "status": "completed", "origin": "dagster", "prompt": "p",
                  "model_tier": "pro", "fingerprint": "fp9", "job_id": f"spooled-{n}", "result_image_id": f"img-s{n}",
                  "completed_at": start + timedelta(days=1), "sent_at": start + timedelta(days=1)}  # fmt: skip
        ledger.spool.put(LedgerEvent.create(f"spooled-attempt-{n}", "begin", fields))
    assert ledger.spooled_count() == 5
    if request.param != "spooled":
        ledger.flush_spool()
        assert ledger.spooled_count() == 0
    if request.param == "compacted":
        assert ledger.compact(force=True).compacted
        # Written after the compaction: a tail of new rows, and sorted rows rewritten into it.
        for n, sku in enumerate(SKUS[::3]):
            aid = ledger.begin_attempt(asset="hero", sku=sku, prompt="p", model_tier="pro", fingerprint="fp1",
                                       run_id="run-late", sent_at=start + timedelta(days=2, minutes=n))  # fmt: skip
            ledger.finish_attempt(aid, status="completed" if n % 2 else "unknown", job_id=f"late-{n}",
                                  completed_at=start + timedelta(days=2, minutes=n, seconds=5))  # fmt: skip
        settled = next(a for a in ledger.attempts_for(asset="hero") if a.status == "unknown" and a.run_id != "run-late")
        ledger.finish_attempt(settled.attempt_id, status="completed", job_id=settled.job_id or "settled-late",
                              completed_at=start + timedelta(days=3))  # fmt: skip
    return ledger


@pytest.mark.parametrize("asset", [*ASSETS, None])
@pytest.mark.parametrize("skus", [SKUS[:1], SKUS[3:9], SKUS, ["nope", SKUS[2], SKUS[2]], []])
def test_attempts_for_skus_equals_the_whole_ledger_filtered(ledger: CreditLedger, asset: str | None, skus: list[str]) -> None:
    whole = [a for a in ledger.attempts_for(asset=asset) if a.sku in set(skus)]
    assert ledger.attempts_for_skus(asset, skus) == whole


def test_attempts_for_skus_over_several_assets(ledger: CreditLedger) -> None:
    wanted = {"hero", "thumbs"}
    whole = [a for a in ledger.attempts_for() if a.asset in wanted and a.sku in set(SKUS[:6])]
    assert ledger.attempts_for_skus(sorted(wanted), SKUS[:6]) == whole and whole
    assert ledger.attempts_for_skus([], SKUS) == []


def test_attempts_for_one_sku_equals_the_whole_ledger_filtered(ledger: CreditLedger) -> None:
    for sku in SKUS:
        assert ledger.attempts_for(asset="hero", sku=sku) == [a for a in ledger.attempts_for(asset="hero") if a.sku == sku]
        assert ledger.attempts_for(sku=sku) == [a for a in ledger.attempts_for() if a.sku == sku]


@pytest.mark.parametrize("asset", ASSETS)
def test_stale_skus_equals_the_comparison_in_python(ledger: CreditLedger, asset: str) -> None:
    rng = random.Random(asset)
    latest = ledger.latest_completed_fingerprints(asset)
    fingerprints = {sku: f"fp{rng.randint(0, 2)}" for sku in [*SKUS, "never-made"]}
    expected = sorted(sku for sku, fp in fingerprints.items() if latest.get(sku) != fp)
    assert ledger.stale_skus(asset, fingerprints) == expected
    assert 0 < len(expected) < len(fingerprints)  # both kinds occur
    assert ledger.stale_skus(asset, {}) == []


CATALOG = """sku,title,tier
A-1,a mug,pro
B-2,a cup,ultra
 Café-3 ,a vase,
A-1,again,
D|4,bad key,
E-5,,
,,
F-6,a bag,creative
"""


def test_catalog_for_equals_the_whole_catalog_restricted(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(CATALOG, encoding="utf-8")
    mapping = CatalogMapping(prompt_template="photo of {title}", tier_column="tier")
    whole = load_catalog(path, mapping)
    assert sorted(whole.specs) == ["Café-3", "F-6"] and sorted(whole.problems) == ["A-1", "B-2", "E-5"]
    assert [p.sku for p in whole.unkeyed] == ["D|4"]
    with CatalogFile.open(path, mapping) as catalog_file:
        for skus in (["A-1"], ["Café-3", "F-6", "B-2"], ["nope", "E-5"], whole.partition_keys):
            part = catalog_file.catalog_for(skus)
            assert part.specs == {k: v for k, v in whole.specs.items() if k in skus}
            assert part.problems == {k: v for k, v in whole.problems.items() if k in skus}
        assert catalog_file.partition_keys == whole.partition_keys
        for existing in ([], ["A-1", "Z-9"], whole.partition_keys, ["Z-9", "Café-3", "Y"]):
            assert catalog_file.partition_changes(existing) == partition_changes(whole.partition_keys, existing)


class _FixedPrint(SkuSpec):
    """A spec whose fingerprint is one the generated ledger uses, so reuse and settling paths are taken."""

    def fingerprint(self, upstream: str | None = None) -> str:
        return f"fp{sum(map(ord, self.sku)) % 3}"


@pytest.mark.parametrize("upstream", [None, "hero"])
@pytest.mark.parametrize("asset", ["hero", "lifestyle", "thumbs"])
def test_the_deciding_attempts_give_the_plan_every_attempt_gives(ledger: CreditLedger, asset: str, upstream: str | None,
                                                                  tmp_path: Path) -> None:  # fmt: skip
    catalog = Catalog(specs={sku: _FixedPrint(sku, "p", "pro", None, None, None, None, n) for n, sku in enumerate(SKUS)})
    store = ImageStore(tmp_path / "images")
    everything = BatchHistory()
    for record in ledger.attempts_for_skus(None, SKUS):
        if record.asset == asset:
            everything.attempts.setdefault(record.sku or "", []).append(record)
        if record.asset == upstream:
            everything.upstream.setdefault(record.sku or "", []).append(record)
    chosen = read_history(ledger, catalog, SKUS, asset, upstream)
    assert sum(map(len, chosen.attempts.values())) <= sum(map(len, everything.attempts.values()))
    kinds = set()
    for force in (False, True):
        for run_id in (None, "run-3"):
            expected = decide(SKUS, catalog, everything, store=store, run_id=run_id, upstream=upstream, force=force)
            found = decide(SKUS, catalog, chosen, store=store, run_id=run_id, upstream=upstream, force=force)
            assert found == expected
            kinds |= {(t.reuse is not None, bool(t.unsettled)) for t in found.tasks}
    assert (True, False) in kinds or upstream  # a reusable attempt was chosen (without an upstream image to wait for)


@pytest.mark.parametrize("backend", LEDGER_BACKENDS)
def test_the_batch_reads_on_every_backend(backend: str, request: pytest.FixtureRequest, tmp_path: Path) -> None:
    ledger = ledger_on(backend, request, tmp_path)
    for n, (sku, status, print_) in enumerate([("A", "completed", "f1"), ("A", "completed", "f2"), ("A", "unknown", "f2"),
                                               ("B", "failed", "f1"), ("B", "completed", "f1"), ("C", "completed", "f3")]):
        aid = ledger.begin_attempt(asset="hero", sku=sku, prompt="p", model_tier="pro", fingerprint=print_, run_id=f"r{n}")
        if status != "unknown":
            ledger.finish_attempt(aid, status=status, job_id=f"j{n}", result_image_id=f"i{n}")
        else:
            ledger.finish_attempt(aid, status="unknown")
    whole = [a for a in ledger.attempts_for(asset="hero") if a.sku in ("A", "B")]
    assert ledger.attempts_for_skus("hero", ["A", "B"]) == whole
    deciding = ledger.deciding_attempts("hero", {"A": "f1", "B": "f1"})
    # A: the latest completed (f2), the latest completed for f1; not the unknown f2 one. B: its completed f1 only.
    assert sorted((a.sku, a.status, a.fingerprint) for a in deciding) == [
        ("A", "completed", "f1"), ("A", "completed", "f2"), ("B", "completed", "f1")]
    deciding = ledger.deciding_attempts("hero", {"A": "f2", "C": None})
    assert sorted((a.sku, a.status, a.fingerprint) for a in deciding) == [
        ("A", "completed", "f2"), ("A", "unknown", "f2"), ("C", "completed", "f3")]
    assert ledger.stale_skus("hero", {"A": "f2", "B": "f2", "C": "f3", "D": "f1"}) == ["B", "D"]


def test_the_report_from_one_grouped_scan_equals_the_cost_views(ledger: CreditLedger) -> None:
    """``cost_summary`` sums one scan's groups in Python; each figure equals its view's answer."""
    from flokan_dagster.ledger import cost_summary

    def q(sql: str) -> list[tuple[object, ...]]:
        return ledger.read(lambda c: c.execute(sql).fetchall())

    summary = cost_summary(ledger, days=3)
    ((credits, attempts),) = q("SELECT sum(credits), count(*) FROM ledger_costs")
    assert (summary["credits"], summary["attempts"]) == (credits, attempts) and attempts
    assert {r["asset"]: (r["attempts"], r["credits"]) for r in summary["by_asset"]} == {
        a: (n, c) for a, c, n in q("SELECT asset, credits, attempts FROM credits_by_asset")}
    assert {(r["model_tier"], r["provider"], r["billing"]): (r["attempts"], r["credits"]) for r in summary["by_tier_provider"]} == {
        (t, p, b): (n, c) for t, p, b, c, n in q("SELECT model_tier, provider, billing, sum(credits), sum(attempts)"
                                                 " FROM credits_by_tier_provider GROUP BY ALL")}  # fmt: skip
    assert {k: (v["attempts"], v["credits"]) for k, v in summary["by_status"].items()} == {
        s: (n, c) for s, n, c in q("SELECT status, count(*), sum(credits) FROM ledger_costs GROUP BY status")}
    assert {k: (v["attempts"], v["credits"]) for k, v in summary["by_origin"].items()} == {
        o: (n, c) for o, n, c in q("SELECT origin, count(*), sum(credits) FROM ledger_costs GROUP BY origin")}
    assert [(r["day"], r["attempts"], r["credits"]) for r in summary["recent_days"]] == [
        (d.isoformat(), n, c) for d, n, c in q("SELECT day, attempts, credits FROM credits_by_day"
                                               " WHERE day > (SELECT max(day) FROM credits_by_day) - 3 ORDER BY day DESC")]  # fmt: skip
    ((estimated, actual),) = q("SELECT coalesce(sum(estimated_credits), 0), coalesce(sum(actual_credits), 0) FROM estimate_vs_actual")
    assert summary["estimate_vs_actual"] == {"estimated": estimated, "actual": actual}
