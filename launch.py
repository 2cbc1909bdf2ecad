#!/usr/bin/env python3
"""Set up the environment if needed, then start the web UI (or run the tests).

    python launch.py            # create .venv, install pinned requirements, start http://127.0.0.1:7860
    python launch.py --tests    # same environment plus test dependencies, then run the test suite
    python launch.py --workers 2   # also installs requirements-ray.txt (once), for the generation workers

Environment variables:
    TORCH_COMMAND   pip arguments that install torch/torchvision
                    (default: "torch==2.14.1 torchvision==0.29.1"; e.g. add an --index-url for another CUDA build)
    WEBUI_VENV      virtual environment folder (default: .venv next to this file)
    WEBUI_SKIP_INSTALL=1   never install anything (same as --skip-install)
Only the standard library is used here, so this file runs with a bare Python 3.11.
"""

from __future__ import annotations

import hashlib
import os
import shlex
import shutil
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent
DEFAULT_TORCH = "torch==2.14.1 torchvision==0.29.1"
# basicsr 1.4.2 is source-only and imports torch in setup.py: build it against the installed torch.
BASICSR = "basicsr==1.4.2"
INSIDE_VENV_FLAG = "WEBUI_LAUNCH_INSIDE_VENV"


def log(msg: str) -> None:
    print(f"[launch] {msg}", flush=True)


def venv_dir() -> Path:
    return Path(os.environ.get("WEBUI_VENV", ROOT / ".venv")).resolve()


def venv_python(venv: Path) -> Path:
    return venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")


def run(cmd: list[str], **kw) -> None:
    log("$ " + " ".join(shlex.quote(c) for c in cmd))
    subprocess.run(cmd, check=True, **kw)


RAY_REQUIREMENTS = "requirements-ray.txt"  # Ray, for --workers / --ray-address (and the tests)
RAY_FLAGS = ("--workers", "--ray-address")


def install_stamp(tests: bool) -> str:
    h = hashlib.sha256()
    h.update(os.environ.get("TORCH_COMMAND", DEFAULT_TORCH).encode())
    h.update(BASICSR.encode())
    tests_files = ["requirements-test.txt", "requirements-test-nodeps.txt", RAY_REQUIREMENTS]
    for name in ["requirements.txt"] + (tests_files if tests else []):
        h.update((ROOT / name).read_bytes())
    return h.hexdigest()


def wants_ray(args: list[str]) -> bool:
    """The command line asks for generation workers (they need Ray)."""
    return any(a == flag or a.startswith(flag + "=") for a in args for flag in RAY_FLAGS)


def ensure_ray(py: Path) -> None:
    """Install requirements-ray.txt into the environment the first time it is needed (its own stamp)."""
    stamp_file = py.parent.parent / ".webui-stamp-ray"
    stamp = hashlib.sha256((ROOT / RAY_REQUIREMENTS).read_bytes()).hexdigest()
    if stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return
    log("Installing Ray for the generation workers (once)")
    run([str(py), "-m", "pip", "install", "--disable-pip-version-check", "-r", str(ROOT / RAY_REQUIREMENTS)])
    stamp_file.write_text(stamp)


def ensure_venv(tests: bool) -> Path:
    venv = venv_dir()
    py = venv_python(venv)
    if not py.exists():
        log(f"Creating virtual environment in {venv}")
        run([sys.executable, "-m", "venv", str(venv)])
    stamp_file = venv / (".webui-stamp-tests" if tests else ".webui-stamp")
    stamp = install_stamp(tests)
    if stamp_file.exists() and stamp_file.read_text().strip() == stamp:
        return py
    pip = [str(py), "-m", "pip", "install", "--disable-pip-version-check"]
    torch_args = shlex.split(os.environ.get("TORCH_COMMAND", DEFAULT_TORCH))
    if torch_args[:2] == ["pip", "install"]:
        torch_args = torch_args[2:]
    log("Installing torch (this takes a few minutes the first time)")
    run(pip + torch_args)
    run(pip + ["--no-build-isolation", BASICSR])
    run(pip + ["-r", str(ROOT / "requirements.txt")])
    if tests:
        run(pip + ["-r", str(ROOT / "requirements-test.txt")])
        run(pip + ["--no-deps", "-r", str(ROOT / "requirements-test-nodeps.txt")])
        run(pip + ["-r", str(ROOT / RAY_REQUIREMENTS)])
    stamp_file.write_text(stamp)
    return py


#: what the tests need from the system (not pip): the browser tests drive Debian's chromium, the extension
#: tests run git; a missing one skips those tests here and fails them under CI (the ``CI`` variable)
SYSTEM_PACKAGES = {"chromium": "chromium", "git": "git"}  # command -> Debian package


def ensure_system_packages() -> None:
    """Install the tests' system packages (chromium, git) with apt when one is missing and we can (root + apt)."""
    absent = [pkg for cmd, pkg in SYSTEM_PACKAGES.items()
              if not shutil.which(cmd) and not Path("/usr/bin", cmd).exists()]
    if not absent:
        return
    outcome = "fail under CI" if os.environ.get("CI") else "be skipped"
    if os.name != "posix" or os.geteuid() != 0 or not shutil.which("apt-get"):
        log(f"{', '.join(absent)} not found and cannot be installed here: the tests needing them will {outcome}")
        return
    try:
        env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
        run(["apt-get", "update", "-q"], env=env)
        run(["apt-get", "install", "-y", "-q", *absent], env=env)
    except subprocess.CalledProcessError as exc:
        log(f"Installing {', '.join(absent)} failed ({exc}); the tests needing them will {outcome}")


def parallel_args(passthrough: list[str]) -> list[str]:
    """pytest-xdist's options for the test run: one worker per core (at most 4), each test module on one
    worker (``--dist loadscope``: a module's fixtures are built once). Nothing when the command line already
    chooses (``-n 0`` runs in this process) or xdist is not installed."""
    if any(a == "-n" or a.startswith(("-n", "--numprocesses", "--dist")) for a in passthrough):
        return []
    if "no:xdist" in passthrough:
        return []
    try:
        import xdist  # noqa: F401
    except ImportError:
        return []
    return ["-n", str(max(1, min(4, os.cpu_count() or 1))), "--dist", "loadscope"]


def main() -> int:
    args = sys.argv[1:]
    tests = "--tests" in args
    skip_install = "--skip-install" in args or os.environ.get("WEBUI_SKIP_INSTALL") == "1"
    passthrough = [a for a in args if a not in ("--tests", "--skip-install")]
    if sys.version_info < (3, 10):
        log(f"Python 3.10+ is required (3.11 recommended); this is {sys.version.split()[0]}")
        return 2

    if os.environ.get(INSIDE_VENV_FLAG) != "1":
        py = venv_python(venv_dir()) if skip_install else ensure_venv(tests)
        if not skip_install and not tests and wants_ray(passthrough):
            ensure_ray(py)
        if tests and not skip_install:
            ensure_system_packages()
        env = {**os.environ, INSIDE_VENV_FLAG: "1"}
        argv = [str(py), str(ROOT / "launch.py"), *args]
        if os.name == "posix":
            # Replace this process so signals (Ctrl+C, SIGTERM) reach the server directly.
            os.chdir(ROOT)
            os.execve(str(py), argv, env)
        return subprocess.call(argv, env=env, cwd=ROOT)

    os.chdir(ROOT)
    sys.path.insert(0, str(ROOT))
    if tests:
        import pytest

        return int(pytest.main(["-q", "-p", "no:cacheprovider", *parallel_args(passthrough), "tests", *passthrough]))
    from webui.main import main as start

    start(passthrough)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
