"""File and folder names of saved images, from A1111's patterns (``samples_filename_pattern``,
``directories_filename_pattern``), the way A1111 1.10 builds them (``modules/images.py``:
``FilenameGenerator``, ``sanitize_filename_part``, ``get_next_sequence_number``).

A pattern is text with ``[token]`` or ``[token<arg>...]`` parts. Known tokens are replaced by their value,
which is made safe for a file name first (:func:`sanitize_filename_part`); an unknown token, or one without
a value here, stays as ``[token]`` (its ``<args>`` dropped). A few tokens stand for "nothing" in some cases
(``[batch_number]`` of a batch of one, ...) and then take the text just before them away too.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import logging
import os
import re
import string
import time
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from PIL import Image

log = logging.getLogger(__name__)

#: characters A1111 replaces by "_" in a value put into a name (its default, Windows-safe set)
INVALID_FILENAME_CHARS = '#<>:"/\\|?*\n\r\t'
#: A1111 ``--filenames-max-length`` default: a value is cut to this many characters
MAX_FILENAME_PART_LENGTH = 128
#: ``[datetime]`` without a format
DEFAULT_TIME_FORMAT = "%Y%m%d%H%M%S"

_INVALID_TABLE = {ord(c): "_" for c in INVALID_FILENAME_CHARS}
_PART = re.compile(r"(.*?)(?:\[([^\[\]]+)\]|$)")  # text, then a [token] (or the end)
_TRAILING_ARG = re.compile(r"(.*)<([^>]*)>$")  # token<arg> -> token, arg
_NON_LETTERS = re.compile(r"[\s" + re.escape(string.punctuation) + r"]+")


class _Skip:
    """A token's value that means: nothing, and drop the text written just before the token."""


SKIP = _Skip()


class _NoGeneration(LookupError):
    """A token needs generation parameters and there are none: it stays as written (A1111 ``p=None``)."""


def sanitize_filename_part(text: str | None, replace_spaces: bool = True) -> str | None:
    """A value made safe for a file name: spaces to "_" (when asked), the characters of
    :data:`INVALID_FILENAME_CHARS` to "_", leading spaces off, at most 128 characters, trailing
    spaces and dots off. ``None`` stays ``None``."""
    if text is None:
        return None
    if replace_spaces:
        text = text.replace(" ", "_")
    text = text.translate(_INVALID_TABLE).lstrip(" ")[:MAX_FILENAME_PART_LENGTH]
    return text.rstrip(" .")


@dataclass(frozen=True)
class ImageFields:
    """What a pattern can say about one generated image: the generation's settings (A1111's ``p``).

    ``prompt`` is this image's prompt as generated (styles applied, ``<lora:...>`` tags taken out);
    ``request_prompt`` / ``negative_prompt`` are the request's own, before styles (A1111's ``p.prompt``,
    ``p.negative_prompt``). ``index`` is the image's place in the job: ``iteration * batch_size +
    batch_index``. ``job_timestamp`` is ``YYYYmmddHHMMSS`` of the job's start."""

    seed: int | None = None
    prompt: str | None = None
    request_prompt: str = ""
    negative_prompt: str = ""
    steps: int | None = None
    cfg_scale: float | None = None
    sampler: str = ""
    scheduler: str = "Automatic"
    default_scheduler: str | None = None  # what "Automatic" means for this sampler (e.g. "karras")
    styles: tuple[str, ...] = ()
    style_prompts: tuple[str, ...] = ()  # the styles' prompts, for [prompt_no_styles]
    model_name: str = ""
    model_hash: str = ""
    vae_file: str | None = None  # file name of the VAE in use (None: the checkpoint's own)
    batch_size: int = 1
    n_iter: int = 1
    index: int = 0
    all_seeds: tuple[int, ...] = ()
    job_timestamp: str = ""
    denoising_strength: float | None = None
    user: str | None = None
    mode: str = "txt2img"

    @property
    def batch_index(self) -> int:
        return self.index % max(self.batch_size, 1)

    @property
    def iteration(self) -> int:
        return self.index // max(self.batch_size, 1)


def timestamp_of(monotonic_time: float | None) -> str:
    """``YYYYmmddHHMMSS`` (local time) of a ``time.monotonic()`` instant (now when None)."""
    wall = time.time() - (time.monotonic() - monotonic_time) if monotonic_time is not None else time.time()
    return _dt.datetime.fromtimestamp(wall).strftime(DEFAULT_TIME_FORMAT)


def _time_zone(name: str) -> _dt.tzinfo | None:
    """The named IANA zone (any letter case), or None (local time) for an unknown name."""
    from zoneinfo import ZoneInfo, available_timezones

    try:
        return ZoneInfo(name)
    except (ValueError, OSError, KeyError):
        pass
    try:
        match = next((z for z in available_timezones() if z.lower() == name.lower()), None)
        return ZoneInfo(match) if match else None
    except (ValueError, OSError, KeyError):
        return None


