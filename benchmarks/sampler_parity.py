"""Print the parity table: sampler x schedule -> max |delta| against the k-diffusion package.

    .venv/bin/python benchmarks/sampler_parity.py > parity.md
"""

from __future__ import annotations

import sys
import warnings
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
warnings.filterwarnings("ignore")

from tests.sampler_parity import KD_FUNCTIONS, run_pair  # noqa: E402
from webui.plugins import make_plugin_manager  # noqa: E402
from webui.sampling.registry import SamplerRegistry  # noqa: E402

SCHEDULES = ["Automatic", "Uniform", "Karras", "Exponential", "Polyexponential", "SGM Uniform", "Simple",
             "Normal", "DDIM", "Beta", "Align Your Steps", "KL Optimal"]


def main() -> None:
    hooks = make_plugin_manager(disable_extensions=True).hooks
    reg = SamplerRegistry(hooks.register_samplers(), hooks.register_schedules())
    print("| sampler | " + " | ".join(SCHEDULES) + " | v-pred (Automatic) |")
    print("|---" * (len(SCHEDULES) + 2) + "|")
    worst = 0.0
    for name in KD_FUNCTIONS:
        cells = []
        for sched_name in SCHEDULES:
            s, sched = reg.resolve(name, sched_name)
            if s.full_range and sched_name != "Automatic":
                cells.append("n/a")
                continue
            d = run_pair(s, sched)
            worst = max(worst, d)
            cells.append(f"{d:.1e}")
        s, sched = reg.resolve(name, "Automatic")
        d = run_pair(s, sched, prediction_type="v_prediction")
        worst = max(worst, d)
        print(f"| {name} | " + " | ".join(cells) + f" | {d:.1e} |")
    print(f"\nworst max |delta| = {worst:.2e} (tolerance 1e-4)")


if __name__ == "__main__":
    main()
