"""The "Prompts from file or textbox" script (A1111's ``scripts/prompts_from_file.py``).

One job per non-empty line: a plain prompt, or A1111's command-line form
``--prompt "a cat" --negative_prompt "blurry" --steps 10 --seed 3 --sampler_name "Euler" ...`` (see
:data:`TAGS`). Every line is parsed and checked before the first image is made; the results are
concatenated (no grid). Positional ``script_args``: ``[checkbox_iterate, checkbox_iterate_batch,
prompt_position, prompt_txt]`` (the older ``[checkbox_iterate, checkbox_iterate_batch, prompt_txt]``
works too).
"""

from __future__ import annotations

import shlex
from typing import Any

from webui.errors import RequestError
from webui.hookspecs import hookimpl
from webui.pipeline.noise import resolve_seed
from webui.pipeline.request import GenerationRequest, check_request
from webui.pipeline.result import GenerationResult
from webui.scripts import ScriptChoices, ScriptDef, ScriptRun, generate_all, raw_script_args, script_flag
from webui.scripts_builtin.results import closest_checkpoint, combined_info

TITLE = "Prompts from file or textbox"
FIELD = "script_args"
ARG_NAMES = ("checkbox_iterate", "checkbox_iterate_batch", "prompt_position", "prompt_txt")
POSITIONS = ("start", "end")

#: A1111's line options and how their values are read. ``ignored`` ones are accepted and have no effect
#: here (output folders are the server's choice); ``scheduler`` is ours (A1111 1.9+ schedule types).
TAGS: dict[str, str] = {
    "sd_model": "checkpoint", "outpath_samples": "ignored", "outpath_grids": "ignored",
    "prompt_for_display": "ignored", "prompt": "str", "negative_prompt": "str", "styles": "styles",
    "seed": "int", "subseed_strength": "float", "subseed": "int", "seed_resize_from_h": "int",
    "seed_resize_from_w": "int", "sampler_index": "sampler_index", "sampler_name": "sampler", "batch_size": "int",
    "n_iter": "int", "steps": "int", "cfg_scale": "float", "width": "int", "height": "int",
    "restore_faces": "bool", "tiling": "bool", "do_not_save_samples": "bool", "do_not_save_grid": "ignored",
    "scheduler": "schedule",
}


def _bool(name: str, value: Any) -> bool:
    return script_flag(TITLE, name, value, False)


def parse_args(args: Any, mode: str) -> dict[str, Any]:
    if isinstance(args, (list, tuple)) and len(args) == 3 and str(args[2]).strip().lower() not in POSITIONS:
        args = dict(zip(("checkbox_iterate", "checkbox_iterate_batch", "prompt_txt"), args))  # before A1111 1.6
    raw = raw_script_args(TITLE, args, ARG_NAMES)
    position = str(raw.get("prompt_position") or "start").strip().lower()
    if position not in POSITIONS:
        raise RequestError(FIELD, f"{TITLE}: prompt_position must be start or end, got {raw.get('prompt_position')!r}")
    text = raw.get("prompt_txt")
    if text is None:
        text = ""
    if isinstance(text, (list, tuple)):
        text = "\n".join(str(t) for t in text)
    if not isinstance(text, str):
        raise RequestError(FIELD, f"{TITLE}: prompt_txt must be text, got {type(text).__name__}")
    return {"checkbox_iterate": _bool("checkbox_iterate", raw.get("checkbox_iterate")),
            "checkbox_iterate_batch": _bool("checkbox_iterate_batch", raw.get("checkbox_iterate_batch")),
            "prompt_position": position, "prompt_txt": text}


def _line_error(n: int, message: str) -> RequestError:
    return RequestError(FIELD, f"{TITLE}: line {n}: {message}")


def _convert(tag: str, kind: str, value: str, n: int, choices: ScriptChoices) -> Any:
    try:
        if kind == "int":
            return int(value)
        if kind == "float":
            return float(value)
    except ValueError:
        raise _line_error(n, f"--{tag} needs a {'whole ' if kind == 'int' else ''}number, got {value!r}") from None
    if kind == "bool":
        return value.strip().lower() in ("true", "1", "yes")
    if kind == "styles":
        return tuple(s.strip() for s in value.split(",") if s.strip())
    if kind == "sampler":
        for name in choices.samplers:
            if name.lower() == value.strip().lower():
                return name
        raise _line_error(n, f"unknown sampler {value!r}; valid: {', '.join(choices.samplers)}")
    if kind == "sampler_index":
        try:
            return choices.samplers[int(value)]
        except (ValueError, IndexError):
            raise _line_error(n, f"--sampler_index must be 0-{len(choices.samplers) - 1}, got {value!r}") from None
    if kind == "schedule":
        for name in ["Automatic", *choices.schedules]:
            if name.lower() == value.strip().lower():
                return name
        raise _line_error(n, f"unknown schedule type {value!r}; valid: Automatic, {', '.join(choices.schedules)}")
    if kind == "checkpoint":
        title = closest_checkpoint(choices.checkpoints, value)
        if title is None:
            raise _line_error(n, f"unknown checkpoint {value!r}; valid: {', '.join(choices.checkpoints) or 'none'}")
        return title
    return value


