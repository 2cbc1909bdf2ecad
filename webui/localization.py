"""Localizations: A1111-format JSON files that map an English UI string to its translation.

A localization is a JSON object ``{"Generate": "生成", "Sampling method": "采样方法", ...}``; the file's stem
is its name (``zh_CN``). Files are found, in this order:

1. ``localizations/*.json`` under the webui root (the shipped ones, e.g. ``zh_CN``);
2. ``--localizations-dir DIR``;
3. ``localizations/*.json`` of every loaded extension folder, so A1111's translation extensions (folders
   holding nothing but ``localizations/``) install as extensions and work unchanged.

Files with the same name are combined: where they disagree, the later one in that order wins (an
extension's ``zh_CN.json`` overrides the shipped strings it also translates and adds its own). A file
that is not a JSON object is reported (logged once per version of the file, listed in Settings) and
skipped; entries whose value is not a string are ignored.

The option ``localization`` (A1111's key; ``"None"``: English) chooses one. The page applies it at its
next load (``webui/ui/static/page.js`` translates the text a person reads, see ``webui/ui/page.py``).
``--localization NAME`` sets the option at start.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import MappingProxyType
from typing import Any

from webui.errors import UnknownChoice
from webui.settings import REPO_ROOT, OptionsStore, Settings

log = logging.getLogger(__name__)

#: the option value meaning "no localization" (English), as in A1111
NONE = "None"
#: where the shipped localizations live
SHIPPED_DIR = REPO_ROOT / "localizations"


class LocalizationError(ValueError):
    """A localization that cannot be used (unknown name, or a file that is not a JSON object)."""


@dataclass(frozen=True)
class Problem:
    """A localization file that was skipped, and why."""

    path: Path
    reason: str  # e.g. "is not valid JSON (line 1, column 2: ...)"

    def __str__(self) -> str:
        return f"{self.path} {self.reason}"


@dataclass(frozen=True)
class Listing:
    """The localizations found: name -> its files (lowest priority first), and the files skipped."""

    files: Mapping[str, tuple[Path, ...]]
    problems: tuple[Problem, ...] = ()

    @property
    def names(self) -> list[str]:
        return sorted(self.files, key=str.casefold)


def localization_folders(settings: Settings, extension_folders: Iterable[str | Path]) -> list[Path]:
    """Where localization files are looked for, lowest priority first (see the module docstring)."""
    folders = [SHIPPED_DIR]
    if settings.localizations_dir is not None:
        folders.append(Path(settings.localizations_dir))
    folders += [Path(folder) / "localizations" for folder in extension_folders]
    return folders


def read_localization(path: Path) -> dict[str, str]:
    """The strings of one file; LocalizationError says what is wrong with it. Values that are not strings
    are left out (A1111's files are plain ``{"English": "translation"}`` objects)."""
    try:
        data = json.loads(path.read_text(encoding="utf-8-sig"))
    except OSError as exc:
        raise LocalizationError(f"cannot be read ({exc.strerror or exc})") from None
    except UnicodeDecodeError:
        raise LocalizationError("is not UTF-8 text") from None
    except json.JSONDecodeError as exc:
        raise LocalizationError(f"is not valid JSON (line {exc.lineno}, column {exc.colno}: {exc.msg})") from None
    if not isinstance(data, dict):
        raise LocalizationError(f"holds a JSON {type(data).__name__}, not an object of strings")
    return {k: v for k, v in data.items() if isinstance(k, str) and isinstance(v, str)}


@dataclass
class Localizations:
    """Finds and reads the localization files of ``folders()`` (called at each listing, so files dropped in
    later are found by the next refresh). Reads are cached per file by modification time and size; a file
    that fails is logged once per version."""

    folders: Callable[[], Sequence[Path]]
    _cache: dict[Path, tuple[tuple[int, int], dict[str, str] | LocalizationError]] = field(
        default_factory=dict, repr=False)
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False)

    def _read(self, path: Path) -> dict[str, str]:
        try:
            stat = path.stat()
            stamp = (stat.st_mtime_ns, stat.st_size)
        except OSError as exc:
            raise LocalizationError(f"cannot be read ({exc.strerror or exc})") from None
        with self._lock:
            cached = self._cache.get(path)
        if cached is None or cached[0] != stamp:
            try:
                result: dict[str, str] | LocalizationError = read_localization(path)
            except LocalizationError as exc:
                result = exc
                log.warning("Localization file %s skipped: it %s", path, exc)
            with self._lock:
                self._cache[path] = (stamp, result)
        else:
            result = cached[1]
        if isinstance(result, LocalizationError):
            raise result
        return result

    def listing(self) -> Listing:
        """Every usable localization by name, and the files skipped."""
        files: dict[str, list[Path]] = {}
        problems: list[Problem] = []
        for folder in self.folders():
            try:
                found = sorted(p for p in Path(folder).glob("*.json") if p.is_file())
            except OSError:
                continue
            for path in found:
                try:
                    self._read(path)
                except LocalizationError as exc:
                    problems.append(Problem(path, str(exc)))
                    continue
                files.setdefault(path.stem, []).append(path)
        return Listing(MappingProxyType({k: tuple(v) for k, v in files.items()}), tuple(problems))

    def names(self) -> list[str]:
        return self.listing().names

    def resolve(self, name: str) -> str | None:
        """The localization called ``name`` (letter case aside), or None."""
        names = self.names()
        if name in names:
            return name
        return next((n for n in names if n.casefold() == name.casefold()), None)

    def strings(self, name: str) -> dict[str, str]:
        """The combined strings of localization ``name`` ({} for ``"None"``); LocalizationError when no
        usable file has that name."""
        if not name or name == NONE:
            return {}
        listing = self.listing()
        paths = listing.files.get(name)
        if not paths:
            broken = "; ".join(str(p) for p in listing.problems if p.path.stem == name)
            raise LocalizationError(broken or f"there is no usable localization named {name!r} (found: "
                                    f"{', '.join(listing.names) or 'none'})")
        out: dict[str, str] = {}
        for path in paths:  # later files win
            try:
                out.update(self._read(path))
            except LocalizationError:  # changed since the listing: the others still apply
                continue
        return out


def attach_localization_option(options: OptionsStore, localizations: Localizations) -> None:
    """Make the option ``localization`` offer the names found (and refuse others, e.g. through
    ``/sdapi/v1/options``)."""
    d = options.defs.get("localization")
    if d is None:
        return

    def choices() -> list[Any]:
        return [NONE, *localizations.names()]

    def check(key: str, value: Any) -> None:
        if value != NONE and localizations.resolve(str(value)) != value:
            raise UnknownChoice(key, "localization", value, choices())

    options.defs[d.key] = dataclasses.replace(d, choices_fn=choices, check=check)


def apply_start_flags(settings: Settings, options: OptionsStore, localizations: Localizations) -> None:
    """``--localization NAME`` and ``--theme light|dark`` set their options at start (and so stay chosen, as
    ``--ckpt`` does for the checkpoint). An unknown localization is logged with the names found."""
    changes: dict[str, Any] = {}
    if settings.localization is not None:
        wanted = settings.localization.strip()
        name = NONE if wanted.casefold() == NONE.casefold() else localizations.resolve(wanted)
        if name is None:
            log.warning("--localization %s: no such localization (found: %s); the UI stays in %s", wanted,
                        ", ".join(localizations.names()) or "none", options.current.get("localization", NONE))
        else:
            changes["localization"] = name
    if settings.theme is not None:
        changes["theme_mode"] = settings.theme.capitalize()
    changes = {k: v for k, v in changes.items() if options.current.get(k) != v}
    if changes:
        options.update(changes)
