"""Kept for code written against it: :class:`~webui.errors.ModelError` lives in :mod:`webui.errors`."""

from webui.errors import ModelError

__all__ = ["ModelError"]
