"""U-Net patches: extra residuals added to the U-Net's skip connections during sampling.

A ControlNet is one; plugins return :class:`UNetPatch` objects from the ``unet_patches`` hook. The
guided denoiser calls :meth:`UNetPatch.residuals` before every U-Net evaluation with a
:class:`UNetCall` describing it, and adds what the patches return to the U-Net's down-block and
mid-block outputs (diffusers' ``down_block_additional_residuals`` / ``mid_block_additional_residual``).

A patch may also have ``adapter_residuals(call) -> [tensor per U-Net level] | None``: features added inside
the down blocks (T2I-Adapters; diffusers' ``down_intrablock_additional_residuals``).

Two more optional methods: ``unet_kwargs(call) -> dict | None``, called right before each U-Net evaluation
(after ``residuals``), whose entries are added to the U-Net's ``added_cond_kwargs`` (a patch may also use it to
set per-call state, as IP-Adapter does for its scales and image tokens); and ``close()``, called once when the
job ends, also after an error (to undo what ``prepare`` installed on the model, e.g. attention processors).

``extra_context(call) -> tensor | None`` gives ``[rows, tokens, width]`` appended to the U-Net's text context
(``encoder_hidden_states``) for this call (the style T2I-Adapter's extra prompt tokens); patches' tokens are
appended in patch order.

Three more optional methods change what sampling makes rather than the U-Net's input (sd-webui-controlnet's
``inpaint_only`` units use them): ``adjust_denoised(x, sigma, denoised) -> denoised``, called on the guided
prediction of the clean latent after every denoiser call (after the CFG combination, before img2img's own mask
blend); ``modify_noise(noise) -> noise``, applied to every noise draw of the first pass (the initial noise and an
ancestral sampler's); ``postprocess_pixels(pixels) -> pixels``, applied to the decoded ``[N, 3, H, W]`` images
(0..1) before they are quantised, restored, overlaid and post-processed.

SD 3.x and FLUX.1 have a transformer instead of a U-Net: there a patch's
``transformer_residuals(call: TransformerCall)`` is called instead and returns hidden states to add after
transformer blocks, one per block (:data:`BLOCK_RESIDUALS` names them per family); a patch without that
method cannot run on these models (the request is refused).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import torch


@dataclass
class UNetCall:
    """One U-Net evaluation of a batch.

    ``x`` is the scaled latent input (``groups * batch`` rows: each prompt part, then the
    unconditional part when ``has_uncond``), ``t`` the timesteps, ``context`` the text embeddings,
    ``added`` SDXL's extra conditioning (or None). ``step``/``steps`` locate the sampling step in the
    current pass (``hires`` tells the hires-fix second pass); ``width``/``height`` the image size.
    """

    x: torch.Tensor
    t: torch.Tensor
    context: torch.Tensor
    added: dict[str, torch.Tensor] | None
    batch: int
    groups: int
    has_uncond: bool
    step: int
    steps: int
    width: int
    height: int
    hires: bool = False


Residuals = tuple[list[torch.Tensor], torch.Tensor]


@dataclass
class TransformerCall:
    """One SD 3.x / FLUX.1 transformer evaluation of a batch: ``x`` the latents (``groups * batch`` rows,
    unpacked ``[rows, C, h, w]``), ``sigma`` per row, ``context`` / ``pooled`` the text conditioning,
    ``guidance`` FLUX.1 dev's distilled guidance; the rest as in :class:`UNetCall`. ``transformer`` is the
    checkpoint's (SD 3.5 ControlNets use its position embedding)."""

    x: torch.Tensor
    sigma: torch.Tensor
    context: torch.Tensor
    pooled: torch.Tensor | None
    guidance: float
    transformer: Any
    batch: int
    groups: int
    has_uncond: bool
    step: int
    steps: int
    width: int
    height: int
    hires: bool = False


#: the transformer's keyword argument(s) for per-block residuals (lists with one tensor per block)
BLOCK_RESIDUALS = {"sd3": ("block_controlnet_hidden_states",),
                   "flux": ("controlnet_block_samples", "controlnet_single_block_samples")}
TransformerResiduals = dict[str, list[torch.Tensor]]


def add_transformer_residuals(total: TransformerResiduals | None,
                              res: TransformerResiduals | None) -> TransformerResiduals | None:
    """``total`` plus ``res``, block by block per keyword (a keyword only one of them has is taken as it is)."""
    if not res:
        return total
    out = {k: list(v) for k, v in (total or {}).items()}
    for key, values in res.items():
        out[key] = [a + b for a, b in zip(out[key], values)] if key in out else list(values)
    return out


def sum_transformer_residuals(patches: list[Any], call: TransformerCall) -> TransformerResiduals | None:
    """The sum of the patches' per-block residuals (keyword arguments for the transformer), or None."""
    total: TransformerResiduals | None = None
    for patch in patches:
        total = add_transformer_residuals(total, patch.transformer_residuals(call))
    return total


