"""Every hook has a test here (``test_hook_<name>``) and a section in docs/extensions.md.

The meta-tests at the bottom fail when a hook lacks either (datasette's rule).
"""

from __future__ import annotations

import inspect
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from tests.conftest import api_only, make_settings
from webui import hookspecs
from webui.context import build_context
from webui.hookspecs import hookimpl
from webui.jobs import Job
from webui.pipeline.request import GenerationRequest, RequestError
from webui.plugins import make_plugin_manager
from webui.server import create_app

ROOT = Path(__file__).resolve().parent.parent
SMALL = dict(prompt="a red circle", steps=3, width=64, height=64, seed=5, sampler_name="Euler", save_images=False)


def _ctx_with(plugin, tmp_path, models_root, name="test-plugin"):
    plugins = make_plugin_manager(disable_extensions=True)
    assert plugins.register(plugin, name)
    return build_context(make_settings(tmp_path, models_root), plugins=plugins, load_model=True)


def test_hook_startup(tmp_path, models_root):
    seen = []

    class P:
        @hookimpl
        def startup(self, ctx):
            seen.append(ctx)

    ctx = _ctx_with(P(), tmp_path, models_root)
    assert seen == [ctx]


def test_hook_register_samplers(tmp_path, models_root):
    from webui.sampling.registry import SamplerDef
    from webui.sampling.samplers import sample_euler

    calls = []

    def my_sampler(model, x, sigmas, **kw):
        calls.append(len(sigmas))
        return sample_euler(model, x, sigmas, **kw)

    class P:
        @hookimpl
        def register_samplers(self):
            return [SamplerDef("My Euler", my_sampler, aliases=("my_euler",))]

    ctx = _ctx_with(P(), tmp_path, models_root)
    client = TestClient(create_app(api_only(ctx)))
    names = [s["name"] for s in client.get("/sdapi/v1/samplers").json()]
    assert "My Euler" in names
    mine = ctx.generate(GenerationRequest(**{**SMALL, "sampler_name": "my_euler"}))
    ref = ctx.generate(GenerationRequest(**SMALL))
    assert calls == [4]
    assert mine.images[0].tobytes() == ref.images[0].tobytes()


def test_hook_register_schedules(tmp_path, models_root):
    import torch

    from webui.sampling.schedules import ScheduleDef, karras

    class P:
        @hookimpl
        def register_schedules(self):
            return [ScheduleDef("flat_test", "Flat Test", lambda n, s: torch.cat([karras(n, s)[:-1], torch.zeros(1)]))]

    ctx = _ctx_with(P(), tmp_path, models_root)
    a = ctx.generate(GenerationRequest(**{**SMALL, "scheduler": "Flat Test"}))
    b = ctx.generate(GenerationRequest(**{**SMALL, "scheduler": "Karras"}))
    assert "Schedule type: Flat Test" in a.infotexts[0]
    assert a.images[0].tobytes() == b.images[0].tobytes()


def test_hook_register_upscalers(tmp_path, models_root):
    from webui.upscaling.registry import UpscalerDef

    calls = []

    def double(image, scale, opts):
        calls.append(scale)
        return image.resize((image.width * 2, image.height * 2), Image.Resampling.NEAREST)

    class P:
        @hookimpl
        def register_upscalers(self, settings):
            assert settings.models_dir == models_root
            return [UpscalerDef("Doubler", double, scale=2.0)]

    ctx = _ctx_with(P(), tmp_path, models_root)
    client = TestClient(create_app(api_only(ctx)))
    listed = {u["name"]: u for u in client.get("/sdapi/v1/upscalers").json()}
    assert listed["Doubler"]["scale"] == 2.0
    res = ctx.generate(GenerationRequest(**SMALL, enable_hr=True, hr_upscaler="doubler", hr_scale=3.0,
                                        denoising_strength=0.0))
    assert calls == [3.0, 1.5]  # two passes reach 3x, then Lanczos fits the exact size
    assert res.images[0].size == (192, 192) and "Hires upscaler: Doubler" in res.infotexts[0]


