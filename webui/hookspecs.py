"""Every hook a plugin can implement.

Built-in features and third-party extensions implement these with
``@webui.hookspecs.hookimpl``.  Each hook is typed and documented here and in
``docs/extensions.md``; the test suite fails if a hook lacks either docs or a
test (``tests/test_hooks.py``).

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
    from webui.settings import OptionDef, Settings
    from webui.ui.assets import UiAsset
    from webui.ui.tabs import UiSection, UiTab
    from webui.upscaling.registry import UpscalerDef

HOOKS_VERSION = "1.2"
PROJECT = "webui"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


# --- start-up and registries --------------------------------------------------------


@hookspec
def startup(ctx: AppContext) -> None:
    """Called once when the application context is ready, before the server accepts requests.

    :param ctx: the application context (settings, options, models, jobs, hooks).
    versionadded: 1.0
    """


@hookspec
def register_samplers() -> list[SamplerDef]:
    """Return samplers to offer (name, aliases, sampling function); they appear in the UI and the API.

    versionadded: 1.0
    """


@hookspec
def register_schedules() -> list[ScheduleDef]:
    """Return sigma schedule types ("Schedule type" in A1111) to offer.

    versionadded: 1.0
    """


@hookspec
def register_upscalers(settings: Settings) -> list[UpscalerDef]:
    """Return image upscalers (name, native scale, ``upscale(image, scale)``) for hires fix and Extras.

    Called at start-up and again on refresh, so model folders (``settings.model_dir(...)``) can be
    rescanned. Upscalers appear in ``GET /sdapi/v1/upscalers`` and the upscaler menus.
    versionadded: 1.1
    """


@hookspec
def register_face_restorers(settings: Settings) -> list[FaceRestorerDef]:
    """Return face restorers (name, ``restore(image, opts) -> image``) for "Restore faces" and Extras.

    ``restore`` gets a whole picture, restores the faces it finds and returns the picture (unchanged
    when it finds none). Called at start-up and on refresh; listed by ``GET /sdapi/v1/face-restorers``.
    versionadded: 1.1
    """


@hookspec
def register_scripts() -> list[ScriptDef]:
    """Return selectable scripts (A1111's "Script" dropdown; ``script_name`` + ``script_args`` in the API).

    A :class:`~webui.scripts.ScriptDef` has a title, ``run(ScriptRun) -> GenerationResult`` (which may
    call ``run.generate(request)`` any number of times inside the same job), the modes it serves, an
    optional ``parse_args(script_args, mode)`` accepting A1111's positional list and/or a keyword dict,
    an optional ``render(mode)`` or ``render(mode, choices)`` building its UI controls (values come back
    by name; ``choices()`` gives the app's current :class:`~webui.scripts.ScriptChoices`) and, since 1.2,
    ``arg_names``: A1111's positional order (``GET /sdapi/v1/script-info`` lists the controls in it).
    versionadded: 1.1
    """


@hookspec
def register_settings() -> list[OptionDef]:
    """Return options this plugin owns; they are persisted in config.json and settable via /sdapi/v1/options.

    versionadded: 1.0
    """


# --- models -------------------------------------------------------------------------------


@hookspec
def model_loaded(model: LoadedModel) -> None:
    """Called after a checkpoint is loaded and becomes the current model.

    :param model: the loaded model (components, spec, checkpoint info).
    versionadded: 1.0
    """


# --- generation -----------------------------------------------------------------------


@hookspec
def before_generate(request: GenerationRequest, job: Job) -> None:
    """Called after the request is validated, before any model work. May call ``job.interrupt()``.

    versionadded: 1.0
    """


@hookspec
def prepare_model(request: GenerationRequest, model: LoadedModel, opts: Mapping[str, Any]) -> dict[str, Any] | None:
    """Called once per job, before any model work, with the model about to be used and the request's options.

    May adjust the model for this request (the built-in VAE plugin swaps VAE weights here) and return
    ``Key: value`` pairs for the infotext. ``RequestError``/``ModelError`` reach the client as a 4xx.
    versionadded: 1.1
    """


@hookspec
def unet_patches(request: GenerationRequest, model: LoadedModel, job: Job) -> list[UNetPatch] | None:
    """Return U-Net patches (e.g. ControlNets) for this generation; see :mod:`webui.pipeline.patches`.

    Called once per job after ``before_generate``. Each patch's ``prepare(width, height, hires)`` runs
    before every sampling pass and ``residuals(call)`` before every U-Net evaluation. Raise
    :class:`~webui.pipeline.request.RequestError` (or ``ModelError``) for bad input: unlike other
    hooks' errors, these reach the client as a 4xx answer.
    versionadded: 1.1
    """


@hookspec
def on_step_end(state: StepState) -> None:
    """Called after every sampling step with the step number, sigma, current latents and job.

    Assign ``state.latents`` to replace the latents; call ``state.job.interrupt()`` to stop after this step.
    versionadded: 1.0
    """


@hookspec
def postprocess_image(state: ImageState) -> None:
    """Called for each decoded image before it is saved; assign ``state.image`` to replace it.

    ``state.extra_infotext`` may be updated to add ``Key: value`` pairs to this image's infotext.
    versionadded: 1.0
    """


@hookspec
def after_generate(result: GenerationResult, job: Job) -> None:
    """Called once when a job has produced all its images (also after an interrupt).

    versionadded: 1.0
    """


@hookspec
def extra_infotext(request: GenerationRequest) -> dict[str, Any] | None:
    """Return extra ``Key: value`` pairs to write in the infotext of every image of ``request``.

    versionadded: 1.0
    """


@hookspec
def parse_infotext(params: Mapping[str, Any], mode: str) -> dict[str, Any] | None:
    """Read this plugin's own infotext keys back (the reverse of ``extra_infotext``/``postprocess_image``).

    Called for PNG Info's "Send to txt2img/img2img", the gallery's send buttons, the tab's paste button and
    the API's ``infotext`` field. ``params`` is the parsed infotext (:func:`webui.infotext.parse_infotext`:
    ``{"Prompt": ..., "Steps": "20", "Film grain": "0.2", ...}``, values mostly text, read-only); ``mode``
    is ``"txt2img"`` or ``"img2img"``. Return values by field name, leaving out what the infotext does not
    determine:

    * ``"<section>__<value name>"``: a control of this plugin's ``ui_sections`` section (the names its
      ``render`` returned). The tab shows the value; the API passes a section's values (only those
      returned) to its ``collect`` to build ``alwayson_scripts[<section>]``, exactly as Generate does.
    * a request field (``"steps"``, ``"sampler_name"``, ...): fills that control / request field.
    * ``"alwayson_scripts"``: ``{name: entry}`` for the API only (plugins without a section).

    In the API, fields and ``alwayson_scripts`` entries the client set explicitly win over the infotext.
    versionadded: 1.2
    """


@hookspec
def image_saved(path: str, infotext: str, image: Image.Image) -> None:
    """Called after an image was written to disk.

    versionadded: 1.0
    """


# --- server and UI -------------------------------------------------------------------------


@hookspec
def api_routes(router: fastapi.APIRouter, ctx: AppContext) -> None:
    """Add HTTP routes to ``router``; they are mounted at the server root, behind the API auth.

    versionadded: 1.0
    """


@hookspec
def ui_tabs(ctx: AppContext) -> list[UiTab] | None:
    """Return extra top-level UI tabs; each ``UiTab(title, render)`` renders inside a ``gr.Tab``.

    versionadded: 1.0
    """


@hookspec
def ui_sections(ctx: AppContext, mode: str) -> list[UiSection] | None:
    """Return sections of controls for the ``mode`` ("txt2img" or "img2img") generation tab.

    Each ``UiSection(name, render, collect)`` renders inside the tab; on Generate its values, by name,
    go through ``collect`` into ``request.alwayson_scripts[name]`` (the API's ``alwayson_scripts``).
    versionadded: 1.1
    """


@hookspec
def ui_assets(ctx: AppContext) -> list[UiAsset] | None:
    """Return JavaScript/CSS for the page: ``webui.ui.assets.UiAsset(kind="js"|"css", text, name)``.

    Extension folders need not implement it: their ``javascript/*.js`` and ``style.css`` are added
    automatically. Read once when the UI is built.
    versionadded: 1.1
    """
