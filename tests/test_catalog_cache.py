"""The catalog's keyed copy (``catalog_cache``) gives exactly what reading the file gives, and only for that content.

Runs open the catalog through its cached copy; every answer a run or a sensor reads from it
(specs, problems, unusable SKUs, partition keys, partition changes) is compared here with a read
of the file itself (``cache_dir=None``), and a changed file must never be answered from an old copy.
"""

from __future__ import annotations

import os
from pathlib import Path

from flokan_dagster.catalog import CatalogFile, CatalogMapping
from tests.test_scale_queries import CATALOG  # messy on purpose: padding, a duplicate, a bad key, blanks

MAPPING = CatalogMapping(prompt_template="photo of {title}", tier_column="tier")


def _everything(catalog_file: CatalogFile) -> tuple[object, ...]:
    whole = catalog_file.catalog()
    keys = catalog_file.partition_keys
    return (whole.specs, whole.problems, whole.unkeyed, keys, catalog_file.catalog_for(["A-1", "F-6", "nope"]).specs,
            catalog_file.catalog_for(["A-1", "B-2"]).problems, catalog_file.partition_changes(["A-1", "Z-9"]),
            catalog_file.columns)  # fmt: skip


def test_the_cached_copy_answers_as_the_file_does(tmp_path: Path) -> None:
    path, cache = tmp_path / "catalog.csv", tmp_path / "cache"
    path.write_text(CATALOG, encoding="utf-8")
    with CatalogFile.open(path, MAPPING, cache_dir=None) as direct:
        expected = _everything(direct)
    with CatalogFile.open(path, MAPPING, cache_dir=cache) as first:  # reads the file, writes the copy
        assert _everything(first) == expected
    copies = list(cache.glob("*.duckdb"))
    assert len(copies) == 1
    with CatalogFile.open(path, MAPPING, cache_dir=cache) as cached:  # reads the copy
        assert cached._scratch is None  # opened from the copy, not parsed again
        assert _everything(cached) == expected
    assert expected[2] and expected[1]  # unusable SKUs and problems both came through


def test_a_changed_file_is_never_answered_from_an_old_copy(tmp_path: Path) -> None:
    path, cache = tmp_path / "catalog.csv", tmp_path / "cache"
    path.write_text("sku,title\nA-1,a mug\n", encoding="utf-8")
    with CatalogFile.open(path, MAPPING, cache_dir=cache) as first:
        assert first.catalog_for(["A-1"]).specs["A-1"].prompt == "photo of a mug"
    stat = path.stat()
    # Same size, same modification time, other content: the content digest still tells them apart.
    path.write_text("sku,title\nA-1,a cup\n", encoding="utf-8")
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns))
    assert path.stat().st_size == stat.st_size
    with CatalogFile.open(path, MAPPING, cache_dir=cache) as second:
        assert second.catalog_for(["A-1"]).specs["A-1"].prompt == "photo of a cup"
    with CatalogFile.open(path, MAPPING, cache_dir=cache) as third:
        assert third._scratch is None and third.catalog_for(["A-1"]).specs["A-1"].prompt == "photo of a cup"
    assert len(list(cache.glob("*.duckdb"))) == 1  # the old copy was removed


def test_an_unusable_cache_directory_only_means_no_cache(tmp_path: Path) -> None:
    path = tmp_path / "catalog.csv"
    path.write_text(CATALOG, encoding="utf-8")
    blocker = tmp_path / "not-a-directory"
    blocker.write_text("a file where the cache directory would be")
    with CatalogFile.open(path, MAPPING, cache_dir=None) as direct:
        expected = _everything(direct)
    for _ in range(2):
        with CatalogFile.open(path, MAPPING, cache_dir=blocker / "cache") as opened:
            assert _everything(opened) == expected
    assert not list(tmp_path.rglob("*.building*"))
