"""The built-in selectable scripts: X/Y/Z plot, Prompt matrix, Prompts from file or textbox.

Grid layout, argument forms and validation run on a fake ``generate`` (fast, deterministic images);
the tiny model runs them end to end through ``ctx.run_script``, the API and the Gradio endpoint.
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image, ImageChops

from tests.conftest import StepRecorder, registered
from webui.errors import RequestError
from webui.infotext import format_infotext, parse_infotext
from webui.jobs import Job
from webui.pipeline.request import GenerationRequest
from webui.pipeline.result import GenerationResult
from webui.scripts import ScriptChoices, ScriptRun
from webui.scripts_builtin import prompt_matrix
from webui.scripts_builtin import prompts_from_file as prompts_file
from webui.scripts_builtin import xyz_plot as xyz
from webui.scripts_builtin.grid import Annotation, draw_annotations, image_grid

BASE = dict(prompt="a red cat", steps=2, width=64, height=64, seed=1, sampler_name="Euler", save_images=False)
CHOICES = ScriptChoices(samplers=["Euler", "Euler a", "DDIM"], schedules=["Karras", "Exponential"],
                        checkpoints=["tiny-sd1.safetensors [0123456789]"], vaes=["Automatic", "None"],
                        upscalers=["None", "Lanczos"], styles=["warm"])
# A1111's positional X/Y/Z layout (v1.7-v1.10, 18 items): steps 2,3 across, CFG 5,7,9 down, legend, sub images
XYZ_ARGS = [4, "2,3", [], 6, "5,7,9", [], 0, "", [], True, True, False, False, False, False, False, 0, False]


class FakeGen:
    """A ``generate`` that records requests and paints a colour from steps/CFG (no model)."""

    def __init__(self, job: Job | None = None, interrupt_after: int | None = None):
        self.requests: list[GenerationRequest] = []
        self.job = job
        self.interrupt_after = interrupt_after

    def __call__(self, req: GenerationRequest) -> GenerationResult:
        self.requests.append(req)
        colour = (req.steps * 40 % 256, int(req.cfg_scale * 20) % 256, len(req.prompt) * 7 % 256)
        images = [Image.new("RGB", (req.width, req.height), colour) for _ in range(req.batch_size * req.n_iter)]
        params = {"Steps": req.steps, "Sampler": req.sampler_name, "CFG scale": req.cfg_scale, "Seed": req.seed}
        text = format_infotext(req.prompt, req.negative_prompt, params)
        if self.interrupt_after is not None and len(self.requests) >= self.interrupt_after:
            self.job.interrupt()
        n = len(images)
        return GenerationResult(images=images, seeds=[req.seed] * n, subseeds=[req.subseed] * n,
                                infotexts=[text] * n, prompts=[req.prompt] * n,
                                negative_prompts=[req.negative_prompt] * n,
                                info={"prompt": req.prompt, "seed": req.seed, "infotexts": [text] * n})


def fake_run(script, args, req=None, mode="txt2img", gen=None, job=None, saved=None):
    job = job or Job()
    gen = gen or FakeGen(job)
    named = script.parse_args(args, mode)

    def save_grid(image, info):
        if saved is not None:
            saved.append((image, info))
        return None

    req = req or GenerationRequest(**BASE)
    return script.run(ScriptRun(req, named, mode, gen, job, CHOICES, save_grid)), gen


def not_blank(image: Image.Image, box: tuple[int, int, int, int]) -> bool:
    region = image.crop(box).convert("L")
    return region.getextrema()[0] < 200  # some dark (text) pixels on the white margin


# --------------------------------------------------------------------------- the grid helpers


def test_image_grid_and_annotations():
    cells = [Image.new("RGB", (64, 64), (0, 0, 255)) for _ in range(6)]
    grid = image_grid(cells, rows=3)
    assert grid.size == (128, 192)
    out = draw_annotations(grid, 64, 64, ["Steps: 2", "Steps: 3"], ["CFG Scale: 5", "CFG Scale: 7", "CFG Scale: 9"])
    pad_left, pad_top = out.width - 128, out.height - 192
    assert pad_left > 0 and pad_top > 0
    assert not_blank(out, (pad_left, 0, out.width, pad_top))  # column labels
    assert not_blank(out, (0, pad_top, pad_left, out.height))  # row labels
    assert out.getpixel((pad_left + 5, pad_top + 5)) == (0, 0, 255)
    # deterministic; no text on a side adds no room there
    again = draw_annotations(grid, 64, 64, ["Steps: 2", "Steps: 3"], ["CFG Scale: 5", "CFG Scale: 7", "CFG Scale: 9"])
    assert ImageChops.difference(out, again).getbbox() is None
    assert draw_annotations(grid, 64, 64, ["", ""], ["", "", ""]).size == (128, 192)
    assert draw_annotations(grid, 64, 64, ["a", "b"], ["", "", ""], margin=4).size[0] == 128 + 4
    struck = draw_annotations(image_grid(cells[:2], 1), 64, 64, [[Annotation("x", False)], [Annotation("x")]], [""])
    assert struck.width == 128
    with pytest.raises(ValueError):
        draw_annotations(grid, 64, 64, ["one"], ["", "", ""])


# --------------------------------------------------------------------------- X/Y/Z plot: arguments


def test_axis_table_and_indices_per_mode():
    t2i, i2i = xyz.axis_labels("txt2img"), xyz.axis_labels("img2img")
    assert len(xyz.AXES) == 41 and t2i[:5] == ["Nothing", "Seed", "Var. seed", "Var. strength", "Steps"]
    assert t2i[23] == "Denoising" and i2i[22] == "Denoising" and t2i[22] == "Clip skip"
    assert t2i.index("Denoising") == 23 and i2i.index("Denoising") == 22
    assert "Hires steps" in t2i and "Hires steps" not in i2i and "Image CFG Scale" in i2i
    assert t2i[6] == "CFG Scale" and i2i[6] == "Image CFG Scale"
    assert xyz.parse_args([23, "0.5"], "txt2img")["x_type"] == "Denoising"
    assert xyz.parse_args([22, "0.5"], "img2img")["x_type"] == "Denoising"
    assert xyz.parse_args({"x_type": "steps", "y_type": "6"}, "txt2img")["y_type"] == "CFG Scale"
    for bad in ([99, "1"], {"x_type": "Size"}, {"bogus": 1}, {"raw_mode": True}, [0] * 19):
        with pytest.raises(RequestError) as e:
            xyz.parse_args(bad, "txt2img")
        assert e.value.field == "script_args"


def test_value_ranges_and_csv():
    assert xyz.expand_values("int", ["1-5 (+2)"]) == [1, 3, 5]
    assert xyz.expand_values("int", ["1-10 [4]"]) == [1, 4, 7, 10]
    assert xyz.expand_values("int", ["1-3", "7", "10-6 (-2)"]) == [1, 2, 3, 7, 10, 8, 6]
    assert xyz.expand_values("float", ["0.1-0.3 (+0.1)", "1-2 [3]", "7.5"]) == [0.1, 0.2, 0.3, 1.0, 1.5, 2.0, 7.5]
    assert xyz.csv_to_list('cat, "dog, big", bird') == ["cat", "dog, big", "bird"]
    with pytest.raises(ValueError):
        xyz.expand_values("int", ["two"])
    res, gen = fake_run(xyz.SCRIPT, {"x_type": "Steps", "x_values": "1-5 (+2)", "y_type": "Seed",
                                            "y_values": "1-10 [4]"})
    assert sorted({r.steps for r in gen.requests}) == [1, 3, 5]
    assert sorted({r.seed for r in gen.requests}) == [1, 4, 7, 10]
    with pytest.raises(RequestError) as e:
        fake_run(xyz.SCRIPT, {"x_type": "Steps", "x_values": "2,lots"})
    assert e.value.field == "script_args" and "Steps" in e.value.message


# --------------------------------------------------------------------------- X/Y/Z plot: grids


def test_xyz_grid_layout_legend_and_alignment():
    saved: list = []
    res, gen = fake_run(xyz.SCRIPT, XYZ_ARGS, saved=saved)
    assert len(gen.requests) == 6 and len(res.images) == 1 + 6
    grid = res.images[0]
    assert grid.width > 128 and grid.height > 192
    pad_left, pad_top = grid.width - 128, grid.height - 192
    assert not_blank(grid, (pad_left, 0, grid.width, pad_top)) and not_blank(grid, (0, pad_top, pad_left, grid.height))
    for name in ("infotexts", "seeds", "subseeds", "prompts", "negative_prompts"):
        assert len(getattr(res, name)) == len(res.images), name
    assert res.info["infotexts"] == res.infotexts and res.info["index_of_first_image"] == 1
    params = parse_infotext(res.infotexts[0])
    assert params["Script"] == "X/Y/Z plot" and params["X Type"] == "Steps" and params["X Values"] == "2,3"
    assert params["Y Type"] == "CFG Scale" and params["Y Values"] == "5,7,9"
    # cells x-major in the grid, images in the same order, each with its own infotext
    assert [parse_infotext(t)["Steps"] for t in res.infotexts[1:]] == ["2", "3"] * 3
    assert [parse_infotext(t)["CFG scale"] for t in res.infotexts[1:]] == ["5", "5", "7", "7", "9", "9"]
    assert saved and saved[0][1] == res.infotexts[0]

    plain, _ = fake_run(xyz.SCRIPT, {**dict(zip(xyz.ARG_NAMES, XYZ_ARGS)), "draw_legend": False,
                                           "include_lone_images": False})
    assert len(plain.images) == 1 and plain.images[0].size == (128, 192)
    assert plain.images[0].getpixel((64 + 3, 64 * 2 + 3)) == res.images[6].getpixel((0, 0))  # (x=1, y=2)


def test_xyz_positional_equals_keyword_form():
    keyword = {"x_type": "Steps", "x_values": "2,3", "y_type": "CFG Scale", "y_values": "5,7,9",
               "include_lone_images": True}
    req = GenerationRequest(**BASE, subseed=3)
    a, ga = fake_run(xyz.SCRIPT, XYZ_ARGS, req=req)
    b, gb = fake_run(xyz.SCRIPT, keyword, req=req)
    assert ga.requests == gb.requests
    assert ImageChops.difference(a.images[0], b.images[0]).getbbox() is None
    assert a.infotexts == b.infotexts


def test_xyz_z_axis_and_sub_grids():
    res, gen = fake_run(xyz.SCRIPT, {"x_type": "Steps", "x_values": "2,3", "z_type": "CFG Scale",
                                           "z_values": "5,7", "include_sub_grids": True})
    assert len(gen.requests) == 4 and len(res.images) == 3  # main grid + 2 sub-grids
    main, sub = res.images[0], res.images[1]
    assert main.width >= 2 * sub.width and main.height > sub.height  # z titles on top
    assert "Z Type: CFG Scale" in res.infotexts[0] and "Z Type" not in res.infotexts[1]


def test_xyz_prompt_sr_and_order():
    req = GenerationRequest(**{**BASE, "prompt": "a red cat, big", "negative_prompt": "red blur"})
    res, gen = fake_run(xyz.SCRIPT, {"x_type": "Prompt S/R", "x_values": "red, blue, green"}, req=req)
    assert [r.prompt for r in gen.requests] == ["a red cat, big", "a blue cat, big", "a green cat, big"]
    assert gen.requests[1].negative_prompt == "blue blur"
    with pytest.raises(RequestError) as e:
        fake_run(xyz.SCRIPT, {"x_type": "Prompt S/R", "x_values": "purple, blue"}, req=req)
    assert e.value.field == "script_args" and "purple" in e.value.message
    res, gen = fake_run(xyz.SCRIPT, {"x_type": "Prompt order", "x_values": "red, big"}, req=req)
    assert [r.prompt for r in gen.requests] == ["a red cat, big", "a big cat, red"]


def test_xyz_seed_fixing():
    req = GenerationRequest(**{**BASE, "seed": -1})
    res, gen = fake_run(xyz.SCRIPT, {"x_type": "Seed", "x_values": "-1, 5", "y_type": "Steps",
                                           "y_values": "2,3"}, req=req)
    seeds = [r.seed for r in gen.requests]
    assert -1 not in seeds and seeds.count(5) == 2 and len(set(seeds)) == 2
    fixed = parse_infotext(res.infotexts[0])["Fixed X Values"]
    assert fixed.endswith(", 5") and fixed.split(", ")[0] != "-1"
    res, gen = fake_run(xyz.SCRIPT, {"x_type": "Steps", "x_values": "2,3"}, req=req)
    assert len({r.seed for r in gen.requests}) == 1 and gen.requests[0].seed != -1  # one fixed seed for all
    res, gen = fake_run(xyz.SCRIPT, {"x_type": "Seed", "x_values": "-1,-1", "no_fixed_seeds": True}, req=req)
    assert [r.seed for r in gen.requests] == [-1, -1] and "Fixed X Values" not in res.infotexts[0]


def test_xyz_choice_axes_and_unsupported():
    res, gen = fake_run(xyz.SCRIPT, {"x_type": "Sampler", "x_values_dropdown": ["euler a", "DDIM"],
                                           "y_type": "Schedule type", "y_values": "karras", "csv_mode": False})
    assert [r.sampler_name for r in gen.requests] == ["Euler a", "DDIM"] and gen.requests[0].scheduler == "Karras"
    assert parse_infotext(res.infotexts[0])["X Values"] == "euler a,DDIM"
    _, gen = fake_run(xyz.SCRIPT, {"x_type": "Checkpoint name", "x_values": "tiny-sd1", "y_type": "Clip skip",
                                         "y_values": "1,2", "z_type": "VAE", "z_values": "None"})
    assert gen.requests[0].override_settings == {"sd_model_checkpoint": "tiny-sd1.safetensors [0123456789]",
                                                 "CLIP_stop_at_last_layers": 1, "sd_vae": "None"}
    _, gen = fake_run(xyz.SCRIPT, {"x_type": "Token merging ratio", "x_values": "0"})  # neutral: allowed
    assert len(gen.requests) == 1
    for args, text in (({"x_type": "Token merging ratio", "x_values": "0.5"}, "not supported"),
                       ({"x_type": "Checkpoint name", "x_values": "nope"}, "tiny-sd1.safetensors"),
                       ({"x_type": "Clip skip", "x_values": "0,2"}, "between"),
                       ({"x_type": "Steps", "x_values": "2,900"}, "steps")):
        with pytest.raises(RequestError) as e:
            fake_run(xyz.SCRIPT, args)
        assert e.value.field == "script_args" and text in e.value.message, args


def test_xyz_interrupt_mid_grid_returns_partial():
    job = Job()
    gen = FakeGen(job, interrupt_after=2)
    res, _ = fake_run(xyz.SCRIPT, XYZ_ARGS, gen=gen, job=job)
    assert len(gen.requests) == 2 and res.interrupted and res.info["interrupted"]
    assert len(res.images) == 1 + 2 and res.images[0].size[0] > 128  # the grid, missing cells black
    assert len(res.infotexts) == 3


def test_xyz_batches_use_first_image_per_cell():
    req = GenerationRequest(**{**BASE, "batch_size": 2})
    res, gen = fake_run(xyz.SCRIPT, {"x_type": "Steps", "x_values": "2,3", "draw_legend": False,
                                           "include_lone_images": True}, req=req)
    assert all(r.batch_size == 2 for r in gen.requests)
    assert res.images[0].size == (128, 64) and len(res.images) == 1 + 4 and len(res.seeds) == 5


# --------------------------------------------------------------------------- the other scripts (fake)


def test_prompt_matrix_args_and_combinations():
    assert prompt_matrix.parse_args([True, True, "negative", "space", 4], "txt2img") == {
        "put_at_start": True, "different_seeds": True, "prompt_type": "negative", "variations_delimiter": "space",
        "margin_size": 4}
    parts, prompts = prompt_matrix.combinations("a cat|in a hat|on a mat")
    assert prompts == ["a cat", "a cat, in a hat", "a cat, on a mat", "a cat, in a hat, on a mat"]
    assert prompt_matrix.combinations("cat|big", put_at_start=True, delimiter=" ")[1] == ["cat", "big cat"]
    with pytest.raises(RequestError):
        prompt_matrix.parse_args({"prompt_type": "both"}, "txt2img")
    saved: list = []
    res, gen = fake_run(prompt_matrix.SCRIPT, [False, False, "positive", "comma", 0], saved=saved,
                        req=GenerationRequest(**{**BASE, "prompt": "a cat|in a hat|on a mat"}))
    assert [r.prompt for r in gen.requests] == prompts and len(res.images) == 1 + 4 and len(res.infotexts) == 5
    assert len({r.seed for r in gen.requests}) == 1 and saved
    grid = res.images[0]
    pad_left, pad_top = grid.width - 128, grid.height - 128  # 2x2 cells + the parts as labels
    assert pad_left > 0 and pad_top > 0
    assert not_blank(grid, (pad_left, 0, grid.width, pad_top)) and not_blank(grid, (0, pad_top, pad_left, grid.height))
    res, gen = fake_run(prompt_matrix.SCRIPT, {"different_seeds": True},
                        req=GenerationRequest(**{**BASE, "prompt": "a cat|hat|mat|bat"}))
    assert len(gen.requests) == 8 and [r.seed for r in gen.requests] == list(range(1, 9))
    assert res.images[0].size[0] > 4 * 64 and res.images[0].size[1] > 2 * 64  # 4 columns, 2 rows + labels


def test_prompts_file_line_parsing():
    opts = prompts_file.parse_line('--prompt "a cat" in a hat --steps 3 --sampler_name euler --styles "warm"', 1,
                                   CHOICES)
    assert opts == {"prompt": "a cat in a hat", "steps": 3, "sampler_name": "Euler", "styles": ("warm",)}
    assert prompts_file.parse_line("just -- a prompt", 1, CHOICES) == {"prompt": "just -- a prompt"}
    for line, text in (("--steps two", "--steps"), ("--bogus 1", "--bogus"), ("--sampler_name Nope", "Nope"),
                       ('--prompt "open', "line 4")):
        with pytest.raises(RequestError) as e:
            prompts_file.parse_line(line, 4, CHOICES)
        assert e.value.field == "script_args" and "line 4" in e.value.message and text in e.value.message
    assert prompts_file.parse_args([True, False, "x"], "txt2img")["prompt_txt"] == "x"  # pre-1.6 layout
    _, gen = fake_run(prompts_file.SCRIPT, [True, False, "end", "one\ntwo"],
                      req=GenerationRequest(**{**BASE, "prompt": "base", "seed": 10, "n_iter": 2}))
    assert [(r.prompt, r.seed) for r in gen.requests] == [("base one", 10), ("base two", 12)]


# --------------------------------------------------------------------------- on the tiny model


def test_xyz_unknown_sampler_fails_before_generating(ctx, monkeypatch):
    calls = []
    monkeypatch.setattr("webui.context.generate", lambda *a, **k: calls.append(a))
    with pytest.raises(RequestError) as e:
        ctx.run_script(GenerationRequest(**BASE), "X/Y/Z plot", [10, "Euler, Nope", [], 0, "", [], 0, "", [],
                                                                  True, False, False, False, False, False, False,
                                                                  0, True])
    assert e.value.field == "script_args" and "Nope" in e.value.message and "Euler a" in e.value.message
    with pytest.raises(RequestError) as e:
        ctx.run_script(GenerationRequest(**BASE), "Prompts from file or textbox",
                       [False, False, "start", "a cat\n--prompt dog --nope 1"])
    assert e.value.field == "script_args" and "line 2" in e.value.message
    assert calls == []


@pytest.fixture(scope="module")
def app(ctx):
    from webui.server import create_app

    return create_app(ctx)  # with the UI: test_gradio_client_xyz drives it


def test_xyz_api_positional(app):
    from fastapi.testclient import TestClient

    client = TestClient(app)
    body = {**BASE, "script_name": "x/y/z plot",
            "script_args": [4, "2,3", [], 6, "5,7", [], 0, "", [], True, True, False, False, False, False, False, 0,
                            False]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    images = [Image.open(io.BytesIO(base64.b64decode(b))) for b in data["images"]]
    assert len(images) == 1 + 4
    assert images[0].width > 128 and images[0].height > 128 and images[1].size == (64, 64)
    info = json.loads(data["info"])
    assert len(info["infotexts"]) == 5 and "Script: X/Y/Z plot" in info["infotexts"][0]
    assert "Steps: 3" in info["infotexts"][2] and "CFG scale: 7" in info["infotexts"][3]
    bad = client.post("/sdapi/v1/txt2img", json={**body, "script_args": {"x_type": "Sampler", "x_values": "Nope",
                                                                         "csv_mode": True}})
    assert bad.status_code == 422 and "script_args" in bad.text


def test_xyz_img2img_denoising(ctx):
    init = Image.new("RGB", (64, 64), (200, 40, 40))
    req = GenerationRequest(**BASE).with_(mode="img2img", init_images=(init,))
    res = ctx.run_script(req, "X/Y/Z plot", [22, "0.3,0.6", [], 0, "", [], 0, "", [], False, False, False, False,
                                             False, False, False, 0, False])
    assert len(res.images) == 1 and res.images[0].size == (128, 64)
    assert "X Type: Denoising" in res.infotexts[0] and "Denoising strength: 0.3" in res.infotexts[0]


def test_prompt_matrix_on_model(ctx):
    res = ctx.run_script(GenerationRequest(**{**BASE, "prompt": "a cat|red"}), "prompt matrix",
                         [True, False, "positive", "space", 0])
    assert len(res.images) == 1 + 2 and len(res.infotexts) == 3 and res.info["infotexts"] == res.infotexts
    assert res.prompts[1:] == ["a cat", "red a cat"] and "red a cat" in res.infotexts[2]
    grid = res.images[0]
    assert grid.width == 128 and grid.height > 64 and not_blank(grid, (0, 0, 128, grid.height - 64))
    assert len(set(res.seeds)) == 1


def test_prompts_from_file_on_model(ctx):
    text = 'a cat\n--prompt "a dog" --steps 3 --seed 7\n\n--prompt bird --negative_prompt "blurry" --cfg_scale 5'
    res = ctx.run_script(GenerationRequest(**BASE), "prompts from file or textbox", [False, False, "start", text])
    assert len(res.images) == 3 and len(res.infotexts) == 3 and res.info["infotexts"] == res.infotexts
    p = [parse_infotext(t) for t in res.infotexts]
    assert p[0]["Prompt"] == "a cat a red cat" and p[0]["Steps"] == "2" and p[0]["Seed"] == "1"
    assert p[1]["Prompt"] == "a dog a red cat" and p[1]["Steps"] == "3" and p[1]["Seed"] == "7"
    assert p[2]["Negative prompt"] == "blurry" and p[2]["CFG scale"] == "5"


def test_gradio_client_xyz(app):
    from gradio_client import Client

    from tests.live_server import LiveServer
    from webui.ui.generation import script_field

    kw = {script_field("X/Y/Z plot", "x_type"): "Steps", script_field("X/Y/Z plot", "x_values"): "2,3",
          script_field("X/Y/Z plot", "include_lone_images"): True}
    with LiveServer(app) as server:
        client = Client(server.url, verbose=False)
        gallery, info = client.predict(prompt="a red cat", steps=2, sampler_name="Euler", width=64, height=64, seed=1,
                                       script_name="X/Y/Z plot", api_name="/txt2img", **kw)
    assert len(gallery) == 3
    grid = Image.open(gallery[0]["image"])
    assert grid.width == 128 and grid.height > 64  # column labels only
    assert Image.open(gallery[1]["image"]).size == (64, 64)
    assert "Script: X/Y/Z plot" in info and "X Type: Steps" in info


def test_script_info_lists_args_in_a1111_positional_order(app):
    from fastapi.testclient import TestClient

    info = TestClient(app).get("/sdapi/v1/script-info").json()
    by_name = {(i["name"], i["is_img2img"]): [a["name"] for a in i["args"]] for i in info}
    for module in (xyz, prompt_matrix, prompts_file):
        title = module.TITLE.lower()
        assert by_name[(title, False)] == list(module.ARG_NAMES) == by_name[(title, True)]
    xyz_args = next(i for i in info if i["name"] == "x/y/z plot")["args"]
    assert [a["label"] for a in xyz_args][9:13] == ["Draw legend", "Include Sub Images", "Include Sub Grids",
                                                   "Keep -1 for seeds"]


def test_render_controls_passes_choices_only_to_a_render_that_takes_them():
    from webui.scripts import ScriptDef

    got = []
    one = ScriptDef("one", lambda r: None, render=lambda mode: got.append(mode) or {"a": 1})
    two = ScriptDef("two", lambda r: None, render=lambda mode, choices: got.append(choices()) or {"b": 2})
    assert one.render_controls("txt2img", lambda: CHOICES) == {"a": 1}
    assert two.render_controls("img2img", lambda: CHOICES) == {"b": 2}
    assert got == ["txt2img", CHOICES]
    assert ScriptDef("none", lambda r: None).render_controls("txt2img") == {}


def test_xyz_progress_counts_cells_times_batches(ctx):
    counters = StepRecorder(lambda state: (state.job.job_no, state.job.job_count, state.job.progress))
    with registered(ctx, counters, "xyz-progress-spy") as spy:
        job = Job()
        res = ctx.run_script(GenerationRequest(**{**BASE, "n_iter": 2}), "X/Y/Z plot",
                             {"x_type": "Steps", "x_values": "2,3", "y_type": "CFG Scale", "y_values": "5,7"}, job)
    assert res.images and job.job_count == 4 * 2
    assert {count for _, count, _ in spy.seen} == {8}
    assert sorted({no for no, _, _ in spy.seen}) == list(range(8))  # every batch of every cell, counted on
    progress = [p for _, _, p in spy.seen]
    assert progress == sorted(progress) and progress[0] < 0.1 and progress[-1] > 0.85
    assert job.progress == 1.0


def test_job_progress_without_a_plan_is_per_generation():
    job = Job()
    job.begin_generation(2)
    job.set_stage(1, 4)
    assert (job.job_no, job.job_count) == (1, 2)
    job.plan(6)
    job.begin_generation(2)
    job.begin_generation(3)
    job.set_stage(1, 4)
    job.step(2)
    assert (job.job_no, job.job_count) == (3, 6) and job.progress == pytest.approx(3.5 / 6)
    job.begin_generation(2)  # more than announced: the count grows, never shrinks
    assert job.job_count == 7
