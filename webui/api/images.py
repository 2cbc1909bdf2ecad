"""base64 <-> PIL image conversion: the code is in :mod:`webui.image_codec` (built-ins decode images too, and
they do not import the API); these names stay importable from here."""

from webui.image_codec import MAX_PIXELS, Fetcher, InvalidImage, decode_base64_image, encode_png_base64

__all__ = ["MAX_PIXELS", "Fetcher", "InvalidImage", "decode_base64_image", "encode_png_base64"]
