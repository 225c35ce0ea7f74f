"""A catalog file's keyed copy, kept between runs so a run does not re-read the whole file.

Reading a 100,000-row CSV and giving every row its partition key costs about half a second;
each of the 4,000 runs of a backfill would pay it again for its 25 SKUs. The first reader of a
catalog version writes the rows and their keys into a small DuckDB file here (the "sidecar");
later readers open it read-only and fetch their rows by key. A sidecar is named by what decides
its content: the catalog's bytes (SHA-256; for a DuckDB database its size, modification time
and inode), the table, the SKU column, this module's format and DuckDB's version. A changed
file therefore never matches an old sidecar, and an unusable cache directory only means no cache.

Sidecars are written under a temporary name and renamed into place, so a reader sees a whole
file or none; the older sidecars of the same catalog are removed when a new one lands.

Example:
    >>> import tempfile, pathlib
    >>> folder = pathlib.Path(tempfile.mkdtemp())
    >>> _ = (folder / "c.csv").write_text("sku,title\\nA,mug\\n")
    >>> key = cache_key(folder / "c.csv", None, "sku")
    >>> key == cache_key(folder / "c.csv", None, "sku"), key == cache_key(folder / "c.csv", None, "id")
    (True, False)
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Final

import duckdb

logger = logging.getLogger(__name__)

# Bump when the sidecar's tables change shape: old sidecars then simply stop matching.
FORMAT_VERSION: Final = 2
_DATABASE_SUFFIXES: Final = (".duckdb", ".db")


def default_cache_dir(environ: Mapping[str, str] | None = None) -> Path:
    """Where sidecars go: ``$FLOKAN_CATALOG_CACHE``, else ``$FLOKAN_DATA_DIR/cache/catalogs``, else
    ``$XDG_CACHE_HOME/flokan-dagster/catalogs`` (``~/.cache`` by default), read from ``environ``
    (the process's environment unless given).

    Example:
        >>> default_cache_dir({"FLOKAN_DATA_DIR": "/srv/flokan"}).as_posix()
        '/srv/flokan/cache/catalogs'
        >>> default_cache_dir({"XDG_CACHE_HOME": "/var/cache"}).as_posix()
        '/var/cache/flokan-dagster/catalogs'
    """
    env = os.environ if environ is None else environ
    explicit = env.get("FLOKAN_CATALOG_CACHE")
    if explicit:
        return Path(explicit)
    data_dir = env.get("FLOKAN_DATA_DIR")
    if data_dir:
        return Path(data_dir) / "cache" / "catalogs"
    base = env.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "flokan-dagster" / "catalogs"


def cache_key(path: Path, table: str | None, sku_column: str, memo_dir: Path | None = None) -> str:
    """The name of ``path``'s sidecar: a digest of its content (a database's stat) and the reading options.

    Args:
        memo_dir: Where :func:`content_digest` may remember the file's digest (the cache directory).

    Raises:
        OSError: The file cannot be read.
    """
    digest = hashlib.sha256(f"{FORMAT_VERSION}\0{duckdb.__version__}\0{table or ''}\0{sku_column}\0".encode())
    if table is not None or path.suffix.lower() in _DATABASE_SUFFIXES:
        # A database may be large and is rewritten in place: its stat decides (any write moves the mtime).
        stat = path.stat()
        digest.update(f"{path.resolve()}\0{stat.st_size}\0{stat.st_mtime_ns}\0{stat.st_ino}".encode())
    else:
        digest.update(content_digest(path, memo_dir).encode())
    return digest.hexdigest()[:40]


#: A file changed less than this long before it was hashed is hashed again next time. A later write
#: could keep the stat: within the same tick of a coarse clock, or through a memory map, whose
#: writes Linux stamps only when they dirty a clean page (a page stays dirty up to the kernel's
#: writeback delay, 30 s by default; after it, the next write stamps again).
SETTLED_NS: Final = 120_000_000_000


def content_digest(path: Path, memo_dir: Path | None = None) -> str:
    """SHA-256 of ``path``'s bytes, remembered in ``memo_dir`` against the file's stat.

    Hashing is the one part of opening a cached catalog that reads the whole file (3.4 ms at
    100,000 rows, every run). The digest is reused while the file's device, inode, size,
    modification and *change* time are the same: a write moves the change time, which no copy
    tool (``cp -p``, ``rsync -a``, ``touch``) can set back. As git does for its index, a digest is
    remembered only for a file last changed ``SETTLED_NS`` (two minutes) before it was hashed: a
    catalog edited since is hashed at every open until it has settled.

    Raises:
        OSError: The file cannot be read.
    """
    before = path.stat()
    identity = f"{before.st_dev}:{before.st_ino}:{before.st_size}:{before.st_mtime_ns}:{before.st_ctime_ns}"
    memo = memo_dir / f"{_source_tag(path, None)}.digest" if memo_dir is not None else None
    if memo is not None:
        try:
            remembered, digest = memo.read_text(encoding="ascii").split()
            if remembered == identity:
                return digest
        except (OSError, ValueError, UnicodeDecodeError):
            pass  # none yet, or unreadable: hash
    hashed = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            hashed.update(block)
    digest = hashed.hexdigest()
    after = path.stat()
    settled = time.time_ns() - max(after.st_mtime_ns, after.st_ctime_ns) >= SETTLED_NS
    if memo is not None and settled and (after.st_mtime_ns, after.st_ctime_ns, after.st_size) == (
        before.st_mtime_ns, before.st_ctime_ns, before.st_size):  # fmt: skip
        try:
            memo.parent.mkdir(parents=True, exist_ok=True)
            partial = memo.with_name(f"{memo.name}.{os.getpid()}.{uuid.uuid4().hex[:8]}")
            partial.write_text(f"{identity} {digest}\n", encoding="ascii")
            os.replace(partial, memo)
        except OSError:
            pass  # an unusable cache directory only means hashing again
    return digest


def sidecar_path(cache_dir: Path, path: Path, table: str | None, key: str) -> Path:
    """The sidecar file of catalog ``path`` (and ``table``) for ``key``."""
    return cache_dir / f"{_source_tag(path, table)}-{key}.duckdb"


def open_sidecar(sidecar: Path) -> duckdb.DuckDBPyConnection | None:
    """A read-only connection to ``sidecar``, or None when there is none (or it cannot be opened)."""
    if not sidecar.exists():
        return None
    try:
        conn = duckdb.connect(str(sidecar), read_only=True)
    except duckdb.Error as exc:
        logger.warning("catalog cache %s cannot be opened (%s); reading the catalog itself", sidecar, exc)
        return None
    try:
        conn.execute("SELECT count(*) FROM catalog_meta").fetchone()
    except duckdb.Error:
        conn.close()
        return None
    return conn


def write_sidecar(conn: duckdb.DuckDBPyConnection, sidecar: Path, tables: dict[str, str]) -> bool:
    """Copy ``tables`` (sidecar table name -> ``SELECT`` over ``conn``) into ``sidecar``, atomically.

    Returns:
        True when the sidecar is in place; False when the cache directory is unusable (logged).
    """
    building = sidecar.with_name(f"{sidecar.stem}.{os.getpid()}.{uuid.uuid4().hex[:8]}.building")
    attached = False
    try:
        sidecar.parent.mkdir(parents=True, exist_ok=True)
        conn.execute(f"ATTACH '{_escaped(str(building))}' AS flokan_catalog_cache")
        attached = True
        for name, select in tables.items():
            conn.execute(f"CREATE TABLE flokan_catalog_cache.{name} AS {select}")
        conn.execute("DETACH flokan_catalog_cache")
        attached = False
        os.replace(building, sidecar)
    except (OSError, duckdb.Error) as exc:
        logger.warning("catalog cache %s not written (%s); runs will read the catalog itself", sidecar.parent, exc)
        if attached:
            try:
                conn.execute("DETACH flokan_catalog_cache")
            except duckdb.Error:
                pass
        for leftover in (building, building.with_name(building.name + ".wal")):
            try:
                leftover.unlink(missing_ok=True)
            except OSError:
                pass
        return False
    _remove_older(sidecar)
    return True


def _remove_older(sidecar: Path) -> None:
    """Remove the same catalog's other sidecars (earlier versions of the file)."""
    tag = sidecar.name.split("-", 1)[0]
    for other in sidecar.parent.glob(f"{tag}-*.duckdb"):
        if other != sidecar:
            try:
                other.unlink()
            except OSError:
                pass


def _source_tag(path: Path, table: str | None) -> str:
    return hashlib.sha256(f"{path.resolve()}\0{table or ''}".encode()).hexdigest()[:16]


def _escaped(text: str) -> str:
    return text.replace("'", "''")
