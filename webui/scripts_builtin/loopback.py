"""The "Loopback" script (A1111's ``scripts/loopback.py``), img2img only.

Each output becomes the next loop's init image, ``loops`` times. The denoising strength starts at the
request's and moves to ``final_denoising_strength`` along a curve: loop ``k`` (0-based) of ``n`` uses
``start + (final - start) * f(k / (n - 1))`` (the request's strength when ``n`` is 1) with ``f(p) = p``
("Linear"), ``sin(p * pi / 2)`` ("Aggressive": moves early) or ``1 - cos(p * pi / 2)`` ("Lazy": moves
late). Every loop is one image (``batch_size`` is ignored) and takes the previous loop's seed + 1; each of
the ``n_iter`` batches starts again from the request's init image and strength (the seeds go on).
Inpainting: after the first loop the masked content is "original" (the previous output).

Returned: with one batch every loop's image, else the last image of each batch; a one-row grid of them
first when there are several. Positional ``script_args``: ``[loops, final_denoising_strength,
denoising_curve, append_interrogation]`` (the last may be left out; this build has no interrogator, so
anything but "None" is accepted, ignored and reported in the result's warnings).
"""

from __future__ import annotations

import math
from dataclasses import replace
from typing import Any

from webui.errors import RequestError
from webui.hookspecs import hookimpl
from webui.pipeline.noise import resolve_seed
from webui.pipeline.request import MAX_SEED, check_request
from webui.pipeline.result import GenerationResult
from webui.scripts import ScriptDef, ScriptRun, raw_script_args, script_float, script_int
from webui.scripts_builtin.grid import image_grid
from webui.scripts_builtin.results import add_params, combined_info

TITLE = "Loopback"
FIELD = "script_args"
ARG_NAMES = ("loops", "final_denoising_strength", "denoising_curve", "append_interrogation")
CURVES = ("Aggressive", "Linear", "Lazy")
INTERROGATORS = ("None", "CLIP", "DeepBooru")
DEFAULT_LOOPS = 4
DEFAULT_FINAL = 0.5
MAX_LOOPS = 100


def _curve(value: Any) -> str:
    if value in (None, ""):
        return "Linear"
    for name in CURVES:
        if isinstance(value, str) and value.strip().lower() == name.lower():
            return name
    raise RequestError(FIELD, f"{TITLE}: denoising_curve must be one of {', '.join(CURVES)}, got {value!r}")


def _interrogator(value: Any) -> str:
    if value in (None, ""):
        return "None"
    if not isinstance(value, str):
        raise RequestError(FIELD, f"{TITLE}: append_interrogation must be one of {', '.join(INTERROGATORS)}, "
                                  f"got {value!r}")
    for name in INTERROGATORS:
        if value.strip().lower() == name.lower():
            return name
    return value.strip()


def parse_args(args: Any, mode: str) -> dict[str, Any]:
    raw = raw_script_args(TITLE, args, ARG_NAMES)
    return {"loops": script_int(TITLE, "loops", raw.get("loops"), 1, MAX_LOOPS, DEFAULT_LOOPS),
            "final_denoising_strength": script_float(TITLE, "final_denoising_strength",
                                                     raw.get("final_denoising_strength"), 0.0, 1.0, DEFAULT_FINAL),
            "denoising_curve": _curve(raw.get("denoising_curve")),
            "append_interrogation": _interrogator(raw.get("append_interrogation"))}


def loop_strength(start: float, final: float, loop: int, loops: int, curve: str) -> float:
    """The denoising strength of loop ``loop`` (0-based) of ``loops`` (see the module docstring)."""
    if loops == 1:
        return start
    progress = loop / (loops - 1)
    if curve == "Aggressive":
        shape = math.sin(progress * math.pi / 2)
    elif curve == "Lazy":
        shape = 1 - math.cos(progress * math.pi / 2)
    else:
        shape = progress
    return start + (final - start) * shape


def _with_params(res: GenerationResult, params: dict[str, Any]) -> GenerationResult:
    return replace(res, infotexts=[add_params(t, params) for t in res.infotexts])


