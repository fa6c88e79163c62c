"""The package's import graph: no cycles, dependencies point one way, no private names across modules.

Every module of siglip2/, kernels/ (installed as siglip2.kernels) and bench/ is parsed with `ast`; every import
counts, at module level or inside a function, under `if TYPE_CHECKING:` or not. From them:

- the module graph has no cycle (a package's `__init__` counts as a module; importing `a.b.c` is one edge to
  `a.b.c`, since its parent packages are already loaded whenever one of their modules runs);
- each folder (and each top-level module) of siglip2 imports only what `MAY_IMPORT` below allows, the table that
  docs/design.md's map spells out: kernels import nothing of siglip2's; the library (models, checkpoints,
  processing, data, integrations and the public modules siglip2, siglip2.fast, siglip2.reference,
  siglip2.pipeline) never imports an application (the CLI, profile, train, embed_dataset); no application imports
  another one;
- no module uses another module's private name: `from x import _y`, `x._y` on an imported module, or a private
  module (`_aot`, `_utils`: a path part that starts with `_`) from outside the package it belongs to.
"""

from __future__ import annotations

import ast
import os

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

KERNELS = "siglip2.kernels"
# folder (or top-level module) -> the folders and modules of siglip2 it may import; docs/design.md has the map
LIBRARY = {
    "siglip2.checkpoints": set(),
    "siglip2.models": {KERNELS, "siglip2.checkpoints"},
    "siglip2.processing": {"siglip2.checkpoints"},
    "siglip2.data": {"siglip2.processing"},
    "siglip2.integrations": {KERNELS, "siglip2.models"},
    "siglip2.reference": {"siglip2.models"},
    "siglip2.fast": {"siglip2.models", "siglip2.integrations"},
    "siglip2.pipeline": {"siglip2.checkpoints", "siglip2.models", "siglip2.processing", "siglip2.fast"},
    "siglip2": {"siglip2.checkpoints", "siglip2.models", "siglip2.processing", "siglip2.pipeline"},
}
APPLICATIONS = ("siglip2.__main__", "siglip2.profile", "siglip2.train", "siglip2.embed_dataset")
MAY_IMPORT = {KERNELS: set(), **LIBRARY, **{app: {KERNELS, *LIBRARY} for app in APPLICATIONS}}


def _modules() -> dict[str, str]:
    """Dotted module name -> file, for siglip2/ (kernels/ as siglip2.kernels) and bench/ (as bench.<name>)."""
    out = {}
    for top, prefix in (("siglip2", "siglip2"), ("kernels", KERNELS), ("bench", "bench")):
        for dirpath, dirnames, filenames in os.walk(os.path.join(ROOT, top)):
            dirnames[:] = sorted(d for d in dirnames if d != "__pycache__")
            rel = os.path.relpath(dirpath, os.path.join(ROOT, top))
            package = prefix if rel == "." else f"{prefix}.{rel.replace(os.sep, '.')}"
            for f in sorted(filenames):
                if f.endswith(".py"):
                    out[package if f == "__init__.py" else f"{package}.{f[:-3]}"] = os.path.join(dirpath, f)
    return out


MODULES = _modules()


def _package(module: str) -> str:
    """The package a module's relative imports start from."""
    is_init = os.path.basename(MODULES[module]) == "__init__.py"
    return module if is_init else module.rpartition(".")[0]


def _absolute(importer: str, name: str | None, level: int) -> str:
    if level == 0:
        assert name is not None
        if importer.startswith("bench.") and f"bench.{name.split('.')[0]}" in MODULES:
            return f"bench.{name}"  # bench scripts import each other by file name (their folder is on sys.path)
        return name
    base = _package(importer)
    for _ in range(level - 1):
        base = base.rpartition(".")[0]
    return f"{base}.{name}" if name else base


def _private(part: str) -> bool:
    return part.startswith("_") and not (part.startswith("__") and part.endswith("__"))


class _Imports(ast.NodeVisitor):
    """One module's imports: edges to known modules, the names bound to modules, and private-name uses."""

    def __init__(self, module: str) -> None:
        self.module, self.edges, self.bound, self.private = module, set(), {}, []

    def _use(self, target: str, node: ast.AST, via: str) -> None:
        """`target` (a known module) is imported: an edge, and a private module only from inside its package."""
        self.edges.add(target)
        parts = target.split(".")
        for i, part in enumerate(parts):
            owner = ".".join(parts[:i])
            if _private(part) and not (self.module == owner or self.module.startswith(owner + ".")):
                self.private.append(f"{self.module}:{node.lineno}: {via} (private module of {owner})")

    def visit_Import(self, node: ast.Import) -> None:
        for alias in node.names:
            name = _absolute(self.module, alias.name, 0)
            if name in MODULES:
                self._use(name, node, f"import {alias.name}")
            if alias.asname:
                self.bound[alias.asname] = name
            else:
                self.bound[alias.name.split(".")[0]] = _absolute(self.module, alias.name.split(".")[0], 0)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        base = _absolute(self.module, node.module, node.level)
        dots = "." * node.level + (node.module or "")
        for alias in node.names:
            sub = f"{base}.{alias.name}"
            if sub in MODULES:
                self._use(sub, node, f"from {dots} import {alias.name}")
                self.bound[alias.asname or alias.name] = sub
            elif base in MODULES:
                self._use(base, node, f"from {dots} import {alias.name}")
                if _private(alias.name):
                    self.private.append(f"{self.module}:{node.lineno}: from {dots} import {alias.name}")

    def resolve(self, node: ast.expr) -> str | None:
        """The module an expression names (`m`, `pkg.sub`), from this module's imports, or None."""
        if isinstance(node, ast.Name):
            return self.bound.get(node.id)
        if isinstance(node, ast.Attribute):
            base = self.resolve(node.value)
            if base is not None and f"{base}.{node.attr}" in MODULES:
                return f"{base}.{node.attr}"
        return None

    def check_attributes(self, tree: ast.AST) -> None:
        for node in ast.walk(tree):
            if not isinstance(node, ast.Attribute):
                continue
            base = self.resolve(node.value)
            if base not in MODULES or base == self.module:  # another package's private names are its business
                continue
            what = f"{ast.unparse(node.value)}.{node.attr}"
            if f"{base}.{node.attr}" in MODULES:
                self._use(f"{base}.{node.attr}", node, what)
            elif _private(node.attr):
                self.private.append(f"{self.module}:{node.lineno}: {what} (a private name of {base})")


