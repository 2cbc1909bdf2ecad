"""The import graph of ``webui/`` has no cycle and follows the layers in docs/architecture.md.

Every ``import``/``from ... import`` counts, at any depth (inside functions too), relative ones resolved;
only the bodies of ``if TYPE_CHECKING:`` blocks are left out (they never run). Two graphs are checked:
the units (the sub-packages and top-level modules of ``webui``: ``webui.api``, ``webui.context``, ...),
and the modules (which also catches a cycle inside one sub-package, e.g. ``models.spec`` <->
``models.loader``). A failure names each import of the cycle with its file and line.
"""

from __future__ import annotations

import ast
import functools
import shutil
import sys
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "webui"
ARCHITECTURE = ROOT / "docs" / "architecture.md"

Edge = tuple[str, str, str]  # (importing module, imported module, "path:line")


def _module_name(package_dir: Path, path: Path) -> str:
    parts = list(path.relative_to(package_dir.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _imports(tree: ast.AST) -> list[ast.Import | ast.ImportFrom]:
    """Every import statement in ``tree`` except those under ``if TYPE_CHECKING:``."""
    found: list[ast.Import | ast.ImportFrom] = []

    def visit(node: ast.AST) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child.test):
                for other in child.orelse:
                    visit_node(other)
            else:
                visit_node(child)

    def visit_node(node: ast.AST) -> None:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            found.append(node)
        else:
            visit(node)

    visit(tree)
    return found


def import_edges(package_dir: Path) -> list[Edge]:
    """The imports between the modules of the package in ``package_dir`` (to itself only)."""
    paths = {_module_name(package_dir, p): p for p in sorted(package_dir.rglob("*.py"))}
    modules = frozenset(paths)
    edges: list[Edge] = []
    for module, path in paths.items():
        where = path.relative_to(package_dir.parent).as_posix()
        edges += _file_edges(path.read_text(encoding="utf-8"), module, path.name == "__init__.py", where, modules)
    return edges


@functools.lru_cache(maxsize=4096)  # a copied tree parses only the file that differs
def _file_edges(text: str, module: str, is_package: bool, where: str, modules: frozenset[str]) -> tuple[Edge, ...]:
    top = module.split(".")[0]
    edges: list[Edge] = []
    for node in _imports(ast.parse(text, where)):
        if isinstance(node, ast.Import):
            targets = [alias.name for alias in node.names]
        else:
            if node.level:
                base = module.split(".") if is_package else module.split(".")[:-1]
                base = base[:len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            # ``from pkg import mod`` imports the module pkg.mod; ``from mod import name``, mod
            targets = [f"{source}.{a.name}" if f"{source}.{a.name}" in modules else source for a in node.names]
        for target in targets:
            if target.split(".")[0] != top:
                continue
            while target not in modules and "." in target:
                target = target.rsplit(".", 1)[0]
            if target != module:
                edges.append((module, target, f"{where}:{node.lineno}"))
    return tuple(edges)


def unit_of(module: str) -> str:
    """``webui.api.routes`` -> ``webui.api``; ``webui.context`` -> itself; ``webui`` -> itself."""
    return ".".join(module.split(".")[:2])


def find_cycle(edges: list[Edge], node_of: Callable[[str], str] = lambda m: m) -> list[Edge] | None:
    """One cycle among the nodes ``node_of(module)``, as the imports that make it; None when acyclic."""
    graph: dict[str, dict[str, Edge]] = defaultdict(dict)
    for src, dst, where in edges:
        a, b = node_of(src), node_of(dst)
        if a != b:
            graph[a].setdefault(b, (src, dst, where))
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[Edge] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                ring = path[path.index(nxt):] + [nxt]
                return [graph[a][b] for a, b in zip(ring, ring[1:])]
            if nxt not in state:
                found = visit(nxt)
                if found:
                    return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state:
            found = visit(start)
            if found:
                return found
    return None


def describe(cycle: list[Edge]) -> str:
    return "import cycle:\n" + "\n".join(f"  {where}: {src} imports {dst}" for src, dst, where in cycle)


def documented_layers(text: str) -> list[list[list[str]]]:
    """The layers of the fenced block under "## Import layers" (top first; ``name: units``, a line without a
    colon goes on with the layer above), each a list of columns (``|`` separates units of one layer that
    must not import each other), as unit names."""
    section = text.split("## Import layers", 1)[1]
    block = section.split("```", 2)[1]
    lines: list[str] = []
    for line in block.strip().splitlines():
        if ":" in line or not lines:
            lines.append(line.partition(":")[2])
        else:
            lines[-1] += " " + line
    return [[[f"webui.{n}" if n != "webui" else n for n in column.split()] for column in names.split("|")]
            for names in lines]


def upward_imports(edges: list[Edge], layers: list[list[list[str]]]) -> list[str]:
    """The imports that point to a higher layer or across the columns of one, and the units no layer names."""
    place = {unit: (i, j) for i, layer in enumerate(layers) for j, column in enumerate(layer) for unit in column}
    units = {unit_of(m) for src, dst, _ in edges for m in (src, dst)}
    found = [f"  {unit}: in no layer of docs/architecture.md" for unit in sorted(units - set(place))]
    for src, dst, where in edges:
        a, b = place.get(unit_of(src)), place.get(unit_of(dst))
        if a is not None and b is not None and (a[0] > b[0] or (a[0] == b[0] and a[1] != b[1])):
            found.append(f"  {where}: {src} imports {dst} ({'a higher layer' if a[0] > b[0] else 'beside it'})")
    return found


def violations(package_dir: Path, layers: list[list[list[str]]]) -> str:
    """Everything wrong with the imports of ``package_dir``, one line an import ("" when none)."""
    edges = import_edges(package_dir)
    out = []
    for cycle in (find_cycle(edges, unit_of), find_cycle(edges)):
        if cycle:
            out.append(describe(cycle))
    if upward := upward_imports(edges, layers):
        out.append("imports against the layers:\n" + "\n".join(upward))
    return "\n".join(out)


# --------------------------------------------------------------------------- the real tree


def _layers() -> list[list[list[str]]]:
    return documented_layers(ARCHITECTURE.read_text(encoding="utf-8"))


def test_webui_units_import_without_a_cycle():
    cycle = find_cycle(import_edges(PACKAGE), unit_of)
    assert cycle is None, describe(cycle)


def test_webui_modules_import_without_a_cycle():
    cycle = find_cycle(import_edges(PACKAGE))
    assert cycle is None, describe(cycle)


def test_imports_point_down_the_documented_layers():
    layers = _layers()
    units = {unit_of(_module_name(PACKAGE, p)) for p in PACKAGE.rglob("*.py")}
    listed = [u for layer in layers for column in layer for u in column]
    assert not units - set(listed), f"add these to the layers in docs/architecture.md: {sorted(units - set(listed))}"
    assert not set(listed) - units, f"not in webui/ any more: {sorted(set(listed) - units)}"
    assert len(listed) == len(set(listed)), "a unit is listed twice"
    upward = upward_imports(import_edges(PACKAGE), layers)
    assert not upward, "imports against the layers (docs/architecture.md):\n" + "\n".join(upward)


def test_errors_and_sections_are_leaves():
    """``webui.errors`` imports nothing of webui; ``webui.sections`` (the UI contract) only the standard library."""
    assert not [e for e in import_edges(PACKAGE) if e[0] in ("webui.errors", "webui.sections")]
    for name in ("errors.py", "sections.py"):
        tree = ast.parse((PACKAGE / name).read_text(encoding="utf-8"))
        for node in _imports(tree):
            mods = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
            for mod in mods:
                assert mod.split(".")[0] in sys.stdlib_module_names | {"__future__"}, (name, mod)


def test_moved_names_stay_importable_from_their_old_modules():
    import webui.errors as errors
    import webui.sections as sections
    from webui.models.errors import ModelError
    from webui.pipeline.request import RequestError
    from webui.ui import tabs

    assert RequestError is errors.RequestError and ModelError is errors.ModelError
    for name in ("SECTION_SEP", "UiSection", "UiTab", "collect_sections", "section_field", "section_values"):
        assert getattr(tabs, name) is getattr(sections, name)


# --------------------------------------------------------------------------- the checker on broken trees


def _write(root: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text, encoding="utf-8")
    return root / "pkg"


def test_checker_finds_a_cycle_through_a_function_level_relative_import(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/a/__init__.py": "",
        "pkg/a/x.py": "def f():\n    from pkg.b.y import g\n    return g\n",
        "pkg/b/__init__.py": "",
        "pkg/b/y.py": "import os\n\n\ndef g():\n    from ..a import x\n    return x\n",
        "pkg/c.py": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg.a import x\n",
    })
    edges = import_edges(pkg)
    assert ("pkg.b.y", "pkg.a.x", "pkg/b/y.py:5") in edges
    assert not [e for e in edges if e[0] == "pkg.c"]  # TYPE_CHECKING imports never run
    cycle = find_cycle(edges, unit_of)
    assert cycle is not None
    message = describe(cycle)
    assert "pkg/a/x.py:2: pkg.a.x imports pkg.b.y" in message and "pkg/b/y.py:5: pkg.b.y imports pkg.a.x" in message
    assert find_cycle([e for e in edges if e[0] != "pkg.b.y"], unit_of) is None


def test_checker_finds_a_cycle_inside_one_package(tmp_path):
    pkg = _write(tmp_path, {
        "pkg/__init__.py": "",
        "pkg/m/__init__.py": "",
        "pkg/m/spec.py": "def probe():\n    from pkg.m import loader\n",
        "pkg/m/loader.py": "from pkg.m.spec import probe\n",
    })
    edges = import_edges(pkg)
    assert find_cycle(edges, unit_of) is None  # one unit
    assert "pkg/m/spec.py:2: pkg.m.spec imports pkg.m.loader" in describe(find_cycle(edges))


#: The imports issue 20 removed (each pointed up the layers or closed a cycle): (file, import put back in a function).
REMOVED = [
    ("api/routes.py", "from webui.ui.tabs import collect_sections"),
    ("builtin/controlnet.py", "from webui.ui.tabs import section_field"),
    ("builtin/controlnet.py", "from webui.api.routes import build_router"),
    ("models/merge.py", "from webui.pipeline.request import GenerationRequest"),
    ("models/loader.py", "from webui.previews.approx import approx_image"),
    ("models/spec.py", "from webui.models.loader import build_unet"),
    ("pipeline/generate.py", "from webui.plugins import Hooks"),
]


@pytest.mark.parametrize("path, line", REMOVED, ids=[f"{p}:{line.split()[1]}" for p, line in REMOVED])
def test_putting_back_a_removed_import_fails_naming_it(tmp_path, path, line):
    copy = tmp_path / "webui"
    shutil.copytree(PACKAGE, copy, ignore=shutil.ignore_patterns("__pycache__", "configs", "*.pyc"))
    target = copy / path
    target.write_text(target.read_text(encoding="utf-8") + f"\n\ndef _broken():\n    {line}\n", encoding="utf-8")
    message = violations(copy, _layers())
    lineno = len(target.read_text(encoding="utf-8").splitlines())
    assert f"webui/{path}:{lineno}" in message, message


def test_documented_layers_parse():
    text = "x\n## Import layers\ntext\n```\ntop:    a  b\n        | d\nbottom: c\n```\n"
    layers = documented_layers(text)
    assert layers == [[["webui.a", "webui.b"], ["webui.d"]], [["webui.c"]]]
    edges = [("webui.a", "webui.b", "a.py:1"), ("webui.a", "webui.c", "a.py:2"), ("webui.c", "webui.a", "c.py:1"),
             ("webui.b", "webui.d", "b.py:1"), ("webui.a", "webui.e", "a.py:3")]
    assert upward_imports(edges, layers) == ["  webui.e: in no layer of docs/architecture.md",
                                             "  c.py:1: webui.c imports webui.a (a higher layer)",
                                             "  b.py:1: webui.b imports webui.d (beside it)"]
