"""Reading a catalog file as people make it into one DuckDB table of cells with row numbers.

CSV files come from spreadsheets and editors: a byte-order mark, CRLF and LF line endings mixed
in one file, ``;`` or tab delimiters (or Excel's ``sep=;`` first line), quoted cells holding
newlines, Windows-1252 or UTF-16 text from Excel, rows shorter than the header. The dialect is
decided here from the first line, in Python, and DuckDB is told it exactly (its sniffer gives
up on mixed line endings); text that is not UTF-8 is re-encoded into a temporary copy first.
Parquet files and DuckDB tables are read as they are.

The result is the table ``catalog_rows``: ``__row`` (the 1-based data row, header excluded,
blank lines not counted), ``__extra`` (a cell beyond the header's columns, which makes the row
malformed) and one column ``c0``, ``c1``, ... per header column, so header names never need
quoting. A file that cannot be read at all raises :class:`CatalogFileError`, one message naming
the file and the fix.

Example:
    >>> import duckdb, tempfile, os
    >>> path = os.path.join(tempfile.mkdtemp(), "c.csv")
    >>> _ = open(path, "wb").write(b"\\xef\\xbb\\xbfsku;title\\r\\nA;mug\\nB;cup\\r\\n")
    >>> conn = duckdb.connect()
    >>> load_rows(conn, path).header
    ['sku', 'title']
    >>> conn.execute("SELECT __row, c0, c1 FROM catalog_rows ORDER BY __row").fetchall()
    [(1, 'A', 'mug'), (2, 'B', 'cup')]
"""

from __future__ import annotations

import csv
import re
import tempfile
from dataclasses import dataclass
from pathlib import Path

import duckdb

CSV_SUFFIXES = (".csv", ".tsv", ".txt")
_DELIMITERS = (",", ";", "\t", "|")
_UTF16_BOMS = (b"\xff\xfe", b"\xfe\xff")
_UTF8_BOM = b"\xef\xbb\xbf"


class CatalogFileError(ValueError):
    """A catalog file that cannot be read at all; the message names the file and the fix."""


@dataclass(frozen=True)
class CatalogColumns:
    """What :func:`load_rows` found.

    Attributes:
        header: The header's column names, in order (column ``c{i}`` of ``catalog_rows``).
        description: How the file was read, for logs (e.g. ``"CSV, ';'-delimited, UTF-8"``).
    """

    header: list[str]
    description: str

    def column_of(self, name: str) -> str | None:
        """The ``catalog_rows`` column holding header column ``name``, or None."""
        try:
            return f"c{self.header.index(name)}"
        except ValueError:
            return None


def load_rows(conn: duckdb.DuckDBPyConnection, source: str | Path, table: str | None = None,
              scratch: Path | None = None) -> CatalogColumns:  # fmt: skip
    """Create the temporary table ``catalog_rows`` on ``conn`` from a catalog file.

    Args:
        conn: A DuckDB connection (an in-memory one is enough).
        source: A CSV (``.csv``, ``.tsv``, ``.txt``) or Parquet file, or a DuckDB database.
        table: The table to read when ``source`` is a DuckDB database.
        scratch: A directory for the UTF-8 copy of a file in another encoding (a temporary
            directory by default).

    Raises:
        CatalogFileError: The file is missing, unreadable, empty, of an unknown kind, or not a
            table DuckDB can read.
    """
    path = Path(source)
    if not path.exists():
        raise CatalogFileError(f"catalog {path}: no such file; check the path (relative paths start from {Path.cwd()})")
    if path.is_dir():
        raise CatalogFileError(f"catalog {path} is a directory; give the catalog file itself")
    suffix = path.suffix.lower()
    if table is not None or suffix in (".duckdb", ".db"):
        if table is None:
            raise CatalogFileError(f"catalog {path} is a DuckDB database: name its table (catalog_table)")
        return _load_duckdb_table(conn, path, table)
    if suffix == ".parquet":
        return _load_relation(conn, path, "read_parquet(?)", [str(path)], "Parquet")
    if suffix in CSV_SUFFIXES:
        return _load_csv(conn, path, scratch)
    if suffix in (".xlsx", ".xls", ".ods"):
        raise CatalogFileError(f"catalog {path} is a spreadsheet workbook: save it as CSV (in Excel: File > Save As > CSV UTF-8)")
    raise CatalogFileError(f"catalog {path}: unsupported format {suffix!r}; use a .csv, .tsv or .parquet file or a DuckDB table")


def _load_duckdb_table(conn: duckdb.DuckDBPyConnection, path: Path, table: str) -> CatalogColumns:
    try:
        conn.execute(f"ATTACH {_literal(str(path))} AS catalog_db (READ_ONLY)")  # ATTACH takes no parameters
    except duckdb.Error as exc:
        raise CatalogFileError(f"catalog {path} cannot be opened as a DuckDB database: {_first_line(exc)}") from None
    tables = [row[0] for row in conn.execute(
        "SELECT table_name FROM duckdb_tables() WHERE database_name = 'catalog_db' "
        "UNION ALL SELECT view_name FROM duckdb_views() WHERE database_name = 'catalog_db' ORDER BY 1"
    ).fetchall()]  # fmt: skip
    if table not in tables:
        raise CatalogFileError(f"catalog {path} has no table {table!r}; its tables: {', '.join(tables) or 'none'}")
    return _load_relation(conn, path, f"catalog_db.{_quote(table)}", [], "DuckDB table")


