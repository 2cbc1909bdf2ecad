"""Built-in features, each a plugin registered exactly like a third-party extension.

The selectable scripts are plugins in :mod:`webui.scripts_builtin` (each module registers its own script).
"""

#: Module names registered by :func:`webui.plugins.make_plugin_manager`; each can be disabled by name.
BUILTIN_PLUGINS: tuple[str, ...] = (
    "webui.builtin.samplers",
    "webui.builtin.upscalers",
    "webui.builtin.gan_upscalers",
    "webui.builtin.face_restorers",
    "webui.builtin.controlnet",
    "webui.builtin.vae",
    "webui.builtin.outpainting",
    "webui.builtin.previews",
    "webui.scripts_builtin.xyz_plot",
    "webui.scripts_builtin.prompt_matrix",
    "webui.scripts_builtin.prompts_from_file",
    "webui.scripts_builtin.sd_upscale",
    "webui.scripts_builtin.loopback",
)
