"""The application context: everything a request needs, built once by :func:`build_context`
and passed down (no module globals)."""

from __future__ import annotations

import logging
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Protocol

import torch

from webui.a1111_options import a1111_option_defs
from webui.devices import DevicePolicy, choose_device, free_memory
from webui.errors import UnknownChoice
from webui.filenames import ImageFields, request_fields, timestamp_of
from webui.infotext import parse_infotext
from webui.jobs import Job, JobQueue, QueueFull
from webui.localization import Localizations, apply_start_flags, attach_localization_option, localization_folders
from webui.models.default import ensure_default_checkpoint
from webui.models.manager import HashCache, LoadedModel, ModelManager
from webui.models.modules import list_modules
from webui.networks.embeddings import EmbeddingDB
from webui.networks.lora import LoraRegistry
from webui.pipeline.generate import PipelineEnv, generate
from webui.pipeline.request import GenerationRequest
from webui.pipeline.result import GenerationResult
from webui.plugins import Hooks, Plugins, make_plugin_manager
from webui.prompts.parser import parse_extra_networks
from webui.restoration.registry import FaceRestorerRegistry
from webui.sampling.registry import SamplerRegistry
from webui.saving import ImageSaver
from webui.scripts import ScriptChoices, ScriptRegistry, ScriptRun
from webui.settings import OptionError, Options, OptionsStore, Settings, core_option_defs
from webui.styles import StyleStore
from webui.train_runs import TrainingRuns
from webui.upscaling.registry import UpscalerRegistry, upscale_to

log = logging.getLogger(__name__)
#: The job kinds of training runs (webui.train_jobs), for option training_queue_policy.
TRAINING_JOB_KINDS = frozenset({"train_embedding", "train_lora"})


class GenerationFailed(RuntimeError):
    """A job failed for a reason that is not the request's fault (e.g. out of memory: the API answers 507)."""

    def __init__(self, message: str, *, out_of_memory: bool = False):
        super().__init__(message)
        self.out_of_memory = out_of_memory

    def __reduce__(self):  # keep picklable (from a generation worker)
        return (_generation_failed, (str(self), self.out_of_memory))


def _generation_failed(message: str, out_of_memory: bool) -> GenerationFailed:
    return GenerationFailed(message, out_of_memory=out_of_memory)


class Executor(Protocol):
    """Runs the generations the queue lets through somewhere other than this process (``--workers``: the
    Ray workers of :mod:`webui.workers`). ``AppContext.executor`` None: in this process, as always."""

    def generate(self, req: GenerationRequest, job: Job, opts: Options) -> GenerationResult: ...

    def workers(self) -> list[dict[str, Any]]: ...

    def manage(self, action: str) -> list[dict[str, Any]]:
        """A1111's checkpoint routes on every worker: "refresh", "unload" or "reload"."""
        ...

    def close(self) -> None: ...


@contextmanager
def _out_of_memory_fails_the_job() -> Iterator[None]:
    """Out of memory inside a job: the device caches are freed and :class:`GenerationFailed` is raised."""
    try:
        yield
    except torch.OutOfMemoryError as exc:
        free_memory()
        raise GenerationFailed(f"out of memory: {exc}", out_of_memory=True) from exc


