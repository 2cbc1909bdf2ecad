"""Start the server from command-line arguments."""

from __future__ import annotations

import logging
import os
import sys
import threading
import time
from collections.abc import Sequence


def configure_environment() -> None:
    """Keep every library offline: no analytics, no hub lookups (set before importing them)."""
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DISABLE_TELEMETRY", "1")
    os.environ.setdefault("DO_NOT_TRACK", "1")


def _load_first_model(ctx, log: logging.Logger) -> None:
    from webui.models.errors import ModelError

    try:
        model = ctx.load_initial_model()
        log.info("Model: %s (%s), loaded in %.1f s", model.title, model.spec.label, model.load_seconds)
    except (ModelError, KeyError, RuntimeError) as exc:
        log.error("No model loaded: %s. Choose another checkpoint in the UI or via /sdapi/v1/options.", exc)


def main(argv: Sequence[str] | None = None) -> None:
    configure_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("webui")
    start = time.perf_counter()

    import uvicorn

    from webui.context import build_context
    from webui.server import create_app
    from webui.settings import parse_args

    settings = parse_args(sys.argv[1:] if argv is None else argv)
    ctx = build_context(settings)
    if ctx.models.using_builtin_default:
        from webui.models.default import HOW_TO_ADD

        log.warning(HOW_TO_ADD)
    # The model loads in the background while the server starts; requests wait for it.
    threading.Thread(target=_load_first_model, args=(ctx, log), name="model-loader", daemon=True).start()
    app = create_app(ctx)
    url = f"http://{settings.host}:{settings.port}"
    log.info("Device: %s", ctx.device.description)
    if settings.listen and not (settings.gradio_auth or settings.api_auth):
        log.warning("Listening on all interfaces without --gradio-auth/--api-auth: anyone on the network can use it")
    for report in ctx.plugins.reports:
        if not report.ok:
            log.warning("Plugin %s (%s) not loaded: %s", report.name, report.source, report.error)
    log.info("Ready in %.1f s. Open %s%s", time.perf_counter() - start, url, "/docs" if settings.nowebui else "/")
    print(f"Running on local URL:  {url}", flush=True)
    uvicorn.run(app, host=settings.host, port=settings.port, log_level="warning", timeout_graceful_shutdown=10)
