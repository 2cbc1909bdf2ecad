"""Deterministic control of running jobs for the tests: no sleeping, no guessing.

* :class:`StepGate` is an ``on_step_end`` plugin (registered on a context like any plugin, see
  :func:`step_gate`) that holds a job at a chosen sampling step until the test lets it go, or until the job is
  interrupted or skipped. "The job is running at step 2" is then a fact the test waited for
  (:meth:`StepGate.wait`), not a guess made with ``time.sleep``. While a job is held, ``job.sampling_step``
  is ``step`` (the hook runs before the step is counted); let go after an interrupt, the job stops with
  ``job.sampling_step == step + 1``.
* :func:`gate_extension` writes the same gate as an extension for a server in another process: it prints
  :data:`HELD` when a job reaches the step and goes on when the test writes a line to the process's stdin
  (or the job is interrupted). :class:`OutputLines` reads that process's output and waits for a line.
* :class:`LogWait` waits for a log message of this process.

Every wait has a bound (:data:`WAIT`) only as a safety net against a hang: reaching it fails the test.
"""

from __future__ import annotations

import contextlib
import logging
import queue
import subprocess
import threading
from collections.abc import Callable, Iterator
from pathlib import Path

from webui.hookspecs import hookimpl

WAIT = 60.0  # seconds; only reached when something is wrong (then the test fails saying so)
HELD = "step-gate: held"  # what the subprocess gate prints when it holds a job


class StepGate:
    """Holds each job (at most ``holds`` jobs; ``only(job)`` chooses which) at sampling step ``step``
    (0-based, as ``state.step``) until :meth:`release` / :meth:`open`, or until the job is interrupted or
    skipped. Registered with ``trylast``: the other plugins' ``on_step_end`` (live previews) ran for the step."""

    def __init__(self, step: int = 1, *, holds: int = 1, only: Callable[[object], bool] | None = None):
        self.step, self.only = step, only
        self.held: list = []  # the jobs held so far, in order
        self.timed_out: list[str] = []  # ids of jobs the gate let go only because WAIT passed
        self._holds = holds
        self._lock = threading.Lock()
        self._arrivals: queue.Queue = queue.Queue()
        self._release: dict[str, threading.Event] = {}
        self._open = False

    @hookimpl(trylast=True)
    def on_step_end(self, state) -> None:
        if state.step == self.step and (self.only is None or self.only(state.job)):
            self.hold(state.job)

    def hold(self, job) -> None:
        """Called in the job's thread: wait here until the test lets ``job`` go (each job is held once)."""
        with self._lock:
            if self._open or self._holds <= 0 or job.id in self._release:
                return
            self._holds -= 1
            go = self._release[job.id] = threading.Event()
        stop_watching = job.watch(lambda _what: go.set())  # an interrupt or a skip lets it go
        try:
            self.held.append(job)
            self._arrivals.put(job)
            if not (job.interrupted or job.skipped) and not go.wait(WAIT):
                self.timed_out.append(job.id)
        finally:
            stop_watching()

    def wait(self, timeout: float = WAIT):
        """The next job that reached the gate (it is held there now, unless it was interrupted or skipped)."""
        try:
            return self._arrivals.get(timeout=timeout)
        except queue.Empty:
            raise AssertionError(f"no job reached sampling step {self.step} within {timeout:.0f} s") from None

    def release(self, job) -> None:
        with self._lock:
            self._release[job.id].set()

    def open(self) -> None:
        """Let every held job go, and hold no more."""
        with self._lock:
            self._open = True
            for event in self._release.values():
                event.set()


@contextlib.contextmanager
def step_gate(ctx, step: int = 1, *, holds: int = 1, only=None, name: str = "step-gate") -> Iterator[StepGate]:
    """A :class:`StepGate` registered on ``ctx`` for the ``with`` block; at the end it lets every job go and
    the test fails if a job was let go only because the gate's safety bound passed."""
    gate = StepGate(step, holds=holds, only=only)
    assert ctx.plugins.register(gate, name)
    try:
        yield gate
    finally:
        gate.open()
        ctx.plugins.unregister(name)
    assert not gate.timed_out, f"jobs held at the gate for {WAIT:.0f} s without being let go: {gate.timed_out}"


