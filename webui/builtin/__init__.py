"""Built-in features, each a plugin registered exactly like a third-party extension."""

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
    "webui.builtin.xyz_plot",
    "webui.builtin.prompt_matrix",
    "webui.builtin.prompts_from_file",
    "webui.builtin.sd_upscale",
    "webui.builtin.loopback",
)
