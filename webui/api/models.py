"""Pydantic request/response models with A1111's field names and defaults."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from webui.pipeline.request import (
    MAX_BATCH_COUNT,
    MAX_BATCH_SIZE,
    MAX_SEED,
    MAX_SIDE,
    MAX_STEPS,
)


class _Base(BaseModel):
    # Unknown fields are ignored (newer A1111 clients send more), NaN/inf are rejected.
    model_config = ConfigDict(extra="ignore", allow_inf_nan=False)


class Txt2ImgRequest(_Base):
    prompt: str = ""
    negative_prompt: str = ""
    styles: list[str] | None = None
    seed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed: int = Field(-1, ge=-1, le=MAX_SEED)
    subseed_strength: float = Field(0.0, ge=0.0, le=1.0)
    seed_resize_from_h: int = -1
    seed_resize_from_w: int = -1
    sampler_name: str | None = None
    sampler_index: str | None = Field(None, description="legacy alias of sampler_name")
    scheduler: str | None = None
    batch_size: int = Field(1, ge=1, le=MAX_BATCH_SIZE)
    n_iter: int = Field(1, ge=1, le=MAX_BATCH_COUNT)
    steps: int = Field(50, ge=1, le=MAX_STEPS)
    cfg_scale: float = Field(7.0, ge=0.0, le=100.0)
    cfg_rescale: float | None = Field(None, ge=0.0, le=1.0, description=(
        "CFG rescale φ (not in A1111 itself; its extensions' infotext key \"CFG Rescale φ\"); None: 0.7 for "
        "zero-terminal-SNR v-prediction checkpoints, else 0"))
    distilled_cfg_scale: float = Field(3.5, ge=0.0, le=100.0, description=(
        "FLUX.1 dev's distilled guidance (Forge's field and infotext key \"Distilled CFG Scale\"); ignored by "
        "other models"))
    width: int = Field(512, ge=64, le=MAX_SIDE, multiple_of=8)
    height: int = Field(512, ge=64, le=MAX_SIDE, multiple_of=8)
    restore_faces: bool | None = None
    tiling: bool | None = None
    do_not_save_samples: bool = False
    do_not_save_grid: bool = False
    eta: float | None = None
    denoising_strength: float | None = Field(None, ge=0.0, le=1.0)
    s_min_uncond: float | None = None
    s_churn: float | None = None
    s_tmax: float | None = None
    s_tmin: float | None = None
    s_noise: float | None = None
    override_settings: dict[str, Any] | None = None
    override_settings_restore_afterwards: bool = True
    refiner_checkpoint: str | None = None
    refiner_switch_at: float | None = None
    disable_extra_networks: bool = False
    comments: dict[str, Any] | None = None
    enable_hr: bool = False
    firstphase_width: int = 0
    firstphase_height: int = 0
    hr_scale: float = Field(2.0, ge=1.0, le=8.0)
    hr_upscaler: str | None = None
    hr_second_pass_steps: int = Field(0, ge=0, le=MAX_STEPS)
    hr_resize_x: int = Field(0, ge=0, le=MAX_SIDE)
    hr_resize_y: int = Field(0, ge=0, le=MAX_SIDE)
    hr_checkpoint_name: str | None = None
    hr_sampler_name: str | None = None
    hr_scheduler: str | None = None
    hr_prompt: str = ""
    hr_negative_prompt: str = ""
    force_task_id: str | None = None
    script_name: str | None = None
    script_args: list[Any] | dict[str, Any] = Field(default_factory=list)
    send_images: bool = True
    save_images: bool = False
    alwayson_scripts: dict[str, Any] = Field(default_factory=dict)
    infotext: str | None = None


class Img2ImgRequest(Txt2ImgRequest):
    init_images: list[str] = Field(default_factory=list, description="base64 images (data: URI prefix allowed)")
    resize_mode: int = Field(0, ge=0, le=3)
    denoising_strength: float = Field(0.75, ge=0.0, le=1.0)
    image_cfg_scale: float | None = None
    mask: str | None = None
    mask_blur_x: int = Field(4, ge=0, le=64)
    mask_blur_y: int = Field(4, ge=0, le=64)
    mask_blur: int | None = Field(None, ge=0, le=64)
    mask_round: bool = True
    inpainting_fill: int = Field(0, ge=0, le=3, description="0 fill, 1 original, 2 latent noise, 3 latent nothing")
    inpaint_full_res: bool = Field(True, description="inpaint area: true = only masked, false = whole picture")
    inpaint_full_res_padding: int = Field(0, ge=0, le=MAX_SIDE)
    inpainting_mask_invert: int = Field(0, ge=0, le=1)
    initial_noise_multiplier: float | None = Field(None, ge=0.0, le=2.0)
    include_init_images: bool = False


class ImageResponse(BaseModel):
    images: list[str] | None = Field(None, description="base64 PNG images")
    parameters: dict[str, Any]
    info: str = Field(..., description="JSON string with generation details")


class PngInfoRequest(_Base):
    image: str = Field(..., description="base64 image, with or without a data: URI prefix")


class PngInfoResponse(BaseModel):
    info: str
    items: dict[str, Any]
    parameters: dict[str, Any]


class ProgressState(BaseModel):
    skipped: bool = False
    interrupted: bool = False
    stopping_generation: bool = False
    job: str = ""
    job_count: int = 0
    job_timestamp: str = ""
    job_no: int = 0
    sampling_step: int = 0
    sampling_steps: int = 0


class ProgressResponse(BaseModel):
    progress: float
    eta_relative: float
    state: ProgressState
    current_image: str | None = None
    textinfo: str | None = None


class SamplerItem(BaseModel):
    name: str
    aliases: list[str]
    options: dict[str, Any]


class SchedulerItem(BaseModel):
    name: str
    label: str
    aliases: list[str] | None
    default_rho: float
    need_inner_model: bool


class SDModuleItem(BaseModel):
    """Forge's ``/sd-modules`` entry: a VAE or text-encoder file."""

    model_name: str
    filename: str = Field(description="absolute path")


