"""The "Approx cheap" preview: a fixed linear map from the 4 latent channels to RGB, per architecture.

The coefficients are the widely used ones (A1111's ``cheap_approximation``; first fitted in
https://discuss.huggingface.co/t/decoding-latents-to-rgb-without-upscaling/23204/2). They act on the
*scaled* latents the sampler works with and give RGB in about [-1, 1]. The per-family bias is zero for
the published A1111 sets; it is kept so a fitted set with a bias can be added without code changes.
A checkpoint may carry its own fitted map in its metadata (``webui.latent_rgb``, read by the loader with
:func:`webui.models.components.parse_metadata`; e.g. the built-in shapes model, whose latents are not
SD's); it then wins over the family's.
The result has 1/8 of the image size and is upscaled x8 so the preview has the final image size.
"""

from __future__ import annotations

import torch
from PIL import Image

from webui.models.components import Coefficients

#: latent channel -> (R, G, B) contribution, one row per latent channel.
_SD_FACTORS = (
    (0.298, 0.207, 0.208),
    (0.187, 0.286, 0.173),
    (-0.158, 0.189, 0.264),
    (-0.184, -0.271, -0.473),
)
_SDXL_FACTORS = (
    (0.3448, 0.4168, 0.4395),
    (-0.1953, -0.0290, 0.0250),
    (0.1074, 0.0886, -0.0163),
    (-0.3730, -0.2499, -0.2088),
)
_NO_BIAS = (0.0, 0.0, 0.0)

#: family -> (4x3 factors, RGB bias). SD 2.x shares SD 1.x's VAE, hence its map.
LATENT_RGB: dict[str, tuple[tuple[tuple[float, float, float], ...], tuple[float, float, float]]] = {
    "sd1": (_SD_FACTORS, _NO_BIAS),
    "sd2": (_SD_FACTORS, _NO_BIAS),
    "sdxl": (_SDXL_FACTORS, _NO_BIAS),
}

SCALE = 8  # latent pixel -> image pixels




def latent_rgb(family: str, own: Coefficients | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """The ``[4, 3]`` factors and ``[3]`` bias: the model's ``own`` if given, else ``family``'s
    (unknown families use SD 1.x's)."""
    factors, bias = own if own is not None else LATENT_RGB.get(family, LATENT_RGB["sd1"])
    return torch.tensor(factors, dtype=torch.float32), torch.tensor(bias, dtype=torch.float32)


@torch.no_grad()
def approx_pixels(latents: torch.Tensor, family: str, own: Coefficients | None = None) -> torch.Tensor:
    """``[N, 3, h, w]`` float32 RGB in [0, 1] at latent resolution from ``[N, 4, h, w]`` scaled latents."""
    factors, bias = latent_rgb(family, own)
    x = latents[:, :4].float().cpu()
    rgb = torch.einsum("nchw,cr->nrhw", x, factors) + bias.view(1, 3, 1, 1)
    return (rgb * 0.5 + 0.5).clamp(0, 1)


def approx_image(latent: torch.Tensor, family: str, scale: int = SCALE, own: Coefficients | None = None
                 ) -> Image.Image:
    """Preview of one latent (``[4, h, w]`` or ``[1, 4, h, w]``) as an RGB image ``scale`` times larger."""
    if latent.dim() == 3:
        latent = latent.unsqueeze(0)
    px = approx_pixels(latent[:1], family, own)[0]
    arr = (px.permute(1, 2, 0) * 255).round().to(torch.uint8).numpy()
    image = Image.fromarray(arr, "RGB")
    if scale != 1:
        image = image.resize((image.width * scale, image.height * scale), Image.Resampling.BILINEAR)
    return image