@dataclass
class AppContext:
    settings: Settings
    options: OptionsStore
    plugins: Plugins
    samplers: SamplerRegistry
    models: ModelManager
    jobs: JobQueue
    device: DevicePolicy
    saver: ImageSaver
    styles: StyleStore
    loras: LoraRegistry
    embeddings: EmbeddingDB
    upscalers: UpscalerRegistry
    face_restorers: FaceRestorerRegistry
    scripts: ScriptRegistry
    #: training runs started through the API or the UI (``GET /webui/v1/train``)
    training_runs: TrainingRuns = field(default_factory=TrainingRuns)
    #: the localization files (option ``localization``; ``webui.localization``)
    localizations: Localizations = field(default_factory=lambda: Localizations(list))
    #: where generations run: None in this process; else the generation workers (``--workers``, issue 23)
    executor: Executor | None = None

    @property
    def hooks(self) -> Hooks:
        return self.plugins.hooks

    def pipeline_env(self) -> PipelineEnv:
        return PipelineEnv(self.hooks, self.samplers, self.saver, self.settings.data_dir, styles=self.styles,
                           loras=self.loras, embeddings=self.embeddings, file_hash=self.models.hashes.sha256,
                           upscalers=self.upscalers, face_restorers=self.face_restorers,
                           load_refiner=self.models.load_aux)

    def refresh_upscalers(self) -> None:
        """Rescan upscaler and face-restorer model folders (plugins register again)."""
        self.upscalers.replace(self.hooks.register_upscalers(self.settings))
        self.face_restorers.replace(self.hooks.register_face_restorers(self.settings))

    def refresh_models(self) -> None:
        """The refresh action (``POST /sdapi/v1/refresh-checkpoints``, the 🔄 beside the checkpoint): rescan
        the checkpoint folders, and the upscaler and face-restorer ones (the ``register_upscalers`` and
        ``register_face_restorers`` hooks are called again)."""
        self.models.refresh()
        self.refresh_upscalers()
        if self.executor is not None:  # the generation workers scan their folders too
            self.executor.manage("refresh")

    def options_for(self, override_settings: Mapping[str, Any] | None) -> Options:
        """Current options with a request's ``override_settings`` applied (validated, not persisted)."""
        if not override_settings:
            return self.options.current
        try:
            clean = self.options.validate(override_settings)
        except OptionError as exc:  # name the request field: override_settings.<key>
            raise OptionError({f"override_settings.{k}": v for k, v in exc.errors.items()}) from None
        return self.options.current.replaced(clean)

    def model_for(self, opts: Options) -> LoadedModel:
        """The model a job with ``opts`` runs on, loading it if needed. While another thread loads a checkpoint
        (the first one at start) this waits up to ``--model-wait`` seconds, then raises ModelStillLoading."""
        self.models.wait_while_loading(self.settings.model_wait)
        name = str(opts.get("sd_model_checkpoint") or "")
        modules = [str(m) for m in opts.get("forge_additional_modules") or []]
        if name and name != self.options.current.get("sd_model_checkpoint"):
            # per-request override: unknown -> UnknownChoice
            return self.models.ensure_loaded(name, modules=modules)
        try:
            return self.models.ensure_loaded(name or None, modules=modules)
        except UnknownChoice as exc:
            if exc.field == "forge_additional_modules":
                raise
            log.warning("Saved checkpoint %r not found; using the first available one", name)
            return self.models.ensure_loaded(None, modules=modules)

    def select_checkpoint(self, name: str) -> str:
        """Make checkpoint ``name`` the current one (the UI's dropdown, ``POST /sdapi/v1/options``); its title.
        Loaded here, or with generation workers only looked up: each worker loads it for its next job."""
        if self.executor is not None:
            return self.models.title(self.models.find(name))
        return self.models.ensure_loaded(name).title

    def load_initial_model(self) -> LoadedModel:
        """Load ``--ckpt`` if given, else the saved ``sd_model_checkpoint``, else the first checkpoint. The
        ``--ckpt`` file then is the selected checkpoint (option ``sd_model_checkpoint``), as in A1111."""
        if self.settings.ckpt is not None:
            model = self.models.load(self.models.info_for(self.settings.ckpt))
            self.options.update({"sd_model_checkpoint": model.title})
            return model
        return self.model_for(self.options.current)

    def generate(self, req: GenerationRequest, job: Job | None = None) -> GenerationResult:
        """Run a generation request (txt2img, img2img, inpainting; hires fix and refiner included) through the
        shared queue."""
        job = job or Job(kind=req.mode)
        opts = self.options_for(req.override_settings)
        self._refuse_during_training()
        with self.jobs.slot(job), _out_of_memory_fails_the_job():
            return self._run_generation(req, job, opts)

    def _run_generation(self, req: GenerationRequest, job: Job, opts: Options,
                        env: PipelineEnv | None = None) -> GenerationResult:
        """One generation of a job that holds its queue slot: on a worker when there are workers, else here."""
        if self.executor is not None:
            return self.executor.generate(req, job, opts)
        return generate(env or self.pipeline_env(), self.model_for(opts), req, job, opts)

    def _refuse_during_training(self) -> None:
        """Option ``training_queue_policy`` = "Refuse": while a training run is running or queued, a generation
        is refused at once (503) instead of waiting behind it."""
        if self.options.current.get("training_queue_policy", "Wait") != "Refuse":
            return
        for queued in (*self.jobs.running(), *self.jobs.waiting()):
            if queued.kind in TRAINING_JOB_KINDS:
                raise QueueFull(f"a training run ({queued.kind}) holds the device: generations are refused until it "
                                "ends (option training_queue_policy); try again later")

    def txt2img(self, req: GenerationRequest, job: Job | None = None) -> GenerationResult:
        """Deprecated name of :meth:`generate` (it always ran every mode), kept for extensions written
        against it."""
        warnings.warn("AppContext.txt2img is deprecated: use AppContext.generate", DeprecationWarning, stacklevel=2)
        return self.generate(req, job)

    def script_choices(self) -> ScriptChoices:
        vae = self.options.defs.get("sd_vae")
        return ScriptChoices(
            samplers=list(self.samplers.samplers), schedules=[s.label for s in self.samplers.schedules.values()],
            checkpoints=[self.models.title(i) for i in self.models.checkpoints()],
            vaes=list(vae.choices_fn()) if vae is not None and vae.choices_fn is not None else [],
            upscalers=self.upscalers.names(), styles=self.styles.names())

    def run_script(self, req: GenerationRequest, name: str, script_args: Any, job: Job | None = None
                   ) -> GenerationResult:
        """Run the script ``name`` on ``req`` in one queue slot (its generations share the job)."""
        script = self.scripts.get(name, req.mode)
        args = script.named_args(script_args, req.mode)
        self._refuse_during_training()
        job = job or Job(kind=req.mode)
        env = self.pipeline_env()

        def run_one(r: GenerationRequest) -> GenerationResult:
            return self._run_generation(r, job, self.options_for(r.override_settings), env)

        def image_fields(seed: int | None, prompt: str | None = None) -> ImageFields:
            model = self.models.current
            styles = [self.styles.get(name) for name in req.styles]
            values: dict[str, Any] = {"seed": seed, "style_prompts": tuple(s.prompt for s in styles if s is not None),
                                      "job_timestamp": timestamp_of(job.started)}
            if prompt is not None:
                values["prompt"] = parse_extra_networks(prompt)[0]
            if seed is not None:
                values["all_seeds"] = tuple(seed + k for k in range(req.n_iter * req.batch_size))
            if model is not None:
                values.update(model_name=model.info.model_name, model_hash=model.short_hash)
            return request_fields(req, **values)

        # A1111 names the grids of these scripts after them, with the seed (the others: grid-NNNN)
        own_grid_name = {"x/y/z plot": "xyz_grid", "prompt matrix": "prompt_matrix"}.get(script.title.lower())

        def save_grid(image: Any, infotext: str, *, basename: str | None = None, seed: int | None = None,
                      prompt: str | None = None, short_filename: bool | None = None) -> str | None:
            """A script's grid, as A1111 saves it: ``grid-NNNN`` (Loopback, process_images), X/Y/Z plot's
            ``xyz_grid-NNNN-<seed>`` and Prompt matrix's ``prompt_matrix-NNNN-<seed>``. Options: the saved
            ones (A1111 restores a request's override_settings before a script saves its grid)."""
            if basename is None:
                basename = own_grid_name or "grid"
                if own_grid_name is not None and short_filename is None:
                    short_filename = False
                if own_grid_name == "prompt_matrix" and prompt is None:
                    prompt = req.prompt
            opts = self.options.current
            if not (req.save_images and opts.get("grid_save", True)):
                return None
            first = parse_infotext(infotext) if infotext else {}
            if seed is None:
                try:
                    seed = int(str(first.get("Seed", req.seed)))
                except ValueError:
                    seed = req.seed
            try:
                saved = self.saver.save_image(
                    image, "grids", opts, self.settings.data_dir,
                    image_fields(seed, prompt if prompt is not None else str(first.get("Prompt", req.prompt))),
                    infotext, basename=basename, short_filename=short_filename, hooks=self.hooks)
            except OSError as exc:  # the grid is still returned to the client
                log.error("Could not save the grid: %s", exc)
                return None
            return str(saved.path)

        def upscale(image: Any, upscaler: str, width: int, height: int) -> Any:
            opts = self.options_for(req.override_settings)
            return upscale_to(self.upscalers.get(upscaler), image, width, height, opts=opts)

        def save_image(image: Any, seed: int, infotext: str) -> str | None:
            opts = self.options_for(req.override_settings)
            if not (req.save_images and opts.get("samples_save", True)):
                return None
            try:  # A1111 (SD upscale): as a sample of the tab, named with the request's prompt
                saved = self.saver.save_image(image, "samples", opts, self.settings.data_dir,
                                              image_fields(seed, req.prompt), infotext, hooks=self.hooks)
            except OSError as exc:  # the image is still returned to the client
                log.error("Could not save the image: %s", exc)
                return None
            return str(saved.path)

        with self.jobs.slot(job), _out_of_memory_fails_the_job():
            return script.run(ScriptRun(req, args, req.mode, run_one, job, self.script_choices(), save_grid,
                                        upscale, save_image, opts=self.options_for(req.override_settings)))

    def extras(self, image: Any, req: Any, job: Job | None = None, override_settings: Mapping[str, Any] | None = None):
        """Run the Extras operation on one image through the shared queue; returns (image, info)."""
        from webui.extras import run_extras

        job = job or Job(kind="extras")
        opts = self.options_for(override_settings)
        with self.jobs.slot(job), _out_of_memory_fails_the_job():
            job.job_count = 1
            job.set_stage(0, 0, "Extras")
            return run_extras(self.upscalers, self.face_restorers, image, req, opts)


