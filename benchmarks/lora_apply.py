"""Cost of applying and removing a LoRA (per job), on the tiny SD 1.x model.

    .venv/bin/python benchmarks/lora_apply.py [--repeats 20] [--rank 16]

A LoRA on every attention projection and feed-forward layer of UNet and text encoder; prints
JSON with the median apply and restore times and the number of layers and weights touched.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import torch  # noqa: E402

from webui.models.tiny import build_tiny_components  # noqa: E402
from webui.networks.lora import LoraFile, LoraModule, apply_loras, module_index  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=20)
    ap.add_argument("--rank", type=int, default=16)
    args = ap.parse_args()
    comps = build_tiny_components("sd1", seed=0)
    modules = {}
    for key, (module, _kind) in module_index(comps).items():
        if isinstance(module, torch.nn.Linear) and key.startswith(("lora_te_", "lora_unet_down", "lora_unet_up",
                                                                   "lora_unet_mid")):
            out_f, in_f = module.weight.shape
            r = min(args.rank, out_f, in_f)
            modules[key] = LoraModule(torch.randn(r, in_f), torch.randn(out_f, r), float(r))
    lora = LoraFile("bench", Path("bench.safetensors"), modules)
    apply_t, restore_t = [], []
    for _ in range(args.repeats):
        t0 = time.perf_counter()
        applied = apply_loras(comps, [(lora, 1.0, 1.0)])
        t1 = time.perf_counter()
        applied.restore()
        t2 = time.perf_counter()
        apply_t.append(t1 - t0)
        restore_t.append(t2 - t1)
    touched = sum(m.weight.numel() for m, _ in {id(m): (m, 0) for m, _ in
                                                 (module_index(comps)[k] for k in modules)}.values())
    print(json.dumps({"layers": len(modules), "weights_touched": touched, "rank": args.rank,
                      "apply_ms_median": 1e3 * statistics.median(apply_t),
                      "restore_ms_median": 1e3 * statistics.median(restore_t)}, indent=2))


if __name__ == "__main__":
    main()
