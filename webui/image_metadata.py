"""Read and write infotext stored inside image files, as AUTOMATIC1111 does.

* PNG keeps the infotext in a ``parameters`` text chunk (``tEXt``, or ``iTXt``
  when the text is not latin-1).
* JPEG and WEBP keep it in the EXIF ``UserComment`` tag (0x9286) of the Exif
  IFD, encoded the way piexif's ``UserComment.dump(..., encoding="unicode")``
  does: the 8-byte header ``b"UNICODE\\0"`` followed by UTF-16 text.

Only Pillow is used (no piexif).
"""

from __future__ import annotations

from collections.abc import Mapping

from PIL import Image, PngImagePlugin

__all__ = ["INFOTEXT_KEY", "read_image_info", "pnginfo_for", "exif_for", "decode_user_comment"]

INFOTEXT_KEY = "parameters"
"""PNG text chunk holding the infotext."""

COMMENT_KEY = "comment"
"""``image.info`` key of a GIF/JPEG comment, used when nothing else holds the infotext."""

EXIF_KEY = "exif"
EXIF_IFD_TAG = 0x8769
USER_COMMENT_TAG = 0x9286

HEADER_SIZE = 8
UNICODE_HEADER = b"UNICODE\x00"
ASCII_HEADER = b"ASCII\x00\x00\x00"
JIS_HEADER = b"JIS\x00\x00\x00\x00\x00"
UNDEFINED_HEADER = b"\x00" * HEADER_SIZE

UTF16_BOMS = ((b"\xfe\xff", "utf-16-be"), (b"\xff\xfe", "utf-16-le"))
"""Byte-order marks that may start UTF-16 text, with the codec each selects."""

IGNORED_INFO_KEYS = frozenset(
    {
        "jfif", "jfif_version", "jfif_unit", "jfif_density", "dpi", "exif", "loop",
        "background", "timestamp", "duration", "progressive", "progression",
        "icc_profile", "chromaticity", "photoshop",
    }
)
"""Technical ``image.info`` items that are never reported as text items."""

PNG_KEYWORD_MAX_LENGTH = 79
"""Longest keyword the PNG specification allows for a text chunk."""


# --------------------------------------------------------------------------- UserComment


def _utf16_codec(body: bytes) -> str:
    """Guess the byte order of UTF-16 ``body`` that has no byte-order mark.

    Mostly-ASCII text has its zero bytes at even offsets in big-endian and at
    odd offsets in little-endian; big-endian (what piexif writes) wins ties.
    """
    even_zeros = body[0::2].count(0)
    odd_zeros = body[1::2].count(0)
    return "utf-16-le" if odd_zeros > even_zeros else "utf-16-be"


def _decode_utf16(body: bytes) -> str:
    """Decode UTF-16 text of either byte order, honouring a byte-order mark."""
    for bom, codec in UTF16_BOMS:
        if body.startswith(bom):
            return body[len(bom):].decode(codec, errors="replace")
    return body.decode(_utf16_codec(body), errors="replace")


def decode_user_comment(data: bytes | str) -> str:
    """Decode an EXIF UserComment value into text.

    Understands the ``UNICODE`` (UTF-16, either byte order), ``ASCII``, ``JIS``
    and undefined (all-zero) headers; data with an unknown header is read as
    UTF-8.  Trailing NUL characters are dropped.  Never raises.
    """
    if isinstance(data, str):
        return data.rstrip("\x00")
    header, body = data[:HEADER_SIZE], data[HEADER_SIZE:]
    if header == UNICODE_HEADER:
        text = _decode_utf16(body)
    elif header == ASCII_HEADER or header == UNDEFINED_HEADER:
        text = body.decode("utf-8", errors="replace")
    elif header == JIS_HEADER:
        text = body.decode("shift_jis", errors="replace")
    else:
        text = data.decode("utf-8", errors="replace")
    return text.rstrip("\x00")


def _encode_user_comment(text: str) -> bytes:
    """Encode ``text`` as a UserComment the way A1111 (piexif "unicode") does."""
    return UNICODE_HEADER + text.encode("utf-16-be", errors="surrogatepass")


# --------------------------------------------------------------------------- reading


