"""Tests for webui.image_metadata: infotext in PNG text chunks and JPEG/WEBP EXIF."""

from __future__ import annotations

import io

import pytest
from PIL import Image, PngImagePlugin

from webui.image_metadata import decode_user_comment, exif_for, pnginfo_for, read_image_info

INFOTEXT = (
    "a photo of a cat, sitting\n"
    "Negative prompt: blurry\n"
    "Steps: 20, Sampler: Euler a, CFG scale: 7, Seed: 1234, Size: 64x64, "
    'Lora hashes: "name: abc123", Version: v1.10.1'
)
UNICODE_INFOTEXT = "猫の写真, ünïcode ✓ 🐱\nSteps: 20, Sampler: Euler a, CFG scale: 7"


def _reopen(image: Image.Image, fmt: str, **save_args: object) -> Image.Image:
    """Save ``image`` in ``fmt`` to memory and open the result again."""
    buffer = io.BytesIO()
    image.save(buffer, fmt, **save_args)
    buffer.seek(0)
    reopened = Image.open(buffer)
    reopened.load()
    return reopened


def _image() -> Image.Image:
    return Image.new("RGB", (64, 64), (200, 100, 50))


@pytest.mark.parametrize("text", [INFOTEXT, UNICODE_INFOTEXT, "latin-1 only: café"])
def test_png_round_trip(text: str) -> None:
    image = _reopen(_image(), "PNG", pnginfo=pnginfo_for(text))
    infotext, items = read_image_info(image)
    assert infotext == text
    assert type(infotext) is str
    assert items == {}


def test_png_uses_itxt_only_for_non_latin1_text() -> None:
    latin = pnginfo_for("café")
    wide = pnginfo_for("猫")
    assert [chunk[0] for chunk in latin.chunks] == [b"tEXt"]
    assert [chunk[0] for chunk in wide.chunks] == [b"iTXt"]


def test_png_extra_items_are_returned() -> None:
    extra = {"Software": "webui", "Comment": "ünï ✓", "parameters": "ignored"}
    image = _reopen(_image(), "PNG", pnginfo=pnginfo_for(INFOTEXT, extra), dpi=(72, 72))
    infotext, items = read_image_info(image)
    assert infotext == INFOTEXT
    assert items == {"Software": "webui", "Comment": "ünï ✓"}
    assert all(type(value) is str for value in items.values())


def test_png_invalid_keyword_is_rejected() -> None:
    with pytest.raises(ValueError):
        pnginfo_for(INFOTEXT, {"": "x"})
    with pytest.raises(ValueError):
        pnginfo_for(INFOTEXT, {"k" * 80: "x"})


def test_png_without_info() -> None:
    assert read_image_info(_reopen(_image(), "PNG")) == (None, {})


def test_png_binary_items_are_dropped() -> None:
    image = _reopen(_image(), "PNG", pnginfo=pnginfo_for(INFOTEXT), icc_profile=b"\x00" * 8, dpi=(300, 300))
    image.info["custom"] = b"binary"
    assert read_image_info(image) == (INFOTEXT, {})


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
@pytest.mark.parametrize("text", [INFOTEXT, UNICODE_INFOTEXT])
def test_exif_round_trip(fmt: str, text: str) -> None:
    image = _reopen(_image(), fmt, exif=exif_for(text))
    infotext, items = read_image_info(image)
    assert infotext == text
    assert "exif" not in items
    assert all(isinstance(value, str) for value in items.values())


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_exif_without_user_comment(fmt: str) -> None:
    exif = Image.Exif()
    exif[0x0131] = "some software"
    image = _reopen(_image(), fmt, exif=exif.tobytes())
    assert read_image_info(image)[0] is None


@pytest.mark.parametrize("fmt", ["JPEG", "WEBP"])
def test_image_without_any_info(fmt: str) -> None:
    assert read_image_info(_reopen(_image(), fmt)) == (None, {})


def test_exif_bytes_use_a1111_unicode_encoding() -> None:
    data = exif_for("hi")
    assert data.startswith(b"Exif\x00\x00")
    assert b"UNICODE\x00\x00h\x00i" in data


def test_gif_comment_is_read() -> None:
    image = _reopen(Image.new("P", (8, 8)), "GIF", comment=INFOTEXT.encode("utf-8"))
    infotext, items = read_image_info(image)
    assert infotext == INFOTEXT
    assert "comment" not in items


def test_corrupt_exif_is_ignored() -> None:
    image = _reopen(_image(), "PNG", pnginfo=pnginfo_for(INFOTEXT))
    image.info["exif"] = b"Exif\x00\x00garbage"
    assert read_image_info(image)[0] == INFOTEXT


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"UNICODE\x00" + "héllo ✓".encode("utf-16-be"), "héllo ✓"),
        (b"UNICODE\x00" + "héllo ✓".encode("utf-16-le"), "héllo ✓"),
        (b"UNICODE\x00" + "\ufeffhéllo".encode("utf-16-le"), "héllo"),
        (b"UNICODE\x00" + "\ufeffhéllo".encode("utf-16-be"), "héllo"),
        (b"UNICODE\x00" + "Steps: 20\x00".encode("utf-16-be"), "Steps: 20"),
        (b"ASCII\x00\x00\x00Steps: 20", "Steps: 20"),
        (b"\x00" * 8 + b"Steps: 20", "Steps: 20"),
        (b"Steps: 20", "Steps: 20"),
        (b"", ""),
        ("already text\x00", "already text"),
    ],
)
def test_decode_user_comment(data: bytes | str, expected: str) -> None:
    assert decode_user_comment(data) == expected


def test_decode_user_comment_never_raises_on_odd_lengths() -> None:
    assert isinstance(decode_user_comment(b"UNICODE\x00\x00a\x00"), str)


def test_pnginfo_is_a_pnginfo() -> None:
    assert isinstance(pnginfo_for(INFOTEXT), PngImagePlugin.PngInfo)
