"""The img2img scripts "SD upscale" and "Loopback" (A1111's ``scripts/sd_upscale.py``, ``scripts/loopback.py``).

Expected numbers are worked out by hand from A1111's sources (cited at each test); the tiling, the seeds
and the strengths run on a fake ``generate``, the tiny model runs both scripts through the HTTP API.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np
import pytest
from PIL import Image

from tests.conftest import StepRecorder, api_only, registered
from webui.errors import RequestError
from webui.jobs import Job
from webui.pipeline.request import GenerationRequest
from webui.pipeline.result import GenerationResult
from webui.scripts import ScriptChoices, ScriptRun
from webui.scripts_builtin import loopback, sd_upscale
from webui.scripts_builtin.sd_upscale import combine_tiles, ramp, split_tiles, tile_grid, upscaled_size

CHOICES = ScriptChoices(samplers=["Euler", "Euler a"], upscalers=["None", "Lanczos", "Nearest"])
BASE = dict(prompt="a red cat", steps=2, width=64, height=64, seed=10, subseed=5, sampler_name="Euler",
            save_images=False, mode="img2img", denoising_strength=0.75)


def img2img(init: Image.Image, **kw) -> GenerationRequest:
    return GenerationRequest(**{**BASE, **kw}).with_(init_images=(init,))


class FakeGen:
    """Records each request; returns its init images (one per batch item, the last one repeating), each
    brightened by 1 so a loop's output is told from its input."""

    def __init__(self, job: Job | None = None, skip_at: int | None = None):
        self.requests: list[GenerationRequest] = []
        self.job = job
        self.skip_at = skip_at

    def __call__(self, req: GenerationRequest) -> GenerationResult:
        self.requests.append(req)
        if self.skip_at is not None and len(self.requests) == self.skip_at:
            self.job.skip()
        elif self.job is not None:
            self.job.clear_skip()  # the pipeline clears a skip when a generation starts
        inits = list(req.init_images)
        images = [Image.eval(inits[min(j, len(inits) - 1)].convert("RGB"), lambda v: min(255, v + 1))
                  for j in range(req.batch_size)]
        seeds = [req.seed + j for j in range(req.batch_size)]
        texts = [f"{req.prompt}\nSteps: {req.steps}, Seed: {s}, Size: {req.width}x{req.height}, "
                 f"Denoising strength: {req.denoising_strength}" for s in seeds]
        return GenerationResult(images=images, seeds=seeds, subseeds=[req.subseed] * len(seeds), infotexts=texts,
                                prompts=[req.prompt] * len(seeds), negative_prompts=[""] * len(seeds),
                                info={"prompt": req.prompt, "seed": req.seed, "width": req.width})


def fake_run(module, args, req, gen=None, job=None, saved=None, upscale=None):
    job = job or Job()
    gen = gen or FakeGen(job)
    named = module.parse_args(args, "img2img")

    def save_grid(image, info):
        if saved is not None:
            saved.append(("grid", image.size, info))
        return None

    def save_image(image, seed, info):
        if saved is not None:
            saved.append(("image", image.size, seed, info))
        return f"/out/{seed}.png"

    res = module.SCRIPT.run(ScriptRun(req, named, "img2img", gen, job, CHOICES, save_grid, upscale,
                                            save_image))
    return res, gen


def gradient(w: int, h: int) -> Image.Image:
    """Red rises by 1 per column, green by 1 per row."""
    a = np.zeros((h, w, 3), dtype=np.uint8)
    a[..., 0] = np.arange(w)[None, :]
    a[..., 1] = np.arange(h)[:, None]
    a[..., 2] = 100
    return Image.fromarray(a, "RGB")


# --------------------------------------------------------------------------- tile arithmetic (SD upscale)


