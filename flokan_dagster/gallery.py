"""The gallery: every SKU's latest image per asset, with its credits, status and failures.

Dagster has no image metadata type, so looking at many images in the UI means one click per SKU.
The gallery is what a merchandiser opens instead: a static HTML page (``index.html``, thumbnails
beside it, each linking to the full image) and one contact-sheet PNG of the same grid, both
written from the ledger and the image store. ``build_gallery_asset`` makes it a Dagster asset
(its paths in the metadata); ``flokan-dagster gallery`` writes it from the command line.

Example:
    >>> import tempfile
    >>> from pathlib import Path
    >>> from flokan_dagster.ledger import CreditLedger
    >>> root = Path(tempfile.mkdtemp())
    >>> gallery = write_gallery(CreditLedger(str(root / "l.duckdb")), root / "gallery", ["hero_images"])
    >>> gallery.index.name, gallery.contact_sheet.name, gallery.skus
    ('index.html', 'contact_sheet.png', 0)
"""

import base64
import html
import io
import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from pathlib import Path

import dagster as dg
from PIL import Image, ImageDraw

from flokan_dagster.image_store import ImageStore, is_remote_location, safe_name
from flokan_dagster.ledger import CreditLedger
from flokan_dagster.resource import FlokanLedgerResource, ImageStoreResource
from flokan_dagster.translator import METADATA_PREFIX

THUMB_PX = 240
CELL_PX = 180
CAPTION_PX = 46
# A contact sheet of a 100,000-SKU catalog would be gigapixels: it shows the first SKUs and says so.
SHEET_MAX_SKUS = 400

# One row per (asset, SKU): its newest image and the state of its newest attempt.
_ITEMS_SQL = """
SELECT asset, sku,
       sum(coalesce(credits_consumed, 0)) AS credits,
       count(*) AS attempts,
       count(*) FILTER (WHERE status IN ('failed', 'rejected', 'unknown')) AS failures,
       arg_max(status, updated_at) AS status,
       arg_max(error, updated_at) FILTER (WHERE error IS NOT NULL) AS last_error,
       arg_max(result_path, updated_at) FILTER (WHERE status = 'completed' AND result_path IS NOT NULL) AS image,
       arg_max(job_id, updated_at) FILTER (WHERE status = 'completed' AND result_path IS NOT NULL) AS job_id,
       arg_max(result_sha256, updated_at) FILTER (WHERE status = 'completed' AND result_path IS NOT NULL) AS sha256
FROM attempts
WHERE sku IS NOT NULL AND asset IN ({assets})
GROUP BY asset, sku
"""


@dataclass(frozen=True)
class GalleryItem:
    """One SKU's state for one asset, as the gallery shows it."""

    asset: str
    sku: str
    credits: int
    attempts: int
    failures: int
    status: str
    last_error: str | None
    image: str | None
    sha256: str | None
    job_id: str | None
    thumbnail: Path | None = None


@dataclass(frozen=True)
class Gallery:
    """What ``write_gallery`` wrote, and its figures."""

    index: Path
    contact_sheet: Path
    skus: int
    images: int
    failing: int
    credits: int
    sheet_skus: int

    def preview_data_uri(self, max_px: int = 900) -> str:
        """The contact sheet shrunk to ``max_px`` wide, as a JPEG ``data:`` URI (for markdown metadata)."""
        with Image.open(self.contact_sheet) as sheet:
            sheet.thumbnail((max_px, max_px * 4))
            buffer = io.BytesIO()
            sheet.convert("RGB").save(buffer, format="JPEG", quality=75)
        return "data:image/jpeg;base64," + base64.b64encode(buffer.getvalue()).decode("ascii")