class UNetPatch(Protocol):
    def residuals(self, call: UNetCall) -> Residuals | None:
        """Down-block residuals and the mid-block residual for this call (None: nothing this step)."""

    def prepare(self, width: int, height: int, hires: bool = False) -> None:
        """Called before each sampling pass with its image size (e.g. to resize control images). A patch may
        also have ``extra_images``, a list of ``(image, label)`` the job's result shows after its images
        (ControlNet's detected maps)."""


def sum_adapter_residuals(patches: list[Any], call: UNetCall) -> list[torch.Tensor] | None:
    """The sum of the patches' ``adapter_residuals(call)`` (T2I-Adapter features, one per U-Net level, added
    inside the down blocks: diffusers' ``down_intrablock_additional_residuals``), or None."""
    total: list[torch.Tensor] | None = None
    for patch in patches:
        res = patch.adapter_residuals(call) if hasattr(patch, "adapter_residuals") else None
        if res:
            total = list(res) if total is None else [a + b for a, b in zip(total, res)]
    return total


def sum_residuals(patches: list[Any], call: UNetCall) -> Residuals | None:
    total: Residuals | None = None
    for patch in patches:
        res = patch.residuals(call)
        if res is None:
            continue
        if total is None:
            total = (list(res[0]), res[1])
        else:
            total = ([a + b for a, b in zip(total[0], res[0])], total[1] + res[1])
    return total


def unet_kwargs(patches: list[Any], call: UNetCall) -> dict[str, Any]:
    """The patches' extra ``added_cond_kwargs`` for this call (see the module docstring), merged in order."""
    extra: dict[str, Any] = {}
    for patch in patches:
        fn = getattr(patch, "unet_kwargs", None)
        more = fn(call) if fn is not None else None
        if more:
            extra.update(more)
    return extra


def extra_context(patches: list[Any], call: UNetCall) -> torch.Tensor | None:
    """The patches' extra context tokens for this call (see the module docstring), concatenated in order."""
    parts = []
    for patch in patches:
        fn = getattr(patch, "extra_context", None)
        tokens = fn(call) if fn is not None else None
        if tokens is not None:
            parts.append(tokens)
    return torch.cat(parts, dim=1) if parts else None


def adjust_denoised(patches: list[Any], x: torch.Tensor, sigma: torch.Tensor, denoised: torch.Tensor) -> torch.Tensor:
    """The guided prediction of the clean latent after the patches' ``adjust_denoised`` (in order)."""
    for patch in patches:
        fn = getattr(patch, "adjust_denoised", None)
        if fn is not None:
            denoised = fn(x, sigma, denoised)
    return denoised


def postprocess_pixels(patches: list[Any], pixels: torch.Tensor) -> torch.Tensor:
    """Decoded images (``[N, 3, H, W]``, 0..1) after the patches' ``postprocess_pixels`` (in order)."""
    for patch in patches:
        fn = getattr(patch, "postprocess_pixels", None)
        if fn is not None:
            pixels = fn(pixels)
    return pixels


class ModifiedNoise:
    """A noise source (``first()`` / ``next()``, as :class:`~webui.pipeline.noise.ImageRNG`) whose draws go through
    the patches' ``modify_noise``."""

    def __init__(self, rng: Any, modifiers: list[Any]):
        self.rng, self.modifiers = rng, modifiers

    def _apply(self, noise: torch.Tensor) -> torch.Tensor:
        for fn in self.modifiers:
            noise = fn(noise)
        return noise

    def first(self) -> torch.Tensor:
        return self._apply(self.rng.first())

    def next(self) -> torch.Tensor:
        return self._apply(self.rng.next())

    def __getattr__(self, name: str) -> Any:
        return getattr(self.rng, name)


def modified_noise(rng: Any, patches: list[Any]) -> Any:
    """``rng`` itself, or wrapped when a patch has ``modify_noise``."""
    modifiers = [p.modify_noise for p in patches if getattr(p, "modify_noise", None) is not None]
    return ModifiedNoise(rng, modifiers) if modifiers else rng


def close_patches(patches: list[Any]) -> None:
    """Call every patch's ``close()`` (those that have one) in reverse order, so what one patch saved before
    another changed the model is restored last; all of them even if one fails."""
    errors = []
    for patch in reversed(patches):
        close = getattr(patch, "close", None)
        if close is not None:
            try:
                close()
            except Exception as exc:  # noqa: BLE001 - the others are still closed; the first error is raised
                errors.append(exc)
    if errors:
        raise errors[0]


def wrap_attention(unet: Any, wrap: Any) -> dict[str, Any]:
    """Give each attention processor of ``unet`` to ``wrap(name, processor)`` and install what it returns (the
    processor itself to keep it); returns the processors as they were, for ``unet.set_attn_processor(saved)`` in
    the patch's ``close()`` (IP-Adapter wraps the cross-attentions, reference units the self-attentions)."""
    saved = dict(unet.attn_processors)
    unet.set_attn_processor({name: wrap(name, processor) for name, processor in saved.items()})
    return saved