def test_tile_grid_of_an_odd_size_follows_a1111():
    # modules/upscaler.py Upscaler.upscale: target side = int(side * scale) // 8 * 8
    # -> 70x50 at 2: 140 // 8 * 8 = 136, 100 // 8 * 8 = 96
    assert upscaled_size(70, 50, 2.0) == (136, 96)
    # modules/images.py split_grid with tile 64, overlap 8 (non-overlapping part 56):
    #   cols = ceil((136 - 8) / 56) = ceil(2.29) = 3, dx = (136 - 64) / 2 = 36 -> x = 0, 36, 72 (72 + 64 >= 136 -> 72)
    #   rows = ceil((96 - 8) / 56) = ceil(1.57) = 2, dy = (96 - 64) / 1 = 32 -> y = 0, 32 (32 + 64 >= 96 -> 32)
    grid = tile_grid(136, 96, 64, 64, 8)
    assert (grid.xs, grid.ys, grid.count) == ((0, 36, 72), (0, 32), 6)
    # 200 wide, tile 64, overlap 16: cols = ceil(184 / 48) = 4, dx = 136 / 3 = 45.33 -> int: 0, 45, 90, 136
    assert tile_grid(200, 64, 64, 64, 16).xs == (0, 45, 90, 136)
    # an image narrower than a tile: cols = ceil((50 - 8) / 56) = 1; x = 0 reaches the edge -> 50 - 64 = -14
    assert tile_grid(50, 64, 64, 64, 8).xs == (-14,)
    with pytest.raises(ValueError):
        tile_grid(136, 96, 64, 64, 64)


def test_tiles_put_back_unchanged_give_the_image_back():
    image = gradient(136, 96)
    grid = tile_grid(136, 96, 64, 64, 8)
    tiles = split_tiles(image, grid)
    assert [t.size for t in tiles] == [(64, 64)] * 6
    assert tiles[4].getpixel((0, 0)) == (36, 32, 100)  # row 1, column 1 starts at (36, 32)
    assert np.array_equal(np.asarray(combine_tiles(tiles, grid)), np.asarray(image))
    narrow = gradient(50, 40)
    small = tile_grid(50, 40, 64, 64, 8)
    assert np.array_equal(np.asarray(combine_tiles(split_tiles(narrow, small), small)), np.asarray(narrow))


def test_blend_weights_are_a_linear_ramp():
    # modules/images.py combine_grid: the mask over the overlap is i * 255 / overlap at offset i
    assert list(ramp(8)) == [0, 1 / 8, 2 / 8, 3 / 8, 4 / 8, 5 / 8, 6 / 8, 7 / 8]
    # 120 wide, tile 64, overlap 8: cols = ceil(112 / 56) = 2, x = 0, 56 -> overlap at columns 56..63
    grid = tile_grid(120, 64, 64, 64, 8)
    assert grid.xs == (0, 56)
    out = np.asarray(combine_tiles([Image.new("RGB", (64, 64), 0), Image.new("RGB", (64, 64), (255,) * 3)], grid))
    # 255 * i / 8 rounded: 0, 31.9, 63.8, 95.6, 127.5, 159.4, 191.3, 223.1
    assert list(out[10, 56:64, 0]) == [0, 32, 64, 96, 128, 159, 191, 223]
    assert (out[:, :56] == 0).all() and (out[:, 64:] == 255).all()
    # rows the same way: 64 x 120, tiles at y = 0, 56
    tall = tile_grid(64, 120, 64, 64, 8)
    out = np.asarray(combine_tiles([Image.new("RGB", (64, 64), 0), Image.new("RGB", (64, 64), (255,) * 3)], tall))
    assert list(out[56:64, 3, 1]) == [0, 32, 64, 96, 128, 159, 191, 223]


def test_seams_are_blended_without_a_step():
    image = gradient(136, 96)
    grid = tile_grid(136, 96, 64, 64, 8)
    tiles = split_tiles(image, grid)
    # each tile brightened by 6 x its index (0, 6, ... 30): a hard paste would step by 6 (+1 of the gradient)
    # across a column seam and by 18 (+1) across the row seam
    shifted = [Image.eval(t, lambda v, k=k: v + 6 * k) for k, t in enumerate(tiles)]
    out = np.asarray(combine_tiles(shifted, grid)).astype(int)
    across = np.abs(np.diff(out, axis=1)).max()
    down = np.abs(np.diff(out, axis=0)).max()
    # a ramp over 8 pixels spreads the 6 over 8 columns (0.75 + 1 per column) and the 18 over 8 rows (2.25 + 1)
    assert across <= 2 and down <= 4
    hard = Image.new("RGB", (136, 96))
    for (x, y, _, _), tile in zip(grid.boxes(), shifted):  # the same tiles pasted one over the other
        hard.paste(tile, (x, y))
    hard_a = np.asarray(hard).astype(int)
    assert np.abs(np.diff(hard_a, axis=1)).max() == 7 and np.abs(np.diff(hard_a, axis=0)).max() == 19


