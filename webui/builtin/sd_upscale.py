"""Built-in plugin: the "SD upscale" img2img script (upscale, then redraw tile by tile with blended seams)."""

from __future__ import annotations

from webui.hookspecs import hookimpl
from webui.scripts import ScriptDef
from webui.scripts_builtin import sd_upscale


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [sd_upscale.script_def()]
