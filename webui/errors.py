"""The errors that bad input and unusable model files raise, for every layer (imports nothing from ``webui``).

- :class:`RequestError`: a request value is invalid; ``field`` names the request field. The API answers
  422 naming the field, the UI shows ``field: message``.
- :class:`UnknownChoice`: a name that is none of the valid ones (sampler, scheduler, checkpoint, upscaler,
  face restorer, script, ControlNet preprocessor, ...); a :class:`RequestError` whose message lists the
  valid names. It is also a ``KeyError``, so a plain lookup failure can be caught as one.
- :class:`ModelError`: a model file that cannot be used; ``str(e)`` names the file and what to do.
"""

from __future__ import annotations

from collections.abc import Iterable
from pathlib import Path
from typing import Any


class RequestError(ValueError):
    """Invalid request value; ``field`` names the request field."""

    def __init__(self, field_name: str, message: str):
        self.field = field_name
        self.message = message
        super().__init__(f"{field_name}: {message}")

    def __reduce__(self):  # keep picklable (e.g. across worker processes)
        return (type(self), (self.field, self.message))


class UnknownChoice(RequestError, KeyError):
    """``value`` is not one of ``choices`` (the valid names, in the order they are offered).

    Attributes:
        field: the request field (or option) that named it, e.g. ``"sampler_name"``.
        what: what kind of name it is, e.g. ``"sampler"`` (the message reads ``unknown sampler 'x'``).
        value: the name asked for.
        choices: the valid names.
    """

    def __init__(self, field_name: str, what: str, value: Any, choices: Iterable[str]):
        self.what = what
        self.value = value
        self.choices = [str(c) for c in choices]
        super().__init__(field_name, f"unknown {what} {value!r}; valid: {', '.join(self.choices) or 'none'}")

    def __str__(self) -> str:  # RequestError's text, not KeyError's quoted repr
        return f"{self.field}: {self.message}"

    def for_field(self, field_name: str) -> UnknownChoice:
        """The same error reported on another request field (a registry does not know which field asked)."""
        return UnknownChoice(field_name, self.what, self.value, self.choices)

    def __reduce__(self):
        return (type(self), (self.field, self.what, self.value, self.choices))


class ModelError(Exception):
    """A model file that cannot be used.

    ``str(e)`` always names the file and says what is wrong and what to do, so
    the UI can show it to the user unchanged.

    Attributes:
        path: the offending file or folder.
        message: what is wrong with it and what to do about it.
    """

    def __init__(self, path: Path | str, message: str) -> None:
        self.path = Path(path)
        self.message = message
        super().__init__(f"Cannot use model '{self.path.name}': {message} [{self.path}]")

    def __reduce__(self):  # keep picklable (e.g. across worker processes)
        return (type(self), (self.path, self.message))
