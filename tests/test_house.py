"""The house rules of src/nnbridge: stage subpackages without import cycles, a torch-free
``nnbridge predict``, and cache keys that follow the code each stage really runs."""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from nnbridge.core.imports import ImportGraph, main as imports_main
from nnbridge.pipeline.codehash import code_version, stage_files

ROOT = Path(__file__).resolve().parents[1]
SCRIPTS = ROOT / "workflow" / "scripts"


def test_no_import_cycles_and_no_unexplained_function_imports(capsys):
    graph = ImportGraph.read(ROOT / "src" / "nnbridge")
    assert graph.cycles() == []
    assert graph.unexplained_function_imports() == []
    assert imports_main(["--check"]) == 0
    assert "0 import cycle(s)" in capsys.readouterr().out


def test_a_planted_cycle_is_found(tmp_path):
    pkg = tmp_path / "nnbridge"
    (pkg / "a").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a" / "__init__.py").write_text("")
    (pkg / "a" / "x.py").write_text("from .y import f\n")
    (pkg / "a" / "y.py").write_text("def f():\n    from .x import g  # noqa: PLC0415\n")
    graph = ImportGraph.read(pkg)
    assert graph.cycles() == [["nnbridge.a.x", "nnbridge.a.y"]]
    assert [m for m, _, _ in graph.unexplained_function_imports()] == ["nnbridge.a.y"]



def test_imports_in_nested_blocks_are_edges_and_only_functions_count_as_inside(tmp_path):
    """The graph reads statements only (not expressions): imports under try/except, if/else,
    with, match and class bodies at module level are plain edges; under a function, however
    deep, they are imports inside a function."""
    pkg = tmp_path / "nnbridge"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for leaf in ("a", "b", "c", "d", "e", "f", "g"):
        (pkg / f"{leaf}.py").write_text("")
    (pkg / "top.py").write_text(textwrap.dedent("""
        try:
            from . import a
        except ImportError:
            from . import b
        class K:
            if True:
                from . import c
    """))
    (pkg / "deep.py").write_text(textwrap.dedent("""
        def f(x):
            with open(x) as h:
                match x:
                    case 1:
                        try:
                            pass
                        finally:
                            from . import d  # noqa: PLC0415 lazy
        class K:
            def m(self):
                for _ in ():
                    pass
                else:
                    from . import e
        async def g():
            while True:
                from nnbridge import f
        x = [i for i in ()]  # expressions hold no imports
    """))
    graph = ImportGraph.read(pkg)
    assert graph.edges["nnbridge.top"] == {"nnbridge", "nnbridge.a", "nnbridge.b", "nnbridge.c"}
    assert graph.edges["nnbridge.deep"] == {"nnbridge", "nnbridge.d", "nnbridge.e", "nnbridge.f"}
    assert [(m, line) for m, line, _ in graph.in_functions] == [("nnbridge.deep", 9), ("nnbridge.deep", 15),
                                                                ("nnbridge.deep", 18)]
    assert [line for _, line, _ in graph.unexplained_function_imports()] == [15, 18]

def test_predict_depends_only_on_core_and_runtime():
    graph = ImportGraph.read(ROOT / "src" / "nnbridge")
    predict = [m for m in graph.files if m.startswith("nnbridge.predict")]
    outside = {m for m in graph.closure(predict)
               if m != "nnbridge" and not m.startswith(("nnbridge.core", "nnbridge.runtime", "nnbridge.predict"))}
    assert outside == set()


def _run_blocked(blocked: tuple[str, ...], code: str, *args: str, cwd: Path | None = None
                 ) -> subprocess.CompletedProcess:
    """``code`` (indented like a test's text) in a fresh interpreter on this checkout's package,
    the top-level packages ``blocked`` made unimportable."""
    script = textwrap.dedent(f"""
        import sys

        class Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] in {blocked!r}:
                    raise ImportError(f"blocked: {{name}}")

        sys.meta_path.insert(0, Blocker())
    """) + textwrap.dedent(code)
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-c", script, *args], capture_output=True, text=True, cwd=cwd,
                          env=env, timeout=120)


