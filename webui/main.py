"""Start the server from command-line arguments."""

from __future__ import annotations

import contextlib
import logging
import os
import signal
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
    """Load the first checkpoint (in a thread while the server starts) and say when it is ready; the shapes
    model's how-to-add note is logged only when the shapes model really is what loaded."""
    from webui.errors import ModelError

    start = time.perf_counter()
    try:
        model = ctx.load_initial_model()
    except (ModelError, KeyError, RuntimeError) as exc:
        log.error("No model loaded: %s. Choose another checkpoint in the UI or via /sdapi/v1/options.", exc)
        return
    if model.info.builtin:
        from webui.models.default import HOW_TO_ADD

        log.warning(HOW_TO_ADD)
    log.info("Model ready: %s (%s) in %.1f s", model.title, model.spec.label, time.perf_counter() - start)


def security_warnings(settings) -> list[str]:
    """What to warn about at start: a network bind without any auth."""
    out = []
    if settings.listen and not settings.auth_enabled:
        out.append("Listening on all interfaces (--listen) without --gradio-auth/--api-auth: anyone on the "
                   "network can use the UI and the API. Add --gradio-auth user:password.")
    if settings.listen and settings.enable_insecure_extension_access:
        out.append("--enable-insecure-extension-access: extensions (code) can be installed from the network")
    return out


class GracefulServer:
    """uvicorn's server with this shutdown on SIGTERM / SIGINT: stop accepting connections at once, let
    running jobs finish for ``grace`` seconds, then interrupt them (each stops within one sampling step and
    its request answers with what is done), and return so that the process exits with status 0. A second
    Ctrl+C quits at once."""

    def __init__(self, app, host: str, port: int, jobs, grace: float, on_listening=None, **config):
        import uvicorn

        self.jobs, self.grace = jobs, grace
        outer = self

        class _Server(uvicorn.Server):
            async def startup(self, sockets=None) -> None:
                await super().startup(sockets)
                if self.started and on_listening is not None:
                    on_listening()

            async def shutdown(self, sockets=None) -> None:
                # uvicorn stops listening first, then waits for the open connections; say when the port is
                # closed (closing it here too is harmless: uvicorn's close of a closed server does nothing)
                for server in self.servers:
                    server.close()
                logging.getLogger("webui").info("Shutting down: the port is closed; %d connection(s) still open",
                                                len(self.server_state.connections))
                await super().shutdown(sockets)

            @contextlib.contextmanager
            def capture_signals(self):  # uvicorn re-raises the signal afterwards (exit status -15); not here
                if threading.current_thread() is not threading.main_thread():
                    yield
                    return
                previous = {sig: signal.signal(sig, outer.on_signal) for sig in (signal.SIGINT, signal.SIGTERM)}
                try:
                    yield
                finally:
                    for sig, handler in previous.items():
                        signal.signal(sig, handler)

        # connections get grace + a few seconds: interrupted jobs still answer
        config.setdefault("timeout_graceful_shutdown", int(grace) + 5)
        self.server = _Server(uvicorn.Config(app, host=host, port=port, **config))
        self._timer: threading.Timer | None = None

    def on_signal(self, sig: int, frame=None) -> None:
        if self.server.should_exit:
            if sig == signal.SIGINT:
                self.server.force_exit = True
            return
        logging.getLogger("webui").info("Shutting down: no new requests; running jobs get %.0f s to finish",
                                        self.grace)
        self.server.should_exit = True
        self._timer = threading.Timer(self.grace, self.interrupt_jobs)
        self._timer.daemon = True
        self._timer.start()

    def interrupt_jobs(self) -> None:
        n = self.jobs.interrupt()
        if n:
            logging.getLogger("webui").info("Shutting down: interrupted %d running job(s)", n)

    def run(self) -> None:
        try:
            self.server.run()
        finally:
            if self._timer is not None:
                self._timer.cancel()
            self.interrupt_jobs()


def main(argv: Sequence[str] | None = None) -> None:
    configure_environment()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    log = logging.getLogger("webui")
    start = time.perf_counter()

    from webui.settings import parse_args

    # before the heavy imports: a mistyped flag is refused at once (exit status 2)
    settings = parse_args(sys.argv[1:] if argv is None else argv)
    for note in settings.flag_notes:
        log.info(note)

    from webui.context import build_context
    from webui.server import create_app

    ctx = build_context(settings)
    if settings.workers or settings.ray_address:  # generations run on Ray workers (they load the checkpoints)
        from webui.workers.ray_executor import start_workers

        try:
            start_workers(ctx)
        except (RuntimeError, ConnectionError, ValueError) as exc:
            log.error("Generation workers not started: %s", exc)
            raise SystemExit(2) from None
    else:
        # The model loads in the background while the server starts; generations wait for it (--model-wait).
        threading.Thread(target=_load_first_model, args=(ctx, log), name="model-loader", daemon=True).start()
    app = create_app(ctx)
    url = f"http://{settings.host}:{settings.port}"
    log.info("Device: %s", ctx.device.description)
    for warning in security_warnings(settings):
        log.warning(warning)
    for report in ctx.plugins.reports:
        if not report.ok:
            log.warning("Plugin %s (%s) not loaded: %s", report.name, report.source, report.error)

    def listening() -> None:  # uvicorn has bound the port: the URL works now (the model may still be loading)
        loading = "" if ctx.models.current is not None or ctx.executor else " (the model is still loading)"
        log.info("Listening after %.1f s. Open %s%s%s", time.perf_counter() - start, url,
                 "/docs" if settings.nowebui else "/", loading)
        print(f"Running on local URL:  {url}", flush=True)

    try:
        GracefulServer(app, settings.host, settings.port, ctx.jobs, settings.shutdown_grace,
                       on_listening=listening, log_level="warning").run()
    finally:
        if ctx.executor is not None:
            ctx.executor.close()
    log.info("Stopped")
