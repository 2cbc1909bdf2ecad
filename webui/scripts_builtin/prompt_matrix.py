"""The "Prompt matrix" script (A1111's ``scripts/prompt_matrix.py``).

``a cat|in a hat|on a mat`` makes one image for every combination of the optional parts after the
first ``|`` (here 4: "a cat", "a cat, in a hat", "a cat, on a mat", "a cat, in a hat, on a mat") and
a grid labelled with the parts (greyed and struck through where a part is left out). Positional
``script_args``: ``[put_at_start, different_seeds, prompt_type, variations_delimiter, margin_size]``.
"""

from __future__ import annotations

from typing import Any

from PIL import Image

from webui.errors import RequestError
from webui.hookspecs import hookimpl
from webui.pipeline.noise import resolve_seed
from webui.pipeline.request import check_request
from webui.pipeline.result import GenerationResult
from webui.scripts import ScriptDef, ScriptRun, generate_all, raw_script_args, script_flag, script_int
from webui.scripts_builtin.grid import Annotation, draw_annotations, image_grid
from webui.scripts_builtin.results import combined_info

TITLE = "Prompt matrix"
FIELD = "script_args"
ARG_NAMES = ("put_at_start", "different_seeds", "prompt_type", "variations_delimiter", "margin_size")
DEFAULTS: dict[str, Any] = {"put_at_start": False, "different_seeds": False, "prompt_type": "positive",
                            "variations_delimiter": "comma", "margin_size": 0}
PROMPT_TYPES = ("positive", "negative")
DELIMITERS = {"comma": ", ", "space": " "}
#: At most this many optional parts (2**12 images).
MAX_PARTS = 12
MAX_MARGIN = 500


def _bool(name: str, value: Any) -> bool:
    return script_flag(TITLE, name, value, bool(DEFAULTS[name]))


def parse_args(args: Any, mode: str) -> dict[str, Any]:
    raw = raw_script_args(TITLE, args, ARG_NAMES)
    out = {name: _bool(name, raw.get(name)) for name in ("put_at_start", "different_seeds")}
    prompt_type = str(raw.get("prompt_type") or DEFAULTS["prompt_type"]).strip().lower()
    if prompt_type not in PROMPT_TYPES:
        raise RequestError(FIELD, f"{TITLE}: prompt_type must be positive or negative, got {raw.get('prompt_type')!r}")
    delimiter = str(raw.get("variations_delimiter") or DEFAULTS["variations_delimiter"]).strip().lower()
    if delimiter not in DELIMITERS:
        raise RequestError(FIELD, f"{TITLE}: variations_delimiter must be comma or space, got "
                                  f"{raw.get('variations_delimiter')!r}")
    margin = script_int(TITLE, "margin_size", raw.get("margin_size"), 0, MAX_MARGIN)
    return {**out, "prompt_type": prompt_type, "variations_delimiter": delimiter, "margin_size": margin}


def combinations(text: str, put_at_start: bool = False, delimiter: str = ", ") -> tuple[list[str], list[str]]:
    """``(parts, prompts)``: the ``|``-separated parts and the prompt of each combination, combination ``n``
    holding optional part ``i`` when bit ``i`` of ``n`` is set."""
    parts = text.split("|")
    optional = parts[1:]
    prompts = []
    for n in range(1 << len(optional)):
        chosen = [p.strip().strip(",") for i, p in enumerate(optional) if n & (1 << i)]
        chosen = [*chosen, parts[0]] if put_at_start else [parts[0], *chosen]
        prompts.append(delimiter.join(chosen))
    return parts, prompts


def matrix_labels(parts: list[str]) -> tuple[list[list[Annotation]], list[list[Annotation]]]:
    """Column and row labels: the first half of the optional parts across, the rest down."""
    optional = [p.strip() for p in parts[1:]]
    half = (len(optional) + 1) // 2
    across, down = optional[:half], optional[half:]
    hor = [[Annotation(t, bool(pos & (1 << i))) for i, t in enumerate(across)] for pos in range(1 << len(across))]
    ver = [[Annotation(t, bool(pos & (1 << i))) for i, t in enumerate(down)] for pos in range(1 << len(down))]
    return hor, ver


def run(r: ScriptRun) -> GenerationResult:
    a = parse_args(r.args, r.mode)
    base = r.request
    check_request(base)
    base = base.with_(seed=resolve_seed(base.seed), subseed=resolve_seed(base.subseed))
    positive = a["prompt_type"] == "positive"
    parts, prompts = combinations(base.prompt if positive else base.negative_prompt, a["put_at_start"],
                                  DELIMITERS[a["variations_delimiter"]])
    if len(parts) - 1 > MAX_PARTS:
        raise RequestError(FIELD, f"{TITLE}: at most {MAX_PARTS} optional parts (|), got {len(parts) - 1}")
    requests = []
    for i, text in enumerate(prompts):
        changes = {"prompt": text} if positive else {"negative_prompt": text}
        requests.append(base.with_(**changes, seed=base.seed + (i if a["different_seeds"] else 0),
                                   batch_size=1, n_iter=1))
    done, interrupted = generate_all(r, requests)
    if not done:
        return GenerationResult(interrupted=interrupted, info={"infotexts": [], "interrupted": interrupted})
    first = done[0]
    w, h = first.images[0].size
    cells = [res.images[0] for res in done]
    cells += [Image.new("RGB", (w, h))] * (len(requests) - len(cells))
    n_optional = len(parts) - 1
    grid = image_grid(cells, rows=1 << (n_optional // 2))
    hor, ver = matrix_labels(parts)
    grid = draw_annotations(grid, w, h, hor, ver, a["margin_size"])
    info = first.infotexts[0] if first.infotexts else ""
    paths = []
    if r.save_grid is not None:
        saved = r.save_grid(grid, info)
        if saved:
            paths.append(saved)
    for res in done:
        paths += res.paths
    return combined_info([grid], [info], done, done, first, interrupted, paths)


def render(mode: str) -> dict[str, Any]:
    import gradio as gr

    out: dict[str, Any] = {}
    with gr.Row():
        with gr.Column():
            out["put_at_start"] = gr.Checkbox(False, label="Set at prompt start",
                                              elem_id=f"{mode}_prompt_matrix_put_at_start")
            out["different_seeds"] = gr.Checkbox(False, label="Use different seed for each picture",
                                                 elem_id=f"{mode}_prompt_matrix_different_seeds")
        with gr.Column():
            out["prompt_type"] = gr.Radio(list(PROMPT_TYPES), value="positive", label="Select prompt",
                                          elem_id=f"{mode}_prompt_matrix_prompt_type")
            out["variations_delimiter"] = gr.Radio(list(DELIMITERS), value="comma", label="Select joining char",
                                                   elem_id=f"{mode}_prompt_matrix_variations_delimiter")
        with gr.Column():
            out["margin_size"] = gr.Slider(0, MAX_MARGIN, value=0, step=2, label="Grid margins (px)",
                                           elem_id=f"{mode}_prompt_matrix_margin_size")
    return out


#: The script; registering it makes this module a built-in plugin (:data:`webui.builtin.BUILTIN_PLUGINS`).
SCRIPT = ScriptDef(TITLE, run, parse_args=parse_args, render=render, arg_names=ARG_NAMES)


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [SCRIPT]
