"""Pipeline parity per family (issue 29): our txt2img, img2img and inpainting with Euler give what diffusers' own
pipelines give on the same weights and the same starting noise, within 2/255 per pixel.

References, none of them our code: ``StableDiffusionPipeline`` (SD 1.x, SD 2.x v-prediction),
``StableDiffusionXLPipeline``, ``StableDiffusionImg2ImgPipeline``, ``StableDiffusionXLImg2ImgPipeline`` and
``StableDiffusionInpaintPipeline`` (a 9-channel inpainting U-Net and a normal one). The sigmas are diffusers' own:
its ``EulerDiscreteScheduler`` with Karras sigmas over the model's whole range (``timestep_spacing="linspace"``
makes the ramp end at sigma(t=0), as k-diffusion's ``get_sigmas_karras(sigma_min, sigma_max)`` in A1111's
"Karras" schedule does). The starting noise is ours (``ImageRNG``, A1111's per-seed draws), handed to diffusers
as ``latents`` or in place of its ``randn_tensor``.

Where the product follows A1111 and A1111 deliberately differs from diffusers, the test says so and checks the
difference itself:

- img2img steps: A1111 (``sd_samplers_common.setup_img2img_steps`` and ``sd_samplers_kdiffusion.sample_img2img``,
  ``sigma_sched = sigmas[steps - t_enc - 1:]``) runs the last ``int(strength * steps) + 1`` steps of a ``steps``
  schedule; diffusers (``get_timesteps``) runs the last ``int(strength * steps)``. The runs are compared at
  diffusers' strength ``(int(strength * steps) + 1) / steps``, and the step counts of both rules are asserted.
- VAE encoding: diffusers samples the posterior (random without a generator); the product takes its mean
  (``webui/pipeline/vae.py``), so diffusers' posterior is made to answer its mean here.
- Inpainting: A1111 (``processing.py`` img2img ``sample`` and ``sd_samplers_cfg_denoiser``) blends the original
  latent into the denoised prediction where the mask is 0 at every step, for every U-Net, and once more after the
  last step; diffusers blends its re-noised original into the latents after each step, and only for 4-channel
  U-Nets. With Euler and a binary latent mask both keep ``x0 + sigma * noise`` there, so the 4-channel runs agree
  as they are; for the 9-channel U-Net the test applies A1111's rule in diffusers' step callback. A1111 then
  pastes the original pixels over every unmasked pixel (the overlay); diffusers does not, so the masked pixels
  are compared with diffusers' and the unmasked ones with the original picture.
- ``inpainting_mask_weight`` (A1111 ``img2img_image_conditioning``): the 9-channel U-Net's masked image is
  ``lerp(image, image * (1 - mask), weight)``; at weight 1 it is diffusers' ``image * (mask < 0.5)``, at 0.5 the
  test hands diffusers that picture as ``masked_image_latents`` (diffusers encodes a 3-channel one itself).
- SD 2.x conditioning is the OpenCLIP encoder's penultimate layer plus the final norm; diffusers' convention for
  SD 2.x is an encoder without its last layer (its single-file reader drops it), which diffusers gets here.
"""

from __future__ import annotations

import copy
import functools
from pathlib import Path

import diffusers
import numpy as np
import pytest
import torch
from diffusers import EulerDiscreteScheduler
from diffusers.models.autoencoders.vae import DiagonalGaussianDistribution
from PIL import Image

from tests.conftest import StepRecorder, registered
from webui.jobs import Job
from webui.models.components import scheduler_config
from webui.models.manager import CheckpointInfo, LoadedModel
from webui.models.tiny import build_tiny_components
from webui.pipeline.generate import generate
from webui.pipeline.noise import ImageRNG
from webui.pipeline.request import GenerationRequest

SIZE, STEPS, CFG, SEED = 64, 4, 5.0, 7
PROMPT = "a red cube on a table"
TOLERANCE = 2 / 255

FAMILIES = {"sd1": dict(family="sd1"), "sd2-v": dict(family="sd2", prediction_type="v_prediction"),
            "sdxl": dict(family="sdxl"), "sd1-inpainting": dict(family="sd1", inpainting=True)}