def test_sd_upscale_run_tiles_seeds_and_output_size():
    job = Job()
    saved = []
    init = gradient(70, 50)
    res, gen = fake_run(sd_upscale, ["", 8, "Lanczos", 2.0], img2img(init, n_iter=2, batch_size=4), job=job,
                        saved=saved)
    # 6 tiles in batches of 4 -> 2 generations per image; scripts/sd_upscale.py: image n starts at seed + n and
    # each generation at the previous one's seed + 1
    assert [(len(r.init_images), r.batch_size, r.seed) for r in gen.requests] == [(4, 4, 10), (2, 2, 11),
                                                                                (4, 4, 11), (2, 2, 12)]
    assert all((r.width, r.height, r.n_iter, r.save_images, r.subseed) == (64, 64, 1, False, 5) for r in gen.requests)
    assert [im.size for im in res.images] == [(136, 96), (136, 96)]
    assert res.seeds == [10, 11] and job.job_count == 4
    assert "SD upscale overlap: 8, SD upscale upscaler: Lanczos" in res.infotexts[0]
    assert "Seed: 11" in res.infotexts[1] and "Size: 64x64" in res.infotexts[1]
    assert saved == [("image", (136, 96), 10, res.infotexts[0]), ("image", (136, 96), 11, res.infotexts[1])]
    assert res.paths == ["/out/10.png", "/out/11.png"] and res.info["infotexts"] == res.infotexts
    # the fake brightens every tile by 1: the result is the Lanczos-enlarged image, 1 brighter
    expected = np.asarray(init.resize((136, 96), Image.Resampling.LANCZOS)).astype(int) + 1
    assert np.abs(np.asarray(res.images[0]).astype(int) - expected).max() <= 1


def test_sd_upscale_upscaler_by_index_name_and_none():
    calls = []

    def upscale(image, name, w, h):
        calls.append((name, image.size, (w, h)))
        return image.resize((w, h))

    init = gradient(64, 64)
    fake_run(sd_upscale, ["", 0, 2, 1.5], img2img(init), upscale=upscale)  # index 2 of CHOICES.upscalers
    fake_run(sd_upscale, {"upscaler_index": "LANCZOS", "scale_factor": 2, "overlap": 16}, img2img(init),
             upscale=upscale)
    assert calls == [("Nearest", (64, 64), (96, 96)), ("Lanczos", (64, 64), (128, 128))]
    res, gen = fake_run(sd_upscale, ["", 0, "None", 2.0], img2img(gradient(64, 64)), upscale=upscale)
    # A1111: the "None" upscaler leaves the image as it is (no scaling)
    assert len(calls) == 2 and res.images[0].size == (64, 64) and len(gen.requests) == 1


@pytest.mark.parametrize("args, words", [
    (["", 8, "Nope", 2.0], ["unknown upscaler 'Nope'", "Lanczos"]),
    (["", 8, 7, 2.0], ["upscaler_index 7", "0-2"]),
    (["", 64, "Lanczos", 2.0], ["overlap (64)", "tile size"]),
    (["", -8, "Lanczos", 2.0], ["overlap must be between"]),
    (["", "wide", "Lanczos", 2.0], ["overlap must be a number"]),
    (["", 8, "Lanczos", 0], ["scale_factor"]),
    (["", 8, "Lanczos", 2.0, 1], ["at most 4 positional"]),
    ({"tile": 8}, ["unknown argument(s) tile"]),
])
def test_sd_upscale_bad_arguments_name_script_args(args, words):
    gen = FakeGen()
    with pytest.raises(RequestError) as e:
        fake_run(sd_upscale, args, img2img(gradient(64, 64)), gen=gen)
    assert e.value.field == "script_args"
    for word in words:
        assert word in e.value.message
    assert gen.requests == []


