"""Built-in plugin: ControlNet (sd-webui-controlnet's units, API routes and infotext).

Units come from ``alwayson_scripts["controlnet"]["args"]`` (API) or the "ControlNet" section of the
txt2img/img2img tabs; ``parse_infotext`` reads the infotext's ``ControlNet N`` keys back into that section.
Each enabled unit's image (or the img2img input) goes through its preprocessor once per job (results are
cached across jobs too), is resized to the generation size with the unit's resize mode, and its ControlNet
adds residuals to the U-Net inside the unit's guidance window.
"""

from __future__ import annotations

import base64
import io
import logging
from typing import Any

import numpy as np
from PIL import Image

from webui.controlnet.inpaint import DEFAULT_BLUR_SIGMA, FALLBACK_WARNING, is_inpaint, resize_map, rgba, shown_map
from webui.controlnet.inputs import unit_input
from webui.controlnet.ip_adapter import (
    CLIP_FOR_MODULE,
    ClipVisionCache,
    IPAdapterPatch,
    clip_folders,
    is_ip_adapter,
)
from webui.controlnet.ip_adapter import (
    mismatch as ip_mismatch,
)
from webui.controlnet.patch import ControlNetPatch, PreparedUnit, pixel_perfect_resolution
from webui.controlnet.preprocessors import PreprocessorRegistry, annotator_dir_for, module_detail
from webui.controlnet.reference import REFERENCE_MODULES, ReferencePatch, ReferenceUnit
from webui.controlnet.registry import ControlNetRegistry
from webui.controlnet.style_adapter import (
    STYLE_ENCODER,
    STYLE_MODULE,
    StylePatch,
    StyleUnit,
    is_style_adapter,
    style_mismatch,
    style_tokens,
)
from webui.controlnet.union_sdxl import UNION_TYPES, is_union, union_index
from webui.controlnet.units import SECTION, ControlUnit, unit_infotext, units_from_infotext, units_from_request
from webui.errors import RequestError, UnknownChoice
from webui.hookspecs import hookimpl
from webui.image_codec import InvalidImage, decode_base64_image
from webui.models.spec import FAMILY_LABELS
from webui.sections import section_field
from webui.settings import OptionDef

log = logging.getLogger(__name__)
API_VERSION = 2


def _decoder(value: str, field: str) -> Image.Image:
    try:
        return decode_base64_image(value, field)
    except InvalidImage as exc:
        raise RequestError(field, str(exc)) from None


