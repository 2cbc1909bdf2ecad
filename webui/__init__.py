"""A Stable Diffusion web UI on diffusers, with an A1111-compatible API and a pluggy plugin system."""

__version__ = "0.1.0"
