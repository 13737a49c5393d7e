"""nnbridge's own import graph, read from the source text (nothing is imported or run).

Two uses: the workflow's cache keys (a stage's code is every nnbridge module its script imports,
transitively: :mod:`nnbridge.pipeline.codehash`), and the house rules, checked by
``python -m nnbridge.core.imports --check`` and the tests: no import cycles, and no nnbridge
import inside a function unless the line says why (``# noqa: PLC0415`` followed by a reason).

Importing ``a.b.c`` runs ``a/__init__.py`` and ``a/b/__init__.py`` first, so a module depends on
its parent packages too. A module may also name source files it runs without importing them
(nnU-Net imports the demo trainer by path) in a top-level ``CODE_FILES`` tuple of glob patterns
relative to its folder.
"""

from __future__ import annotations

import argparse
import ast
import hashlib
import sys
from dataclasses import dataclass, field
from pathlib import Path

from .runlog import load_cache, store_cache

PACKAGE = "nnbridge"


def package_root() -> Path:
    """The folder of the ``nnbridge`` package in use (``src/nnbridge`` of this checkout)."""
    return Path(__file__).resolve().parents[1]


@dataclass
class ImportGraph:
    """Modules (dotted name → file) and their nnbridge imports."""

    root: Path
    files: dict[str, Path] = field(default_factory=dict)
    edges: dict[str, set[str]] = field(default_factory=dict)
    in_functions: list[tuple[str, int, str]] = field(default_factory=list)
    """(module, line, source line) of every nnbridge import inside a function."""
    code_files: dict[str, list[Path]] = field(default_factory=dict)

    @classmethod
    def read(cls, root: Path | None = None, cache: Path | None = None) -> ImportGraph:
        """The graph of the package at ``root``. ``cache``: a JSON file of each module's imports
        keyed by the sha256 of its path and text (read when present, rewritten when a module
        changed): an unchanged module is not parsed again, a changed one always is."""
        root = Path(root or package_root())
        graph = cls(root)
        for path in sorted(root.rglob("*.py")):
            parts = (PACKAGE, *path.relative_to(root).with_suffix("").parts)
            name = ".".join(parts).removesuffix(".__init__")
            graph.files[name] = path
        stored = load_cache(cache, CACHE_FORMAT, "scans") if cache else {}
        used: dict[str, dict] = {}
        for name, path in graph.files.items():
            text = path.read_text()
            key = hashlib.sha256(f"{path.relative_to(root).as_posix()}\0{text}".encode()).hexdigest()
            used[key] = stored.get(key) or _scan(name, path, text)
            graph._apply(name, path, used[key])
        if cache and used.keys() != stored.keys():
            store_cache(cache, {"format": CACHE_FORMAT, "scans": used})
        return graph

    def _known(self, dotted: str) -> str | None:
        """The longest prefix of ``dotted`` that is one of our modules."""
        while dotted and dotted not in self.files:
            dotted = dotted.rpartition(".")[0]
        return dotted or None

    def _apply(self, name: str, path: Path, scan: dict) -> None:
        """Add a module's imports (:func:`_scan`) that name nnbridge modules of this graph."""
        edges = self.edges.setdefault(name, set())
        parent = name.rpartition(".")[0]
        if parent:  # importing a module runs its package's __init__ first
            edges.add(parent)
        for targets, inside, line, source in scan["imports"]:
            hit = False
            for target in targets:
                known = self._known(target)
                if known and known != name:
                    edges.add(known)
                    hit = True
            if hit and inside:
                self.in_functions.append((name, line, source))
        if scan["code_files"] is not None:
            self.code_files[name] = sorted(f for p in scan["code_files"] for f in path.parent.glob(p))

    def closure(self, modules: list[str] | set[str]) -> set[str]:
        """Every nnbridge module that importing ``modules`` runs (parents included)."""
        seen: set[str] = set()
        todo = [m for m in (self._known(m) for m in modules) if m]
        while todo:
            module = todo.pop()
            if module in seen:
                continue
            seen.add(module)
            todo.extend(self.edges.get(module, ()))
        return seen

    def cycles(self) -> list[list[str]]:
        """Groups of modules that import each other (strongly connected components), parent-package
        edges left out: a package's ``__init__`` importing its own submodules is no cycle."""
        graph = {m: {t for t in targets if not m.startswith(t + ".")} for m, targets in self.edges.items()}
        index: dict[str, int] = {}
        low: dict[str, int] = {}
        stack: list[str] = []
        on_stack: set[str] = set()
        groups: list[list[str]] = []

        def visit(v: str) -> None:
            index[v] = low[v] = len(index)
            stack.append(v)
            on_stack.add(v)
            for w in graph.get(v, ()):
                if w not in index:
                    visit(w)
                    low[v] = min(low[v], low[w])
                elif w in on_stack:
                    low[v] = min(low[v], index[w])
            if low[v] == index[v]:
                group = []
                while True:
                    w = stack.pop()
                    on_stack.discard(w)
                    group.append(w)
                    if w == v:
                        break
                if len(group) > 1:
                    groups.append(sorted(group))

        limit = sys.getrecursionlimit()
        sys.setrecursionlimit(max(limit, 10000))
        try:
            for v in sorted(graph):
                if v not in index:
                    visit(v)
        finally:
            sys.setrecursionlimit(limit)
        return groups

    def unexplained_function_imports(self) -> list[tuple[str, int, str]]:
        """nnbridge imports inside functions whose line gives no reason after ``noqa: PLC0415``."""
        return [(m, line, text) for m, line, text in self.in_functions
                if "PLC0415" not in text or not text.split("PLC0415", 1)[1].strip(" -:")]


