"""base64 <-> PIL image conversion for request values (API bodies, ControlNet units), with clear errors
for bad input (:class:`InvalidImage` names the field; the API answers 422)."""

from __future__ import annotations

import base64
import binascii
import io
import re
from collections.abc import Callable

from PIL import Image, UnidentifiedImageError

from webui.image_metadata import pnginfo_for

_DATA_URI = re.compile(r"^data:image/[\w.+-]+;base64,", re.IGNORECASE)
MAX_PIXELS = 8192 * 8192


class InvalidImage(ValueError):
    """The value is not a decodable image; ``field`` names the request field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        super().__init__(message)


#: ``fetch(url) -> bytes`` for image fields given as URLs (see :mod:`webui.netfetch`); None: URLs refused
Fetcher = Callable[[str], bytes]


def decode_base64_image(data: str, field_name: str = "image", fetch: Fetcher | None = None) -> Image.Image:
    """Decode a base64 image (optional data-URI prefix). Refuses paths, SVG/HTML and huge images; an
    ``http(s)://`` URL is fetched with ``fetch`` when one is given (``--allow-image-urls``), else refused."""
    if not isinstance(data, str) or not data.strip():
        raise InvalidImage(field_name, "invalid image: empty value")
    text = data.strip()
    lowered = text.lower()
    if lowered.startswith(("http://", "https://")):
        if fetch is None:
            raise InvalidImage(field_name, "invalid image: URLs are not fetched (the server was started without "
                                           "--allow-image-urls); send base64 image data")
        from webui.netfetch import URLRefused

        try:
            raw = fetch(text)
        except URLRefused as exc:
            raise InvalidImage(field_name, f"invalid image: URL refused: {exc}") from None
        return _open_image(raw, field_name)
    text = _DATA_URI.sub("", text)
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        # base64 of a JPEG starts with "/9j/", so a leading "/" alone does not make a path
        if lowered.startswith(("file:", "/", "ftp:", "\\\\", "~", "./", "../")):
            raise InvalidImage(field_name, "invalid image: paths and non-HTTP URLs are not accepted, send base64 "
                                           "image data") from None
        raise InvalidImage(field_name, "invalid image: not valid base64") from None
    return _open_image(raw, field_name)


def _open_image(raw: bytes, field_name: str) -> Image.Image:
    try:
        image = Image.open(io.BytesIO(raw))
        if image.width * image.height > MAX_PIXELS:
            raise InvalidImage(field_name, f"invalid image: {image.width}x{image.height} is too large")
        image.load()
    except InvalidImage:
        raise
    except (UnidentifiedImageError, OSError, ValueError, Image.DecompressionBombError):
        raise InvalidImage(field_name, "invalid image: not a PNG, JPEG, WEBP or other raster image") from None
    return image


def encode_png_base64(image: Image.Image, infotext: str | None = None) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG", pnginfo=pnginfo_for(infotext) if infotext else None)
    return base64.b64encode(buf.getvalue()).decode("ascii")
