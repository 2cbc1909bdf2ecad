"""Saving images the way A1111 1.10 does (``modules/images.py`` ``save_image``,
``save_image_with_geninfo``): the folder and name from the options and :mod:`webui.filenames`, the file
format (``samples_format`` / ``grid_format``), the infotext inside the file (``enable_pnginfo``) and beside
it (``save_txt``). Files are written atomically (:mod:`webui.fileio`) under a lock, so two jobs never pick
the same number.

:meth:`ImageSaver.save_image` is the one entry point; ``kind`` says what is saved:

* ``"samples"``: a generated image, into ``outdir_samples`` or else ``outdir_<mode>_samples``;
* ``"grids"``: a script's grid, into ``outdir_grids`` or else ``outdir_<mode>_grids``, named ``grid-NNNN``;
* ``"extras"``: an Extras result, into ``outdir_samples`` or else ``outdir_extras_samples``, numbered
  (``NNNNN``) or named after its source;
* ``"init"``: an img2img init image, into ``outdir_init_images`` as ``<md5 of its pixels>.png``.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import io
import logging
import os
import threading
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image, PngImagePlugin, features

from webui.fileio import atomic_write, atomic_write_text
from webui.filenames import FilenameGenerator, ImageFields, next_sequence_number
from webui.image_metadata import exif_for, pnginfo_for

log = logging.getLogger(__name__)

KINDS = ("samples", "grids", "extras", "init")

#: Pillow format of each file extension the options offer
FORMATS = {"png": "PNG", "jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP", "avif": "AVIF"}

#: the largest side each format can hold; a bigger image is saved as PNG (A1111)
MAX_SIDE = {"jpg": 65535, "jpeg": 65535, "webp": 16383}

#: A1111 ``save_images_replace_action``: anything but this adds ``-1``, ``-2`` ... to a taken name
REPLACE = "Replace"


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


@dataclass(frozen=True)
class SavedImage:
    path: Path
    txt_path: Path | None = None  # the ``save_txt`` file, when one was written


def _opt(opts: Mapping[str, Any], key: str, default: Any) -> Any:
    value = opts.get(key, default)
    return default if value is None else value


def encode_image(image: Image.Image, extension: str, info: str | None, opts: Mapping[str, Any],
                 existing_info: Mapping[str, Any] | None = None, section: str = "parameters") -> bytes:
    """The file bytes of ``image`` as ``extension`` (A1111 ``save_image_with_geninfo``).

    PNG: with ``enable_pnginfo``, ``existing_info`` and ``{section: info}`` as text chunks; without it,
    no text at all. JPEG/WEBP/AVIF: ``info`` as the EXIF UserComment (with ``enable_pnginfo``), quality
    ``jpeg_quality``, WEBP lossless with ``webp_lossless``; RGBA becomes RGB for JPEG and WEBP."""
    fmt = FORMATS[extension]
    pnginfo_on = bool(_opt(opts, "enable_pnginfo", True))
    quality = int(_opt(opts, "jpeg_quality", 80))
    buf = io.BytesIO()
    if fmt == "PNG":
        chunks = None
        if pnginfo_on:  # A1111 writes no text at all when enable_pnginfo is off
            items = {str(k): v for k, v in (existing_info or {}).items() if isinstance(v, str)}
            items.pop(section, None)  # A1111 replaces it (with "None" when there is no infotext)
            if info is not None:
                items[section] = info
            chunks = _text_chunks(items)
        if image.mode not in ("1", "L", "LA", "I", "I;16", "P", "RGB", "RGBA"):
            image = image.convert("RGB")  # CMYK, YCbCr ...: PNG cannot hold them; not a failed save
        image.save(buf, format="PNG", pnginfo=chunks)
        return buf.getvalue()
    kwargs: dict[str, Any] = {"quality": quality}
    if fmt in ("JPEG", "WEBP"):
        if image.mode == "RGBA":
            image = image.convert("RGB")
        elif image.mode == "I;16":
            image = image.point(lambda v: v * 0.0038910505836576).convert("RGB" if fmt == "WEBP" else "L")
        elif image.mode not in ("RGB", "L") and not (fmt == "WEBP" and image.mode == "RGBA"):
            image = image.convert("RGB")  # modes the format cannot hold (P, LA, CMYK ...): not a failed save
        kwargs["lossless"] = bool(_opt(opts, "webp_lossless", False))
    if pnginfo_on and info is not None:
        kwargs["exif"] = exif_for(info)
    try:
        image.save(buf, format=fmt, **kwargs)
    except ValueError as exc:  # e.g. an infotext too long for JPEG's 64 KiB EXIF: keep the image
        if "exif" not in kwargs:
            raise
        log.warning("Saving %s without its infotext: %s", extension.upper(), exc)
        kwargs.pop("exif")
        buf = io.BytesIO()
        image.save(buf, format=fmt, **kwargs)
    return buf.getvalue()


def _text_chunks(items: Mapping[str, str]) -> PngImagePlugin.PngInfo:
    """PNG text chunks: ``tEXt`` for latin-1 text, ``iTXt`` (UTF-8) otherwise; keys that cannot be PNG
    keywords (empty, over 79 characters, not latin-1) are left out."""
    info = PngImagePlugin.PngInfo()
    for key, value in items.items():
        try:
            key.encode("latin-1")
        except UnicodeEncodeError:
            continue
        if not 0 < len(key) <= 79 or "\x00" in key:
            continue
        try:
            value.encode("latin-1")
        except UnicodeEncodeError:
            info.add_itxt(key, value)
        else:
            info.add_text(key, value)
    return info


def _safe_name(name: str) -> str:
    """A file name that stays in its folder: no path separators, no NUL."""
    return name.replace("/", "_").replace("\\", "_").replace("\x00", "_")


def _safe_subfolder(name: str) -> Path:
    """The subfolder pattern's result as a relative path inside the output folder ("/" or "\\" nest it;
    empty, "." and ".." parts are dropped)."""
    parts = [p for p in name.replace("\\", "/").replace("\x00", "_").split("/") if p not in ("", ".", "..")]
    return Path(*parts) if parts else Path()


def _fit(folder: Path, stem: str, suffix: str) -> str:
    """``stem`` cut so that ``stem + suffix`` fits the file system's longest name (A1111 keeps room for a
    four-character extension; the cut is counted in bytes here, so non-ASCII names fit too)."""
    try:
        longest = os.statvfs(folder).f_namemax if hasattr(os, "statvfs") else 255
    except OSError:
        longest = 255
    room = longest - max(4, len(suffix))
    data = stem.encode("utf-8", errors="surrogatepass")
    if len(data) <= room:
        return stem
    return data[:room].decode("utf-8", errors="ignore")


class ImageSaver:
    """Writes images as A1111 names them. Choosing a name and writing the file happen under one lock,
    so parallel jobs never take the same number or name."""

    def __init__(self) -> None:
        self._lock = threading.Lock()

    def save_image(
        self,
        image: Image.Image,
        kind: str,
        opts: Mapping[str, Any],
        data_dir: Path,
        fields: ImageFields | None = None,
        infotext: str | None = None,
        *,
        outdir: Path | str | None = None,
        basename: str | None = None,
        seed: int | None = None,
        prompt: str | None = None,
        short_filename: bool | None = None,
        forced_filename: str | None = None,
        existing_info: Mapping[str, Any] | None = None,
        suffix: str = "",
        hooks: Any = None,
        now: _dt.datetime | None = None,
    ) -> SavedImage:
        """Save ``image`` (see the module doc for ``kind``); returns where it went.

        ``fields`` are the generation's settings the name patterns use (None: no generation).
        ``outdir`` replaces the folder the options give (e.g. a batch's output folder); relative folders
        are inside ``data_dir``. ``basename``, ``seed``, ``prompt``, ``short_filename``,
        ``forced_filename``, ``existing_info`` and ``suffix`` are A1111 ``save_image``'s arguments of the
        same names; the defaults are those A1111 uses for ``kind``. ``hooks.image_saved`` is called after
        the write. Raises ``OSError`` when the file cannot be written (the caller warns and goes on)."""
        if kind not in KINDS:
            raise ValueError(f"unknown kind of image to save: {kind!r} (one of {', '.join(KINDS)})")
        mode = fields.mode if fields is not None and fields.mode in ("txt2img", "img2img") else "txt2img"
        grid = kind == "grids"
        section = "extras" if kind == "extras" else "parameters"

        # where: the option's folder (A1111: outdir_samples / outdir_grids win when set)
        if outdir is None:
            outdir = _option_folder(kind, mode, opts)
        folder = Path(data_dir) / Path(str(outdir)).expanduser()

        # what: A1111's arguments for this kind
        if kind == "init":
            basename = ""
            forced_filename = forced_filename or hashlib.md5(image.tobytes()).hexdigest()
            existing_info = image.info if existing_info is None else existing_info
            extension = "png"
        else:
            extension = str(_opt(opts, "grid_format" if grid else "samples_format", "png")).lower()
        if basename is None:
            basename = "grid" if grid else ""
        if short_filename is None:
            short_filename = (not _opt(opts, "grid_extended_filename", False)) if grid else kind == "extras"
        if seed is None and fields is not None and kind in ("samples", "grids"):
            seed = fields.all_seeds[0] if grid and fields.all_seeds else fields.seed
        if prompt is None and fields is not None and kind in ("samples", "grids"):
            prompt = fields.prompt
        namegen = FilenameGenerator(image, opts, fields, seed=seed, prompt=prompt, basename=basename, now=now)

        if extension not in FORMATS or (extension == "avif" and not features.check("avif")):
            log.warning("Cannot save images as %r here; saving as PNG", extension)
            extension = "png"
        if max(image.width, image.height) > MAX_SIDE.get(extension, 1 << 31):
            log.warning("Image dimensions too large for %s; saving as PNG", extension.upper())
            extension = "png"

        # subfolder (A1111: grids by grid_save_to_dirs, images by save_to_dirs; never for Extras/init)
        if kind == "init":
            to_dirs = False
        elif grid:
            to_dirs = bool(_opt(opts, "grid_save_to_dirs", True))
        else:
            to_dirs = bool(_opt(opts, "save_to_dirs", True)) and kind != "extras"
        if to_dirs:
            pattern = str(_opt(opts, "directories_filename_pattern", "")) or "[prompt_words]"
            folder = folder / _safe_subfolder(namegen.apply(pattern).lstrip(" ").rstrip("\\ /"))

        decoration = None
        if forced_filename is None:
            if short_filename or seed is None:
                pattern = ""
            else:  # A1111 picks the default by save_to_dirs, for grids too
                pattern = str(_opt(opts, "samples_filename_pattern", "")) or (
                    "[seed]" if _opt(opts, "save_to_dirs", True) else "[seed]-[prompt_spaces]")
            decoration = namegen.apply(pattern) + suffix

        info = infotext
        data = encode_image(image, extension, info, opts, existing_info, section)
        ext = f".{extension}"
        replace = str(_opt(opts, "save_images_replace_action", REPLACE)) == REPLACE
        with self._lock:
            folder.mkdir(parents=True, exist_ok=True)
            if decoration is None:
                stem = _safe_name(str(forced_filename))
            else:
                add_number = bool(_opt(opts, "save_images_add_number", True)) or decoration == ""
                if add_number:
                    tail = f"-{decoration}" if decoration else ""
                    first = next_sequence_number(folder, basename)
                    for n in range(first, first + 500):
                        number = f"{n:05}" if basename == "" else f"{basename}-{n:04}"
                        stem = _safe_name(f"{number}{tail}")
                        if not (folder / f"{stem}{ext}").exists():
                            break
                else:
                    stem = _safe_name(decoration)
            stem = _fit(folder, stem, ext)
            path = folder / f"{stem}{ext}"
            if not replace:
                n = 0
                while path.exists():
                    n += 1
                    path = folder / f"{stem}-{n}{ext}"
            atomic_write(path, lambda fh: fh.write(data))
        txt_path = None
        if _opt(opts, "save_txt", False) and info is not None:
            try:
                txt_path = atomic_write_text(path.with_suffix(".txt"), f"{info}\n")
            except OSError as exc:
                log.warning("Could not write %s: %s", path.with_suffix(".txt"), exc)
        if hooks is not None:
            hooks.image_saved(path=str(path), infotext=info or "", image=image)
        return SavedImage(path, txt_path)


def _option_folder(kind: str, mode: str, opts: Mapping[str, Any]) -> str:
    """The folder the options give ``kind`` (relative to the data folder)."""
    if kind == "init":
        return str(_opt(opts, "outdir_init_images", "outputs/init-images"))
    if kind == "grids":
        return str(_opt(opts, "outdir_grids", "") or _opt(opts, f"outdir_{mode}_grids", f"outputs/{mode}-grids"))
    own = ("outdir_extras_samples", "outputs/extras-images") if kind == "extras" else (
        f"outdir_{mode}_samples", f"outputs/{mode}-images")
    return str(_opt(opts, "outdir_samples", "") or _opt(opts, *own))