def _targets(name: str, path: Path, node: ast.Import | ast.ImportFrom) -> list[str]:
    """The dotted names an import statement may refer to (``from a import b``: ``a`` and ``a.b``)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = node.module or ""
    if node.level:
        here = name.split(".") if path.name == "__init__.py" else name.split(".")[:-1]
        here = here[: len(here) - node.level + 1]
        base = ".".join(here + ([base] if base else []))
    return [base] + [f"{base}.{alias.name}" for alias in node.names]


def _scan(name: str, path: Path, text: str) -> dict:
    """What the graph needs of one module, from its text alone (JSON-serializable, cacheable):
    ``imports``: [targets, inside a function, line, source line] per import statement;
    ``code_files``: its ``CODE_FILES`` patterns, or None."""
    tree = ast.parse(text)
    lines = text.splitlines()
    imports = [[_targets(name, path, node), inside, node.lineno, lines[node.lineno - 1].strip()]
               for node, inside in _import_statements(tree.body)]
    code_files = None
    for node in tree.body:  # CODE_FILES = ("pattern", ...)
        if (isinstance(node, ast.Assign) and any(isinstance(t, ast.Name) and t.id == "CODE_FILES"
                                                 for t in node.targets)):
            code_files = list(ast.literal_eval(node.value))
    return {"imports": imports, "code_files": code_files}


CACHE_FORMAT = "nnbridge import scans 1"


# statements that hold other statements (the bodies of if/for/while/with/try/match and of
# definitions); an import is always a statement, so expressions are never walked (a whole-tree
# ast.walk made reading the graph ~2.5x slower, and the workflow reads it whenever it is parsed)
_NESTED = (ast.stmt, ast.excepthandler, ast.match_case)


def _import_statements(body: list[ast.stmt], in_function: bool = False):
    """(import statement, whether it is inside a function) for every import in ``body``, nested
    blocks included, in source order."""
    for node in body:
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            yield node, in_function
            continue
        inner = in_function or isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
        for child in ast.iter_child_nodes(node):
            if isinstance(child, _NESTED):
                yield from _import_statements([child] if isinstance(child, ast.stmt) else child.body, inner)


def script_imports(script: Path) -> set[str]:
    """The nnbridge modules a script (e.g. a workflow script) imports directly."""
    found = set()
    for node in ast.walk(ast.parse(Path(script).read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == PACKAGE)
        elif isinstance(node, ast.ImportFrom) and not node.level and (node.module or "").split(".")[0] == PACKAGE:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names)
    return found


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m nnbridge.core.imports",
                                     description="nnbridge's import graph: cycles and imports inside functions")
    parser.add_argument("--check", action="store_true",
                        help="exit 1 on a cycle or on an nnbridge import inside a function without a reason")
    args = parser.parse_args(argv)
    graph = ImportGraph.read()
    cycles, unexplained = graph.cycles(), graph.unexplained_function_imports()
    print(f"{len(graph.files)} modules; {len(cycles)} import cycle(s); {len(graph.in_functions)} nnbridge "
          f"import(s) inside functions, {len(unexplained)} without a reason")
    for group in cycles:
        print("  cycle:", " <-> ".join(group))
    for module, line, text in graph.in_functions:
        print(f"  inside a function: {module}:{line}: {text}")
    return 1 if args.check and (cycles or unexplained) else 0


if __name__ == "__main__":
    sys.exit(main())
