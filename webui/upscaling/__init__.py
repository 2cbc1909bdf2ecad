"""Image upscalers: the registry filled by the ``register_upscalers`` hook, and resizing with them."""
