"""Reference units (sd-webui-controlnet's ``reference_only``, ``reference_adain``, ``reference_adain+attn``): no
model; the generation borrows the look of a reference image.

Before every U-Net call inside a unit's window the U-Net first runs on the reference image's latents, noised to
the call's timestep (``sqrt(a) * x0 + sqrt(1 - a) * noise``, an inpainting U-Net also gets a zero mask and the
latents), with the call's text conditioning, and records:

- ``reference_only`` / ``+attn``: the input of each self-attention (``attn1``) of the transformer blocks whose
  rank weight is below the unit's weight (blocks sorted widest first, weight ``i / n``); the real call then lets
  each of those self-attentions also attend to the recorded states (keys / values = own states + reference's);
- ``reference_adain`` / ``+attn``: the per-channel mean and variance of the outputs of the middle block and of the
  down / up blocks sd-webui-controlnet picks (LDM ``input_blocks`` 4, 5, 7, 8, 10, 11 and ``output_blocks`` 0-7 for
  SD 1.x; 4, 5, 7, 8 and 0-5 for SDXL; their rank weights ``2 * (1 - w / n)`` and ``2 * w / n``, the middle
  block 0); the real call re-normalises those outputs to the reference's statistics (AdaIN).

"Style fidelity" (the unit's ``threshold_a``, 0.5 by default; cubed on SDXL) keeps the unconditional rows that
much closer to their own result: ``out = fidelity * out_c + (1 - fidelity) * out_ref`` where ``out_c`` is the
referenced result on the conditional rows and the plain one on the unconditional rows. "ControlNet is more
important" sets it to 1, "My prompt is more important" and the hires pass to 0, as sd-webui-controlnet does.
Unlike sd-webui-controlnet, the reference's noise is seeded (by the step), so the same request gives the same
picture.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from PIL import Image

REFERENCE_MODULES = ("reference_only", "reference_adain", "reference_adain+attn")
_EPS = 1e-6


@dataclass
class ReferenceUnit:
    unit: Any
    image: np.ndarray  # H x W x 3 uint8, as given
    latents: torch.Tensor | None = None  # [1, 4, h, w] scaled latents at the current pass's size

    @property
    def attention(self) -> bool:
        return self.unit.module in ("reference_only", "reference_adain+attn")

    @property
    def adain(self) -> bool:
        return self.unit.module in ("reference_adain", "reference_adain+attn")


@dataclass
class _Bank:
    """What the reference pass recorded for one block (per active unit), read and cleared by the real pass."""

    weight: float  # the block's rank weight: a unit records only when its weight is above it
    states: list[torch.Tensor] = field(default_factory=list)
    fidelities: list[float] = field(default_factory=list)
    stats: list[tuple[torch.Tensor, torch.Tensor]] = field(default_factory=list)


@dataclass
class _State:
    writing: Any = None  # the unit whose reference pass is running (its weight and fidelity), or None
    fidelity: float = 0.0
    uncond: slice | None = None  # the unconditional rows of the real call


def style_fidelity(unit: Any, sdxl: bool, hires: bool) -> float:
    value = min(1.0, max(0.0, float(unit.threshold_a) if unit.threshold_a >= 0 else 0.5))
    if sdxl:
        value = value ** 3.0
    if unit.control_mode == 2:
        return 1.0
    if unit.control_mode == 1 or hires:
        return 0.0
    return value


def _blend(referenced: torch.Tensor, plain_uncond: torch.Tensor | None, rows: slice | None,
           fidelity: float) -> torch.Tensor:
    """``fidelity * out_c + (1 - fidelity) * out_ref``, ``out_c`` = ``referenced`` with the unconditional rows
    replaced by their plain result."""
    if rows is None or plain_uncond is None or fidelity <= 1e-5:
        return referenced
    own = referenced.clone()
    own[rows] = plain_uncond.to(own.dtype)
    return fidelity * own + (1.0 - fidelity) * referenced


class _RefAttention:
    """A self-attention's processor that records (reference pass) or also attends to (real pass) the
    reference's states."""

    def __init__(self, inner: Any, bank: _Bank, state: _State):
        self.inner, self.bank, self.state = inner, bank, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        bank, state = self.bank, self.state
        if state.writing is not None:
            if state.writing.unit.weight > bank.weight and state.writing.attention:
                bank.states.append(hidden_states.detach().clone())
                bank.fidelities.append(state.fidelity)
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        if not bank.states:
            return self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        fidelity = sum(bank.fidelities) / len(bank.fidelities)
        context = torch.cat([hidden_states, *[s.to(hidden_states.dtype) for s in bank.states]], dim=1)
        referenced = self.inner(attn, hidden_states, context, attention_mask, temb, **kwargs)
        plain = None
        if state.uncond is not None and fidelity > 1e-5:
            plain = self.inner(attn, hidden_states[state.uncond], None, attention_mask, temb, **kwargs)
        bank.states.clear()
        bank.fidelities.clear()
        return _blend(referenced, plain, state.uncond, fidelity)