class ControlNetPlugin:
    """State (model list, preprocessor cache) lives here, created when the app starts."""

    def __init__(self) -> None:
        self.ctx: Any = None
        self.models: ControlNetRegistry | None = None
        self.preprocessors: PreprocessorRegistry | None = None
        self.clip_vision: ClipVisionCache | None = None  # IP-Adapter image encoders

    # --- set-up -------------------------------------------------------------------------------
    @hookimpl
    def register_settings(self) -> list[OptionDef]:
        return [OptionDef("control_net_unit_count", 3, "ControlNet units in the UI (restart to apply)", "ControlNet",
                          minimum=1, maximum=10,
                          help="How many ControlNet units the txt2img and img2img tabs show."),
                OptionDef("control_net_model_cache_size", 2, "ControlNet models kept loaded", "ControlNet",
                          minimum=1, maximum=10,
                          help="Switching back to a model kept loaded skips reading it from disk."),
                OptionDef("control_net_no_detectmap", False, "Do not append detected maps to the output",
                          "ControlNet", help="The preprocessors' maps are left out of the output gallery."),
                OptionDef("control_net_inpaint_blur_sigma", DEFAULT_BLUR_SIGMA,
                          "ControlNet inpainting Gaussian blur sigma", "ControlNet", minimum=0, maximum=64,
                          help="inpaint_only units blend the generated picture into the input through the mask "
                               "grown and blurred by this many pixels.")]

    @hookimpl
    def startup(self, ctx: Any) -> None:
        self.ctx = ctx
        cn_dir = ctx.settings.model_dir("ControlNet")
        self.models = ControlNetRegistry([cn_dir], ctx.device.device, ctx.device.dtype,
                                         cache=int(ctx.options.current.get("control_net_model_cache_size", 2)))
        self.preprocessors = PreprocessorRegistry(annotator_dir=annotator_dir_for(ctx.settings.models_root),
                                                  device=ctx.device.device)
        self.clip_vision = ClipVisionCache(clip_folders(self.preprocessors.annotator_dir, ctx.settings.models_root),
                                           ctx.device.device, ctx.device.dtype)

    # --- generation ---------------------------------------------------------------------------
    def _prepare(self, unit: ControlUnit, index: int, request: Any, model: Any) -> PreparedUnit:
        prefix = f"alwayson_scripts.controlnet.args[{index}]"
        assert self.models is not None and self.preprocessors is not None
        pre = self.preprocessors.get(unit.module or "none", f"{prefix}.module")
        if pre.name in REFERENCE_MODULES:
            return self._prepare_reference(unit, pre, prefix, request, model)
        if pre.name == "inpaint_only" and request.mode == "img2img" and request.mask is not None:
            log.warning(FALLBACK_WARNING)  # sd-webui-controlnet: A1111's inpainting keeps the unmasked area
            pre = self.preprocessors.get("inpaint")
        if is_inpaint(pre.name) and model.components.spec.is_flow:
            raise RequestError(f"{prefix}.module", f"{pre.name} is for SD 1.x / SDXL inpaint ControlNets; "
                                                   f"{model.components.spec.label} has a transformer")
        if unit.model in ("", "None", None):
            raise RequestError(f"{prefix}.model", "choose a ControlNet model (GET /controlnet/model_list)")
        info = self.models.find(unit.model, f"{prefix}.model")
        unet_cfg = model.components.unet.config
        spec = model.components.spec
        cn = self.models.load(info, int(getattr(unet_cfg, "addition_time_embed_dim", None) or 256),
                              int(getattr(unet_cfg, "attention_head_dim", 64) if spec.is_flow else 64),
                              int(getattr(unet_cfg, "in_channels", 16) if spec.family == "sd3" else 16),
                              base_unet=model.components.unet, base_key=str(model.info.path))
        from webui.controlnet.models import family_of

        family, ckpt_family = family_of(cn), spec.family
        label = {f: FAMILY_LABELS.get(f, f) for f in (family, ckpt_family)}
        what = "IP-Adapter" if is_ip_adapter(cn) else "ControlNet"
        if family not in (ckpt_family, "t2i_adapter", "ip_adapter"):
            raise RequestError(f"{prefix}.model", f"{info.title} is a {label[family]} {what} "
                                                  f"but the checkpoint is {label[ckpt_family]}")
        reason = _unfit(cn, family, model.components)
        if reason is not None:
            raise RequestError(f"{prefix}.model", f"{info.title} does not fit this {label[ckpt_family]} "
                                                  f"checkpoint: {reason}")
        union = None
        if is_union(cn):  # SDXL ControlNet++ Union: the control type, or the preprocessor's
            union = union_index(unit.union_control_type, pre.control_type)
            if union is None:
                raise RequestError(f"{prefix}.union_control_type",
                                   f"{info.title} is a ControlNet++ Union model: name the control type, one of "
                                   f"{', '.join(UNION_TYPES)} (or use a preprocessor of one of them)")
        elif getattr(cn, "union", False):  # FLUX.1 Union ControlNets need the control type
            from webui.controlnet.flow_patch import FLUX_UNION_MODES, union_mode

            union = union_mode(unit.union_control_type, unit.module)
            if union is None:
                raise RequestError(f"{prefix}.union_control_type",
                                   f"{info.title} is a Union ControlNet: name the control type, one of "
                                   f"{', '.join(FLUX_UNION_MODES)} (or use a preprocessor of one of them)")
        # the unit's image, else the img2img input (with img2img's resize mode); RGBA for inpaint modules
        arr, resize_mode = unit_input(unit, pre.name, request, prefix)
        unit = unit.with_(resize_mode=resize_mode, module=pre.name)  # the inpaint rules read the module's name
        if pre.name == "inpaint_only+lama" and resize_mode == 2:  # its outpaint fix: LaMa fills the padding
            size = _hires_size(request) or (request.width, request.height)
            arr = np.clip(resize_map(arr, size[0], size[1], 2), 0, 255).astype(np.uint8)
        if unit.advanced_weighting is not None:
            log.info("Advanced weighting enabled. %s", list(unit.advanced_weighting))
            if unit.control_mode != 0:
                log.warning("Advanced weighting overwrites soft_injection effect.")
        if is_ip_adapter(cn) != (pre.name in CLIP_FOR_MODULE):
            raise RequestError(f"{prefix}.module",
                               f"{info.title} is an IP-Adapter: use an IP-Adapter preprocessor (ip-adapter-auto, "
                               "ip-adapter_clip_h, ip-adapter_clip_g)" if is_ip_adapter(cn) else
                               f"the preprocessor {pre.name} makes an image embedding, which only IP-Adapter models "
                               f"read; {info.title} is not one")
        if is_style_adapter(cn) != (pre.name == STYLE_MODULE):
            raise RequestError(f"{prefix}.module",
                               f"{info.title} is the style T2I-Adapter: use the t2ia_style_clipvision preprocessor"
                               if is_style_adapter(cn) else
                               f"the preprocessor {pre.name} makes CLIP image tokens, which only the style "
                               f"T2I-Adapter (t2iadapter_style_sd14v1) reads; {info.title} is not it")
        res, thr_a, thr_b = _checked_params(pre, unit)
        if unit.pixel_perfect:
            res = pixel_perfect_resolution(arr.shape[:2], request.width, request.height, unit.resize_mode)
        detected = self.preprocessors.detect(arr, pre.name, res, thr_a, thr_b)
        # the module's own name (not an alias): the hires pass's forced soft injection reads it
        prepared = PreparedUnit(unit.with_(module=pre.name), cn, detected, union_mode=union,
                                inpaint=is_inpaint(pre.name))
        if is_ip_adapter(cn):
            assert self.clip_vision is not None
            prepared.ip = self.clip_vision.prepare(prepared, pre.name, f"{prefix}.module")
        if is_style_adapter(cn):
            assert self.clip_vision is not None
            encoder = self.clip_vision.encoder(STYLE_ENCODER, "t2ia_style_clipvision", f"{prefix}.module")
            prepared.style = StyleUnit(prepared.unit, style_tokens(cn, encoder, detected))
        return prepared

    def _prepare_reference(self, unit: ControlUnit, pre: Any, prefix: str, request: Any, model: Any) -> PreparedUnit:
        """A reference unit: no model; its image (or the img2img input) as given."""
        if model.components.spec.is_flow:
            raise RequestError(f"{prefix}.module", f"{pre.name} steers U-Nets only; {model.components.spec.label} "
                                                   "has a transformer")
        image = unit.image if unit.image is not None else (request.init_images[0] if request.init_images else None)
        if image is None:
            raise RequestError(f"{prefix}.image", "a reference unit needs an image (or use img2img)")
        _, fidelity, _ = _checked_params(pre, unit)
        unit = unit.with_(module=pre.name, threshold_a=float(fidelity))
        arr = np.ascontiguousarray(np.asarray(image.convert("RGB")))
        return PreparedUnit(unit, None, arr, reference=ReferenceUnit(unit, arr))

    @hookimpl
    def unet_patches(self, request: Any, model: Any, job: Any) -> list[ControlNetPatch] | None:
        units = units_from_request(request.alwayson_scripts, _decoder)
        if not units:
            return None
        prepared = [self._prepare(u, i, request, model) for i, u in enumerate(units)]
        option = request.override_settings.get("control_net_no_detectmap") if request.override_settings else None
        if option is None and self.ctx is not None:
            option = self.ctx.options.current.get("control_net_no_detectmap", False)
        maps = not bool(option)
        c = model.components
        from webui.pipeline.vae import encode_pixels

        def encode(pixels):  # SD 3.x / FLUX.1 ControlNets read latents; inpaint_only units restore them
            return encode_pixels(model, pixels)

        blur = request.override_settings.get("control_net_inpaint_blur_sigma") if request.override_settings else None
        if blur is None and self.ctx is not None:
            blur = self.ctx.options.current.get("control_net_inpaint_blur_sigma", DEFAULT_BLUR_SIGMA)
        patches: list[Any] = [ControlNetPatch(prepared, model.device, model.dtype, detected_maps=maps, encode=encode,
                                              vae_shift_scale=(float(getattr(c, "vae_shift_factor", 0.0)),
                                                               float(c.vae_scaling_factor)),
                                              alphas_cumprod=getattr(c, "alphas_cumprod", None),
                                              inpaint_blur=int(blur if blur is not None else DEFAULT_BLUR_SIGMA),
                                              hires_size=_hires_size(request))]
        ip_units = [u.ip for u in prepared if u.ip is not None]
        if ip_units:
            patches.append(IPAdapterPatch(ip_units, c.unet))
        style_units = [u.style for u in prepared if u.style is not None]
        if style_units:
            patches.append(StylePatch(style_units))
        references = [u.reference for u in prepared if u.reference is not None]
        if references:
            from webui.pipeline.vae import encode_pixels

            patches.append(ReferencePatch(references, model, lambda pixels: encode_pixels(model, pixels)))
        return patches

    @hookimpl
    def extra_infotext(self, request: Any) -> dict[str, Any] | None:
        try:
            units = units_from_request(request.alwayson_scripts)
        except RequestError:
            return None  # reported by unet_patches
        if not units or self.preprocessors is None or self.models is None:
            return None
        info = {}
        for i, unit in enumerate(units):
            try:
                pre = self.preprocessors.get(unit.module or "none")
                title = "None" if pre.name in REFERENCE_MODULES else self.models.find(unit.model).title
            except RequestError:  # an unknown model or preprocessor (UnknownChoice)
                return None
            res, a, b = pre.resolve_params(unit.processor_res if unit.processor_res > 0 else None,
                                           unit.threshold_a if unit.threshold_a >= 0 else None,
                                           unit.threshold_b if unit.threshold_b >= 0 else None)
            info[f"ControlNet {i}"] = unit_infotext(unit.with_(module=pre.name), title, res or -1,
                                                    a if a is not None else -1, b if b is not None else -1)
        return info

    @hookimpl
    def parse_infotext(self, params: Any, mode: str) -> dict[str, Any] | None:
        """``ControlNet N: "Module: ..., Model: ..."`` back into the section's unit controls (in order; the
        image is not in the infotext: the UI keeps the one shown, the API needs one unless img2img)."""
        units = units_from_infotext(params)
        if not units:
            return None
        count = int(self.ctx.options.current.get("control_net_unit_count", 3)) if self.ctx else len(units)
        return {section_field(SECTION, f"{i}_{key}"): value
                for i, unit in enumerate(units[:count]) for key, value in unit.items()}

    # --- HTTP API (sd-webui-controlnet's routes) -------------------------------------------------
    @hookimpl
    def api_routes(self, router: Any, ctx: Any) -> None:
        from fastapi import Body

        plugin = self

        @router.get("/controlnet/version", tags=["controlnet"])
        def version() -> dict:
            return {"version": API_VERSION}

        @router.get("/controlnet/model_list", tags=["controlnet"])
        def model_list(update: bool = True) -> dict:
            if update:
                plugin.models.refresh()
            return {"model_list": plugin.models.titles()}

        @router.get("/controlnet/module_list", tags=["controlnet"])
        def module_list(alias_names: bool = False) -> dict:
            procs = plugin.preprocessors.preprocessors()
            names = [p.display_name if alias_names else p.internal_name for p in procs]
            return {"module_list": names,
                    "module_detail": {(p.display_name if alias_names else p.internal_name): module_detail(p)
                                      for p in procs}}

        @router.get("/controlnet/control_types", tags=["controlnet"])
        def control_types() -> dict:
            types = plugin.preprocessors.control_types()
            types["control_types"].setdefault("T2I-Adapter", {"module_list": ["none"], "model_list": [],
                                                              "default_option": "none", "default_model": "None"})
            titles = plugin.models.titles()
            for name, entry in types["control_types"].items():
                entry["model_list"] = ["None", *[t for t in titles if _model_of_type(t, name)]]
            return types

        @router.get("/controlnet/settings", tags=["controlnet"])
        def settings() -> dict:
            return {"control_net_unit_count": int(ctx.options.current.get("control_net_unit_count", 3)),
                    "control_net_max_models_num": int(ctx.options.current.get("control_net_unit_count", 3))}

        @router.post("/controlnet/detect", tags=["controlnet"])
        def detect(body: dict = Body(...)) -> dict:  # noqa: B008 - FastAPI's parameter declaration
            module = body.get("controlnet_module", "none")
            images = body.get("controlnet_input_images") or []
            if not isinstance(images, list) or not images:
                raise RequestError("controlnet_input_images", "give a list of base64 images")
            masks = body.get("controlnet_masks") or []
            if not isinstance(masks, list) or (masks and len(masks) != len(images)):
                raise RequestError("controlnet_masks", "give one base64 mask per input image (or none)")
            out = []
            for i, data in enumerate(images):
                image = _decoder(data, f"controlnet_input_images[{i}]") if isinstance(data, str) else None
                if image is None:
                    raise RequestError(f"controlnet_input_images[{i}]", "must be a base64 image")
                try:
                    pre = plugin.preprocessors.get(module)
                    arr = np.asarray(image.convert("RGB"))
                    if pre.rgba:  # inpaint modules: the mask (its first channel) as alpha; none: nothing masked
                        mask = _decoder(masks[i], f"controlnet_masks[{i}]") if masks else None
                        try:
                            arr = rgba(image, mask)
                        except ValueError as exc:
                            raise RequestError(f"controlnet_masks[{i}]", str(exc)) from None
                    res = plugin.preprocessors.detect(arr, module, *_detect_params(pre, body))
                except UnknownChoice as exc:
                    raise exc.for_field("controlnet_module") from None
                if pre.rgba:  # sd-webui-controlnet's display image: LaMa's filled colour, else the masked picture
                    res = res[:, :, :3] if pre.name == "inpaint_only+lama" else \
                        np.asarray(shown_map(res.astype(np.float32)))
                buf = io.BytesIO()
                Image.fromarray(res).save(buf, format="PNG")
                out.append(base64.b64encode(buf.getvalue()).decode("ascii"))
            return {"images": out, "info": "Success"}

    # --- UI --------------------------------------------------------------------------------------
    @hookimpl
    def ui_sections(self, ctx: Any, mode: str) -> list[Any]:
        from webui.controlnet.section import controlnet_section

        return [controlnet_section(self, ctx, mode)]


