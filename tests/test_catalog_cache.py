"""The catalog's keyed copy (``catalog_cache``) gives exactly what reading the file gives, and only for that content.

Runs open the catalog through its cached copy; every answer a run or a sensor reads from it
(specs, problems, unusable SKUs, partition keys, partition changes) is compared here with a read
of the file itself (``cache_dir=None``), and a changed file must never be answered from an old copy.
"""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from flokan_dagster import catalog_cache
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


@pytest.mark.parametrize("remembered", [False, True], ids=["hashed", "digest-remembered"])
def test_a_changed_file_is_never_answered_from_an_old_copy(tmp_path: Path, remembered: bool,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:  # fmt: skip
    if remembered:  # the file's digest is remembered at once, as for a file last changed long ago
        monkeypatch.setattr(catalog_cache, "SETTLED_NS", 0)
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


def test_a_settled_file_is_hashed_once_and_a_fresh_one_every_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    path, memo_dir = tmp_path / "catalog.csv", tmp_path / "cache"
    path.write_text(CATALOG, encoding="utf-8")
    digest = catalog_cache.content_digest(path, memo_dir)
    assert not list(memo_dir.glob("*.digest")), "a file changed just now is not remembered (a coarse clock could hide a write)"

    monkeypatch.setattr(catalog_cache, "SETTLED_NS", 0)
    assert catalog_cache.content_digest(path, memo_dir) == digest
    assert len(list(memo_dir.glob("*.digest"))) == 1

    def no_reading(*args: object, **kwargs: object) -> None:
        raise AssertionError("the file was read again")

    monkeypatch.setattr(catalog_cache, "open", no_reading, raising=False)
    assert catalog_cache.content_digest(path, memo_dir) == digest  # from the memo: the file is not read
    with path.open("a", encoding="utf-8") as handle:
        handle.write("Z-9,late\n")
    with pytest.raises(AssertionError, match="read again"):
        catalog_cache.content_digest(path, memo_dir)  # changed: hashed again
