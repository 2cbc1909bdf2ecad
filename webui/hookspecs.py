"""Every hook a plugin can implement.

Built-in features and third-party extensions implement these with
``@webui.hookspecs.hookimpl``.  Each hook is typed and documented here; the
docstrings (Markdown, a ``versionadded:`` line last) *are* the hook reference of
``docs/extensions.md``: ``tools/hooks_doc.py`` writes it from them, with each
heading built from the hookspec's arguments, and the test suite fails when the
two differ or a hook lacks a test (``tests/test_hooks.py``,
``tests/test_hook_calls.py``).

Hook API version: :data:`HOOKS_VERSION`.  A hook is never removed or changed
incompatibly within a major version; deprecated hooks keep working for one
major version and log a warning (see docs/extensions.md, "Versioning").
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover - imports for annotations only
    import fastapi
    from PIL import Image

    from webui.context import AppContext
    from webui.jobs import Job
    from webui.models.manager import LoadedModel
    from webui.pipeline.patches import UNetPatch
    from webui.pipeline.request import GenerationRequest
    from webui.pipeline.result import GenerationResult
    from webui.pipeline.state import ImageState, StepState
    from webui.restoration.registry import FaceRestorerDef
    from webui.sampling.registry import SamplerDef
    from webui.sampling.schedules import ScheduleDef
    from webui.scripts import ScriptDef
    from webui.sections import UiSection, UiTab
    from webui.settings import OptionDef, Settings
    from webui.ui.assets import UiAsset
    from webui.upscaling.registry import UpscalerDef

HOOKS_VERSION = "1.5"
PROJECT = "webui"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- start-up and registries --------------------------------------------------------


@hookspec(historic=True)
def startup(ctx: AppContext) -> None:
    """Called once when the application context is ready, before the server accepts requests.
    `ctx` is the `AppContext` (settings, options, models, jobs, hooks).
    ```python
    @hookimpl
    def startup(ctx):
        print("models found:", [c.name for c in ctx.models.checkpoints()])
    ```

    versionadded: 1.0
    """


@hookspec
def register_samplers() -> list[SamplerDef]:
    """Return a list of `webui.sampling.registry.SamplerDef`. The sampler appears in the UI
    dropdown, in `GET /sdapi/v1/samplers`, and can be chosen by name or alias.
    The function receives `(model, x, sigmas, *, noise, callback, **options)`; see
    `webui/sampling/samplers.py` for the contract (call `callback(i, x, denoised, sigma)` after each step).
    ```python
    from webui.sampling.registry import SamplerDef
    from webui.sampling.samplers import sample_euler

    @hookimpl
    def register_samplers():
        return [SamplerDef("My Euler", sample_euler, aliases=("my_euler",))]
    ```

    versionadded: 1.0
    """


@hookspec
def register_schedules() -> list[ScheduleDef]:
    """Return a list of `webui.sampling.schedules.ScheduleDef` ("Schedule type" choices).
    `fn(n, schedule)` returns `n` sigmas followed by a 0.
    ```python
    from webui.sampling.schedules import ScheduleDef, karras

    @hookimpl
    def register_schedules():
        return [ScheduleDef("karras_rho5", "Karras rho 5", lambda n, s: karras(n, s, rho=5.0))]
    ```

    versionadded: 1.0
    """


@hookspec
def register_upscalers(settings: Settings) -> list[UpscalerDef]:
    """Return a list of `webui.upscaling.registry.UpscalerDef`: a name, a function
    `upscale(image, scale, opts) -> image` (`opts`: the request's options, a mapping) and the native
    `scale`. They are offered as "Hires upscaler" in txt2img (and in Extras), listed by
    `GET /sdapi/v1/upscalers`. The hook is called at start-up and again on refresh, so a plugin can
    rescan a model folder (`settings.model_dir("ESRGAN")`). The pipeline calls `upscale` up to three
    times until the image is at least the target size, then fits it exactly with Lanczos.
    ```python
    from PIL import Image
    from webui.upscaling.registry import UpscalerDef

    def double(image, scale, opts):
        return image.resize((image.width * 2, image.height * 2), Image.Resampling.NEAREST)

    @hookimpl
    def register_upscalers(settings):
        return [UpscalerDef("Pixel doubler", double, scale=2.0)]
    ```

    versionadded: 1.1
    """


@hookspec
def register_face_restorers(settings: Settings) -> list[FaceRestorerDef]:
    """Return a list of `webui.restoration.registry.FaceRestorerDef`: a name and
    `restore(image, opts) -> image`, which finds the faces in a whole picture, restores them and pastes
    them back (no faces: the picture unchanged). Used by "Restore faces" in txt2img/img2img (option
    `face_restoration_model`) and by Extras; listed by `GET /sdapi/v1/face-restorers`. Called at
    start-up and again on refresh.
    ```python
    from PIL import ImageFilter
    from webui.restoration.registry import FaceRestorerDef

    @hookimpl
    def register_face_restorers(settings):
        return [FaceRestorerDef("Sharpen", lambda image, opts: image.filter(ImageFilter.SHARPEN))]
    ```

    versionadded: 1.1
    """


@hookspec
def register_scripts() -> list[ScriptDef]:
    """Return `webui.scripts.ScriptDef(title, run, modes, parse_args, render, arg_names)`
    objects: selectable scripts, A1111's "Script" dropdown and `script_name` + `script_args` in the API.
    `run(ScriptRun)` gets the request, its arguments by name (`parse_args(script_args, mode)` turns
    A1111's positional list or a keyword dict into them) and `generate(request)`, which runs one
    generation inside the same job; it returns the `GenerationResult` the client gets.
    `render(mode)` (optional) builds the script's Gradio controls and returns them by argument name; a
    `render(mode, choices)` also gets `choices`, a callable returning the app's current
    `webui.scripts.ScriptChoices` (samplers, schedules, checkpoints, VAEs, upscalers, styles; call it in
    event handlers so the lists stay current). *Since 1.2:* `arg_names` gives A1111's positional
    `script_args` order, in which `GET /sdapi/v1/script-info` lists the controls. A script that runs several
    generations may call `run.job.plan(total)` first (`total`: the sum of their batch counts) so
    `/sdapi/v1/progress` counts over the whole run (the built-in scripts do).
    ```python
    from webui.scripts import ScriptDef

    def two_seeds(run):
        a = run.generate(run.request)
        b = run.generate(run.request.with_(seed=run.request.seed + 1))
        a.images += b.images
        a.infotexts += b.infotexts
        return a

    @hookimpl
    def register_scripts():
        return [ScriptDef("Two seeds", two_seeds, modes=("txt2img",))]
    ```

    versionadded: 1.1
    """


@hookspec
def register_settings() -> list[OptionDef]:
    """Return a list of `webui.settings.OptionDef`. Options are persisted in `config.json`, can be
    set through `POST /sdapi/v1/options` and per request with `override_settings`.
    ```python
    from webui.settings import OptionDef

    @hookimpl
    def register_settings():
        return [OptionDef("my_ext_strength", 0.5, "Strength", "My extension", minimum=0, maximum=1,
                          help="How strongly my extension changes the picture.")]
    ```
    ``help`` is the line the Settings tab shows under the option (the search box finds it too).

    versionadded: 1.0
    """


# --- models -------------------------------------------------------------------------------


@hookspec
def model_loaded(model: LoadedModel) -> None:
    """Called after a checkpoint is loaded and becomes current. `model.spec.family` is
    `"sd1"`, `"sd2"` or `"sdxl"`; `model.components` holds the diffusers modules.
    ```python
    @hookimpl
    def model_loaded(model):
        print("now using", model.title, model.spec.label)
    ```

    versionadded: 1.0
    """


# --- generation -----------------------------------------------------------------------


@hookspec
def before_generate(request: GenerationRequest, job: Job) -> None:
    """Called after validation, before any model work. Call `job.interrupt()` to cancel.
    ```python
    @hookimpl
    def before_generate(request, job):
        if "forbidden" in request.prompt:
            job.interrupt()
    ```

    versionadded: 1.0
    """


@hookspec
def prepare_model(request: GenerationRequest, model: LoadedModel, opts: Mapping[str, Any]) -> dict[str, Any] | None:
    """Called once per job before any model work, with the `LoadedModel` about to
    be used and the request's options (`override_settings` applied). A plugin may adjust the model for
    this request (the built-in VAE plugin swaps VAE weights here; every request applies its own choice,
    so nothing leaks into the next one) and return `Key: value` pairs for the infotext. `RequestError`
    and `ModelError` raised here reach the client as a 4xx.
    ```python
    @hookimpl
    def prepare_model(request, model, opts):
        return {"My setting": opts.get("my_ext_strength")}
    ```

    versionadded: 1.1
    """


@hookspec
def unet_patches(request: GenerationRequest, model: LoadedModel, job: Job) -> list[UNetPatch] | None:
    """Called once per job, after `before_generate`: return objects with
    `prepare(width, height, hires)`, called before every sampling pass, and
    `residuals(call) -> (down_residuals, mid_residual) | None` (see `webui.pipeline.patches`): before
    every U-Net evaluation the pipeline passes a `UNetCall` (latent input, timestep, text context,
    SDXL extras, batch/group layout, the step of the pass, image size, hires flag) and adds the
    returned tensors to the U-Net's skip connections. The built-in ControlNet is such a patch. A patch
    may also have `extra_images`, a list of `(PIL image, label)` that the job's result shows after its
    images (the API's `images`, the gallery; ControlNet's detected maps), and
    `adapter_residuals(call) -> [tensor per U-Net level] | None`, features added inside the down blocks
    (T2I-Adapters; diffusers' `down_intrablock_additional_residuals`). SD 3.x / FLUX.1 have a
    transformer instead: there the pipeline calls `transformer_residuals(call) -> {kwarg: [tensor per
    block]} | None` with a `TransformerCall`, and refuses (422) a patch that lacks the method. Raise
    `RequestError` for bad input: this hook's input errors reach the client as a 4xx.
    ```python
    @hookimpl
    def unet_patches(request, model, job):
        if "my_adapter" in request.alwayson_scripts:
            return [MyAdapter(request.alwayson_scripts["my_adapter"], model)]
    ```

    versionadded: 1.1; `extra_images` 1.4; `transformer_residuals`, `adapter_residuals` 1.5
    """


@hookspec
def on_step_end(state: StepState) -> None:
    """Called after every sampling step. `state.step` (0-based), `state.total_steps`, `state.sigma`,
    `state.latents` (assign to replace them), `state.denoised`, `state.job` (`interrupt()` stops after
    this step).
    ```python
    @hookimpl
    def on_step_end(state):
        if state.step == state.total_steps // 2:
            state.latents = state.latents * 1.01
    ```

    versionadded: 1.0
    """


@hookspec
def postprocess_image(state: ImageState) -> None:
    """Called for each decoded image before saving. Assign `state.image` to replace it; add pairs to
    `state.extra_infotext` to record what you did in the image's infotext.
    ```python
    from PIL import ImageOps

    @hookimpl
    def postprocess_image(state):
        state.image = ImageOps.mirror(state.image)
        state.extra_infotext["Mirrored"] = True
    ```

    versionadded: 1.0
    """


@hookspec
def after_generate(result: GenerationResult, job: Job) -> None:
    """Called once per job with the `GenerationResult` (images, seeds, infotexts, paths), also after an
    interrupt.
    ```python
    @hookimpl
    def after_generate(result, job):
        print(f"job {job.id} made {len(result.images)} images")
    ```

    versionadded: 1.0
    """


@hookspec
def extra_infotext(request: GenerationRequest) -> dict[str, Any] | None:
    """Return a dict of `Key: value` pairs written into every image's infotext.
    ```python
    @hookimpl
    def extra_infotext(request):
        return {"My extension": "v1"}
    ```

    versionadded: 1.0
    """


@hookspec
def parse_infotext(params: Mapping[str, Any], mode: str) -> dict[str, Any] | None:
    """The reverse of `extra_infotext`/`postprocess_image`: read your own keys back
    from an infotext. Called for PNG Info's "Send to txt2img/img2img", the gallery's send buttons, the ↙
    paste button of each tab (the prompt box, or the last generation when it is empty) and the API's
    `infotext` field (`POST /sdapi/v1/txt2img` and `img2img`, as in A1111 1.8+). `params` is the parsed
    infotext, read-only (`webui.infotext.parse_infotext`: `{"Prompt": ..., "Steps": "20",
    "Film grain": "0.2", ...}`, values mostly text); `mode` is `"txt2img"` or `"img2img"`. Return a dict by
    field name, leaving out what the infotext does not determine:

    - `"<section>__<value name>"`: a control of your `ui_sections` section (the names `render()` returned).
      The tab shows the value; the API passes the section's returned values (only those) to the section's
      `collect`, which builds `alwayson_scripts[<section>]` exactly as Generate does, so one function serves
      the UI and the API.
    - a request field (`"steps"`, `"sampler_name"`, ...): fills that control and request field.
    - `"alwayson_scripts"`: `{name: entry}`, API only (for plugins without a UI section).

    In the API, fields, `override_settings` options and `alwayson_scripts` entries the client set
    explicitly win over the infotext. The built-in ControlNet reads its `ControlNet N` keys back into its
    units this way (the control image is not in the infotext: the UI keeps the one shown, and a txt2img
    API request then needs an explicit `alwayson_scripts.controlnet`).
    ```python
    @hookimpl
    def parse_infotext(params, mode):
        if "My strength" not in params:
            return None
        return {"my_ext__strength": float(params["My strength"])}  # section "my_ext", control "strength"
    ```

    versionadded: 1.2
    """


@hookspec
def image_saved(path: str, infotext: str, image: Image.Image) -> None:
    """Called after an image file was written.
    ```python
    @hookimpl
    def image_saved(path, infotext, image):
        print("saved", path)
    ```

    versionadded: 1.0
    """


# --- server and UI -------------------------------------------------------------------------


@hookspec
def api_routes(router: fastapi.APIRouter, ctx: AppContext) -> None:
    """Add FastAPI routes to `router`; they are served at the root, behind `--api-auth` when set.
    ```python
    @hookimpl
    def api_routes(router, ctx):
        @router.get("/my-ext/status")
        def status():
            return {"model": ctx.models.current.title if ctx.models.current else None}
    ```

    versionadded: 1.0
    """


@hookspec
def ui_tabs(ctx: AppContext) -> list[UiTab] | None:
    """Return a list of `webui.sections.UiTab(title, render)`; `render()` is called inside a
    `gr.Tab` and creates Gradio components (give every event an explicit `api_name`).
    ```python
    import gradio as gr
    from webui.sections import UiTab

    @hookimpl
    def ui_tabs(ctx):
        return [UiTab("My Tab", lambda: gr.Markdown("Hello"))]
    ```

    versionadded: 1.0
    """


@hookspec
def ui_sections(ctx: AppContext, mode: str) -> list[UiSection] | None:
    """Return `webui.sections.UiSection(name, render, collect)` objects to add
    controls to the txt2img or img2img tab (`mode`). `render()` creates Gradio components and returns
    them **by name**; on Generate, `collect(values_by_name)` turns their values into
    `request.alwayson_scripts[name]` (the same place API clients put `alwayson_scripts`), so one code
    path serves the UI and the API. The components are also keyword parameters of the tab's Gradio API
    endpoint (`<name>__<value name>`). To refill the section from an infotext, implement `parse_infotext`.
    ```python
    import gradio as gr
    from webui.sections import UiSection

    @hookimpl
    def ui_sections(ctx, mode):
        render = lambda: {"strength": gr.Slider(0, 1, value=0.5, label="My strength")}
        collect = lambda v: {"args": [v["strength"]]}
        return [UiSection("my_ext", render, collect)]
    ```

    versionadded: 1.1
    """


@hookspec
def ui_assets(ctx: AppContext) -> list[UiAsset] | None:
    """Return `webui.ui.assets.UiAsset(kind, text, name)` objects (`kind` "js" or
    "css") to add to the page. Extension folders need not implement it: their `javascript/*.js` (in
    file-name order) and `style.css` are added automatically, as in A1111. Read once, when the UI is built.
    ```python
    from webui.ui.assets import UiAsset

    @hookimpl
    def ui_assets(ctx):
        return [UiAsset("css", "#txt2img_generate { font-weight: bold; }", "bold.css")]
    ```

    versionadded: 1.1
    """
