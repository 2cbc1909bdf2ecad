"""A1111 command-line flags this server accepts although they change nothing here, and the refusal of
every other unknown flag.

A1111 refuses a flag it does not know; so do we (a typo such as ``--api-auht`` must never start an open
server). Flags from A1111's ``modules/cmd_args.py`` that people keep in their start scripts but that
mean nothing here are accepted from the explicit list below; each one given is logged at start with what
it means here.
"""

from __future__ import annotations

import argparse
import difflib
from collections.abc import Iterable
from dataclasses import dataclass

#: how many values a flag takes: 0 (a switch), 1, or "+" / "*" (a list)
Arity = int | str


@dataclass(frozen=True)
class IgnoredFlag:
    name: str
    arity: Arity
    note: str


_ATTENTION = "attention kernels are chosen with --attention (sdpa by default)"
_INSTALL = "launch.py installs pinned requirements itself; nothing is checked or reinstalled on request"
_PATHS = "model files are looked up in models/<folder> (or --models-dir); see docs/install.md"
_UI = "not applicable to this UI"
_NOOP = "A1111 documents it as doing nothing"

IGNORED_FLAGS: tuple[IgnoredFlag, ...] = (
    # attention / speed switches
    IgnoredFlag("--xformers", 0, _ATTENTION),
    IgnoredFlag("--force-enable-xformers", 0, _ATTENTION),
    IgnoredFlag("--xformers-flash-attention", 0, _ATTENTION),
    IgnoredFlag("--opt-sdp-attention", 0, "PyTorch SDPA attention is already the default (--attention sdpa)"),
    IgnoredFlag("--opt-sdp-no-mem-attention", 0, _ATTENTION),
    IgnoredFlag("--opt-split-attention", 0, _ATTENTION),
    IgnoredFlag("--opt-split-attention-v1", 0, _ATTENTION),
    IgnoredFlag("--opt-split-attention-invokeai", 0, _ATTENTION),
    IgnoredFlag("--opt-sub-quad-attention", 0, _ATTENTION),
    IgnoredFlag("--sub-quad-q-chunk-size", 1, _ATTENTION),
    IgnoredFlag("--sub-quad-kv-chunk-size", 1, _ATTENTION),
    IgnoredFlag("--sub-quad-chunk-threshold", 1, _ATTENTION),
    IgnoredFlag("--disable-opt-split-attention", 0, _ATTENTION),
    IgnoredFlag("--upcast-sampling", 0, "sampling runs in the model's precision; use --precision full for float32"),
    IgnoredFlag("--always-batch-cond-uncond", 0, "cond and uncond are always batched together"),
    IgnoredFlag("--lowram", 0, "weights are read with safetensors' memory mapping already"),
    IgnoredFlag("--disable-nan-check", 0, "the VAE retries in float32 on NaNs; there is no other NaN check"),
    IgnoredFlag("--disable-model-loading-ram-optimization", 0, "loading already streams tensors"),
    IgnoredFlag("--use-ipex", 0, "Intel XPU is not supported; the server runs on CUDA or the CPU"),
    IgnoredFlag("--use-directml", 0, "DirectML is not supported; the server runs on CUDA or the CPU"),
    # launcher / install
    IgnoredFlag("--skip-torch-cuda-test", 0, "no CUDA test runs; without a GPU the server uses the CPU"),
    IgnoredFlag("--skip-python-version-check", 0, _INSTALL),
    IgnoredFlag("--skip-version-check", 0, _INSTALL),
    IgnoredFlag("--skip-prepare-environment", 0, _INSTALL),
    IgnoredFlag("--reinstall-torch", 0, _INSTALL),
    IgnoredFlag("--reinstall-xformers", 0, _INSTALL),
    IgnoredFlag("--update-check", 0, _INSTALL),
    IgnoredFlag("--update-all-extensions", 0, "update extensions from the Extensions tab"),
    IgnoredFlag("--no-download-sd-model", 0, "nothing is ever downloaded; the built-in default model is used"),
    IgnoredFlag("--do-not-download-clip", 0, "nothing is ever downloaded"),
    IgnoredFlag("--no-tests", 0, _INSTALL),
    IgnoredFlag("-f", 0, "running as root needs no flag here"),
    # UI / gradio
    IgnoredFlag("--share", 0, "no public tunnel is ever opened; use --listen behind your own proxy with auth"),
    IgnoredFlag("--ngrok", 1, "no public tunnel is ever opened"),
    IgnoredFlag("--ngrok-region", 1, "no public tunnel is ever opened"),
    IgnoredFlag("--autolaunch", 0, "open the printed URL yourself"),
    IgnoredFlag("--gradio-debug", 0, _UI),
    IgnoredFlag("--gradio-queue", 0, "the job queue is always on"),
    IgnoredFlag("--no-gradio-queue", 0, "the job queue is always on"),
    IgnoredFlag("--gradio-img2img-tool", 1, _NOOP),
    IgnoredFlag("--gradio-inpaint-tool", 1, _NOOP),
    IgnoredFlag("--no-progressbar-hiding", 0, _UI),
    IgnoredFlag("--show-negative-prompt", 0, _NOOP),
    IgnoredFlag("--deepdanbooru", 0, _NOOP),
    IgnoredFlag("--unload-gfpgan", 0, _NOOP),
    IgnoredFlag("--use-textbox-seed", 0, "seeds are always number boxes that take any 32-bit value"),
    IgnoredFlag("--disable-console-progressbars", 0, _UI),
    IgnoredFlag("--enable-console-prompts", 0, "use --api-log to log requests"),
    IgnoredFlag("--ui-debug-mode", 0, _UI),
    IgnoredFlag("--hide-ui-dir-config", 0, "output folders are always relative to the data folder"),
    IgnoredFlag("--freeze-settings", 0, "settings stay editable (protect the server with --gradio-auth)"),
    IgnoredFlag("--ui-config-file", 1, _UI),
    IgnoredFlag("--ui-settings-file", 1, "settings live in <data-dir>/config.json"),
    IgnoredFlag("--max-batch-count", 1, _UI),
    IgnoredFlag("--allow-code", 0, "the custom-code script is not provided"),
    IgnoredFlag("--administrator", 0, _UI),
    IgnoredFlag("--no-hashing", 0, "hashes are computed once and cached in cache/hashes.json"),
    IgnoredFlag("--disable-safe-unpickle", 0, "pickles are always read with torch.load(weights_only=True); "
                                              "there is no unsafe mode"),
    IgnoredFlag("--api-server-stop", 0, "stop the server with SIGTERM or Ctrl+C"),
    IgnoredFlag("--add-stop-route", 0, "stop the server with SIGTERM or Ctrl+C"),
    IgnoredFlag("--timeout-keep-alive", 1, "uvicorn's default keep-alive is used"),
    IgnoredFlag("--subpath", 1, "serve behind a reverse proxy that strips the prefix"),
    IgnoredFlag("--server-name", 1, "use --listen to bind all interfaces"),
    IgnoredFlag("--tls-keyfile", 1, "terminate TLS in a reverse proxy"),
    IgnoredFlag("--tls-certfile", 1, "terminate TLS in a reverse proxy"),
    IgnoredFlag("--disable-tls-verify", 0, "terminate TLS in a reverse proxy"),
    IgnoredFlag("--cors-allow-origins-regex", 1, "list the origins with --cors-allow-origins"),
    IgnoredFlag("--gradio-auth-path", 1, "give the credentials with --gradio-auth"),
    IgnoredFlag("--loglevel", 1, "the server logs at INFO"),
    IgnoredFlag("--log-startup", 0, "start-up is always logged"),
    IgnoredFlag("--skip-load-model-at-start", 0, "the model loads in the background while the server starts"),
    IgnoredFlag("--disable-all-extensions", 0, "use --disable-extensions"),
    IgnoredFlag("--disable-extra-extensions", 0, "use --disable-extensions"),
    IgnoredFlag("--dump-sysinfo", 0, _UI),
    IgnoredFlag("--unix-filenames-sanitization", 0, "file names are always sanitised for every OS"),
    IgnoredFlag("--filenames-max-length", 1, "file names are capped at 128 characters"),
    IgnoredFlag("--no-prompt-history", 0, _UI),
    # paths of A1111's folder layout
    IgnoredFlag("--config", 1, "model configs are inferred from the weights"),
    IgnoredFlag("--embeddings-dir", 1, _PATHS),
    IgnoredFlag("--textual-inversion-templates-dir", 1, _PATHS),
    IgnoredFlag("--hypernetwork-dir", 1, "hypernetworks are not supported"),
    IgnoredFlag("--codeformer-models-path", 1, _PATHS),
    IgnoredFlag("--gfpgan-models-path", 1, _PATHS),
    IgnoredFlag("--esrgan-models-path", 1, _PATHS),
    IgnoredFlag("--bsrgan-models-path", 1, _PATHS),
    IgnoredFlag("--realesrgan-models-path", 1, _PATHS),
    IgnoredFlag("--scunet-models-path", 1, _PATHS),
    IgnoredFlag("--swinir-models-path", 1, _PATHS),
    IgnoredFlag("--ldsr-models-path", 1, _PATHS),
    IgnoredFlag("--dat-models-path", 1, _PATHS),
    IgnoredFlag("--clip-models-path", 1, "interrogation is not supported"),
    IgnoredFlag("--gfpgan-dir", 1, _PATHS),
    IgnoredFlag("--gfpgan-model", 1, _PATHS),
    IgnoredFlag("--vae-path", 1, "choose the VAE with the sd_vae setting (files in models/VAE or --vae-dir)"),
    IgnoredFlag("--styles-file", "+", "styles live in <data-dir>/styles.csv"),
)