def ldm_blocks(unet: Any) -> tuple[list[torch.nn.Module | None], list[torch.nn.Module]]:
    """The diffusers modules whose outputs are the original U-Net's ``input_blocks`` and ``output_blocks``
    outputs (input block 0, the stem convolution, is None): a layer's attention if it has one, else its resnet;
    a down block's downsampler; an up block's upsampler after its last layer."""
    inputs: list[torch.nn.Module | None] = [None]
    for block in unet.down_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            inputs.append(attentions[j] if attentions is not None else resnet)
        if block.downsamplers is not None:
            inputs.append(block.downsamplers[0])
    outputs: list[torch.nn.Module] = []
    for block in unet.up_blocks:
        attentions = getattr(block, "attentions", None)
        for j, resnet in enumerate(block.resnets):
            last = j == len(block.resnets) - 1
            if last and block.upsamplers is not None:
                outputs.append(block.upsamplers[0])
            else:
                outputs.append(attentions[j] if attentions is not None else resnet)
    return inputs, outputs


def adain_modules(unet: Any, sdxl: bool) -> list[tuple[torch.nn.Module, float]]:
    """sd-webui-controlnet's AdaIN blocks and their rank weights (missing indices of small models skipped)."""
    inputs, outputs = ldm_blocks(unet)
    in_idx, out_idx = ([4, 5, 7, 8], [0, 1, 2, 3, 4, 5]) if sdxl else ([4, 5, 7, 8, 10, 11], list(range(8)))
    chosen = [(unet.mid_block, 0.0)]
    chosen += [(inputs[i], 2.0 * (1.0 - w / len(in_idx))) for w, i in enumerate(in_idx)
               if i < len(inputs) and inputs[i] is not None]
    chosen += [(outputs[i], 2.0 * w / len(out_idx)) for w, i in enumerate(out_idx) if i < len(outputs)]
    return chosen