class SDModelItem(BaseModel):
    title: str
    model_name: str
    hash: str | None
    sha256: str | None
    filename: str
    config: str | None = None
    family: str | None = Field(None, description="not in A1111: sd1, sd2 or sdxl (read from the file's header)")


class ExtrasBase(_Base):
    resize_mode: int = Field(0, ge=0, le=1, description="0: scale by upscaling_resize, 1: scale to w x h")
    show_extras_results: bool = True
    gfpgan_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_visibility: float = Field(0.0, ge=0.0, le=1.0)
    codeformer_weight: float = Field(0.0, ge=0.0, le=1.0)
    upscaling_resize: float = Field(2.0, gt=0.0, le=16.0)
    upscaling_resize_w: int = Field(512, ge=1, le=8192)
    upscaling_resize_h: int = Field(512, ge=1, le=8192)
    upscaling_crop: bool = True
    upscaler_1: str | None = "None"
    upscaler_2: str | None = "None"
    extras_upscaler_2_visibility: float = Field(0.0, ge=0.0, le=1.0)
    upscale_first: bool = False


class ExtrasSingleImageRequest(ExtrasBase):
    image: str = Field(..., description="base64 image, with or without a data: URI prefix")


class ExtrasSingleImageResponse(BaseModel):
    image: str | None
    html_info: str


class FileData(_Base):
    data: str = Field(..., description="base64 image")
    name: str = ""


class ExtrasBatchImagesRequest(ExtrasBase):
    imageList: list[FileData] = Field(..., description="images to process")  # noqa: N815 - A1111's name


class ExtrasBatchImagesResponse(BaseModel):
    images: list[str]
    html_info: str


class FaceRestorerItem(BaseModel):
    name: str
    cmd_dir: str | None = None


class RealesrganItem(BaseModel):
    name: str
    path: str | None = None
    scale: float | None = None


class UpscalerItem(BaseModel):
    name: str
    model_name: str | None
    model_path: str | None
    model_url: str | None
    scale: float | None


class LatentUpscaleModeItem(BaseModel):
    name: str


class PromptStyleItem(BaseModel):
    name: str
    prompt: str | None
    negative_prompt: str | None


class ErrorResponse(BaseModel):
    error: str
    detail: Any
    body: Any = None
    errors: Any = None
