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

import hashlib
import json
import string
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import duckdb
from pydantic import BaseModel, ConfigDict, Field, model_validator

from flokan_dagster.api import rules

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
        return [name for _, name, _, _ in string.Formatter().parse(self.prompt_template) if name]


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
    """Read a CSV or Parquet file, or a table of a DuckDB database, as a list of rows.

    CSV cells are read as text so SKUs such as ``00123`` keep their zeros.

    Example:
        >>> rows = read_catalog_rows("data/catalog.csv")  # doctest: +SKIP
    """
    path = Path(source)
    if not path.exists():
        raise FileNotFoundError(f"catalog not found: {path}")
    suffix = path.suffix.lower()
    with duckdb.connect() as con:
        if table is not None or suffix in (".duckdb", ".db"):
            if table is None:
                raise ValueError(f"catalog {path} is a DuckDB database: name the table")
            con.execute("ATTACH ? AS catalog_db (READ_ONLY)", [str(path)])
            relation = con.sql(f"SELECT * FROM catalog_db.{_quote_identifier(table)}")
        elif suffix == ".parquet":
            relation = con.sql("SELECT * FROM read_parquet($path)", params={"path": str(path)})
        elif suffix in (".csv", ".tsv", ".txt"):
            relation = con.sql(
                "SELECT * FROM read_csv($path, all_varchar = true, header = true)", params={"path": str(path)}
            )
        else:
            raise ValueError(f"catalog {path}: unsupported format {suffix!r} (use .csv, .parquet or a DuckDB table)")
        columns = relation.columns
        return [dict(zip(columns, values, strict=True)) for values in relation.fetchall()]


def _quote_identifier(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def parse_rows(rows: Iterable[Mapping[str, Any]], mapping: CatalogMapping) -> Catalog:
    """Validate every row; never raises for a bad row, only records it.

    Example:
        >>> catalog = parse_rows([{"sku": "A|1", "prompt": "x"}], CatalogMapping(prompt_column="prompt"))
        >>> catalog.unkeyed[0].message
        "SKU 'A|1' (row 1): column 'sku': must not contain '|'"
    """
    catalog = Catalog()
    seen_rows: dict[str, int] = {}
    base_dir = Path(mapping.base_dir) if mapping.base_dir else Path.cwd()
    for number, row in enumerate(rows, start=1):
        raw_sku = row.get(mapping.sku_column)
        shown = "" if raw_sku is None else str(raw_sku)
        try:
            key = normalize_sku(raw_sku)
        except rules.RuleViolation as exc:
            catalog.unkeyed.append(RowProblem(shown, mapping.sku_column, exc.rule, number))
            continue
        if key in seen_rows:
            rule = f"duplicate SKU (rows {seen_rows[key]} and {number}); each SKU must appear once"
            catalog.specs.pop(key, None)
            catalog.problems[key] = RowProblem(key, mapping.sku_column, rule, number)
            continue
        seen_rows[key] = number
        try:
            catalog.specs[key] = _spec_for(key, row, number, mapping, base_dir)
        except rules.RuleViolation as exc:
            catalog.problems[key] = RowProblem(key, exc.field, exc.rule, number)
    return catalog


def load_catalog(source: str | Path, mapping: CatalogMapping, table: str | None = None) -> Catalog:
    """Read and validate a catalog; relative source paths resolve against the catalog's folder."""
    if mapping.base_dir is None:
        mapping = mapping.model_copy(update={"base_dir": str(Path(source).resolve().parent)})
    return parse_rows(read_catalog_rows(source, table), mapping)


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
        missing = [name for name in mapping.template_columns() if _cell(row, name) is None]
        if missing:
            raise rules.RuleViolation(missing[0], "is empty but the prompt template needs it")
        values = {name: _cell(row, name) for name in mapping.template_columns()}
        prompt = mapping.prompt_template.format_map(values)
        column = "prompt_template"
    return _checked(column, "prompt", lambda: rules.check_prompt(prompt))


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
