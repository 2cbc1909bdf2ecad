"""Built-in plugin: the "Prompts from file or textbox" script (one job per line, with A1111's --option lines)."""

from __future__ import annotations

from webui.hookspecs import hookimpl
from webui.scripts import ScriptDef
from webui.scripts_builtin import prompts_file


@hookimpl
def register_scripts() -> list[ScriptDef]:
    return [prompts_file.script_def()]