def _exif_user_comment(image: Image.Image) -> str | None:
    """Return the decoded EXIF UserComment of ``image``, or ``None`` if it has none."""
    try:
        value = image.getexif().get_ifd(EXIF_IFD_TAG).get(USER_COMMENT_TAG)
    except Exception:  # malformed EXIF must not stop the caller from reading the image
        return None
    if not isinstance(value, (bytes, str)):
        return None
    return decode_user_comment(value) or None


def _comment_text(value: object) -> str | None:
    """Return a GIF/JPEG ``comment`` item as text, or ``None`` if it is empty."""
    if isinstance(value, bytes):
        value = value.decode("utf-8", errors="replace")
    if not isinstance(value, str) or not value:
        return None
    return str(value)


def _text_items(info: Mapping[object, object]) -> dict[str, str]:
    """Keep the string-valued, non-technical items of ``image.info`` (as plain ``str``)."""
    return {
        key: str(value)
        for key, value in info.items()
        if isinstance(key, str) and isinstance(value, str) and key not in IGNORED_INFO_KEYS
    }


def read_image_info(image: Image.Image) -> tuple[str | None, dict[str, str]]:
    """Return ``(infotext or None, other text items)`` of an opened image.

    The infotext comes from the EXIF UserComment when the image has one
    (JPEG/WEBP), else from the PNG ``parameters`` chunk, else from a
    ``comment`` item (GIF).  The other items are the remaining string-valued
    entries of ``image.info``; binary and technical ones (``exif``,
    ``icc_profile``, ``dpi``, ...) are dropped.
    """
    items = dict(getattr(image, "info", None) or {})
    infotext = items.pop(INFOTEXT_KEY, None)
    infotext = str(infotext) if isinstance(infotext, str) else None
    if EXIF_KEY in items:
        infotext = _exif_user_comment(image) or infotext
    elif infotext is None and COMMENT_KEY in items:
        infotext = _comment_text(items.pop(COMMENT_KEY))
    return infotext, _text_items(items)


# --------------------------------------------------------------------------- writing


def _is_latin1(text: str) -> bool:
    """Tell whether ``text`` fits a latin-1 ``tEXt`` chunk."""
    try:
        text.encode("latin-1")
    except UnicodeEncodeError:
        return False
    return True


def _check_keyword(key: str) -> None:
    """Raise ``ValueError`` unless ``key`` is a valid PNG text-chunk keyword."""
    if not 0 < len(key) <= PNG_KEYWORD_MAX_LENGTH or "\x00" in key or not _is_latin1(key):
        raise ValueError(f"invalid PNG text keyword: {key!r}")


def _add_text(info: PngImagePlugin.PngInfo, key: str, value: str) -> None:
    """Add one text chunk: ``tEXt`` for latin-1 text, ``iTXt`` (UTF-8) otherwise."""
    _check_keyword(key)
    if _is_latin1(value):
        info.add_text(key, value)
    else:
        info.add_itxt(key, value)


def pnginfo_for(infotext: str, extra: Mapping[str, str] | None = None) -> PngImagePlugin.PngInfo:
    """Build PNG text chunks: ``parameters`` holding ``infotext``, then ``extra``.

    An ``extra`` item named ``parameters`` is ignored (the infotext wins).
    Raises ``ValueError`` for a key that is not a valid PNG keyword.
    """
    info = PngImagePlugin.PngInfo()
    _add_text(info, INFOTEXT_KEY, infotext)
    for key, value in (extra or {}).items():
        if key != INFOTEXT_KEY:
            _add_text(info, key, str(value))
    return info


def exif_for(infotext: str) -> bytes:
    """Return EXIF bytes (``Exif\\0\\0`` header included) carrying ``infotext``.

    The text is stored in the Exif IFD's UserComment in A1111's ``UNICODE``
    encoding; pass the result as ``exif=`` when saving JPEG or WEBP.  Note that
    JPEG limits EXIF to 64 KiB, about 32 000 characters of infotext.
    """
    exif = Image.Exif()
    exif.get_ifd(EXIF_IFD_TAG)[USER_COMMENT_TAG] = _encode_user_comment(infotext)
    return exif.tobytes()
