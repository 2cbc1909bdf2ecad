"""The selectable scripts A1111 ships: "X/Y/Z plot", "Prompt matrix", "Prompts from file or textbox",
"SD upscale" and "Loopback".

Each module builds a :class:`~webui.scripts.ScriptDef` from the public script interface only (the
request, ``run.generate``, ``run.choices``, ``run.save_grid``) and is itself a built-in plugin: its
``register_scripts`` hook returns that script (disable one by its module name, e.g. ``xyz_plot``).
:mod:`.grid` draws the labelled grids (A1111's ``image_grid`` / ``draw_grid_annotations``).
"""
