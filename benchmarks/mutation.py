"""Mutation score of the numeric core: plant small wrong answers in a module and count how many the tests notice.

    .venv/bin/pip install coverage   # once (not a test dependency)
    .venv/bin/python benchmarks/mutation.py                      # every module below, every mutant
    .venv/bin/python benchmarks/mutation.py --module webui/pipeline/noise.py --sample 60 --seed 1
    .venv/bin/python benchmarks/mutation.py --list webui/prompts/parser.py   # the mutants, without running

How it works (our own tool, in the spirit of mutmut / cosmic-ray):

1. The working tree's tracked files are copied to a scratch folder (``--scratch``, default
   ``/tmp/webui-mutation``), so the repository itself is never modified.
2. Each module's test files (``MODULES`` below) run once under ``coverage`` with one context per test: every line
   of the module gets the list of tests that execute it.
3. Mutants are made from the module's syntax tree, one change each: arithmetic operators (``+``/``-``,
   ``*``/``/``, ``**`` -> ``*``, ``//`` -> ``/``, ``%`` -> ``/``), comparisons (``<`` <-> ``<=``, ``>`` <-> ``>=``,
   ``==`` <-> ``!=``, ``is`` <-> ``is not``, ``in`` <-> ``not in``), ``and`` <-> ``or``, a removed unary ``-`` or
   ``not``, numbers (``n`` -> ``n + 1``; ``0.0``/``1.0`` style floats -> ``x + 1`` and ``x / 2``... see
   :func:`_number_mutants`), ``True`` <-> ``False``, ``None`` defaults kept, and strings (``"s"`` -> ``"XXsXX"``)
   except docstrings, f-string pieces, type annotations, and the text of ``raise`` statements and log calls
   (message wording is not behaviour). Lines marked ``# pragma: no mutate`` are skipped.
4. Each mutant is written into the scratch copy and only the tests covering its lines run, in a child forked from a
   parent that has torch, diffusers, transformers and pytest imported (``-x``: the first failure kills it). Exit
   status 0 = survived; a failure, a collection error or running past ``--timeout-factor`` x the tests' normal time
   = killed. A mutant on a line no test executes is counted as *not covered* (survived).
5. ``benchmarks/mutation_equivalent.txt`` lists mutants judged equivalent by hand (``module:line:description``,
   with the reason after ``#``); they are excluded from the score.

Prints one JSON object: per module mutants, killed, survived (with their description), not covered, equivalent
excluded, and the score = killed / (mutants - equivalent). Issue 29's target: >= 90 % per module. Slow on two
cores (minutes per module with ``--sample``, hours for everything): run it outside CI.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import json
import os
import random
import shutil
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

#: module -> the test files that exercise it (coverage then narrows each line to the tests that run it)
MODULES: dict[str, list[str]] = {
    "webui/sampling/schedules.py": ["tests/test_schedule_oracles.py", "tests/test_sampler_parity.py"],
    "webui/sampling/samplers.py": ["tests/test_sampler_parity.py", "tests/test_sampler_sanity.py",
                                   "tests/test_extra_samplers.py"],
    "webui/sampling/extra_samplers.py": ["tests/test_extra_samplers.py", "tests/test_sampler_parity.py",
                                         "tests/test_sampler_sanity.py"],
    "webui/sampling/denoiser.py": ["tests/test_schedule_oracles.py", "tests/test_sampler_parity.py",
                                   "tests/test_pipeline.py", "tests/test_vpred_sdxl.py"],
    "webui/sampling/registry.py": ["tests/test_sampler_parity.py", "tests/test_infotext.py",
                                   "tests/test_img2img_options.py"],
    "webui/sampling/brownian.py": ["tests/test_sampler_parity.py"],
    "webui/sampling/flow.py": ["tests/test_flow_models.py"],
    "webui/pipeline/guidance.py": ["tests/test_pipeline_parity.py", "tests/test_pipeline.py",
                                   "tests/test_sdxl_conditioning.py", "tests/test_inpaint.py",
                                   "tests/test_img2img_options.py", "tests/test_vpred_sdxl.py",
                                   "tests/test_controlnet_rules.py", "tests/test_flow_controlnet.py",
                                   "tests/test_flow_models.py"],
    "webui/pipeline/noise.py": ["tests/test_noise.py", "tests/test_pipeline_parity.py", "tests/test_pipeline.py",
                                "tests/test_philox.py",
                                "tests/test_img2img.py"],
    "webui/controlnet/patch.py": ["tests/test_controlnet_rules.py", "tests/test_controlnet.py",
                                  "tests/test_flow_controlnet.py", "tests/test_controlnet_inpaint.py",
                                  "tests/test_t2i_adapter.py", "tests/test_controlnet_a1111_api.py"],
    "webui/networks/lora.py": ["tests/test_lora.py", "tests/test_flow_models.py", "tests/test_train_lora.py"],
    "webui/prompts/parser.py": ["tests/test_prompt_parser.py", "tests/test_prompt_encoding.py"],
    "webui/infotext.py": ["tests/test_infotext.py", "tests/test_pnginfo.py", "tests/test_compat_options.py"],
}
EQUIVALENT_FILE = ROOT / "benchmarks" / "mutation_equivalent.txt"
#: imported once in the parent, so each forked child starts with them loaded
PRELOAD = ("torch", "numpy", "PIL.Image", "safetensors.torch", "transformers", "diffusers", "pytest", "hypothesis",
           "fastapi", "httpx")
_LOG_NAMES = {"debug", "info", "warning", "warn", "error", "exception", "critical", "log"}


@dataclass
class Mutant:
    module: str
    line: int
    end_line: int
    start: tuple[int, int]  # (line, col) of the replaced source segment
    end: tuple[int, int]
    replacement: str
    description: str
    stmt_line: int = 0  # first line of the innermost statement holding the change (what coverage records)
    use_lines: tuple[int, ...] = ()  # a module-level constant's mutant: the lines that read the constant

    @property
    def key(self) -> str:
        return f"{self.module}:{self.line}:{self.start[1]}:{self.description}"


@dataclass
class Result:
    module: str
    mutants: int = 0
    killed: int = 0
    timeouts: int = 0
    not_covered: list[str] = field(default_factory=list)
    survived: list[str] = field(default_factory=list)
    equivalent: list[str] = field(default_factory=list)

    def score(self) -> float | None:
        counted = self.mutants - len(self.equivalent)
        return round(self.killed / counted, 4) if counted else None


# --------------------------------------------------------------------------------------------------- mutants


_BINOPS = {ast.Add: ast.Sub, ast.Sub: ast.Add, ast.Mult: ast.Div, ast.Div: ast.Mult, ast.Pow: ast.Mult,
           ast.FloorDiv: ast.Div, ast.Mod: ast.Div}
_CMPOPS = {ast.Lt: ast.LtE, ast.LtE: ast.Lt, ast.Gt: ast.GtE, ast.GtE: ast.Gt, ast.Eq: ast.NotEq, ast.NotEq: ast.Eq,
           ast.Is: ast.IsNot, ast.IsNot: ast.Is, ast.In: ast.NotIn, ast.NotIn: ast.In}


def _number_mutants(value: int | float) -> list[tuple[int | float, str]]:
    if isinstance(value, bool):
        return [(not value, f"{value} -> {not value}")]
    if isinstance(value, int):
        return [(value + 1, f"{value} -> {value + 1}")]
    out = [(value + 1.0, f"{value!r} -> {value + 1.0!r}")]
    if value not in (0.0,):
        out.append((value / 2, f"{value!r} -> {value / 2!r}"))
    return out


class _Finder(ast.NodeVisitor):
    """Walks a module and collects the mutants (see the module docstring for the operators)."""

    def __init__(self, module: str, source: str):
        self.module = module
        self.source = source
        self.lines = source.splitlines()
        self.found: list[Mutant] = []
        self.skip_nodes: set[int] = set()

    # nodes whose constants are not behaviour
    def _skip_subtree(self, node: ast.AST | None) -> None:
        if node is not None:
            self.skip_nodes.update(id(n) for n in ast.walk(node))

    def _add(self, node: ast.AST, new: ast.AST, what: str) -> None:
        if id(node) in self.skip_nodes or "pragma: no mutate" in self.lines[node.lineno - 1]:
            return
        text = ast.unparse(new)
        if not isinstance(new, (ast.Constant, ast.Name)):
            text = f"({text})"
        self.found.append(Mutant(self.module, node.lineno, node.end_lineno, (node.lineno, node.col_offset),
                                 (node.end_lineno, node.end_col_offset), text, what))

    def visit_Module(self, node):
        self._docstring(node)
        self.generic_visit(node)

    def _docstring(self, node) -> None:
        body = getattr(node, "body", [])
        if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant) \
                and isinstance(body[0].value.value, str):
            self._skip_subtree(body[0])

    def visit_Expr(self, node):
        if isinstance(node.value, ast.Constant) and isinstance(node.value.value, str):
            self._skip_subtree(node)  # a bare string (an attribute's docstring) does nothing when it runs
        else:
            self.generic_visit(node)

    def visit_FunctionDef(self, node):
        self._docstring(node)
        self._skip_subtree(node.returns)
        for arg in (*node.args.posonlyargs, *node.args.args, *node.args.kwonlyargs, node.args.vararg,
                    node.args.kwarg):
            if arg is not None:
                self._skip_subtree(arg.annotation)
        for deco in node.decorator_list:
            self._skip_subtree(deco)
        self.generic_visit(node)

    visit_AsyncFunctionDef = visit_FunctionDef

    def visit_ClassDef(self, node):
        self._docstring(node)
        self.generic_visit(node)

    def visit_AnnAssign(self, node):
        self._skip_subtree(node.annotation)
        self.generic_visit(node)

    def visit_JoinedStr(self, node):
        for part in node.values:
            if isinstance(part, ast.Constant):
                self._skip_subtree(part)
            elif isinstance(part, ast.FormattedValue):
                self._skip_subtree(part.format_spec)
        self.generic_visit(node)

    def visit_Raise(self, node):
        for sub in ast.walk(node):
            if isinstance(sub, (ast.Constant, ast.JoinedStr)) and isinstance(getattr(sub, "value", None), str):
                self._skip_subtree(sub)
            if isinstance(sub, ast.JoinedStr):
                self._skip_subtree(sub)
        self.generic_visit(node)

    def visit_Call(self, node):
        func = node.func
        name = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
        owner = getattr(func.value, "id", getattr(func.value, "attr", "")) if isinstance(func, ast.Attribute) else ""
        if name in _LOG_NAMES and owner in ("log", "logger", "logging", "LOG", "_log", "warnings") or \
                name == "warn" or name == "TypeVar":
            for arg in node.args:
                self._skip_subtree(arg)
        self.generic_visit(node)

    def visit_If(self, node):
        test = node.test
        if isinstance(test, ast.Name) and test.id == "TYPE_CHECKING":
            self._skip_subtree(node)
        self.generic_visit(node)

    def visit_BinOp(self, node):
        swap = _BINOPS.get(type(node.op))
        if swap is not None:
            self._add(node, ast.BinOp(node.left, swap(), node.right),
                      f"{type(node.op).__name__} -> {swap.__name__}")
        self.generic_visit(node)

    def visit_AugAssign(self, node):
        swap = _BINOPS.get(type(node.op))
        if swap is not None and id(node) not in self.skip_nodes:
            new = ast.AugAssign(node.target, swap(), node.value)
            text = ast.unparse(new)
            self.found.append(Mutant(self.module, node.lineno, node.end_lineno, (node.lineno, node.col_offset),
                                     (node.end_lineno, node.end_col_offset), text,
                                     f"{type(node.op).__name__}= -> {swap.__name__}="))
        self.generic_visit(node)

    def visit_Compare(self, node):
        for i, op in enumerate(node.ops):
            swap = _CMPOPS.get(type(op))
            if swap is not None:
                ops = list(node.ops)
                ops[i] = swap()
                self._add(node, ast.Compare(node.left, ops, node.comparators),
                          f"{type(op).__name__} -> {swap.__name__}")
        self.generic_visit(node)

    def visit_BoolOp(self, node):
        other = ast.Or() if isinstance(node.op, ast.And) else ast.And()
        self._add(node, ast.BoolOp(other, node.values), f"{type(node.op).__name__} -> {type(other).__name__}")
        self.generic_visit(node)

    def visit_UnaryOp(self, node):
        if isinstance(node.op, (ast.USub, ast.Not)):
            self._add(node, node.operand, f"drop {type(node.op).__name__}")
            if isinstance(node.op, ast.USub) and isinstance(node.operand, ast.Constant):
                self._skip_subtree(node.operand)  # -1 -> 0 is the number rule's job on the whole
                for value, what in _number_mutants(-node.operand.value) \
                        if isinstance(node.operand.value, (int, float)) else ():
                    self._add(node, ast.Constant(value), what)
        self.generic_visit(node)

    def visit_Constant(self, node):
        value = node.value
        if isinstance(value, (bool, int, float)) and not isinstance(value, complex):
            for new, what in _number_mutants(value):
                self._add(node, ast.Constant(new), what)
        elif isinstance(value, str):
            self._add(node, ast.Constant(f"XX{value}XX"), f"string {value[:20]!r} -> 'XX...XX'")


def find_mutants(module: str, root: Path = ROOT) -> list[Mutant]:
    source = (root / module).read_text(encoding="utf-8")
    finder = _Finder(module, source)
    tree = ast.parse(source)
    finder.visit(tree)
    # coverage records a statement on its first line only: a change on a continuation line of a multi-line
    # statement (a call's later arguments, a list's items) is run whenever that first line is
    statements = [(n.lineno, n.end_lineno or n.lineno) for n in ast.walk(tree) if isinstance(n, ast.stmt)]
    # a module-level constant runs at import, under every test; the tests that matter are those running the lines
    # that read it
    reads: dict[str, set[int]] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load):
            reads.setdefault(node.id, set()).add(node.lineno)
    constants: dict[int, tuple[int, set[str]]] = {}
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)):
            targets = node.targets if isinstance(node, ast.Assign) else [node.target]
            names = {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
            for line in range(node.lineno, (node.end_lineno or node.lineno) + 1):
                constants[line] = (node.lineno, names)
    seen, out = set(), []
    for m in sorted(finder.found, key=lambda m: (m.start, m.end, m.description)):
        if (m.start, m.end, m.replacement) not in seen:
            seen.add((m.start, m.end, m.replacement))
            holding = [a for a, b in statements if a <= m.line and b >= m.end_line]
            m.stmt_line = max(holding) if holding else m.line
            if m.line in constants:
                first, names = constants[m.line]
                m.use_lines = tuple(sorted(line for name in names for line in reads.get(name, ())
                                           if line != first))
            out.append(m)
    return out


def apply(source: str, m: Mutant) -> str:
    lines = source.splitlines(keepends=True)
    offsets = [0]
    for line in lines:
        offsets.append(offsets[-1] + len(line.encode("utf-8")))
    data = source.encode("utf-8")
    start = offsets[m.start[0] - 1] + m.start[1]
    end = offsets[m.end[0] - 1] + m.end[1]
    return (data[:start] + m.replacement.encode("utf-8") + data[end:]).decode("utf-8")


# --------------------------------------------------------------------------------------------------- running


def make_scratch(scratch: Path) -> None:
    """The tracked files of the working tree (as they are now) in ``scratch``, with the venv linked."""
    if scratch.exists():
        shutil.rmtree(scratch)
    scratch.mkdir(parents=True)
    files = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    for name in filter(None, files):
        src = ROOT / name.decode()
        if src.is_file():
            dst = scratch / name.decode()
            dst.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(src, dst)
    (scratch / ".venv").symlink_to(ROOT / ".venv")


def _pytest_args(tests: list[str]) -> list[str]:
    return [*tests, "-x", "-q", "-p", "no:cacheprovider", "-p", "no:xdist", "-p", "no:randomly",
            "--no-header", "-W", "ignore", "--tb=no"]


def coverage_map(scratch: Path, module: str, tests: list[str]) -> tuple[dict[int, set[str]], float, dict[str, float]]:
    """line -> test ids executing it, the tests' run time (seconds), and each test's own time (setup + call +
    teardown), from one run under coverage. Lines run at import (module constants, defaults) map to all of
    ``tests``; tests failing without any mutant are left out (they would "kill" every mutant) and named on
    stderr."""
    stem = Path(module).stem
    data_file = scratch / f".coverage.{stem}"
    failed_file = scratch / f".failed.{stem}"
    times_file = scratch / f".times.{stem}"
    plugin = scratch / "_mutation_contexts.py"
    plugin.write_text(
        "import coverage\n"
        f"_cov = coverage.Coverage(data_file={str(data_file)!r}, include=[{str(scratch / module)!r}])\n"
        "_failed = []\n"
        "_times = {}\n"
        "def pytest_configure(config):\n"
        "    _cov.start()\n"
        "def pytest_runtest_setup(item):\n"
        "    _cov.switch_context(item.nodeid)\n"
        "def pytest_runtest_logreport(report):\n"
        "    _times[report.nodeid] = _times.get(report.nodeid, 0.0) + report.duration\n"
        "    if report.failed:\n"
        "        _failed.append(report.nodeid)\n"
        "def pytest_unconfigure(config):\n"
        "    _cov.stop(); _cov.save()\n"
        f"    open({str(failed_file)!r}, 'w').write('\\n'.join(_failed))\n"
        "    import json\n"
        f"    open({str(times_file)!r}, 'w').write(json.dumps(_times))\n")
    started = time.monotonic()
    subprocess.run([sys.executable, "-m", "pytest", *tests, "-q", "-p", "no:cacheprovider", "-p", "no:xdist",
                    "-p", "_mutation_contexts", "-W", "ignore", "--tb=no"], cwd=scratch,
                   env={**os.environ, "PYTHONPATH": str(scratch), "PYTHONDONTWRITEBYTECODE": "1"},
                   stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    took = time.monotonic() - started
    import coverage

    failed = set(filter(None, failed_file.read_text().splitlines())) if failed_file.is_file() else set()
    if failed:
        print(f"[{module}] failing without a mutant, left out: {sorted(failed)}", file=sys.stderr)
    times = json.loads(times_file.read_text()) if times_file.is_file() else {}
    every_test = {t for t in times if t not in failed} or set(tests)
    data = coverage.CoverageData(basename=str(data_file))
    data.read()
    by_line: dict[int, set[str]] = {}
    for line, contexts in (data.contexts_by_lineno(str(scratch / module)) or {}).items():
        named = {c for c in contexts if c and c not in failed}
        # a line run at import (module constants, defaults) may matter to any test: all of them, by id, so that
        # --test-budget picks the quickest
        by_line[line] = every_test if "" in contexts else named
    return {k: v for k, v in by_line.items() if v}, took, times


def tree_digest(scratch: Path) -> str:
    """A digest of the files copied into ``scratch`` that tests can depend on (not docs or benchmarks)."""
    h = hashlib.sha256()
    for path in sorted(p for p in scratch.rglob("*") if p.is_file() and ".venv" not in p.parts
                       and p.relative_to(scratch).parts[0] not in ("docs", "benchmarks") and p.suffix != ".md"
                       and not p.name.startswith((".coverage", ".times", ".failed", "_mutation_contexts"))):
        h.update(str(path.relative_to(scratch)).encode() + b"\0" + path.read_bytes())
    return h.hexdigest()[:16]


def cached_coverage_map(scratch: Path, module: str, tests: list[str], digest: str
                        ) -> tuple[dict[int, set[str]], float, dict[str, float]]:
    """:func:`coverage_map`, kept in ``~/.cache/webui-mutation`` per module and tree digest (a rerun of an unchanged
    tree skips the coverage run, minutes per module)."""
    listed = hashlib.sha256("\n".join(tests).encode()).hexdigest()[:8]  # the module's test files are part of the key
    cache = Path.home() / ".cache" / "webui-mutation" / f"{Path(module).stem}-{digest}-{listed}.json"
    if cache.is_file():
        data = json.loads(cache.read_text())
        return {int(k): set(v) for k, v in data["by_line"].items()}, data["took"], data["times"]
    by_line, took, times = coverage_map(scratch, module, tests)
    cache.parent.mkdir(parents=True, exist_ok=True)
    cache.write_text(json.dumps({"by_line": {k: sorted(v) for k, v in by_line.items()}, "took": took,
                                 "times": times}))
    return by_line, took, times


def cheapest_first(tests: set[str], times: dict[str, float], budget: float = 0.0) -> list[str]:
    """The tests to run for one mutant, in the order most likely to kill it soonest under ``-x``: files by the
    summed time of their selected tests (a file's fixtures are set up once), and within a file the quickest
    test first. With ``budget`` (seconds of the tests' recorded time), only the quickest tests that fit in it
    (at least one): a mutant they miss counts as survived, so the score is then a lower bound."""
    ranked = sorted(tests, key=lambda t: (times.get(t, 1.0), t))
    if budget:
        kept, spent = [], 0.0
        for t in ranked:
            if kept and spent + times.get(t, 1.0) > budget:
                break
            kept.append(t)
            spent += times.get(t, 1.0)
        ranked = kept
    per_file: dict[str, list[str]] = {}
    for t in ranked:
        per_file.setdefault(t.split("::", 1)[0], []).append(t)
    ordered = sorted(per_file.values(), key=lambda ts: sum(times.get(t, 1.0) for t in ts))
    return [t for ts in ordered for t in ts]


def _preload() -> None:
    for name in PRELOAD:
        try:
            __import__(name)
        except Exception:  # noqa: BLE001 - a missing optional package only costs time in the child
            pass


def run_mutant(scratch: Path, m: Mutant, original: str, tests: list[str], timeout: float) -> str:
    """'killed', 'survived' or 'timeout' (counted as killed)."""
    target = scratch / m.module
    target.write_text(apply(original, m), encoding="utf-8")
    try:
        pid = os.fork()
        if pid == 0:  # the child: a fresh pytest over the mutated tree
            try:
                os.chdir(scratch)
                sys.path.insert(0, str(scratch))
                devnull = os.open(os.devnull, os.O_WRONLY)
                os.dup2(devnull, 1)
                os.dup2(devnull, 2)
                import pytest

                code = pytest.main(_pytest_args(tests))
            except BaseException:  # noqa: BLE001
                code = 3
            os._exit(int(code))
        deadline = time.monotonic() + timeout
        while True:
            done, status = os.waitpid(pid, os.WNOHANG)
            if done:
                return "survived" if os.waitstatus_to_exitcode(status) == 0 else "killed"
            if time.monotonic() > deadline:
                os.kill(pid, signal.SIGKILL)
                os.waitpid(pid, 0)
                return "timeout"
            time.sleep(0.05)
    finally:
        target.write_text(original, encoding="utf-8")


def equivalent_keys() -> set[str]:
    if not EQUIVALENT_FILE.is_file():
        return set()
    return {line.split("#", 1)[0].strip() for line in EQUIVALENT_FILE.read_text().splitlines()
            if line.split("#", 1)[0].strip()}


def _read_log(path: Path | None) -> dict[str, str]:
    verdicts: dict[str, str] = {}
    if path and path.is_file():
        for line in path.read_text().splitlines():
            if line.strip():
                row = json.loads(line)
                verdicts[row["key"]] = row["verdict"]
    return verdicts


def _append_log(path: Path | None, key: str, verdict: str) -> None:
    if path is None:
        return
    with open(path, "a", encoding="utf-8") as f:  # one short line per write: O_APPEND keeps workers' lines whole
        f.write(json.dumps({"key": key, "verdict": verdict}) + "\n")


def _run_share(scratch: Path, module: str, share: list[Mutant], by_line: dict[int, set[str]],
               times: dict[str, float], timeout: float, log: Path | None, threads: int, worker: int,
               budget: float = 0.0) -> dict[str, str]:
    """One worker's mutants, in its own scratch copy; verdicts by key (also appended to ``log``)."""
    if threads:
        import torch

        torch.set_num_threads(threads)
        # tests/conftest.py gives each pytest process cores / PYTEST_XDIST_WORKER_COUNT torch threads: without this
        # every mutant's pytest took 2 threads and the oversubscribed cores ran ~5x slower
        os.environ["PYTEST_XDIST_WORKER_COUNT"] = str(max(1, (os.cpu_count() or 1) // threads))
    original = (scratch / module).read_text(encoding="utf-8")
    out: dict[str, str] = {}
    started = time.monotonic()
    for i, m in enumerate(share, 1):
        tests = set().union(*(by_line.get(line, set()) for line in range(m.stmt_line or m.line, m.end_line + 1)))
        users = set().union(*(by_line.get(line, set()) for line in m.use_lines)) if m.use_lines else set()
        if users:  # a module-level constant: the tests that run the code reading it
            tests = users
        if not tests:
            verdict = "not covered"
        else:
            verdict = run_mutant(scratch, m, original, cheapest_first(tests, times, budget), timeout=timeout)
        out[m.key] = verdict
        _append_log(log, m.key, verdict)
        print(f"[{module} w{worker}] {i}/{len(share)} {verdict:11s} {m.key}  ({time.monotonic() - started:.0f} s)",
              file=sys.stderr, flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--module", action="append", help="a module of MODULES (repeatable; default: all)")
    parser.add_argument("--sample", type=int, default=0, help="mutate only this many random mutants per module")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--scratch", default="/tmp/webui-mutation")
    parser.add_argument("--jobs", type=int, default=1,
                        help="mutants run at once, each worker in its own scratch copy (torch threads split)")
    parser.add_argument("--log", default="", help="JSON lines of verdicts, appended as they come; verdicts already "
                        "there are reused, so an interrupted run resumes")
    parser.add_argument("--recheck-survivors", action="store_true",
                        help="with --log: run the logged survivors, not-covered and timed-out mutants again, e.g. "
                        "after new tests or on a quieter machine")
    parser.add_argument("--timeout-factor", type=float, default=3.0)
    parser.add_argument("--test-budget", type=float, default=0.0,
                        help="run at most this many seconds (as timed in the coverage run) of the quickest covering "
                        "tests per mutant; 0 = all of them. A mutant they miss counts as survived (a lower bound)")
    parser.add_argument("--list", metavar="MODULE", help="print the mutants of MODULE and stop")
    parser.add_argument("--out", default="", help="also write the JSON here")
    args = parser.parse_args()
    if args.list:
        for m in find_mutants(args.list):
            print(f"{m.line}: {m.description}  ->  {m.replacement[:60]}")
        return
    try:
        import coverage  # noqa: F401
    except ImportError:
        sys.exit("benchmarks/mutation.py needs coverage: .venv/bin/pip install coverage")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
    os.environ["PYTHONDONTWRITEBYTECODE"] = "1"
    sys.dont_write_bytecode = True
    modules = args.module or list(MODULES)
    unknown = [m for m in modules if m not in MODULES]
    if unknown:
        sys.exit(f"unknown module(s) {unknown}; choose from {list(MODULES)}")
    jobs = max(1, args.jobs)
    scratches = [Path(args.scratch) / f"w{i}" for i in range(jobs)]
    for scratch in scratches:
        make_scratch(scratch)
    threads = max(1, (os.cpu_count() or 1) // jobs) if jobs > 1 else 0
    _preload()
    log = Path(args.log) if args.log else None
    logged = _read_log(log)
    equivalent = equivalent_keys()
    digest = tree_digest(scratches[0])
    report: dict[str, dict] = {}
    for module in modules:
        res = Result(module)
        mutants = find_mutants(module, scratches[0])
        keys = {m.key for m in mutants}
        stale = sorted(k for k in equivalent if k.startswith(module + ":") and k not in keys)
        for key in stale:  # the code moved or changed: the entry no longer names a mutant, so it excludes nothing
            print(f"warning: {EQUIVALENT_FILE.name} names no mutant of today's code: {key}", file=sys.stderr)
        if args.sample and len(mutants) > args.sample:
            mutants = sorted(random.Random(args.seed).sample(mutants, args.sample), key=lambda m: m.start)
        rerun = {"survived", "not covered", "timeout"} if args.recheck_survivors else set()
        verdicts = {m.key: logged[m.key] for m in mutants
                    if m.key in logged and logged[m.key] not in rerun and m.key not in equivalent}
        pending = [m for m in mutants if m.key not in verdicts and m.key not in equivalent]
        took = 0.0
        if pending:
            by_line, took, times = cached_coverage_map(scratches[0], module, MODULES[module], digest)
            timeout = args.timeout_factor * (min(took, args.test_budget) if args.test_budget else took) + 30
            shares = [pending[i::jobs] for i in range(jobs)]
            if jobs == 1:
                verdicts.update(_run_share(scratches[0], module, shares[0], by_line, times, timeout, log, 0, 0,
                                           args.test_budget))
            else:
                pids = []
                for w, share in enumerate(shares):
                    pid = os.fork()
                    if pid == 0:
                        code = 0
                        try:
                            _run_share(scratches[w], module, share, by_line, times, timeout, log, threads, w,
                                       args.test_budget)
                        except BaseException:  # noqa: BLE001
                            code = 1
                        os._exit(code)
                    pids.append(pid)
                for pid in pids:
                    os.waitpid(pid, 0)
                fresh = _read_log(log) if log else {}
                verdicts.update({m.key: fresh[m.key] for m in pending if m.key in fresh})
        for m in mutants:
            res.mutants += 1
            verdict = "equivalent" if m.key in equivalent else verdicts.get(m.key, "lost")
            if verdict == "equivalent":
                res.equivalent.append(m.key)
            elif verdict == "not covered":
                res.not_covered.append(m.key)
            elif verdict in ("survived", "lost"):
                res.survived.append(m.key)
            else:
                res.killed += 1
                res.timeouts += verdict == "timeout"
        report[module] = {"mutants": res.mutants, "killed": res.killed, "timeouts": res.timeouts,
                          "survived": res.survived, "not_covered": res.not_covered,
                          "equivalent_excluded": len(res.equivalent), "score": res.score(),
                          "sampled": bool(args.sample), "tests_seconds": round(took, 1),
                          "test_budget_s": args.test_budget or None}
    text = json.dumps(report, indent=1)
    if args.out:
        Path(args.out).write_text(text)
    print(text)
    print("\nmodule | mutants | killed | survived | not covered | equivalent | score", file=sys.stderr)
    for module, r in report.items():
        print(f"{module} | {r['mutants']} | {r['killed']} | {len(r['survived'])} | {len(r['not_covered'])} | "
              f"{r['equivalent_excluded']} | {r['score']}", file=sys.stderr)


if __name__ == "__main__":
    main()
