"""IP-Adapter units (sd-webui-controlnet's "IP-Adapter" control type): an image prompt through decoupled
cross-attention.

Files, as people download them into ``models/ControlNet``: h94's ``ip-adapter_sd15.safetensors`` /
``ip-adapter-plus_sd15.bin`` / ``ip-adapter-plus-face_sd15`` / ``ip-adapter-full-face_sd15`` /
``ip-adapter_sdxl`` / ``ip-adapter_sdxl_vit-h`` / ``ip-adapter-plus_sdxl_vit-h`` (``image_proj.*`` and
``ip_adapter.<n>.to_k_ip`` / ``to_v_ip`` weights; a ``.bin`` holds the same two dicts). The image projection is
built with diffusers' own converter (plain, "plus" resampler and full-face kinds); ``ip_adapter.<n>`` is the
``n``-th attention processor of the U-Net, the cross-attentions being the odd ones (diffusers' numbering).

The image encoders are CLIP vision models that sd-webui-controlnet keeps as
``annotators/clip_vision/clip_h.pth`` (OpenCLIP ViT-H/14, for SD 1.5 and the ``vit-h`` SDXL adapters) and
``clip_g.pth`` (ViT-bigG/14, for ``ip-adapter_sdxl``) — and ``clip_vitl.pth`` (OpenAI's ViT-L/14, for the style
T2I-Adapter: :mod:`webui.controlnet.style_adapter`): looked up in ``models/ControlNet/annotators/clip_vision``,
``models/ControlNet/annotators`` and ComfyUI's ``models/clip_vision`` (also under its file names), never
downloaded; the config is read from the weights' shapes.

During sampling every cross-attention of the U-Net gets, per adapter, ``scale * to_out(attention(q, k_ip,
v_ip))`` added to its output, where ``k_ip`` / ``v_ip`` project the image tokens (the projection of the image's
CLIP embedding; the unconditional rows get a zero embedding, or for the "plus" kinds the encoding of a black
image, as IP-Adapter does). That equals the reference implementation (added before ``to_out``, whose bias
is then added once) while the checkpoint's own attention processors stay as they are. ``scale`` is the unit's
weight inside its guidance window (and ``hr_option``), else 0.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from webui.errors import ModelError, RequestError

log = logging.getLogger(__name__)
#: module -> the CLIP vision file it uses (sd-webui-controlnet's names; "auto" picks by the adapter's width)
CLIP_FOR_MODULE = {"ip-adapter_clip_h": "clip_h", "ip-adapter_clip_sd15": "clip_h",
                   "ip-adapter_clip_sdxl_plus_vith": "clip_h", "ip-adapter_clip_g": "clip_g",
                   "ip-adapter_clip_sdxl": "clip_g", "ip-adapter-auto": None}
#: other names the files have (ComfyUI's models/clip_vision, h94's image_encoder)
_CLIP_FILE_NAMES = {"clip_h": ("clip_h", "CLIP-ViT-H-14-laion2B-s32B-b79K", "clip_vision_h"),
                    "clip_g": ("clip_g", "CLIP-ViT-bigG-14-laion2B-39B-b160k", "clip_vision_g"),
                    # OpenAI's ViT-L/14, the style T2I-Adapter's (sd-webui-controlnet saves it as clip_vitl.pth)
                    "clip_vitl": ("clip_vitl", "clip-vit-large-patch14", "clip_vision_vit_l")}
_SUFFIXES = (".safetensors", ".pth", ".bin", ".pt")
_CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
_CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
_FAMILY_BY_WIDTH = {768: "sd1", 1024: "sd2", 2048: "sdxl"}


class IPAdapterModel(torch.nn.Module):
    """An IP-Adapter file: the image projection and, per cross-attention, the image key / value projections."""

    def __init__(self, image_proj: torch.nn.Module, to_k: list[torch.Tensor], to_v: list[torch.Tensor], kind: str):
        super().__init__()
        self.image_proj = image_proj
        self.to_k = torch.nn.ParameterList([torch.nn.Parameter(w, requires_grad=False) for w in to_k])
        self.to_v = torch.nn.ParameterList([torch.nn.Parameter(w, requires_grad=False) for w in to_v])
        self.kind = kind  # "plain" (pooled embedding), "plus" (resampler) or "full" (full-face): see embed_kind

    @property
    def text_width(self) -> int:
        return int(self.to_k[0].shape[1])

    @property
    def family(self) -> str:
        """The family its text width says (768 SD 1.x, 1024 SD 2.x, 2048 SDXL), else "ip_adapter" (any U-Net of
        that width: :func:`mismatch` decides)."""
        return _FAMILY_BY_WIDTH.get(self.text_width, "ip_adapter")

    @property
    def uses_hidden_states(self) -> bool:
        """Plus / full-face adapters read the image encoder's penultimate hidden states, plain ones its
        projected embedding."""
        return self.kind != "plain"

    @property
    def image_width(self) -> int:
        """The width of the image features it reads (embedding or hidden state)."""
        sd = self.image_proj.state_dict()
        if self.kind == "plain":
            return int(sd["image_embeds.weight"].shape[1])
        if self.kind == "full":
            return int(sd["ff.net.0.proj.weight"].shape[1])
        return int(sd["proj_in.weight"].shape[1])


def is_ip_adapter_state(sd: dict[str, torch.Tensor]) -> bool:
    return any(k.startswith("image_proj.") for k in sd) and any(k.startswith("ip_adapter.") for k in sd)


def is_ip_adapter(model: Any) -> bool:
    return isinstance(model, IPAdapterModel)


def load_ip_adapter(path: Path, sd: dict[str, torch.Tensor]) -> IPAdapterModel:
    """Build the adapter of a flattened IP-Adapter state dict; ModelError naming ``path`` when it is unusable."""
    from diffusers import UNet2DConditionModel

    proj = {k[len("image_proj."):]: v for k, v in sd.items() if k.startswith("image_proj.")}
    if "perceiver_resampler.proj_in.weight" in proj or ("norm.weight" in proj and "proj.0.weight" in proj):
        raise ModelError(path, "it is a FaceID IP-Adapter, which needs insightface face embeddings; this "
                               "program supports the CLIP-image IP-Adapters (plain, plus, plus-face, full-face).")
    layers: dict[int, dict[str, torch.Tensor]] = {}
    for key, value in sd.items():
        if key.startswith("ip_adapter."):
            _, index, name = key.split(".", 2)
            layers.setdefault(int(index), {})[name] = value
    try:
        ordered = [layers[i] for i in sorted(layers)]
        to_k = [layer["to_k_ip.weight"].float() for layer in ordered]
        to_v = [layer["to_v_ip.weight"].float() for layer in ordered]
        # diffusers' converter of h94's image_proj names; it reads nothing of the U-Net it is called on
        image_proj = UNet2DConditionModel._convert_ip_adapter_image_proj_to_diffusers(
            None, {k: v.float() for k, v in proj.items()}, low_cpu_mem_usage=False)
    except (KeyError, RuntimeError, ValueError, AttributeError) as exc:
        raise ModelError(path, f"its weights do not form an IP-Adapter ({type(exc).__name__}: {exc}).") from exc
    kind = "plain" if "proj.weight" in proj else "full" if "proj.3.weight" in proj else "plus"
    return IPAdapterModel(image_proj.eval(), to_k, to_v, kind).eval()


def mismatch(adapter: IPAdapterModel, unet: Any) -> str | None:
    """Why ``adapter`` cannot steer ``unet`` (text width, number of cross-attentions), or None."""
    wanted = int(unet.config.cross_attention_dim)
    if adapter.text_width != wanted:
        return f"it writes {adapter.text_width}-wide attention keys, the checkpoint's U-Net reads {wanted}"
    layers = [name for name in unet.attn_processors if name.endswith("attn2.processor")]
    if len(layers) != len(adapter.to_k):
        return f"it has {len(adapter.to_k)} cross-attention layers, the checkpoint's U-Net {len(layers)}"
    return None


# --- image encoders -----------------------------------------------------------------------------------------
def find_clip_vision(name: str, folders: Iterable[Path]) -> Path | None:
    for folder in folders:
        for stem in _CLIP_FILE_NAMES[name]:
            for suffix in _SUFFIXES:
                path = Path(folder) / f"{stem}{suffix}"
                if path.is_file():
                    return path
    return None


def clip_folders(annotator_dir: Path, models_root: Path) -> list[Path]:
    return [annotator_dir / "clip_vision", annotator_dir, models_root / "clip_vision"]


def missing_clip_message(name: str, folders: list[Path], module: str) -> str:
    source = {"clip_h": "h94/IP-Adapter: models/image_encoder/model.safetensors",
              "clip_g": "h94/IP-Adapter: sdxl_models/image_encoder/model.safetensors",
              "clip_vitl": "openai/clip-vit-large-patch14: pytorch_model.bin or model.safetensors"}[name]
    return (f"the preprocessor '{module}' needs the CLIP image encoder '{name}.pth' (or .safetensors), which is not "
            f"there. Download it ({source}), save it as {folders[0] / (name + '.safetensors')} and try again "
            f"(also looked in {', '.join(str(f) for f in folders[1:])}).")


def load_clip_vision(path: Path) -> Any:
    """A ``CLIPVisionModelWithProjection`` from a state dict in transformers' layout (h94's image encoders,
    sd-webui-controlnet's ``clip_h.pth``, ComfyUI's clip_vision files); the config comes from the shapes."""
    from transformers import CLIPVisionConfig, CLIPVisionModelWithProjection

    from webui.models.safeload import read_state_dict

    sd, _ = read_state_dict(path)
    # a whole CLIP model's file (OpenAI's clip-vit-large-patch14) also holds the text tower: only the image half
    sd = {k: v for k, v in sd.items()
          if not k.endswith("position_ids") and not k.startswith(("text_model.", "text_projection.", "logit_scale"))}
    try:
        patch = sd["vision_model.embeddings.patch_embedding.weight"]
        width, patch_size = int(patch.shape[0]), int(patch.shape[-1])
        positions = int(sd["vision_model.embeddings.position_embedding.weight"].shape[0])
        layers = 1 + max(int(k.split(".")[3]) for k in sd if k.startswith("vision_model.encoder.layers."))
        inner = int(sd["vision_model.encoder.layers.0.mlp.fc1.weight"].shape[0])
        projection = int(sd["visual_projection.weight"].shape[0])
    except (KeyError, ValueError) as exc:
        raise ModelError(path, f"it is not a CLIP image encoder in transformers' layout (missing {exc}).") from exc
    heads = 16 if width >= 1024 else max(1, width // 64)  # ViT-L/H/bigG have 16 heads; small test models 64-wide
    config = CLIPVisionConfig(hidden_size=width, intermediate_size=inner, num_hidden_layers=layers,
                              num_attention_heads=heads, patch_size=patch_size, projection_dim=projection,
                              image_size=patch_size * math.isqrt(positions - 1),
                              hidden_act="quick_gelu" if width == 1024 else "gelu", layer_norm_eps=1e-5)
    from accelerate import init_empty_weights

    with init_empty_weights():
        model = CLIPVisionModelWithProjection(config)
    try:
        model.load_state_dict({k: v.float() for k, v in sd.items()}, strict=True, assign=True)
    except RuntimeError as exc:
        raise ModelError(path, f"its weights do not form a CLIP image encoder ({str(exc)[:300]}).") from exc
    return model.eval()


def clip_pixels(image: np.ndarray, size: int) -> torch.Tensor:
    """CLIP's preprocessing: the short side to ``size`` (bicubic), a centre crop, CLIP's mean / std."""
    pil = Image.fromarray(image).convert("RGB")
    scale = size / min(pil.size)
    resized = pil.resize((max(size, round(pil.width * scale)), max(size, round(pil.height * scale))),
                         Image.Resampling.BICUBIC)
    left, top = (resized.width - size) // 2, (resized.height - size) // 2
    arr = np.asarray(resized.crop((left, top, left + size, top + size)), dtype=np.float32) / 255.0
    x = torch.from_numpy(arr).permute(2, 0, 1)[None]
    mean, std = torch.tensor(_CLIP_MEAN).view(1, 3, 1, 1), torch.tensor(_CLIP_STD).view(1, 3, 1, 1)
    return (x - mean) / std


def image_features(encoder: Any, pixels: torch.Tensor, hidden: bool) -> torch.Tensor:
    """What an adapter reads from the encoder: the penultimate hidden states (plus / full-face) or the
    projected embedding (plain)."""
    param = next(encoder.parameters())
    with torch.no_grad():
        out = encoder(pixels.to(param.device, param.dtype), output_hidden_states=hidden)
    return out.hidden_states[-2] if hidden else out.image_embeds


def encoder_width(encoder: Any, hidden: bool) -> int:
    return int(encoder.config.hidden_size if hidden else encoder.config.projection_dim)


class ClipVisionCache:
    """The CLIP image encoders of IP-Adapter units (the last one used stays loaded) and the units' tokens."""

    def __init__(self, folders: list[Path], device: torch.device, dtype: torch.dtype):
        self.folders, self.device, self.dtype = folders, device, dtype
        self._loaded: tuple[Path, Any] | None = None

    def encoder(self, name: str, module: str, field: str) -> Any:
        path = find_clip_vision(name, self.folders)
        if path is None:
            raise RequestError(field, missing_clip_message(name, self.folders, module))
        if self._loaded is None or self._loaded[0] != path:
            self._loaded = None  # free the previous one first
            self._loaded = (path, load_clip_vision(path).to(self.device, self.dtype))
        return self._loaded[1]

    def choose(self, adapter: IPAdapterModel, module: str, field: str) -> tuple[str, Any]:
        """The encoder ``module`` names, or for ``ip-adapter-auto`` the one whose width fits the adapter
        (logged as sd-webui-controlnet does: ``ip-adapter-auto => ip-adapter_clip_h``)."""
        name = CLIP_FOR_MODULE[module]
        if name is not None:
            return name, self.encoder(name, module, field)
        for candidate in ("clip_h", "clip_g"):
            if find_clip_vision(candidate, self.folders) is None:
                continue
            encoder = self.encoder(candidate, module, field)
            if encoder_width(encoder, adapter.uses_hidden_states) == adapter.image_width:
                log.info("ip-adapter-auto => ip-adapter_%s", candidate)
                return candidate, encoder
        raise RequestError(field, "ip-adapter-auto found no CLIP image encoder "
                                  f"{adapter.image_width} wide for this IP-Adapter: "
                                  + missing_clip_message("clip_h" if adapter.family != "sdxl" else "clip_g",
                                                         self.folders, module))

    def prepare(self, prepared: Any, module: str, field: str) -> IPUnit:
        """The unit's image tokens: its image through the CLIP encoder and the adapter's projection."""
        adapter = prepared.model
        name, encoder = self.choose(adapter, module, field)
        hidden = adapter.uses_hidden_states
        if encoder_width(encoder, hidden) != adapter.image_width:
            raise RequestError(field, f"the image encoder {name} gives features "
                                      f"{encoder_width(encoder, hidden)} wide, the IP-Adapter reads "
                                      f"{adapter.image_width}: use "
                                      f"{'ip-adapter_clip_g' if name == 'clip_h' else 'ip-adapter_clip_h'} "
                                      "or ip-adapter-auto")
        pixels = clip_pixels(prepared.detected, int(encoder.config.image_size))
        features = image_features(encoder, pixels, hidden)
        negative = image_features(encoder, torch.zeros_like(pixels), True) if hidden else torch.zeros_like(features)
        proj = adapter.image_proj
        param = next(proj.parameters())
        with torch.no_grad():
            positive_tokens = proj(features.to(param.device, param.dtype))
            negative_tokens = proj(negative.to(param.device, param.dtype))
        return IPUnit(prepared.unit, adapter, positive_tokens, negative_tokens)


