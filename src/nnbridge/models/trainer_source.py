"""Whether an nnU-Net trainer class builds its network with nnU-Net's default
``nnUNetTrainer.build_network_architecture``, read from the trainers' source files instead of
importing them.

Importing a trainer costs a fold-loading job ~4.4 s on top of torch (AMD EPYC Zen 4,
2026-12-04): ``nnUNetTrainer``'s module pulls in ``torch._dynamo``, seaborn, matplotlib and pandas
(3.3 s), and nnU-Net's search for a class by name imports every trainer module in its folder
before it looks in ``nnUNet_extTrainer`` (1.1 s). The network itself only needs
``get_network_from_plans`` (imported in 0.04 s).

The source answers only when it can prove the answer: the class is defined once (a ``class``
statement) in the folders nnU-Net searches, so is every class it derives from up to
``nnUNetTrainer``, none of them defines or assigns ``build_network_architecture`` or has a class
decorator or metaclass, and the installed ``nnUNetTrainer.build_network_architecture`` is one of
the forms nnbridge knows (a call of ``get_network_from_plans`` with ``allow_init=True``). Anything
else (a custom builder, a class made by a function, a name defined twice, a file that does not
parse) is left to importing the class as nnU-Net does. A trainer that no file there mentions at
all (:func:`not_installed`) cannot be found by any import either: nnbridge then builds the
default network with its "not installed" note without importing, as it does when nnU-Net's search
fails.
"""

from __future__ import annotations

import ast
import importlib.util
import os
from dataclasses import dataclass
from pathlib import Path

from . import TRAINER_DIR

BASE_TRAINER = "nnUNetTrainer"
BUILDER = "build_network_architecture"
# nnUNetTrainer.build_network_architecture's body (docstring aside) in nnunetv2 >= 2.5 and before
KNOWN_DEFAULT_BUILDERS = (
    "return get_network_from_plans(configuration_manager.network_arch_class_name, "
    "configuration_manager.network_arch_init_kwargs, configuration_manager.network_arch_init_kwargs_req_import, "
    "num_input_channels, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)",
    "return get_network_from_plans(architecture_class_name, arch_init_kwargs, arch_init_kwargs_req_import, "
    "num_input_channels, num_output_channels, allow_init=True, deep_supervision=enable_deep_supervision)",
)
BUILDER_IMPORT = "from nnunetv2.utilities.get_network_from_plans import get_network_from_plans"


def ext_trainer_paths() -> list[str]:
    """The ``nnUNet_extTrainer`` paths, nnbridge's own trainers appended to that variable (so that
    nnU-Net finds them too)."""
    ext = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if str(TRAINER_DIR) not in ext:
        ext.append(str(TRAINER_DIR))
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(ext)
    return ext


def trainer_folders() -> list[Path]:
    """Where nnU-Net looks for a trainer class, in its order: nnunetv2's trainer package, then each
    path of :func:`ext_trainer_paths`."""
    spec = importlib.util.find_spec("nnunetv2")
    package = [Path(spec.submodule_search_locations[0]) / "training" / "nnUNetTrainer"] if spec else []
    return [*package, *(Path(p) for p in ext_trainer_paths())]


@dataclass(frozen=True)
class _Class:
    path: Path
    bases: tuple[str | None, ...]  # base class names as written (None: not a plain or dotted name)
    builder: str | None  # the class body's build_network_architecture, unparsed (docstring aside)
    defines_builder: bool
    plain: bool  # no decorator, metaclass or other class keyword


def _scan(folders: list[Path]) -> tuple[dict[str, list[_Class]], set[str]] | None:
    """Top-level classes by name, and the names bound at module level otherwise (assignments,
    imports, functions); None when a file does not parse."""
    classes: dict[str, list[_Class]] = {}
    other: set[str] = set()
    for folder in folders:
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            try:
                tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
            except (SyntaxError, UnicodeDecodeError, OSError):
                return None
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    classes.setdefault(node.name, []).append(_describe(node, path))
                elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    other |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    other.add(node.name)
    return classes, other


def _describe(node: ast.ClassDef, path: Path) -> _Class:
    builder, defines = None, False
    for item in node.body:
        if isinstance(item, (ast.FunctionDef, ast.AsyncFunctionDef)) and item.name == BUILDER:
            defines = True
            body = item.body[1:] if item.body and isinstance(item.body[0], ast.Expr) \
                and isinstance(item.body[0].value, ast.Constant) else item.body
            builder = "\n".join(ast.unparse(stmt) for stmt in body)
        elif isinstance(item, (ast.Assign, ast.AnnAssign)):
            targets = item.targets if isinstance(item, ast.Assign) else [item.target]
            defines |= any(isinstance(t, ast.Name) and t.id == BUILDER for t in targets)
    bases = tuple(b.id if isinstance(b, ast.Name) else b.attr if isinstance(b, ast.Attribute) else None
                  for b in node.bases)
    return _Class(path, bases, builder, defines, plain=not node.decorator_list and not node.keywords)


def _imports_builder(path: Path) -> bool:
    tree = ast.parse(path.read_text(encoding="utf-8"))
    return any(isinstance(n, ast.ImportFrom) and ast.unparse(n) == BUILDER_IMPORT for n in tree.body)


def builds_default_network(trainer_name: str, folders: list[Path] | None = None) -> bool:
    """True when the source proves that ``trainer_name`` builds its network with nnU-Net's default
    builder (``get_network_from_plans(..., allow_init=True)`` on the plans' architecture); False
    when it cannot (the class must then be imported)."""
    scanned = _scan(trainer_folders() if folders is None else folders)
    if scanned is None:
        return False
    classes, other = scanned
    seen: set[str] = set()
    todo = [trainer_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found = classes.get(name, [])
        if len(found) != 1 or name in other or not found[0].plain:
            return False
        cls = found[0]
        if name == BASE_TRAINER:
            if cls.builder not in KNOWN_DEFAULT_BUILDERS or not _imports_builder(cls.path):
                return False
            continue
        if cls.defines_builder or None in cls.bases:
            return False
        todo.extend(b for b in cls.bases if b != "object")
    return BASE_TRAINER in seen


def not_installed(trainer_name: str, folders: list[Path] | None = None) -> bool:
    """True when no source file in the folders nnU-Net searches mentions ``trainer_name`` at all:
    then no import of them can give nnU-Net that class (False does not mean it is installed)."""
    for folder in trainer_folders() if folders is None else folders:
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            try:
                if trainer_name in path.read_text(encoding="utf-8", errors="replace"):
                    return False
            except OSError:
                return False
    return True
