"""SD 3.x and FLUX.1 (issue 21): the files people download, detected from their weights, loaded offline, and
generating what diffusers' own pipelines generate on the same weights.

References, none of them our code: diffusers' ``StableDiffusion3Pipeline`` / ``FluxPipeline`` (same weights,
same starting noise, same sigmas through a shift-1 ``FlowMatchEulerDiscreteScheduler``), and diffusers' own
BFL converter (``convert_flux_transformer_checkpoint_to_diffusers``) with its hard-coded width 3072 made the
tiny model's, for our size-reading FLUX.1 converter.
"""

from __future__ import annotations

import base64
import inspect
import io
from pathlib import Path

import numpy as np
import pytest
import torch
from flow_models import (
    flux_to_bfl,
    lay_out_flux,
    save_flow_folder,
    save_flux_files,
    save_sd3_file,
    tiny_flux,
    tiny_sd3,
)
from PIL import Image
from safetensors.torch import save_file

from webui.errors import ModelError, RequestError
from webui.jobs import Job
from webui.models.flow_config import flux_to_diffusers
from webui.models.flow_loader import ModuleChoice
from webui.models.loader import load_components
from webui.models.manager import CheckpointInfo, LoadedModel
from webui.models.spec import family_of_file
from webui.pipeline.flow_model import pack_flux
from webui.pipeline.generate import generate
from webui.pipeline.noise import ImageRNG
from webui.pipeline.request import GenerationRequest
from webui.pipeline.sample import sigmas_for
from webui.sampling.flow import flow_schedule, model_shift


def _diffusers_flux_converter(transformer):
    """diffusers' ``convert_flux_transformer_checkpoint_to_diffusers`` with its fixed width (3072) replaced by
    ``transformer``'s."""
    from diffusers.loaders import single_file_utils as sfu

    source = inspect.getsource(sfu.convert_flux_transformer_checkpoint_to_diffusers)
    width = transformer.config.num_attention_heads * transformer.config.attention_head_dim
    assert "inner_dim = 3072" in source
    namespace = dict(vars(sfu))
    exec(source.replace("inner_dim = 3072", f"inner_dim = {width}"), namespace)  # noqa: S102 - diffusers' own code
    return namespace["convert_flux_transformer_checkpoint_to_diffusers"]


def _same_weights(a: torch.nn.Module, b: torch.nn.Module) -> None:
    sa, sb = a.state_dict(), b.state_dict()
    assert set(sa) == set(sb)
    assert all(torch.equal(sa[k], sb[k]) for k in sa), [k for k in sa if not torch.equal(sa[k], sb[k])][:3]


def _parts(c):
    return [c.unet, c.vae, *c.text_encoders, *([c.t5] if c.t5 is not None else [])]


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    root = tmp_path_factory.mktemp("flow")
    made = {"sd3": tiny_sd3(), "sd35": tiny_sd3(sd35=True, seed=7), "dev": tiny_flux(), "schnell": tiny_flux(dev=False)}
    out = {"sd3": save_sd3_file(made["sd3"], root / "sd3_medium_incl_clips_t5xxl.safetensors"),
           "sd35": save_sd3_file(made["sd35"], root / "sd3.5_medium.safetensors"),
           "dev": save_flux_files(made["dev"], root / "dev"),
           "schnell": save_flux_files(made["schnell"], root / "schnell", prefix="model.diffusion_model.")}
    return made, out


@pytest.mark.parametrize("name", ["sd3", "sd35"])
def test_sd3_single_file_is_detected_and_loads_every_part(files, name):
    made, out = files
    assert family_of_file(out[name]) == "sd3"
    loaded = load_components(out[name])
    assert loaded.spec.family == "sd3" and loaded.spec.prediction_type == "flow"
    for a, b in zip(_parts(made[name]), _parts(loaded), strict=True):
        _same_weights(a, b)
    assert loaded.vae_scaling_factor == pytest.approx(1.5305) and loaded.vae_shift_factor == pytest.approx(0.0609)


@pytest.mark.parametrize("name", ["dev", "schnell"])
def test_flux_transformer_file_takes_ae_clip_and_t5_from_the_module_folders(files, name):
    made, out = files
    paths = out[name]
    assert family_of_file(paths["transformer"]) == "flux"
    choice = ModuleChoice((), (paths["t5"], paths["clip_l"], paths["vae"]))  # automatic matching, any order
    loaded = load_components(paths["transformer"], modules=choice)
    assert loaded.spec.label == ("FLUX.1 dev" if name == "dev" else "FLUX.1 schnell")
    for a, b in zip(_parts(made[name]), _parts(loaded), strict=True):
        _same_weights(a, b)
    assert set(loaded.module_files) == {"VAE", "CLIP-L", "T5-XXL"}
    assert loaded.t5_tokenizer.model_max_length == (512 if name == "dev" else 256)


def test_our_flux_converter_equals_diffusers_converter_at_the_files_width(files):
    """diffusers' converter splits the fused weights at a fixed 3072; with that number set to the tiny
    model's width it is the reference for ours, which reads the width from the file."""
    made, _ = files
    transformer = made["dev"].unet
    bfl = flux_to_bfl(transformer)
    reference = _diffusers_flux_converter(transformer)(dict(bfl))
    ours = flux_to_diffusers(bfl)
    assert set(ours) == set(reference)
    assert all(torch.equal(ours[k], reference[k]) for k in ours)