def test_hook_register_face_restorers(tmp_path, models_root):
    import numpy as np
    from PIL import ImageFilter

    from webui.extras import ExtrasRequest
    from webui.restoration.registry import FaceRestorerDef

    class P:
        @hookimpl
        def register_face_restorers(self, settings):
            return [FaceRestorerDef("Sharpen", lambda image, opts: image.filter(ImageFilter.SHARPEN))]

    ctx = _ctx_with(P(), tmp_path, models_root)
    assert "Sharpen" in ctx.face_restorers.names()
    img = Image.fromarray(np.random.default_rng(0).integers(0, 256, (32, 32, 3), dtype=np.uint8))
    res = ctx.generate(GenerationRequest(**SMALL, restore_faces=True,
                                        override_settings={"face_restoration_model": "Sharpen"}))
    assert "Face restoration: Sharpen" in res.infotexts[0]
    ctx.face_restorers.get("sharpen")  # case-insensitive lookup
    # Extras only offer GFPGAN/CodeFormer sliders (A1111); the hook's restorers serve "Restore faces"
    out, _ = ctx.extras(img, ExtrasRequest(upscaling_resize=1))
    assert out.size == (32, 32)


def test_hook_prepare_model(tmp_path, models_root):
    calls = []

    class P:
        @hookimpl
        def prepare_model(self, request, model, opts):
            calls.append((request.prompt, model.info.name, opts.get("CLIP_stop_at_last_layers")))
            if request.prompt == "refuse":
                raise RequestError("prompt", "refused by the plugin")
            return {"Prepared by": "test"}

    ctx = _ctx_with(P(), tmp_path, models_root)
    res = ctx.generate(GenerationRequest(**SMALL, override_settings={"CLIP_stop_at_last_layers": 2}))
    assert calls == [("a red circle", "tiny-sd1.safetensors", 2)]
    assert "Prepared by: test" in res.infotexts[0]
    with pytest.raises(RequestError):
        ctx.generate(GenerationRequest(**{**SMALL, "prompt": "refuse"}))


def test_hook_unet_patches(tmp_path, models_root):
    import torch

    seen = []

    class Nudge:
        """Adds a constant to the mid-block output during the first half of the steps."""

        def prepare(self, width, height, hires=False):
            seen.append(("prepare", width, height, hires))

        def residuals(self, call):
            seen.append(("call", call.step, call.steps, call.groups, call.has_uncond))
            if call.step >= call.steps / 2:
                return None
            unet = ctx.models.current.components.unet
            down = [torch.zeros(1)] * 0
            x = call.x
            shapes = []
            h, w = x.shape[-2:]
            for i, block in enumerate(unet.down_blocks):  # the U-Net's skip shapes, level by level
                ch = unet.config.block_out_channels[i]
                shapes += [(ch, h, w)] * (len(block.resnets) + (1 if i == 0 else 0))
                if block.downsamplers:
                    h, w = (h + 1) // 2, (w + 1) // 2
                    shapes.append((ch, h, w))
            down = [torch.zeros(x.shape[0], *s, dtype=x.dtype) for s in shapes]
            mid = torch.full((x.shape[0], unet.config.block_out_channels[-1], h, w), 0.5, dtype=x.dtype)
            return down, mid

    class P:
        @hookimpl
        def unet_patches(self, request, model, job):
            return [Nudge()] if request.alwayson_scripts.get("nudge") else None

    ctx = _ctx_with(P(), tmp_path, models_root)
    plain = ctx.generate(GenerationRequest(**SMALL))
    nudged = ctx.generate(GenerationRequest(**SMALL, alwayson_scripts={"nudge": True}))
    assert plain.images[0].tobytes() != nudged.images[0].tobytes()
    assert seen[0] == ("prepare", 64, 64, False)
    assert [c[1:3] for c in seen[1:]] == [(0, 3), (1, 3), (2, 3)] and seen[1][3:] == (2, True)

    class Bad:
        @hookimpl
        def unet_patches(self, request, model, job):
            raise RequestError("alwayson_scripts.nudge", "bad nudge")

    ctx.plugins.register(Bad(), "bad")
    with pytest.raises(RequestError):  # unlike other hooks, input errors reach the caller
        ctx.generate(GenerationRequest(**SMALL))


