"""Prompt styles kept in ``styles.csv`` (A1111 format: ``name,prompt,negative_prompt``).

A style's text is merged into a prompt: ``{prompt}`` in the style is replaced by the prompt;
without the placeholder the style is appended after a comma. The file is written atomically.
"""

from __future__ import annotations

import csv
import io
import logging
import threading
from dataclasses import dataclass
from pathlib import Path

from webui.errors import UnknownChoice
from webui.fileio import atomic_write_text

log = logging.getLogger(__name__)
FIELDS = ("name", "prompt", "negative_prompt")


@dataclass(frozen=True)
class Style:
    name: str
    prompt: str = ""
    negative_prompt: str = ""


def merge_style_text(style_text: str, prompt: str) -> str:
    """Apply one style's text to a prompt (A1111 rules)."""
    if "{prompt}" in style_text:
        return style_text.replace("{prompt}", prompt)
    return ", ".join(p for p in (prompt.strip(), style_text.strip()) if p)


class StyleStore:
    """Loads, applies and saves styles; safe to share between requests."""

    def __init__(self, path: Path):
        self.path = path
        self._lock = threading.Lock()
        self._styles: dict[str, Style] = {}
        self.reload()

    def reload(self) -> None:
        styles: dict[str, Style] = {}
        if self.path.exists():
            try:
                with open(self.path, encoding="utf-8-sig", newline="") as fh:
                    for row in csv.DictReader(fh, skipinitialspace=True):
                        name = (row.get("name") or "").strip()
                        if name:
                            styles[name] = Style(name, row.get("prompt") or "", row.get("negative_prompt") or "")
            except (OSError, csv.Error, UnicodeDecodeError) as exc:
                log.warning("Could not read styles from %s: %s", self.path, exc)
        with self._lock:
            self._styles = styles

    def all(self) -> list[Style]:
        with self._lock:
            return list(self._styles.values())

    def names(self) -> list[str]:
        return [s.name for s in self.all()]

    def get(self, name: str) -> Style | None:
        with self._lock:
            return self._styles.get(name)

    def apply(self, prompt: str, negative: str, names: list[str]) -> tuple[str, str]:
        """Apply the named styles in order; an unknown name raises :class:`~webui.errors.UnknownChoice`
        (field ``styles``, a KeyError) listing the valid ones."""
        for name in names:
            style = self.get(name)
            if style is None:
                raise UnknownChoice("styles", "style", name, self.names())
            prompt = merge_style_text(style.prompt, prompt)
            negative = merge_style_text(style.negative_prompt, negative)
        return prompt, negative

    def save(self, style: Style) -> None:
        """Add or replace a style and write the file atomically (a failed write, :class:`StorageError`,
        changes neither the file nor the styles in memory)."""
        with self._lock:
            styles = {**self._styles, style.name: style}
            self._write(styles)
            self._styles = styles

    def delete(self, name: str) -> None:
        with self._lock:
            if name in self._styles:
                styles = {k: v for k, v in self._styles.items() if k != name}
                self._write(styles)
                self._styles = styles

    def _write(self, styles: dict[str, Style]) -> None:
        buf = io.StringIO()
        writer = csv.DictWriter(buf, fieldnames=FIELDS, lineterminator="\n")
        writer.writeheader()
        for s in styles.values():
            writer.writerow({"name": s.name, "prompt": s.prompt, "negative_prompt": s.negative_prompt})
        atomic_write_text(self.path, buf.getvalue())
