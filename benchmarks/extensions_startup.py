"""Start-up cost of extensions: plugin discovery + import + registration, and building the UI, with
0, 10 and 50 trivial extension folders (each a module with two hook implementations).

    python benchmarks/extensions_startup.py
"""

from __future__ import annotations

import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
os.environ.setdefault("HF_HUB_OFFLINE", "1")
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from webui.context import build_context  # noqa: E402
from webui.plugins import make_plugin_manager  # noqa: E402
from webui.settings import Settings  # noqa: E402

TRIVIAL = '''from webui.hookspecs import hookimpl

@hookimpl
def extra_infotext(request):
    return None

@hookimpl
def register_settings():
    return []
'''


def make_extensions(root: Path, n: int) -> None:
    for i in range(n):
        folder = root / f"trivial-{i:03d}"
        folder.mkdir(parents=True)
        (folder / "__init__.py").write_text(TRIVIAL)


def main() -> None:
    from webui.ui.app import build_ui

    with tempfile.TemporaryDirectory() as tmp:  # warm-up: first imports, Gradio's first Blocks
        build_ui(build_context(Settings(data_dir=Path(tmp), use_cpu=True), load_model=False))
    print("extensions  plugin manager (ms)  + context + UI build (ms)")
    base = None
    pm0 = 0.0
    for n in (0, 10, 50):
        with tempfile.TemporaryDirectory() as tmp:
            data = Path(tmp)
            make_extensions(data / "extensions", n)
            pm_times, total_times = [], []
            for _ in range(3):
                for mod in [m for m in sys.modules if m.startswith("webui_ext_trivial")]:
                    del sys.modules[mod]  # import again each round
                t0 = time.perf_counter()
                make_plugin_manager(extensions_dir=data / "extensions", load_entrypoints=False)
                pm_times.append((time.perf_counter() - t0) * 1000)
                for mod in [m for m in sys.modules if m.startswith("webui_ext_trivial")]:
                    del sys.modules[mod]
                t0 = time.perf_counter()
                build_ui(build_context(Settings(data_dir=data, use_cpu=True), load_model=False))
                total_times.append((time.perf_counter() - t0) * 1000)
            pm, total = statistics.median(pm_times), statistics.median(total_times)
            base = base if base is not None else total
            per = (total - base) / n if n else 0.0
            per_pm = (pm - pm0) / n if n else 0.0
            pm0 = pm if n == 0 else pm0
            print(f"{n:10d}  {pm:20.1f}  {total:25.1f}   (per extension: {per_pm:.2f} ms loading, "
                  f"{per:.2f} ms all in)")


if __name__ == "__main__":
    main()
