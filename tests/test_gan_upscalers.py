"""ESRGAN / Real-ESRGAN upscalers: detection, the official file layouts, tiling, the plugin, unsafe files.

Models are the real architectures (basicsr RRDBNet, realesrgan SRVGGNetCompact) with random weights,
small where the architecture allows; the official default shapes are checked on the meta device.
"""

from __future__ import annotations

import os
import pickle
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import CodeRunningPickle, api_only, compact, make_settings, rrdb
from tests.conftest import run_network as reference
from tests.conftest import save_weights as save
from webui.errors import ModelError
from webui.server import create_app
from webui.upscaling.gan import (
    FlexRRDBNet,
    RRDBNet,
    SRVGGNetCompact,
    build,
    detect,
    forward_tiled,
    load_gan,
    to_basicsr_keys,
    unwrap,
    upscale_tiled,
)

CPU = torch.device("cpu")


# --- helpers --------------------------------------------------------------------------------------


def to_old_esrgan(sd: dict[str, torch.Tensor], num_up: int) -> dict[str, torch.Tensor]:
    """basicsr RRDBNet keys -> the original ESRGAN layout with ``num_up`` upsampling convs (the test's own
    mapping: ``model.0`` first conv, ``model.1.sub`` trunk, then [upsample, conv, act] x n, hr conv, act, last)."""
    nb = len({k.split(".")[1] for k in sd if k.startswith("body.")})
    ups = [3 + 3 * i for i in range(num_up)]
    fixed = {"conv_first": 0, "conv_hr": 3 * num_up + 2, "conv_last": 3 * num_up + 4}
    out = {}
    for key, value in sd.items():
        owner, _, leaf = key.rpartition(".")
        if m := re.fullmatch(r"body\.(\d+)\.rdb(\d)\.conv(\d)", owner):
            out[f"model.1.sub.{m[1]}.RDB{m[2]}.conv{m[3]}.0.{leaf}"] = value
        elif owner == "conv_body":
            out[f"model.1.sub.{nb}.{leaf}"] = value
        elif owner in fixed:
            out[f"model.{fixed[owner]}.{leaf}"] = value
        elif (m := re.fullmatch(r"conv_up(\d)", owner)) and int(m[1]) <= num_up:
            out[f"model.{ups[int(m[1]) - 1]}.{leaf}"] = value
    return out


def with_extra_up(net: RRDBNet) -> dict[str, torch.Tensor]:
    """A state dict with a third upsampling conv (an x8 ESRGAN) derived from ``net``."""
    sd = dict(net.state_dict())
    sd["conv_up3.weight"], sd["conv_up3.bias"] = sd["conv_up2.weight"] * 0.9, sd["conv_up2.bias"].clone()
    return sd


def noise_image(w: int, h: int, seed: int = 0) -> Image.Image:
    return Image.fromarray(np.random.default_rng(seed).integers(0, 256, (h, w, 3), dtype=np.uint8), "RGB")


def diff(a: Image.Image, b: Image.Image) -> int:
    assert a.size == b.size
    return int(np.abs(np.asarray(a, dtype=int) - np.asarray(b, dtype=int)).max())


# --- detection ------------------------------------------------------------------------------------


