"""txt2img on every architecture, seeds, saving, interrupt, model switching and the default model."""

from __future__ import annotations

import datetime as dt
import re

import numpy as np
import pytest
import torch
from PIL import Image

from tests.conftest import make_settings
from webui.context import build_context
from webui.errors import ModelError
from webui.image_metadata import read_image_info
from webui.jobs import Job
from webui.models.original_layout import save_diffusers_folder, save_single_file
from webui.models.tiny import build_tiny_components
from webui.pipeline.request import GenerationRequest

SMALL = dict(prompt="a red circle", negative_prompt="green", steps=3, width=64, height=64, seed=11,
             sampler_name="Euler a", save_images=False)


@pytest.fixture(scope="module")
def family_dirs(tmp_path_factory):
    """One models folder per architecture, saved as users have them."""
    out = {}
    specs = {
        "sd1": dict(family="sd1"),
        "sd2-v": dict(family="sd2", prediction_type="v_prediction"),
        "sdxl": dict(family="sdxl"),
        "sd1-inpaint": dict(family="sd1", inpainting=True),
    }
    for name, kw in specs.items():
        root = tmp_path_factory.mktemp(name)
        (root / "Stable-diffusion").mkdir()
        comps = build_tiny_components(seed=3, **kw)
        md = {"modelspec.prediction_type": "v"} if kw.get("prediction_type") == "v_prediction" else None
        save_single_file(comps, root / "Stable-diffusion" / f"{name}.safetensors", metadata=md)
        out[name] = root
    root = tmp_path_factory.mktemp("sd2-folder")
    (root / "Stable-diffusion").mkdir()
    save_diffusers_folder(build_tiny_components("sd2", prediction_type="v_prediction", seed=3),
                          root / "Stable-diffusion" / "sd2-diffusers")
    out["sd2-folder"] = root
    return out


@pytest.mark.parametrize("name,label", [("sd1", "SD 1.x"), ("sd2-v", "v-prediction"), ("sdxl", "SDXL"),
                                        ("sd1-inpaint", "inpainting"), ("sd2-folder", "v-prediction")])
def test_each_architecture_generates(family_dirs, tmp_path, name, label):
    ctx = build_context(make_settings(tmp_path, family_dirs[name]), load_model=True)
    assert label in ctx.models.current.spec.label
    a = ctx.generate(GenerationRequest(**SMALL))
    b = ctx.generate(GenerationRequest(**SMALL))
    assert a.images[0].size == (64, 64)
    assert a.images[0].tobytes() == b.images[0].tobytes()
    arr = np.asarray(a.images[0])
    assert arr.std() > 0  # not a blank image


def test_sd2_single_file_and_diffusers_folder_agree(family_dirs, tmp_path):
    single = build_context(make_settings(tmp_path / "a", family_dirs["sd2-v"]), load_model=True)
    folder = build_context(make_settings(tmp_path / "b", family_dirs["sd2-folder"]), load_model=True)
    x = np.asarray(single.generate(GenerationRequest(**SMALL)).images[0], dtype=int)
    y = np.asarray(folder.generate(GenerationRequest(**SMALL)).images[0], dtype=int)
    assert np.abs(x - y).max() <= 1


def test_images_saved_with_a1111_names_and_infotext(fresh_ctx):
    res = fresh_ctx.generate(GenerationRequest(**{**SMALL, "save_images": True, "batch_size": 2}))
    today = dt.date.today().isoformat()
    names = [p.replace("\\", "/").rsplit("/", 3)[-3:] for p in res.paths]
    assert names == [["txt2img-images", today, "00000-11.png"], ["txt2img-images", today, "00001-12.png"]]
    text, _ = read_image_info(Image.open(res.paths[1]))
    assert text == res.infotexts[1] and "Seed: 12" in text
    again = fresh_ctx.generate(GenerationRequest(**{**SMALL, "save_images": True}))
    assert again.paths[0].endswith("00002-11.png")


def test_unwritable_output_folder_still_returns_the_image(tmp_path, models_root):
    ctx = build_context(make_settings(tmp_path, models_root), load_model=True)
    (tmp_path / "outputs").write_text("a file where the folder should be")
    res = ctx.generate(GenerationRequest(**{**SMALL, "save_images": True}))
    assert len(res.images) == 1 and res.paths == []
    assert res.warnings and "could not save" in res.warnings[0]


