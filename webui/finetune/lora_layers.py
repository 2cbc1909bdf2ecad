"""LoRA layers for training: the trainable low-rank pair hooked onto a frozen layer, and the layers a kohya
``networks.lora`` run trains, under kohya's key names.

Layers (kohya's sd-scripts defaults): in the U-Net every Linear (and 1x1 Conv) of the Transformer2D blocks —
attention q/k/v/out, feed-forward, proj_in/proj_out; in the text encoder(s) the attention and MLP Linears.
Each gets ``down`` (rank x in, Kaiming-uniform) and ``up`` (out x rank, zeros) added as
``layer(x) + up(down(x)) * alpha / rank``; the base weights stay frozen. With LoCon (``conv``) the
ResnetBlock2D / Downsample2D / Upsample2D blocks join: their 3x3 convolutions (``down`` a 3x3 convolution with
the base's stride and padding, ``up`` 1x1), their Linear and 1x1 layers.

Keys as kohya writes them: ``lora_unet_<module>`` with diffusers' module names for SD 1.x / 2.x and the
original (LDM) names for SDXL (sd-scripts builds its own SDXL U-Net), ``lora_te_`` (one text encoder) or
``lora_te1_`` / ``lora_te2_`` + ``text_model_...``.
"""

from __future__ import annotations

import math

import torch

from webui.models.original_layout import ldm_module_name, unet_module_table

_UNET_ATTN_PARENTS = ("Transformer2DModel",)
_UNET_CONV_PARENTS = ("ResnetBlock2D", "Downsample2D", "Upsample2D")
_TE_PARENTS = ("CLIPAttention", "CLIPSdpaAttention", "CLIPMLP")


class LoraLayer(torch.nn.Module):
    def __init__(self, base: torch.nn.Module, rank: int, alpha: float, gen: torch.Generator):
        super().__init__()
        conv = isinstance(base, torch.nn.Conv2d)
        in_dim = base.in_channels if conv else base.in_features
        out_dim = base.out_channels if conv else base.out_features
        self.conv = conv
        self.kernel = tuple(base.kernel_size) if conv and tuple(base.kernel_size) != (1, 1) else None
        # the base layer is not a submodule: parameters() are the LoRA pair only (the optimizer's and
        # requires_grad's business), never the frozen model's weights
        object.__setattr__(self, "base", base)
        self.down = torch.nn.Parameter(torch.empty(rank, in_dim, *(self.kernel or ())))
        fan_in = in_dim * (math.prod(self.kernel) if self.kernel else 1)
        bound = 1 / math.sqrt(fan_in)  # Kaiming-uniform with a = sqrt(5), as torch's Linear and kohya init
        with torch.no_grad():
            self.down.uniform_(-bound, bound, generator=gen)
        self.up = torch.nn.Parameter(torch.zeros(out_dim, rank))
        self.alpha = float(alpha)
        self.scale = alpha / rank
        self.handle = base.register_forward_hook(self._add)

    def _add(self, module, inputs, output):
        x = inputs[0]
        if self.kernel is not None:  # LoCon: a rank-r convolution with the base's geometry, then 1x1 up
            b = self.base
            lora = torch.nn.functional.conv2d(x, self.down.to(x.dtype), stride=b.stride, padding=b.padding,
                                              dilation=b.dilation)
            lora = torch.einsum("brhw,or->bohw", lora, self.up.to(x.dtype))
        elif self.conv:  # 1x1 conv: the same product over the channel axis
            lora = torch.einsum("bchw,rc->brhw", x, self.down.to(x.dtype))
            lora = torch.einsum("brhw,or->bohw", lora, self.up.to(x.dtype))
        else:
            lora = (x @ self.down.to(x.dtype).t()) @ self.up.to(x.dtype).t()
        return output + lora * self.scale

    def remove(self) -> None:
        self.handle.remove()


def lora_targets(components, train_text_encoder: bool, conv: bool = False) -> dict[str, torch.nn.Module]:
    """kohya key -> base module for the layers a LoRA trains (``conv``: LoCon, the ResNet blocks too)."""
    out: dict[str, torch.nn.Module] = {}
    unet = components.unet
    table = unet_module_table(unet) if components.spec.family == "sdxl" else None
    parents = _UNET_ATTN_PARENTS + (_UNET_CONV_PARENTS if conv else ())
    for parent_name, parent in unet.named_modules():
        if type(parent).__name__ not in parents:
            continue
        for child_name, child in parent.named_modules():
            is_1x1 = isinstance(child, torch.nn.Conv2d) and child.kernel_size == (1, 1)
            is_3x3 = conv and isinstance(child, torch.nn.Conv2d) and not is_1x1
            if not (isinstance(child, torch.nn.Linear) or is_1x1 or is_3x3) or not child_name:
                continue
            name = f"{parent_name}.{child_name}"
            if table is not None:
                name = ldm_module_name(name, table) or name
            out["lora_unet_" + name.replace(".", "_")] = child
    if train_text_encoder:
        prefixes = ["lora_te_"] if len(components.text_encoders) == 1 else ["lora_te1_", "lora_te2_"]
        for prefix, encoder in zip(prefixes, components.text_encoders):
            out.update(_clip_targets(encoder, prefix))
    return out


