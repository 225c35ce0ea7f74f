"""Catalog parsing: formats, prompt templates, per-row rules, partition keys and fingerprints."""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
from pydantic import ValidationError

from flokan_dagster.catalog import CatalogMapping, load_catalog, normalize_sku, parse_rows, partition_changes
from tests.support import png_bytes

STYLE = "11111111-1111-4111-8111-111111111111"
TEMPLATE = CatalogMapping(prompt_template="Studio photo of {title} in {color}", source_column="photo")


def write_csv(path: Path, text: str) -> Path:
    path.write_text(text, encoding="utf-8")
    return path


def test_csv_with_template_tiers_and_sources(tmp_path: Path) -> None:
    (tmp_path / "photos").mkdir()
    (tmp_path / "photos" / "mug.png").write_bytes(png_bytes())
    catalog_file = write_csv(
        tmp_path / "catalog.csv",
        "sku,title,color,photo\n"
        "00123,a mug,red,photos/mug.png\n"
        "TEE-1,a shirt,blue,https://cdn.example.com/tee.jpg\n"
        "CAP-9,a cap,green,\n",
    )
    catalog = load_catalog(catalog_file, TEMPLATE)
    assert sorted(catalog.specs) == ["00123", "CAP-9", "TEE-1"]
    mug = catalog.specs["00123"]
    assert mug.prompt == "Studio photo of a mug in red"
    assert mug.source is not None and mug.source.kind == "file" and mug.source.mime_type == "image/png"
    assert catalog.specs["TEE-1"].source.kind == "url"  # type: ignore[union-attr]
    assert catalog.specs["CAP-9"].source is None
    assert not catalog.problems and not catalog.unkeyed


def test_parquet_and_duckdb_tables(tmp_path: Path) -> None:
    with duckdb.connect(str(tmp_path / "cat.duckdb")) as con:
        con.execute("CREATE TABLE products AS SELECT 'S-' || i AS sku, 'thing ' || i AS title FROM range(3) t(i)")
        con.execute(f"COPY products TO '{tmp_path / 'cat.parquet'}' (FORMAT parquet)")
    mapping = CatalogMapping(prompt_template="Photo of {title}")
    from_table = load_catalog(tmp_path / "cat.duckdb", mapping, table="products")
    from_parquet = load_catalog(tmp_path / "cat.parquet", mapping)
    assert sorted(from_table.specs) == sorted(from_parquet.specs) == ["S-0", "S-1", "S-2"]
    assert from_parquet.specs["S-2"].prompt == "Photo of thing 2"


@pytest.mark.parametrize(
    ("row", "column", "words"),
    [
        ({"sku": "A", "prompt": ""}, "prompt", "empty"),
        ({"sku": "A", "prompt": "x" * 10_001}, "prompt", "10000"),
        ({"sku": "A", "prompt": "ok", "tier": "ultra"}, "tier", "pro, standard, creative"),
        ({"sku": "A", "prompt": "ok", "tier": "creative", "provider": "openai"}, "provider", "openai"),
        ({"sku": "A", "prompt": "ok", "provider": "dalle"}, "provider", "must be one of"),
        ({"sku": "A", "prompt": "ok", "style": "not-a-uuid"}, "style", "UUID"),
        ({"sku": "A", "prompt": "ok", "source": "http://insecure.example.com/a.png"}, "source", "https"),
        ({"sku": "A", "prompt": "ok", "source": "https://x.example.com/" + "a" * 2000}, "source", "2000"),
        ({"sku": "A", "prompt": "ok", "source": "missing/photo.png"}, "source", "cannot read"),
    ],
)
def test_a_bad_row_names_the_sku_column_and_rule(row: dict[str, str], column: str, words: str) -> None:
    mapping = CatalogMapping(
        prompt_column="prompt", tier_column="tier", provider_column="provider", style_column="style",
        source_column="source", base_dir="/nonexistent",
    )  # fmt: skip
    good = {"sku": "GOOD", "prompt": "fine"}
    catalog = parse_rows([row, good], mapping)
    problem = catalog.problems["A"]
    assert problem.column == column and words in problem.rule
    assert "'A'" in problem.message and repr(column) in problem.message
    assert list(catalog.specs) == ["GOOD"]