def gallery_items(ledger: CreditLedger, assets: Sequence[str]) -> list[GalleryItem]:
    """Every (asset, SKU) the ledger knows for ``assets``, ordered by SKU then by ``assets``' order."""
    if not assets:
        return []
    sql = _ITEMS_SQL.format(assets=", ".join("?" for _ in assets))
    rows = ledger.read(lambda conn: conn.execute(sql, list(assets)).fetchall())
    order = {asset: index for index, asset in enumerate(assets)}
    items = []
    for asset, sku, credits, attempts, failures, status, last_error, image, job_id, sha256 in rows:
        items.append(
            GalleryItem(
                asset=asset,
                sku=sku,
                credits=int(credits or 0),
                attempts=int(attempts),
                failures=int(failures),
                status=status,
                last_error=last_error,
                image=image,
                sha256=sha256,
                job_id=job_id,
            )
        )
    items.sort(key=lambda item: (item.sku, order[item.asset]))
    return items


def write_gallery(ledger: CreditLedger, directory: str | Path, assets: Sequence[str], store: ImageStore | None = None) -> Gallery:
    """Write ``index.html``, thumbnails and ``contact_sheet.png`` of ``assets`` into ``directory``.

    Thumbnails are made once per image (their names carry the image's digest), so re-writing the
    gallery after a run only shrinks the new images.

    Args:
        ledger: The credit ledger (read-only access).
        directory: Where the gallery goes (created when missing).
        assets: The image assets, in the order of the gallery's columns.
        store: The image store the images are read from (checked against their digest); without
            it, the ledger's local paths are read directly.
    """
    out = Path(directory).resolve()
    out.mkdir(parents=True, exist_ok=True)
    items = [_with_thumbnail(item, out, store) for item in gallery_items(ledger, assets)]
    skus = list(dict.fromkeys(item.sku for item in items))
    by_key = {(item.sku, item.asset): item for item in items}
    sheet_skus = skus[:SHEET_MAX_SKUS]
    sheet = out / "contact_sheet.png"
    _atomic_write(sheet, _contact_sheet(sheet_skus, assets, by_key))
    failing = len({item.sku for item in items if item.status != "completed"})
    credits = sum(item.credits for item in items)
    summary = (f"{len(skus):,} SKUs, {sum(1 for i in items if i.image):,} images, {credits:,} credits; "
               f"{failing:,} SKU(s) whose latest attempt did not complete")  # fmt: skip
    index = out / "index.html"
    _atomic_write(index, _page(out, skus, assets, by_key, summary, len(sheet_skus)).encode("utf-8"))
    return Gallery(index=index, contact_sheet=sheet, skus=len(skus), images=sum(1 for i in items if i.image),
                   failing=failing, credits=credits, sheet_skus=len(sheet_skus))  # fmt: skip


def _with_thumbnail(item: GalleryItem, out: Path, store: ImageStore | None) -> GalleryItem:
    if item.image is None or item.sha256 is None:
        return item
    thumb = out / "thumbs" / safe_name(item.asset) / f"{safe_name(item.sku)}-{item.sha256[:16]}.jpg"
    if not thumb.is_file():
        data = _image_bytes(item.image, item.sha256, store)
        if data is None:  # gone from the store: the card says so instead of showing a broken image
            return replace(item, image=None)
        try:
            with Image.open(io.BytesIO(data)) as image:
                image.thumbnail((THUMB_PX, THUMB_PX))
                buffer = io.BytesIO()
                image.convert("RGB").save(buffer, format="JPEG", quality=80)
        except OSError:
            return replace(item, image=None)
        thumb.parent.mkdir(parents=True, exist_ok=True)
        _atomic_write(thumb, buffer.getvalue())
    return replace(item, thumbnail=thumb)


def _image_bytes(location: str, sha256: str, store: ImageStore | None) -> bytes | None:
    if store is not None:
        stored = store.find(location, sha256)
        return stored.path.read_bytes() if stored is not None else None
    path = Path(location)
    return path.read_bytes() if path.is_file() else None


def _atomic_write(path: Path, data: bytes) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


_STATUS_COLORS = {"completed": (46, 125, 50), "pending": (120, 120, 120)}
_FAILED_COLOR = (198, 40, 40)