def _scheduler_label(fields: ImageFields) -> str:
    """A1111 ``get_scheduler_str``: "Automatic" is the sampler's own default when it has one; the result
    is ``str.capitalize()``-d ("Karras", "Align your steps")."""
    name = fields.scheduler
    if name == "Automatic":
        name = fields.default_scheduler or "Automatic"
    return name.capitalize()


class FilenameGenerator:
    """Replaces the tokens of a pattern for one image (A1111 ``FilenameGenerator``).

    ``fields`` None means "no generation" (A1111 ``p=None``, e.g. Extras): tokens that need one stay as
    they are written."""

    def __init__(self, image: Image.Image, opts: Mapping[str, Any], fields: ImageFields | None = None, *,
                 seed: int | None = None, prompt: str | None = None, basename: str = "",
                 now: _dt.datetime | None = None, for_zip: bool = False):
        self.image = image
        self.opts = opts
        self.p = fields
        self.seed = seed
        self.prompt = prompt
        self.basename = basename
        self.now = now if now is not None else _dt.datetime.now()
        self.for_zip = for_zip

    # ---------------------------------------------------------------- values of the tokens
    def _need_p(self) -> ImageFields:
        if self.p is None:
            raise _NoGeneration
        return self.p

    def _seed_first(self) -> Any:
        p = self._need_p()
        return self.seed if p.batch_size == 1 else p.all_seeds[0]

    def _seed_last(self) -> Any:
        p = self._need_p()
        return SKIP if p.batch_size == 1 else p.all_seeds[-1]

    def _styles(self) -> str:
        names = [s for s in self._need_p().styles if s != "None"]
        return sanitize_filename_part(", ".join(names) or "None", replace_spaces=False) or ""

    def _sampler_scheduler(self, with_sampler: bool) -> str | None:
        p = self._need_p()
        text = f"{p.sampler} {_scheduler_label(p)}" if with_sampler else _scheduler_label(p)
        return sanitize_filename_part(text, replace_spaces=False)

    def _datetime(self, *args: str) -> str | None:
        fmt = args[0] if args and args[0] != "" else DEFAULT_TIME_FORMAT
        zone = _time_zone(args[1]) if len(args) > 1 else None
        moment = self.now.astimezone(zone)
        try:
            text = moment.strftime(fmt)
        except (ValueError, TypeError):
            text = moment.strftime(DEFAULT_TIME_FORMAT)
        return sanitize_filename_part(text, replace_spaces=False)

    @staticmethod
    def _hash(text: str, *args: str) -> str:
        length = int(args[0]) if args and args[0] != "" else 8
        return hashlib.sha256(text.encode()).hexdigest()[:length]

    def _image_hash(self, *args: str) -> str:
        length = int(args[0]) if args and args[0] != "" else None
        return hashlib.sha256(self.image.tobytes()).hexdigest()[:length]

    def _prompt_no_styles(self) -> str | None:
        if self.p is None or self.prompt is None:
            return None
        text = self.prompt
        for style in self.p.style_prompts:
            if not style:
                continue
            for part in style.split("{prompt}"):
                text = text.replace(part, "").replace(", ,", ",").strip().strip(",")
            text = text.replace(style, "").strip().strip(",").strip()
        return sanitize_filename_part(text, replace_spaces=False)

    def _prompt_words(self) -> str | None:
        words = [w for w in _NON_LETTERS.split(self.prompt or "") if w] or ["empty"]
        limit = int(self.opts.get("directories_max_prompt_words", 8))
        return sanitize_filename_part(" ".join(words[:limit]), replace_spaces=False)

    def _hasprompt(self, *args: str) -> str | None:
        lower = self.prompt.lower()  # type: ignore[union-attr]  # no prompt: the token stays (A1111)
        if self.p is None:
            return None
        out = ""
        for arg in args:
            if arg == "":
                continue
            parts = arg.split("|")
            wanted, default = parts[0], (parts[1] if len(parts) > 1 else "")
            if wanted.lower() in lower:
                out += wanted.lower()
            else:
                out += default
        return sanitize_filename_part(out)

    def _batch_number(self) -> Any:
        p = self._need_p()
        return SKIP if p.batch_size == 1 or self.for_zip else p.batch_index + 1

    def _generation_number(self) -> Any:
        p = self._need_p()
        if (p.n_iter == 1 and p.batch_size == 1) or self.for_zip:
            return SKIP
        return p.iteration * p.batch_size + p.batch_index + 1

    def _denoising(self) -> Any:
        p = self._need_p()
        return p.denoising_strength if p.denoising_strength else SKIP

    def _vae_filename(self) -> str:
        vae = self._need_p().vae_file
        if not vae:
            return "NoneType"
        parts = os.path.basename(vae).split(".")
        return parts[1] if len(parts) > 1 and parts[0] == "" else parts[0]

    def _tokens(self) -> Mapping[str, Callable[..., Any]]:
        p = self._need_p
        return {
            "basename": lambda: self.basename or "img",
            "seed": lambda: self.seed if self.seed is not None else "",
            "seed_first": self._seed_first,
            "seed_last": self._seed_last,
            "steps": lambda: p().steps,
            "cfg": lambda: p().cfg_scale,
            "width": lambda: self.image.width,
            "height": lambda: self.image.height,
            "styles": self._styles,
            "sampler": lambda: sanitize_filename_part(p().sampler, replace_spaces=False),
            "sampler_scheduler": lambda: self._sampler_scheduler(True),
            "scheduler": lambda: self._sampler_scheduler(False),
            "model_hash": lambda: p().model_hash,
            "model_name": lambda: sanitize_filename_part(p().model_name, replace_spaces=False),
            "date": lambda: self.now.strftime("%Y-%m-%d"),
            "datetime": self._datetime,
            "job_timestamp": lambda: p().job_timestamp,
            "prompt_hash": lambda *a: self._hash(self.prompt, *a),  # type: ignore[arg-type]
            "negative_prompt_hash": lambda *a: self._hash(p().negative_prompt, *a),
            "full_prompt_hash": lambda *a: self._hash(f"{p().request_prompt} {p().negative_prompt}", *a),
            "prompt": lambda: sanitize_filename_part(self.prompt),
            "prompt_no_styles": self._prompt_no_styles,
            "prompt_spaces": lambda: sanitize_filename_part(self.prompt, replace_spaces=False),
            "prompt_words": self._prompt_words,
            "batch_number": self._batch_number,
            "batch_size": lambda: p().batch_size,
            "generation_number": self._generation_number,
            "hasprompt": self._hasprompt,
            "clip_skip": lambda: self.opts["CLIP_stop_at_last_layers"],
            "denoising": self._denoising,
            "user": lambda: p().user,
            "vae_filename": self._vae_filename,
            "none": lambda: "",
            "image_hash": self._image_hash,
        }

    # ---------------------------------------------------------------- the pattern
    def apply(self, pattern: str) -> str:
        """``pattern`` with its tokens replaced."""
        tokens = self._tokens()
        out: list[str] = []
        for match in _PART.finditer(pattern):
            text, token = match.groups()
            if token is None:
                out.append(text)
                continue
            args: list[str] = []
            while (arg := _TRAILING_ARG.match(token)) is not None:
                token, value = arg.groups()
                args.insert(0, value)
            fn = tokens.get(token.lower())
            value: Any = None
            if fn is not None:
                try:
                    value = fn(*args)
                except _NoGeneration:
                    value = None
                except Exception as exc:  # a bad argument ([image_hash<x>]) keeps the token, as in A1111
                    log.warning("Could not put [%s] into the file name: %s", token, exc)
                    value = None
            if value is SKIP:
                continue
            out.append(text + (str(value) if value is not None else f"[{token}]"))
        return "".join(out)


