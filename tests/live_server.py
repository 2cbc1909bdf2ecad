"""Run the real app (API + Gradio UI) with uvicorn in a background thread, on a free loopback port."""

from __future__ import annotations

import socket
import threading

import uvicorn

STARTUP_WAIT = 60.0  # seconds; a safety net only (startup sets an event, nothing polls)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class _Server(uvicorn.Server):
    """uvicorn's server, telling when it listens (or gave up starting)."""

    def __init__(self, config: uvicorn.Config):
        super().__init__(config)
        self.ready = threading.Event()

    async def startup(self, sockets=None) -> None:
        try:
            await super().startup(sockets)
        finally:
            self.ready.set()  # started, or failed (self.started stays False)


class LiveServer:
    def __init__(self, app):
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        config = uvicorn.Config(app, host="127.0.0.1", port=self.port, log_level="warning", ws="none",
                                timeout_graceful_shutdown=1)
        self.server = _Server(config)
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        try:
            self.server.run()
        finally:
            self.server.ready.set()  # it ended before it listened (e.g. the app's lifespan failed)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        if not self.server.ready.wait(STARTUP_WAIT) or not self.server.started:
            self.server.should_exit = True
            raise RuntimeError("server did not start")
        return self

    def __exit__(self, *exc) -> None:
        self.server.should_exit = True
        self.thread.join(10)