#: sd-webui-controlnet's ``preprocessor_filters_aliases``: other spellings a model's name may carry for a control
#: type (a model belongs to a type when its name contains the type's name or one of these)
_TYPE_ALIASES = {"instructp2p": ("ip2p",), "segmentation": ("seg",), "normalmap": ("normal",),
                 "t2i-adapter": ("t2i_adapter", "t2iadapter", "t2ia"), "ip-adapter": ("ip_adapter", "ipadapter"),
                 "scribble/sketch": ("scribble", "sketch"), "tile/blur": ("tile", "blur"),
                 "openpose": ("openpose", "densepose")}


def _model_of_type(title: str, control_type: str) -> bool:
    """Whether a model is listed under ``control_type`` in ``/controlnet/control_types`` (sd-webui-controlnet's
    rule: "All" lists every model; else the lower-cased type name or one of its aliases is in the model's name)."""
    pattern, name = control_type.lower(), title.lower()
    return pattern == "all" or pattern in name or any(a in name for a in _TYPE_ALIASES.get(pattern, ()))


def _hires_size(request: Any) -> tuple[int, int] | None:
    """txt2img's hires-fix size (sd-webui-controlnet's ``high_res_fix``: txt2img with ``enable_hr``), or None."""
    if getattr(request, "mode", "") != "txt2img" or not getattr(request, "enable_hr", False):
        return None
    from webui.pipeline.request import hires_target

    return hires_target(request)


