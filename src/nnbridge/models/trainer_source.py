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
from dataclasses import dataclass, field
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


@dataclass
class _Sources:
    """The trainer folders' files as read once: their texts, their top-level classes by name, the
    names bound at module level otherwise (assignments, functions), the files that import
    ``get_network_from_plans`` as nnU-Net's trainer does, and whether every file was read and
    parsed."""

    texts: dict[Path, str] = field(default_factory=dict)
    classes: dict[str, list[_Class]] = field(default_factory=dict)
    other: set[str] = field(default_factory=set)
    import_builder: set[Path] = field(default_factory=set)
    read: bool = True  # every file read
    parsed: bool = True  # every file read and parsed


def _read(folders: list[Path] | None) -> _Sources:
    sources = _Sources()
    for folder in trainer_folders() if folders is None else folders:
        for path in sorted(folder.rglob("*.py")) if folder.is_dir() else ():
            try:
                text = sources.texts[path] = path.read_text(encoding="utf-8", errors="replace")
            except OSError:
                sources.read = sources.parsed = False
                continue
            try:
                tree = ast.parse(text, str(path))
            except (SyntaxError, ValueError):
                sources.parsed = False
                continue
            for node in tree.body:
                if isinstance(node, ast.ClassDef):
                    sources.classes.setdefault(node.name, []).append(_describe(node, path))
                elif isinstance(node, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
                    targets = node.targets if isinstance(node, ast.Assign) else [node.target]
                    sources.other |= {n.id for t in targets for n in ast.walk(t) if isinstance(n, ast.Name)}
                elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    sources.other.add(node.name)
                elif isinstance(node, ast.ImportFrom) and ast.unparse(node) == BUILDER_IMPORT:
                    sources.import_builder.add(path)
    return sources


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


def _proves_default(trainer_name: str, sources: _Sources) -> bool:
    if not sources.parsed:
        return False
    seen: set[str] = set()
    todo = [trainer_name]
    while todo:
        name = todo.pop()
        if name in seen:
            continue
        seen.add(name)
        found = sources.classes.get(name, [])
        if len(found) != 1 or name in sources.other or not found[0].plain:
            return False
        cls = found[0]
        if name == BASE_TRAINER:
            if cls.builder not in KNOWN_DEFAULT_BUILDERS or cls.path not in sources.import_builder:
                return False
            continue
        if cls.defines_builder or None in cls.bases:
            return False
        todo.extend(b for b in cls.bases if b != "object")
    return BASE_TRAINER in seen


def _absent(trainer_name: str, sources: _Sources) -> bool:
    return sources.read and not any(trainer_name in text for text in sources.texts.values())


def builds_default_network(trainer_name: str, folders: list[Path] | None = None) -> bool:
    """True when the source proves that ``trainer_name`` builds its network with nnU-Net's default
    builder (``get_network_from_plans(..., allow_init=True)`` on the plans' architecture); False
    when it cannot (the class must then be imported)."""
    return _proves_default(trainer_name, _read(folders))


def not_installed(trainer_name: str, folders: list[Path] | None = None) -> bool:
    """True when no source file in the folders nnU-Net searches mentions ``trainer_name`` at all:
    then no import of them can give nnU-Net that class (False does not mean it is installed)."""
    return _absent(trainer_name, _read(folders))


def default_network_proof(trainer_name: str, folders: list[Path] | None = None) -> str | None:
    """From one reading of the trainer folders: ``"proven"`` when ``trainer_name`` builds nnU-Net's
    default network (:func:`builds_default_network`), ``"not installed"`` when no file mentions it
    (:func:`not_installed`) and nnU-Net's default trainer's builder is proven, else None (import
    the class)."""
    sources = _read(folders)
    if _proves_default(trainer_name, sources):
        return "proven"
    if _absent(trainer_name, sources) and _proves_default(BASE_TRAINER, sources):
        return "not installed"
    return None
