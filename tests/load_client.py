"""A bounded asyncio load loop against a server on 127.0.0.1 (shared by tests/test_reliability.py and
benchmarks/load.py).

``clients`` concurrent clients, each with its own keep-alive connection, send requests back to back
until ``seconds`` have passed: mostly tiny txt2img jobs (64x64, 1-2 steps, a seed unique to the request),
with ``/progress``, ``/options`` and ``png-info`` calls in between. Every answer is checked: status 200
and, for txt2img, one image carrying the request's own seed in ``info`` and in its infotext, so a lost,
duplicated or mixed-up answer counts as an error.
"""

from __future__ import annotations

import asyncio
import base64
import io
import json
import time
from dataclasses import dataclass, field

import httpx


@dataclass
class LoadReport:
    sent: int = 0
    ok: int = 0
    errors: list[str] = field(default_factory=list)
    by_route: dict[str, int] = field(default_factory=dict)
    latencies: list[float] = field(default_factory=list)
    seconds: float = 0.0

    @property
    def lost(self) -> int:
        return self.sent - self.ok - len(self.errors)

    def summary(self) -> dict:
        lat = sorted(self.latencies)

        def pct(p: float) -> float:
            return round(lat[min(len(lat) - 1, int(p * len(lat)))] * 1000, 1) if lat else 0.0

        return {"sent": self.sent, "ok": self.ok, "errors": len(self.errors), "lost": self.lost,
                "seconds": round(self.seconds, 1), "req_per_s": round(self.ok / self.seconds, 1) if self.seconds else 0,
                "by_route": self.by_route, "p50_ms": pct(0.5), "p95_ms": pct(0.95), "max_ms": pct(1.0)}


def _png_b64() -> str:
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (16, 16), (10, 200, 30)).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode()


async def _client(index: int, url: str, deadline: float, report: LoadReport, steps: int, auth) -> None:
    png = _png_b64()
    n = 0
    async with httpx.AsyncClient(base_url=url, timeout=120, auth=auth, trust_env=False) as http:
        while time.monotonic() < deadline:
            n += 1
            seed = index * 1_000_000 + n
            kind = ("progress", "txt2img", "options", "txt2img", "png-info", "txt2img")[n % 6]
            report.sent += 1
            report.by_route[kind] = report.by_route.get(kind, 0) + 1
            t0 = time.perf_counter()
            try:
                if kind == "txt2img":
                    r = await http.post("/sdapi/v1/txt2img", json={
                        "prompt": f"client {index} request {n}", "steps": steps, "width": 64, "height": 64,
                        "seed": seed, "sampler_name": "Euler", "save_images": False})
                elif kind == "png-info":
                    r = await http.post("/sdapi/v1/png-info", json={"image": png})
                elif kind == "options":
                    r = await http.get("/sdapi/v1/options")
                else:
                    r = await http.get("/sdapi/v1/progress", params={"skip_current_image": True})
            except httpx.HTTPError as exc:
                report.errors.append(f"client {index} #{n} {kind}: {type(exc).__name__}: {exc}")
                continue
            report.latencies.append(time.perf_counter() - t0)
            if r.status_code != 200:
                report.errors.append(f"client {index} #{n} {kind}: HTTP {r.status_code} {r.text[:200]}")
                continue
            if kind == "txt2img":
                body = r.json()
                info = json.loads(body["info"])
                if len(body["images"]) != 1 or info["seed"] != seed or f"Seed: {seed}," not in info["infotexts"][0]:
                    report.errors.append(f"client {index} #{n}: answer of another request (seed {info['seed']})")
                    continue
            report.ok += 1


async def run_load(url: str, clients: int = 20, seconds: float = 10.0, steps: int = 1, auth=None) -> LoadReport:
    """Run the load; only loopback URLs are accepted (this is not a tool for other people's servers)."""
    host = httpx.URL(url).host
    if host not in ("127.0.0.1", "localhost", "::1"):
        raise ValueError(f"load tests run against 127.0.0.1 only, not {host}")
    report = LoadReport()
    start = time.monotonic()
    deadline = start + seconds
    await asyncio.gather(*(_client(i, url, deadline, report, steps, auth) for i in range(clients)))
    report.seconds = time.monotonic() - start
    return report


def run_load_sync(url: str, clients: int = 20, seconds: float = 10.0, steps: int = 1, auth=None) -> LoadReport:
    return asyncio.run(run_load(url, clients, seconds, steps, auth))
