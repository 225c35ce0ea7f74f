"""The image store: result images by asset and SKU, checksummed, never outside its root.

The root is a local directory or an object-storage URL (``s3://bucket/prefix``, ``gs://...``,
``az://...``, anything fsspec knows) reached through universal-pathlib, so runs on several
machines share one store. Names are content-addressed (the SHA-256 leads the file name), so a
second write of the same image is a no-op and an object, once there, never changes.

File names derive from SKUs, which come from a catalog a user does not fully control, so every
name is reduced to a safe slug plus a hash of the SKU: ``../../etc`` cannot climb out, and two
SKUs that slug alike still get different files.

Example:
    >>> import tempfile
    >>> store = ImageStore(tempfile.mkdtemp())
    >>> store.path_for("hero_images", "../../etc/passwd", "ab" * 32).parent.parent.name
    'hero_images'
"""

from __future__ import annotations

import base64
import hashlib
import io
import os
import re
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError
from upath import UPath

THUMBNAIL_MAX_PX = 256
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StoredImage:
    """An image written to the store.

    Attributes:
        path: Where the image is: a local ``Path``, or a ``UPath`` (``str()`` gives its URL).
        sha256: Hex digest of the bytes.
        size_bytes: Length of the file.
        width: Pixels.
        height: Pixels.
        format: Pillow's format name, e.g. ``PNG``.
    """

    path: Path | UPath
    sha256: str
    size_bytes: int
    width: int
    height: int
    format: str


class ImageDecodeError(ValueError):
    """Bytes that should be an image are not a decodable image."""


def safe_name(text: str, max_length: int = 80) -> str:
    """A file-name-safe slug of ``text`` with a short hash, unique per input.

    Example:
        >>> safe_name("MUG/1").startswith("MUG_1-"), safe_name("MUG/1") != safe_name("MUG_1")
        (True, True)
    """
    slug = _UNSAFE.sub("_", text).strip("._-")[:max_length] or "x"
    digest = hashlib.sha256(text.encode("utf-8")).hexdigest()[:10]
    return f"{slug}-{digest}"


def inspect_image(data: bytes) -> tuple[int, int, str]:
    """Width, height and format of image bytes, fully decoded; raises ImageDecodeError."""
    try:
        with Image.open(io.BytesIO(data)) as image:
            image.load()
            return image.width, image.height, image.format or "UNKNOWN"
    except (UnidentifiedImageError, OSError, SyntaxError, ValueError) as exc:
        raise ImageDecodeError(f"not a decodable image: {exc}") from None


def thumbnail_data_uri(data: bytes, max_px: int = THUMBNAIL_MAX_PX) -> str:
    """A JPEG thumbnail of at most ``max_px`` on its longer side, as a ``data:`` URI."""
    with Image.open(io.BytesIO(data)) as image:
        image.thumbnail((max_px, max_px))
        buffer = io.BytesIO()
        image.convert("RGB").save(buffer, format="JPEG", quality=70)
    return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def is_remote_location(location: str | Path) -> bool:
    """Return True for an object-storage URL such as ``s3://bucket/prefix`` (not a local path).

    Example:
        >>> is_remote_location("s3://images/flokan"), is_remote_location("/data/images")
        (True, False)
    """
    scheme = re.match(r"^([A-Za-z][A-Za-z0-9+.-]*)://", str(location))
    return scheme is not None and scheme.group(1).lower() != "file"


