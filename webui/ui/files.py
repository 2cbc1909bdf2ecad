"""What the UI's file inputs may name: files the browser uploaded, and URLs only with ``--allow-image-urls``.

Gradio fetches a file input given as an ``http(s)`` URL on the server (with its own address checks and a
DNS-over-HTTPS fallback to dns.google). Here that is off unless ``--allow-image-urls`` is given, and then it
goes through :func:`webui.netfetch.fetch_url` (every resolved address must be public, redirects checked,
size capped), like the API's image fields. Local paths are left to Gradio's own check (only files in its
upload folder are accepted as inputs; see ``create_app``).
"""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import gradio as gr

from webui.netfetch import URLRefused, fetch_url, is_url
from webui.settings import Settings

#: components whose input payload names files
FILE_COMPONENTS = (gr.Image, gr.ImageEditor, gr.File, gr.Gallery, gr.UploadButton, gr.Video, gr.Audio, gr.Model3D)


def _upload_folder() -> Path:
    root = os.environ.get("GRADIO_TEMP_DIR") or str(Path(tempfile.gettempdir()) / "gradio")
    return Path(root).resolve()


def _fetch_to_upload_folder(url: str) -> str:
    try:
        data = fetch_url(url)
    except URLRefused as exc:
        raise gr.Error(f"The image URL was refused: {exc}") from None
    folder = _upload_folder() / ("url-" + hashlib.sha256(data).hexdigest()[:32])
    folder.mkdir(parents=True, exist_ok=True)
    name = "".join(c for c in Path(urlparse(url).path).name if c.isalnum() or c in "._-")[:100].lstrip(".")
    path = folder / (name or "image")
    path.write_bytes(data)
    return str(path)


def guard_file_inputs(demo: gr.Blocks, settings: Settings) -> None:
    """Wrap every component's resource-to-cache step (per instance; Gradio itself is not patched)."""
    allowed = settings.allow_image_urls
    for block in list(demo.blocks.values()):
        original_async = getattr(block, "async_move_resource_to_block_cache", None)
        original_sync = getattr(block, "move_resource_to_block_cache", None)
        if original_async is None or original_sync is None:
            continue

        def local_path(value: Any) -> Any:
            if isinstance(value, str) and is_url(value):
                if not allowed:
                    raise gr.Error("Image URLs are not fetched (the server was started without "
                                   "--allow-image-urls); upload the file instead")
                return _fetch_to_upload_folder(value)
            return value

        async def guarded_async(url_or_file_path, _original=original_async, _local=local_path):
            from anyio import to_thread

            value = url_or_file_path
            if isinstance(value, str) and is_url(value):
                value = await to_thread.run_sync(_local, value)
            return await _original(value)

        def guarded_sync(url_or_file_path, _original=original_sync, _local=local_path):
            return _original(_local(url_or_file_path))

        block.async_move_resource_to_block_cache = guarded_async
        block.move_resource_to_block_cache = guarded_sync
        preprocess = getattr(block, "preprocess", None)
        if preprocess is not None and isinstance(block, FILE_COMPONENTS):
            block.preprocess = _uploaded_files_only(preprocess, getattr(block, "GRADIO_CACHE", None))


def _file_paths(value: Any):
    """Every ``path`` of a FileData-shaped dict in a (dumped) payload."""
    if isinstance(value, dict):
        if isinstance(value.get("path"), str):
            yield value["path"]
        for item in value.values():
            yield from _file_paths(item)
    elif isinstance(value, (list, tuple)):
        for item in value:
            yield from _file_paths(item)


def _uploaded_files_only(preprocess, cache: str | None):
    """A component's ``preprocess`` that refuses a payload naming a file outside Gradio's upload folder.

    Gradio copies (and checks) the files of a payload only when they carry its ``meta`` marker; a bare
    ``{"path": "/some/file.png"}`` reaches ``preprocess`` as it is and would be opened, so every path is
    checked here: inputs can only be files the browser uploaded."""
    roots = [_upload_folder()] + ([Path(cache).resolve()] if cache else [])

    def guarded(payload: Any, *args: Any, **kwargs: Any) -> Any:
        if payload is not None:
            dumped = payload.model_dump() if hasattr(payload, "model_dump") else payload
            for path in _file_paths(dumped):
                resolved = Path(path).resolve()
                if not any(resolved == root or root in resolved.parents for root in roots):
                    raise gr.Error("A file input must be a file uploaded through the UI; server paths are refused")
        return preprocess(payload, *args, **kwargs)

    return guarded
