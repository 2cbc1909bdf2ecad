"""Built-in plugin: the "Prompt matrix" script (every combination of a prompt's |-separated parts, in a grid)."""

from __future__ import annotations

from webui.hookspecs import hookimpl
from webui.scripts import ScriptDef
from webui.scripts_builtin import prompt_matrix


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [prompt_matrix.script_def()]