@pytest.fixture(scope="module")
def tiny():
    """``tiny(name)``: the tiny model of a family, built once per module on first use."""
    return functools.cache(lambda name: build_tiny_components(seed=3, **FAMILIES[name]))


@pytest.fixture
def diffusers_draws(monkeypatch):
    """``use(noise)``: diffusers' img2img/inpaint pipelines draw ``noise`` and take the VAE posterior's mean."""
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_img2img as sd_img2img
    from diffusers.pipelines.stable_diffusion import pipeline_stable_diffusion_inpaint as sd_inpaint
    from diffusers.pipelines.stable_diffusion_xl import pipeline_stable_diffusion_xl_img2img as xl_img2img

    def use(noise: torch.Tensor) -> None:
        monkeypatch.setattr(DiagonalGaussianDistribution, "sample", lambda self, generator=None: self.mode())
        for module in (sd_img2img, sd_inpaint, xl_img2img):
            monkeypatch.setattr(module, "randn_tensor", lambda *args, **kwargs: noise.clone())

    return use


def _loaded(c) -> LoadedModel:
    return LoadedModel(CheckpointInfo(Path("m.safetensors"), "m.safetensors"), "0" * 64, c, torch.device("cpu"),
                       torch.float32, 0.0)


def _ours(ctx, c, opts=None, **kw) -> tuple[np.ndarray, int]:
    """Our image (floats in [0, 1]) and the number of sampling steps run."""
    req = GenerationRequest(**{"prompt": PROMPT, "steps": STEPS, "width": SIZE, "height": SIZE, "seed": SEED,
                               "sampler_name": "Euler", "scheduler": "Karras", "cfg_scale": CFG,
                               "save_images": False, **kw})
    with registered(ctx, StepRecorder(lambda state: state.step), "parity-steps") as steps:
        result = generate(ctx.pipeline_env(), _loaded(c), req, Job(kind=req.mode), opts or ctx.options.current)
    return np.asarray(result.images[0], dtype=np.float32) / 255, len(steps.seen)