# --- sampling -----------------------------------------------------------------------------------------------
@dataclass
class IPUnit:
    """A prepared IP-Adapter unit: the adapter, the unit (weight, window, hr_option) and its image tokens for
    the conditional and the unconditional rows (``[1, tokens, width]``)."""

    unit: Any
    adapter: IPAdapterModel
    positive: torch.Tensor
    negative: torch.Tensor


@dataclass
class _State:
    units: list[IPUnit]
    scales: list[float] = field(default_factory=list)
    tokens: list[torch.Tensor] = field(default_factory=list)


class _IPAttention:
    """Wraps a cross-attention's processor: its output plus each adapter's image attention."""

    def __init__(self, inner: Any, layer: int, state: _State):
        self.inner, self.layer, self.state = inner, layer, state

    def __call__(self, attn, hidden_states, encoder_hidden_states=None, attention_mask=None, temb=None, **kwargs):
        out = self.inner(attn, hidden_states, encoder_hidden_states, attention_mask, temb, **kwargs)
        state = self.state
        if not any(state.scales):
            return out
        rows = hidden_states.shape[0]
        heads = attn.heads
        query = attn.to_q(hidden_states)
        head_dim = query.shape[-1] // heads
        query = query.view(rows, -1, heads, head_dim).transpose(1, 2)
        for scale, tokens, ip in zip(state.scales, state.tokens, state.units):
            if scale == 0:
                continue
            tokens = tokens.to(query.dtype)
            key = F.linear(tokens, ip.adapter.to_k[self.layer].to(query.dtype)).view(rows, -1, heads, head_dim)
            value = F.linear(tokens, ip.adapter.to_v[self.layer].to(query.dtype)).view(rows, -1, heads, head_dim)
            mixed = F.scaled_dot_product_attention(query, key.transpose(1, 2), value.transpose(1, 2))
            mixed = mixed.transpose(1, 2).reshape(rows, -1, heads * head_dim)
            out = out + scale * F.linear(mixed, attn.to_out[0].weight)  # to_out's bias is in ``out`` already
        return out


