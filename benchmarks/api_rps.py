"""Requests per second of the no-op API routes (``GET /sdapi/v1/progress``, ``GET /sdapi/v1/options``)
through a live uvicorn server on loopback, tiny model, nothing generating.

    .venv/bin/python benchmarks/api_rps.py [--seconds 2] [--clients 1,4] [--modes ui,nowebui] [--api-auth]

The server runs in its own process (so the client does not share its GIL); each client is a thread with
its own keep-alive ``httpx.Client`` sending requests back to back for ``--seconds``. Prints JSON with
req/s and latency percentiles per mode, route and client count.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import socket
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import httpx  # noqa: E402

ROUTES = ("/sdapi/v1/progress", "/sdapi/v1/options")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _serve(port: int, data_dir: str, nowebui: bool, api_auth: str | None) -> None:
    import logging

    import uvicorn

    from webui.context import build_context
    from webui.server import create_app
    from webui.settings import Settings

    logging.disable(logging.WARNING)
    settings = Settings(data_dir=Path(data_dir), disable_extensions=True, use_cpu=True, nowebui=nowebui,
                        api_auth=api_auth)
    app = create_app(build_context(settings, load_model=True))
    uvicorn.run(app, host="127.0.0.1", port=port, log_level="warning", access_log=False)


def _hammer(url: str, path: str, seconds: float, clients: int, auth) -> dict:
    latencies: list[list[float]] = [[] for _ in range(clients)]
    errors = [0] * clients
    start = threading.Barrier(clients + 1)

    def worker(i: int) -> None:
        with httpx.Client(base_url=url, timeout=30, auth=auth) as client:
            client.get(path)  # connect + warm-up
            start.wait()
            end = time.perf_counter() + seconds
            while (t0 := time.perf_counter()) < end:
                r = client.get(path)
                latencies[i].append(time.perf_counter() - t0)
                if r.status_code != 200:
                    errors[i] += 1

    threads = [threading.Thread(target=worker, args=(i,)) for i in range(clients)]
    for t in threads:
        t.start()
    start.wait()
    t_start = time.perf_counter()
    for t in threads:
        t.join()
    elapsed = time.perf_counter() - t_start
    flat = sorted(x for lat in latencies for x in lat)
    return {"route": path, "clients": clients, "requests": len(flat), "errors": sum(errors),
            "req_per_s": round(len(flat) / elapsed, 1),
            "latency_ms": {"median": round(1000 * statistics.median(flat), 2),
                           "p99": round(1000 * flat[int(0.99 * (len(flat) - 1))], 2)}}


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--seconds", type=float, default=2.0)
    ap.add_argument("--clients", default="1,4")
    ap.add_argument("--modes", default="ui,nowebui")
    ap.add_argument("--api-auth", action="store_true", help="run with --api-auth bench:bench")
    args = ap.parse_args()

    from webui.models.original_layout import save_single_file
    from webui.models.tiny import build_tiny_components

    tmp = Path(tempfile.mkdtemp())
    (tmp / "models" / "Stable-diffusion").mkdir(parents=True)
    save_single_file(build_tiny_components("sd1", seed=1), tmp / "models" / "Stable-diffusion" / "tiny.safetensors")
    auth = ("bench", "bench") if args.api_auth else None
    results = {"seconds": args.seconds, "cpu_count": os.cpu_count(), "api_auth": args.api_auth, "runs": []}
    spawn = mp.get_context("spawn")
    for mode in args.modes.split(","):
        port = _free_port()
        proc = spawn.Process(target=_serve, args=(port, str(tmp), mode == "nowebui",
                                                  "bench:bench" if auth else None), daemon=True)
        proc.start()
        url = f"http://127.0.0.1:{port}"
        try:
            deadline = time.monotonic() + 120
            while True:
                try:
                    if httpx.get(url + ROUTES[0], auth=auth, timeout=2).status_code == 200:
                        break
                except httpx.HTTPError:
                    pass
                if time.monotonic() > deadline or not proc.is_alive():
                    raise RuntimeError(f"server ({mode}) did not start")
                time.sleep(0.2)
            for clients in (int(c) for c in args.clients.split(",")):
                for path in ROUTES:
                    results["runs"].append({"mode": mode, **_hammer(url, path, args.seconds, clients, auth)})
        finally:
            proc.terminate()
            proc.join(10)
    print(json.dumps(results, indent=2))


if __name__ == "__main__":
    main()