def add_ignored_flags(parser: argparse.ArgumentParser) -> None:
    """Register :data:`IGNORED_FLAGS` (hidden from ``--help``) so their values are parsed, not refused."""
    group = parser.add_argument_group("A1111 flags accepted without effect")
    for flag in IGNORED_FLAGS:
        dest = "ignored__" + flag.name.lstrip("-").replace("-", "_")
        if flag.arity == 0:
            group.add_argument(flag.name, dest=dest, action="store_true", help=argparse.SUPPRESS)
        else:
            nargs = None if flag.arity == 1 else flag.arity
            group.add_argument(flag.name, dest=dest, nargs=nargs, default=None, help=argparse.SUPPRESS)


def ignored_flag_notes(ns: argparse.Namespace) -> tuple[str, ...]:
    """One line per ignored flag given on the command line: what it means here."""
    notes = []
    for flag in IGNORED_FLAGS:
        value = getattr(ns, "ignored__" + flag.name.lstrip("-").replace("-", "_"), None)
        if value not in (None, False):
            notes.append(f"{flag.name} has no effect here: {flag.note}")
    return tuple(notes)


def unknown_flags_message(unknown: Iterable[str], parser: argparse.ArgumentParser) -> str:
    """The refusal for arguments the parser did not take, naming each and the closest known flag."""
    known = sorted(s for a in parser._actions for s in a.option_strings)  # noqa: SLF001 (argparse has no API)
    parts = []
    for arg in unknown:
        name = arg.split("=", 1)[0]
        if not name.startswith("-"):
            parts.append(f"unexpected value {arg!r} (no flag before it takes a value)")
            continue
        close = difflib.get_close_matches(name, known, n=1, cutoff=0.6)
        parts.append(f"unknown flag {name}" + (f" (did you mean {close[0]}?)" if close else ""))
    return "; ".join(parts) + ". See python launch.py --help."