def _scan_file(module: str, path: str) -> _Imports:
    with open(path, encoding="utf-8") as f:
        tree = ast.parse(f.read(), path)
    v = _Imports(module)
    v.visit(tree)
    v.check_attributes(tree)
    v.edges.discard(module)
    return v


def _scan() -> dict[str, _Imports]:
    return {module: _scan_file(module, path) for module, path in MODULES.items()}


SCAN = _scan()


def _unit(module: str) -> str | None:
    """The folder (or top-level module) of siglip2 that `module` belongs to: a key of MAY_IMPORT."""
    for unit in sorted(MAY_IMPORT, key=len, reverse=True):
        if module == unit or (unit != "siglip2" and module.startswith(unit + ".")):
            return unit
    return None


def _cycle(edges: dict[str, set[str]]) -> list[str] | None:
    """One cycle of the graph as a path [a, b, ..., a], or None (iterative depth-first search)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    for start in sorted(edges):
        if state.get(start):
            continue
        path, stack = [start], [iter(sorted(edges[start]))]
        state[start] = 1
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                state[path.pop()] = 2
                stack.pop()
            elif state.get(nxt) == 1:
                return [*path[path.index(nxt) :], nxt]
            elif not state.get(nxt):
                state[nxt] = 1
                path.append(nxt)
                stack.append(iter(sorted(edges.get(nxt, ()))))
    return None


def test_the_scan_sees_the_package():
    """A sanity check of the parser itself: the known edges are found, function-level imports included."""
    assert {"siglip2.models.modeling", "siglip2.kernels.attention", "bench.common"} <= set(MODULES)
    assert "siglip2.kernels" in SCAN["siglip2.models.layers"].edges
    assert "siglip2.kernels.attention_triton" in SCAN["siglip2.kernels.attention"].edges  # inside a function
    assert "siglip2.train.loop" in SCAN["siglip2.train"].edges
    assert _cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == ["a", "b", "c", "a"]
    assert _cycle({"a": {"b"}, "b": set()}) is None


def test_no_import_cycle():
    edges = {m: {t for t in v.edges if t in MODULES} for m, v in SCAN.items()}
    cycle = _cycle(edges)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_every_module_has_a_place_in_the_map():
    unplaced = [m for m in MODULES if m.startswith("siglip2") and _unit(m) is None]
    assert not unplaced, f"add these to MAY_IMPORT (and to docs/design.md's map): {unplaced}"


@pytest.mark.parametrize("unit", sorted(MAY_IMPORT))
def test_dependencies_point_one_way(unit):
    bad = sorted(
        f"{m} imports {t}"
        for m, v in SCAN.items()
        if _unit(m) == unit
        for t in v.edges
        if t.startswith("siglip2") and _unit(t) not in (unit, *MAY_IMPORT[unit])
    )
    allowed = ", ".join(sorted(MAY_IMPORT[unit])) or "nothing else of siglip2"
    assert not bad, f"{unit} may import {allowed}:\n" + "\n".join(bad)


def test_no_private_names_across_modules():
    bad = [p for v in SCAN.values() for p in v.private]
    assert not bad, "private names used across modules:\n" + "\n".join(bad)


def _docstring(path: str) -> str | None:
    with open(path, encoding="utf-8") as f:
        return ast.get_docstring(ast.parse(f.read()))


def test_every_module_opens_with_a_docstring():
    missing = [m for m, path in MODULES.items() if m.startswith("siglip2") and _docstring(path) is None]
    assert not missing, f"modules without a docstring: {missing}"


def test_tests_say_why_they_use_a_private_name():
    """Tests may use a private name where there is no other way (a test switch, a private helper tested on its own),
    and say why in a comment that contains "private", on the line of the use or in the comment lines above it."""
    tests_dir = os.path.join(ROOT, "tests")
    unexplained = []
    for f in sorted(os.listdir(tests_dir)):
        if not f.endswith(".py"):
            continue
        path = os.path.join(tests_dir, f)
        with open(path, encoding="utf-8") as fh:
            lines = fh.read().splitlines()
        for use in _scan_file(f"tests.{f[:-3]}", path).private:
            n = int(use.split(":")[1])
            above = n - 1
            while above > 0 and lines[above - 1].lstrip().startswith("#"):
                above -= 1
            comment = " ".join(lines[above:n]).split("#", 1)[-1] if "#" in " ".join(lines[above:n]) else ""
            if "private" not in comment:
                unexplained.append(f"tests/{use.split('.', 1)[1]}")
    assert not unexplained, "private names used by tests without a `# private: why` comment:\n" + "\n".join(unexplained)
