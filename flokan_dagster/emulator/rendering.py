"""Real, deterministic PNG images made with Pillow.

Text-to-image paints a picture derived from ``sha256(prompt|tier|style|character)``: the same
inputs give the same pixels. An edit visibly transforms its source (a mirror or rotation, a
colour wash and a caption band, all chosen from the same hash), so a chained edit always differs
from its source.

Example:
    >>> a = text_to_image("a red chair", "pro", None, None, (64, 64))
    >>> a == text_to_image("a red chair", "pro", None, None, (64, 64))
    True
    >>> edit(a, "make it blue", "pro", None, None, (64, 64)) != a
    True
"""

from __future__ import annotations

import hashlib
import io
import struct
import zlib
from functools import lru_cache

from PIL import Image, ImageDraw, ImageFont, ImageOps

_TRANSPOSES = (
    Image.Transpose.FLIP_LEFT_RIGHT,
    Image.Transpose.FLIP_TOP_BOTTOM,
    Image.Transpose.ROTATE_90,
    Image.Transpose.ROTATE_180,
    Image.Transpose.ROTATE_270,
    Image.Transpose.TRANSPOSE,
)


def _digest(*parts: str | None) -> bytes:
    return hashlib.sha256("|".join(p or "" for p in parts).encode()).digest()


def _colour(d: bytes, at: int) -> tuple[int, int, int]:
    return d[at % 32], d[(at + 1) % 32], d[(at + 2) % 32]


@lru_cache(maxsize=8)
def _font(px: int) -> ImageFont.ImageFont | ImageFont.FreeTypeFont:
    return ImageFont.load_default(size=px)


def _caption(prompt: str, limit: int = 40) -> str:
    words = " ".join(prompt.split())
    return words if len(words) <= limit else words[: limit - 1] + "…"


def _chunk(kind: bytes, data: bytes) -> bytes:
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def _png(image: Image.Image) -> bytes:
    """Encode an RGB image as PNG with unfiltered rows.

    Hand-rolled because zlib releases the GIL while compressing and Pillow's PNG encoder does
    not: two hundred concurrent jobs then render on every core.
    """
    w, h = image.size
    raw = image.tobytes()
    stride = w * 3
    rows = b"".join(b"\x00" + raw[y * stride : (y + 1) * stride] for y in range(h))
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _chunk(b"IHDR", header) + _chunk(b"IDAT", zlib.compress(rows, 1)) + _chunk(b"IEND", b"")


def _band(image: Image.Image, d: bytes, text: str) -> None:
    """Draw a translucent band with ``text`` across the image, placed from the hash."""
    w, h = image.size
    band_h = max(12, h // 8)
    top = (d[20] * (h - band_h)) // 255
    overlay = Image.new("RGBA", (w, band_h), (*_colour(d, 21), 170))
    image.paste(overlay, (0, top), overlay)
    draw = ImageDraw.Draw(image)
    fg = (255, 255, 255) if sum(_colour(d, 21)) < 384 else (0, 0, 0)
    draw.text((max(2, w // 40), top + band_h // 2), text, fill=fg, font=_font(max(8, band_h // 2)), anchor="lm")


def text_to_image(
    prompt: str, tier: str, style_id: str | None, character_id: str | None, size: tuple[int, int]
) -> bytes:
    """Render the PNG a text-to-image job produces; deterministic in all five arguments."""
    d = _digest(prompt, tier, style_id, character_id)
    w, h = size
    # Nearest-neighbour throughout: smooth enough for a 256-level gradient, and 4x cheaper.
    gradient = Image.linear_gradient("L").resize(size, Image.Resampling.NEAREST).rotate(d[0] * 360 / 256)
    image = ImageOps.colorize(gradient, _colour(d, 1), _colour(d, 4))
    draw = ImageDraw.Draw(image)
    for i in range(3 + d[7] % 4):
        base = 8 + 3 * i
        x0, y0 = d[base] * w // 256, d[base + 1] * h // 256
        x1, y1 = x0 + (d[base + 2] % 128 + 32) * w // 256, y0 + (d[base + 3] % 128 + 32) * h // 256
        fill = _colour(d, base + 4)
        if d[base] % 2:
            draw.ellipse((x0, y0, x1, y1), fill=fill)
        else:
            draw.rectangle((x0, y0, x1, y1), fill=fill)
    # The tier shows as a frame: thin for standard, medium for creative, thick for pro.
    frame = {"standard": 1, "creative": 2, "pro": 3}.get(tier, 1) * max(1, w // 128)
    draw.rectangle((0, 0, w - 1, h - 1), outline=_colour(d, 29), width=frame)
    _band(image, d, _caption(prompt))
    return _png(image)


def edit(
    source: bytes, prompt: str, tier: str, style_id: str | None, character_id: str | None, size: tuple[int, int]
) -> bytes:
    """Render the PNG an edit job produces from ``source`` (PNG, JPEG, WebP or GIF bytes)."""
    d = _digest("edit", prompt, tier, style_id, character_id)
    with Image.open(io.BytesIO(source)) as opened:
        image = ImageOps.fit(opened.convert("RGB"), size)
    image = image.transpose(_TRANSPOSES[d[0] % len(_TRANSPOSES)])
    if image.size != size:
        image = image.resize(size)
    wash = Image.new("RGB", size, _colour(d, 1))
    image = Image.blend(image, wash, 0.25 + (d[4] % 32) / 128)
    _band(image, d, "edit: " + _caption(prompt, 34))
    return _png(image)


def source_for_url(url: str, size: tuple[int, int]) -> bytes:
    """Synthesise the deterministic stand-in for an external ``image_url`` (never fetched)."""
    return text_to_image(f"external image {url}", "standard", None, None, size)