def parse_line(line: str, n: int, choices: ScriptChoices) -> dict[str, Any]:
    """The options of line ``n`` (1-based): ``{"prompt": line}`` for a plain prompt; for a line starting with
    ``--``, A1111's options (a prompt runs on to the next ``--option``). RequestError names the line."""
    if not line.startswith("--"):
        return {"prompt": line}
    try:
        args = shlex.split(line)
    except ValueError as exc:
        raise _line_error(n, f"cannot read the options: {exc}") from None
    out: dict[str, Any] = {}
    pos = 0
    while pos < len(args):
        arg = args[pos]
        if not arg.startswith("--"):
            raise _line_error(n, f"expected an --option, got {arg!r}")
        tag = arg[2:]
        kind = TAGS.get(tag)
        if kind is None:
            raise _line_error(n, f"unknown option {arg}; valid: {', '.join('--' + t for t in TAGS)}")
        if pos + 1 >= len(args):
            raise _line_error(n, f"{arg} needs a value")
        if tag in ("prompt", "negative_prompt"):
            words = [args[pos + 1]]
            pos += 2
            while pos < len(args) and not args[pos].startswith("--"):
                words.append(args[pos])
                pos += 1
            out[tag] = " ".join(words)
            continue
        out[tag] = _convert(tag, kind, args[pos + 1], n, choices)
        pos += 2
    return out


def _request(base: GenerationRequest, opts: dict[str, Any], position: str) -> GenerationRequest:
    changes: dict[str, Any] = {}
    for tag, value in opts.items():
        kind = TAGS.get(tag, "str")
        if kind == "ignored":
            continue
        if tag == "sd_model":
            changes["override_settings"] = {**base.override_settings, "sd_model_checkpoint": value}
        elif tag == "sampler_index":
            changes["sampler_name"] = value
        elif tag == "do_not_save_samples":
            changes["save_images"] = base.save_images and not value
        elif tag in ("prompt", "negative_prompt"):
            own = getattr(base, tag)
            changes[tag] = value if not (value and own) else (f"{value} {own}" if position == "start"
                                                               else f"{own} {value}")
        else:
            changes[tag] = value
    return base.with_(**changes)


def run(r: ScriptRun) -> GenerationResult:
    a = parse_args(r.args, r.mode)
    base = r.request
    check_request(base)
    lines = [(n, line.strip()) for n, line in enumerate(a["prompt_txt"].splitlines(), 1) if line.strip()]
    if not lines:
        raise RequestError(FIELD, f"{TITLE}: no prompts given (prompt_txt is empty)")
    jobs = [(n, parse_line(line, n, r.choices)) for n, line in lines]
    seed = base.seed
    if (a["checkbox_iterate"] or a["checkbox_iterate_batch"]) and seed == -1:
        seed = resolve_seed(-1)
    step = base.batch_size * base.n_iter if a["checkbox_iterate"] else 0
    requests = []
    for i, (n, opts) in enumerate(jobs):
        req = _request(base.with_(seed=seed + i * step if seed != -1 else -1), opts, a["prompt_position"])
        try:
            check_request(req)
        except RequestError as exc:
            raise _line_error(n, f"{exc.field}: {exc.message}") from None
        requests.append(req)
    done, interrupted = generate_all(r, requests)
    if not done:
        return GenerationResult(interrupted=interrupted, info={"infotexts": [], "interrupted": interrupted})
    paths = [p for res in done for p in res.paths]
    return combined_info([], [], done, done, done[0], interrupted, paths)


def render(mode: str) -> dict[str, Any]:
    import gradio as gr

    out: dict[str, Any] = {}
    with gr.Row():
        out["checkbox_iterate"] = gr.Checkbox(False, label="Iterate seed every line",
                                              elem_id=f"{mode}_prompts_file_checkbox_iterate")
        out["checkbox_iterate_batch"] = gr.Checkbox(False, label="Use same random seed for all lines",
                                                    elem_id=f"{mode}_prompts_file_checkbox_iterate_batch")
        out["prompt_position"] = gr.Radio(list(POSITIONS), value="start", label="Insert prompts at the",
                                          elem_id=f"{mode}_prompts_file_prompt_position")
    out["prompt_txt"] = gr.Textbox(label="List of prompt inputs", lines=4,
                                   elem_id=f"{mode}_prompts_file_prompt_txt")
    upload = gr.File(label="Upload prompt inputs", type="binary", file_types=[".txt"],
                     elem_id=f"{mode}_prompts_file_file")

    def load(data: bytes | None):
        if not data:
            return gr.update(), None
        text = data.decode("utf-8", errors="ignore") if isinstance(data, bytes) else str(data)
        return "\n".join(line.strip() for line in text.splitlines()), None

    upload.upload(load, inputs=upload, outputs=[out["prompt_txt"], upload], api_name=False, queue=False,
                  show_progress="hidden")
    return out


#: The script; registering it makes this module a built-in plugin (:data:`webui.builtin.BUILTIN_PLUGINS`).
SCRIPT = ScriptDef(TITLE, run, parse_args=parse_args, render=render, arg_names=ARG_NAMES)


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [SCRIPT]