class ImageStore:
    """Images under one root: ``<root>/<asset>/<sku slug>/<sha256 prefix>.<ext>``.

    Args:
        root: A local directory (created when missing) or an object-storage URL such as
            ``s3://bucket/prefix`` (the bucket must exist).
        storage_options: Options for the object store's fsspec filesystem, e.g.
            ``{"endpoint_url": "http://127.0.0.1:9000"}`` for an S3-compatible server.
            Credentials are best left to the environment (``AWS_ACCESS_KEY_ID`` ...).

    Example:
        >>> ImageStore("s3://images/flokan", storage_options={"endpoint_url": "http://127.0.0.1:9000"})
        ImageStore('s3://images/flokan')
    """

    def __init__(self, root: str | Path, storage_options: Mapping[str, Any] | None = None) -> None:
        self.remote = is_remote_location(root)
        self.storage_options = dict(storage_options or {})
        if self.remote:
            self.root: Path | UPath = UPath(str(root).rstrip("/"), **self.storage_options)
        else:
            if self.storage_options:
                raise ValueError(f"storage_options apply to object-storage URLs, not to the local path {root!s}")
            self.root = Path(str(root).removeprefix("file://")).resolve()

    def __repr__(self) -> str:
        return f"ImageStore({str(self.root)!r})"

    def path_for(self, asset: str, sku: str, sha256: str, extension: str = "png") -> Path | UPath:
        """Where an image with this digest for this asset and SKU lives."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        ext = _UNSAFE.sub("", extension.lower())[:8] or "bin"
        asset_dir = _UNSAFE.sub("_", asset).strip("._-") or "asset"
        relative = f"{asset_dir}/{safe_name(sku)}/{sha256[:32]}.{ext}"
        if self.remote:
            # Slugs hold no separators or dots-only parts, so the key cannot leave the prefix.
            return self.root / relative
        path = (self.root / relative).resolve()
        if not path.is_relative_to(str(self.root)):  # defence in depth: slugs never contain separators
            raise ValueError(f"refusing a store path outside {self.root}")
        return path

    def write(self, asset: str, sku: str, data: bytes) -> StoredImage:
        """Check that ``data`` decodes, then write it atomically; returns what was stored.

        ``data`` (the downloaded body) is written as it is, with no second copy: to a temporary
        file renamed into place locally, or in one upload that appears whole on object storage.
        """
        width, height, fmt = inspect_image(data)
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path_for(asset, sku, sha256, fmt.lower())
        if isinstance(path, UPath):
            self._upload(path, data)
            return StoredImage(path, sha256, len(data), width, height, fmt)
        path.parent.mkdir(parents=True, exist_ok=True)
        if not self._holds(path, sha256):
            fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".incoming-")
            try:
                with os.fdopen(fd, "wb") as handle:
                    handle.write(data)
                    handle.flush()
                    os.fsync(handle.fileno())
                os.replace(tmp, path)
            except BaseException:
                Path(tmp).unlink(missing_ok=True)
                raise
        return StoredImage(path, sha256, len(data), width, height, fmt)

    def find(self, path: str | Path, sha256: str) -> StoredImage | None:
        """The stored image at ``path`` if it is inside the store, has this digest and decodes."""
        candidate = self._inside(path)
        if candidate is None:
            return None
        try:
            data = candidate.read_bytes()
        except (FileNotFoundError, IsADirectoryError):
            return None
        if hashlib.sha256(data).hexdigest() != sha256:
            return None
        try:
            width, height, fmt = inspect_image(data)
        except ImageDecodeError:
            return None
        return StoredImage(candidate, sha256, len(data), width, height, fmt)

    def _inside(self, path: str | Path) -> Path | UPath | None:
        """``path`` as a location of this store, or None when it lies elsewhere."""
        if not self.remote:
            if is_remote_location(path):
                return None
            candidate = Path(str(path)).resolve()
            return candidate if candidate.is_relative_to(str(self.root)) and candidate.is_file() else None
        text, root = str(path), str(self.root).rstrip("/") + "/"
        if not text.startswith(root) or "/../" in text or "/./" in text:
            return None
        return UPath(text, **self.storage_options)

    def _upload(self, path: UPath, data: bytes) -> None:
        """Put ``data`` at ``path`` unless the same content is there already.

        The name carries the digest and an upload appears whole or not at all, so an object of
        the right size under this name is this image: skip the upload.
        """
        try:
            if path.stat().st_size == len(data):
                return
        except FileNotFoundError:
            pass
        with path.open("wb") as handle:
            handle.write(data)

    def _holds(self, path: Path, sha256: str) -> bool:
        return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256