def _contact_sheet(skus: Sequence[str], assets: Sequence[str], by_key: dict[tuple[str, str], GalleryItem]) -> bytes:
    per_row = max(1, 8 // max(1, len(assets)))  # SKU groups per row: about eight cells wide
    gap, header = 12, 36
    group_w = len(assets) * CELL_PX + gap
    cell_h = CELL_PX + CAPTION_PX
    rows = max(1, -(-len(skus) // per_row))
    width = max(480, min(per_row, max(1, len(skus))) * group_w + gap)
    height = header + rows * (cell_h + gap) + gap
    sheet = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(sheet)
    draw.text((gap, 12), "Flokan gallery: " + " | ".join(assets) + ("" if skus else "  (no SKUs yet)"), fill="black")
    for index, sku in enumerate(skus):
        x0 = gap + (index % per_row) * group_w
        y0 = header + (index // per_row) * (cell_h + gap)
        for column, asset in enumerate(assets):
            x = x0 + column * CELL_PX
            item = by_key.get((sku, asset))
            draw.rectangle([x + 2, y0, x + CELL_PX - 2, y0 + CELL_PX - 4], outline=(220, 220, 220), fill=(245, 245, 245))
            if item is not None and item.thumbnail is not None:
                with Image.open(item.thumbnail) as thumb:
                    thumb.thumbnail((CELL_PX - 8, CELL_PX - 8))
                    sheet.paste(thumb.convert("RGB"), (x + (CELL_PX - thumb.width) // 2, y0 + (CELL_PX - 4 - thumb.height) // 2))
            else:
                draw.text((x + 10, y0 + CELL_PX // 2 - 6), "no image", fill=(120, 120, 120))
            status = item.status if item is not None else "not made"
            color = _STATUS_COLORS.get(status, _FAILED_COLOR if item is not None else (120, 120, 120))
            credits = f"{item.credits} cr" if item is not None else ""
            draw.text((x + 4, y0 + CELL_PX), f"{sku[:22]}", fill="black")
            draw.text((x + 4, y0 + CELL_PX + 14), f"{asset[:16]} {credits}", fill=(60, 60, 60))
            draw.text((x + 4, y0 + CELL_PX + 28), status, fill=color)
    buffer = io.BytesIO()
    sheet.save(buffer, format="PNG", optimize=True)
    return buffer.getvalue()


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;background:#fafafa}
h1{font-size:22px;margin:0 0 4px} .summary{color:#555;margin-bottom:16px}
.grid{display:flex;flex-wrap:wrap;gap:14px}
.sku{background:#fff;border:1px solid #ddd;border-radius:8px;padding:10px}
.sku h2{font-size:15px;margin:0 0 8px;font-family:ui-monospace,monospace}
.cells{display:flex;gap:10px}
figure{margin:0;width:200px} figure img{width:200px;height:200px;object-fit:contain;background:#f2f2f2;border-radius:4px}
.none{width:200px;height:200px;display:flex;align-items:center;justify-content:center;background:#f2f2f2;color:#888;border-radius:4px}
figcaption{font-size:12px;line-height:1.4;margin-top:4px}
.completed{color:#2e7d32} .failed,.rejected,.unknown{color:#c62828} .pending{color:#777}
.error{color:#c62828;font-size:11px;word-break:break-word}
"""


def _page(out: Path, skus: Sequence[str], assets: Sequence[str], by_key: dict[tuple[str, str], GalleryItem],
          summary: str, sheet_skus: int) -> str:  # fmt: skip
    esc = html.escape
    cards = []
    for sku in skus:
        cells = []
        for asset in assets:
            item = by_key.get((sku, asset))
            if item is None:
                cells.append(f'<figure><div class="none">not made</div><figcaption>{esc(asset)}</figcaption></figure>')
                continue
            if item.thumbnail is not None and item.image is not None:
                src = esc(os.path.relpath(item.thumbnail, out))
                full = esc(item.image if is_remote_location(item.image) else os.path.relpath(item.image, out))
                picture = f'<a href="{full}"><img src="{src}" alt="{esc(asset)} {esc(sku)}" loading="lazy"></a>'
            else:
                picture = '<div class="none">no image</div>'
            error = ""
            if item.status != "completed" and item.last_error:
                error = f'<div class="error">{esc(item.last_error[:300])}</div>'
            failures = f", {item.failures} failed" if item.failures else ""
            job = f"<br>job {esc(item.job_id)}" if item.job_id else ""
            cells.append(
                f'<figure data-asset="{esc(asset)}" data-status="{esc(item.status)}">{picture}<figcaption>'
                f'<b>{esc(asset)}</b> <span class="{esc(item.status)}">{esc(item.status)}</span><br>'
                f"{item.credits:,} credits, {item.attempts} attempt(s){failures}{job}{error}</figcaption></figure>"
            )
        cards.append(
            f'<section class="sku" data-sku="{esc(sku)}"><h2>{esc(sku)}</h2><div class="cells">{"".join(cells)}</div></section>'
        )
    truncated = f" (the first {sheet_skus:,} SKUs)" if sheet_skus < len(skus) else ""
    written = datetime.now(UTC).strftime("%Y-%m-%d %H:%M UTC")
    return (
        '<!doctype html><html lang="en"><head><meta charset="utf-8"><title>Flokan gallery</title>'
        f"<style>{_CSS}</style></head><body><h1>Flokan gallery</h1>"
        f'<div class="summary">{esc(summary)}. Written {written}. '
        f'<a href="contact_sheet.png">Contact sheet</a>{esc(truncated)}.</div>'
        f'<div class="grid">{"".join(cards)}</div></body></html>\n'
    )


def build_gallery_asset(
    name: str = "flokan_gallery",
    *,
    image_assets: Sequence[dg.AssetsDefinition | str],
    directory: str | Path | None = None,
    group_name: str = "flokan",
) -> dg.AssetsDefinition:
    """Make the gallery asset: an HTML page and a contact sheet of every SKU's latest image per asset.

    Args:
        name: Asset name.
        image_assets: The image assets shown, in column order (also its upstream dependencies).
        directory: Where the gallery is written (default: ``gallery`` beside the image store's directory).
        group_name: Asset group.

    Example:
        >>> build_gallery_asset(image_assets=["hero_images"]).key.to_user_string()
        'flokan_gallery'
    """
    names = [a.key.to_user_string() if isinstance(a, dg.AssetsDefinition) else str(a) for a in image_assets]

    @dg.asset(name=name, deps=[dg.AssetKey.from_user_string(n) for n in names], group_name=group_name, kinds={"html"},
              description="Every SKU's latest image per asset with its credits, status and failures: a static "
                          "HTML page and a contact-sheet PNG.")  # fmt: skip
    def _gallery(
        context: dg.AssetExecutionContext, flokan_ledger: FlokanLedgerResource, flokan_images: ImageStoreResource
    ) -> dg.MaterializeResult:
        target = Path(directory) if directory is not None else _default_directory(flokan_images.directory)
        gallery = write_gallery(flokan_ledger.get_ledger(), target, names, flokan_images.get_store())
        context.log.info(f"gallery of {gallery.skus} SKU(s) at {gallery.index}")
        return dg.MaterializeResult(metadata=gallery_metadata(gallery))

    return _gallery


def _default_directory(image_directory: str) -> Path:
    if is_remote_location(image_directory):  # the page is for a person at this machine: it stays local
        return Path.cwd() / "flokan_gallery"
    return Path(image_directory).resolve().parent / "gallery"


def gallery_metadata(gallery: Gallery) -> dict[str, dg.MetadataValue]:
    """Dagster metadata for a written gallery: its paths, figures and a preview of the contact sheet (keys under ``flokan/``)."""
    fields = {
        "path": dg.MetadataValue.path(str(gallery.index)),
        "url": dg.MetadataValue.url(gallery.index.as_uri()),
        "contact_sheet": dg.MetadataValue.path(str(gallery.contact_sheet)),
        "preview": dg.MetadataValue.md(f"![contact sheet]({gallery.preview_data_uri()})"),
        "skus": dg.MetadataValue.int(gallery.skus),
        "images": dg.MetadataValue.int(gallery.images),
        "failing_skus": dg.MetadataValue.int(gallery.failing),
        "shown_credits": dg.MetadataValue.int(gallery.credits),  # not "credits": that key sums spending over events
    }
    return {METADATA_PREFIX + name: value for name, value in fields.items()}
