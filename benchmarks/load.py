"""A bounded load test against a server on 127.0.0.1: 20 clients for 60 s on the tiny pipeline.

    .venv/bin/python benchmarks/load.py [--clients 20] [--seconds 60] [--steps 1] [--warmup 5]

The server runs in its own process (``--nowebui``, tiny SD 1.x checkpoint, queue big enough for every
client) so that its memory is measured alone; the clients are the asyncio loop of tests/load_client.py
(tiny txt2img jobs with a unique seed each, ``/progress``, ``/options`` and ``png-info`` in between; every
answer is checked, so lost or mixed-up answers count as errors). Prints JSON: requests, errors, lost
answers, latency percentiles and the server's RSS at the start (after the warm-up) and at the end.
The short version runs in the test suite (tests/test_reliability.py::test_load_20_clients_...).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, data_dir: str, queue: int) -> None:
    import logging

    import uvicorn

    from webui.context import build_context
    from webui.models.original_layout import save_single_file
    from webui.models.tiny import build_tiny_components
    from webui.server import create_app
    from webui.settings import Settings

    logging.disable(logging.WARNING)
    models = Path(data_dir) / "models"
    (models / "Stable-diffusion").mkdir(parents=True, exist_ok=True)
    save_single_file(build_tiny_components("sd1", seed=1), models / "Stable-diffusion" / "tiny-sd1.safetensors")
    settings = Settings(data_dir=Path(data_dir), models_dir=models, disable_extensions=True, use_cpu=True,
                        nowebui=True, max_queue_size=queue)
    app = create_app(build_context(settings, load_model=True))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def main() -> None:
    import psutil

    from tests.load_client import run_load_sync

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--clients", type=int, default=20)
    p.add_argument("--seconds", type=float, default=60)
    p.add_argument("--steps", type=int, default=1)
    p.add_argument("--warmup", type=float, default=5)
    args = p.parse_args()

    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory() as data:
        proc = mp.get_context("spawn").Process(target=_serve, args=(port, data, max(16, 2 * args.clients)),
                                               daemon=True)
        proc.start()
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            try:
                if httpx.get(url + "/sdapi/v1/progress", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                time.sleep(0.2)
        else:
            raise SystemExit("the server did not start")
        server = psutil.Process(proc.pid)
        try:
            warm = run_load_sync(url, args.clients, args.warmup, args.steps)
            rss_start = server.memory_info().rss
            report = run_load_sync(url, args.clients, args.seconds, args.steps)
            rss_end = server.memory_info().rss
        finally:
            proc.terminate()
            proc.join(30)
    print(json.dumps({
        "clients": args.clients, "seconds": args.seconds, "steps": args.steps, "warmup": warm.summary(),
        "load": report.summary(), "server_rss_start_mb": round(rss_start / 2**20, 1),
        "server_rss_end_mb": round(rss_end / 2**20, 1), "rss_growth_mb": round((rss_end - rss_start) / 2**20, 1),
        "first_errors": report.errors[:5],
    }, indent=2))


if __name__ == "__main__":
    main()