def test_flux_all_in_one_file_and_diffusers_folders_load(files, tmp_path):
    made, _ = files
    c = made["dev"]
    from flow_models import _canonical_text_keys, _t5_weights

    from webui.models.original_layout import vae_to_original

    sd = {"model.diffusion_model." + k: v for k, v in flux_to_bfl(c.unet).items()}
    sd.update({"vae." + k: v.contiguous() for k, v in vae_to_original(c.vae).items()})
    sd.update({"text_encoders.clip_l.transformer." + k: v for k, v in _canonical_text_keys(c.text_encoders[0]).items()})
    sd.update({"text_encoders.t5xxl.transformer." + k: v for k, v in _t5_weights(c.t5).items()})
    save_file(sd, str(tmp_path / "flux1-dev-aio.safetensors"))
    for a, b in zip(_parts(c), _parts(load_components(tmp_path / "flux1-dev-aio.safetensors")), strict=True):
        _same_weights(a, b)
    for key in ("dev", "sd35"):
        folder = save_flow_folder(made[key], tmp_path / f"{key}-diffusers")
        loaded = load_components(folder)
        assert loaded.spec == made[key].spec
        for a, b in zip(_parts(made[key]), _parts(loaded), strict=True):
            _same_weights(a, b)


def test_missing_and_wrong_family_parts_are_named(files, tmp_path):
    made, out = files
    paths = out["dev"]
    with pytest.raises(ModelError, match=r"no VAE .*models/VAE"):
        load_components(paths["transformer"])
    with pytest.raises(ModelError, match=r"no T5-XXL .*models/text_encoder"):
        load_components(paths["transformer"], modules=ModuleChoice((), (paths["vae"], paths["clip_l"])))
    from webui.models.original_layout import vae_to_original
    from webui.models.tiny import build_tiny_components

    sdxl_vae = tmp_path / "sdxl_vae.safetensors"
    save_file({k: v.contiguous() for k, v in vae_to_original(build_tiny_components("sdxl").vae).items()},
              str(sdxl_vae))
    with pytest.raises(ModelError, match="4-channel VAE"):
        load_components(paths["transformer"], modules=ModuleChoice((sdxl_vae,), (paths["clip_l"], paths["t5"])))
    # an SD 3 file without T5 runs without it
    no_t5 = save_sd3_file(tiny_sd3(t5=False), tmp_path / "sd3_no_t5.safetensors")
    assert load_components(no_t5).t5 is None


def _model(c) -> LoadedModel:
    return LoadedModel(CheckpointInfo(Path("m.safetensors"), "m.safetensors"), "0" * 64, c, torch.device("cpu"),
                       torch.float32, 0.0)


CASES = {"sd3": lambda: tiny_sd3(), "sd3 without T5": lambda: tiny_sd3(t5=False, seed=3),
         "flux dev": lambda: tiny_flux(seed=1), "flux schnell": lambda: tiny_flux(dev=False, seed=2)}


#: diffusers' FlowMatchEulerDiscreteScheduler as the released models configure it (scheduler/scheduler_config.json of
#: stabilityai/stable-diffusion-3.5-large, black-forest-labs/FLUX.1-dev and FLUX.1-schnell)
SCHEDULER_CONFIGS = {
    "sd3": dict(shift=3.0),
    "flux dev": dict(shift=3.0, use_dynamic_shifting=True, base_shift=0.5, max_shift=1.15, base_image_seq_len=256,
                     max_image_seq_len=4096),
    "flux schnell": dict(shift=1.0, use_dynamic_shifting=False, base_shift=0.5, max_shift=1.15,
                         base_image_seq_len=256, max_image_seq_len=4096),
}


