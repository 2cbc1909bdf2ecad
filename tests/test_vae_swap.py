"""VAE swapping, NaN-safe decoding, checkpoint switching and the checkpoint cache."""

from __future__ import annotations

import logging

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from safetensors.torch import save_file

from tests.conftest import api_only, make_settings
from webui.context import build_context
from webui.models.original_layout import save_single_file, vae_to_original
from webui.models.tiny import build_tiny_components
from webui.pipeline.request import GenerationRequest
from webui.pipeline.vae import decode_to_pixels
from webui.server import create_app

BASE = dict(prompt="x", steps=2, width=64, height=64, seed=3, sampler_name="Euler", save_images=False)


@pytest.fixture
def root(tmp_path):
    root = tmp_path / "models"
    (root / "Stable-diffusion").mkdir(parents=True)
    (root / "VAE").mkdir()
    save_single_file(build_tiny_components("sd1", seed=1), root / "Stable-diffusion" / "alpha.safetensors")
    save_single_file(build_tiny_components("sd1", seed=2), root / "Stable-diffusion" / "beta.safetensors")
    save_file(vae_to_original(build_tiny_components("sd1", seed=7).vae), str(root / "VAE" / "other.safetensors"))
    torch.save({"state_dict": {"first_stage_model." + k: v for k, v in
                               vae_to_original(build_tiny_components("sd1", seed=8).vae).items()}},
               root / "VAE" / "wrapped.vae.pt")
    build_tiny_components("sd1", seed=9).vae.save_pretrained(root / "VAE" / "folder-vae")
    save_file({"encoder.conv_in.weight": torch.zeros(3, 3, 3, 3), "decoder.conv_out.weight": torch.zeros(3, 3)},
              str(root / "VAE" / "broken.safetensors"))
    return root


@pytest.fixture
def ctx(root, tmp_path):
    return build_context(make_settings(tmp_path / "data", root), load_model=True)


def img(ctx, **kw):
    return ctx.generate(GenerationRequest(**{**BASE, **kw}))


@pytest.fixture
def decoded_latents(monkeypatch):
    """The latents each generation hands to the VAE."""
    import webui.pipeline.generate as generate

    seen: list[torch.Tensor] = []
    real = generate.decode_to_pixels

    def spy(model, latents, *a, **kw):
        seen.append(latents.detach().clone())
        return real(model, latents, *a, **kw)

    monkeypatch.setattr(generate, "decode_to_pixels", spy)
    return seen


def _diffusers_decode(vae, latents: torch.Tensor) -> np.ndarray:
    """What diffusers' StableDiffusionPipeline makes of ``latents`` with ``vae`` (an AutoencoderKL): decode
    latents / scaling_factor, then (x + 1) / 2 clamped, as uint8."""
    with torch.no_grad():
        x = vae.decode(latents / vae.config.scaling_factor, return_dict=False)[0]
    return ((x[0].permute(1, 2, 0) + 1) / 2).clamp(0, 1).mul(255).round().to(torch.uint8).numpy()


def test_swap_changes_the_image_and_none_restores_it_exactly(ctx, decoded_latents):
    own = img(ctx)
    other = img(ctx, override_settings={"sd_vae": "other.safetensors"})
    assert other.images[0].tobytes() != own.images[0].tobytes()
    assert "VAE: other.safetensors" in other.infotexts[0] and "VAE hash: " in other.infotexts[0]
    after = img(ctx)  # the override was for one request only
    assert after.images[0].tobytes() == own.images[0].tobytes() and "VAE:" not in after.infotexts[0]
    results = {"other.safetensors": other}
    for name in ("wrapped.vae.pt", "folder-vae"):  # pickles (weights_only) and diffusers folders too
        res = results[name] = img(ctx, override_settings={"sd_vae": name})
        assert res.images[0].tobytes() != own.images[0].tobytes() and f"VAE: {name}" in res.infotexts[0]
    assert img(ctx, override_settings={"sd_vae": "None"}).images[0].tobytes() == own.images[0].tobytes()
    # the same latents every time (the VAE only decodes), and each picture is those latents decoded by the
    # swapped-in VAE itself: the diffusers AutoencoderKL whose weights were written to that file (seeds of `root`)
    assert all(torch.equal(z, decoded_latents[0]) for z in decoded_latents)
    for name, seed in (("other.safetensors", 7), ("wrapped.vae.pt", 8), ("folder-vae", 9)):
        expected = _diffusers_decode(build_tiny_components("sd1", seed=seed).vae.eval(), decoded_latents[0])
        got = np.asarray(results[name].images[0], dtype=int)
        assert np.abs(got - expected).max() <= 1, name


