"""How a prediction diff looks: the static page (``diff.html``) and the montage (``diff.png``).

Both show the same thing (``diff_gallery.write_gallery`` chooses which images): totals on top, then one group per
flip type, most frequent first, each image with model A's and model B's answer and confidence and the
true label where known. The page needs no JavaScript and no other file: its CSS is inline and its
images are PNG ``data:`` URIs, so it reads the same from the reports folder, through the server and
inside MLflow's sandboxed artifact view. Every text that comes from data (class names, model names) is
escaped.
"""

from __future__ import annotations

import base64
import html
import io

import numpy as np
from PIL import Image, ImageDraw, ImageFont

from visionloop.contracts import DiffSummary, FlipGroup
from visionloop.promotion.diff import Flip, PredictionDiff

THUMB = 64  # pixels of an image's longer side, on the page and in the montage (small images are enlarged)
CELL_W, CAPTION_H, PAD = 104, 40, 6  # montage layout, in pixels
COLUMNS = 10  # montage images per row: a larger group wraps onto more rows
OUTCOME_COLOUR = {"broken": "#c0392b", "fixed": "#1e8449", "both wrong": "#7f8c8d", "unlabeled": "#34495e"}

_CSS = """
body{font:14px/1.4 system-ui,sans-serif;margin:24px;color:#1d2733;background:#fafbfc}
h1{font-size:20px;margin:0 0 4px} h2{font-size:16px;margin:24px 0 8px}
.muted{color:#66717d} .totals{display:flex;gap:12px;flex-wrap:wrap;margin:12px 0}
.totals div{background:#fff;border:1px solid #dde2e7;border-radius:6px;padding:8px 12px}
.totals b{display:block;font-size:20px}
table{border-collapse:collapse;background:#fff} td,th{border:1px solid #dde2e7;padding:3px 10px;text-align:right}
th:first-child,td:first-child{text-align:left}
.grid{display:flex;flex-wrap:wrap;gap:8px}
figure{margin:0;background:#fff;border:1px solid #dde2e7;border-left:4px solid #34495e;border-radius:4px;
padding:6px;width:150px;font-size:12px}
figure img{width:64px;height:64px;object-fit:contain;image-rendering:pixelated;display:block;margin:0 auto 4px}
.broken{border-left-color:#c0392b} .fixed{border-left-color:#1e8449} .both-wrong{border-left-color:#7f8c8d}
.tag{font-weight:600} .broken .tag{color:#c0392b} .fixed .tag{color:#1e8449}
"""


def thumbnail(image: np.ndarray) -> Image.Image:
    """The image with its longer side ``THUMB`` pixels: enlarged without smoothing, so pixels stay pixels."""
    picture = Image.fromarray(image)
    scale = THUMB / max(picture.size)
    size = (max(1, round(picture.width * scale)), max(1, round(picture.height * scale)))
    return picture.resize(size, Image.Resampling.NEAREST if scale >= 1 else Image.Resampling.LANCZOS)


def _data_uri(image: np.ndarray) -> str:
    buffer = io.BytesIO()
    thumbnail(image).save(buffer, format="PNG")
    return "data:image/png;base64," + base64.b64encode(buffer.getvalue()).decode()


def _headline(summary: DiffSummary) -> str:
    share = f" ({summary.n_flipped / summary.n_images:.1%})" if summary.n_images else ""
    return (f"{summary.n_flipped} of {summary.n_images} images change their answer{share}; "
            f"{summary.fixed} fixed and {summary.broken} broke a known label "
            f"({summary.n_labeled} of the {summary.n_images} have one)")


Shown = list[tuple[FlipGroup, list[Flip]]]  # the flip types drawn with images, and the images of each


