"""img2img over a folder of images (A1111's "Batch" tab): optional masks by file name, outputs named
after their inputs. A file that is not a readable image is reported and skipped, never fatal."""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from PIL import Image, UnidentifiedImageError

from webui.errors import RequestError
from webui.filenames import request_fields
from webui.pipeline.request import GenerationRequest
from webui.pipeline.result import GenerationResult
from webui.saving import ImageSaver

log = logging.getLogger(__name__)

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp", ".tif", ".tiff")


@dataclass
class BatchReport:
    processed: list[str] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)  # (file name, why)
    outputs: list[Path] = field(default_factory=list)
    images: list[Image.Image] = field(default_factory=list)
    infotexts: list[str] = field(default_factory=list)
    seeds: list[int] = field(default_factory=list)
    interrupted: bool = False


def _folder(path: str | Path, field_name: str) -> Path:
    folder = Path(str(path)).expanduser()
    if not folder.is_dir():
        raise RequestError(field_name, f"{folder} is not a folder")
    return folder


def input_files(input_dir: str | Path) -> list[Path]:
    folder = _folder(input_dir, "input_dir")
    return sorted(p for p in folder.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)


def _mask_for(mask_dir: Path | None, stem: str) -> Path | None:
    if mask_dir is None:
        return None
    for suffix in IMAGE_SUFFIXES:
        candidate = mask_dir / f"{stem}{suffix}"
        if candidate.is_file():
            return candidate
    return None


def _open(path: Path) -> Image.Image:
    with Image.open(path) as im:
        im.load()
        return im.copy()


def iter_inputs(input_dir: str | Path, mask_dir: str | Path | None = None
                ) -> Iterator[tuple[Path, Image.Image | None, Image.Image | None, str | None]]:
    """``(path, image, mask, error)`` per image file in name order; ``error`` explains a skipped file."""
    masks = _folder(mask_dir, "mask_dir") if mask_dir else None
    for path in input_files(input_dir):
        try:
            image = _open(path)
            mask_path = _mask_for(masks, path.stem)
            mask = _open(mask_path) if mask_path is not None else None
        except (OSError, UnidentifiedImageError, ValueError) as exc:
            yield path, None, None, f"not a readable image: {exc}"
            continue
        yield path, image, mask, None


def run_folder(run_one: Callable[[GenerationRequest], GenerationResult], base: GenerationRequest,
               input_dir: str | Path, output_dir: str | Path | None, saver: ImageSaver,
               mask_dir: str | Path | None = None, on_item: Callable[[int, int, str], None] | None = None,
               opts: Mapping[str, Any] | None = None) -> BatchReport:
    """Run ``base`` (img2img) once per image of ``input_dir``; with ``output_dir`` the results are
    written there named after their input (A1111: ``00000-<input name>.png`` with the numbering option
    on, ``-[generation_number]`` added when a request makes several images), else to the usual outputs.
    ``opts``: the saving options (None: A1111's defaults)."""
    out = Path(str(output_dir)).expanduser().absolute() if output_dir else None
    report = BatchReport()
    items = list(iter_inputs(input_dir, mask_dir))
    if not items:
        raise RequestError("input_dir", f"no images ({', '.join(IMAGE_SUFFIXES)}) in {input_dir}")
    for n, (path, image, mask, error) in enumerate(items):
        if on_item is not None:
            on_item(n, len(items), path.name)
        if error is not None:
            report.skipped.append((path.name, error))
            continue
        req = base.with_(mode="img2img", init_images=(image,), mask=mask, save_images=base.save_images and out is None)
        result = run_one(req)
        report.processed.append(path.name)
        report.images.extend(result.images)
        report.infotexts.extend(result.infotexts)
        report.seeds.extend(result.seeds)
        if out is not None and (opts or {}).get("samples_save", True):
            report.outputs.extend(_save_outputs(saver, req, result, path.stem, out, opts or {}))
        else:
            report.outputs.extend(Path(p) for p in result.paths)
        if result.interrupted:
            report.interrupted = True
            break
    return report


def _save_outputs(saver: ImageSaver, req: GenerationRequest, result: GenerationResult, stem: str, out: Path,
                  opts: Mapping[str, Any]) -> list[Path]:
    """A1111 ``process_batch`` with an output folder: no subfolder, the file name pattern is the input's name
    (and ``-[generation_number]`` for several images per input); numbering and "Replace" as the options
    say. A file that cannot be written is logged and skipped."""
    several = req.n_iter > 1 or req.batch_size > 1
    batch_opts = {**opts, "save_to_dirs": False,
                  "samples_filename_pattern": f"{stem}-[generation_number]" if several else stem}
    saved: list[Path] = []
    for k, (image, info) in enumerate(zip(result.images, result.infotexts)):
        seed = result.seeds[k] if k < len(result.seeds) else None
        fields = request_fields(req, seed=seed, index=k, all_seeds=tuple(result.seeds))
        try:
            saved.append(saver.save_image(image, "samples", batch_opts, out, fields, info, outdir=out).path)
        except OSError as exc:
            log.error("Batch: could not save the result of %s: %s", stem, exc)
    return saved