def test_sd_upscale_refuses_oversized_work_before_upscaling():
    calls = []
    upscale = lambda image, name, w, h: calls.append(name) or image.resize((w, h))  # noqa: E731
    with pytest.raises(RequestError) as e:  # 600 x 8 = 4800 -> 4800 // 8 * 8 = 4800 > 4096
        fake_run(sd_upscale, ["", 8, "Lanczos", 8.0], img2img(Image.new("RGB", (600, 64))), upscale=upscale)
    assert e.value.field == "script_args" and "4800x512" in e.value.message
    with pytest.raises(RequestError) as e:  # 3 x 2 = 6 -> 6 // 8 * 8 = 0
        fake_run(sd_upscale, ["", 8, "Lanczos", 2.0], img2img(Image.new("RGB", (3, 3))), upscale=upscale)
    assert "0x0" in e.value.message
    # 512 x 8 = 4096 square in 64-pixel tiles overlapping by 8: ceil(4088 / 56) = 73 -> 73 x 73 = 5329 tiles
    with pytest.raises(RequestError) as e:
        fake_run(sd_upscale, ["", 8, "Lanczos", 8.0], img2img(Image.new("RGB", (512, 512))), upscale=upscale)
    assert "5329 tiles" in e.value.message and calls == []


# --------------------------------------------------------------------------- Loopback


# scripts/loopback.py calculate_denoising_strength: loop k of n moves by (final - start) * f(k / (n - 1)),
# f = p (Linear), sin(p * pi / 2) (Aggressive), 1 - cos(p * pi / 2) (Lazy). Start 0.75, final 0.25, 5 loops:
# p = 0, 0.25, 0.5, 0.75, 1; sin(pi/8) = 0.38268343, sin(pi/4) = 0.70710678, sin(3pi/8) = 0.92387953
@pytest.mark.parametrize("curve, expected", [
    ("Linear", [0.75, 0.625, 0.5, 0.375, 0.25]),
    ("Aggressive", [0.75, 0.75 - 0.5 * 0.38268343, 0.75 - 0.5 * 0.70710678, 0.75 - 0.5 * 0.92387953, 0.25]),
    ("Lazy", [0.75, 0.75 - 0.5 * (1 - 0.92387953), 0.75 - 0.5 * (1 - 0.70710678), 0.75 - 0.5 * (1 - 0.38268343),
              0.25]),
])
def test_loopback_strength_follows_each_curve(curve, expected):
    _, gen = fake_run(loopback, [5, 0.25, curve, "None"], img2img(gradient(64, 64)))
    assert [r.denoising_strength for r in gen.requests] == pytest.approx(expected, abs=1e-7)


def test_loopback_one_loop_keeps_the_request_strength():
    res, gen = fake_run(loopback, {"loops": 1, "final_denoising_strength": 0.1}, img2img(gradient(64, 64)))
    assert [r.denoising_strength for r in gen.requests] == [0.75] and len(res.images) == 1  # no grid for one


def test_loopback_feeds_outputs_back_and_returns_every_loop():
    init = Image.new("RGB", (64, 64), (50, 50, 50))
    saved = []
    job = Job()
    res, gen = fake_run(loopback, [3, 0.5, "Linear"], img2img(init, inpainting_fill=0), job=job, saved=saved)
    assert [r.init_images[0].getpixel((0, 0)) for r in gen.requests] == [(50,) * 3, (51,) * 3, (52,) * 3]
    assert [r.seed for r in gen.requests] == [10, 11, 12]  # previous seed + 1
    assert [r.inpainting_fill for r in gen.requests] == [0, 1, 1]  # then "original"
    assert all((r.batch_size, r.n_iter) == (1, 1) for r in gen.requests) and job.job_count == 3
    # one batch: a one-row grid, then every loop's image
    assert [im.size for im in res.images] == [(192, 64), (64, 64), (64, 64), (64, 64)]
    assert res.info["index_of_first_image"] == 1 and res.seeds[1:] == [10, 11, 12]
    assert "Final denoising strength: 0.5, Denoising curve: Linear" in res.infotexts[2]
    assert "Denoising strength: 0.625" in res.infotexts[2] and saved[0][:2] == ("grid", (192, 64))


