"""The selectable scripts A1111 ships: "X/Y/Z plot", "Prompt matrix" and "Prompts from file or textbox".

Each module builds a :class:`~webui.scripts.ScriptDef` from the public script interface only (the
request, ``run.generate``, ``run.choices``, ``run.save_grid``); the plugins in :mod:`webui.builtin`
(``xyz_plot``, ``prompt_matrix``, ``prompts_from_file``) register them through ``register_scripts``.
:mod:`.grid` draws the labelled grids (A1111's ``image_grid`` / ``draw_grid_annotations``).
"""