@pytest.mark.parametrize("name, make, expect", [
    ("RealESRGAN_x4plus", lambda: RRDBNet(3, 3, 4, 64, 23, 32), dict(arch="RRDB", scale=4, num_block=23)),
    ("RealESRGAN_x4plus_anime_6B", lambda: RRDBNet(3, 3, 4, 64, 6, 32), dict(arch="RRDB", scale=4, num_block=6)),
    ("RealESRGAN_x2plus", lambda: RRDBNet(3, 3, 2, 64, 23, 32), dict(arch="RRDB", scale=2, unshuffle=2)),
    ("realesr-general-x4v3", lambda: SRVGGNetCompact(3, 3, 64, 32, 4, "prelu"),
     dict(arch="Compact", scale=4, num_conv=32)),
    ("realesr-animevideov3", lambda: SRVGGNetCompact(3, 3, 64, 16, 4, "prelu"),
     dict(arch="Compact", scale=4, num_conv=16)),
])
def test_official_default_shapes_are_detected(name, make, expect):
    with torch.device("meta"):  # shapes only: no memory, no forward pass
        sd = make().state_dict()
        flat = {f"params_ema.{k}": v for k, v in sd.items()}  # what read_state_dict gives for the .pth
        spec = detect(unwrap(flat))
        for key, value in {"num_feat": 64, "num_in_ch": 3, "num_out_ch": 3, **expect}.items():
            assert getattr(spec, key) == value, (name, key, spec)
        if spec.arch == "RRDB":
            assert spec.num_grow_ch == 32
            old = to_old_esrgan(sd, 2)
            if spec.scale == 4:  # the same weights in the old ESRGAN layout
                assert detect(old) == spec
        rebuilt = build(spec).state_dict()
    assert {k: v.shape for k, v in rebuilt.items()} == {k: v.shape for k, v in sd.items()}


def test_unwrap_prefers_params_ema():
    a, b = torch.zeros(1), torch.ones(1)
    assert unwrap({"params.x": a, "params_ema.x": b})["x"] is b
    assert unwrap({"params.x": a})["x"] is a
    assert unwrap({"x": a}) == {"x": a}


def test_non_gan_state_dicts_are_rejected():
    with pytest.raises(ValueError, match="not an ESRGAN/Real-ESRGAN model"):
        detect({"foo.weight": torch.zeros(3, 3)})
    with pytest.raises(ValueError, match="not an ESRGAN/Real-ESRGAN model"):
        detect({"conv_first.weight": torch.zeros(8, 3, 3, 3), "conv_last.weight": torch.zeros(3, 8, 3, 3)})


# --- loading the on-disk layouts: sizes, weights, outputs ---------------------------------------


@pytest.mark.parametrize("case", ["x4-params_ema", "x2-params", "x1-bare-safetensors", "compact-x4",
                                  "old-x4", "old-x2", "old-x8-safetensors"])
def test_layouts_load_with_exact_sizes_and_weights(tmp_path, case):
    image = noise_image(13, 11)  # odd sizes: x2/x1 need padding for the pixel-unshuffle
    if case.startswith("old"):
        net = rrdb(4, num_block=1, grow=32)  # spandrel (the x2/x8 reference) reads old files as growth 32
        num_up = {"old-x4": 2, "old-x2": 1, "old-x8-safetensors": 3}[case]
        sd = to_old_esrgan(with_extra_up(net) if num_up == 3 else net.state_dict(), num_up)
        path = save(sd, tmp_path / f"m{'.safetensors' if 'safetensors' in case else '.pth'}")
        scale, probe_new, probe_old = 2 ** num_up, "body.0.rdb3.conv5.weight", "model.1.sub.0.RDB3.conv5.0.weight"
    else:
        scale = {"x4-params_ema": 4, "x2-params": 2, "x1-bare-safetensors": 1, "compact-x4": 4}[case]
        net = compact() if case.startswith("compact") else rrdb(scale)
        sd = net.state_dict()
        wrapper = {"x4-params_ema": "params_ema", "x2-params": "params", "compact-x4": "params"}.get(case)
        path = save(sd, tmp_path / ("m.safetensors" if "safetensors" in case else "m.pth"), wrapper)
        probe_new = probe_old = "body.2.weight" if case.startswith("compact") else "body.1.rdb3.conv5.weight"
    loaded = load_gan(path, CPU, torch.float32)
    assert loaded.scale == scale
    assert torch.equal(loaded.model.state_dict()[probe_new], sd[probe_old])  # keys mapped to the right weights
    last = "body.10.weight" if case.startswith("compact") else "conv_last.weight"
    assert torch.equal(loaded.model.state_dict()[last], net.state_dict()[last])
    out = upscale_tiled(loaded, image, 0, 0)
    assert out.size == (13 * scale, 11 * scale) and out.mode == "RGB"
    assert np.asarray(out).std() > 5  # not a flat (clamped) image
    even = noise_image(16, 12, seed=1)
    if case in ("old-x2", "old-x8-safetensors"):  # no basicsr class for these: compare with spandrel's ESRGAN
        from spandrel import ModelLoader

        ref_net = ModelLoader().load_from_state_dict(sd).model.eval()
        assert diff(upscale_tiled(loaded, even, 0, 0), reference(ref_net, even)) <= 1
    else:
        assert diff(upscale_tiled(loaded, even, 0, 0), reference(net, even)) <= 1