def test_loopback_batches_restart_from_the_init_image_and_keep_counting_seeds():
    init = Image.new("RGB", (64, 64), (50, 50, 50))
    job = Job()
    res, gen = fake_run(loopback, [2, 0.25, "Lazy"], img2img(init, n_iter=2, batch_size=3), job=job)
    assert [(r.seed, r.init_images[0].getpixel((0, 0))[0]) for r in gen.requests] == [(10, 50), (11, 51),
                                                                                        (12, 50), (13, 51)]
    assert [r.denoising_strength for r in gen.requests] == pytest.approx([0.75, 0.25, 0.75, 0.25], abs=1e-12)
    # several batches: only each batch's last image, after their grid (which carries the first seed)
    assert len(res.images) == 3 and res.seeds == [10, 11, 13] and job.job_count == 4
    assert res.images[1].getpixel((0, 0)) == (52, 52, 52)


def test_loopback_interrogation_is_accepted_with_a_warning():
    res, _ = fake_run(loopback, [2, 0.5, "Linear", "CLIP"], img2img(gradient(64, 64)))
    assert len(res.images) == 3
    assert any("append_interrogation 'CLIP' is ignored" in w for w in res.warnings)
    assert res.info["warnings"] == res.warnings


def test_loopback_skip_ends_the_batch_without_that_image():
    job = Job()
    res, gen = fake_run(loopback, [3, 0.5, "Linear"], img2img(gradient(64, 64)), gen=FakeGen(job, skip_at=2),
                        job=job)
    assert len(gen.requests) == 2 and len(res.images) == 1  # loop 1 kept, loop 2 skipped, loop 3 not run


@pytest.mark.parametrize("args, word", [
    ([0, 0.5, "Linear"], "loops must be between 1"),
    ([3, 1.5, "Linear"], "final_denoising_strength"),
    ([3, 0.5, "Sideways"], "denoising_curve must be one of Aggressive, Linear, Lazy"),
    ({"loop": 3}, "unknown argument(s) loop"),
])
def test_loopback_bad_arguments_name_script_args(args, word):
    with pytest.raises(RequestError) as e:
        loopback.parse_args(args, "img2img")
    assert e.value.field == "script_args" and word in e.value.message


# --------------------------------------------------------------------------- on the tiny model, over HTTP


def b64(image: Image.Image) -> str:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


def decode(data: str) -> Image.Image:
    return Image.open(io.BytesIO(base64.b64decode(data)))


@pytest.fixture(scope="module")
def client(ctx):
    from fastapi.testclient import TestClient

    from webui.server import create_app

    return TestClient(create_app(api_only(ctx)))


def a1111_request(init: Image.Image) -> dict:
    """test/test_img2img.py's simple_img2img_request (A1111), with our init image."""
    return {"batch_size": 1, "cfg_scale": 7, "denoising_strength": 0.75, "eta": 0, "height": 64,
            "include_init_images": False, "init_images": [b64(init)], "inpaint_full_res": False,
            "inpaint_full_res_padding": 0, "inpainting_fill": 0, "inpainting_mask_invert": False, "mask": None,
            "mask_blur": 4, "n_iter": 1, "negative_prompt": "", "override_settings": {}, "prompt": "example prompt",
            "resize_mode": 0, "restore_faces": False, "s_churn": 0, "s_noise": 1, "s_tmax": 0, "s_tmin": 0,
            "sampler_index": "Euler a", "seed": -1, "seed_resize_from_h": -1, "seed_resize_from_w": -1, "steps": 3,
            "styles": [], "subseed": -1, "subseed_strength": 0, "tiling": False, "width": 64}


def test_api_a1111_sd_upscale_payload(ctx, client):
    # A1111 test/test_img2img.py test_img2img_sd_upscale_performed; 40x40 at 2 -> 80x80:
    # cols = rows = ceil((80 - 8) / 56) = 2 -> 4 tiles of 64x64
    body = {**a1111_request(gradient(40, 40)), "script_name": "sd upscale", "script_args": ["", 8, "Lanczos", 2.0]}
    counters = StepRecorder(lambda state: (state.job.job_no, state.job.job_count))
    with registered(ctx, counters, "sd-upscale-progress-spy") as spy:
        r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    # the job's progress counts over all tiles: job_count 4, job_no 0..3
    assert sorted({no for no, _ in spy.seen}) == [0, 1, 2, 3] and {c for _, c in spy.seen} == {4}
    data = r.json()
    assert len(data["images"]) == 1 and decode(data["images"][0]).size == (80, 80)
    info = json.loads(data["info"])
    assert "SD upscale overlap: 8" in info["infotexts"][0] and "SD upscale upscaler: Lanczos" in info["infotexts"][0]