def test_interrupt_returns_what_is_done(ctx):
    job = Job()

    class Stopper:
        def __init__(self):
            self.n = 0

    from webui.pipeline.generate import generate

    stopper = Stopper()
    env = ctx.pipeline_env()
    orig = env.hooks.on_step_end

    def on_step_end(state):
        orig(state)
        stopper.n += 1
        if stopper.n == 2:
            state.job.interrupt()

    env.hooks.on_step_end = on_step_end  # type: ignore[method-assign]
    res = generate(env, ctx.models.current, GenerationRequest(**{**SMALL, "steps": 10, "n_iter": 3}), job,
                  ctx.options.current)
    assert stopper.n == 2 and res.interrupted and len(res.images) == 1
    assert job.sampling_step == 2


def test_corrupt_checkpoint_switch_keeps_old_model(tmp_path, tiny_sd1_file):
    root = tmp_path / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    (root / "Stable-diffusion" / "good.safetensors").write_bytes(tiny_sd1_file.read_bytes())
    data = tiny_sd1_file.read_bytes()
    (root / "Stable-diffusion" / "truncated.safetensors").write_bytes(data[: len(data) // 2])
    (root / "Stable-diffusion" / "empty.ckpt").write_bytes(b"")
    (root / "Stable-diffusion" / "page.safetensors").write_text("<html><body>Not found</body></html>")
    ctx = build_context(make_settings(tmp_path, root), load_model=False)
    ctx.models.ensure_loaded("good")
    for bad in ("truncated", "empty", "page"):
        with pytest.raises(ModelError) as e:
            ctx.models.ensure_loaded(bad)
        assert bad in str(e.value)
        assert ctx.models.current.info.model_name == "good"
    assert len(ctx.generate(GenerationRequest(**SMALL)).images) == 1


def test_no_checkpoint_uses_builtin_default(tmp_path):
    root = tmp_path / "empty-models"
    ctx = build_context(make_settings(tmp_path, root), load_model=True)
    assert ctx.models.using_builtin_default
    assert (root / "Stable-diffusion").is_dir()
    model = ctx.models.current
    assert model.info.builtin and model.spec.family == "sd1"
    res = ctx.generate(GenerationRequest(**SMALL))
    assert res.images[0].size == (64, 64)
    assert re.search(r"Model hash: [0-9a-f]{10}", res.infotexts[0])
    # the UI starts at the size the demo model was trained at (its metadata), not at SD's 512
    from safetensors import safe_open

    from webui.ui.app import build_ui

    with safe_open(str(model.info.path), framework="pt") as f:
        trained_at = int(f.metadata()["webui.native_size"])
    blocks = build_ui(ctx)
    sizes = {c.elem_id: c.value for c in blocks.blocks.values() if c.elem_id in ("txt2img_width", "txt2img_height")}
    assert sizes == {"txt2img_width": trained_at, "txt2img_height": trained_at}


def test_native_size_reads_the_checkpoint_metadata(tmp_path):
    from safetensors.torch import save_file

    from webui.models.default import DEFAULT_SIZE, native_size

    cases = {"96": 96, "": DEFAULT_SIZE, "abc": DEFAULT_SIZE, "0": DEFAULT_SIZE, "-64": DEFAULT_SIZE}
    for value, expected in cases.items():
        path = tmp_path / f"m{len(value)}{value}.safetensors"
        save_file({"x": torch.zeros(1)}, str(path), metadata={"webui.native_size": value} if value else None)
        assert native_size(path) == expected, value
    assert native_size(tmp_path / "missing.safetensors", fallback=7) == 7
    (tmp_path / "broken.safetensors").write_bytes(b"not a safetensors file")
    assert native_size(tmp_path / "broken.safetensors") == DEFAULT_SIZE


@pytest.mark.parametrize("sampler", ["Euler a", "DPM++ 2M", "DPM++ SDE", "DPM++ 2M SDE", "DDIM", "UniPC", "LMS"])
def test_sde_and_ancestral_images_do_not_depend_on_the_batch(ctx, sampler):
    req = dict(SMALL, sampler_name=sampler, steps=4)
    batch = ctx.generate(GenerationRequest(**{**req, "batch_size": 2}))
    alone = ctx.generate(GenerationRequest(**{**req, "seed": 12}))
    diff = np.abs(np.asarray(batch.images[1], dtype=int) - np.asarray(alone.images[0], dtype=int))
    assert diff.max() <= 2


def test_unknown_scheduler_lists_valid_names(ctx):
    from webui.errors import UnknownChoice

    with pytest.raises(UnknownChoice) as e:
        ctx.generate(GenerationRequest(**{**SMALL, "scheduler": "Nope"}))
    assert e.value.field == "scheduler" and "Karras" in e.value.choices and "Automatic" in e.value.choices


def _all_sampler_names():
    from webui.plugins import make_plugin_manager

    return [s.name for s in make_plugin_manager(disable_extensions=True).hooks.register_samplers()]


@pytest.fixture(scope="module")
def v_ctx(family_dirs, tmp_path_factory):
    return build_context(make_settings(tmp_path_factory.mktemp("v"), family_dirs["sd2-v"]), load_model=True)


@pytest.mark.parametrize("model", ["ctx", "v_ctx"], ids=["eps", "v-prediction"])
@pytest.mark.parametrize("sampler", _all_sampler_names())
def test_every_sampler_runs_through_the_pipeline(request, model, sampler):
    """Every sampler on a tiny eps- and a tiny v-prediction model: an image, the same one again for the same
    request (SDE samplers' Brownian noise is seeded), named in the infotext."""
    ctx = request.getfixturevalue(model)
    req = GenerationRequest(**{**SMALL, "sampler_name": sampler, "steps": 4})
    a, b = ctx.generate(req), ctx.generate(req)
    arr = np.asarray(a.images[0])
    assert arr.shape == (64, 64, 3) and arr.std() > 0
    assert a.images[0].tobytes() == b.images[0].tobytes()
    assert f"Sampler: {sampler}," in a.infotexts[0]


def test_txt2img_is_the_deprecated_name_of_generate(ctx):
    with pytest.warns(DeprecationWarning, match="AppContext.generate"):
        old = ctx.txt2img(GenerationRequest(**SMALL))
    assert old.images[0].tobytes() == ctx.generate(GenerationRequest(**SMALL)).images[0].tobytes()


def test_prompt_editing_switches_at_a1111s_step(ctx, monkeypatch):
    """A1111: "[cat:dog:2]" over 4 steps is the schedule [(2, cat), (4, dog)]; its CFG denoiser counts model calls
    from 0 and uses the first entry with ``call <= end_at_step`` (sd_samplers_cfg_denoiser / prompt_parser
    reconstruct_cond_batch), so calls 0-2 see "cat" and call 3 sees "dog"."""
    unet = ctx.models.current.components.unet
    real = unet.forward

    def run(prompt: str) -> list[torch.Tensor]:
        seen: list[torch.Tensor] = []

        def spy(x, t, encoder_hidden_states=None, *a, **kw):
            seen.append(encoder_hidden_states[0].detach().clone())  # the first image's conditional row
            return real(x, t, encoder_hidden_states, *a, **kw)

        monkeypatch.setattr(unet, "forward", spy)
        ctx.generate(GenerationRequest(prompt=prompt, steps=4, width=64, height=64, seed=3, sampler_name="Euler",
                                       save_images=False))
        return seen

    edited, cat, dog = run("[cat:dog:2]"), run("cat"), run("dog")
    assert len(edited) == 4 and not torch.equal(cat[0], dog[0])
    assert [torch.equal(e, c) for e, c in zip(edited, cat)] == [True, True, True, False]
    assert torch.equal(edited[3], dog[3])


def test_unet_patches_without_a_step_source_are_refused():
    # a ControlNet's guidance window needs the pass's step: without step_of it would silently act as step 0 of 1
    from webui.pipeline.guidance import cfg_denoiser

    with pytest.raises(ValueError, match="step_of"):
        cfg_denoiser(None, None, 7.0, 64, 64, 1, patches=[object()], sdxl_crop=(0, 0), downcast_alphas=False,
                     zero_terminal_snr=False, cfg_rescale=0.0, guidance=3.5)
