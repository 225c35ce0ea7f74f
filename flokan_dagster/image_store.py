"""The local image store: result images by asset and SKU, checksummed, never outside its root.

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
from dataclasses import dataclass
from pathlib import Path

from PIL import Image, UnidentifiedImageError

THUMBNAIL_MAX_PX = 256
_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


@dataclass(frozen=True)
class StoredImage:
    """An image written to the store.

    Attributes:
        path: Absolute path of the file.
        sha256: Hex digest of the bytes.
        size_bytes: Length of the file.
        width: Pixels.
        height: Pixels.
        format: Pillow's format name, e.g. ``PNG``.
    """

    path: Path
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


class ImageStore:
    """Images under one root directory: ``<root>/<asset>/<sku slug>/<sha256 prefix>.<ext>``.

    Args:
        root: The store's directory (created when missing).
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root).resolve()

    def __repr__(self) -> str:
        return f"ImageStore({str(self.root)!r})"

    def path_for(self, asset: str, sku: str, sha256: str, extension: str = "png") -> Path:
        """Where an image with this digest for this asset and SKU lives."""
        if not re.fullmatch(r"[0-9a-f]{64}", sha256):
            raise ValueError("sha256 must be 64 lowercase hex digits")
        ext = _UNSAFE.sub("", extension.lower())[:8] or "bin"
        asset_dir = _UNSAFE.sub("_", asset).strip("._-") or "asset"
        path = (self.root / asset_dir / safe_name(sku) / f"{sha256[:32]}.{ext}").resolve()
        if not path.is_relative_to(self.root):  # defence in depth: slugs never contain separators
            raise ValueError(f"refusing a store path outside {self.root}")
        return path

    def write(self, asset: str, sku: str, data: bytes) -> StoredImage:
        """Check that ``data`` decodes, then write it atomically; returns what was stored."""
        width, height, fmt = inspect_image(data)
        sha256 = hashlib.sha256(data).hexdigest()
        path = self.path_for(asset, sku, sha256, fmt.lower())
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
        candidate = Path(path).resolve()
        if not candidate.is_relative_to(self.root) or not candidate.is_file():
            return None
        data = candidate.read_bytes()
        if hashlib.sha256(data).hexdigest() != sha256:
            return None
        try:
            width, height, fmt = inspect_image(data)
        except ImageDecodeError:
            return None
        return StoredImage(candidate, sha256, len(data), width, height, fmt)

    def _holds(self, path: Path, sha256: str) -> bool:
        return path.is_file() and hashlib.sha256(path.read_bytes()).hexdigest() == sha256
