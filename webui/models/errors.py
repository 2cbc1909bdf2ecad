"""The one exception type of the model-loading layer."""

from __future__ import annotations

from pathlib import Path


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