def test_hook_ui_sections(tmp_path, models_root):
    import gradio as gr

    from webui.ui.tabs import UiSection

    collected = []

    class P:
        @hookimpl
        def ui_sections(self, ctx, mode):
            def render():
                return {"strength": gr.Slider(0, 1, value=0.25, label="My strength", elem_id=f"{mode}_my_strength")}

            def collect(values):
                collected.append(dict(values))
                return {"args": [values["strength"]]}

            return [UiSection("my_section", render, collect)]

        @hookimpl
        def before_generate(self, request, job):
            collected.append(request.alwayson_scripts.get("my_section"))

    ctx = _ctx_with(P(), tmp_path, models_root)
    from tests.live_server import LiveServer

    with LiveServer(create_app(ctx)) as srv:
        from gradio_client import Client

        client = Client(srv.url, verbose=False)
        client.predict(prompt="x", steps=2, width=64, height=64, my_section__strength=0.75, api_name="/txt2img")
    assert collected == [{"strength": 0.75}, {"args": [0.75]}]


def test_hook_register_scripts(tmp_path, models_root):
    from webui.scripts import ScriptDef

    def twice(run):
        first = run.generate(run.request)
        second = run.generate(run.request.with_(seed=run.request.seed + int(run.args.get("offset", 1))))
        first.images += second.images
        first.infotexts += second.infotexts
        return first

    def parse(args, mode):
        if isinstance(args, list):
            return {"offset": args[0]} if args else {}
        return dict(args or {})

    class P:
        @hookimpl
        def register_scripts(self):
            return [ScriptDef("Twice", twice, modes=("txt2img",), parse_args=parse)]

    ctx = _ctx_with(P(), tmp_path, models_root)
    assert "Twice" in ctx.scripts.titles("txt2img") and "Twice" not in ctx.scripts.titles("img2img")
    res = ctx.run_script(GenerationRequest(**SMALL), "twice", [3])
    assert len(res.images) == 2 and "Seed: 8" in res.infotexts[1]
    client = TestClient(create_app(api_only(ctx)))
    r = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "Twice", "script_args": {"offset": 2}})
    assert r.status_code == 200 and len(r.json()["images"]) == 2
    bad = client.post("/sdapi/v1/txt2img", json={**SMALL, "script_name": "Thrice"})
    assert bad.status_code == 422 and "script_name" in bad.text and "Twice" in bad.text


def test_hook_ui_assets(tmp_path, models_root):
    from webui.ui.assets import UiAsset, page_css_and_head

    class P:
        @hookimpl
        def ui_assets(self, ctx):
            return [UiAsset("css", "#txt2img_prompt { outline: 1px solid red; }", "mine.css"),
                    UiAsset("js", "window.myExt = '</script>';", "mine.js"), "not an asset"]

    ctx = _ctx_with(P(), tmp_path, models_root)
    ext = tmp_path / "extensions" / "with-assets"
    (ext / "javascript").mkdir(parents=True)
    (ext / "__init__.py").write_text("")
    (ext / "javascript" / "b.js").write_text("window.b = 2;")
    (ext / "javascript" / "a.js").write_text("window.a = 1;")
    (ext / "style.css").write_text(".ext { color: blue; }")
    from webui.plugins import PluginReport

    ctx.plugins.reports.append(PluginReport("with-assets", "extension", True, None, str(ext)))
    css, head = page_css_and_head(ctx)
    assert ".ext { color: blue; }" in css and "outline: 1px solid red" in css
    assert head.index("window.a = 1;") < head.index("window.b = 2;")  # file-name order
    # an embedded end tag is escaped (the scripts: the product's page.js, keys.js and panels.js, the two files,
    # the hook's)
    assert "<\\/script>" in head and head.count("</script>") == 6
    client = TestClient(create_app(ctx))
    page = client.get("/").text + client.get("/config").text
    assert "window.a = 1;" in page and ".ext { color: blue; }" in page


