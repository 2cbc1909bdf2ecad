"""Throughput of the generation workers (``--workers``, issue 23) against the in-process executor.

    .venv/bin/python benchmarks/workers.py [--workers 1,2] [--clients 4] [--jobs 24] [--steps 8] [--size 64]
                                           [--gpu] [--ckpt FILE]

Each mode runs ``--jobs`` generations sent by ``--clients`` threads back to back through the server's queue
(``AppContext.generate``, as the API and the UI do; no HTTP): first in this process (the default executor), then
on 1, 2, ... Ray workers of one local runtime. Per mode it prints images/min, the queue wait (time a job waits
for its slot) p50/p95 and the job latency p50/p95; then the Ray path's overhead per job: one client, jobs in
process and on one worker alternating, the median worker latency minus the median in-process one at the same
torch thread count.

CPU (default): the tiny test model; every CPU worker gets cores / workers torch threads, the in-process runs all
the cores, so on a machine with few cores N workers split the same cores and the throughput cannot grow much.
``--gpu``: one worker per GPU (``--workers`` up to the GPU count) on ``--ckpt`` (or the tiny model): here the
throughput should grow nearly linearly with the workers. Prints JSON.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import statistics
import sys
import tempfile
import threading
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def _tiny_models(root: Path) -> Path:
    from webui.models.original_layout import save_single_file
    from webui.models.tiny import build_tiny_components

    (root / "Stable-diffusion").mkdir(parents=True)
    save_single_file(build_tiny_components("sd1", seed=1), root / "Stable-diffusion" / "tiny-sd1.safetensors")
    return root


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(q * len(ordered)))], 3) if ordered else 0.0


def _load(ctx, args, clients: int, jobs: int) -> dict:
    """``jobs`` generations from ``clients`` threads; throughput, queue wait and latency."""
    from webui.jobs import Job
    from webui.pipeline.request import GenerationRequest

    waits: list[float] = []
    latencies: list[float] = []
    errors: list[str] = []
    lock = threading.Lock()
    counter = iter(range(jobs))

    def client() -> None:
        while True:
            with lock:
                n = next(counter, None)
            if n is None:
                return
            job = Job()
            req = GenerationRequest(prompt=f"a lighthouse {n}", seed=n, steps=args.steps, width=args.size,
                                    height=args.size, sampler_name="Euler", save_images=False)
            try:
                ctx.generate(req, job)
            except Exception as exc:  # noqa: BLE001 - counted and reported
                with lock:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            with lock:
                waits.append(job.started - job.created)
                latencies.append(job.finished - job.created)

    start = time.perf_counter()
    threads = [threading.Thread(target=client) for _ in range(clients)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    wall = time.perf_counter() - start
    return {"images_per_min": round(len(latencies) / wall * 60, 1), "wall_s": round(wall, 2),
            "queue_wait_p50_s": _pct(waits, 0.5), "queue_wait_p95_s": _pct(waits, 0.95),
            "latency_p50_s": _pct(latencies, 0.5), "latency_p95_s": _pct(latencies, 0.95),
            "errors": len(errors), "first_error": errors[0] if errors else None}


def _interleaved_medians(local_ctx, worker_ctx, args, n: int) -> tuple[float, float]:
    """Median seconds of one job in process and on a worker, ``n`` of each, alternating (so that the load of
    the machine drifts the same for both)."""
    local: list[float] = []
    worker: list[float] = []
    for _ in range(n):
        for ctx, into in ((local_ctx, local), (worker_ctx, worker)):
            start = time.perf_counter()
            _load(ctx, args, 1, 1)
            into.append(time.perf_counter() - start)
    return statistics.median(local), statistics.median(worker)


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--workers", default="1,2", help="worker counts to measure, comma-separated")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--jobs", type=int, default=24)
    p.add_argument("--steps", type=int, default=8)
    p.add_argument("--size", type=int, default=64)
    p.add_argument("--threads", type=int, default=0,
                   help="torch threads in process and per CPU worker (default: all cores in process, cores / N per "
                        "worker)")
    p.add_argument("--overhead-jobs", type=int, default=20, help="sequential jobs of each for the per-job overhead")
    p.add_argument("--gpu", action="store_true", help="GPU workers (one per GPU) instead of CPU workers")
    p.add_argument("--ckpt", type=Path, default=None, help="checkpoint file (default: the tiny test model)")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    counts = [int(c) for c in args.workers.split(",") if c.strip()]

    import dataclasses

    import ray
    import torch

    from webui.context import build_context
    from webui.jobs import JobQueue
    from webui.settings import Settings
    from webui.workers.ray_executor import RayOptions, start_workers

    cores = os.cpu_count() or 1
    tmp = Path(tempfile.mkdtemp(prefix="bench-workers-"))
    models = _tiny_models(tmp / "models")
    settings = Settings(data_dir=tmp / "data", models_dir=models, disable_extensions=True, use_cpu=not args.gpu,
                        ckpt=args.ckpt)
    out: dict = {"cores": cores, "threads": args.threads or None, "device": "gpu" if args.gpu else "cpu",
                 "steps": args.steps, "size": args.size,
                 "clients": args.clients, "jobs": args.jobs, "modes": {}}

    ctx = build_context(settings, load_model=True)
    torch.set_num_threads(args.threads or cores)
    _load(ctx, args, 1, 2)  # warm-up
    out["modes"]["in-process"] = _load(ctx, args, args.clients, args.jobs)

    start = time.perf_counter()
    ray.init(address="local", num_cpus=cores if args.gpu else max(cores, max(counts)), include_dashboard=False,
             object_store_memory=256 * 1024 * 1024, log_to_driver=False, logging_level=logging.WARNING,
             job_config=ray.job_config.JobConfig(code_search_path=[str(Path(__file__).resolve().parent.parent)]),
             _system_config={"enable_worker_prestart": False, "prestart_worker_first_driver": False})
    out["ray_init_s"] = round(time.perf_counter() - start, 2)
    overhead: dict = {}
    for count in counts:
        threads = args.threads or max(1, cores // count)
        worker_ctx = dataclasses.replace(ctx, executor=None, jobs=JobQueue(1, 64))  # its own executor and queue
        start = time.perf_counter()
        executor = start_workers(worker_ctx, RayOptions(workers=count, cpu=not args.gpu, threads=threads,
                                                        init_timeout=600))
        up = round(time.perf_counter() - start, 2)
        try:
            _load(worker_ctx, args, count, count)  # every worker loads the checkpoint
            result = _load(worker_ctx, args, args.clients, args.jobs)
            result.update(workers_up_s=up, torch_threads_per_worker=None if args.gpu else threads)
            out["modes"][f"ray-{count}"] = result
            if count == 1:
                torch.set_num_threads(threads)
                local_s, worker_s = _interleaved_medians(ctx, worker_ctx, args, args.overhead_jobs)
                torch.set_num_threads(args.threads or cores)
                overhead = {"job_s_in_process": round(local_s, 4), "job_s_on_worker": round(worker_s, 4),
                            "overhead_per_job_ms": round((worker_s - local_s) * 1000, 1),
                            "torch_threads": threads}
        finally:
            executor.close()
    ray.shutdown()
    shutil.rmtree(tmp, ignore_errors=True)
    out["ray_overhead_per_job"] = overhead
    base = out["modes"]["in-process"]["images_per_min"]
    out["speedup_vs_in_process"] = {k: round(v["images_per_min"] / base, 2) for k, v in out["modes"].items()
                                    if base}
    print(json.dumps(out, indent=2))


if __name__ == "__main__":
    main()