def _load_relation(conn: duckdb.DuckDBPyConnection, path: Path, relation: str, params: list[object],
                   kind: str) -> CatalogColumns:  # fmt: skip
    try:
        header = [row[0] for row in conn.execute(f"DESCRIBE SELECT * FROM {relation}", params).fetchall()]
        cells = ", ".join(f"{_quote(name)} AS c{i}" for i, name in enumerate(header))
        conn.execute(
            f"CREATE OR REPLACE TEMP TABLE catalog_rows AS SELECT row_number() OVER () AS __row, "
            f"CAST(NULL AS VARCHAR) AS __extra, {cells} FROM {relation}",
            params,
        )
    except duckdb.Error as exc:
        raise CatalogFileError(f"catalog {path} cannot be read as {kind}: {_first_line(exc)}") from None
    return CatalogColumns(header, kind)


def _load_csv(conn: duckdb.DuckDBPyConnection, path: Path, scratch: Path | None) -> CatalogColumns:
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise CatalogFileError(f"catalog {path} cannot be read: {exc.strerror}; check its permissions") from None
    if raw.startswith(b"PK\x03\x04") or raw.startswith(b"\xd0\xcf\x11\xe0"):
        raise CatalogFileError(
            f"catalog {path} is an Excel workbook, not CSV text: save it as CSV (in Excel: File > Save As > CSV UTF-8)"
        )
    text, encoding = _decode(raw)
    if not text.strip():
        raise CatalogFileError(f"catalog {path} is empty: it needs a header row naming the columns, e.g. sku,title")
    if "\x00" in text:
        raise CatalogFileError(f"catalog {path} holds NUL bytes, so it is not a text file: export the catalog as CSV")
    # Only the first two lines matter here, split as DuckDB counts lines (not str.splitlines,
    # which also splits on form feeds and Unicode separators).
    lines = re.split(r"\r\n|\n|\r", text[:65536], maxsplit=2)
    first = lines[0].lstrip("\ufeff")
    skip, delimiter = 0, None
    excel_sep = re.fullmatch(r"sep=(.) *", first, flags=re.IGNORECASE)  # Excel's "sep=;" first line
    if excel_sep:
        delimiter, skip = excel_sep.group(1), 1
    header_line = lines[skip].lstrip("\ufeff") if skip < len(lines) else ""
    if not header_line.strip():
        raise CatalogFileError(f"catalog {path}: the first line is empty; it must be the header naming the columns, e.g. sku,title")
    if delimiter is None:
        delimiter = _sniff_delimiter(header_line)
    header = _header_names(next(csv.reader([header_line], delimiter=delimiter)))
    target = path
    if encoding != "utf-8":
        directory = scratch or Path(tempfile.mkdtemp(prefix="flokan-catalog-"))
        target = directory / "catalog.utf8.csv"
        target.write_text(text, encoding="utf-8", newline="")
    columns = "{" + ", ".join(f"'c{i}': 'VARCHAR'" for i in range(len(header))) + ", '__extra': 'VARCHAR'}"
    try:
        conn.execute(
            f"""CREATE OR REPLACE TEMP TABLE catalog_rows AS
            SELECT row_number() OVER () AS __row, * FROM read_csv(?, delim = ?, quote = '"', escape = '"',
                header = true, skip = ?, columns = {columns}, auto_detect = false, null_padding = true,
                strict_mode = false, parallel = false)""",
            [str(target), delimiter, skip],
        )
    except duckdb.Error as exc:
        raise CatalogFileError(f"catalog {path} cannot be read as CSV: {_first_line(exc)}") from None
    named = {",": "comma", ";": "semicolon", "\t": "tab", "|": "pipe"}[delimiter]
    return CatalogColumns(header, f"CSV, {named}-delimited, {encoding}")


def _decode(raw: bytes) -> tuple[str, str]:
    """The file's text and its encoding: UTF-16 (Excel's "Unicode text"), UTF-8, else Windows-1252."""
    if raw.startswith(_UTF16_BOMS):
        return raw.decode("utf-16", errors="replace"), "utf-16"
    try:
        return raw.decode("utf-8-sig"), "utf-8"
    except UnicodeDecodeError:
        # Excel on Windows saves "CSV (Comma delimited)" in the ANSI code page.
        return raw.decode("cp1252", errors="replace"), "windows-1252"


def _sniff_delimiter(header_line: str) -> str:
    """The delimiter that splits the header most often (outside quotes); a comma by default."""
    counts = dict.fromkeys(_DELIMITERS, 0)
    quoted = False
    for char in header_line:
        if char == '"':
            quoted = not quoted
        elif not quoted and char in counts:
            counts[char] += 1
    best = max(_DELIMITERS, key=lambda d: counts[d])
    return best if counts[best] else ","


def _header_names(cells: list[str]) -> list[str]:
    """Header cells stripped; an empty one named by position, a repeated one suffixed."""
    names: list[str] = []
    for index, cell in enumerate(cells, start=1):
        name = cell.strip().lstrip("\ufeff").strip() or f"column_{index}"
        base, n = name, 2
        while name in names:
            name, n = f"{base}_{n}", n + 1
        names.append(name)
    return names


def _first_line(exc: BaseException) -> str:
    return (str(exc).strip().splitlines() or [type(exc).__name__])[0]


def _literal(text: str) -> str:
    return "'" + text.replace("'", "''") + "'"


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'
