"""Helpers the built-in scripts share: putting the results of their generations together into one
:class:`GenerationResult`, and A1111's closest-checkpoint matching.

Every per-image list (seeds, infotexts, prompts ...) and A1111's ``info`` lists line up with
``images``; grids come first and carry the infotext of their first cell plus the script's keys.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from typing import Any

from PIL import Image

from webui.infotext import PARAM_PATTERN, quote
from webui.pipeline.result import GenerationResult


def add_params(infotext: str, params: Mapping[str, Any]) -> str:
    """``infotext`` with ``params`` appended to its parameter line (None values left out)."""
    extra = ", ".join(f"{k}: {quote(v)}" for k, v in params.items() if v is not None)
    if not extra:
        return infotext
    if not infotext:
        return extra
    last = infotext.rsplit("\n", 1)[-1]
    has_params = last.startswith("Steps: ") or len(PARAM_PATTERN.findall(last)) >= 3
    return f"{infotext}, {extra}" if has_params else f"{infotext}\n{extra}"


def _aligned(values: Sequence[Any], n: int, fill: Any) -> list[Any]:
    out = list(values[:n])
    return out + [out[-1] if out else fill] * (n - len(out))


def combined_info(grids: Sequence[Image.Image], grid_infotexts: Sequence[str], done: Sequence[GenerationResult],
                  lone: Sequence[GenerationResult], first: GenerationResult, interrupted: bool,
                  paths: Sequence[str]) -> GenerationResult:
    """One result: ``grids`` (with ``grid_infotexts``) then every image of the ``lone`` results.

    The grids take the first result's seed, subseed and prompts. ``info`` is the first result's A1111
    ``info`` with its lists replaced by the aligned ones and ``index_of_first_image`` the number of grids.
    """
    out = GenerationResult(interrupted=interrupted, paths=list(paths))

    def first_of(values: Sequence[Any], fill: Any) -> Any:
        return values[0] if values else fill

    for grid, text in zip(grids, grid_infotexts):
        out.images.append(grid)
        out.infotexts.append(text)
        out.seeds.append(first_of(first.seeds, -1))
        out.subseeds.append(first_of(first.subseeds, -1))
        out.prompts.append(first_of(first.prompts, first.info.get("prompt", "")))
        out.negative_prompts.append(first_of(first.negative_prompts, first.info.get("negative_prompt", "")))
    for res in lone:
        n = len(res.images)
        out.images += res.images
        out.infotexts += _aligned(res.infotexts, n, "")
        out.seeds += _aligned(res.seeds, n, -1)
        out.subseeds += _aligned(res.subseeds, n, -1)
        out.prompts += _aligned(res.prompts, n, res.info.get("prompt", ""))
        out.negative_prompts += _aligned(res.negative_prompts, n, res.info.get("negative_prompt", ""))
    for res in done:
        out.warnings += [w for w in res.warnings if w not in out.warnings]
    out.info = {**first.info, "all_prompts": list(out.prompts), "all_negative_prompts": list(out.negative_prompts),
                "all_seeds": list(out.seeds), "all_subseeds": list(out.subseeds), "infotexts": list(out.infotexts),
                "index_of_first_image": len(grids), "interrupted": interrupted, "warnings": list(out.warnings),
                "comments": "\n".join(out.warnings)}
    return out


def closest_checkpoint(titles: Sequence[str], name: Any) -> str | None:
    """A1111's closest match among checkpoint ``titles``: the title, the file name without the hash or its
    extension (any case), else the shortest title containing ``name``; None when nothing matches."""
    low = str(name).strip().lower()
    if not low:
        return None
    for title in titles:
        base = title.split(" [", 1)[0]
        if low in {title.lower(), base.lower(), os.path.splitext(base)[0].lower(), os.path.basename(base).lower()}:
            return title
    found = sorted((t for t in titles if low in t.lower()), key=len)
    return found[0] if found else None