def test_old_format_gives_the_same_output_as_new_format(tmp_path):
    net = rrdb(4, seed=3)
    new = load_gan(save(net.state_dict(), tmp_path / "new.pth", "params_ema"), CPU, torch.float32)
    old = load_gan(save(to_old_esrgan(net.state_dict(), 2), tmp_path / "old.pth"), CPU, torch.float32)
    assert type(old.model) is RRDBNet and isinstance(load_gan(
        save(to_old_esrgan(net.state_dict(), 1), tmp_path / "old2.pth"), CPU, torch.float32).model, FlexRRDBNet)
    for key, value in new.model.state_dict().items():
        assert torch.equal(value, old.model.state_dict()[key]), key
    image = noise_image(10, 9)
    assert np.array_equal(np.asarray(upscale_tiled(new, image, 0, 0)), np.asarray(upscale_tiled(old, image, 0, 0)))


def test_to_basicsr_keys_leaves_new_format_alone():
    sd = rrdb(4).state_dict()
    assert to_basicsr_keys(sd) is sd


# --- tiling -----------------------------------------------------------------------------------------


# Receptive radius (input pixels) of RRDBNet with 1 block: 17 convs at input resolution (conv_first, 15 in
# the block, conv_body) plus 4 convs at 2x/4x (= 1.25 input px) -> 19; x2 (pixel-unshuffle 2) doubles it
# -> 38 (the overlap is rounded up to the unshuffle multiple; 99x91 is padded to 100x92 for the unshuffle).
# With at least that much context every output pixel sees exactly what the untiled network sees, so
# tiled == untiled up to float summation order: tolerance 1e-5.
@pytest.mark.parametrize("scale, size, tile, overlap", [(4, (50, 37), 24, 19), (2, (99, 91), 48, 38)])
def test_tiled_equals_untiled_with_enough_overlap(scale, size, tile, overlap):
    net = rrdb(scale, num_feat=8, num_block=1, grow=4, seed=scale)
    x = torch.rand(1, 3, size[1], size[0], generator=torch.Generator().manual_seed(0))
    with torch.inference_mode():
        whole = forward_tiled(net, x, 0, 0)
        tiled = forward_tiled(net, x, tile, overlap)
        seams = forward_tiled(net, x, tile, 0)
    assert whole.shape == tiled.shape == (1, 3, size[1] * scale, size[0] * scale)  # sizes not divisible by tile
    assert (whole - tiled).abs().max().item() < 1e-5
    # the comparison can fail: without context the tile borders differ
    assert (whole - seams).abs().max().item() > 1e-3


def test_small_overlap_is_exact_away_from_the_seams():
    # Overlap 2 with radius 19 (see above): an output pixel whose input position lies at least 19 - 2 = 17 px
    # from an inner tile border gets its whole receptive field, so it matches (tolerance 1e-5); closer to the
    # seam it differs. (The residual paths make far context weigh little: the error near the seam is ~1e-1 at
    # overlap 2 but below 1e-4 from overlap 4 on, which is why the default overlap of 8 is enough in practice.)
    # Image 80x80, tile 40: one inner seam at 40 on each axis.
    net = rrdb(4, num_feat=8, num_block=1, grow=4, seed=9)
    x = torch.rand(1, 3, 80, 80, generator=torch.Generator().manual_seed(1))
    with torch.inference_mode():
        err = (forward_tiled(net, x, 0, 0) - forward_tiled(net, x, 40, 2)).abs().amax(dim=(0, 1))
    far = torch.ones(80, dtype=torch.bool)
    far[40 - 17:40 + 17] = False
    far = far.repeat_interleave(4)  # output pixel -> its input pixel
    assert err[far][:, far].max().item() < 1e-5
    assert err.max().item() > 1e-3  # near the seam there is a difference: the check is not vacuous