def render_html(diff: PredictionDiff, summary: DiffSummary, shown: Shown) -> str:
    """The gallery page: totals, every flip type's counts, then the shown images of each group."""
    e = html.escape
    a, b = e(summary.model_a), e(summary.model_b)
    totals = "".join(f"<div><b>{value}</b>{e(name)}</div>" for name, value in (
        ("images", summary.n_images), ("flipped", summary.n_flipped), ("fixed a known label", summary.fixed),
        ("broke a known label", summary.broken), ("with a known label", summary.n_labeled)))
    rows = "".join(f"<tr><td>{e(g.flip)}</td><td>{g.count}</td><td>{g.fixed}</td><td>{g.broken}</td></tr>"
                   for g in summary.groups)
    table = (f"<table><tr><th>{a} → {b}</th><th>images</th><th>fixed</th><th>broken</th></tr>{rows}</table>"
             if summary.groups else "<p>No image changes its answer.</p>")
    sections = [_group_html(diff, group, flips, a, b) for group, flips in shown]
    hidden = len(summary.groups) - len(shown)
    if hidden > 0:
        sections.append(f'<p class="muted">{hidden} rarer flip type(s) are counted in the table, not shown.</p>')
    return (f'<!doctype html>\n<html lang="en"><head><meta charset="utf-8"><title>{e(summary.title)}</title>'
            f"<style>{_CSS}</style></head><body>"
            f"<h1>{e(summary.title)}</h1><p class=\"muted\">Answers of <b>{a}</b> (A) → <b>{b}</b> (B) on the same "
            f"images, written {e(summary.created_at[:19].replace('T', ' '))} UTC. {e(_headline(summary))}.</p>"
            f'<div class="totals">{totals}</div><h2>Flip types, most frequent first</h2>{table}'
            f"{''.join(sections)}</body></html>\n")


def _group_html(diff: PredictionDiff, group: FlipGroup, flips: list[Flip], a: str, b: str) -> str:
    e = html.escape
    figures = []
    for flip in flips:
        truth = "unknown" if flip.truth is None else e(flip.truth)
        figures.append(
            f'<figure class="{flip.outcome.replace(" ", "-")}"><img alt="image {flip.index}" '
            f'src="{_data_uri(diff.images[flip.index])}"><figcaption>'
            f"A {a}: <b>{e(flip.before)}</b> {flip.confidence_before:.2f}<br>"
            f"B {b}: <b>{e(flip.after)}</b> {flip.confidence_after:.2f}<br>"
            f'true: <b>{truth}</b> <span class="tag">{e(flip.outcome)}</span></figcaption></figure>')
    more = group.count - len(flips)
    note = f' <span class="muted">({len(flips)} shown, {more} more)</span>' if more > 0 else ""
    return (f'<h2 id="{e(group.flip)}">{e(group.flip)} · {group.count} image(s): {group.fixed} fixed, '
            f'{group.broken} broken{note}</h2><div class="grid">{"".join(figures)}</div>')


def render_montage(diff: PredictionDiff, summary: DiffSummary, shown: Shown) -> Image.Image:
    """One PNG: the headline, then each shown flip type (its name and counts above its images, ``COLUMNS`` a row)."""
    font = ImageFont.load_default()
    width = max(PAD * 2 + COLUMNS * CELL_W, 720)
    title_h, group_title_h, row_h = 44, 20, THUMB + CAPTION_H + PAD
    height = title_h + sum(group_title_h + row_h * max(1, -(-len(flips) // COLUMNS)) for _, flips in shown) + PAD
    canvas = Image.new("RGB", (width, height), "white")
    draw = ImageDraw.Draw(canvas)
    draw.text((PAD, PAD), _ascii(summary.title), fill="black", font=font)
    draw.text((PAD, PAD + 16), _ascii(_headline(summary)), fill="#444444", font=font)
    y = title_h
    for group, flips in shown:
        draw.text((PAD, y + 4), _ascii(f"{group.flip}  x{group.count}  ({group.fixed} fixed, {group.broken} broken)"),
                  fill="black", font=font)
        y += group_title_h
        for number, flip in enumerate(flips):
            if number and number % COLUMNS == 0:
                y += row_h
            x = PAD + (number % COLUMNS) * CELL_W
            thumb = thumbnail(diff.images[flip.index]).convert("RGB")
            canvas.paste(thumb, (x + (CELL_W - thumb.width) // 2, y))
            colour = OUTCOME_COLOUR[flip.outcome]
            lines = (f"A {flip.before} {flip.confidence_before:.2f}", f"B {flip.after} {flip.confidence_after:.2f}",
                     f"true {flip.truth if flip.truth is not None else '?'}")
            for line_no, line in enumerate(lines):
                draw.text((x + 4, y + THUMB + 2 + 12 * line_no), _ascii(line)[:18],
                          fill=colour if line_no == 2 else "black", font=font)
        y += row_h
    return canvas


def _ascii(text: str) -> str:
    """The montage's built-in font has no arrow: ``→`` becomes ``->`` (other non-ASCII: ``?``)."""
    return text.replace("→", "->").encode("ascii", "replace").decode()
