"""Cache keys from the code itself: the hash of a workflow script and of every nnbridge module it
imports, transitively (read from the import graph, :mod:`nnbridge.core.imports`).

Snakemake reruns a ``script:`` rule when the script changes, not when a module it imports does;
each rule therefore carries this hash in its params, so an edit of any module a stage really
runs reruns that stage, and an edit elsewhere does not.
"""

from __future__ import annotations

import hashlib
from functools import lru_cache
from pathlib import Path

from ..core.imports import ImportGraph, package_root, script_imports


@lru_cache(maxsize=4)
def _graph(root: str, cache: str | None) -> ImportGraph:
    return ImportGraph.read(Path(root), cache=Path(cache) if cache else None)


def stage_files(script: str | Path, root: Path | None = None, cache: Path | None = None) -> list[Path]:
    """The script and every source file of the nnbridge code it runs, in a stable order.
    ``cache``: where the import graph keeps each module's scanned imports between processes
    (:meth:`nnbridge.core.imports.ImportGraph.read`; the workflow parses it once per snakemake
    call, and twice per job on Slurm)."""
    graph = _graph(str(root or package_root()), str(cache) if cache else None)
    modules = graph.closure(script_imports(Path(script)))
    files = {graph.files[m] for m in modules}
    files.update(f for m in modules for f in graph.code_files.get(m, ()))
    return [Path(script), *sorted(files)]


def code_version(script: str | Path, root: Path | None = None, cache: Path | None = None) -> str:
    """16 hex digits of the sha256 over :func:`stage_files` (names relative to the package, and
    contents)."""
    base = Path(root or package_root())
    digest = hashlib.sha256()
    for path in stage_files(script, root, cache):
        name = path.relative_to(base).as_posix() if path.is_relative_to(base) else path.name
        digest.update(name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]