def test_api_sd_upscale_upscaler_by_index_and_keywords(client):
    names = [u["name"] for u in client.get("/sdapi/v1/upscalers").json()]
    body = {**a1111_request(gradient(32, 32)), "steps": 2, "seed": 3, "script_name": "SD upscale"}
    r = client.post("/sdapi/v1/img2img", json={**body, "script_args": ["", 0, names.index("Nearest"), 2.0]})
    assert r.status_code == 200, r.text
    assert "SD upscale upscaler: Nearest" in json.loads(r.json()["info"])["infotexts"][0]
    r = client.post("/sdapi/v1/img2img", json={**body, "script_args": {"upscaler_index": "nearest",
                                                                         "scale_factor": 2, "overlap": 16}})
    assert r.status_code == 200, r.text
    assert decode(r.json()["images"][0]).size == (64, 64)


@pytest.mark.parametrize("args, word", [
    (["", 8, "Nope", 2.0], "unknown upscaler"),
    (["", 64, "Lanczos", 2.0], "overlap"),
    (["", "x", "Lanczos", 2.0], "overlap"),
])
def test_api_sd_upscale_bad_arguments_answer_422(client, monkeypatch, args, word):
    calls = []
    monkeypatch.setattr("webui.context.generate", lambda *a, **k: calls.append(a))
    body = {**a1111_request(gradient(32, 32)), "script_name": "sd upscale", "script_args": args}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 422 and "script_args" in r.text and word in r.text
    assert calls == []


def test_api_loopback_returns_every_loop(client):
    body = {**a1111_request(gradient(64, 64)), "steps": 2, "seed": 4, "script_name": "loopback",
            "script_args": [3, 0.25, "Aggressive", "None"]}
    r = client.post("/sdapi/v1/img2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    images = [decode(b) for b in data["images"]]
    assert [im.size for im in images] == [(192, 64)] + [(64, 64)] * 3  # grid, then the 3 loops
    info = json.loads(data["info"])
    assert info["all_seeds"][1:] == [4, 5, 6]
    # Aggressive, start 0.75, final 0.25, 3 loops: p = 0.5 -> 0.75 - 0.5 * sin(pi / 4) = 0.39644661
    second = info["infotexts"][2]
    assert "Denoising strength: 0.396446" in second and "Denoising curve: Aggressive" in second


def test_api_lists_both_scripts_for_img2img_only(client):
    scripts = client.get("/sdapi/v1/scripts").json()
    assert {"sd upscale", "loopback"} <= set(scripts["img2img"])
    assert not {"sd upscale", "loopback"} & set(scripts["txt2img"])
    info = {(i["name"], i["is_img2img"]): i["args"] for i in client.get("/sdapi/v1/script-info").json()}
    assert ("sd upscale", False) not in info and ("loopback", False) not in info
    # A1111's positional order (scripts/sd_upscale.py and scripts/loopback.py ui() return lists)
    up = info[("sd upscale", True)]
    assert [a["name"] for a in up] == ["info", "overlap", "upscaler_index", "scale_factor"]
    assert [a["label"] for a in up[1:]] == ["Tile overlap", "Upscaler", "Scale Factor"]
    assert up[1]["value"] == 64 and up[3]["value"] == 2.0 and "Lanczos" in up[2]["choices"]
    loop = info[("loopback", True)]
    assert [a["name"] for a in loop] == ["loops", "final_denoising_strength", "denoising_curve", "append_interrogation"]
    assert loop[2]["choices"] == ["Aggressive", "Linear", "Lazy"]
    assert loop[3]["choices"] == ["None", "CLIP", "DeepBooru"]
    r = client.post("/sdapi/v1/txt2img", json={"prompt": "x", "steps": 2, "width": 64, "height": 64,
                                               "script_name": "loopback", "script_args": [2, 0.5, "Linear"]})
    assert r.status_code == 422 and "script_name" in r.text