def kohya_tensors(layers: dict[str, LoraLayer | FusedLoraLayer]) -> dict[str, torch.Tensor]:
    """The trained pairs as kohya saves them: ``<key>.lora_down.weight`` / ``.lora_up.weight`` (4-D for
    convolutions: down ``(r, in, kh, kw)`` or ``(r, in, 1, 1)``, up ``(out, r, 1, 1)``) and ``<key>.alpha``."""
    tensors: dict[str, torch.Tensor] = {}
    for key, layer in layers.items():
        shape = (1, 1) if layer.conv else ()
        down = layer.down.detach().float().cpu()
        tensors[f"{key}.lora_down.weight"] = down if layer.kernel is not None else down.reshape(*down.shape, *shape)
        tensors[f"{key}.lora_up.weight"] = layer.up.detach().float().cpu().reshape(*layer.up.shape, *shape)
        tensors[f"{key}.alpha"] = torch.tensor(layer.alpha)
    return tensors


class FusedLoraLayer(torch.nn.Module):
    """A LoRA on one layer of an original (BFL / Stability) layout that diffusers splits into several modules
    (``img_attn.qkv`` -> ``to_q``, ``to_k``, ``to_v``; FLUX.1's ``linear1`` -> q, k, v and ``proj_mlp``): one
    ``down`` (rank x in) shared by the parts, which read the same input, and one ``up`` (all parts' outputs x
    rank) whose rows each part takes. Exactly kohya's LoRA on the fused layer; saved under its name."""

    def __init__(self, parts: list[tuple[torch.nn.Linear, int | None, int | None]], rank: int, alpha: float,
                 gen: torch.Generator):
        super().__init__()
        first = parts[0][0]
        in_dim = first.in_features
        out_dim = sum((end - start) if start is not None else m.out_features for m, start, end in parts)
        self.conv, self.kernel = False, None
        self.down = torch.nn.Parameter(torch.empty(rank, in_dim))
        bound = 1 / math.sqrt(in_dim)
        with torch.no_grad():
            self.down.uniform_(-bound, bound, generator=gen)
        self.up = torch.nn.Parameter(torch.zeros(out_dim, rank))
        self.alpha = float(alpha)
        self.scale = alpha / rank
        self.handles = []
        offset = 0
        for module, start, end in parts:
            rows = (start, end) if start is not None else (offset, offset + module.out_features)
            offset = rows[1]
            self.handles.append(module.register_forward_hook(self._adder(*rows)))

    def _adder(self, start: int, end: int):
        def add(module, inputs, output):
            x = inputs[0]
            lora = (x @ self.down.to(x.dtype).t()) @ self.up[start:end].to(x.dtype).t()
            return output + lora * self.scale
        return add

    def remove(self) -> None:
        for handle in self.handles:
            handle.remove()


#: the blocks kohya's ``networks.lora_flux`` / ``lora_sd3`` train by default (every Linear inside them)
_FLOW_BLOCKS = ("double_blocks.", "single_blocks.", "joint_blocks.")


def flow_lora_targets(components, train_text_encoder: bool) -> dict[str, list]:
    """kohya key -> [(module, first row, end row)] for an SD 3.x / FLUX.1 LoRA: the transformer blocks' layers
    under their original names (``lora_unet_double_blocks_0_img_attn_qkv``, ...), and with
    ``train_text_encoder`` the CLIP encoders' attention and MLP (``lora_te1_`` CLIP-L, ``lora_te2_`` SD 3's
    CLIP-G; T5 is not trained, as kohya's default)."""
    from webui.networks.flow_lora import original_table

    unet = components.unet
    modules = dict(unet.named_modules())
    out: dict[str, list] = {}
    for name, parts in original_table(components).items():
        if name.startswith(_FLOW_BLOCKS) and all(p in modules for p, _, _ in parts):
            out["lora_unet_" + name.replace(".", "_")] = [(modules[p], start, end) for p, start, end in parts]
    if train_text_encoder:
        prefixes = ["lora_te1_", "lora_te2_"][:len(components.text_encoders)]
        for prefix, encoder in zip(prefixes, components.text_encoders):
            for key, module in _clip_targets(encoder, prefix).items():
                out[key] = [(module, None, None)]
    return out


def _clip_targets(encoder, prefix: str) -> dict[str, torch.nn.Module]:
    out = {}
    for parent_name, parent in encoder.named_modules():
        if type(parent).__name__ not in _TE_PARENTS:
            continue
        for child_name, child in parent.named_children():
            if isinstance(child, torch.nn.Linear):
                path = f"{parent_name}.{child_name}"
                path = path if path.startswith("text_model.") else "text_model." + path
                out[prefix + path.replace(".", "_")] = child
    return out