def request_fields(req: Any, **values: Any) -> ImageFields:
    """:class:`ImageFields` of a generation request (a ``GenerationRequest``: prompt, steps, sampler ...),
    the keyword ``values`` (seed, index, model name ...) taking precedence."""
    from webui.prompts.parser import parse_extra_networks

    fields: dict[str, Any] = {
        "prompt": parse_extra_networks(req.prompt)[0], "request_prompt": req.prompt,
        "negative_prompt": req.negative_prompt, "steps": req.steps, "cfg_scale": req.cfg_scale,
        "sampler": req.sampler_name, "scheduler": req.scheduler or "Automatic", "styles": tuple(req.styles),
        "batch_size": req.batch_size, "n_iter": req.n_iter, "denoising_strength": req.denoising_strength,
        "mode": req.mode,
    }
    fields.update(values)
    return ImageFields(**fields)


def next_sequence_number(folder: Path, basename: str) -> int:
    """A1111 ``get_next_sequence_number``: one more than the largest number that starts an entry of
    ``folder`` (after ``<basename>-`` when there is a basename; up to the first "-" or the extension);
    0 for none. Every entry counts, whatever its extension (a ``2024-05-01`` subfolder counts as 2024)."""
    prefix = f"{basename}-" if basename else ""
    best = -1
    try:
        names = os.listdir(folder)
    except OSError:
        return 0
    for name in names:
        if not name.startswith(prefix):
            continue
        head = os.path.splitext(name[len(prefix):])[0].split("-")[0]
        try:
            best = max(best, int(head))
        except ValueError:
            pass
    return best + 1


__all__: Sequence[str] = ("ImageFields", "FilenameGenerator", "request_fields", "sanitize_filename_part", "next_sequence_number",
                          "timestamp_of", "SKIP", "INVALID_FILENAME_CHARS", "MAX_FILENAME_PART_LENGTH")