def reference_flow_sigmas(case: str, steps: int, width: int, height: int) -> torch.Tensor:
    """The "Simple" schedule (A1111 1.10 / Forge simple_scheduler, tests/schedule_oracle.py) over the model's 1000
    training sigmas as diffusers computes them: the scheduler's shifted sigmas, FLUX.1 dev's shifted by diffusers'
    ``time_shift`` with ``mu`` from FluxPipeline's ``calculate_shift`` of the image's 2x2-patch count."""
    from types import SimpleNamespace

    from diffusers import FlowMatchEulerDiscreteScheduler
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from tests.schedule_oracle import a1111_sigmas

    config = SCHEDULER_CONFIGS["sd3" if case.startswith("sd3") else case]
    scheduler = FlowMatchEulerDiscreteScheduler(**config)
    train = scheduler.sigmas.double().flip(0)  # ascending, like k-diffusion's model sigmas
    if config.get("use_dynamic_shifting"):
        mu = calculate_shift((width // 16) * (height // 16), config["base_image_seq_len"], config["max_image_seq_len"],
                             config["base_shift"], config["max_shift"])
        train = scheduler.time_shift(mu, 1.0, train)
    return a1111_sigmas("simple", steps, SimpleNamespace(sigmas=train.float()))


@pytest.mark.parametrize("case", list(CASES))
def test_txt2img_equals_the_diffusers_pipeline_on_the_same_weights(ctx, case):
    """Euler, CFG 4 with a negative prompt (FLUX.1: diffusers' ``true_cfg_scale``, distilled guidance 3.5),
    the same starting noise and sigmas: the images agree within 2/255, and the same seed repeats exactly."""
    c = CASES[case]()
    width, height, steps, cfg = 96, 64, 4, 4.0
    opts = ctx.options.current
    req = GenerationRequest(prompt="a red cube", negative_prompt="blurry", steps=steps, width=width, height=height,
                            seed=5, sampler_name="Euler", cfg_scale=cfg, save_images=False)
    result = generate(ctx.pipeline_env(), _model(c), req, Job(kind="txt2img"), opts)
    again = generate(ctx.pipeline_env(), _model(c), req, Job(kind="txt2img"), opts)
    ours = np.asarray(result.images[0], dtype=np.float32) / 255
    assert np.array_equal(np.asarray(result.images[0]), np.asarray(again.images[0]))
    sampler, schedule = ctx.samplers.resolve("Euler", "simple")
    sigmas = reference_flow_sigmas(case, steps, width, height)
    ours_sigmas = sigmas_for(sampler, schedule, steps, flow_schedule(*model_shift(c.spec, width, height),
                                                                     c.spec.family))
    # float32 on both sides, and our FLUX.1 mu is rounded to 4 decimals (it is written into the infotext as "Shift")
    torch.testing.assert_close(ours_sigmas.double(), sigmas.double(), rtol=5e-5, atol=1e-5)
    noise = ImageRNG((16, height // 8, width // 8), [5], device=torch.device("cpu"),
                     source=str(opts.get("randn_source", "GPU"))).first()
    kw = dict(prompt="a red cube", negative_prompt="blurry", num_inference_steps=steps, height=height, width=width,
              sigmas=sigmas[:-1].tolist(), output_type="np")
    if c.spec.family == "flux":
        kw.update(latents=pack_flux(noise), true_cfg_scale=cfg, guidance_scale=3.5,
                  max_sequence_length=c.t5_tokenizer.model_max_length)
    else:
        kw.update(latents=noise, guidance_scale=cfg)
    reference = c.diffusers_pipeline()(**kw).images[0]
    assert ours.shape == reference.shape == (height, width, 3)
    assert np.abs(ours - reference).max() <= 2 / 255
    assert ours.std() > 0.01  # not a flat image
    info = result.infotexts[0]
    assert "Schedule type: Simple" in info and "Shift: " in info
    assert ("Distilled CFG Scale: 3.5" in info) == (case == "flux dev")
    assert any("without T5-XXL" in w for w in result.warnings) == (case == "sd3 without T5")


def test_flux_dev_guidance_and_samplers(ctx):
    c = tiny_flux(seed=1)
    model, opts, env = _model(c), ctx.options.current, ctx.pipeline_env()

    def run(**kw):
        req = GenerationRequest(**{"prompt": "a cube", "steps": 3, "width": 64, "height": 64, "seed": 3,
                                   "sampler_name": "Euler", "cfg_scale": 1.0, "save_images": False, **kw})
        return np.asarray(generate(env, model, req, Job(kind="txt2img"), opts).images[0], dtype=int)

    base = run()
    assert not np.array_equal(base, run(distilled_cfg_scale=1.0))  # the guidance input reaches the model
    for sampler in ("Euler a", "DPM++ 2M", "Heun", "LMS", "DPM2"):  # every sampler offered for flow models
        image = run(sampler_name=sampler)
        assert np.array_equal(image, run(sampler_name=sampler)) and image.std() > 2
    with pytest.raises(RequestError, match="Euler, Euler a") as err:
        run(sampler_name="DDIM")
    assert err.value.field == "sampler_name"
    with pytest.raises(RequestError) as err:
        run(width=72)
    assert err.value.field == "width"


def test_cfg_rescale_on_a_flow_model_rescales_the_velocity_as_diffusers(ctx, monkeypatch):
    """On a flow model the U-Net's output is the velocity ``(x - denoised) / sigma``; CFG rescale is diffusers'
    ``rescale_noise_cfg`` applied to it (as to an epsilon model's noise), checked on every step's real values."""
    from diffusers.pipelines.stable_diffusion.pipeline_stable_diffusion import rescale_noise_cfg

    from webui.pipeline import guidance

    calls = []
    original = guidance.rescale_cfg

    def spy(x, sigma, positive, guided, phi, prediction_type):
        out = original(x, sigma, positive, guided, phi, prediction_type)
        calls.append((x, sigma, positive, guided, phi, out))
        return out

    monkeypatch.setattr(guidance, "rescale_cfg", spy)
    model, opts, env = _model(tiny_flux(seed=1)), ctx.options.current, ctx.pipeline_env()
    req = GenerationRequest(prompt="a cube", negative_prompt="a ball", steps=3, width=64, height=64, seed=3,
                            sampler_name="Euler", cfg_scale=4.0, cfg_rescale=0.7, save_images=False)
    generate(env, model, req, Job(kind="txt2img"), opts)
    assert len(calls) == 3
    for x, sigma, positive, guided, phi, out in calls:
        s = sigma.view(-1, 1, 1, 1).double()
        velocity = rescale_noise_cfg((x.double() - guided.double()) / s, (x.double() - positive.double()) / s,
                                     guidance_rescale=phi)
        assert torch.allclose(out.double(), x.double() - velocity * s, atol=1e-5)
        assert not torch.allclose(out, guided, atol=1e-3)  # the rescale did something


def test_flux_img2img_starts_from_the_image(ctx):
    from PIL import Image

    c = tiny_flux(seed=1)
    model, opts, env = _model(c), ctx.options.current, ctx.pipeline_env()
    init = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3)))

    def run(strength: float):
        req = GenerationRequest(prompt="a cube", steps=4, width=64, height=64, seed=3, sampler_name="Euler",
                                cfg_scale=1.0, save_images=False, mode="img2img", init_images=[init],
                                denoising_strength=strength)
        return np.asarray(generate(env, model, req, Job(kind="img2img"), opts).images[0], dtype=float)

    from webui.pipeline.vae import decode_latents, encode_pixels

    pixels = torch.from_numpy(np.asarray(init, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    round_trip = np.asarray(decode_latents(model, encode_pixels(model, pixels))[0], dtype=float)
    assert np.abs(run(0.0) - round_trip).max() <= 1  # strength 0: the image through the VAE, no step
    low, high = run(0.3), run(1.0)
    assert np.abs(low - round_trip).mean() < np.abs(high - round_trip).mean()


def test_flux_img2img_noises_the_image_latents_as_diffusers_scale_noise(ctx):
    """The first transformer input of an img2img run is diffusers' ``FlowMatchEulerDiscreteScheduler.scale_noise``
    of the image's latents at the first sigma of the schedule's tail (A1111's steps for strength 0.5)."""
    from diffusers import FlowMatchEulerDiscreteScheduler
    from PIL import Image

    from webui.pipeline.init_latents import img2img_steps
    from webui.pipeline.vae import encode_pixels

    c = tiny_flux(seed=4)
    model, opts = _model(c), ctx.options.current
    init = Image.fromarray((np.random.default_rng(0).random((64, 64, 3)) * 255).astype(np.uint8))
    seen: list[torch.Tensor] = []
    handle = c.unet.register_forward_pre_hook(lambda m, a, kw: seen.append(kw["hidden_states"].clone()),
                                              with_kwargs=True)
    try:
        req = GenerationRequest(prompt="a cube", steps=4, width=64, height=64, seed=3, sampler_name="Euler",
                                cfg_scale=1.0, save_images=False, mode="img2img", init_images=[init],
                                denoising_strength=0.5)
        generate(ctx.pipeline_env(), model, req, Job(kind="img2img"), opts)
    finally:
        handle.remove()
    pixels = torch.from_numpy(np.asarray(init, dtype=np.float32) / 127.5 - 1).permute(2, 0, 1)[None]
    x0 = encode_pixels(model, pixels)
    noise = ImageRNG((16, 8, 8), [3], device=torch.device("cpu"), source=str(opts.get("randn_source", "GPU"))).first()
    sampler, schedule = ctx.samplers.resolve("Euler", "simple")
    total, run = img2img_steps(4, 0.5, False)
    tail = sigmas_for(sampler, schedule, total, flow_schedule(*model_shift(c.spec, 64, 64), "flux"))[-run - 1:]
    scheduler = FlowMatchEulerDiscreteScheduler(shift=1.0)
    scheduler.set_timesteps(sigmas=tail[:-1].tolist())
    expected = scheduler.scale_noise(x0, scheduler.timesteps[:1], noise)
    assert len(seen) == run
    assert torch.allclose(seen[0], pack_flux(expected), atol=1e-5)


def test_api_flux_from_split_files_in_the_model_folders(tmp_path_factory):
    """As a Forge user lays them out: the transformer in models/Stable-diffusion, ae.safetensors in models/VAE,
    clip_l and t5xxl in models/text_encoder; listed, matched automatically, chosen by name, checked."""

    from conftest import api_only, make_settings
    from fastapi.testclient import TestClient

    from webui.context import build_context
    from webui.server import create_app

    models = tmp_path_factory.mktemp("models")
    lay_out_flux(save_flux_files(tiny_flux(seed=1), tmp_path_factory.mktemp("downloads")), models)
    ctx = build_context(make_settings(tmp_path_factory.mktemp("data"), models), load_model=False)
    client = TestClient(create_app(api_only(ctx)))
    listed = client.get("/sdapi/v1/sd-models").json()
    assert [m["family"] for m in listed] == ["flux"]
    assert {m["model_name"] for m in client.get("/sdapi/v1/sd-modules").json()} == {
        "ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors"}
    body = {"prompt": "a cube", "steps": 2, "width": 64, "height": 64, "seed": 1, "cfg_scale": 1,
            "sampler_name": "Euler", "save_images": False}
    ok = client.post("/sdapi/v1/txt2img", json=body)
    assert ok.status_code == 200, ok.text
    assert "Distilled CFG Scale: 3.5" in ok.json()["info"] and len(ok.json()["images"]) == 1
    import json as _json

    infotext = _json.loads(ok.json()["info"])["infotexts"][0]
    assert {"Module 1: ae.safetensors", "Module 2: clip_l.safetensors", "Module 3: t5xxl.safetensors"} <= {
        part.strip() for part in infotext.splitlines()[-1].split(",")}
    from webui.infotext import infotext_to_request, parse_infotext

    assert infotext_to_request(parse_infotext(infotext))["override_settings"]["forge_additional_modules"] == [
        "ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors"]
    again = client.post("/sdapi/v1/txt2img", json={"infotext": infotext, "save_images": False})
    assert again.status_code == 200 and again.json()["images"][0] == ok.json()["images"][0]
    chosen = client.post("/sdapi/v1/txt2img", json={**body, "distilled_cfg_scale": 2.0, "override_settings": {
        "forge_additional_modules": ["ae.safetensors", "clip_l.safetensors", "t5xxl.safetensors"]}})
    assert chosen.status_code == 200 and "Distilled CFG Scale: 2" in chosen.json()["info"]
    bad = client.post("/sdapi/v1/txt2img", json={**body, "sampler_name": "DDIM"})
    assert bad.status_code == 422 and "sampler_name" in bad.text and "Euler" in bad.text
    unknown = client.post("/sdapi/v1/txt2img", json={**body, "override_settings": {
        "forge_additional_modules": ["nope.safetensors"]}})
    assert unknown.status_code == 422 and "forge_additional_modules" in unknown.text
    assert client.post("/sdapi/v1/txt2img", json=body).status_code == 200  # and it keeps serving

    # X/Y/Z plot (A1111 1.10's 18 positional script_args, axis 4 = Steps), hires fix, inpainting
    xyz = client.post("/sdapi/v1/txt2img", json={**body, "script_name": "x/y/z plot", "script_args": [
        4, "1,2", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0, False]})
    assert xyz.status_code == 200, xyz.text
    assert Image.open(io.BytesIO(base64.b64decode(xyz.json()["images"][0]))).width == 128  # two 64px cells
    hires = client.post("/sdapi/v1/txt2img", json={**body, "enable_hr": True, "hr_scale": 1.5,
                                                    "hr_upscaler": "Latent", "denoising_strength": 0.5})
    assert hires.status_code == 200, hires.text
    assert Image.open(io.BytesIO(base64.b64decode(hires.json()["images"][0]))).size == (96, 96)
    init = Image.fromarray(np.tile(np.linspace(0, 255, 64, dtype=np.uint8)[None, :, None], (64, 1, 3)))
    mask = Image.new("L", (64, 64), 0)
    mask.paste(255, (0, 0, 32, 64))
    inpaint = client.post("/sdapi/v1/img2img", json={**body, "init_images": [_b64(init)], "mask": _b64(mask),
                                                     "mask_blur": 0, "denoising_strength": 0.9,
                                                     "inpainting_fill": 1})
    assert inpaint.status_code == 200, inpaint.text
    out = np.asarray(Image.open(io.BytesIO(base64.b64decode(inpaint.json()["images"][0]))).convert("RGB"), dtype=int)
    original = np.asarray(init, dtype=int)
    assert np.abs(out[:, 40:] - original[:, 40:]).max() <= 1  # outside the mask: the original
    assert np.abs(out[:, :24] - original[:, :24]).mean() > 5  # inside: painted anew


def _b64(image) -> str:
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    return base64.b64encode(buffer.getvalue()).decode()


def _random_lora(shapes: dict[str, torch.Size], rank: int = 4, seed: int = 0, peft: bool = False):
    """A random LoRA: kohya's ``lora_down`` / ``lora_up`` / ``alpha`` (or PEFT's ``lora_A`` / ``lora_B``, no
    alpha) for each named layer; also the weight change of each layer, computed here."""
    g = torch.Generator().manual_seed(seed)
    tensors, deltas = {}, {}
    for key, shape in shapes.items():
        down, up = torch.randn(rank, shape[1], generator=g) * 0.2, torch.randn(shape[0], rank, generator=g) * 0.2
        if peft:
            tensors[key + ".lora_A.weight"], tensors[key + ".lora_B.weight"] = down, up
            deltas[key] = up @ down
        else:
            tensors[key + ".lora_down.weight"], tensors[key + ".lora_up.weight"] = down, up
            tensors[key + ".alpha"] = torch.tensor(2.0)
            deltas[key] = up @ down * (2.0 / rank)
    return tensors, deltas


@pytest.mark.parametrize("family", ["flux", "sd3"])
def test_kohya_lora_on_original_names_equals_merging_in_the_original_layout(family, tmp_path):
    """A kohya LoRA names the original (fused) layers. Reference: add each change to the original-layout
    weights, then convert with diffusers' own converter; ours applies to the loaded diffusers modules."""
    from diffusers.loaders.single_file_utils import convert_sd3_transformer_checkpoint_to_diffusers
    from flow_models import sd3_to_stability

    from webui.networks.lora import apply_loras, read_lora

    c = tiny_flux(seed=6) if family == "flux" else tiny_sd3(sd35=True, seed=6)
    original = flux_to_bfl(c.unet) if family == "flux" else sd3_to_stability(c.unet)
    layers = (["double_blocks.0.img_attn.qkv", "double_blocks.0.txt_mlp.0", "single_blocks.1.linear1",
               "single_blocks.0.linear2", "double_blocks.0.img_mod.lin"] if family == "flux" else
              ["joint_blocks.0.x_block.attn.qkv", "joint_blocks.0.context_block.attn.qkv",
               "joint_blocks.0.x_block.attn2.qkv", "joint_blocks.1.x_block.mlp.fc1",
               "joint_blocks.0.x_block.attn.proj"])
    tensors, deltas = _random_lora({"lora_unet_" + n.replace(".", "_"): original[n + ".weight"].shape for n in layers})
    save_file(tensors, str(tmp_path / "lora.safetensors"))
    merged = dict(original)
    for name in layers:
        merged[name + ".weight"] = original[name + ".weight"] + deltas["lora_unet_" + name.replace(".", "_")] * 0.8
    convert = _diffusers_flux_converter(c.unet) if family == "flux" else convert_sd3_transformer_checkpoint_to_diffusers
    expected = convert(dict(merged))
    before = {k: v.clone() for k, v in c.unet.state_dict().items()}
    applied = apply_loras(c, [(read_lora(tmp_path / "lora.safetensors"), 1.0, 0.8)])
    assert not applied.unmatched
    after = c.unet.state_dict()
    changed = [k for k in after if not torch.equal(after[k], before[k])]
    assert len(changed) >= len(layers)
    for key, value in expected.items():
        assert torch.allclose(after[key], value, atol=1e-5), key
    applied.restore()
    assert all(torch.equal(c.unet.state_dict()[k], before[k]) for k in before)


def test_peft_lora_and_text_encoder_layers_on_flux(ctx, tmp_path):
    """ai-toolkit / diffusers files (``transformer.<diffusers name>.lora_A/B``) and kohya's text-encoder keys
    (``lora_te1_`` CLIP-L, ``lora_te2_`` T5) change exactly those weights; ``<lora:...>`` in a prompt changes the
    image and leaves the model as it was."""
    import dataclasses

    from webui.networks.lora import LoraRegistry, apply_loras, read_lora

    c = tiny_flux(seed=8)
    unet = dict(c.unet.named_modules())
    te = {"lora_te1_text_model_encoder_layers_0_self_attn_q_proj":
          c.text_encoders[0].text_model.encoder.layers[0].self_attn.q_proj if hasattr(c.text_encoders[0], "text_model")
          else c.text_encoders[0].encoder.layers[0].self_attn.q_proj,
          "lora_te2_encoder_block_0_layer_0_SelfAttention_q": c.t5.encoder.block[0].layer[0].SelfAttention.q}
    names = ["transformer_blocks.0.attn.to_k", "single_transformer_blocks.1.proj_mlp"]
    peft, deltas = _random_lora({"transformer." + n: unet[n].weight.shape for n in names}, peft=True)
    clip_v = (c.text_encoders[0].text_model if hasattr(c.text_encoders[0], "text_model")
              else c.text_encoders[0]).encoder.layers[1].self_attn.v_proj
    peft_te, peft_te_delta = _random_lora({"text_encoder.text_model.encoder.layers.1.self_attn.v_proj":
                                           clip_v.weight.shape}, peft=True, seed=2)
    peft.update(peft_te)
    clip_v_before = clip_v.weight.clone()
    kohya_te, te_deltas = _random_lora({k: m.weight.shape for k, m in te.items()}, seed=1)
    save_file({**peft, **kohya_te}, str(tmp_path / "style.safetensors"))
    before = {n: unet[n].weight.clone() for n in names}
    te_before = {k: m.weight.clone() for k, m in te.items()}
    applied = apply_loras(c, [(read_lora(tmp_path / "style.safetensors"), 0.5, 1.0)])
    assert not applied.unmatched
    for n in names:
        assert torch.allclose(unet[n].weight, before[n] + deltas["transformer." + n], atol=1e-6)
    for k, m in te.items():
        assert torch.allclose(m.weight, te_before[k] + te_deltas[k] * 0.5, atol=1e-6)
    assert torch.allclose(clip_v.weight, clip_v_before + next(iter(peft_te_delta.values())) * 0.5, atol=1e-6)
    applied.restore()
    env = dataclasses.replace(ctx.pipeline_env(), loras=LoraRegistry([tmp_path]))
    model, opts = _model(c), ctx.options.current

    def run(prompt: str):
        req = GenerationRequest(prompt=prompt, steps=2, width=64, height=64, seed=3, sampler_name="Euler",
                                cfg_scale=1.0, save_images=False)
        return generate(env, model, req, Job(kind="txt2img"), opts)

    plain = np.asarray(run("a cube").images[0])
    styled = run("a cube <lora:style:1>")
    assert not np.array_equal(plain, np.asarray(styled.images[0])) and 'Lora hashes: "style: ' in styled.infotexts[0]
    assert np.array_equal(plain, np.asarray(run("a cube").images[0]))


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_memory_modes_chain_t5_and_the_transformer_blocks_without_changing_a_pixel(ctx, mode):
    """--medvram / --lowvram on SD 3.x (hooks forced on here; on the CPU they are normally skipped): T5 joins
    the text encoders, lowvram chains the transformer's blocks; the image is the same."""
    from webui.models.offload import apply_memory_mode

    c = tiny_sd3(seed=9)
    model, opts = _model(c), ctx.options.current

    def image():
        req = GenerationRequest(prompt="a cube", negative_prompt="x", steps=2, width=64, height=64, seed=3,
                                sampler_name="Euler", cfg_scale=3.0, save_images=False)
        return generate(ctx.pipeline_env(), model, req, Job(kind="txt2img"), opts).images[0].tobytes()

    before = image()
    hooks = apply_memory_mode(c, mode, torch.device("cpu"), force=True)
    blocks = c.unet.config.num_layers
    assert len(hooks) == (3 + 1 + 1 if mode == "medvram" else 3 + blocks + 1)  # CLIP-L, CLIP-G, T5 ... VAE
    assert image() == before


def test_fp8_storage_keeps_transformer_and_t5_in_fp8(ctx, tmp_path):
    """Option fp8_storage = Enable on a FLUX.1 model: the transformer's and T5's Linear weights are stored
    as float8_e4m3fn and read back in the compute dtype; the image stays close to the full-precision one."""
    from webui.models.manager import HashCache, ModelManager

    c = tiny_flux(seed=10)
    model, opts = _model(c), ctx.options.current

    def image():
        req = GenerationRequest(prompt="a cube", steps=3, width=64, height=64, seed=3, sampler_name="Euler",
                                cfg_scale=1.0, save_images=False)
        return np.asarray(generate(ctx.pipeline_env(), model, req, Job(kind="txt2img"), opts).images[0], dtype=float)

    full = image()
    manager = ModelManager([], HashCache(tmp_path / "hashes.json"), torch.device("cpu"), torch.float32,
                           fp8_storage=lambda: "Enable")
    assert manager._prepare(c) is True
    t5_linear = c.t5.encoder.block[0].layer[0].SelfAttention.q
    assert t5_linear.parametrizations.weight.original.dtype == torch.float8_e4m3fn
    assert c.unet.transformer_blocks[0].attn.to_q.parametrizations.weight.original.dtype == torch.float8_e4m3fn
    stored = image()
    assert 0 < np.abs(stored - full).mean() < 4  # fp8 rounding, not a different image


def test_sdxl_style_embeddings_work_on_sd3s_clip_encoders(ctx, tmp_path):
    """SD 3.x's CLIP-L and CLIP-G are SDXL's pair: an embedding with ``clip_l`` / ``clip_g`` vectors of their
    widths is found by name, changes the image, and its hash is in the infotext."""
    import dataclasses

    from webui.networks.embeddings import EmbeddingDB

    c = tiny_sd3(seed=11)
    g = torch.Generator().manual_seed(0)
    save_file({"clip_l": torch.randn(2, c.text_encoders[0].config.hidden_size, generator=g),
               "clip_g": torch.randn(2, c.text_encoders[1].config.hidden_size, generator=g)},
              str(tmp_path / "sparkle.safetensors"))
    env = dataclasses.replace(ctx.pipeline_env(), embeddings=EmbeddingDB([tmp_path]))
    model, opts = _model(c), ctx.options.current

    req = GenerationRequest(prompt="a sparkle cube", steps=2, width=64, height=64, seed=3, sampler_name="Euler",
                            cfg_scale=1.0, save_images=False)
    styled = generate(env, model, req, Job(kind="txt2img"), opts)
    assert "TI hashes: " in styled.infotexts[0] and "sparkle" in styled.infotexts[0]
    env_without = dataclasses.replace(ctx.pipeline_env(), embeddings=EmbeddingDB([tmp_path / "none"]))
    without = generate(env_without, model, req, Job(kind="txt2img"), opts)
    assert not np.array_equal(np.asarray(styled.images[0]), np.asarray(without.images[0]))


def _comfy_euler_ancestral_rf(model, x, sigmas, noise_sampler, eta, s_noise):
    """ComfyUI's ``sample_euler_ancestral_RF`` (comfy/k_diffusion/sampling.py; Forge runs the same for flow models),
    restated: step down to ``sigma_down = sigma_next * (1 + (sigma_next / sigma - 1) * eta)`` along the line to
    the denoised picture, then rescale by ``alpha_next / alpha_down`` and add noise with
    ``sqrt(sigma_next^2 - sigma_down^2 alpha_next^2 / alpha_down^2)``; the last step (to 0) returns the denoised."""
    for i in range(len(sigmas) - 1):
        s, s_next = float(sigmas[i]), float(sigmas[i + 1])
        denoised = model(x, torch.full((x.shape[0],), s))
        if s_next == 0:
            x = denoised
            continue
        s_down = s_next * (1 + (s_next / s - 1) * eta)
        a_next, a_down = 1 - s_next, 1 - s_down
        coeff = (s_next ** 2 - s_down ** 2 * a_next ** 2 / a_down ** 2) ** 0.5
        x = (s_down / s) * x + (1 - s_down / s) * denoised
        if eta > 0:
            x = (a_next / a_down) * x + noise_sampler(sigmas[i], sigmas[i + 1]) * s_noise * coeff
    return x


def _noise_recorder(noise):
    """A noise sampler handing out ``noise`` in order and logging the interval of every draw."""
    draws, log = iter(noise), []

    def sampler(sigma, sigma_next):
        log.append((float(sigma), float(sigma_next)))
        return next(draws)

    return sampler, log


@pytest.mark.parametrize("eta,s_noise", [(1.0, 1.0), (0.5, 0.8), (0.0, 1.0), (None, None)])
def test_flow_euler_ancestral_equals_comfyui_rf_sampler(eta, s_noise):
    """(None, None): the function's defaults, which the pipeline relies on -- Euler a takes neither eta nor s_noise
    from A1111's sampler_extra_params, so it runs with k-diffusion's defaults, eta 1 and noise 1."""
    from webui.sampling.flow import sample_euler_ancestral_flow

    g = torch.Generator().manual_seed(4)
    x = torch.randn(2, 4, 8, 8, generator=g)
    sigmas = torch.tensor([1.0, 0.8, 0.55, 0.3, 0.1, 0.0])
    noise = [torch.randn(2, 4, 8, 8, generator=g) for _ in range(len(sigmas) - 1)]

    def model(z, sigma):  # any fixed denoiser: the two samplers must agree on it
        return z * (1 - sigma.view(-1, 1, 1, 1)) * 0.7 + 0.1

    steps: list[int] = []
    given = {k: v for k, v in (("eta", eta), ("s_noise", s_noise)) if v is not None}
    our_noise, our_draws = _noise_recorder(noise)
    ours = sample_euler_ancestral_flow(model, x.clone(), sigmas, noise_sampler=our_noise,
                                       callback=lambda i, *a: steps.append(i), **given)
    eta, s_noise = given.get("eta", 1.0), given.get("s_noise", 1.0)
    their_noise, their_draws = _noise_recorder(noise)
    expected = _comfy_euler_ancestral_rf(model, x.clone(), sigmas, their_noise, eta, s_noise)
    torch.testing.assert_close(ours, expected, rtol=1e-5, atol=1e-6)
    assert steps == list(range(len(sigmas) - 1))
    # the same draws over the same intervals: none on the last step (to 0), none at all with eta 0
    intervals = [(float(a), float(b)) for a, b in zip(sigmas[:-2], sigmas[1:-1])]
    assert our_draws == their_draws == (intervals if eta else [])
    if eta:
        assert not torch.allclose(ours, _comfy_euler_ancestral_rf(model, x.clone(), sigmas, _noise_recorder(noise)[0],
                                                                  0.0, 1.0))


def test_flow_models_take_flow_euler_a_and_simple_for_automatic():
    """Forge and ComfyUI run Euler a as its rectified-flow form on flow models, and "Automatic" as Simple; a schedule
    the request names is kept."""
    from webui.plugins import make_plugin_manager
    from webui.sampling import flow
    from webui.sampling.registry import SamplerRegistry

    hooks = make_plugin_manager(disable_extensions=True).hooks
    registry = SamplerRegistry(hooks.register_samplers(), hooks.register_schedules())
    for scheduler in ("Automatic", "automatic", "", None, "Karras"):  # A1111's label, its API name, or none given
        sampler, schedule = registry.resolve("Euler a", scheduler or "Automatic")
        flow_sampler, flow_schedule = flow.for_flow_model(sampler, schedule, scheduler, registry.schedules)
        assert flow_sampler.fn is flow.sample_euler_ancestral_flow
        assert flow_schedule.name == ("karras" if scheduler == "Karras" else "simple")
    euler, _ = registry.resolve("Euler", "Automatic")
    assert flow.for_flow_model(euler, None, "Automatic", registry.schedules)[0].fn is euler.fn


@pytest.mark.parametrize(("width", "height"), [(256, 256), (1024, 1024), (832, 1216), (1536, 1536)])
def test_flux_dev_shift_is_diffusers_calculate_shift_rounded_to_the_infotext(width, height):
    """FLUX.1 dev's ``mu``: FluxPipeline's ``calculate_shift`` of the 2x2-patch count with the released scheduler
    config (256 / 4096 tokens, shifts 0.5 / 1.15), linear beyond 4096 as there. The sampler runs ``mu`` rounded to
    the 4 decimals the infotext's ``Shift`` carries, so a pasted infotext reproduces the image."""
    from diffusers.pipelines.flux.pipeline_flux import calculate_shift

    from webui.models.spec import ModelSpec
    from webui.sampling.flow import flux_mu, model_shift

    config = SCHEDULER_CONFIGS["flux dev"]
    expected = calculate_shift((width // 16) * (height // 16), config["base_image_seq_len"],
                               config["max_image_seq_len"], config["base_shift"], config["max_shift"])
    assert flux_mu(width, height) == pytest.approx(expected, abs=1e-9)
    assert model_shift(ModelSpec("flux", distilled_guidance=True), width, height) == (round(expected, 4), True)
    assert model_shift(ModelSpec("flux"), width, height) == (1.0, False)  # schnell: no shift