def test_hook_register_settings(tmp_path, models_root):
    from webui.settings import OptionDef

    class P:
        @hookimpl
        def register_settings(self):
            return [OptionDef("my_ext_strength", 0.5, "My strength", "My extension", minimum=0, maximum=1)]

    ctx = _ctx_with(P(), tmp_path, models_root)
    assert ctx.options.current["my_ext_strength"] == 0.5
    ctx.options.update({"my_ext_strength": 0.25})
    assert ctx.options.current["my_ext_strength"] == 0.25


def test_hook_model_loaded(tmp_path, models_root):
    loaded = []

    class P:
        @hookimpl
        def model_loaded(self, model):
            loaded.append(model)

    ctx = _ctx_with(P(), tmp_path, models_root)
    assert loaded and loaded[-1] is ctx.models.current and loaded[-1].spec.family == "sd1"


def test_hook_before_generate(tmp_path, models_root):
    class P:
        @hookimpl
        def before_generate(self, request, job):
            if "forbidden" in request.prompt:
                job.interrupt()

    ctx = _ctx_with(P(), tmp_path, models_root)
    assert ctx.generate(GenerationRequest(**{**SMALL, "prompt": "forbidden"})).images == []
    assert len(ctx.generate(GenerationRequest(**SMALL)).images) == 1


def test_hook_on_step_end(tmp_path, models_root):
    steps = []

    class P:
        @hookimpl
        def on_step_end(self, state):
            steps.append((state.step, state.total_steps, tuple(state.latents.shape)))
            if state.step == 1 and state.job.kind == "stop-early":
                state.job.interrupt()

    ctx = _ctx_with(P(), tmp_path, models_root)
    ctx.generate(GenerationRequest(**SMALL))
    assert steps == [(0, 3, (1, 4, 8, 8)), (1, 3, (1, 4, 8, 8)), (2, 3, (1, 4, 8, 8))]
    steps.clear()
    res = ctx.generate(GenerationRequest(**SMALL), Job(kind="stop-early"))
    assert [s[0] for s in steps] == [0, 1] and res.interrupted and len(res.images) == 1


def test_hook_on_step_end_can_replace_latents(tmp_path, models_root):
    class P:
        @hookimpl
        def on_step_end(self, state):
            state.latents = state.latents * 0

    ctx = _ctx_with(P(), tmp_path, models_root)
    zeroed = ctx.generate(GenerationRequest(**SMALL)).images[0]
    plain = build_context(make_settings(tmp_path / "b", models_root), load_model=True)
    assert zeroed.tobytes() != plain.generate(GenerationRequest(**SMALL)).images[0].tobytes()


def test_hook_postprocess_image(tmp_path, models_root):
    class P:
        @hookimpl
        def postprocess_image(self, state):
            state.image = Image.new("RGB", state.image.size, (255, 0, 0))
            state.extra_infotext["Postprocessed"] = "red"

    ctx = _ctx_with(P(), tmp_path, models_root)
    res = ctx.generate(GenerationRequest(**SMALL))
    assert res.images[0].getpixel((3, 3)) == (255, 0, 0)
    assert "Postprocessed: red" in res.infotexts[0]


def test_hook_after_generate(tmp_path, models_root):
    results = []

    class P:
        @hookimpl
        def after_generate(self, result, job):
            results.append((len(result.images), job.kind))

    ctx = _ctx_with(P(), tmp_path, models_root)
    ctx.generate(GenerationRequest(**{**SMALL, "batch_size": 2}))
    assert results == [(2, "txt2img")]


def test_hook_extra_infotext(tmp_path, models_root):
    class P:
        @hookimpl
        def extra_infotext(self, request):
            return {"My ext": f"len {len(request.prompt)}"}

    ctx = _ctx_with(P(), tmp_path, models_root)
    res = ctx.generate(GenerationRequest(**SMALL))
    assert "My ext: len 12" in res.infotexts[0]