def _noise(ctx, c) -> torch.Tensor:
    """The run's first noise draw (A1111's per-seed generator, option ``randn_source``)."""
    shape = (c.latent_channels, SIZE // 8, SIZE // 8)
    return ImageRNG(shape, [SEED], device=torch.device("cpu"),
                    source=str(ctx.options.current.get("randn_source", "GPU"))).first()


def _pipeline(c, cls=None):
    """diffusers' pipeline ``cls`` (default: txt2img, or inpainting for inpainting U-Nets) on ``c``'s modules, with
    Euler on Karras sigmas."""
    base = c.diffusers_pipeline()
    pipe = base if cls is None or isinstance(base, cls) else cls(
        **base.components, **({} if c.spec.family == "sdxl" else {"requires_safety_checker": False}))
    config = {**scheduler_config(c.spec.prediction_type), "timestep_spacing": "linspace", "use_karras_sigmas": True}
    pipe.scheduler = EulerDiscreteScheduler.from_config(config)
    if c.spec.family == "sd2":  # diffusers' SD 2.x convention: the OpenCLIP encoder without its last layer
        encoder = copy.deepcopy(c.text_encoders[0])
        encoder.encoder.layers = encoder.encoder.layers[:-1]
        encoder.config.num_hidden_layers -= 1
        pipe.text_encoder = encoder
    pipe.set_progress_bar_config(disable=True)
    return pipe


def _picture() -> Image.Image:
    """A 64x64 picture with edges and gradients (a smooth random field plus a bright disc)."""
    rng = np.random.default_rng(2)
    coarse = rng.random((8, 8, 3))
    field = np.asarray(Image.fromarray((coarse * 255).astype(np.uint8)).resize((SIZE, SIZE), Image.BICUBIC), float)
    y, x = np.mgrid[0:SIZE, 0:SIZE]
    field[(x - 40) ** 2 + (y - 24) ** 2 < 12 ** 2] = (250, 240, 60)
    return Image.fromarray(field.clip(0, 255).astype(np.uint8))


def _assert_same(ours: np.ndarray, reference: np.ndarray) -> None:
    assert ours.shape == reference.shape
    assert np.abs(ours - reference).max() <= TOLERANCE, np.abs(ours - reference).max() * 255
    assert ours.std() > 0.05  # a picture, not a flat or saturated field


@pytest.mark.parametrize("name, negative", [("sd1", "blurry"), ("sd2-v", "blurry"), ("sdxl", "blurry"),
                                            ("sdxl", "")])
def test_txt2img_equals_the_diffusers_pipeline(ctx, tiny, name, negative):
    """SD 1.x, SD 2.x v-prediction and SDXL (diffusers' added conditioning: original = target size = the image's,
    crop (0, 0)). An empty SDXL negative prompt is zeros in A1111 (``sd_models_xl``, ``force_zero_embeddings``)
    and in diffusers (``force_zeros_for_empty_prompt`` when ``negative_prompt`` is None)."""
    c = tiny(name)
    ours, steps = _ours(ctx, c, negative_prompt=negative)
    reference = _pipeline(c)(prompt=PROMPT, negative_prompt=negative or None, num_inference_steps=STEPS,
                             height=SIZE, width=SIZE, guidance_scale=CFG, latents=_noise(ctx, c),
                             output_type="np").images[0]
    assert steps == STEPS
    _assert_same(ours, reference)


@pytest.mark.parametrize("name", ["sd1", "sd2-v", "sdxl"])
def test_img2img_equals_the_diffusers_pipeline_at_a1111s_step_count(ctx, tiny, diffusers_draws, name):
    c = tiny(name)
    strength = 0.5
    ours, steps = _ours(ctx, c, negative_prompt="blurry", mode="img2img", init_images=(_picture(),),
                        denoising_strength=strength)
    cls = diffusers.StableDiffusionXLImg2ImgPipeline if c.spec.family == "sdxl" \
        else diffusers.StableDiffusionImg2ImgPipeline
    pipe = _pipeline(c, cls)
    # the deliberate difference: A1111 runs one step more than diffusers for the same strength
    pipe.scheduler.set_timesteps(STEPS)
    assert pipe.get_timesteps(STEPS, strength, "cpu")[1] == int(strength * STEPS) == 2
    assert steps == int(strength * STEPS) + 1 == 3
    diffusers_draws(_noise(ctx, c))
    seen: list[int] = []
    reference = pipe(prompt=PROMPT, negative_prompt="blurry", image=_picture(), strength=steps / STEPS,
                     num_inference_steps=STEPS, guidance_scale=CFG, output_type="np",
                     callback_on_step_end=lambda p, i, t, kw: seen.append(i) or kw).images[0]
    assert len(seen) == steps
    _assert_same(ours, reference)


#: x1, y1, x2, y2 of the repainted box: on the 8-pixel latent grid, or off it
MASKS = {"on-grid": (16, 16, 40, 48), "off-grid": (13, 19, 45, 42)}


def _mask(box) -> Image.Image:
    arr = np.zeros((SIZE, SIZE), np.uint8)
    x1, y1, x2, y2 = box
    arr[y1:y2, x1:x2] = 255
    return Image.fromarray(arr)


def _a1111_blend(c, noise: torch.Tensor, mask: Image.Image):
    """A1111's inpainting rule in diffusers' step callback (9-channel U-Nets, where diffusers does not blend):
    where A1111's latent mask (the mask resized to the latent size with PIL's default bicubic filter, then
    rounded) is 0, the latents stay the original's at the next sigma, ``x0 + sigma * noise``."""
    pixels = torch.from_numpy(np.asarray(_picture(), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    with torch.no_grad():
        x0 = c.vae.encode(pixels).latent_dist.mode() * c.vae.config.scaling_factor
    small = mask.convert("RGB").resize((x0.shape[-1], x0.shape[-2]), Image.BICUBIC)
    repaint = torch.from_numpy(np.around(np.asarray(small, np.float32)[..., 0] / 255))[None, None]

    def on_step_end(pipe, i, t, kwargs):
        sigma = pipe.scheduler.sigmas[pipe.scheduler.step_index]
        kwargs["latents"] = (1 - repaint) * (x0 + sigma * noise) + repaint * kwargs["latents"]
        return kwargs

    return on_step_end


@pytest.mark.parametrize("name, weight, grid", [("sd1", 1.0, "on-grid"), ("sd1-inpainting", 1.0, "off-grid"),
                                               ("sd1-inpainting", 0.5, "off-grid")])
def test_inpainting_equals_the_diffusers_pipeline_inside_the_mask(ctx, tiny, diffusers_draws, name, weight, grid):
    """Masked content "original", whole picture, no mask blur: inside the mask our pixels are diffusers'; outside
    they are the original picture's (A1111's overlay), where diffusers' are the VAE's round trip. The 4-channel
    run takes a mask on the latent grid: off it A1111's latent mask (bicubic, rounded) and diffusers' (nearest)
    differ; the 9-channel runs take one off the grid, which the U-Net's mask input (nearest in both) must
    follow."""
    c = tiny(name)
    mask = _mask(MASKS[grid])
    opts = ctx.options.current.replaced({"inpainting_mask_weight": weight})
    ours, steps = _ours(ctx, c, opts, negative_prompt="blurry", mode="img2img", init_images=(_picture(),),
                        mask=mask, mask_blur_x=0, mask_blur_y=0, inpainting_fill=1, inpaint_full_res=False,
                        denoising_strength=0.5)
    noise = _noise(ctx, c)
    diffusers_draws(noise)
    pipe = _pipeline(c, diffusers.StableDiffusionInpaintPipeline)
    kw = {}
    if c.spec.inpainting:
        kw["callback_on_step_end"] = _a1111_blend(c, noise, mask)
        if weight != 1.0:  # A1111: lerp(image, image * (1 - mask), weight), in [-1, 1]
            pixels = torch.from_numpy(np.asarray(_picture(), np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
            repaint = torch.from_numpy(np.asarray(mask, np.float32) / 255)[None, None]
            kw["masked_image_latents"] = torch.lerp(pixels, pixels * (1 - repaint), weight)
    reference = pipe(prompt=PROMPT, negative_prompt="blurry", image=_picture(), mask_image=mask,
                     strength=steps / STEPS, num_inference_steps=STEPS, guidance_scale=CFG, height=SIZE, width=SIZE,
                     output_type="np", **kw).images[0]
    inside = np.asarray(mask) > 0
    _assert_same(ours[inside], reference[inside])
    original = np.asarray(_picture(), np.float32) / 255
    assert np.array_equal(ours[~inside], original[~inside])
    assert np.abs(reference[~inside] - original[~inside]).max() > 4 / 255  # diffusers leaves no overlay


@pytest.mark.parametrize("name", ["sd1", "sd2-v"])
def test_cfg_rescale_equals_diffusers_guidance_rescale(ctx, tiny, name):
    """"CFG Rescale φ" (A1111 extensions, Forge) is diffusers' ``guidance_rescale`` (Lin et al. 2024, eq. 16) applied
    to the model's own outputs (noise or v) after CFG."""
    c = tiny(name)
    ours, _ = _ours(ctx, c, negative_prompt="blurry", cfg_rescale=0.7)
    reference = _pipeline(c)(prompt=PROMPT, negative_prompt="blurry", num_inference_steps=STEPS, height=SIZE,
                             width=SIZE, guidance_scale=CFG, guidance_rescale=0.7, latents=_noise(ctx, c),
                             output_type="np").images[0]
    _assert_same(ours, reference)
    plain, _ = _ours(ctx, c, negative_prompt="blurry")
    assert np.abs(plain - ours).max() > 2 * TOLERANCE  # the rescale changed the picture


def test_cfg_rescale_with_and_parts_rescales_their_weighted_sum(ctx, tiny):
    """With AND, the guided prediction is neg + sum(w_i (part_i - neg)) * cfg (A1111's combine_denoised) and CFG
    rescale's "positive" is neg + sum(w_i (part_i - neg)): "x :0.5 AND x :0.5" is the same picture as "x"."""
    c = tiny("sd1")
    single, _ = _ours(ctx, c, negative_prompt="blurry", cfg_rescale=0.7)
    halves, _ = _ours(ctx, c, prompt=f"{PROMPT} :0.5 AND {PROMPT} :0.5", negative_prompt="blurry", cfg_rescale=0.7)
    assert np.abs(single - halves).max() <= 1 / 255
