"""Catalog files as people make them: messy CSV read right, bad rows named, bad files one message.

The property tests write generated tables in generated dialects (delimiter, line endings mixed
row by row, BOM, encoding, quoting, Excel's ``sep=`` line, short rows) and check that the
reader returns every cell as written, and that the SQL-keyed catalog equals the rules applied
row by row in Python.
"""

from __future__ import annotations

import csv
import io
import shutil
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from flokan_dagster.catalog import CatalogFile, CatalogFileError, CatalogMapping, load_catalog, parse_rows, read_catalog_rows
from flokan_dagster.demo import DEMO_CATALOG, HERO_MAPPING

MAPPING = CatalogMapping(prompt_template="photo of {title} in {color}")


def test_the_demo_catalog_with_an_lf_row_and_a_short_row_appended(tmp_path: Path) -> None:
    """Issue 14: the demo catalog is CRLF; a row added on Linux, and a row missing a column."""
    folder = tmp_path / "data"
    shutil.copytree(DEMO_CATALOG.parent, folder)
    path = folder / DEMO_CATALOG.name
    with path.open("ab") as handle:
        handle.write(b"LAMP-002,floor lamp,black,steel,\nSHORT-001,stool,oak\n")
    catalog = load_catalog(path, HERO_MAPPING)
    original = load_catalog(DEMO_CATALOG, HERO_MAPPING)
    assert set(catalog.specs) == set(original.specs) | {"LAMP-002"}
    assert catalog.specs["LAMP-002"].prompt.startswith("Studio product photo of a black steel floor lamp")
    problem = catalog.problems["SHORT-001"]  # the template needs {material}, which the short row lacks
    assert (problem.column, problem.row_number) == ("material", len(original.specs) + 2)
    assert "SHORT-001" in problem.message and "row" in problem.message


@pytest.mark.parametrize(
    ("data", "encoding"),
    [
        (b"\xef\xbb\xbfsku;title;color\r\nA-1;mug;red\nB-2;\"two\r\nlines\";blue\r\n", "BOM, semicolons, mixed endings"),
        (b"sep=;\r\nsku;title;color\r\nA-1;mug;red\r\nB-2;\"two\r\nlines\";blue\r\n", "Excel sep= line"),
        ("sku\ttitle\tcolor\r\nA-1\tmug\tred\r\nB-2\t\"two\r\nlines\"\tblue\r\n".encode("utf-16"), "Excel Unicode text"),
        (b"sku,title,color\r\nA-1,mug,red\r\nB-2,\"two\r\nlines\",blue\r\n", "plain"),
        (b"sku|title|color\nA-1|mug|red\nB-2|\"two\r\nlines\"|blue", "pipes, no final newline"),
    ],
)
def test_dialects_people_save(tmp_path: Path, data: bytes, encoding: str) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes(data)
    catalog = load_catalog(path, MAPPING)
    assert catalog.specs["A-1"].prompt == "photo of mug in red", encoding
    assert catalog.specs["B-2"].prompt == "photo of two\r\nlines in blue", encoding
    assert not catalog.problems and not catalog.unkeyed


