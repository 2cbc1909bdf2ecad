"""X/Y/Z plot with the ``script_args`` of A1111 v1.7 to v1.10 (18 positional items) and "Vary seeds for X/Y/Z".

The seed rule is A1111's, read from AUTOMATIC1111/stable-diffusion-webui ``scripts/xyz_grid.py`` (v1.7.0 to
v1.10.x, ``Script.run`` and its ``cell()``): every cell's copy of the request gets its axis values first, then
its seed moves on by ``ix`` when X varies, ``iy * (X size if X varies else 1)`` when Y varies and
``iz * (X size if X varies else 1) * (Y size if Y varies else 1)`` when Z varies. The base seed and Seed-axis
values of -1 are fixed before that unless ``no_fixed_seeds``; ``Fixed X Values`` keeps the axis values as
given (not moved). The expected seeds below are worked out by hand from that rule, not read from our code.
Where we differ on purpose: a seed still -1 (``no_fixed_seeds``) stays -1 in every cell (A1111 would add the
offset to -1 and so give the fixed seeds 0, 1, ...).
"""

from __future__ import annotations

import base64
import io
import json

import pytest
from PIL import Image

from tests.test_scripts_builtin import BASE, fake_run
from webui.errors import RequestError
from webui.infotext import parse_infotext
from webui.pipeline.request import GenerationRequest
from webui.scripts_builtin import xyz_plot as xyz

#: The 18 names, in A1111 v1.7-v1.10's order (``Script.ui`` return list / ``Script.run`` parameters).
A1111_ARG_NAMES = ["x_type", "x_values", "x_values_dropdown", "y_type", "y_values", "y_values_dropdown",
                   "z_type", "z_values", "z_values_dropdown", "draw_legend", "include_lone_images",
                   "include_sub_grids", "no_fixed_seeds", "vary_seeds_x", "vary_seeds_y", "vary_seeds_z",
                   "margin_size", "csv_mode"]


def a1111_args(**kw):
    """A1111 1.10's UI defaults as the 18 positional items (txt2img: 4 = Steps, 6 = CFG Scale), changed by ``kw``."""
    values = {"x_type": 4, "x_values": "2,3", "x_values_dropdown": [], "y_type": 0, "y_values": "",
              "y_values_dropdown": [], "z_type": 0, "z_values": "", "z_values_dropdown": [], "draw_legend": True,
              "include_lone_images": False, "include_sub_grids": False, "no_fixed_seeds": False,
              "vary_seeds_x": False, "vary_seeds_y": False, "vary_seeds_z": False, "margin_size": 0,
              "csv_mode": False}
    values.update(kw)
    return [values[name] for name in A1111_ARG_NAMES]


@pytest.fixture(scope="module")
def client(api_client):
    """The API (no UI: quicker to build) on the session's model and queue."""
    return api_client


def cell_params(res):
    """(Steps, CFG scale, Seed) of every single image (after the grids) from its infotext."""
    first = res.info["index_of_first_image"]
    return [(p["Steps"], p["CFG scale"], int(p["Seed"])) for p in map(parse_infotext, res.infotexts[first:])]


# --------------------------------------------------------------------------- the layout


