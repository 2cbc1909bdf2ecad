"""The "SD upscale" script (A1111's ``scripts/sd_upscale.py``), img2img only.

The first init image is enlarged by ``scale_factor`` with a registered upscaler (A1111's rounding: each
side becomes ``int(side * scale) // 8 * 8``; the "None" upscaler leaves the image as it is), cut into
tiles of the request's width x height that overlap by at least ``overlap`` pixels, each tile is
re-drawn by img2img, and the tiles are put back together with their overlaps cross-faded by a linear
ramp. One image per batch count (``n_iter``); ``batch_size`` tiles go through each generation.

Positional ``script_args``: ``[info, overlap, upscaler_index, scale_factor]`` -- ``info`` is A1111's
text label and is ignored; ``upscaler_index`` is an index into the upscaler list (what A1111's radio
sends) or an upscaler's name (any case).

Tile layout (:func:`tile_grid`), as A1111's ``modules/images.py`` ``split_grid``: ``cols =
ceil((W - overlap) / (tile_w - overlap))`` (at least 1), tile ``c`` at ``x = int(c * (W - tile_w) / (cols
- 1))`` (0 for one column), moved back to ``W - tile_w`` when it would reach the right edge; rows the same
way. Joining (:func:`combine_tiles`), as its ``combine_grid``: tiles are laid left to right, each one's
first ``overlap`` columns cross-faded over what is there (the new tile's weight ``i / overlap`` at column
``i``), the rest pasted; the rows are then joined top to bottom the same way.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
from PIL import Image

from webui.errors import RequestError
from webui.hookspecs import hookimpl
from webui.pipeline.init_image import flatten
from webui.pipeline.noise import resolve_seed
from webui.pipeline.request import MAX_SEED, MAX_SIDE, check_request
from webui.pipeline.result import GenerationResult
from webui.scripts import ScriptDef, ScriptRun, raw_script_args, script_float, script_int
from webui.scripts_builtin.results import add_params, combined_info

TITLE = "SD upscale"
FIELD = "script_args"
ARG_NAMES = ("info", "overlap", "upscaler_index", "scale_factor")
INFO_HTML = ('<p style="margin-bottom:0.75em">Enlarges the image by the scale factor, then redraws it tile by '
             'tile; the width and height sliders set the tile size.</p>')
DEFAULT_OVERLAP = 64
DEFAULT_SCALE = 2.0
MAX_SCALE = 8.0
#: At most this many tiles per image (e.g. 4096x4096 in 64x64 tiles without overlap).
MAX_TILES = 4096
NO_UPSCALER = "None"


# --------------------------------------------------------------------------- tiles


@dataclass(frozen=True)
class TileGrid:
    """Where the tiles of an ``width x height`` image go: ``xs`` (left edges of the columns) and ``ys`` (top
    edges of the rows). An edge is negative when the image is smaller than a tile (the tile then hangs
    over the image's left/top side and its part outside the image is cut off when joining)."""

    width: int
    height: int
    tile_w: int
    tile_h: int
    overlap: int
    xs: tuple[int, ...]
    ys: tuple[int, ...]

    @property
    def count(self) -> int:
        return len(self.xs) * len(self.ys)

    def boxes(self) -> list[tuple[int, int, int, int]]:
        """``(left, top, right, bottom)`` of every tile, row by row."""
        return [(x, y, x + self.tile_w, y + self.tile_h) for y in self.ys for x in self.xs]


def _positions(size: int, tile: int, overlap: int) -> tuple[int, ...]:
    count = max(1, math.ceil((size - overlap) / (tile - overlap)))
    step = (size - tile) / (count - 1) if count > 1 else 0
    out = []
    for i in range(count):
        pos = int(i * step)
        if pos + tile >= size:
            pos = size - tile
        out.append(pos)
    return tuple(out)


def tile_grid(width: int, height: int, tile_w: int, tile_h: int, overlap: int) -> TileGrid:
    """The tile layout of an image (A1111's ``split_grid`` rule, see the module docstring)."""
    if not 0 <= overlap < min(tile_w, tile_h):
        raise ValueError(f"overlap must be at least 0 and less than the tile size, got {overlap}")
    return TileGrid(width, height, tile_w, tile_h, overlap, _positions(width, tile_w, overlap),
                    _positions(height, tile_h, overlap))


def split_tiles(image: Image.Image, grid: TileGrid) -> list[Image.Image]:
    """The tiles of ``image`` row by row (parts outside the image are black)."""
    return [image.crop(box) for box in grid.boxes()]


def ramp(overlap: int) -> np.ndarray:
    """The weight of the incoming tile across an overlap: ``i / overlap`` at offset ``i`` (0 .. overlap-1);
    the tile's own pixels follow at weight 1."""
    return np.arange(overlap, dtype=np.float64) / max(1, overlap)


def _lay(canvas: np.ndarray, piece: np.ndarray, start: int, overlap: int, first: bool, axis: int) -> None:
    """Put ``piece`` into ``canvas`` at ``start`` along ``axis`` (1: columns, 0: rows); unless ``first``, its
    first ``overlap`` lines are cross-faded over the canvas. Lines outside the canvas are dropped."""
    size = canvas.shape[axis]
    length = piece.shape[axis]
    weights = np.ones(length)
    if not first and overlap:
        weights[:overlap] = ramp(overlap)
    lo, hi = max(0, start), min(size, start + length)
    if lo >= hi:
        return
    src = slice(lo - start, hi - start)
    w = weights[src].astype(np.float32)
    target = (slice(None), slice(lo, hi)) if axis == 1 else (slice(lo, hi),)
    part = piece[:, src] if axis == 1 else piece[src]
    w = w[None, :, None] if axis == 1 else w[:, None, None]
    mixed = canvas[target] * (1 - w) + part * w
    canvas[target] = np.clip(np.rint(mixed), 0, 255) if canvas.dtype == np.uint8 else mixed


def combine_tiles(tiles: Sequence[Image.Image], grid: TileGrid) -> Image.Image:
    """One ``grid.width x grid.height`` image from ``tiles`` (row by row, each ``tile_w x tile_h``), the
    overlaps cross-faded (A1111's ``combine_grid`` order: within each row, then the rows)."""
    if len(tiles) != grid.count:
        raise ValueError(f"expected {grid.count} tiles, got {len(tiles)}")
    out = np.zeros((grid.height, grid.width, 3), dtype=np.uint8)
    n_cols = len(grid.xs)
    for r, y in enumerate(grid.ys):
        row = np.zeros((grid.tile_h, grid.width, 3), dtype=np.float32)  # rounded when laid into the image
        for c, x in enumerate(grid.xs):
            tile = tiles[r * n_cols + c].convert("RGB")
            if tile.size != (grid.tile_w, grid.tile_h):
                tile = tile.resize((grid.tile_w, grid.tile_h), Image.Resampling.LANCZOS)
            _lay(row, np.asarray(tile, dtype=np.float32), x, grid.overlap, c == 0, axis=1)
        _lay(out, row, y, grid.overlap, r == 0, axis=0)
    return Image.fromarray(out, "RGB")


def upscaled_size(width: int, height: int, scale: float) -> tuple[int, int]:
    """A1111's upscaler target size: each side ``int(side * scale) // 8 * 8``."""
    return int(width * scale // 8 * 8), int(height * scale // 8 * 8)


# --------------------------------------------------------------------------- arguments


def _upscaler_arg(value: Any) -> int | str:
    if value in (None, ""):
        return 0
    if isinstance(value, bool):
        raise RequestError(FIELD, f"{TITLE}: upscaler_index must be an upscaler's index or name, got {value!r}")
    if isinstance(value, (int, float)):
        if not float(value).is_integer():
            raise RequestError(FIELD, f"{TITLE}: upscaler_index must be a whole number, got {value!r}")
        return int(value)
    if isinstance(value, str):
        return value.strip()
    raise RequestError(FIELD, f"{TITLE}: upscaler_index must be an upscaler's index or name, got {value!r}")


def parse_args(args: Any, mode: str) -> dict[str, Any]:
    raw = raw_script_args(TITLE, args, ARG_NAMES)
    return {"overlap": script_int(TITLE, "overlap", raw.get("overlap"), 0, MAX_SIDE, DEFAULT_OVERLAP),
            "upscaler_index": _upscaler_arg(raw.get("upscaler_index")),
            "scale_factor": script_float(TITLE, "scale_factor", raw.get("scale_factor"), 0.0, MAX_SCALE, DEFAULT_SCALE,
                                         above_lo=True)}


def resolve_upscaler(value: int | str, names: Sequence[str]) -> str:
    """The upscaler ``value`` stands for: an index into ``names`` (A1111's radio) or a name (any case; a
    string of digits that is no name counts as an index)."""
    if isinstance(value, str):
        for name in names:
            if name.lower() == value.lower():
                return name
        if not value.isdigit():
            raise RequestError(FIELD, f"{TITLE}: unknown upscaler {value!r}; valid: {', '.join(names) or 'none'}")
        value = int(value)
    if not 0 <= value < len(names):
        raise RequestError(FIELD, f"{TITLE}: upscaler_index {value} is out of range; valid: 0-{len(names) - 1} "
                                  f"({', '.join(names)})")
    return names[value]


# --------------------------------------------------------------------------- the script


def _upscale(r: ScriptRun, image: Image.Image, name: str, size: tuple[int, int]) -> Image.Image:
    if name.lower() == NO_UPSCALER.lower():  # A1111: the image is used as it is
        return image
    w, h = size
    if r.upscale is None:
        return image.resize((w, h), Image.Resampling.LANCZOS)
    try:
        out = r.upscale(image, name, w, h)
    except KeyError:  # the upscaler went away (a refresh) since the request was checked
        raise RequestError(FIELD, f"{TITLE}: unknown upscaler {name!r}") from None
    return out.convert("RGB")


def run(r: ScriptRun) -> GenerationResult:
    a = parse_args(r.args, r.mode)
    base = r.request
    check_request(base)
    if base.mask is not None:
        raise RequestError("mask", f"{TITLE} redraws the whole image; it takes no mask")
    names = list(r.choices.upscalers) or [NO_UPSCALER]
    upscaler = resolve_upscaler(a["upscaler_index"], names)
    overlap = a["overlap"]
    if overlap >= min(base.width, base.height):
        raise RequestError(FIELD, f"{TITLE}: overlap ({overlap}) must be less than the tile size "
                                  f"({base.width}x{base.height}: the request's width and height)")
    opts = getattr(r, "opts", None) or {}
    source = flatten(base.init_images[0], str(opts.get("img2img_background_color", "#ffffff")))  # as A1111
    w, h = source.size if upscaler.lower() == NO_UPSCALER.lower() else upscaled_size(*source.size, a["scale_factor"])
    if not 8 <= min(w, h) or max(w, h) > MAX_SIDE:
        raise RequestError(FIELD, f"{TITLE}: the upscaled image would be {w}x{h}; each side must be 8 to {MAX_SIDE}")
    grid = tile_grid(w, h, base.width, base.height, overlap)
    if grid.count > MAX_TILES:
        raise RequestError(FIELD, f"{TITLE}: {w}x{h} in {base.width}x{base.height} tiles overlapping by {overlap} "
                                  f"makes {grid.count} tiles; at most {MAX_TILES}")
    seed, subseed = resolve_seed(base.seed), resolve_seed(base.subseed)
    image = _upscale(r, source, upscaler, (w, h))
    sources = split_tiles(image, grid)
    batch = base.batch_size
    n_batches = math.ceil(len(sources) / batch)
    r.job.plan(n_batches * base.n_iter)
    params = {"SD upscale overlap": overlap, "SD upscale upscaler": upscaler}

    rounds: list[GenerationResult] = []
    done: list[GenerationResult] = []
    interrupted = False
    for n in range(base.n_iter):
        round_seed = (seed + n) % (MAX_SEED + 1)  # A1111: image n starts at seed + n (past the largest: 0 on)
        tiles = list(sources)  # a tile that is not redrawn (interrupt) keeps the upscaled source
        first: GenerationResult | None = None
        for b in range(n_batches):
            if r.job.interrupted:
                interrupted = True
                break
            chunk = sources[b * batch:(b + 1) * batch]
            # A1111: each generation starts at the previous one's seed + 1 (tile j of a batch: + j)
            req = base.with_(init_images=tuple(chunk), batch_size=len(chunk), n_iter=1,
                             seed=(round_seed + b) % (MAX_SEED + 1), subseed=subseed, save_images=False,
                             resize_mode=0)
            res = r.generate(req)
            done.append(res)
            first = first or res
            for j, tile in enumerate(res.images[:len(chunk)]):
                tiles[b * batch + j] = tile
            if res.interrupted or len(res.images) < len(chunk):
                interrupted = True
                break
        if first is None:
            break
        combined = combine_tiles(tiles, grid)
        text = add_params(first.infotexts[0] if first.infotexts else "", params)
        paths = []
        if r.save_image is not None and not interrupted:
            saved = r.save_image(combined, round_seed, text)
            if saved:
                paths.append(saved)
        rounds.append(GenerationResult(
            images=[combined], seeds=[round_seed], subseeds=[subseed], infotexts=[text], paths=paths,
            prompts=[first.prompts[0] if first.prompts else base.prompt],
            negative_prompts=[first.negative_prompts[0] if first.negative_prompts else base.negative_prompt],
            info=first.info))
        if interrupted:
            break
    if not rounds:
        return GenerationResult(interrupted=True, info={"infotexts": [], "interrupted": True})
    return combined_info([], [], done, rounds, rounds[0], interrupted, [p for res in rounds for p in res.paths])


def render(mode: str, choices=None) -> dict[str, Any]:
    import gradio as gr

    names = list(choices().upscalers) if choices is not None else []
    names = names or [NO_UPSCALER]
    out: dict[str, Any] = {}
    out["info"] = gr.HTML(INFO_HTML, elem_id=f"{mode}_sd_upscale_info")
    out["overlap"] = gr.Slider(0, 256, value=DEFAULT_OVERLAP, step=16, label="Tile overlap",
                               elem_id=f"{mode}_sd_upscale_overlap")
    out["scale_factor"] = gr.Slider(1.0, 4.0, value=DEFAULT_SCALE, step=0.05, label="Scale Factor",
                                    elem_id=f"{mode}_sd_upscale_scale_factor")
    out["upscaler_index"] = gr.Radio(names, value=names[0], label="Upscaler",
                                     elem_id=f"{mode}_sd_upscale_upscaler_index")
    return out


#: The script; registering it makes this module a built-in plugin (:data:`webui.builtin.BUILTIN_PLUGINS`).
SCRIPT = ScriptDef(TITLE, run, modes=("img2img",), parse_args=parse_args, render=render, arg_names=ARG_NAMES)


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [SCRIPT]