def test_an_excel_windows_export_in_cp1252(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_bytes("sku;title;color\r\nCAFÉ-1;crème jug €5;rouge\r\n".encode("cp1252"))
    assert load_catalog(path, MAPPING).specs["CAFÉ-1"].prompt == "photo of crème jug €5 in rouge"


def test_a_malformed_row_is_its_skus_problem_with_its_row_number(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text("sku,title,color\nA-1,mug,red\nB-2,mug, red, and blue\n,,\n\nC-3,cup,\nD-4,plate,white\n", encoding="utf-8")
    catalog = load_catalog(path, MAPPING)
    assert sorted(catalog.specs) == ["A-1", "D-4"]
    assert catalog.problems["B-2"].row_number == 2 and "more cells than the header" in catalog.problems["B-2"].rule
    assert (catalog.problems["C-3"].column, catalog.problems["C-3"].row_number) == ("color", 4)
    assert catalog.specs["D-4"].row_number == 5  # the ",," row counts, the blank line does not
    assert not catalog.unkeyed  # a row of empty cells is no SKU's problem


@pytest.mark.parametrize(
    ("setup", "words"),
    [
        (lambda p: None, "no such file"),
        (lambda p: p.mkdir(), "is a directory"),
        (lambda p: p.write_bytes(b""), "is empty"),
        (lambda p: p.write_bytes(b"\r\n\r\n"), "empty"),
        (lambda p: p.write_bytes(b"PK\x03\x04 zipped workbook"), "Save As > CSV"),
        (lambda p: p.write_bytes(b"sku,ti\x00tle\nA,b\n"), "NUL"),
        (lambda p: p.write_text("product,title,color\nA,b,c\n"), "no column 'sku' (its columns: product, title, color)"),
    ],
)
def test_a_file_level_problem_is_one_message_naming_the_file_and_the_fix(tmp_path: Path, setup, words: str) -> None:  # type: ignore[no-untyped-def]
    path = tmp_path / "catalog.csv"
    setup(path)
    with pytest.raises(CatalogFileError) as caught:
        load_catalog(path, MAPPING)
    message = str(caught.value)
    assert words in message and str(path) in message and "\n" not in message
    error = caught.value
    assert error.__cause__ is None and (error.__context__ is None or error.__suppress_context__)  # no chained traceback


def test_unreadable_file_and_unknown_formats(tmp_path: Path) -> None:
    for name, words in [("catalog.xlsx", "Save As > CSV"), ("catalog.json", "unsupported format"),
                        ("catalog.parquet", "cannot be read as Parquet"), ("catalog.duckdb", "name its table")]:  # fmt: skip
        path = tmp_path / name
        path.write_bytes(b"not really")
        with pytest.raises(CatalogFileError, match=words):
            load_catalog(path, MAPPING)


# ---------------------------------------------------------------- generated messy files

cell_text = st.text(st.characters(blacklist_categories=("Cs",), blacklist_characters="\x00"), max_size=12)
headers = st.lists(st.text(st.characters(whitelist_categories=("Ll", "Lu")), min_size=1, max_size=6),
                   min_size=1, max_size=4, unique=True).map(lambda names: ["sku", *[n for n in names if n != "sku"]])  # fmt: skip


@st.composite
def messy_files(draw: st.DrawFn) -> tuple[bytes, list[str], list[list[str]]]:
    """A table and the bytes of one way a person might have saved it."""
    header = draw(headers)
    width = len(header)
    rows = draw(st.lists(st.lists(st.one_of(cell_text, st.sampled_from(["A-1", " A-1 ", "B|2", "", "=1+1", "x,y;z\t\""])),
                                  min_size=width, max_size=width), max_size=8))  # fmt: skip
    delimiter = draw(st.sampled_from([",", ";", "\t"]))
    quote_all = draw(st.booleans())
    encoding = draw(st.sampled_from(["utf-8", "utf-8-sig", "utf-16", "cp1252"]))
    if encoding == "cp1252":
        try:
            "".join(header + [c for row in rows for c in row]).encode("cp1252")
        except UnicodeEncodeError:
            encoding = "utf-8"
    out = io.StringIO()
    if draw(st.booleans()) and encoding != "utf-8-sig":
        out.write(f"sep={delimiter}\r\n")
    for row in [header, *rows]:
        cells = list(row)
        if row is not header and draw(st.booleans()):  # a short row: trailing empty cells left out
            while len(cells) > 1 and cells[-1] == "":
                cells.pop()
        line = io.StringIO()
        # A CR or LF in a cell is quoted (Python's writer leaves a lone CR bare when rows end in LF,
        # which no reader can tell from a line ending).
        breaks = any("\r" in cell or "\n" in cell for cell in cells)
        csv.writer(line, delimiter=delimiter, quoting=csv.QUOTE_ALL if quote_all or breaks else csv.QUOTE_MINIMAL,
                   lineterminator=draw(st.sampled_from(["\r\n", "\n"]))).writerow(cells)  # fmt: skip
        out.write(line.getvalue())
    return out.getvalue().encode(encoding), header, rows


def _expected_rows(header: list[str], rows: list[list[str]]) -> list[dict[str, str | None]]:
    return [{name: (cell if cell != "" else None) for name, cell in zip(header, row, strict=True)} for row in rows]


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messy=messy_files())
def test_every_cell_of_a_messy_file_reads_as_written(messy: tuple[bytes, list[str], list[list[str]]], tmp_path: Path) -> None:
    data, header, rows = messy
    path = tmp_path / "catalog.csv"
    path.write_bytes(data)
    expected = [row for row in _expected_rows(header, rows) if any(v is not None and v.strip() for v in row.values())]
    assert read_catalog_rows(path) == expected


@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(messy=messy_files(), template=st.booleans())
def test_the_sql_keyed_catalog_equals_the_rules_row_by_row(messy: tuple[bytes, list[str], list[list[str]]], template: bool,
                                                           tmp_path: Path) -> None:  # fmt: skip
    data, header, rows = messy
    path = tmp_path / "catalog.csv"
    path.write_bytes(data)
    other = header[-1]
    mapping = CatalogMapping(prompt_template=f"photo of {{{other}}}") if template else CatalogMapping(prompt_column=other)
    mapping = mapping.model_copy(update={"base_dir": str(tmp_path)})
    expected_rows = _expected_rows(header, rows)
    blank = {n for n, row in enumerate(expected_rows, 1) if not any(v is not None and v.strip() for v in row.values())}
    expected = parse_rows(expected_rows, mapping)
    expected.unkeyed = [p for p in expected.unkeyed if p.row_number not in blank]
    with CatalogFile.open(path, mapping) as catalog_file:
        found = catalog_file.catalog()
        assert found.specs == expected.specs
        assert found.problems == expected.problems
        assert found.unkeyed == expected.unkeyed
        assert catalog_file.partition_keys == expected.partition_keys
        some = expected.partition_keys[::2]
        part = catalog_file.catalog_for(some)
        assert part.specs == {k: v for k, v in expected.specs.items() if k in some}
        assert part.problems == {k: v for k, v in expected.problems.items() if k in some}