def _handler(demo, api_name: str):
    """The Python function behind a Gradio event (called directly, as the event would)."""
    return next(f for f in demo.fns.values() if f.api_name == api_name)


def _update_for(block_fn, updates, elem_id: str):
    """The value an event's updates give the output component ``elem_id`` (KeyError: left unchanged)."""
    index = [c.elem_id for c in block_fn.outputs].index(elem_id)
    return updates[index]["value"]


def test_hook_parse_infotext(tmp_path, models_root):
    import gradio as gr

    from webui.ui.app import build_ui
    from webui.ui.tabs import UiSection

    seen = []

    class P:
        @hookimpl
        def ui_sections(self, ctx, mode):
            def render():
                return {"strength": gr.Slider(0, 1, value=0, label="Mine", elem_id=f"{mode}_mine_strength")}

            return [UiSection("mine", render, lambda v: {"args": [v["strength"]]} if v.get("strength") else None)]

        @hookimpl
        def extra_infotext(self, request):
            seen.append({k: v for k, v in request.alwayson_scripts.items() if k in ("mine", "headless")})
            entry = request.alwayson_scripts.get("mine")
            return {"Mine": entry["args"][0]} if entry else None

        @hookimpl
        def parse_infotext(self, params, mode):
            if "Mine" not in params:
                return None
            return {"mine__strength": float(params["Mine"]), "alwayson_scripts": {"headless": {"args": [mode]}},
                    "subseed_strength": 0.25}

    ctx = _ctx_with(P(), tmp_path, models_root)
    text = ctx.generate(GenerationRequest(**SMALL, alwayson_scripts={"mine": {"args": [0.5]}})).infotexts[0]
    assert "Mine: 0.5" in text
    # the UI: PNG Info's "Send to txt2img"/"img2img" and each tab's paste button refill the section
    demo = build_ui(ctx)
    send = _handler(demo, "pnginfo_send_to_txt2img")
    updates = send.fn(text)
    assert _update_for(send, updates, "txt2img_mine_strength") == 0.5
    assert _update_for(send, updates, "txt2img_subseed_strength") == 0.25
    send = _handler(demo, "pnginfo_send_to_img2img")
    assert _update_for(send, send.fn(Image.new("RGB", (64, 64)), text), "img2img_mine_strength") == 0.5
    paste = _handler(demo, "txt2img_paste")
    assert _update_for(paste, paste.fn(text, []), "txt2img_mine_strength") == 0.5
    assert _update_for(paste, paste.fn("", [text]), "txt2img_mine_strength") == 0.5  # empty prompt: last image
    # the API: the section's collect builds the alwayson_scripts entry; explicit entries win
    client = TestClient(create_app(ctx))
    seen.clear()
    r = client.post("/sdapi/v1/txt2img", json={"infotext": text})
    assert r.status_code == 200, r.text
    assert seen == [{"mine": {"args": [0.5]}, "headless": {"args": ["txt2img"]}}]
    assert r.json()["parameters"]["subseed_strength"] == 0.25
    seen.clear()
    r = client.post("/sdapi/v1/txt2img", json={"infotext": text, "subseed_strength": 0.0,
                                               "alwayson_scripts": {"mine": {"args": [0.75]}}})
    assert r.status_code == 200, r.text
    assert seen == [{"mine": {"args": [0.75]}, "headless": {"args": ["txt2img"]}}]
    assert r.json()["parameters"]["subseed_strength"] == 0.0


def test_hook_image_saved(tmp_path, models_root):
    saved = []

    class P:
        @hookimpl
        def image_saved(self, path, infotext, image):
            saved.append((path, infotext))

    ctx = _ctx_with(P(), tmp_path, models_root)
    res = ctx.generate(GenerationRequest(**{**SMALL, "save_images": True}))
    assert [p for p, _ in saved] == res.paths and Path(saved[0][0]).is_file()
    assert saved[0][1] == res.infotexts[0]


