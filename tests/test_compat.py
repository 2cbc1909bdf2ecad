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


def test_all_named_dependencies_are_installed():
    import importlib

    for name in ("diffusers", "transformers", "torch", "torchvision", "gradio", "pluggy", "controlnet_aux",
                 "spandrel", "safetensors", "accelerate", "torchsde"):
        importlib.import_module(name)
