"""The image store on object storage: a real S3-compatible server (moto) on loopback."""

from __future__ import annotations

import hashlib

import pytest
import s3fs

from flokan_dagster.image_store import ImageDecodeError, ImageStore, thumbnail_data_uri
from flokan_dagster.resource import ImageStoreResource
from tests.servers import S3Server
from tests.support import png_bytes


def _store(s3_server: S3Server) -> tuple[ImageStore, s3fs.S3FileSystem, str]:
    bucket = s3_server.new_bucket()
    options = {"endpoint_url": s3_server.endpoint, "key": "testing", "secret": "testing"}
    return ImageStore(f"s3://{bucket}/flokan", storage_options=options), s3fs.S3FileSystem(**options), bucket


def test_write_is_content_addressed_in_the_bucket_and_found_again(s3_server: S3Server) -> None:
    store, fs, bucket = _store(s3_server)
    data = png_bytes((10, 200, 30))
    stored = store.write("hero_images", "MUG/1 ../../etc", data)
    digest = hashlib.sha256(data).hexdigest()
    assert str(stored.path).startswith(f"s3://{bucket}/flokan/hero_images/MUG_1")
    assert str(stored.path).endswith(f"/{digest[:32]}.png")
    assert fs.cat_file(str(stored.path)) == data  # really in the bucket, byte for byte
    assert (stored.sha256, stored.size_bytes, stored.format) == (digest, len(data), "PNG")
    # What the asset's metadata uses: the path as text and a thumbnail read back from the store.
    assert thumbnail_data_uri(stored.path.read_bytes()).startswith("data:image/jpeg;base64,")
    again = store.write("hero_images", "MUG/1 ../../etc", data)
    assert again.path == stored.path and len(fs.find(f"{bucket}/flokan")) == 1
    found = store.find(str(stored.path), digest)
    assert found is not None and found.width == stored.width


def test_find_refuses_other_digests_other_buckets_and_escapes(s3_server: S3Server) -> None:
    store, fs, bucket = _store(s3_server)
    stored = store.write("hero_images", "MUG-2", png_bytes())
    assert store.find(str(stored.path), "0" * 64) is None
    other = s3_server.new_bucket()
    fs.pipe_file(f"{other}/flokan/x.png", png_bytes())
    assert store.find(f"s3://{other}/flokan/x.png", stored.sha256) is None
    assert store.find(f"s3://{bucket}/flokan/../elsewhere/x.png", stored.sha256) is None
    assert store.find(f"s3://{bucket}/flokan/hero_images/missing.png", stored.sha256) is None
    assert store.find("/etc/passwd", stored.sha256) is None


def test_bad_bytes_never_reach_the_bucket(s3_server: S3Server) -> None:
    store, fs, bucket = _store(s3_server)
    with pytest.raises(ImageDecodeError):
        store.write("hero_images", "MUG-3", b"<html>not an image</html>")
    assert fs.find(bucket) == []


def test_resource_builds_an_object_store_and_local_paths_refuse_storage_options(s3_server: S3Server, tmp_path) -> None:  # type: ignore[no-untyped-def]
    bucket = s3_server.new_bucket()
    resource = ImageStoreResource(
        directory=f"s3://{bucket}/imgs",
        storage_options={"endpoint_url": s3_server.endpoint, "key": "testing", "secret": "testing"},
    )
    store = resource.get_store()
    assert store.remote and str(store.root) == f"s3://{bucket}/imgs"
    assert store.write("a", "S", png_bytes()).path.exists()
    assert not ImageStoreResource(directory=str(tmp_path)).get_store().remote
    with pytest.raises(ValueError, match="storage_options apply to object-storage URLs"):
        ImageStore(tmp_path, storage_options={"endpoint_url": "http://127.0.0.1:1"})