def saved_disabled_extensions(config_file: Path) -> list[str]:
    """The ``disabled_extensions`` option, read before the options store exists (plugins come first)."""
    import json

    try:
        value = json.loads(config_file.read_text(encoding="utf-8")).get("disabled_extensions", [])
    except (OSError, ValueError, AttributeError):
        return []
    return [str(v) for v in value] if isinstance(value, list) else []


def _check_upscaler_option(options: OptionsStore, upscalers: UpscalerRegistry) -> None:
    """``upscaler_for_img2img`` must name a registered upscaler (empty/None/"None" = Lanczos)."""
    import dataclasses

    def check(key: str, value: Any) -> None:
        if value in (None, "", "None"):
            return
        names = upscalers.names()
        if str(value).lower() not in (n.lower() for n in names):
            raise UnknownChoice(key, "upscaler", value, names)

    d = options.defs.get("upscaler_for_img2img")
    if d is not None and d.check is None:
        options.defs[d.key] = dataclasses.replace(d, check=check, choices_fn=lambda: ["None", *upscalers.names()])


def _choice_lists(options: OptionsStore, ctx: AppContext) -> None:
    """Options whose allowed values are files or registered names show as dropdowns of them in Settings (as
    in A1111): the checkpoint (titles, as the option holds) and the face restorer."""
    import dataclasses

    lists = {"sd_model_checkpoint": lambda: [ctx.models.title(info) for info in ctx.models.checkpoints()],
             "face_restoration_model": lambda: ctx.face_restorers.names()}
    for key, choices in lists.items():
        d = options.defs.get(key)
        if d is not None and d.choices_fn is None:
            options.defs[key] = dataclasses.replace(d, choices_fn=choices)