def test_predict_imports_and_runs_without_torch_nnunet_or_snakemake(tmp_path):
    """The deployed path with torch, nnunetv2 and snakemake made unimportable: the CLI and every
    predict module import, and `nnbridge predict` gets as far as reading the bundle."""
    proc = _run_blocked(("torch", "nnunetv2", "snakemake"), """
        import importlib, pkgutil
        import nnbridge.predict
        for info in pkgutil.iter_modules(nnbridge.predict.__path__):
            importlib.import_module(f"nnbridge.predict.{info.name}")
        from nnbridge.cli import main
        sys.exit(main(["predict", "-i", "in", "-o", "out", "-m", "no_bundle"]))
    """, cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr  # a one-line refusal, not an import error
    assert "no_bundle: not an nnbridge bundle" in proc.stderr and "Traceback" not in proc.stderr


# stages whose work is torch's (exporting, running or training the PyTorch model)
TORCH_STAGES = {"case_parity", "demo_train_pytorch", "export_onnx", "export_torchscript", "realistic", "reference"}


def test_stages_without_pytorch_work_start_without_importing_torch():
    """Every other stage's script imports its modules with torch made unimportable (importing
    torch costs each such job ~1.5-2 s; patches paid it through package imports; a tool a stage
    runs may still import it: onnxsim 0.8 does, in the simplify job)."""
    scripts = sorted(p for p in SCRIPTS.glob("*.py") if p.stem not in TORCH_STAGES)
    assert {"simplify", "patches", "quantize", "calibrate", "validate", "bundle", "report"} <= {p.stem for p in scripts}
    proc = _run_blocked(("torch", "nnunetv2"), """
        import ast
        from pathlib import Path
        for path in sys.argv[1:]:
            tree = ast.parse(Path(path).read_text())
            top = [node for node in tree.body if isinstance(node, (ast.Import, ast.ImportFrom))]
            try:
                exec(compile(ast.Module(body=top, type_ignores=[]), path, "exec"), {})
            except ImportError as exc:
                print(f"{Path(path).name}: {exc}")
    """, *map(str, scripts))
    assert proc.returncode == 0 and proc.stdout == "", proc.stdout + proc.stderr


def _rel(files: list[Path]) -> set[str]:
    base = ROOT / "src" / "nnbridge"
    return {f.relative_to(base).as_posix() for f in files[1:]}


def test_stage_code_is_the_import_closure_of_its_script():
    quantize = _rel(stage_files(SCRIPTS / "quantize.py", ROOT / "src" / "nnbridge"))
    assert {"quantize/coverage.py", "quantize/accuracy.py", "runtime/ov.py", "core/onnxgraph.py",
            "validate/metrics.py", "patches/sampling.py", "__init__.py"} <= quantize
    assert not {f for f in quantize if f.startswith(("export/", "bench/", "report/", "models/"))}
    report = _rel(stage_files(SCRIPTS / "report.py", ROOT / "src" / "nnbridge"))
    assert "bench/targets.py" in report and "quantize/__init__.py" not in report
    # the demo trainer is run by nnU-Net by path, never imported: it still counts for training
    train = _rel(stage_files(SCRIPTS / "demo_train.py", ROOT / "src" / "nnbridge"))
    assert "models/nnunet_trainers/nnBridgeDemoTrainer.py" in train
    assert "demo/dataset.py" in train  # demo/nnunet imports it
    assert "demo/nnunet.py" not in _rel(stage_files(SCRIPTS / "demo_dataset.py", ROOT / "src" / "nnbridge"))


def test_code_version_changes_with_a_deep_dependency_only(tmp_path):
    import shutil

    src = tmp_path / "nnbridge"
    shutil.copytree(ROOT / "src" / "nnbridge", src, ignore=shutil.ignore_patterns("__pycache__"))
    before = {s: code_version(SCRIPTS / f"{s}.py", src) for s in ("quantize", "export_onnx", "benchmark")}
    with open(src / "core" / "onnxgraph.py", "a") as handle:  # FLOPs: quantize coverage and benchmark
        handle.write("\n# edited\n")
    from nnbridge.pipeline import codehash

    codehash._graph.cache_clear()
    after = {s: code_version(SCRIPTS / f"{s}.py", src) for s in before}
    assert after["quantize"] != before["quantize"] and after["benchmark"] != before["benchmark"]
    assert after["export_onnx"] == before["export_onnx"]


def test_the_import_scan_cache_never_serves_a_changed_module(tmp_path, monkeypatch):
    """The workflow keeps each module's scanned imports between snakemake calls, by the sha256 of
    its path and text: an unchanged package is read without parsing a file, an edited module is
    parsed again (and only it), a new file a CODE_FILES pattern matches is found, and a corrupt
    cache file is ignored and rewritten."""
    import ast
    import shutil

    from nnbridge.core import imports

    src = tmp_path / "nnbridge"
    shutil.copytree(ROOT / "src" / "nnbridge", src, ignore=shutil.ignore_patterns("__pycache__"))
    cache = tmp_path / "cache" / "import_scans.json"
    plain = ImportGraph.read(src)
    first = ImportGraph.read(src, cache=cache)
    assert cache.is_file() and (first.edges, first.in_functions) == (plain.edges, plain.in_functions)

    parsed = []
    real_parse = ast.parse
    monkeypatch.setattr(imports.ast, "parse", lambda text, *a, **k: parsed.append(text) or real_parse(text, *a, **k))
    again = ImportGraph.read(src, cache=cache)
    assert parsed == [] and (again.edges, again.code_files) == (first.edges, first.code_files)

    edited = src / "core" / "keys.py"
    assert "nnbridge.bench" not in first.edges["nnbridge.core.keys"]
    edited.write_text(edited.read_text() + "\n\ndef late():\n    from ..bench import peak  # noqa: PLC0415 test\n")
    (src / "models" / "nnunet_trainers" / "AnotherTrainer.py").write_text("X = 1\n")
    changed = ImportGraph.read(src, cache=cache)
    assert sorted(parsed) == sorted([edited.read_text(), "X = 1\n"])  # the edited module and the new one
    assert "nnbridge.bench.peak" in changed.edges["nnbridge.core.keys"]
    line = edited.read_text().splitlines().index("    from ..bench import peak  # noqa: PLC0415 test") + 1
    assert ("nnbridge.core.keys", line, "from ..bench import peak  # noqa: PLC0415 test") in changed.in_functions
    assert any(f.name == "AnotherTrainer.py" for files in changed.code_files.values() for f in files)

    cache.write_text("{not json")
    parsed.clear()
    rebuilt = ImportGraph.read(src, cache=cache)
    assert len(parsed) == len(rebuilt.files) and rebuilt.edges == changed.edges
    assert json.loads(cache.read_text())["format"] == imports.CACHE_FORMAT


def test_named_params_record_each_setting_under_its_name(tmp_path):
    """Snakemake records params by value and compares them as sets: three booleans, one flipped,
    leave the set unchanged. by_name holds them with their names, so the flip shows."""
    from types import SimpleNamespace

    from nnbridge.pipeline.params import BY_NAME, named

    def params(compare_failed):
        return named(trusted=lambda wildcards: wildcards.model == "trusted", mirroring=True,
                     compare_failed=compare_failed, folder=lambda wildcards: tmp_path / wildcards.model,
                     bundle=lambda wildcards, input: input.bundle, code="abc")

    wildcards = SimpleNamespace(model="m")
    before, after = params(False), params(True)
    values = lambda p: {repr(v(wildcards) if callable(v) else v) for k, v in p.items()
                        if k not in (BY_NAME, "bundle")}
    assert values(before) == values(after)  # what snakemake alone would compare: no change
    recorded = before[BY_NAME](wildcards)
    assert recorded == {"trusted": False, "mirroring": True, "compare_failed": False,
                        "folder": str(tmp_path / "m"), "code": "abc"}  # no derived param; paths as text
    assert repr(recorded) != repr(after[BY_NAME](wildcards))
    assert before["mirroring"] is True and callable(before["bundle"])  # the params themselves as given
    import datetime

    assert named(day=datetime.date(2026, 12, 3))[BY_NAME](wildcards) == {"day": "2026-12-03"}  # YAML's dates
    with pytest.raises(TypeError, match="param 'engine'"):  # a repr with an address: a rerun every time
        named(engine=lambda wildcards: object())[BY_NAME](wildcards)
    with pytest.raises(ValueError, match="by_name"):
        named(by_name=1)


def test_rules_with_several_settings_record_them_by_name():
    """Every rule with two or more recorded settings (params not computed from its input or
    output) gives them through named(): a change of any one reruns the rule."""
    for smk in sorted((ROOT / "workflow" / "rules").glob("*.smk")):
        for block in re.findall(r"^rule (\w+):\n(.*?)(?=^(?:rule|use rule|checkpoint) |\Z)", smk.read_text(), re.M | re.S):
            name, body = block
            params = re.search(r"^    params:\n(.*?)(?=^    \w+:|\Z)", body, re.M | re.S)
            if not params:
                continue
            entries = re.findall(r"^ {8,12}(\w+)=(.*)$", params.group(1), re.M)
            recorded = [k for k, v in entries if k != "code" and not re.match(r"lambda wildcards, (input|output)", v)]
            if len(recorded) >= 2:
                assert params.group(1).lstrip().startswith("**named("), (smk.name, name, recorded)
