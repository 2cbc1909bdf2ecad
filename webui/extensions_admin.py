"""Managing extension folders: install from a git URL, update, requirements through the same pip.

Installing runs code from the internet on this machine, so it is allowed only when the server
listens on loopback (or with ``--enable-insecure-extension-access``). ``requirements.txt`` of an
extension is installed with ``python -m pip install -r`` in the running interpreter's environment
(the venv ``launch.py`` made), exactly as ``launch.py`` installs the project's own requirements.
"""

from __future__ import annotations

import re
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from webui.errors import RequestError
from webui.settings import Settings

_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,99}$")


@dataclass(frozen=True)
class InstallResult:
    name: str
    path: Path
    requirements_installed: bool


def install_allowed(settings: Settings) -> bool:
    return not settings.listen or settings.enable_insecure_extension_access


def _name_from_url(url: str) -> str:
    name = url.rstrip("/").rsplit("/", 1)[-1]
    return name[:-4] if name.endswith(".git") else name


def _git(args: list[str], cwd: Path | None = None, timeout: int = 300) -> str:
    try:
        done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise RequestError("url", f"git failed: {exc}") from None
    if done.returncode != 0:
        raise RequestError("url", f"git {args[0]} failed: {(done.stderr or done.stdout).strip()[-500:]}")
    return done.stdout


def install_requirements(folder: Path, timeout: int = 900) -> bool:
    req = folder / "requirements.txt"
    if not req.is_file():
        return False
    done = subprocess.run([sys.executable, "-m", "pip", "install", "-r", str(req)], capture_output=True, text=True,
                          timeout=timeout, check=False)
    if done.returncode != 0:
        raise RequestError("requirements", f"pip could not install {req}: {done.stderr.strip()[-500:]}")
    return True


def install_from_git(settings: Settings, url: str, name: str | None = None, *,
                     with_requirements: bool = True) -> InstallResult:
    if not install_allowed(settings):
        raise RequestError("url", "installing extensions is off while the server listens on the network "
                                  "(start without --listen, or add --enable-insecure-extension-access)")
    url = (url or "").strip()
    if not url or url.startswith("-") or not re.match(r"^(https?://|git@|file://|/)", url):
        raise RequestError("url", "give a git URL (https://..., git@..., file://... or a local path)")
    name = (name or _name_from_url(url)).strip()
    if not _NAME.match(name):
        raise RequestError("name", f"{name!r} is not a valid folder name")
    root = settings.extensions_dir
    root.mkdir(parents=True, exist_ok=True)
    target = root / name
    if target.exists():
        raise RequestError("name", f"{target} already exists")
    tmp = root / f".{name}.installing"
    if tmp.exists():
        import shutil

        shutil.rmtree(tmp)
    _git(["clone", "--depth", "1", "--", url, str(tmp)])
    tmp.rename(target)
    installed = install_requirements(target) if with_requirements else False
    return InstallResult(name, target, installed)


def update(settings: Settings, name: str) -> str:
    folder = settings.extensions_dir / name
    if not (folder / ".git").exists():
        raise RequestError("name", f"{name} is not a git checkout in {settings.extensions_dir}")
    if not install_allowed(settings):
        raise RequestError("name", "updating extensions is off while the server listens on the network")
    out = _git(["pull", "--ff-only"], cwd=folder)
    install_requirements(folder)
    return out.strip()