def _unfit(cn: Any, family: str, components: Any) -> str | None:
    """Why a model of the checkpoint's family (or a T2I-Adapter) still cannot steer this checkpoint, or None."""
    if is_ip_adapter(cn):
        return "IP-Adapters steer U-Nets only" if components.spec.is_flow else ip_mismatch(cn, components.unet)
    if is_style_adapter(cn):
        return "T2I-Adapters steer U-Nets only" if components.spec.is_flow else style_mismatch(cn, components.unet)
    if family == "t2i_adapter":
        from webui.controlnet.t2i_adapter import adapter_mismatch

        return "T2I-Adapters steer U-Nets only" if components.spec.is_flow else adapter_mismatch(cn, components.unet)
    if components.spec.is_flow:
        from webui.controlnet.flow_models import mismatch

        return mismatch(cn, components.unet)
    wanted = int(components.unet.config.cross_attention_dim)
    if int(cn.config.cross_attention_dim) != wanted:
        return f"it reads text {cn.config.cross_attention_dim} wide, the checkpoint's U-Net {wanted}"
    return None


def _sliders(pre: Any) -> list[tuple[str, Any]]:
    """The module's processor-resolution and threshold sliders by parameter name (None where it has none)."""
    return [("processor_res", pre.resolution if pre.uses_resolution else None), ("threshold_a", pre.threshold_a),
            ("threshold_b", pre.threshold_b)]