def test_automatic_uses_the_vae_named_after_the_checkpoint(ctx, root):
    own = img(ctx).images[0].tobytes()
    (root / "Stable-diffusion" / "alpha.vae.safetensors").write_bytes((root / "VAE" / "other.safetensors").read_bytes())
    auto = img(ctx)  # sd_vae defaults to Automatic
    assert auto.images[0].tobytes() != own and "VAE: alpha.vae.safetensors" in auto.infotexts[0]
    assert img(ctx, override_settings={"sd_vae": "None"}).images[0].tobytes() == own


def test_api_routes_options_and_errors(ctx, root):
    client = TestClient(create_app(api_only(ctx)))
    names = [v["model_name"] for v in client.get("/sdapi/v1/sd-vae").json()]
    assert names == ["broken.safetensors", "folder-vae", "other.safetensors", "wrapped.vae.pt"]
    (root / "VAE" / "late.safetensors").write_bytes((root / "VAE" / "other.safetensors").read_bytes())
    assert client.post("/sdapi/v1/refresh-vae").status_code == 200
    assert "late.safetensors" in [v["model_name"] for v in client.get("/sdapi/v1/sd-vae").json()]
    assert client.post("/sdapi/v1/options", json={"sd_vae": "other.safetensors"}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_vae"] == "other.safetensors"
    r = client.post("/sdapi/v1/txt2img", json=BASE)
    assert r.status_code == 200 and "VAE: other.safetensors" in r.json()["info"]
    bad = client.post("/sdapi/v1/txt2img", json={**BASE, "override_settings": {"sd_vae": "nope.pt"}})
    assert bad.status_code == 422 and "sd_vae" in bad.text
    broken = client.post("/sdapi/v1/txt2img", json={**BASE, "override_settings": {"sd_vae": "broken.safetensors"}})
    assert broken.status_code == 422 and "broken.safetensors" in broken.text
    assert client.post("/sdapi/v1/txt2img", json=BASE).status_code == 200  # still serving


def test_half_precision_nan_is_decoded_again_in_float32(ctx, caplog):
    model = ctx.models.current
    vae = model.components.vae.to(torch.float16)
    real = vae.decode

    def nan_in_half(z, *a, **kw):
        out = real(z, *a, **kw)
        if vae.dtype == torch.float16:
            return (out[0] * float("nan"),)
        return out

    vae.decode = nan_in_half
    try:
        with caplog.at_level(logging.WARNING):
            pixels = decode_to_pixels(model, torch.randn(1, 4, 8, 8))
    finally:
        del vae.decode
    assert torch.isfinite(pixels).all() and vae.dtype == torch.float32
    assert "NaN" in caplog.text and "float32" in caplog.text


def test_switching_checkpoints_via_the_api(ctx, root):
    client = TestClient(create_app(api_only(ctx)))
    before = client.post("/sdapi/v1/txt2img", json=BASE).json()["images"][0]
    titles = [m["title"] for m in client.get("/sdapi/v1/sd-models").json()]
    beta = next(t for t in titles if t.startswith("beta"))
    assert client.post("/sdapi/v1/options", json={"sd_model_checkpoint": beta}).status_code == 200
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("beta.safetensors [")
    after = client.post("/sdapi/v1/txt2img", json=BASE).json()
    assert after["images"][0] != before and '"sd_model_name": "beta"' in after["info"]
    (root / "Stable-diffusion" / "gamma.safetensors").write_bytes(b"<html>not a model</html>")
    client.post("/sdapi/v1/refresh-checkpoints")
    bad = client.post("/sdapi/v1/options", json={"sd_model_checkpoint": "gamma.safetensors"})
    assert bad.status_code == 422 and "gamma.safetensors" in bad.text
    assert client.get("/sdapi/v1/options").json()["sd_model_checkpoint"].startswith("beta")  # still the old one
    assert client.post("/sdapi/v1/txt2img", json=BASE).json()["images"][0] == after["images"][0]


def test_checkpoint_cache_and_unload_reload(ctx, monkeypatch):
    import webui.models.loader as loader

    reads = []
    real = loader.load_components
    monkeypatch.setattr(loader, "load_components", lambda path, **kw: reads.append(path.name) or real(path, **kw))
    ctx.options.update({"sd_checkpoint_cache": 1})
    first = img(ctx, override_settings={"sd_model_checkpoint": "alpha"}).images[0].tobytes()
    img(ctx, override_settings={"sd_model_checkpoint": "beta"})
    again = img(ctx, override_settings={"sd_model_checkpoint": "alpha"}).images[0].tobytes()
    assert first == again and reads.count("alpha.safetensors") <= 1 and [m.info.name for m in ctx.models.cached()]
    client = TestClient(create_app(api_only(ctx)))
    assert client.post("/sdapi/v1/unload-checkpoint").status_code == 200 and ctx.models.current is None
    assert client.post("/sdapi/v1/reload-checkpoint").status_code == 200 and ctx.models.current is not None
    assert np.asarray(img(ctx).images[0]).shape == (64, 64, 3)


def test_a_then_b_then_a_each_model_gets_the_vae_asked_for(ctx, root):
    """The plugin's per-model state goes with the model: B, loaded after A was dropped (possibly at A's
    address), starts from its own VAE, and A loaded again too; no copy of a dropped model's VAE is kept."""
    import gc

    from webui.models.loader import load_components
    from webui.models.vae_files import vae_weights

    plugin = ctx.plugins.pm.get_plugin("webui.builtin.vae")
    config = ctx.models.current.components.vae.config
    other = vae_weights(root / "VAE" / "other.safetensors", config)
    own = {name: load_components(root / "Stable-diffusion" / f"{name}.safetensors").vae.state_dict()
           for name in ("alpha", "beta")}

    def vae_of_current(expected: dict[str, torch.Tensor]) -> bool:
        got = ctx.models.current.components.vae.state_dict()
        return got.keys() == expected.keys() and all(torch.equal(got[k], expected[k].to(got[k].dtype)) for k in got)

    def live_states() -> int:
        gc.collect()
        return len(plugin._states)

    img(ctx, override_settings={"sd_vae": "other.safetensors"})  # A with another VAE
    assert ctx.models.current.info.name == "alpha.safetensors" and vae_of_current(other)
    ctx.models.unload()  # A is dropped before B is built
    assert live_states() == 0
    img(ctx, override_settings={"sd_model_checkpoint": "beta"})  # B, Automatic: its own
    assert ctx.models.current.info.name == "beta.safetensors" and vae_of_current(own["beta"])
    img(ctx, override_settings={"sd_model_checkpoint": "beta", "sd_vae": "other.safetensors"})
    assert vae_of_current(other)
    img(ctx, override_settings={"sd_model_checkpoint": "alpha"})  # A again, Automatic: its own
    assert ctx.models.current.info.name == "alpha.safetensors" and vae_of_current(own["alpha"])
    assert live_states() <= 1  # B's state went with B
    img(ctx, override_settings={"sd_model_checkpoint": "alpha", "sd_vae": "other.safetensors"})
    assert vae_of_current(other)
    img(ctx, override_settings={"sd_model_checkpoint": "alpha", "sd_vae": "None"})
    assert vae_of_current(own["alpha"])


def test_a_new_model_where_an_old_one_was_starts_from_its_own_vae(root):
    """What an id-keyed cache got wrong: B in the place (here: the very object) A had gets neither A's own
    VAE nor is it taken to hold the VAE A was given."""
    from types import SimpleNamespace

    from webui.builtin.vae import VaePlugin
    from webui.models.vae_files import VaeFile, vae_weights

    def state(vae):
        return {k: v.clone() for k, v in vae.state_dict().items()}

    def same(vae, expected) -> bool:
        return all(torch.equal(v, expected[k]) for k, v in vae.state_dict().items())

    vae_a, vae_b = build_tiny_components("sd1", seed=1).vae, build_tiny_components("sd1", seed=2).vae
    own_a, own_b = state(vae_a), state(vae_b)
    other_file = VaeFile(root / "VAE" / "other.safetensors", "other.safetensors")
    other = vae_weights(other_file.path, vae_a.config)
    plugin = VaePlugin()
    model = SimpleNamespace(components=SimpleNamespace(vae=vae_a), info=SimpleNamespace(path=root, name="a"),
                            spec=SimpleNamespace(label="SD 1.x"))
    plugin.apply(model, other_file)
    assert same(vae_a, other)
    plugin.apply(model, None)
    assert same(vae_a, own_a)
    plugin.apply(model, other_file)
    model.components = SimpleNamespace(vae=vae_b)  # B takes A's place
    plugin.apply(model, None)
    assert same(vae_b, own_b)  # not A's own weights
    plugin.apply(model, other_file)
    assert same(vae_b, other)  # not skipped as "already applied"


def test_memory_route_reports_ram(ctx):
    body = TestClient(create_app(api_only(ctx))).get("/sdapi/v1/memory").json()
    assert body["ram"]["total"] > body["ram"]["used"] > 0 and "error" in body["cuda"]


def test_refiner_takes_over_at_the_switch_step(ctx):
    from webui.errors import RequestError

    base = img(ctx, steps=4).images[0].tobytes()
    refiner = ctx.models.load_aux("beta")
    calls = []
    real = refiner.components.unet.forward

    def spy(*a, **kw):
        calls.append(1)
        return real(*a, **kw)

    refiner.components.unet.forward = spy
    try:
        res = img(ctx, steps=4, refiner_checkpoint="beta", refiner_switch_at=0.5)
    finally:
        del refiner.components.unet.forward
    assert len(calls) == 2  # steps 3 and 4 of 4 (Euler: one batched U-Net call per step)
    assert res.images[0].tobytes() != base and ctx.models.current.info.name == "alpha.safetensors"
    assert "Refiner: beta.safetensors [" in res.infotexts[0] and "Refiner switch at: 0.5" in res.infotexts[0]
    with pytest.raises(RequestError) as e:
        img(ctx, refiner_checkpoint="nope")
    assert e.value.field == "refiner_checkpoint"
    with pytest.raises(RequestError) as e:
        img(ctx, refiner_checkpoint="beta", refiner_switch_at=1.5)
    assert e.value.field == "refiner_switch_at"
    r = TestClient(create_app(api_only(ctx))).post("/sdapi/v1/txt2img", json={**BASE, "refiner_checkpoint": "beta",
                                                                     "refiner_switch_at": 0.6})
    assert r.status_code == 200 and "Refiner switch at: 0.6" in r.json()["info"]


@pytest.mark.parametrize("mode", ["medvram", "lowvram"])
def test_memory_modes_change_no_pixel(ctx, mode):
    """The offload hooks (forced on here: on the CPU they are normally skipped) give identical images."""
    from webui.models.offload import apply_memory_mode

    before = img(ctx).images[0].tobytes()
    hooks = apply_memory_mode(ctx.models.current.components, mode, torch.device("cpu"), force=True)
    assert hooks and img(ctx).images[0].tobytes() == before


def test_flags_for_memory_modes_and_precision():
    from webui.settings import parse_args

    assert parse_args(["--medvram"]).memory_mode == "medvram"
    assert parse_args(["--lowvram", "--medvram"]).memory_mode == "lowvram"
    assert parse_args(["--precision", "full"]).no_half and not parse_args([]).no_half
    assert parse_args(["--precision", "bf16"]).bf16 and not parse_args(["--precision", "bf16"]).no_half
    assert not parse_args([]).bf16
    assert parse_args(["--attention", "eager"]).attention == "eager"
    for bad in (["--memory-mode-typo"], ["--attention", "flash9"], ["--precision", "fp7"]):
        with pytest.raises(SystemExit):
            parse_args(bad)


def test_eager_attention_gives_the_same_image(root, tmp_path):
    base = build_context(make_settings(tmp_path / "a", root), load_model=True)
    eager = build_context(make_settings(tmp_path / "b", root, attention="eager"), load_model=True)
    a = np.asarray(img(base).images[0], dtype=int)
    b = np.asarray(img(eager).images[0], dtype=int)
    assert np.abs(a - b).max() <= 1


def test_the_refiner_runs_with_the_runs_schedule_options(ctx, monkeypatch):
    """A1111 applies ``use_downcasted_alpha_bar`` / ``sd_noise_schedule`` to whichever model is loaded, the refiner
    too, and CFG rescale acts on every denoiser call: the refiner's denoiser gets the same options as the base's."""
    import webui.pipeline.generate as generate

    seen = []
    real = generate.cfg_denoiser

    def spy(model, *a, **kw):
        seen.append((model.info.name, {k: kw[k] for k in ("downcast_alphas", "zero_terminal_snr", "cfg_rescale",
                                                          "sdxl_crop")}))
        return real(model, *a, **kw)

    monkeypatch.setattr(generate, "cfg_denoiser", spy)
    img(ctx, steps=4, refiner_checkpoint="beta", refiner_switch_at=0.5, cfg_rescale=0.3,
        override_settings={"use_downcasted_alpha_bar": True, "sd_noise_schedule": "Zero Terminal SNR"})
    assert [name for name, _ in seen] == ["alpha.safetensors", "beta.safetensors"]
    want = {"downcast_alphas": True, "zero_terminal_snr": True, "cfg_rescale": 0.3, "sdxl_crop": (0, 0)}
    assert all(options == want for _, options in seen), seen
