"""The basicsr/realesrgan/gfpgan vs torchvision breakage, fixed in one place (webui/compat.py)."""

import subprocess
import sys
import textwrap


def test_gan_packages_import_after_the_shim():
    code = textwrap.dedent(
        """
        from webui.compat import patch_torchvision_functional_tensor
        patch_torchvision_functional_tensor()
        import basicsr.archs.rrdbnet_arch, realesrgan, gfpgan, facexlib
        from basicsr.data import degradations
        print("ok", degradations.rgb_to_grayscale.__module__)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.startswith("ok torchvision.transforms.functional")


def test_without_the_shim_basicsr_fails_as_documented():
    out = subprocess.run([sys.executable, "-c", "import basicsr"], capture_output=True, text=True, timeout=300)
    assert out.returncode != 0 and "functional_tensor" in out.stderr


def test_pinned_requirements_are_installed_at_their_pins():
    """Every line of requirements.txt (the pins launch.py installs) is satisfied by the installed distribution,
    and the packages the product imports by name (torch/torchvision come from launch.py's TORCH_COMMAND) import."""
    import importlib
    from importlib.metadata import PackageNotFoundError, version
    from pathlib import Path

    from packaging.requirements import Requirement

    text = (Path(__file__).resolve().parents[1] / "requirements.txt").read_text()
    pins = [Requirement(line.split("#")[0].strip()) for line in text.splitlines() if line.split("#")[0].strip()]
    assert len(pins) >= 15
    wrong = {}
    for pin in pins:
        try:
            installed = version(pin.name)
        except PackageNotFoundError:
            installed = None
        if installed is None or not pin.specifier.contains(installed, prereleases=True):
            wrong[str(pin)] = installed
    assert wrong == {}
    for name in ("diffusers", "transformers", "torch", "torchvision", "gradio", "pluggy", "controlnet_aux",
                 "spandrel", "safetensors", "accelerate", "torchsde"):
        assert importlib.import_module(name).__name__ == name