# --- a server in another process -------------------------------------------------------------------

GATE_EXTENSION = '''
"""Test extension (tests/step_gate.py): holds the first job that reaches sampling step {step} until a line
arrives on stdin, or the job is interrupted."""
import sys
import threading

from webui.hookspecs import hookimpl


class Gate:
    def __init__(self):
        self.used = False

    @hookimpl(trylast=True)
    def on_step_end(self, state):
        if state.step != {step} or self.used:
            return
        self.used = True
        go = threading.Event()
        stop = state.job.watch(lambda what: go.set())
        threading.Thread(target=lambda: (sys.stdin.readline(), go.set()), daemon=True).start()
        print("{held}", state.job.id, flush=True)
        go.wait({wait})
        stop()


def make_plugin():
    return Gate()
'''


def gate_extension(data_dir: Path, step: int = 1) -> Path:
    """Install the subprocess gate in ``data_dir/extensions`` (start the server without --disable-extensions,
    with ``stdin=subprocess.PIPE``); returns its folder."""
    folder = Path(data_dir) / "extensions" / "step_gate"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "__init__.py").write_text(GATE_EXTENSION.format(step=int(step), held=HELD, wait=WAIT))
    return folder


class OutputLines:
    """Reads a process's (text) stdout in a thread; :meth:`wait_for` waits for a line containing a text."""

    def __init__(self, proc: subprocess.Popen):
        self.proc = proc
        self.lines: list[str] = []
        self._changed = threading.Condition()
        self._ended = False
        self._thread = threading.Thread(target=self._read, daemon=True)
        self._thread.start()

    def _read(self) -> None:
        for line in self.proc.stdout:
            with self._changed:
                self.lines.append(line)
                self._changed.notify_all()
        with self._changed:
            self._ended = True
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = WAIT, start: int = 0) -> str:
        """The first line (from line ``start`` on) containing ``text``; fails when the output ends without it or
        after ``timeout`` seconds."""
        with self._changed:
            found = self._changed.wait_for(
                lambda: self._ended or any(text in line for line in self.lines[start:]), timeout)
            for line in self.lines[start:]:
                if text in line:
                    return line
        raise AssertionError(f"{text!r} not in the output ({'it ended' if found else f'{timeout:.0f} s'}):\n"
                             + self.text())

    def text(self) -> str:
        with self._changed:
            return "".join(self.lines)

    def join(self, timeout: float = WAIT) -> str:
        """All the output, once the process closed it."""
        self._thread.join(timeout)
        return self.text()


class LogWait(logging.Handler):
    """Attached to a logger for a ``with`` block; :meth:`wait_for` waits for a message containing a text."""

    def __init__(self, logger: str = "webui"):
        super().__init__(logging.DEBUG)
        self.logger = logging.getLogger(logger)
        self.messages: list[str] = []
        self._changed = threading.Condition()

    def emit(self, record: logging.LogRecord) -> None:
        with self._changed:
            self.messages.append(record.getMessage())
            self._changed.notify_all()

    def wait_for(self, text: str, timeout: float = WAIT) -> str:
        with self._changed:
            if self._changed.wait_for(lambda: any(text in m for m in self.messages), timeout):
                return next(m for m in self.messages if text in m)
        raise AssertionError(f"no log message with {text!r} within {timeout:.0f} s: {self.messages}")

    def __enter__(self) -> LogWait:
        self._level = self.logger.level
        if self.logger.getEffectiveLevel() > logging.INFO:
            self.logger.setLevel(logging.INFO)
        self.logger.addHandler(self)
        return self

    def __exit__(self, *exc) -> None:
        self.logger.removeHandler(self)
        self.logger.setLevel(self._level)
