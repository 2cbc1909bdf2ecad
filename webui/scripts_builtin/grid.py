"""Image grids with text labels (A1111's ``image_grid`` and ``draw_grid_annotations``).

Labels are drawn with Pillow's built-in font (``ImageFont.load_default``), so nothing is downloaded
and the same input always gives the same pixels.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Sequence
from dataclasses import dataclass

from PIL import Image, ImageDraw, ImageFont

ACTIVE_COLOUR = (0, 0, 0)
INACTIVE_COLOUR = (153, 153, 153)
MIN_FONT_SIZE = 8
#: smallest size a label shrinks to when a single word is wider than its space
SHRINK_LIMIT = 6


@dataclass(frozen=True)
class Annotation:
    """One line of a label; inactive lines are grey and struck through (the prompt matrix's unused parts)."""

    text: str = ""
    active: bool = True


#: A column or row label: a text, an :class:`Annotation`, or several lines of either.
Label = str | Annotation | Sequence[str | Annotation]


def image_grid(images: Sequence[Image.Image], rows: int) -> Image.Image:
    """Paste ``images`` (all of the first one's size) row by row into ``rows`` rows on black."""
    if not images:
        raise ValueError("image_grid needs at least one image")
    rows = max(1, min(int(rows), len(images)))
    cols = math.ceil(len(images) / rows)
    w, h = images[0].size
    grid = Image.new("RGB", (cols * w, rows * h), "black")
    for i, img in enumerate(images):
        if img.mode != "RGB":
            img = img.convert("RGB")
        grid.paste(img, (i % cols * w, i // cols * h))
    return grid


@functools.lru_cache(maxsize=32)
def _font(size: int) -> ImageFont.FreeTypeFont | ImageFont.ImageFont:
    try:
        return ImageFont.load_default(size=size)
    except (TypeError, ValueError, OSError, ImportError):  # Pillow without FreeType: the fixed bitmap font
        return ImageFont.load_default()


def _lines(label: Label) -> list[Annotation]:
    if isinstance(label, Annotation):
        return [label]
    if isinstance(label, str):
        return [Annotation(label)]
    return [x if isinstance(x, Annotation) else Annotation(str(x)) for x in label]


def _text_width(font, text: str) -> float:
    return float(font.getlength(text)) if text else 0.0


def _line_height(font) -> int:
    return int(font.getbbox("Ag")[3])


def _wrap(font, text: str, width: float) -> list[str]:
    """Words of ``text`` greedily packed into lines no wider than ``width`` (a long word keeps its line)."""
    lines = [""]
    for word in text.split():
        candidate = f"{lines[-1]} {word}".strip()
        if _text_width(font, candidate) <= width or not lines[-1]:
            lines[-1] = candidate
        else:
            lines.append(word)
    return lines


@dataclass
class _Block:
    """A label laid out: its lines (wrapped), the font that fits them, and its height."""

    lines: list[Annotation]
    font: object
    line_height: int
    spacing: int

    @property
    def height(self) -> int:
        if not any(line.text for line in self.lines):
            return 0
        return len(self.lines) * self.line_height + (len(self.lines) - 1) * self.spacing


def _layout(label: Label, width: float, size: int, spacing: int) -> _Block:
    source = _lines(label)
    while True:
        font = _font(size)
        lines = [Annotation(text, a.active) for a in source for text in _wrap(font, a.text, width)]
        too_wide = any(_text_width(font, line.text) > width for line in lines)
        if not too_wide or size <= SHRINK_LIMIT:
            return _Block(lines, font, _line_height(font), spacing)
        size -= 1


def _draw_block(d: ImageDraw.ImageDraw, block: _Block, cx: float, top: float) -> None:
    y = top
    for line in block.lines:
        w = _text_width(block.font, line.text)
        x = cx - w / 2
        colour = ACTIVE_COLOUR if line.active else INACTIVE_COLOUR
        d.text((x, y), line.text, font=block.font, fill=colour)
        if not line.active and line.text:
            mid = y + block.line_height / 2
            d.line((x, mid, x + w, mid), fill=INACTIVE_COLOUR, width=max(1, block.line_height // 6))
        y += block.line_height + block.spacing


def draw_annotations(grid: Image.Image, cell_w: int, cell_h: int, hor_labels: Sequence[Label],
                     ver_labels: Sequence[Label], margin: int = 0) -> Image.Image:
    """A new image: ``grid``'s cells spread ``margin`` pixels apart on white, ``hor_labels`` above the
    columns and ``ver_labels`` left of the rows. Without any text on a side no room is added there."""
    cols, rows = grid.width // cell_w, grid.height // cell_h
    if len(hor_labels) != cols:
        raise ValueError(f"bad number of column labels: {len(hor_labels)}; the grid has {cols} columns")
    if len(ver_labels) != rows:
        raise ValueError(f"bad number of row labels: {len(ver_labels)}; the grid has {rows} rows")
    margin = max(0, int(margin or 0))
    size = max(MIN_FONT_SIZE, (cell_w + cell_h) // 25)
    spacing = size // 2
    has_ver = any(line.text for label in ver_labels for line in _lines(label))
    pad_left = cell_w * 3 // 4 if has_ver else 0
    hor = [_layout(label, cell_w, size, spacing) for label in hor_labels]
    ver = [_layout(label, pad_left, size, spacing) for label in ver_labels] if has_ver else []
    top_text = max((b.height for b in hor), default=0)
    pad_top = top_text + spacing * 2 if top_text else 0

    out = Image.new("RGB", (grid.width + pad_left + margin * (cols - 1), grid.height + pad_top + margin * (rows - 1)),
                    "white")
    for row in range(rows):
        for col in range(cols):
            cell = grid.crop((cell_w * col, cell_h * row, cell_w * (col + 1), cell_h * (row + 1)))
            out.paste(cell, (pad_left + (cell_w + margin) * col, pad_top + (cell_h + margin) * row))
    d = ImageDraw.Draw(out)
    for col, block in enumerate(hor):
        cx = pad_left + (cell_w + margin) * col + cell_w / 2
        _draw_block(d, block, cx, pad_top / 2 - block.height / 2)
    for row, block in enumerate(ver):
        cy = pad_top + (cell_h + margin) * row + cell_h / 2
        _draw_block(d, block, pad_left / 2, cy - block.height / 2)
    return out