def test_tiled_image_matches_untiled_and_default_overlap_on_compact():
    # SRVGGNetCompact(num_conv=4) has 6 convs at input resolution: radius 6 < the default overlap 8.
    net = compact(num_conv=4)
    image = noise_image(45, 31)
    whole = upscale_tiled(net, image, 0, 0)
    tiled = upscale_tiled(net, image, 16, 8)
    assert tiled.size == whole.size == (180, 124)
    assert diff(whole, tiled) <= 1  # float summation order may flip one rounding
    assert diff(whole, upscale_tiled(net, image, 16, 0)) > 1


# --- the plugin ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def gan_models(tmp_path_factory, models_root, upscaler_models) -> tuple[Path, Path]:
    """A models folder: the tiny SD checkpoint (copied), GAN files in the official layouts, and bad files."""
    root = tmp_path_factory.mktemp("gan-models")
    shutil.copytree(models_root / "Stable-diffusion", root / "Stable-diffusion")
    esrgan = root / "ESRGAN"
    shutil.copytree(upscaler_models / "RealESRGAN", root / "RealESRGAN")  # the session's real-architecture files
    small = dict(num_feat=8, num_block=1, grow=4)
    save(to_old_esrgan(rrdb(4, seed=5, **small).state_dict(), 2), esrgan / "4x_OldStyle.pth")
    marker = tmp_path_factory.mktemp("marker") / "pwned"
    torch.save({"params_ema": CodeRunningPickle(marker)}, esrgan / "evil.pth")
    with open(esrgan / "evil_plain.pth", "wb") as handle:
        pickle.dump(CodeRunningPickle(marker), handle)
    (esrgan / "broken.pth").write_bytes(os.urandom(3000))
    save({"foo.weight": torch.zeros(4, 4)}, esrgan / "not_a_gan.safetensors")
    (esrgan / "notes.txt").write_text("not a model")
    return root, marker


@pytest.fixture(scope="module")
def gan_ctx(tmp_path_factory, gan_models):
    from webui.context import build_context

    settings = make_settings(tmp_path_factory.mktemp("data"), gan_models[0], nowebui=True)  # API only: faster
    return build_context(settings, load_model=False)


STEMS = ["4x_OldStyle", "RealESRGAN_x4plus", "RealESRGAN_x2plus", "realesr-general-x4v3"]


def test_plugin_lists_model_files_and_api(gan_ctx):
    names = gan_ctx.upscalers.names()
    assert {"None", "Lanczos", "Nearest", *STEMS} <= set(names)
    assert "notes" not in names and "evil" in names and "broken" in names  # listed: files are not opened to list
    assert gan_ctx.upscalers.get("RealESRGAN_x2plus").scale == 2.0
    assert gan_ctx.upscalers.get("RealESRGAN_x4plus").model_path.endswith("RealESRGAN_x4plus.pth")
    items = {u["name"]: u for u in TestClient(create_app(api_only(gan_ctx))).get("/sdapi/v1/upscalers").json()}
    assert items["RealESRGAN_x4plus"]["scale"] == 4.0 and items["RealESRGAN_x2plus"]["scale"] == 2.0
    assert items["4x_OldStyle"]["model_path"].endswith("4x_OldStyle.pth") and items["4x_OldStyle"]["scale"] == 4.0
    assert items["realesr-general-x4v3"]["model_name"] == "RealESRGAN"


