"""Built-in plugin: the outpainting scripts ("Poor man's outpainting", "Outpainting mk2") for img2img."""

from __future__ import annotations

from typing import Any

from webui.hookspecs import hookimpl
from webui.pipeline.outpaint import outpaint_from_script
from webui.pipeline.result import GenerationResult
from webui.scripts import ScriptDef, ScriptRun


def _script(title: str) -> ScriptDef:
    def parse(args: Any, mode: str) -> dict[str, Any]:
        return {"script_args": args if args is not None else []}

    def run(r: ScriptRun) -> GenerationResult:
        return r.generate(outpaint_from_script(r.request, title, r.args["script_args"]))

    return ScriptDef(title, run, modes=("img2img",), parse_args=parse)


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [_script("Poor man's outpainting"), _script("Outpainting mk2")]
