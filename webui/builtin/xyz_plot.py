"""Built-in plugin: the "X/Y/Z plot" script (one image per combination of up to three axes' values, in a grid)."""

from __future__ import annotations

from webui.hookspecs import hookimpl
from webui.scripts import ScriptDef
from webui.scripts_builtin import xyz


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [xyz.script_def()]
