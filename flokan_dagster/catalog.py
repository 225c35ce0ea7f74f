"""Catalog rows -> validated per-SKU image specs, partition keys and input fingerprints.

A catalog is a CSV, Parquet or DuckDB table with one row per SKU. Every row is checked against
the API's rules and the partition-key rules before anything is spent; a bad row becomes a
:class:`RowProblem` naming the SKU, the column and the rule, and the other rows proceed.

Example:
    >>> mapping = CatalogMapping(prompt_template="Studio photo of {title} in {color}")
    >>> catalog = parse_rows([{"sku": "MUG-1", "title": "a mug", "color": "red"}], mapping)
    >>> catalog.specs["MUG-1"].prompt
    'Studio photo of a mug in red'
"""

from __future__ import annotations

import functools
import hashlib
import json
import string
import tempfile
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flokan_dagster import catalog_cache
from flokan_dagster.api import rules
from flokan_dagster.catalog_file import CatalogColumns, CatalogFileError, load_rows
from flokan_dagster.sql_lists import UNNEST_TEXT, text_list

__all__ = [
    "Catalog", "CatalogFile", "CatalogFileError", "CatalogMapping", "ImageSourceSpec", "RowProblem", "SkuSpec",
    "load_catalog", "normalize_sku", "parse_rows", "partition_changes", "read_catalog_rows",
]  # fmt: skip

MAX_SKU_LENGTH = 200
_FORBIDDEN_IN_KEY = (",", "|", "[", "]")
_FORMULA_PREFIXES = ("=", "+", "-", "@")


