"""img2img over a folder of images (A1111's "Batch" tab): optional masks by file name, outputs named
after their inputs. A file that is not a readable image is reported and skipped, never fatal."""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

from PIL import Image, UnidentifiedImageError

from webui.images import ImageSaver
from webui.pipeline.request import GenerationRequest, RequestError
from webui.pipeline.result import GenerationResult

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
               mask_dir: str | Path | None = None, on_item: Callable[[int, int, str], None] | None = None
               ) -> BatchReport:
    """Run ``base`` (img2img) once per image of ``input_dir``; with ``output_dir`` the results are
    written there as ``<input name>.png`` (``-<n>`` for further images), else to the usual outputs."""
    out = Path(str(output_dir)).expanduser() if output_dir else None
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
        if out is not None:
            for image_out, info in zip(result.images, result.infotexts):
                report.outputs.append(saver.save_as(image_out, out / f"{path.stem}.png", info))
        else:
            report.outputs.extend(Path(p) for p in result.paths)
        if result.interrupted:
            report.interrupted = True
            break
    return report
