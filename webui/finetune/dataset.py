"""A user's training pictures: a folder of images with same-stem ``.txt`` captions (kohya's and A1111's
convention), aspect-ratio buckets, A1111's caption templates.

* Captions: ``<stem>.txt`` beside the image, else the file name without leading digits and dashes (A1111).
  Tags are comma-separated; ``shuffle_tags`` shuffles them per use, ``tag_drop_out`` drops each with that
  probability (A1111's names).
* Templates (``[name]`` -> the embedding's or concept's name, ``[filewords]`` -> the caption): A1111-style
  files in ``webui/finetune/templates`` (our own wording) and any ``*.txt`` in the data folder's
  ``textual_inversion_templates`` folders.
* Buckets (kohya's approach): every width x height in multiples of 64 with an area up to the training
  area and sides between 256 and twice the training side; each image goes to the bucket whose aspect is
  closest, is scaled to cover it and centre-cropped. A batch holds images of one bucket.
* Bad images are skipped and listed; a missing, empty or unreadable folder is a ``RequestError`` naming it.
"""

from __future__ import annotations

import math
import random
import re
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
from PIL import Image, UnidentifiedImageError

from webui.errors import RequestError

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".webp", ".bmp")
TEMPLATE_DIR = Path(__file__).resolve().parent / "templates"
_LEADING_NUMBERS = re.compile(r"^[-\d_ ]+")
BUCKET_STEP = 64


def list_templates(extra_dirs: tuple[Path, ...] = ()) -> dict[str, Path]:
    """Template name (file stem) -> file: the shipped ones, then extra folders (which may override)."""
    found = {p.stem: p for p in sorted(TEMPLATE_DIR.glob("*.txt"))}
    for folder in extra_dirs:
        if folder.is_dir():
            found.update({p.stem: p for p in sorted(folder.glob("*.txt"))})
    return found


def read_template(path: Path) -> list[str]:
    lines = [line.strip() for line in path.read_text(encoding="utf-8").splitlines()]
    return [line for line in lines if line] or ["[name]"]


def buckets(width: int, height: int) -> list[tuple[int, int]]:
    """Bucket sizes for a training size: multiples of 64, area <= width*height, sides 256 .. 2x the side."""
    area = width * height
    low = min(256, width, height)
    high = 2 * max(width, height)
    out = []
    for w in range(low - low % BUCKET_STEP or BUCKET_STEP, high + 1, BUCKET_STEP):
        h = (area // w) // BUCKET_STEP * BUCKET_STEP
        if low <= h <= high and w * h <= area:
            out.append((w, h))
    if (width, height) not in out:
        out.append((width, height))
    return sorted(set(out))


def nearest_bucket(size: tuple[int, int], choices: list[tuple[int, int]]) -> tuple[int, int]:
    aspect = math.log(size[0] / size[1])
    return min(choices, key=lambda b: (abs(math.log(b[0] / b[1]) - aspect), -b[0] * b[1]))


def fit(image: Image.Image, bucket: tuple[int, int]) -> Image.Image:
    """Scale ``image`` to cover ``bucket`` and crop the centre."""
    w, h = bucket
    scale = max(w / image.width, h / image.height)
    resized = image.resize((max(w, round(image.width * scale)), max(h, round(image.height * scale))),
                           Image.Resampling.LANCZOS)
    left, top = (resized.width - w) // 2, (resized.height - h) // 2
    return resized.crop((left, top, left + w, top + h))


@dataclass
class Item:
    path: Path
    caption: str
    bucket: tuple[int, int]
    pixels: np.ndarray  # H x W x 3 uint8 at the bucket's size
    weight: float = 1.0  # the sample's loss weight (kohya's prior_loss_weight for regularization pictures)
    regularization: bool = False


@dataclass
class Dataset:
    items: list[Item]
    skipped: dict[str, str] = field(default_factory=dict)  # file name -> why

    def sample_batch(self, batch_size: int, rng: random.Random) -> list[int]:
        """``batch_size`` image indices of one bucket: a random image, then random images of its bucket (with
        repeats); drawn from ``rng`` alone, so a step's batch depends only on the step's seed."""
        first = rng.randrange(len(self.items))
        same = [i for i, item in enumerate(self.items) if item.bucket == self.items[first].bucket]
        return [first] + [rng.choice(same) for _ in range(batch_size - 1)]


def caption_of(path: Path) -> str:
    beside = path.with_suffix(".txt")
    if beside.is_file():
        return beside.read_text(encoding="utf-8", errors="replace").strip()
    return _LEADING_NUMBERS.sub("", path.stem).replace("_", " ").strip()


def image_files(folder: str | Path, field_name: str = "data_root") -> list[Path]:
    """The image files of ``folder`` (not recursive, not opened); RequestError naming ``field_name`` when the
    folder is missing, unreadable or has none."""
    root = Path(str(folder)).expanduser()
    if not str(folder).strip() or not root.is_dir():
        raise RequestError(field_name, f"the dataset folder {str(folder)!r} does not exist")
    try:
        files = sorted(p for p in root.iterdir() if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file())
    except OSError as exc:
        raise RequestError(field_name, f"the dataset folder {str(folder)!r} cannot be read: {exc}") from exc
    if not files:
        raise RequestError(field_name, f"the dataset folder {str(folder)!r} has no images "
                                       f"({', '.join(IMAGE_SUFFIXES)})")
    return files


def load_folder(folder: str | Path, width: int, height: int, *, field_name: str = "data_root",
                use_buckets: bool = True) -> Dataset:
    """The images of ``folder`` (not recursive) fitted to their buckets (or all to ``width x height``)."""
    files = image_files(folder, field_name)
    choices = buckets(width, height) if use_buckets else [(width, height)]
    items, skipped = [], {}
    for path in files:
        try:
            with Image.open(path) as raw:
                image = raw.convert("RGB")
        except (UnidentifiedImageError, OSError, ValueError) as exc:
            skipped[path.name] = f"not a readable image ({type(exc).__name__})"
            continue
        if image.width < 8 or image.height < 8:
            skipped[path.name] = f"too small ({image.width}x{image.height})"
            continue
        bucket = nearest_bucket(image.size, choices)
        items.append(Item(path, caption_of(path), bucket, np.asarray(fit(image, bucket))))
    if not items:
        why = f"; skipped: {', '.join(f'{k} ({v})' for k, v in skipped.items())}" if skipped else ""
        raise RequestError(field_name, f"the dataset folder {str(folder)!r} has no usable images{why}")
    return Dataset(items, skipped)


def prompt_for(template_lines: list[str], name: str, caption: str, rng: random.Random, *,
               shuffle_tags: bool = False, tag_drop_out: float = 0.0) -> str:
    """One training prompt: a random template line with ``[name]`` and ``[filewords]`` filled in."""
    tags = [t.strip() for t in caption.split(",") if t.strip()]
    if shuffle_tags:
        rng.shuffle(tags)
    if tag_drop_out > 0:
        tags = [t for t in tags if rng.random() >= tag_drop_out]
    line = rng.choice(template_lines)
    return line.replace("[name]", name).replace("[filewords]", ", ".join(tags))
