"""Built-in plugin: the "Loopback" img2img script (each output is the next loop's input)."""

from __future__ import annotations

from webui.hookspecs import hookimpl
from webui.scripts import ScriptDef
from webui.scripts_builtin import loopback


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [loopback.script_def()]