def test_a1111_110_payload_through_the_api(client):
    """The body an A1111 1.10 client (e.g. webuiapi) sends: 18 positional items, axis 4 = Steps."""
    body = {**BASE, "script_name": "x/y/z plot",
            "script_args": [4, "2,3", [], 0, "", [], 0, "", [], True, False, False, False, False, False, False, 0,
                            False]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    assert len(data["images"]) == 1  # the grid only
    grid = Image.open(io.BytesIO(base64.b64decode(data["images"][0])))
    assert grid.width == 128 and grid.height > 64  # two 64px cells, the legend on top
    info = json.loads(data["info"])
    params = parse_infotext(info["infotexts"][0])
    assert (params["Script"], params["X Type"], params["X Values"], params["Steps"], params["Seed"]) == (
        "X/Y/Z plot", "Steps", "2,3", "2", "1")

    # the same with "Include Sub Images" and "Vary seeds for X": each cell with its own steps and seed
    body["script_args"] = a1111_args(include_lone_images=True, vary_seeds_x=True)
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 200, r.text
    data = r.json()
    info = json.loads(data["info"])
    assert len(data["images"]) == 3 and info["index_of_first_image"] == 1
    cells = [parse_infotext(t) for t in info["infotexts"][1:]]
    assert [(p["Steps"], p["Seed"]) for p in cells] == [("2", "1"), ("3", "2")]
    assert info["all_seeds"] == [1, 1, 2]
    assert parse_infotext(info["infotexts"][0])["Seed"] == "1"  # the grid: its first cell's


def test_19_items_are_refused_naming_script_args(client):
    body = {**BASE, "script_name": "x/y/z plot", "script_args": a1111_args() + [False]}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422 and "script_args" in r.text and "at most 18" in r.text
    with pytest.raises(RequestError) as e:
        xyz.parse_args({"x_type": "Steps", "raw_mode": True}, "txt2img")  # not A1111's: gone
    assert e.value.field == "script_args" and "raw_mode" in e.value.message


def test_script_info_lists_the_18_args_in_a1111_order(client):
    info = client.get("/sdapi/v1/script-info").json()
    for is_img2img in (False, True):
        entry = next(i for i in info if i["name"] == "x/y/z plot" and i["is_img2img"] == is_img2img)
        assert [a["name"] for a in entry["args"]] == A1111_ARG_NAMES
        labels = [a["label"] for a in entry["args"]]
        assert labels[9:18] == ["Draw legend", "Include Sub Images", "Include Sub Grids", "Keep -1 for seeds",
                                "Vary seeds for X", "Vary seeds for Y", "Vary seeds for Z", "Grid margins (px)",
                                "Use text inputs instead of dropdowns"]
        assert [a["value"] for a in entry["args"]][9:18] == [True, False, False, False, False, False, False, 0,
                                                             False]


def test_shorter_lists_take_the_ui_defaults():
    full = xyz.parse_args(a1111_args(vary_seeds_y=True, margin_size=8, csv_mode=True), "txt2img")
    assert (full["vary_seeds_x"], full["vary_seeds_y"], full["vary_seeds_z"], full["margin_size"],
            full["csv_mode"]) == (False, True, False, 8, True)
    for n in (2, 9, 13, 16, 17):
        got = xyz.parse_args(a1111_args(vary_seeds_y=True, margin_size=8, csv_mode=True)[:n], "txt2img")
        assert got["x_type"] == "Steps" and got["x_values"] == "2,3"
        assert got["draw_legend"] is True and got["include_lone_images"] is False and got["no_fixed_seeds"] is False
        assert got["vary_seeds_x"] is False and got["vary_seeds_z"] is False and got["csv_mode"] is False
        assert got["vary_seeds_y"] is (n > 14) and got["margin_size"] == (8 if n > 16 else 0), n
    assert xyz.parse_args(a1111_args(vary_seeds_x=1, vary_seeds_z="true"), "txt2img")["vary_seeds_z"] is True
    with pytest.raises(RequestError) as e:
        xyz.parse_args(a1111_args(vary_seeds_y="sometimes"), "txt2img")
    assert e.value.field == "script_args" and "vary_seeds_y" in e.value.message


def test_ui_has_a1111s_controls():
    import gradio as gr

    with gr.Blocks():
        controls = xyz.render("img2img")
    assert set(controls) == set(A1111_ARG_NAMES)  # raw_mode is gone
    for axis in "xyz":
        box = controls[f"vary_seeds_{axis}"]
        assert (box.label, box.value, box.elem_id) == (f"Vary seeds for {axis.upper()}", False,
                                                       f"img2img_xyz_vary_seeds_{axis}")


# --------------------------------------------------------------------------- the seed rule (fake generations)

# x: Steps 2,3 (2 values), y: CFG Scale 5,7,9 (3), z: Eta 0,1 (2); base seed 100. Cells in grid order (x fastest,
# then y, then z); the expected seeds follow A1111's rule (see the module docstring), by hand:
#   x only: 100 + ix             y only: 100 + iy             z only: 100 + iz
#   x and y: 100 + ix + 2*iy     x and z: 100 + ix + 2*iz     y and z: 100 + iy + 3*iz
#   x, y and z: 100 + ix + 2*iy + 6*iz
SEEDS = {
    (): [100] * 12,
    ("x",): [100, 101] * 6,
    ("y",): [100, 100, 101, 101, 102, 102] * 2,
    ("z",): [100] * 6 + [101] * 6,
    ("x", "y"): [100, 101, 102, 103, 104, 105] * 2,
    ("x", "z"): [100, 101] * 3 + [102, 103] * 3,
    ("y", "z"): [100, 100, 101, 101, 102, 102, 103, 103, 104, 104, 105, 105],
    ("x", "y", "z"): list(range(100, 112)),
}


@pytest.mark.parametrize("varied", list(SEEDS), ids=lambda v: "+".join(v) or "none")
def test_vary_seeds_rule(varied):
    args = a1111_args(y_type=6, y_values="5,7,9", z_type="Eta", z_values="0,1", include_lone_images=True,
                      include_sub_grids=True, **{f"vary_seeds_{a}": True for a in varied})
    res, gen = fake_run(xyz.SCRIPT, args, req=GenerationRequest(**{**BASE, "seed": 100}))
    assert res.info["index_of_first_image"] == 3  # the main grid and the two sub-grids
    steps_cfg = [(str(s), str(c)) for s, c in [(2, 5), (3, 5), (2, 7), (3, 7), (2, 9), (3, 9)] * 2]
    assert [(st, cfg) for st, cfg, _ in cell_params(res)] == steps_cfg
    assert [seed for _, _, seed in cell_params(res)] == SEEDS[varied]
    assert res.seeds[3:] == SEEDS[varied]
    assert all(r.subseed == gen.requests[0].subseed for r in gen.requests)  # the variation seed stays
    # the grids carry the infotext of their first cell: the main grid (0,0,0), sub-grid iz its (0,0,iz)
    grid_seeds = [int(parse_infotext(t)["Seed"]) for t in res.infotexts[:3]]
    assert grid_seeds == [100, 100, SEEDS[varied][6]] == res.seeds[:3] == res.info["all_seeds"][:3]


def test_vary_seeds_with_a_seed_axis():
    # the offset goes on top of the Seed axis' value: 10+0, 20+1, 30+2
    res, _ = fake_run(xyz.SCRIPT, a1111_args(x_type=1, x_values="10,20,30", include_lone_images=True,
                                                   vary_seeds_x=True))
    assert [seed for _, _, seed in cell_params(res)] == [10, 21, 32]
    assert parse_infotext(res.infotexts[0])["Fixed X Values"] == "10, 20, 30"  # the values as given
    # a Seed axis on Y, varied along X (2 Steps values): (10, 11) in the first row, (20, 21) in the second
    res, _ = fake_run(xyz.SCRIPT, a1111_args(y_type=1, y_values="10,20", include_lone_images=True,
                                                   vary_seeds_x=True))
    assert [seed for _, _, seed in cell_params(res)] == [10, 11, 20, 21]
    # varied along Y, X not varied: the row index alone (10, 10), (20+1, 20+1)
    res, _ = fake_run(xyz.SCRIPT, a1111_args(y_type=1, y_values="10,20", include_lone_images=True,
                                                   vary_seeds_y=True))
    assert [seed for _, _, seed in cell_params(res)] == [10, 10, 21, 21]
    # a -1 on the Seed axis is fixed first (recorded in Fixed X Values), then moved on like the others
    res, _ = fake_run(xyz.SCRIPT, a1111_args(x_type=1, x_values="-1,5", include_lone_images=True,
                                                   vary_seeds_x=True))
    fixed = parse_infotext(res.infotexts[0])["Fixed X Values"].split(", ")
    assert fixed[1] == "5" and fixed[0] != "-1"
    assert [seed for _, _, seed in cell_params(res)] == [int(fixed[0]), 6]


def test_vary_seeds_with_random_and_kept_seeds():
    # a random base seed is fixed once, then moved on: s, s+1 / s+2, s+3
    res, _ = fake_run(xyz.SCRIPT, a1111_args(y_type=6, y_values="5,7", include_lone_images=True,
                                                   vary_seeds_x=True, vary_seeds_y=True),
                      req=GenerationRequest(**{**BASE, "seed": -1}))
    seeds = [seed for _, _, seed in cell_params(res)]
    assert seeds[0] >= 0 and [s - seeds[0] for s in seeds] == [0, 1, 2, 3]
    # "Keep -1 for seeds": -1 stays -1 in every cell (each draws its own); a fixed seed still moves on
    _, gen = fake_run(xyz.SCRIPT, a1111_args(no_fixed_seeds=True, vary_seeds_x=True),
                      req=GenerationRequest(**{**BASE, "seed": -1}))
    assert [r.seed for r in gen.requests] == [-1, -1]
    _, gen = fake_run(xyz.SCRIPT, a1111_args(no_fixed_seeds=True, vary_seeds_x=True),
                      req=GenerationRequest(**{**BASE, "seed": 7}))
    assert [r.seed for r in gen.requests] == [7, 8]
    # past the largest seed (2**32 - 1) it wraps around to 0
    _, gen = fake_run(xyz.SCRIPT, a1111_args(x_values="2,3,2", vary_seeds_x=True),
                      req=GenerationRequest(**{**BASE, "seed": 2**32 - 2}))
    assert [r.seed for r in gen.requests] == [2**32 - 2, 2**32 - 1, 0]


def test_keyword_form_equals_positional():
    keyword = {"x_type": "Steps", "x_values": "2,3", "y_type": "CFG Scale", "y_values": "5,7", "vary_seeds_y": True,
               "include_lone_images": True}
    positional = a1111_args(y_type=6, y_values="5,7", vary_seeds_y=True, include_lone_images=True)
    req = GenerationRequest(**BASE, subseed=3)
    a, ga = fake_run(xyz.SCRIPT, keyword, req=req)
    b, gb = fake_run(xyz.SCRIPT, positional, req=req)
    assert ga.requests == gb.requests and a.infotexts == b.infotexts
    assert [r.seed for r in ga.requests] == [1, 1, 2, 2]


def test_grid_size_limit_is_the_img_max_size_mp_option(client):
    # A1111 (scripts/xyz_grid.py): round(cells * width * height / 1e6) must stay below img_max_size_mp;
    # 3 cells of 2048x2048 are round(12.58) = 13 megapixels
    body = {**BASE, "width": 2048, "height": 2048, "script_name": "x/y/z plot",
            "script_args": a1111_args(x_values="2,3,4"), "override_settings": {"img_max_size_mp": 13}}
    r = client.post("/sdapi/v1/txt2img", json=body)
    assert r.status_code == 422 and "13 megapixels" in r.text and "img_max_size_mp" in r.text
    small = {**BASE, "script_name": "x/y/z plot", "script_args": a1111_args(), "override_settings": {
        "img_max_size_mp": 1}}
    assert client.post("/sdapi/v1/txt2img", json=small).status_code == 200  # round(0.008) = 0 < 1
    small["override_settings"] = {"img_max_size_mp": 0}
    assert client.post("/sdapi/v1/txt2img", json=small).status_code == 422