def run(r: ScriptRun) -> GenerationResult:
    a = parse_args(r.args, r.mode)
    base = r.request
    check_request(base)
    loops, curve = a["loops"], a["denoising_curve"]
    start, final = base.denoising_strength, a["final_denoising_strength"]
    params = {"Final denoising strength": final, "Denoising curve": curve}
    warnings = []
    if a["append_interrogation"] != "None":
        warnings.append(f"{TITLE}: append_interrogation {a['append_interrogation']!r} is ignored "
                        "(this build has no CLIP or DeepBooru interrogator)")
    seed, subseed = resolve_seed(base.seed), resolve_seed(base.subseed)
    batches = base.n_iter
    r.job.plan(loops * batches)

    done: list[GenerationResult] = []  # every generation
    shown: list[GenerationResult] = []  # the images returned (and put in the grid)
    interrupted = False
    for _ in range(batches):
        init, fill, last = (base.init_images[0],), base.inpainting_fill, None
        skipped = False
        for k in range(loops):
            if r.job.interrupted:
                interrupted = True
                break
            # A1111: with img2img_color_correction every loop is corrected towards the first init image
            req = base.with_(init_images=init, batch_size=1, n_iter=1, seed=seed, subseed=subseed,
                             denoising_strength=loop_strength(start, final, k, loops, curve), inpainting_fill=fill,
                             color_correction_images=(base.init_images[0],))
            res = r.generate(req)
            if r.job.interrupted or not res.images:  # A1111 drops the image of an interrupted loop
                interrupted = True
                break
            res = _with_params(res, params)
            done.append(res)
            seed = (seed + 1) % (MAX_SEED + 1)  # past the largest seed: 0
            if r.job.skipped:  # A1111: a skipped loop ends this batch, without its image
                skipped = True
                break
            last = res
            init, fill = (res.images[0],), 1  # inpainting: the next loop starts from this output
            if batches == 1:
                shown.append(res)
        if batches > 1 and last is not None and not skipped and not interrupted:
            shown.append(last)
        if interrupted:
            break
    if not shown:
        return GenerationResult(interrupted=interrupted, warnings=warnings,
                                info={"infotexts": [], "interrupted": interrupted, "warnings": warnings})
    lone = [replace(res, images=res.images[:1]) for res in shown]
    grids, grid_texts, paths = [], [], []
    first_text = done[0].infotexts[0] if done[0].infotexts else ""  # A1111: the first loop's (initial) info
    if len(shown) > 1:
        grid = image_grid([res.images[0] for res in shown], rows=1)
        grids, grid_texts = [grid], [first_text]
        if r.save_grid is not None:
            saved = r.save_grid(grid, first_text)
            if saved:
                paths.append(saved)
    paths += [p for res in done for p in res.paths]
    out = combined_info(grids, grid_texts, done, lone, done[0], interrupted, paths)
    if warnings:
        out.warnings = warnings + [w for w in out.warnings if w not in warnings]
        out.info.update(warnings=list(out.warnings), comments="\n".join(out.warnings))
    return out


def render(mode: str) -> dict[str, Any]:
    import gradio as gr

    out: dict[str, Any] = {}
    out["loops"] = gr.Slider(1, 32, value=DEFAULT_LOOPS, step=1, label="Loops", elem_id=f"{mode}_loopback_loops")
    out["final_denoising_strength"] = gr.Slider(0, 1, value=DEFAULT_FINAL, step=0.01, label="Final denoising strength",
                                                elem_id=f"{mode}_loopback_final_denoising_strength")
    out["denoising_curve"] = gr.Dropdown(list(CURVES), value="Linear", label="Denoising strength curve",
                                         elem_id=f"{mode}_loopback_denoising_curve")
    out["append_interrogation"] = gr.Dropdown(list(INTERROGATORS), value="None",
                                              label="Append interrogated prompt at each iteration",
                                              elem_id=f"{mode}_loopback_append_interrogation")
    return out


#: The script; registering it makes this module a built-in plugin (:data:`webui.builtin.BUILTIN_PLUGINS`).
SCRIPT = ScriptDef(TITLE, run, modes=("img2img",), parse_args=parse_args, render=render, arg_names=ARG_NAMES)


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [SCRIPT]
