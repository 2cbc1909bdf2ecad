"""ESRGAN throughput: our ``upscale_tiled`` against ``realesrgan.RealESRGANer`` on the same network.

Builds a RealESRGAN_x4plus-shaped RRDBNet (num_feat 64, 23 blocks, growth 32; ``--scale 2``: the x2plus
shape) with random weights, saves it as an official ``{"params_ema": ...}`` .pth in a temp folder, loads
it with both implementations and upscales a ``--size`` square image, reporting megapixels of output per
second and the ratio ours/theirs. Nothing is downloaded.

    .venv/bin/python benchmarks/esrgan_throughput.py --size 64            # quick CPU check
    .venv/bin/python benchmarks/esrgan_throughput.py --size 512 --tile 192 --device cuda
"""

from __future__ import annotations

import argparse
import contextlib
import io
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from PIL import Image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from webui.compat import patch_torchvision_functional_tensor  # noqa: E402

patch_torchvision_functional_tensor()

from realesrgan import RealESRGANer  # noqa: E402

from webui.upscaling.gan import RRDBNet, load_gan, upscale_tiled  # noqa: E402


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--size", type=int, default=128, help="input side in pixels (512 -> 2048 at x4; slow on CPU)")
    p.add_argument("--scale", type=int, default=4, choices=(2, 4), help="x4plus (4) or x2plus (2) shape")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N")
    p.add_argument("--tile", type=int, default=0, help="tile size (0: whole image), e.g. 192")
    p.add_argument("--overlap", type=int, default=10, help="tile context (ours: overlap, theirs: tile_pad)")
    p.add_argument("--fp32", action="store_true", help="float32 on CUDA too (default: float16 on CUDA)")
    p.add_argument("--repeats", type=int, default=2, help="timed runs per implementation, alternating (best counts)")
    return p.parse_args(argv)


def timed(fn: Callable[[], np.ndarray], device: torch.device) -> tuple[float, np.ndarray]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    out = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, out


def main(argv: list[str] | None = None) -> None:
    args = parse_args(argv)
    device = torch.device("cuda" if args.device == "auto" and torch.cuda.is_available() else
                          "cpu" if args.device == "auto" else args.device)
    dtype = torch.float16 if device.type == "cuda" and not args.fp32 else torch.float32
    torch.manual_seed(0)
    net = RRDBNet(3, 3, args.scale, 64, 23, 32)
    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (args.size, args.size, 3), dtype=np.uint8))
    out_mp = (args.size * args.scale) ** 2 / 1e6
    print(f"settings: input {args.size}x{args.size} -> {args.size * args.scale}x{args.size * args.scale} "
          f"(x{args.scale}, RRDBNet 64/23/32), device {device}, dtype {str(dtype).removeprefix('torch.')}, "
          f"tile {args.tile}, overlap/tile_pad {args.overlap}, pre_pad 0, repeats {args.repeats}, "
          f"torch threads {torch.get_num_threads()}")

    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / f"RealESRGAN_x{args.scale}plus.pth"
        torch.save({"params_ema": net.state_dict()}, path)
        ours = load_gan(path, device, dtype)
        with torch.device("meta"):  # skip the random init; RealESRGANer loads every weight from the file
            arch = RRDBNet(3, 3, args.scale, 64, 23, 32)
        theirs = RealESRGANer(scale=args.scale, model_path=str(path), model=arch.to_empty(device="cpu"),
                              tile=args.tile, tile_pad=args.overlap, pre_pad=0, half=dtype == torch.float16,
                              device=device)
    bgr = np.ascontiguousarray(np.asarray(image)[:, :, ::-1])

    def run_ours() -> np.ndarray:
        return np.asarray(upscale_tiled(ours, image, args.tile, args.overlap))

    def run_theirs() -> np.ndarray:
        with contextlib.redirect_stdout(io.StringIO()):  # RealESRGANer prints every tile
            out, _ = theirs.enhance(bgr, outscale=args.scale)
        return out[:, :, ::-1]

    warm = Image.fromarray(np.zeros((16, 16, 3), np.uint8))  # first-call overheads (allocator, kernels)
    upscale_tiled(ours, warm, 0, 0)
    with contextlib.redirect_stdout(io.StringIO()):
        theirs.enhance(np.asarray(warm), outscale=args.scale)

    t_ours = t_theirs = float("inf")
    for _ in range(max(1, args.repeats)):  # alternate, so that load changes hit both alike; best of each
        t, a = timed(run_ours, device)
        t_ours = min(t_ours, t)
        t, b = timed(run_theirs, device)
        t_theirs = min(t_theirs, t)
    print(f"ours  (webui.upscaling.gan.upscale_tiled): {t_ours:8.3f} s  {out_mp / t_ours:8.4f} MP/s")
    print(f"theirs (realesrgan.RealESRGANer.enhance):  {t_theirs:8.3f} s  {out_mp / t_theirs:8.4f} MP/s")
    print(f"ratio ours/theirs (throughput): {t_theirs / t_ours:.3f}")
    print(f"outputs: {a.shape[1]}x{a.shape[0]} vs {b.shape[1]}x{b.shape[0]}, "
          f"max |difference| {int(np.abs(a.astype(int) - b.astype(int)).max())} (uint8 levels)")


if __name__ == "__main__":
    main()