def test_hook_api_routes(tmp_path, models_root):
    class P:
        @hookimpl
        def api_routes(self, router, ctx):
            @router.get("/my-ext/hello")
            def hello() -> dict:
                return {"model": ctx.models.current.info.model_name}

    ctx = _ctx_with(P(), tmp_path, models_root)

    client = TestClient(create_app(api_only(ctx)))
    assert client.get("/my-ext/hello").json() == {"model": "tiny-sd1"}


def test_hook_ui_tabs(tmp_path, models_root):
    import gradio as gr

    from webui.ui.app import build_ui
    from webui.ui.tabs import UiTab

    class P:
        @hookimpl
        def ui_tabs(self, ctx):
            return [UiTab("My Tab", lambda: gr.Markdown("hello from my tab", elem_id="my_tab_md"), "my_tab")]

    ctx = _ctx_with(P(), tmp_path, models_root)
    demo = build_ui(ctx)
    config = demo.get_config_file()
    labels = [c.get("props", {}).get("label") for c in config["components"]]
    values = [c.get("props", {}).get("value") for c in config["components"]]
    assert "My Tab" in labels and "hello from my tab" in values


def test_failing_hook_is_isolated(tmp_path, models_root):
    class P:
        @hookimpl
        def extra_infotext(self, request):
            raise RuntimeError("boom")

    ctx = _ctx_with(P(), tmp_path, models_root, name="broken")
    res = ctx.generate(GenerationRequest(**SMALL))
    assert len(res.images) == 1
    assert any(r.name == "broken" and not r.ok and "boom" in r.error for r in ctx.plugins.reports)


def test_plugin_with_unknown_hook_is_refused():
    class P:
        @hookimpl
        def no_such_hook(self):
            return 1

    plugins = make_plugin_manager(disable_extensions=True)
    assert not plugins.register(P(), "bad")
    assert any(r.name == "bad" and not r.ok for r in plugins.reports)


def test_broken_extension_folder_is_reported_and_skipped(tmp_path):
    ext = tmp_path / "extensions"
    (ext / "good").mkdir(parents=True)
    (ext / "good" / "__init__.py").write_text(
        "from webui.hookspecs import hookimpl\n@hookimpl\ndef extra_infotext(request):\n    return {'Good': 'yes'}\n")
    (ext / "broken").mkdir()
    (ext / "broken" / "__init__.py").write_text("raise ImportError('missing dependency xyz')\n")
    plugins = make_plugin_manager(extensions_dir=ext)
    reports = {r.name: r for r in plugins.reports}
    assert reports["good"].ok
    assert not reports["broken"].ok and "missing dependency xyz" in reports["broken"].error
    only = make_plugin_manager(extensions_dir=ext, enabled_extensions=["good"])
    assert "broken" not in {r.name for r in only.reports}


def test_builtins_register_like_extensions_and_can_be_disabled():
    plugins = make_plugin_manager(disable_extensions=True)
    assert "webui.builtin.samplers" in plugins.names()
    without = make_plugin_manager(disable_extensions=True, disabled_builtins=["samplers"])
    assert without.hooks.register_samplers() == []


# --- meta-tests (datasette's rule) ---------------------------------------------------------

HOOK_NAMES = sorted(
    name for name, fn in inspect.getmembers(hookspecs, inspect.isfunction)
    if hasattr(fn, hookspecs.PROJECT + "_spec")
)


def test_hooks_found():
    assert {"startup", "register_samplers", "on_step_end", "api_routes"} <= set(HOOK_NAMES)


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_every_hook_is_documented(hook):
    docs = (ROOT / "docs" / "extensions.md").read_text(encoding="utf-8")
    assert re.search(rf"^### `{hook}\(", docs, re.MULTILINE), f"hook {hook} is not documented in docs/extensions.md"
    assert getattr(hookspecs, hook).__doc__, f"hook {hook} has no docstring"


@pytest.mark.parametrize("hook", HOOK_NAMES)
def test_every_hook_has_a_test(hook):
    assert f"test_hook_{hook}" in globals(), f"hook {hook} has no test_hook_{hook} in tests/test_hooks.py"