def test_fake_image_bytes_are_refused(tmp_path: Path) -> None:
    (tmp_path / "fake.png").write_bytes(b"this is not a png")
    (tmp_path / "gif.png").write_bytes(b"GIF89a" + b"\0" * 20)
    mapping = CatalogMapping(prompt_column="p", source_column="src", base_dir=str(tmp_path))
    catalog = parse_rows([{"sku": "F", "p": "x", "src": "fake.png"}, {"sku": "G", "p": "x", "src": "gif.png"}], mapping)
    assert "not a JPEG, PNG, WebP or GIF" in catalog.problems["F"].rule
    assert "content is image/gif" in catalog.problems["G"].rule


def test_template_column_missing_in_a_row() -> None:
    catalog = parse_rows([{"sku": "A", "title": "mug", "color": ""}], TEMPLATE)
    assert catalog.problems["A"].column == "color"


@pytest.mark.parametrize(
    ("raw", "rule"),
    [
        ("A,B", "','"), ("A|B", "'|'"), ("A[1]", "'['"), ("A...B", "'...'"), ("A\x00B", "control"),
        ("A\nB", "control"), ("", "empty"), ("   ", "empty"), ("=HYPERLINK(1)", "formula"), ("X" * 201, "200"),
    ],
)  # fmt: skip
def test_unusable_skus_are_refused(raw: str, rule: str) -> None:
    catalog = parse_rows([{"sku": raw, "prompt": "x"}], CatalogMapping(prompt_column="prompt"))
    assert not catalog.specs and not catalog.problems
    assert rule in catalog.unkeyed[0].rule


def test_skus_are_normalised_and_duplicates_refused() -> None:
    assert normalize_sku("  Caf\u0065\u0301-1 ") == "Caf\u00e9-1"
    rows = [{"sku": "A", "prompt": "x"}, {"sku": " A ", "prompt": "y"}, {"sku": "B", "prompt": "z"}]
    catalog = parse_rows(rows, CatalogMapping(prompt_column="prompt"))
    assert "duplicate SKU (rows 1 and 2)" in catalog.problems["A"].rule
    assert list(catalog.specs) == ["B"] and catalog.partition_keys == ["A", "B"]


def test_mapping_needs_exactly_one_prompt_source() -> None:
    with pytest.raises(ValidationError):
        CatalogMapping()
    with pytest.raises(ValidationError):
        CatalogMapping(prompt_column="p", prompt_template="{p}")


def test_fingerprint_changes_with_every_input(tmp_path: Path) -> None:
    (tmp_path / "a.png").write_bytes(png_bytes((1, 2, 3)))
    mapping = CatalogMapping(prompt_column="p", tier_column="t", style_column="s", source_column="src",
                             base_dir=str(tmp_path))  # fmt: skip
    base = {"sku": "A", "p": "x", "t": "pro", "s": STYLE, "src": "a.png"}
    variants = [base, {**base, "p": "y"}, {**base, "t": "standard"}, {**base, "s": ""}, {**base, "src": ""}]
    prints = [parse_rows([row], mapping).specs["A"].fingerprint() for row in variants]
    assert len(set(prints)) == len(prints)
    assert parse_rows([base], mapping).specs["A"].fingerprint() == prints[0]
    (tmp_path / "a.png").write_bytes(png_bytes((9, 9, 9)))  # same path, new content
    assert parse_rows([base], mapping).specs["A"].fingerprint() != prints[0]
    spec = parse_rows([base], mapping).specs["A"]
    assert spec.fingerprint(upstream="abc") != spec.fingerprint(upstream="abd")


def test_partition_changes() -> None:
    assert partition_changes(["A", "B", "C"], ["C", "D"]) == (["A", "B"], ["D"])
    assert partition_changes([], []) == ([], [])