def build_context(settings: Settings, *, plugins: Plugins | None = None, load_model: bool = False) -> AppContext:
    """Build the application: plugins, options, samplers, models, jobs."""
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    if plugins is None:
        plugins = make_plugin_manager(
            extensions_dir=settings.extensions_dir,
            enabled_extensions=settings.extensions,
            disable_extensions=settings.disable_extensions,
            disabled_extensions=saved_disabled_extensions(settings.config_file),
        )
    hooks = plugins.hooks
    defs = [*core_option_defs(), *hooks.register_settings()]
    # every other A1111 1.10 key: accepted, typed, stored; no effect here (listed in docs/api.md)
    defs += a1111_option_defs(d.key for d in defs)
    options = OptionsStore.open(settings.config_file, defs)
    samplers = SamplerRegistry(hooks.register_samplers(), hooks.register_schedules())
    device = choose_device(settings)
    for d in settings.checkpoint_dirs():
        try:
            d.mkdir(parents=True, exist_ok=True)
        except OSError:
            pass
    models = ModelManager(
        settings.checkpoint_dirs(),
        HashCache(settings.cache_dir / "hashes.json"),
        device.device,
        device.dtype,
        default_checkpoint=lambda: ensure_default_checkpoint(settings.cache_dir),
        on_loaded=hooks.model_loaded,
        vae_dtype=torch.float32 if settings.no_half_vae and device.dtype != torch.float32 else None,
        cache_size=lambda: int(options.current.get("sd_checkpoint_cache", 0)),
        fp8_storage=lambda: str(options.current.get("fp8_storage", "Disable")),
        extra_checkpoints=[settings.ckpt] if settings.ckpt is not None else [],
        module_files=lambda: list_modules(settings.vae_dirs(), [settings.model_dir("text_encoder")]),
        t5_on_cpu=lambda: bool(options.current.get("t5_on_cpu", False)),
        memory_mode=settings.memory_mode,
        attention=settings.attention,
        channels_last=settings.channels_last,
        compile_backend=settings.compile_backend if settings.compile else None,
    )
    if settings.compile:
        from webui.models.speedups import compile_cache_env

        compile_cache_env(settings.cache_dir)
    ctx = AppContext(settings, options, plugins, samplers, models,
                     JobQueue(settings.concurrency, settings.max_queue_size), device, ImageSaver(),
                     StyleStore(settings.data_dir / "styles.csv"), LoraRegistry(settings.lora_dirs()),
                     EmbeddingDB([settings.model_dir("embeddings")]),
                     UpscalerRegistry(hooks.register_upscalers(settings)),
                     FaceRestorerRegistry(hooks.register_face_restorers(settings)),
                     ScriptRegistry(hooks.register_scripts()))
    _check_upscaler_option(options, ctx.upscalers)
    _choice_lists(options, ctx)
    extension_folders = [r.path for r in plugins.reports if r.ok and r.source == "extension" and r.path]
    ctx.localizations = Localizations(lambda: localization_folders(settings, extension_folders))
    attach_localization_option(options, ctx.localizations)
    apply_start_flags(settings, options, ctx.localizations)
    if load_model:
        ctx.load_initial_model()
    hooks.startup(ctx)
    return ctx