def _on_slider(pre: Any, name: str, slider: Any, value: float, shown: Any) -> Any:
    """``value`` when the slider allows it, else the slider's default, logged in sd-webui-controlnet's words
    (``[canny.threshold_a] Invalid value(-1.0), using default value 100.``; clients send -1 for "default")."""
    if slider.minimum <= value <= slider.maximum:
        return value
    default = int(slider.default) if float(slider.default).is_integer() else slider.default
    log.warning("[%s.%s] Invalid value(%s), using default value %s.", pre.name, name, shown, default)
    return slider.default


def _checked_params(pre: Any, unit: ControlUnit) -> tuple[Any, Any, Any]:
    """The unit's processor resolution and thresholds for ``pre`` (None for a slider the module does not have)."""
    out = []
    for name, slider in _sliders(pre):
        if slider is None:
            out.append(None)
            continue
        value = getattr(unit, name)
        value = _on_slider(pre, name, slider, value, int(value) if float(value).is_integer() else value)
        out.append(int(value) if name == "processor_res" else value)
    return out[0], out[1], out[2]


def _detect_params(pre: Any, body: dict) -> tuple[Any, Any, Any]:
    """``/controlnet/detect``'s processor resolution and thresholds: absent = the module's default (None)."""
    out = []
    for name, slider in _sliders(pre):
        value = _opt(body.get(f"controlnet_{name}"), allow_negative=True)
        if slider is None or value is None:
            out.append(None)
            continue
        out.append(_on_slider(pre, name, slider, value, int(value) if name == "processor_res" else float(value)))
    return out[0], out[1], out[2]


def _opt(value: Any, allow_negative: bool = False) -> float | None:
    if value is None or isinstance(value, bool):
        return None
    try:
        value = float(value)
    except (TypeError, ValueError):
        return None
    return None if value < 0 and not allow_negative else value


def make_plugin() -> ControlNetPlugin:
    return ControlNetPlugin()