def test_refresh_rescans_the_upscaler_folders(gan_ctx):
    """The refresh action calls ``register_upscalers`` again, as the hook's documentation says."""
    folder = gan_ctx.settings.model_dir("ESRGAN")
    late = folder / "4x_Late.pth"
    late.write_bytes((folder / "4x_OldStyle.pth").read_bytes())
    client = TestClient(create_app(api_only(gan_ctx)))
    try:
        assert "4x_Late" not in gan_ctx.upscalers.names()
        assert client.post("/sdapi/v1/refresh-checkpoints").status_code == 200
        assert "4x_Late" in [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    finally:
        late.unlink()
        gan_ctx.refresh_models()
    assert "4x_Late" not in gan_ctx.upscalers.names() and set(STEMS) <= set(gan_ctx.upscalers.names())


def test_options_exist_with_defaults_and_are_used(gan_ctx):
    opts = gan_ctx.options.current
    assert opts["ESRGAN_tile"] == 192 and opts["ESRGAN_tile_overlap"] == 8
    assert gan_ctx.options.defs["ESRGAN_tile"].section == "Upscaling"
    up = gan_ctx.upscalers.get("RealESRGAN_x4plus")
    image = noise_image(24, 24)
    whole = up.upscale(image, 4, {"ESRGAN_tile": 0})
    assert whole.size == (96, 96)
    assert diff(whole, up.upscale(image, 4, {"ESRGAN_tile": 12, "ESRGAN_tile_overlap": 0})) > 1  # tiles read


def test_lazy_loading_keeps_at_most_two_models(gan_ctx):
    defs = [gan_ctx.upscalers.get(n) for n in STEMS]
    cache = defs[0].upscale.cache
    assert all(d.upscale.cache is cache for d in defs)
    for d in defs:
        d.upscale(noise_image(8, 8), d.scale, {})
    assert len(cache.loaded()) == 2 and cache.loaded()[-1].name == "realesr-general-x4v3.safetensors"


def test_hires_fix_with_a_gan_upscaler(gan_ctx):
    from webui.pipeline.request import GenerationRequest

    req = dict(prompt="x", steps=2, width=64, height=64, seed=1, sampler_name="Euler", save_images=False,
               enable_hr=True, hr_scale=2, denoising_strength=0.3)
    res = gan_ctx.generate(GenerationRequest(**req, hr_upscaler="RealESRGAN_x4plus"))
    assert res.images[0].size == (128, 128)
    assert "Hires upscaler: RealESRGAN_x4plus" in res.infotexts[0]
    cache = gan_ctx.upscalers.get("RealESRGAN_x4plus").upscale.cache
    assert cache.loaded()[-1].name == "RealESRGAN_x4plus.pth"  # the GAN was the last model used


@pytest.mark.parametrize("stem, needle", [("evil", "nothing in it was executed"),
                                          ("evil_plain", "nothing in it was executed"),
                                          ("broken", "broken.pth"),
                                          ("not_a_gan", "not an ESRGAN/Real-ESRGAN model")])
def test_unsafe_and_bad_files_are_refused(gan_ctx, gan_models, stem, needle):
    marker = gan_models[1]
    with pytest.raises(ModelError, match=re.escape(needle)) as info:
        gan_ctx.upscalers.get(stem).upscale(noise_image(8, 8), 4, {})
    assert info.value.path.stem == stem and stem in str(info.value)
    assert not marker.exists()  # the pickle's os.system never ran
    gan_ctx.refresh_upscalers()  # listing still works, the good models still run
    assert set(STEMS) <= set(gan_ctx.upscalers.names())
    assert gan_ctx.upscalers.get("RealESRGAN_x2plus").upscale(noise_image(8, 8), 2, {}).size == (16, 16)


@pytest.mark.parametrize("stem, scale", [("RealESRGAN_x4plus", 4), ("RealESRGAN_x2plus", 2),
                                         ("realesr-general-x4v3", 4), ("RealESRGAN_x4plus_anime_6B", 4),
                                         ("4x_foolhardy_Remacri", 4),
                                         ("2xLexicaRRDBNet", 2), ("1x_ReFocus", 1), ("8x_NMKD-Superscale", 8),
                                         ("ESRGAN", 4), ("RRDB_ESRGAN_x4", 4)])
def test_scale_is_guessed_from_the_file_name(stem, scale):
    from webui.builtin.gan_upscalers import guess_scale

    assert guess_scale(stem) == scale