class ReferencePatch:
    """The :class:`~webui.pipeline.patches.UNetPatch` of a job's reference units (see the module docstring)."""

    def __init__(self, units: list[ReferenceUnit], model: Any, encode):
        self.units = units
        self.model = model
        self.encode = encode  # pixels [1, 3, H, W] in [-1, 1] -> scaled latents
        self.state = _State()
        self._saved: dict[str, Any] | None = None
        self._hooks: list[Any] = []
        self._hires = False
        self.passes = 0  # reference passes run (tests)

    # --- set-up / tear-down ------------------------------------------------------------------------------
    def prepare(self, width: int, height: int, hires: bool = False) -> None:
        from webui.pipeline.init_image import resize_image

        self._hires = hires
        for u in self.units:
            image = resize_image(Image.fromarray(u.image), width, height, u.unit.resize_mode)
            pixels = torch.from_numpy(np.asarray(image.convert("RGB"), dtype=np.float32) / 127.5 - 1.0)
            with torch.no_grad():
                u.latents = self.encode(pixels.permute(2, 0, 1)[None])
        if self._saved is None:
            self._install()

    def _install(self) -> None:
        from webui.pipeline.patches import wrap_attention

        unet = self.model.components.unet
        banks: dict[int, _Bank] = {}
        if any(u.attention for u in self.units):
            blocks = [m for m in unet.modules() if type(m).__name__ == "BasicTransformerBlock"]
            ranked = sorted(blocks, key=lambda b: -b.norm1.normalized_shape[0])  # stable: widest first
            banks = {id(b.attn1): _Bank(i / len(ranked)) for i, b in enumerate(ranked)}

        def wrap(name: str, processor: Any) -> Any:
            bank = banks.get(id(unet.get_submodule(name.removesuffix(".processor"))))
            return _RefAttention(processor, bank, self.state) if bank is not None else processor

        self._saved = wrap_attention(unet, wrap)
        if any(u.adain for u in self.units):
            for module, weight in adain_modules(unet, self.model.components.spec.family == "sdxl"):
                self._hooks.append(module.register_forward_hook(self._adain_hook(_Bank(weight))))

    def _adain_hook(self, bank: _Bank):
        state = self.state

        def hook(module, args, output):
            x = output[0] if isinstance(output, tuple) else output
            if state.writing is not None:
                if state.writing.adain and state.writing.unit.weight > bank.weight:
                    var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
                    bank.stats.append((mean, var))
                    bank.fidelities.append(state.fidelity)
                return None
            if not bank.stats:
                return None
            fidelity = sum(bank.fidelities) / len(bank.fidelities)
            var, mean = torch.var_mean(x.float(), dim=(2, 3), keepdim=True, correction=0)
            std = var.clamp_min(_EPS).sqrt()
            ref_mean = sum(m for m, _ in bank.stats) / len(bank.stats)
            ref_std = (sum(v for _, v in bank.stats) / len(bank.stats)).clamp_min(_EPS).sqrt()
            moved = ((x.float() - mean) / std * ref_std + ref_mean).to(x.dtype)
            plain = x[state.uncond] if state.uncond is not None else None
            y = _blend(moved, plain, state.uncond, fidelity)
            bank.stats.clear()
            bank.fidelities.clear()
            return (y, *output[1:]) if isinstance(output, tuple) else y

        return hook

    def close(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()
        if self._saved is not None:
            self.model.components.unet.set_attn_processor(self._saved)
            self._saved = None

    # --- per call ----------------------------------------------------------------------------------------------
    def residuals(self, call: Any) -> None:
        return None

    def unet_kwargs(self, call: Any) -> None:
        """Run the reference pass of each unit acting in this call (before the real U-Net call)."""
        from webui.controlnet.patch import _acts

        c = self.model.components
        unet = c.unet
        rows = call.x.shape[0]
        self.state.uncond = slice(rows - call.batch, rows) if call.has_uncond else None
        t = call.t.reshape(-1)[0]
        acp = c.alphas_cumprod.to(call.x.device)[int(torch.round(t.float()).clamp(0, len(c.alphas_cumprod) - 1))]
        for u in self.units:
            if u.latents is None or not _acts(u.unit, call):
                continue
            x0 = u.latents.to(call.x.device, call.x.dtype).expand(rows, -1, -1, -1)
            generator = torch.Generator().manual_seed(1000 + call.step + (100_000 if call.hires else 0))
            noise = torch.randn(x0.shape, generator=generator).to(x0.device, x0.dtype)
            ref = acp.sqrt().to(x0.dtype) * x0 + (1 - acp).sqrt().to(x0.dtype) * noise
            if call.x.shape[1] == 9:  # an inpainting U-Net: no mask, the reference as the masked image
                ref = torch.cat([ref, torch.zeros_like(ref[:, :1]), x0], dim=1)
            self.state.writing = u
            self.state.fidelity = style_fidelity(u.unit, c.spec.family == "sdxl", call.hires)
            try:
                with torch.no_grad():
                    unet(ref, call.t, encoder_hidden_states=call.context, added_cond_kwargs=call.added)
            finally:
                self.state.writing = None
            self.passes += 1
        return None
