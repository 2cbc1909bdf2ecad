"""Saving generated images the way A1111 does: ``<outdir>/<date>/<number>-<seed>.png``
with the infotext in the PNG ``parameters`` chunk, written atomically."""

from __future__ import annotations

import datetime as _dt
import io
import re
import threading
from pathlib import Path

from PIL import Image, PngImagePlugin

from webui.fileio import atomic_write
from webui.pnginfo import pnginfo_for

_NUMBER = re.compile(r"^(\d+)-")


def png_bytes(image: Image.Image, infotext: str | None, extra: dict[str, str] | None = None) -> bytes:
    """PNG file bytes with the infotext in ``parameters`` and ``extra`` text chunks (e.g. ``postprocessing``)."""
    info = None
    if infotext:
        info = pnginfo_for(infotext, extra)
    elif extra:  # no ``parameters`` chunk for an image that never had one
        info = PngImagePlugin.PngInfo()
        for key, value in extra.items():
            info.add_itxt(key, str(value))
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=info)
    return buf.getvalue()


class ImageSaver:
    """Numbers files per folder (next = highest existing + 1) under a lock, so parallel jobs never collide."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    @staticmethod
    def _next_number(folder: Path) -> int:
        best = -1
        if folder.is_dir():
            for p in folder.iterdir():
                m = _NUMBER.match(p.name)
                if m:
                    best = max(best, int(m.group(1)))
        return best + 1

    def save(
        self,
        image: Image.Image,
        outdir: Path,
        seed: int,
        infotext: str | None,
        *,
        add_number: bool = True,
        date: _dt.date | None = None,
        extra: dict[str, str] | None = None,
    ) -> Path:
        folder = outdir / (date or _dt.date.today()).isoformat()
        data = png_bytes(image, infotext, extra)
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            stem = f"{self._next_number(folder):05d}-{seed}" if add_number else str(seed)
            path = folder / f"{stem}.png"
            n = 1
            while path.exists():
                path = folder / f"{stem}-{n}.png"
                n += 1
            atomic_write(path, lambda fh: fh.write(data))
        return path

    def save_as(self, image: Image.Image, path: Path, infotext: str | None,
                extra: dict[str, str] | None = None) -> Path:
        """Save as ``path`` (PNG), or ``<stem>-<n>.png`` when that name is taken; never overwrites."""
        data = png_bytes(image, infotext, extra)
        with self._lock:
            path.parent.mkdir(parents=True, exist_ok=True)
            stem, n = path.with_suffix(""), 1
            path = stem.with_suffix(".png")
            while path.exists():
                path = Path(f"{stem}-{n}.png")
                n += 1
            atomic_write(path, lambda fh: fh.write(data))
        return path
