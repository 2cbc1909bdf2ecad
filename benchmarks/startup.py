"""Time from `python launch.py --skip-install` to the first HTTP 200 on `/` (warm venv).

    .venv/bin/python benchmarks/startup.py [--runs 3]
"""

from __future__ import annotations

import argparse
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def once(data_dir: Path) -> float:
    port = free_port()
    t0 = time.perf_counter()
    proc = subprocess.Popen([sys.executable, str(ROOT / "launch.py"), "--skip-install", "--port", str(port),
                             "--data-dir", str(data_dir)], cwd=ROOT, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, env={**os.environ})
    try:
        while time.perf_counter() - t0 < 120:
            try:
                if httpx.get(f"http://127.0.0.1:{port}/", timeout=1).status_code == 200:
                    return time.perf_counter() - t0
            except httpx.HTTPError:
                pass
            time.sleep(0.05)
        raise RuntimeError("server did not answer within 120 s")
    finally:
        proc.terminate()
        proc.wait(30)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args()
    data = Path(tempfile.mkdtemp())
    first = once(data)  # creates the default model and hash cache
    times = [once(data) for _ in range(args.runs)]
    print(json.dumps({"first_start_s": first, "warm_start_median_s": statistics.median(times),
                      "warm_starts_s": times}, indent=2))


if __name__ == "__main__":
    main()