class IPAdapterPatch:
    """The :class:`~webui.pipeline.patches.UNetPatch` of a job's IP-Adapter units: wraps the U-Net's
    cross-attention processors from the first pass until :meth:`close`, and sets each adapter's scale and
    image tokens before every U-Net call (:meth:`unet_kwargs`)."""

    def __init__(self, units: list[IPUnit], unet: Any):
        self.state = _State(units)
        self.unet = unet
        self._saved: dict[str, Any] | None = None

    def prepare(self, width: int, height: int, hires: bool = False) -> None:
        if self._saved is not None:
            return
        from webui.pipeline.patches import wrap_attention

        cross = {name: layer for layer, name in enumerate(n for n in self.unet.attn_processors
                                                           if n.endswith("attn2.processor"))}
        self._saved = wrap_attention(self.unet, lambda name, processor: _IPAttention(processor, cross[name], self.state)
                                     if name in cross else processor)

    def residuals(self, call: Any) -> None:
        return None

    def unet_kwargs(self, call: Any) -> None:
        """Called right before each U-Net evaluation: the adapters' scales for this step and their tokens for
        this call's rows (conditional rows first, the unconditional ones last)."""
        from webui.controlnet.patch import _acts

        rows = call.x.shape[0]
        uncond = call.batch if call.has_uncond else 0
        self.state.scales = [float(u.unit.weight) if _acts(u.unit, call) else 0.0 for u in self.state.units]
        self.state.tokens = [torch.cat([u.positive.expand(rows - uncond, -1, -1),
                                        u.negative.expand(uncond, -1, -1)]).to(call.x.device)
                             for u in self.state.units]
        return None

    def close(self) -> None:
        """Put the U-Net's own attention processors back."""
        if self._saved is not None:
            self.unet.set_attn_processor(self._saved)
            self._saved = None
