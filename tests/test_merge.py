"""Checkpoint merger: A1111's formulas on real tensors, VAE baking, metadata, safety, UI endpoint."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import torch
from safetensors import safe_open

from webui.errors import RequestError
from webui.models.merge import MergeRequest, legacy_hash, merge_checkpoints
from webui.models.safeload import read_state_dict

CONV_IN = "model.diffusion_model.input_blocks.0.0.weight"
SOME_KEYS = (CONV_IN, "model.diffusion_model.out.2.weight",
             "cond_stage_model.transformer.text_model.encoder.layers.0.mlp.fc1.weight",
             "first_stage_model.decoder.conv_out.weight")


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.fixture(scope="module")
def root(tmp_path_factory) -> Path:
    """models/ with tiny SD1 checkpoints a, b, c (different seeds), an inpainting one, an SD2 one and a VAE."""
    from webui.models.original_layout import save_single_file, vae_to_original
    from webui.models.tiny import build_tiny_components

    root = tmp_path_factory.mktemp("merge-models")
    sd = root / "Stable-diffusion"
    for name, seed in (("a", 1), ("b", 2), ("c", 3)):
        save_single_file(build_tiny_components("sd1", seed=seed), sd / f"{name}.safetensors")
    save_single_file(build_tiny_components("sd1", inpainting=True, seed=4), sd / "inpaint.safetensors")
    save_single_file(build_tiny_components("sd2", seed=6), sd / "sd2.safetensors")
    vae = {k: v.detach().clone() for k, v in vae_to_original(build_tiny_components("sd1", seed=5).vae).items()}
    (root / "VAE").mkdir()
    torch.save({"state_dict": vae}, root / "VAE" / "tiny.vae.pt")  # A1111-style .pt with a state_dict wrapper
    return root


@pytest.fixture(scope="module")
def manager(root, tmp_path_factory):
    from webui.models.manager import HashCache, ModelManager

    cache = HashCache(tmp_path_factory.mktemp("hash") / "hashes.json")
    return ModelManager([root / "Stable-diffusion"], cache, torch.device("cpu"), torch.float32)


def _merge(manager, root, out_dir, **kw) -> Path:
    return merge_checkpoints(MergeRequest(**kw), checkpoint_paths=manager.find, vae_dirs=[root / "VAE"],
                             out_dir=out_dir, hashes=manager.hashes)


def _sd(root, name):
    return read_state_dict(root / "Stable-diffusion" / f"{name}.safetensors")[0]


def test_weighted_sum_formula(manager, root, tmp_path):
    calls = []
    path = merge_checkpoints(MergeRequest(primary="a", secondary="b.safetensors", multiplier=0.3),
                             checkpoint_paths=manager.find, vae_dirs=[root / "VAE"], out_dir=tmp_path,
                             hashes=manager.hashes, progress=lambda i, n: calls.append((i, n)))
    assert path == tmp_path / "a_b_0.3-merged.safetensors"
    out, a, b = read_state_dict(path)[0], _sd(root, "a"), _sd(root, "b")
    assert out.keys() == a.keys()
    assert calls[-1] == (len(a), len(a))
    for k in SOME_KEYS:
        assert out[k].dtype == torch.float32
        assert torch.allclose(out[k], a[k] * 0.7 + b[k] * 0.3, atol=1e-6), k
        assert not torch.equal(out[k], a[k])
    assert all(torch.allclose(out[k], a[k] * 0.7 + b[k] * 0.3, atol=1e-6) for k in a if a[k].is_floating_point())


def test_add_difference_formula_and_half(manager, root, tmp_path):
    path = _merge(manager, root, tmp_path, primary="a", secondary="b", tertiary="c", interp_method="Add difference",
                  multiplier=0.5)
    assert path.name == "a_b_c_0.5-merged.safetensors"
    out, a, b, c = read_state_dict(path)[0], _sd(root, "a"), _sd(root, "b"), _sd(root, "c")
    for k in SOME_KEYS:
        assert torch.allclose(out[k], a[k] + (b[k] - c[k]) * 0.5, atol=1e-6), k
    half = _merge(manager, root, tmp_path, primary="a", secondary="b", multiplier=0.25, save_as_half=True,
                  custom_name="half")
    out = read_state_dict(half)[0]
    assert all(v.dtype == torch.float16 for v in out.values() if v.is_floating_point())
    for k in SOME_KEYS:
        assert torch.allclose(out[k].float(), (a[k] * 0.75 + b[k] * 0.25).half().float(), atol=1e-3), k


def test_no_interpolation_copies_a_and_converts_to_half(manager, root, tmp_path):
    path = _merge(manager, root, tmp_path, primary="a", interp_method="No interpolation", save_as_half=True,
                  secondary="does-not-matter")
    assert path.name == "a-merged.safetensors"
    out, a = read_state_dict(path)[0], _sd(root, "a")
    assert out.keys() == a.keys()
    for k in a:
        if a[k].is_floating_point():
            assert out[k].dtype == torch.float16 and torch.equal(out[k], a[k].half()), k


def test_bake_in_vae_replaces_exactly_the_vae_keys(manager, root, tmp_path):
    path = _merge(manager, root, tmp_path, primary="a", secondary="b", multiplier=0.5, bake_in_vae="tiny.vae.pt")
    out, a, b = read_state_dict(path)[0], _sd(root, "a"), _sd(root, "b")
    vae = read_state_dict(root / "VAE" / "tiny.vae.pt")[0]
    vae_keys = {k for k in out if k.startswith("first_stage_model.")}
    assert vae_keys == {"first_stage_model." + k for k in vae}
    for k in vae_keys:
        assert torch.equal(out[k], vae[k[len("first_stage_model."):]]), k
    for k in out.keys() - vae_keys:
        if a[k].is_floating_point():
            assert torch.allclose(out[k], (a[k] + b[k]) * 0.5, atol=1e-6), k
    recipe = json.loads(safe_open(str(path), "pt").metadata()["sd_merge_recipe"])
    assert recipe["bake_in_vae"] == "tiny.vae.pt"
    with pytest.raises(RequestError) as err:
        _merge(manager, root, tmp_path, primary="a", interp_method="No interpolation", bake_in_vae="nope.pt")
    assert err.value.field == "bake_in_vae" and "tiny.vae.pt" in err.value.message


def test_merger_lists_the_vaes_settings_lists_and_bakes_from_both_folders(manager, root, tmp_path):
    from types import SimpleNamespace

    from safetensors.torch import load_file

    from tests.conftest import make_settings
    from webui.builtin.vae import VaePlugin
    from webui.models.original_layout import vae_to_original
    from webui.models.tiny import build_tiny_components
    from webui.ui.merger import _vae_choices

    models, extra = tmp_path / "models", tmp_path / "more-vaes"
    (models / "VAE" / "sub").mkdir(parents=True)
    extra.mkdir()
    (models / "VAE" / "sub" / "b.pt").write_bytes((root / "VAE" / "tiny.vae.pt").read_bytes())
    (models / "VAE" / "c.bin").write_bytes(b"x")
    other = vae_to_original(build_tiny_components("sd1", seed=7).vae)  # a VAE unlike b.pt's, and a stray key
    torch.save({"state_dict": {**{k: v.detach().clone() for k, v in other.items()}, "loss.logvar": torch.zeros(1)}},
               extra / "d.ckpt")
    (models / "VAE" / "folder-vae").mkdir()
    (models / "VAE" / "folder-vae" / "config.json").write_text("{}")
    ctx = SimpleNamespace(settings=make_settings(tmp_path / "data", models, vae_dir=extra))
    settings_tab = VaePlugin()
    settings_tab.ctx = ctx
    assert settings_tab.choices()[:2] == ["Automatic", "None"]
    assert _vae_choices(ctx) == ["None", *settings_tab.choices()[2:]] == ["None", "b.pt", "c.bin", "d.ckpt",
                                                                            "folder-vae"]
    a = load_file(str(root / "Stable-diffusion" / "a.safetensors"))
    for name, vae_file in (("d.ckpt", extra / "d.ckpt"), ("sub/b.pt", models / "VAE" / "sub" / "b.pt")):
        # the --vae-dir folder, a path inside a VAE folder
        path = merge_checkpoints(MergeRequest(primary="a", interp_method="No interpolation", bake_in_vae=name,
                                              custom_name=f"baked-{name[0]}"),
                                 checkpoint_paths=manager.find, vae_dirs=ctx.settings.vae_dirs(), out_dir=tmp_path,
                                 hashes=manager.hashes)
        # A1111 (modules/extras.py run_modelmerger, "Baking in VAE"): each key k of the VAE file (sd_vae.load_vae_dict
        # drops "loss*" keys) replaces first_stage_model.k where the model has it; everything else is A's
        vae = torch.load(vae_file, map_location="cpu", weights_only=True)["state_dict"]
        expected = dict(a)
        for key, value in vae.items():
            if not key.startswith("loss") and "first_stage_model." + key in expected:
                expected["first_stage_model." + key] = value
        baked = load_file(str(path))
        assert baked.keys() == a.keys()
        assert all(torch.equal(baked[k], expected[k]) for k in a), [k for k in a if not torch.equal(baked[k],
                                                                                                  expected[k])][:3]
        assert not torch.equal(baked["first_stage_model.decoder.conv_out.weight"],
                               a["first_stage_model.decoder.conv_out.weight"])
    with pytest.raises(RequestError) as err:
        merge_checkpoints(MergeRequest(primary="a", interp_method="No interpolation", bake_in_vae="folder-vae"),
                          checkpoint_paths=manager.find, vae_dirs=ctx.settings.vae_dirs(), out_dir=tmp_path,
                          hashes=manager.hashes)
    assert err.value.field == "bake_in_vae" and "single-file" in err.value.message


def test_discard_weights_regex(manager, root, tmp_path):
    path = _merge(manager, root, tmp_path, primary="a", interp_method="No interpolation",
                  discard_weights=r"^cond_stage_model\.|decoder")
    out, a = read_state_dict(path)[0], _sd(root, "a")
    assert out.keys() == {k for k in a if not k.startswith("cond_stage_model.") and "decoder" not in k}
    assert "model.diffusion_model.out.2.weight" in out
    with pytest.raises(RequestError) as err:
        _merge(manager, root, tmp_path, primary="a", interp_method="No interpolation", discard_weights="([")
    assert err.value.field == "discard_weights"


def test_metadata_recipe_and_models(manager, root, tmp_path):
    sd = root / "Stable-diffusion"
    path = _merge(manager, root, tmp_path, primary="a", secondary="b", tertiary="c", interp_method="Add difference",
                  multiplier=0.4, custom_name="recipe")
    meta = safe_open(str(path), "pt").metadata()
    assert meta["format"] == "pt"
    recipe = json.loads(meta["sd_merge_recipe"])
    assert recipe["type"] == "webui" and recipe["interp_method"] == "Add difference"
    assert recipe["multiplier"] == 0.4 and recipe["save_as_half"] is False
    assert recipe["primary_model_hash"] == _sha(sd / "a.safetensors")
    assert recipe["secondary_model_hash"] == _sha(sd / "b.safetensors")
    assert recipe["tertiary_model_hash"] == _sha(sd / "c.safetensors")
    assert recipe["custom_name"] == "recipe" and recipe["is_inpainting"] is False
    models = json.loads(meta["sd_merge_models"])
    a = sd / "a.safetensors"
    assert models[_sha(a)] == {"name": "a.safetensors", "legacy_hash": legacy_hash(a), "sd_merge_recipe": None}
    assert len(models) == 3
    # merging a merge keeps the earlier recipe and models (A1111 reads them the same way)
    (sd / "recipe.safetensors").write_bytes(path.read_bytes())
    manager.refresh()
    try:
        again = _merge(manager, root, tmp_path, primary="recipe", interp_method="No interpolation")
        models2 = json.loads(safe_open(str(again), "pt").metadata()["sd_merge_models"])
        assert models2[_sha(path)]["sd_merge_recipe"] == recipe
        assert set(models) < set(models2)
    finally:
        (sd / "recipe.safetensors").unlink()
        manager.refresh()


def test_inpainting_add_difference_keeps_extra_channels(manager, root, tmp_path):
    path = _merge(manager, root, tmp_path, primary="inpaint", secondary="b", tertiary="c",
                  interp_method="Add difference", multiplier=1.0)
    assert path.name == "inpaint_b_c_1.0-merged.inpainting.safetensors"
    out, a, b, c = read_state_dict(path)[0], _sd(root, "inpaint"), _sd(root, "b"), _sd(root, "c")
    assert out[CONV_IN].shape[1] == 9
    assert torch.equal(out[CONV_IN][:, 4:], a[CONV_IN][:, 4:])
    assert torch.allclose(out[CONV_IN][:, :4], a[CONV_IN][:, :4] + b[CONV_IN] - c[CONV_IN], atol=1e-6)
    assert json.loads(safe_open(str(path), "pt").metadata()["sd_merge_recipe"])["is_inpainting"] is True
    with pytest.raises(RequestError) as err:  # A must be the inpainting model
        _merge(manager, root, tmp_path, primary="a", secondary="inpaint", custom_name="wrong")
    assert err.value.field == "primary" and "inpainting" in err.value.message
    with pytest.raises(RequestError) as err:  # other shape mismatches name the key
        _merge(manager, root, tmp_path, primary="a", secondary="sd2", custom_name="wrong")
    assert err.value.field == "secondary" and "model." in err.value.message and "shape" in err.value.message
    assert not list(tmp_path.glob("wrong*")) and not list(tmp_path.glob(".*tmp"))


def test_refuses_to_overwrite_unless_asked(manager, root, tmp_path):
    path = _merge(manager, root, tmp_path, primary="a", secondary="b", custom_name="same")
    before = path.read_bytes()
    with pytest.raises(RequestError) as err:
        _merge(manager, root, tmp_path, primary="a", secondary="c", custom_name="same")
    assert err.value.field == "custom_name" and "exists" in err.value.message
    assert path.read_bytes() == before
    again = _merge(manager, root, tmp_path, primary="a", secondary="c", custom_name="same.safetensors",
                   overwrite=True)
    assert again == path and path.read_bytes() != before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["same.safetensors"]


@pytest.mark.parametrize("kw, field", [
    ({"primary": "nope", "secondary": "b"}, "primary"),
    ({"primary": "a", "secondary": "nope"}, "secondary"),
    ({"primary": "a", "secondary": "b", "interp_method": "Add difference"}, "tertiary"),
    ({"primary": "a", "secondary": "b", "tertiary": "nope", "interp_method": "Add difference"}, "tertiary"),
    ({"primary": "", "secondary": "b"}, "primary"),
    ({"primary": "a", "secondary": "b", "interp_method": "Sigmoid"}, "interp_method"),
    ({"primary": "a", "secondary": "b", "custom_name": "x.ckpt"}, "custom_name"),
    ({"primary": "a", "secondary": "b", "custom_name": "../outside"}, "custom_name"),
    ({"primary": "a", "secondary": "b", "checkpoint_format": "ckpt"}, "checkpoint_format"),
    ({"primary": "a", "secondary": "b", "multiplier": "lots"}, "multiplier"),
])
def test_bad_requests_name_the_field(manager, root, tmp_path, kw, field):
    with pytest.raises(RequestError) as err:
        _merge(manager, root, tmp_path, **kw)
    assert err.value.field == field
    assert not list(tmp_path.iterdir())


# --- in the app ------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def app_ctx(root, tmp_path_factory):
    from tests.conftest import make_settings
    from webui.context import build_context

    return build_context(make_settings(tmp_path_factory.mktemp("merge-data"), root), load_model=True)


def test_merged_checkpoint_is_listed_and_generates(app_ctx):
    from webui.pipeline.request import GenerationRequest
    from webui.ui.merger import run_merge

    ctx = app_ctx
    path = run_merge(ctx, MergeRequest(primary="a", secondary="b", multiplier=0.5, save_as_half=True,
                                       custom_name="gen-test"))
    assert path == ctx.settings.model_dir("Stable-diffusion") / "gen-test.safetensors"
    info = next(i for i in ctx.models.checkpoints() if i.path == path)
    title = ctx.models.title(info)
    assert title == f"gen-test.safetensors [{_sha(path)[:10]}]"
    res = ctx.generate(GenerationRequest(prompt="x", steps=2, width=64, height=64, seed=1, sampler_name="Euler",
                                        save_images=False, override_settings={"sd_model_checkpoint": title}))
    assert res.images[0].size == (64, 64)
    assert ctx.models.current.info.path == path


def test_gradio_client_merge_endpoint(app_ctx):
    import httpx
    from gradio_client import Client
    from gradio_client.exceptions import AppError

    from tests.live_server import LiveServer
    from webui.server import create_app

    with LiveServer(create_app(app_ctx)) as srv:
        client = Client(srv.url, verbose=False)
        result, *dropdowns = client.predict(primary="a.safetensors", secondary="c", tertiary="b",
                                            interp_method="Add difference", multiplier=0.2,
                                            custom_name="via-api", api_name="/merge_checkpoints")
        path = app_ctx.settings.model_dir("Stable-diffusion") / "via-api.safetensors"
        assert str(path) in result and path.is_file()
        assert len(dropdowns) == 3
        listed = httpx.get(srv.url + "/sdapi/v1/sd-models", timeout=10).json()
        assert any(m["model_name"] == "via-api" and m["sha256"] == _sha(path) for m in listed)
        with pytest.raises(AppError, match="secondary"):
            client.predict(primary="a.safetensors", secondary="missing", api_name="/merge_checkpoints")