class CatalogMapping(BaseModel):
    """Which catalog columns hold what, and the defaults for columns a catalog lacks.

    Give either ``prompt_column`` or ``prompt_template`` (Python format syntax over the columns).

    Attributes:
        sku_column: Column with the SKU (the partition key).
        prompt_column: Column with a ready prompt.
        prompt_template: Template such as ``"Studio photo of {title} in {color}"``.
        source_column: Optional column with a local image path (uploaded) or an https URL.
        model_tier: Default tier; ``tier_column`` overrides per row.
        provider: Default provider; ``provider_column`` overrides per row.
        style_id: Default style preset; ``style_column`` overrides per row.
        character_id: Default character preset; ``character_column`` overrides per row.
        base_dir: Directory relative source paths are resolved against (the catalog's by default).
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    sku_column: str = Field(default="sku", description="Column holding the SKU (partition key).")
    prompt_column: str | None = Field(default=None, description="Column holding a ready prompt.")
    prompt_template: str | None = Field(default=None, description='Prompt template over columns, e.g. "Studio photo of {title}".')
    source_column: str | None = Field(default=None, description="Column with a local image path or an https URL to edit.")
    model_tier: str = Field(default="standard", description="Default model tier: pro, standard or creative.")
    tier_column: str | None = Field(default=None, description="Column overriding the model tier per row.")
    provider: str | None = Field(default=None, description="Default provider (platform when unset, or a BYOK provider).")
    provider_column: str | None = Field(default=None, description="Column overriding the provider per row.")
    style_id: str | None = Field(default=None, description="Default style preset id.")
    style_column: str | None = Field(default=None, description="Column overriding the style preset per row.")
    character_id: str | None = Field(default=None, description="Default character preset id.")
    character_column: str | None = Field(default=None, description="Column overriding the character preset per row.")
    base_dir: str | None = Field(default=None, description="Directory relative source paths resolve against.")

    @model_validator(mode="after")
    def _one_prompt_source(self) -> CatalogMapping:
        if (self.prompt_column is None) == (self.prompt_template is None):
            raise ValueError("give exactly one of prompt_column or prompt_template")
        if self.prompt_template is not None:
            try:
                fields = [name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name is not None]
            except ValueError as exc:
                raise ValueError(f"prompt_template is not a valid template: {exc}") from None
            for name in fields:
                # Each row formats the template with its cells (text); a positional, attribute or
                # index field would fail or leak an object's repr on every row, so refuse it here.
                if not name or name.isdigit() or any(c in name for c in ".[]"):
                    raise ValueError(f"prompt_template field {{{name}}}: name a catalog column, e.g. {{title}}")
            try:
                self.prompt_template.format_map({name: "text" for name in fields})
            except (ValueError, KeyError, IndexError, AttributeError, TypeError) as exc:
                raise ValueError(f"prompt_template cannot format a row's text cells: {exc}") from None
        return self

    def template_columns(self) -> list[str]:
        """The column names ``prompt_template`` refers to."""
        if self.prompt_template is None:
            return []
        return list(_template_fields(self.prompt_template))


@dataclass(frozen=True)
class ImageSourceSpec:
    """Where the image to edit comes from: a local file (uploaded) or an https URL."""

    kind: Literal["file", "url"]
    value: str
    sha256: str | None = None
    mime_type: str | None = None


@dataclass(frozen=True)
class SkuSpec:
    """A validated request for one SKU."""

    sku: str
    prompt: str
    model_tier: str
    provider: str | None
    style_id: str | None
    character_id: str | None
    source: ImageSourceSpec | None
    row_number: int

    def fingerprint(self, upstream: str | None = None) -> str:
        """Hash of every input that changes the image; equal fingerprints need no new /process.

        Args:
            upstream: Identity of the upstream image for a chained edit (its result's sha256).
        """
        source: dict[str, Any] | None = None
        if upstream is not None:
            source = {"kind": "upstream", "sha256": upstream}
        elif self.source is not None:
            source = {"kind": self.source.kind, "ref": self.source.sha256 if self.source.kind == "file" else self.source.value}
        payload = {
            "prompt": self.prompt,
            "model_tier": self.model_tier,
            "provider": self.provider or rules.PLATFORM_PROVIDER,
            "style_id": self.style_id,
            "character_id": self.character_id,
            "source": source,
        }
        return hashlib.sha256(json.dumps(payload, sort_keys=True).encode()).hexdigest()


@dataclass(frozen=True)
class RowProblem:
    """Why one catalog row cannot be generated.

    Attributes:
        sku: The row's SKU as written (may be unusable as a partition key).
        column: The column at fault.
        rule: The rule that was broken.
        row_number: 1-based data row number.
    """

    sku: str
    column: str
    rule: str
    row_number: int

    @property
    def message(self) -> str:
        """A sentence naming the SKU, the column and the rule."""
        return f"SKU {self.sku!r} (row {self.row_number}): column {self.column!r}: {self.rule}"


@dataclass
class Catalog:
    """The parsed catalog.

    Attributes:
        specs: Valid SKUs by partition key.
        problems: Invalid rows whose SKU is a usable partition key, by that key.
        unkeyed: Invalid rows whose SKU cannot be a partition key at all.
    """

    specs: dict[str, SkuSpec] = field(default_factory=dict)
    problems: dict[str, RowProblem] = field(default_factory=dict)
    unkeyed: list[RowProblem] = field(default_factory=list)

    @property
    def partition_keys(self) -> list[str]:
        """Every usable SKU, valid or not, sorted (bad rows become partitions that fail by name)."""
        return sorted(self.specs.keys() | self.problems.keys())


def normalize_sku(raw: object) -> str:
    """The partition key for a SKU cell, or raise :class:`rules.RuleViolation` naming the rule.

    Surrounding whitespace is stripped and the text NFC-normalised; anything Dagster cannot key a
    partition by, or that a spreadsheet would run as a formula, is refused.

    Example:
        >>> normalize_sku("  MUG-001 ")
        'MUG-001'
    """
    if raw is None:
        raise rules.RuleViolation("sku", "must not be empty")
    key = unicodedata.normalize("NFC", str(raw)).strip()
    if not key:
        raise rules.RuleViolation("sku", "must not be empty")
    if len(key) > MAX_SKU_LENGTH:
        raise rules.RuleViolation("sku", f"must be at most {MAX_SKU_LENGTH} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Zl", "Zp") for c in key):
        raise rules.RuleViolation("sku", "must not contain control characters")
    if "..." in key:
        raise rules.RuleViolation("sku", "must not contain '...'")
    bad = [c for c in _FORBIDDEN_IN_KEY if c in key]
    if bad:
        raise rules.RuleViolation("sku", f"must not contain {', '.join(repr(c) for c in bad)}")
    if key.startswith(_FORMULA_PREFIXES):
        raise rules.RuleViolation("sku", "must not start with = + - or @ (a spreadsheet would run it as a formula)")
    return key


def read_catalog_rows(source: str | Path, table: str | None = None) -> list[dict[str, Any]]:
    """Read a catalog file's rows as dicts of header name to cell (every row, for small catalogs).

    Goes through the same reader as :class:`CatalogFile` (messy CSV accepted); rows with every
    cell empty are left out.

    Raises:
        CatalogFileError: The file cannot be read at all.

    Example:
        >>> rows = read_catalog_rows("data/catalog.csv")  # doctest: +SKIP
    """
    with duckdb.connect() as conn, tempfile.TemporaryDirectory(prefix="flokan-catalog-") as scratch:
        columns = load_rows(conn, source, table, Path(scratch))
        cells = ", ".join(f"c{i}" for i in range(len(columns.header)))
        found = conn.execute(f"SELECT {cells} FROM catalog_rows ORDER BY __row").fetchall()
        rows = [dict(zip(columns.header, values, strict=True)) for values in found]
        return [row for row in rows if any(v is not None and str(v).strip() for v in row.values())]


def parse_rows(rows: Iterable[Mapping[str, Any]], mapping: CatalogMapping) -> Catalog:
    """Validate rows already in memory; never raises for a bad row, only records it.

    Files go through :class:`CatalogFile` instead, which checks SKUs and duplicates in SQL and
    builds specs only for the rows asked for; both apply the same rules.

    Example:
        >>> catalog = parse_rows([{"sku": "A|1", "prompt": "x"}], CatalogMapping(prompt_column="prompt"))
        >>> catalog.unkeyed[0].message
        "SKU 'A|1' (row 1): column 'sku': must not contain '|'"
    """
    catalog = Catalog()
    base_dir = Path(mapping.base_dir) if mapping.base_dir else Path.cwd()
    by_key: dict[str, list[tuple[int, Mapping[str, Any]]]] = {}
    for number, row in enumerate(rows, start=1):
        raw_sku = row.get(mapping.sku_column)
        try:
            key = normalize_sku(raw_sku)
        except rules.RuleViolation as exc:
            catalog.unkeyed.append(RowProblem("" if raw_sku is None else str(raw_sku), mapping.sku_column, exc.rule, number))
            continue
        by_key.setdefault(key, []).append((number, row))
    for key, found in by_key.items():
        if len(found) > 1:
            catalog.problems[key] = _duplicate(key, [number for number, _ in found], mapping)
            continue
        number, row = found[0]
        _add_row(catalog, key, row, number, mapping, base_dir)
    return catalog


def load_catalog(source: str | Path, mapping: CatalogMapping, table: str | None = None) -> Catalog:
    """Read and validate every row of a catalog; relative source paths resolve against the catalog's folder.

    A run needs only its own SKUs: use :meth:`CatalogFile.catalog_for` for that.

    Raises:
        CatalogFileError: The file cannot be read at all, or has no SKU column.
    """
    with CatalogFile.open(source, mapping, table) as catalog_file:
        return catalog_file.catalog()


# A SKU made only of these (and no "...") is already its own partition key: normalize_sku would
# return it unchanged, so SQL settles most rows and Python checks only the rest.
_PLAIN_SKU = r"[A-Za-z0-9_]([A-Za-z0-9_ ./:#()&+-]*[A-Za-z0-9_./:#()&+-])?"


class CatalogFile:
    """A catalog file read once into DuckDB: SKUs and duplicates checked in SQL over the whole file.

    Opening reads the file (messy CSV accepted, see :mod:`flokan_dagster.catalog_file`) and
    gives each row its partition key in SQL; only rows whose SKU is not plain ASCII go through
    :func:`normalize_sku` in Python. Specs are built in Python only for the SKUs asked for, so
    a run of 25 SKUs pays for 25 rows, not the whole catalog.

    Raises:
        CatalogFileError: The file cannot be read at all, or has no SKU column.

    Example:
        >>> mapping = CatalogMapping(prompt_template="Studio photo of {title}")
        >>> with CatalogFile.open("data/catalog.csv", mapping) as catalog_file:  # doctest: +SKIP
        ...     catalog_file.catalog_for(["MUG-001"]).specs["MUG-001"].prompt
        'Studio photo of a mug'
    """

    def __init__(self, conn: duckdb.DuckDBPyConnection, path: Path, mapping: CatalogMapping, columns: CatalogColumns,
                 scratch: tempfile.TemporaryDirectory[str] | None, unkeyed: list[RowProblem] | None = None) -> None:  # fmt: skip
        self._conn = conn
        self._scratch = scratch
        self.path = path
        self.mapping = mapping
        self.columns = columns
        self.unkeyed: list[RowProblem] = []
        if unkeyed is None:
            self._prepare_keys()
        else:
            self.unkeyed = unkeyed

    @classmethod
    def open(cls, source: str | Path, mapping: CatalogMapping, table: str | None = None, *,
             cache_dir: str | Path | Literal["default"] | None = "default") -> CatalogFile:  # fmt: skip
        """Read ``source`` (CSV, Parquet, or ``table`` of a DuckDB database) and key its rows.

        The keyed rows are kept in ``cache_dir`` (see :mod:`flokan_dagster.catalog_cache`; by
        default :func:`~flokan_dagster.catalog_cache.default_cache_dir`, None for no cache), so
        the next open of the same file content reads that copy instead of parsing the file again.
        """
        path = Path(source)
        if mapping.base_dir is None:
            mapping = mapping.model_copy(update={"base_dir": str(path.resolve().parent)})
        sidecar = _sidecar_for(path, table, mapping, cache_dir)
        if sidecar is not None:
            cached = catalog_cache.open_sidecar(sidecar)
            if cached is not None:
                return cls._from_sidecar(cached, path, mapping)
        conn = duckdb.connect()
        scratch = tempfile.TemporaryDirectory(prefix="flokan-catalog-")
        try:
            columns = load_rows(conn, path, table, Path(scratch.name))
            if columns.column_of(mapping.sku_column) is None:
                raise CatalogFileError(
                    f"catalog {path} has no column {mapping.sku_column!r} (its columns: {', '.join(columns.header)}); "
                    "rename the SKU column's header or set sku_column in the mapping"
                )
            opened = cls(conn, path, mapping, columns, scratch)
        except BaseException:
            conn.close()
            scratch.cleanup()
            raise
        if sidecar is not None and _sidecar_for(path, table, mapping, cache_dir) == sidecar:  # unchanged while read
            opened._keep(sidecar)
        return opened

    @classmethod
    def _from_sidecar(cls, conn: duckdb.DuckDBPyConnection, path: Path, mapping: CatalogMapping) -> CatalogFile:
        try:
            meta = conn.execute("SELECT header, description FROM catalog_meta").fetchone()
            assert meta is not None
            unkeyed = [RowProblem(sku, column, rule, number) for sku, column, rule, number in conn.execute(
                "SELECT sku, column_name, rule, row_number FROM catalog_unkeyed ORDER BY row_number").fetchall()]  # fmt: skip
        except BaseException:
            conn.close()
            raise
        return cls(conn, path, mapping, CatalogColumns(list(meta[0]), meta[1]), None, unkeyed)

    def _keep(self, sidecar: Path) -> None:
        """Write this file's keyed rows to ``sidecar`` for the next open."""
        problems = self.unkeyed
        self._conn.execute(
            "CREATE TEMP TABLE catalog_meta AS SELECT CAST(? AS VARCHAR[]) AS header, CAST(? AS VARCHAR) AS description",
            [self.columns.header, self.columns.description],
        )
        self._conn.execute(
            "CREATE TEMP TABLE catalog_unkeyed AS SELECT * FROM (SELECT unnest(CAST(? AS VARCHAR[])) AS sku,"
            " unnest(CAST(? AS VARCHAR[])) AS column_name, unnest(CAST(? AS VARCHAR[])) AS rule,"
            " unnest(CAST(? AS BIGINT[])) AS row_number)",
            [[p.sku for p in problems], [p.column for p in problems], [p.rule for p in problems],
             [p.row_number for p in problems]],
        )  # fmt: skip
        catalog_cache.write_sidecar(self._conn, sidecar, {
            "catalog_rows": "SELECT * FROM temp.catalog_rows ORDER BY __row",
            "catalog_keys": "SELECT * FROM temp.catalog_keys ORDER BY key, __row",  # a batch's keys in a block or two
            "catalog_meta": "SELECT * FROM temp.catalog_meta",
            "catalog_unkeyed": "SELECT * FROM temp.catalog_unkeyed",
        })  # fmt: skip

    def __enter__(self) -> CatalogFile:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Release the in-memory table or the cached copy (and any re-encoded copy of the file)."""
        self._conn.close()
        if self._scratch is not None:
            self._scratch.cleanup()

    def _prepare_keys(self) -> None:
        """Create ``catalog_keys`` (row, raw SKU, partition key) and collect the unusable SKUs."""
        sku = f"CAST({self.columns.column_of(self.mapping.sku_column)} AS VARCHAR)"
        self._conn.execute(
            f"""CREATE TEMP TABLE catalog_keys AS
            SELECT __row, {sku} AS raw,
                   CASE WHEN length({sku}) <= {MAX_SKU_LENGTH} AND NOT contains({sku}, '...')
                             AND regexp_full_match({sku}, '{_PLAIN_SKU}') THEN {sku} END AS key
            FROM catalog_rows"""
        )
        # The rest (rare): unusual SKUs, and rows whose every cell is blank (ignored, not a problem).
        cells = ", ".join(f"CAST(c{i} AS VARCHAR)" for i in range(len(self.columns.header)))
        rest = self._conn.execute(
            f"SELECT k.__row, k.raw, [{cells}, r.__extra] FROM catalog_keys k JOIN catalog_rows r USING (__row)"
            " WHERE k.key IS NULL ORDER BY k.__row"
        ).fetchall()
        rows, keys = [], []
        for number, raw, values in rest:
            if all(value is None or not value.strip() for value in values):
                continue
            try:
                keys.append(normalize_sku(raw))
                rows.append(number)
            except rules.RuleViolation as exc:
                self.unkeyed.append(RowProblem("" if raw is None else raw, self.mapping.sku_column, exc.rule, number))
        if rows:
            self._conn.execute(
                "UPDATE catalog_keys SET key = fixed.key FROM (SELECT CAST(unnest(string_split(?, chr(31))) AS BIGINT) AS r,"
                " unnest(string_split(?, chr(31))) AS key) AS fixed WHERE catalog_keys.__row = fixed.r",
                [text_list(rows), text_list(keys)],
            )

    @property
    def partition_keys(self) -> list[str]:
        """Every usable SKU, valid or not, sorted (bad rows become partitions that fail by name)."""
        return [row[0] for row in self._conn.execute(
            "SELECT DISTINCT key FROM catalog_keys WHERE key IS NOT NULL ORDER BY key"
        ).fetchall()]  # fmt: skip

    def partition_changes(self, existing: Iterable[str]) -> tuple[list[str], list[str]]:
        """The partition keys to add and to delete so ``existing`` matches the catalog, computed in SQL.

        Example:
            >>> catalog_file.partition_changes(["B", "C"])  # doctest: +SKIP
            (['A'], ['C'])
        """
        existing_keys = list(existing)
        added = self._conn.execute(
            f"SELECT key FROM catalog_keys WHERE key IS NOT NULL EXCEPT SELECT value FROM {UNNEST_TEXT} ORDER BY 1",
            [text_list(existing_keys)],
        ).fetchall()
        deleted = self._conn.execute(
            f"SELECT value FROM {UNNEST_TEXT} EXCEPT SELECT key FROM catalog_keys WHERE key IS NOT NULL ORDER BY 1",
            [text_list(existing_keys)],
        ).fetchall()
        return [row[0] for row in added], [row[0] for row in deleted]

    def catalog_for(self, skus: Iterable[str]) -> Catalog:
        """Specs and problems of ``skus`` only; a SKU the file lacks is in neither.

        Duplicates are found over the whole file, so a SKU repeated outside the batch still
        fails by name.
        """
        wanted = sorted(set(skus))
        if not wanted:
            return Catalog()
        return self._build(f"key IN (SELECT value FROM {UNNEST_TEXT})", [text_list(wanted)])

    def catalog(self) -> Catalog:
        """Every row: specs, problems and unusable SKUs (work proportional to the catalog)."""
        catalog = self._build("key IS NOT NULL", [])
        catalog.unkeyed = list(self.unkeyed)
        return catalog

    def _build(self, where_sql: str, params: list[Any]) -> Catalog:
        """Specs and problems of the keys meeting ``where_sql``: each key's rows, the cells of a single one."""
        # The join is one equality (a hash join): with the length test beside it in the ON
        # clause DuckDB joined every key with every row, quadratic in the catalog (minutes at 100,000).
        catalog = Catalog()
        cells = ", ".join(f"r.c{i}" for i in range(len(self.columns.header)))
        found = self._conn.execute(
            f"""WITH groups AS (
                SELECT key, list(__row ORDER BY __row) AS rows FROM catalog_keys WHERE {where_sql} GROUP BY key)
            SELECT g.key, g.rows, r.__extra, {cells} FROM groups g
            LEFT JOIN catalog_rows r ON r.__row = CASE WHEN len(g.rows) = 1 THEN g.rows[1] END
            ORDER BY g.rows[1]""",
            params,
        ).fetchall()
        base_dir = Path(self.mapping.base_dir or self.path.resolve().parent)
        width = len(self.columns.header)
        for key, rows, extra, *values in found:
            if len(rows) > 1:
                catalog.problems[key] = _duplicate(key, rows, self.mapping)
                continue
            if extra is not None:
                rule = f"has more cells than the header's {width} columns; quote a cell that holds the delimiter"
                catalog.problems[key] = RowProblem(key, "(row)", rule, rows[0])
                continue
            row = dict(zip(self.columns.header, values, strict=True))
            _add_row(catalog, key, row, rows[0], self.mapping, base_dir)
        return catalog


def _sidecar_for(path: Path, table: str | None, mapping: CatalogMapping,
                 cache_dir: str | Path | Literal["default"] | None) -> Path | None:  # fmt: skip
    """The cached copy's path for ``path``'s current content, or None (no cache, or no such file)."""
    if cache_dir is None or not path.is_file():
        return None
    directory = catalog_cache.default_cache_dir() if cache_dir == "default" else Path(cache_dir)
    try:
        return catalog_cache.sidecar_path(directory, path, table, catalog_cache.cache_key(path, table, mapping.sku_column, directory))
    except OSError:
        return None  # unreadable: reading it fails with the clear message


def _duplicate(key: str, rows: list[int], mapping: CatalogMapping) -> RowProblem:
    listed = ", ".join(str(n) for n in rows[:-1]) + f" and {rows[-1]}"
    return RowProblem(key, mapping.sku_column, f"duplicate SKU (rows {listed}); each SKU must appear once", rows[-1])


def _add_row(catalog: Catalog, key: str, row: Mapping[str, Any], number: int, mapping: CatalogMapping, base_dir: Path) -> None:
    try:
        catalog.specs[key] = _spec_for(key, row, number, mapping, base_dir)
    except rules.RuleViolation as exc:
        catalog.problems[key] = RowProblem(key, exc.field, exc.rule, number)


def _cell(row: Mapping[str, Any], column: str | None) -> str | None:
    if column is None:
        return None
    value = row.get(column)
    if value is None:
        return None
    text = str(value).strip()
    return text or None


def _spec_for(key: str, row: Mapping[str, Any], number: int, mapping: CatalogMapping, base_dir: Path) -> SkuSpec:
    prompt = _prompt_for(row, mapping)
    tier = _cell(row, mapping.tier_column) or mapping.model_tier
    provider = _cell(row, mapping.provider_column) or mapping.provider
    style_id = _cell(row, mapping.style_column) or mapping.style_id
    character_id = _cell(row, mapping.character_column) or mapping.character_id
    _checked(mapping.tier_column or "model_tier", "model_tier", lambda: rules.check_model_tier(tier))
    _checked(mapping.provider_column or "provider", "provider", lambda: rules.check_tier_provider(tier, provider))
    if style_id is not None:
        style_id = _checked(mapping.style_column or "style_id", "style_id", lambda: rules.check_uuid("style_id", style_id))
    if character_id is not None:
        character_id = _checked(
            mapping.character_column or "character_id", "character_id",
            lambda: rules.check_uuid("character_id", character_id),
        )  # fmt: skip
    source = _source_for(_cell(row, mapping.source_column), mapping.source_column or "source", base_dir)
    return SkuSpec(key, prompt, tier, provider, style_id, character_id, source, number)


def _checked(column: str, field_name: str, check: Any) -> Any:
    """Run a rule check, re-labelling its violation with the catalog column it came from."""
    try:
        return check()
    except rules.RuleViolation as exc:
        raise rules.RuleViolation(column, exc.rule if exc.field == field_name else str(exc)) from None


def _prompt_for(row: Mapping[str, Any], mapping: CatalogMapping) -> str:
    if mapping.prompt_column is not None:
        prompt = _cell(row, mapping.prompt_column) or ""
        column = mapping.prompt_column
    else:
        assert mapping.prompt_template is not None
        # Parsed once per template, not once per row (a 100,000-row catalog is checked per tick).
        values = {name: _cell(row, name) for name in _template_fields(mapping.prompt_template)}
        missing = [name for name, value in values.items() if value is None]
        if missing:
            raise rules.RuleViolation(missing[0], "is empty but the prompt template needs it")
        prompt = mapping.prompt_template.format_map(values)
        column = "prompt_template"
    return _checked(column, "prompt", lambda: rules.check_prompt(prompt))


@functools.lru_cache(maxsize=64)
def _template_fields(template: str) -> tuple[str, ...]:
    """The column names ``template`` refers to, in order (repeats kept)."""
    return tuple(name for _, name, _, _ in string.Formatter().parse(template) if name)


def _source_for(value: str | None, column: str, base_dir: Path) -> ImageSourceSpec | None:
    if value is None:
        return None
    lowered = value.lower()
    if lowered.startswith("https://"):
        return ImageSourceSpec("url", _checked(column, "image_url", lambda: rules.check_image_url(value)))
    if "://" in value:
        raise rules.RuleViolation(column, f"a URL source must use https://, got {_shown(value)}")
    path = Path(value)
    if not path.is_absolute():
        path = base_dir / path
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise rules.RuleViolation(column, f"cannot read source image {_shown(value)}: {exc.strerror}") from None
    except ValueError:  # a NUL byte: no file system takes such a name
        raise rules.RuleViolation(column, f"source {_shown(value)} is not a usable file path") from None
    mime = rules.sniff_mime_type(data)
    if mime is None:
        raise rules.RuleViolation(column, f"source {_shown(value)} is not a JPEG, PNG, WebP or GIF image")
    declared = rules.mime_type_for_name(path.name)
    if declared is not None and declared != mime:
        raise rules.RuleViolation(column, f"source {_shown(value)} is named like {declared} but its content is {mime}")
    return ImageSourceSpec("file", str(path), hashlib.sha256(data).hexdigest(), mime)


def _shown(value: str, limit: int = 80) -> str:
    """``repr`` of a cell, cut short so a refusal stays readable whatever the catalog holds."""
    return repr(value) if len(value) <= limit else repr(value[:limit]) + f"... ({len(value)} characters)"


def partition_changes(catalog_keys: Iterable[str], existing_keys: Iterable[str]) -> tuple[list[str], list[str]]:
    """The partition keys to add and to delete so the partitions match the catalog.

    Example:
        >>> partition_changes(["A", "B"], ["B", "C"])
        (['A'], ['C'])
    """
    wanted, existing = set(catalog_keys), set(existing_keys)
    return sorted(wanted - existing), sorted(existing - wanted)
