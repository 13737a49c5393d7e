"""Shared fixtures: one real, briefly trained nnU-Net fold for the library tests, and one run of
the real pipeline on the demo for the workflow and Slurm tests."""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

from types import SimpleNamespace

import numpy as np
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]

# The two workers of `make test` share two cores: threads that spin-wait for their next task (ONNX
# Runtime's intra-op pool, torch's OpenMP team) burn CPU time the other worker needs. Measured on
# the AMD Zen 4 (2026-12-02), two pytest processes of zoo networks side by side: 152 / 150 s wall
# with spinning, 105 / 130 s without. Set before torch is imported; the workers, and the
# pipelines the tests run, inherit it. (Speed is not asserted by any test.)
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
os.environ.setdefault("NNBRIDGE_ORT_SPINNING", "0")
# nnU-Net's planning of the tests' tiny datasets (a dozen per session, the pipelines' included)
# samples 10^6 foreground intensities per channel for its fingerprint, not 10^8: drawing and
# sorting 10^8 values is ~10 s per channel whatever the size (nnbridge.demo.nnunet.INTENSITY_SAMPLES_ENV)
os.environ.setdefault("NNBRIDGE_NNUNET_INTENSITY_SAMPLES", "1e6")


@dataclass(frozen=True)
class TinyModel:
    """A real nnU-Net v2 model folder with one trained fold, and its preprocessed dataset."""

    model_folder: Path
    preprocessed: Path
    fold: str = "0"
    checkpoint: str = "checkpoint_final.pth"


@pytest.fixture(scope="session")
def worker_id() -> str:
    """pytest-xdist's worker name (``gw0``…), ``master`` outside a worker: also under
    ``-p no:xdist``, where xdist's own fixture of this name does not exist."""
    return os.environ.get("PYTEST_XDIST_WORKER", "master")


@contextlib.contextmanager
def built_once(tmp_path_factory: pytest.TempPathFactory, worker_id: str, name: str):
    """A folder for a session fixture's expensive build, and whether it still has to be built.
    With pytest-xdist the workers share it (the first builds it under a file lock, the others
    wait and reuse it); without, it is this session's own."""
    if worker_id == "master":
        yield tmp_path_factory.mktemp(name), None
        return
    from filelock import FileLock

    root = tmp_path_factory.getbasetemp().parent / f"shared_{name}"
    with FileLock(str(root) + ".lock"):
        done = root / "built.json"
        record = json.loads(done.read_text()) if done.is_file() else None
        root.mkdir(exist_ok=True)
        state = {"record": record}
        yield root, state
        if record is None and state.get("built") is not None:
            done.write_text(json.dumps(state["built"]))


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> TinyModel:
    """Dataset → nnU-Net planning/preprocessing → small plans → 1 fold trained briefly (~30 s).

    Its raw and preprocessed folders are what the demo's data stages make with ``demo: {n_cases:
    10, seed: 3}`` (tests/test_slurm.py compares a Slurm run's against them; test_demo checks the
    planning): keep the calls the same as the rules' (workflow/scripts/demo_*.py)."""
    from nnbridge.demo import dataset, nnunet as demo
    from nnbridge.models import TRAINER_DIR

    os.environ.setdefault("nnUNet_extTrainer", str(TRAINER_DIR))
    with built_once(tmp_path_factory, worker_id, "tiny_nnunet") as (root, state):
        if state and state["record"]:
            return TinyModel(Path(state["record"]["model_folder"]), Path(state["record"]["preprocessed"]))
        raw, pre, res = root / "raw", root / "preprocessed", root / "results"
        dataset.make_dataset(raw, n_cases=10, seed=3)
        pre_ds = demo.plan_and_preprocess(raw, pre, log=root / "plan.log")
        demo.derive_small_plans(pre_ds)
        fold_dir = demo.train_fold(0, raw=raw, preprocessed=pre, results=res, epochs=2, iterations=4,
                                   log=root / "train.log")
        if state is not None:
            state["built"] = {"model_folder": str(fold_dir.parent), "preprocessed": str(pre_ds)}
        return TinyModel(model_folder=fold_dir.parent, preprocessed=pre_ds)


@pytest.fixture(scope="session")
def machine_peak() -> dict:
    """This machine's peaks at 2 threads, measured once per session as rule machine_peak does
    (a measurement takes seconds; each benchmark given none measures its own)."""
    from nnbridge.bench.peak import measure_peak_gflops

    return measure_peak_gflops(2)


@pytest.fixture(scope="session")
def loaded_fold(tiny_model: TinyModel):
    from nnbridge.models.nnunet import load_nnunet_fold

    return load_nnunet_fold(tiny_model.model_folder, tiny_model.fold, tiny_model.checkpoint)


@pytest.fixture(scope="session")
def patch_sets(tiny_model: TinyModel, tmp_path_factory: pytest.TempPathFactory):
    """Calibration and held-out patches of fold 0 written by the patches stage."""
    from nnbridge.models.nnunet import nnunet_source
    from nnbridge.patches.sampling import load_patches, write_patch_sets

    out = tmp_path_factory.mktemp("patches")
    summary = write_patch_sets(nnunet_source(tiny_model.model_folder, "0"), tiny_model.preprocessed, "0",
                               out / "cal.npz", out / "held.npz", n_calibration=6, n_heldout=4,
                               seed=0, foreground_fraction=0.5)
    return summary, load_patches(out / "cal.npz"), load_patches(out / "held.npz")


@pytest.fixture(scope="session")
def exported(loaded_fold, tmp_path_factory: pytest.TempPathFactory):
    """ONNX and TorchScript exports of the tiny fold."""
    from nnbridge.export.onnx_export import export_onnx
    from nnbridge.export.torchscript_export import export_torchscript

    out = tmp_path_factory.mktemp("export")
    onnx_record = export_onnx(loaded_fold, out / "model.onnx")
    ts_record = export_torchscript(loaded_fold, out / "model.ts")
    return out, onnx_record, ts_record


@pytest.fixture(scope="session")
def nifti_bundle(tiny_model, exported, tmp_path_factory):
    """A bundle of the tiny nnU-Net fold (SimpleITKIO, .nii.gz; onnx_fp32, gated on ONNX Runtime)
    and one of its raw cases: the bad-input tests' deployed model (never changed by them)."""
    from nnbridge.bundle.build import write_bundle
    from nnbridge.core.metadata import read_metadata

    out_dir, _, _ = exported
    model = tiny_model.model_folder
    root = tmp_path_factory.mktemp("rel_bundle")
    write_bundle(root / "bundle", plans_file=model / "plans.json", dataset_file=model / "dataset.json",
                 info={"configuration": "3d_fullres",
                       "mirror_axes": json.loads(read_metadata(out_dir / "model.onnx")["mirror_axes"])},
                 variants={"onnx_fp32": {"files": {"0": out_dir / "model.onnx"},
                                         "gates": {"0": {"onnxruntime": True}}}},
                 default_variant="onnx_fp32")
    raw = next((model.parents[2] / "raw").glob("Dataset*"))
    return root / "bundle", sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[0]


# --------------------------------------------------------------------------------------------
# nnU-Net's cascade, trained for real by nnU-Net (briefly): a 3d_lowres fold 0 and the
# 3d_cascade_fullres fold 0 that takes its segmentations as one-hot input channels
# (tests/test_model_kinds.py takes both through the pipeline's stages, tests/test_cascade_ensemble.py
# deploys them)

CASCADE_DATASET_ID = 920


def _fill_previous_stage(segs: Path, fullres_data: Path) -> list[str]:
    """Ground truth as the previous stage's segmentation of the cases no lowres fold predicted.

    nnU-Net trains a cascade on the predictions of all five lowres folds (each predicts its own
    validation cases); this fixture trains lowres fold 0 only, which predicts cascade fold 0's
    validation cases (the held-out ones). Its training cases get their reference segmentation,
    written with nnU-Net's own writer. Returns the filled cases.
    """
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    filled = []
    for seg_file in sorted(fullres_data.glob("*_seg.b2nd")):
        case = seg_file.name[: -len("_seg.b2nd")]
        if not (segs / f"{case}.b2nd").is_file():
            seg = np.maximum(blosc2.open(urlpath=str(seg_file), mode="r")[:][0], 0).astype(np.uint8)
            nnUNetDatasetBlosc2.save_seg(seg, str(segs / case))
            filled.append(case)
    return filled


@pytest.fixture(scope="session")
def tiny_cascade(tmp_path_factory: pytest.TempPathFactory, worker_id: str) -> SimpleNamespace:
    """One dataset, preprocessed for 3d_fullres and 3d_lowres; lowres fold 0, then cascade fold 0
    (about 1.5 min on two cores)."""
    with built_once(tmp_path_factory, worker_id, "cascade") as (root, state):
        if state and state["record"]:
            r = state["record"]
            return SimpleNamespace(**{k: Path(v) for k, v in r.items() if k not in ("predicted", "filled")},
                                   predicted=r["predicted"], filled=r["filled"])
        made = _build_tiny_cascade(root)
        if state is not None:
            state["built"] = {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(made).items()}
        return made


def _build_tiny_cascade(root: Path) -> SimpleNamespace:
    from nnbridge.demo import dataset, nnunet as demo

    lowres_name, cascade_name = "3d_lowres", "3d_cascade_fullres"
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    raw_ds = dataset.make_dataset(raw, n_cases=6, shape=(32, 32, 32), seed=1, dataset_id=CASCADE_DATASET_ID)
    pre_ds = demo.plan_and_preprocess(raw, pre, dataset_id=CASCADE_DATASET_ID, log=root / "plan.log")
    demo.derive_small_plans(pre_ds, features=(8, 16, 32))
    demo.add_lowres_cascade(pre_ds)
    demo.preprocess(raw, pre, dataset_id=CASCADE_DATASET_ID, configuration=lowres_name, log=root / "plan.log")
    demo.write_splits(pre_ds)
    # npz: the final validation also saves probabilities, which nnUNetv2_find_best_configuration
    # ensembles (tests/test_cascade_ensemble.py runs it)
    train = {"raw": raw, "preprocessed": pre, "results": res, "dataset_id": CASCADE_DATASET_ID,
             "epochs": 1, "iterations": 3, "npz": True, "log": root / "train.log"}
    lowres = demo.train_fold(0, configuration=lowres_name, **train).parent
    segs = lowres / "predicted_next_stage" / cascade_name
    predicted = sorted(p.name[: -len(".b2nd")] for p in segs.glob("*.b2nd"))
    plans = json.loads((pre_ds / f"{demo.DEMO_PLANS}.json").read_text())
    filled = _fill_previous_stage(segs, pre_ds / plans["configurations"]["3d_fullres"]["data_identifier"])
    cascade_folder = demo.train_fold(0, configuration=cascade_name, **train).parent
    return SimpleNamespace(lowres=lowres, cascade=cascade_folder, pre_ds=pre_ds, segs=segs, raw=raw_ds,
                           predicted=predicted, filled=filled)


# --------------------------------------------------------------------------------------------
# the real pipeline on the embedded demo, run once per session (tests/test_workflow.py checks it;
# tests/test_slurm.py takes its trained model instead of training one again)

SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
PROJECT_ITEMS = ("Snakefile", "workflow", "config", "profiles", "envs", "src", "constraints.txt")


def predict_without(argv: list[str], blocked: tuple[str, ...] = ("torch",), timeout: float = 600):
    """``nnbridge`` with ``argv`` (e.g. ``["predict", ...]``) in a fresh process where the
    ``blocked`` packages cannot be imported (an import fails as if they were not installed);
    the process also fails if any of them got loaded. Returns the completed process."""
    code = ("import sys\n"
            f"BLOCKED = {tuple(blocked)!r}\n"
            "class Blocker:\n"
            "    def find_spec(self, name, path=None, target=None):\n"
            "        if name.split('.')[0] in BLOCKED:\n"
            "            raise ImportError(f'{name} is blocked in this test')\n"
            "sys.meta_path.insert(0, Blocker())\n"
            "from nnbridge.cli import main\n"
            "rc = main(sys.argv[1:])\n"
            "assert not [m for m in sys.modules if m.split('.')[0] in BLOCKED]\n"
            "sys.exit(rc)\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    return subprocess.run([sys.executable, "-c", code, *map(str, argv)], capture_output=True, text=True,
                          timeout=timeout, env=env)


def copy_project(dest: Path) -> Path:
    """The project's workflow, config and sources in ``dest`` (a run there uses its own src/)."""
    dest.mkdir(parents=True, exist_ok=True)
    for item in PROJECT_ITEMS:
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, dest / item,
                                                           **({"ignore": shutil.ignore_patterns("__pycache__")}
                                                              if src.is_dir() else {}))
    return dest


def run_snakemake(workdir: Path, *args: str, check: bool = True,
                  env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"), **(env or {}))
    proc = subprocess.run([SNAKEMAKE, "--cores", "2", *args], cwd=workdir, env=env,
                          capture_output=True, text=True, timeout=1800)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-4000:]}\n{proc.stderr[-6000:]}")
    return proc


def planned_jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    """Job counts from the 'Job stats' table of a dry run."""
    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    return {m.group(1): int(m.group(2)) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M)
            if m.group(1) != "total"}


def set_config(workdir: Path, update) -> None:
    path = workdir / "config" / "config.yaml"
    config = yaml.safe_load(path.read_text())
    update(config)
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def shorten(config) -> None:
    """The shipped demo with shorter nnU-Net training, fewer benchmark repetitions, no thread/batch sweep, a tiny
    realistic-size benchmark in the run (without its IR variants), one plain PyTorch model (the
    DataParallel-style U-Net; UNet++, the sweep and the ONNX Runtime settings search are covered
    by library tests) trained for fewer steps, and the default INT8 variants (int8_dynamic, fp16
    and int8_nncf are opt-in and covered by library tests; int8_ir is bundled and compared on
    whole cases, on 2 of the fold's validation cases): the suite stays within its time budget."""
    # timing: as few runs as give a median (the stop rule and the settings search are library
    # tests: test_bench_report.py)
    config["benchmark"].update(repeats=5, warmup=1, sweep=[], tune=[], min_repeats=3, budget_s=2)
    # the realistic-size stage at a tiny size (tests/test_realistic.py covers it and its IR variants;
    # here: rule + report)
    config["benchmark"]["realistic"] = {"enabled": True, "patch_size": [32, 32, 32], "features": [8, 16, 32],
                                        "warmup": 0, "repeats": 1, "ir": False}
    config["models"] = [m for m in config["models"] if m.get("name") != "demo_unetpp"]
    # nnU-Net's training of the demo folds, 2 of its 10 epochs: pseudo Dice is ~0.9 after the
    # second (0.93 / 0.88 on the AMD Zen 4), and the test asserts what the training gives
    # (validation Dice >= 0.8), not the demo's quality
    config["demo"].update(epochs=2, pytorch_steps=60)
    # whole cases: the first 2 of fold 0's 4 validation cases (each runs nnU-Net's predictor and
    # every bundled variant with mirroring)
    config["case_parity"]["max_cases"] = 2
    # the deployable graph's two-pass InstanceNormalization (the shipped demo's 40^3 patch is under
    # the real-size threshold) on the demo nnU-Net, so that the pipeline gates, benchmarks, bundles
    # and predicts with it while the quantizers take the fused graph
    config["simplify"]["two_pass_norm_voxels"] = 8000
    for name in ("int8_dynamic", "fp16", "int8_nncf"):
        config["quantize"].pop(name, None)
        config["validate"]["tolerances"].pop(name, None)


@pytest.fixture(scope="session")
def demo_workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of the project after one full run of the (shortened) demo pipeline."""
    work = copy_project(tmp_path_factory.mktemp("pipeline"))
    set_config(work, shorten)
    run_snakemake(work)
    return work


# With ``make test`` (``-n 2``, pytest-xdist) tests are handed out a module at a time, so a
# module's fixtures (the trained model kinds, the zoo, the intake pipeline) are built on one
# worker only (the session's tiny models once for both, under a file lock). Units go out longest
# first (measured on the AMD Zen 4, 2026-12-02: the demo pipeline's module ~7-8 min, the Slurm
# module ~4-5 min, then the modules below in this order), the rest in collection order after them.
PIPELINE_MODULES = ("tests/test_workflow.py",)
# the Slurm run second: one fold's 15 jobs one after another (1-2 CPUs each) with the executor
# plugin's polling between them, beside the pipeline's worker. The cascade module third: it builds
# the session's cascade (tiny_cascade) that test_model_kinds uses too; handed out later, the two
# reached it together and one worker waited ~40 s for the other's build.
LONGEST_FIRST = PIPELINE_MODULES + ("tests/test_slurm.py", "tests/test_cascade_ensemble.py") + (
    "tests/test_zoo.py", "tests/test_intake.py", "tests/test_reliability.py", "tests/test_model_kinds.py",
    "tests/test_bench_report.py", "tests/test_predict.py",
    "tests/test_nncf.py", "tests/test_plain_models.py", "tests/test_bf16.py", "tests/test_report.py",
)


def work_unit(nodeid: str) -> str:
    """The unit of work a test belongs to: its module (``pipeline`` for the demo pipeline's)."""
    module = nodeid.split("::", 1)[0]
    return "pipeline" if module in PIPELINE_MODULES else module


def pytest_collection_modifyitems(config, items):
    """Under pytest-xdist, longest units first (see :data:`LONGEST_FIRST`); the order within a
    module is kept. In one process (``make test``) the collection order stays."""
    if not os.environ.get("PYTEST_XDIST_WORKER"):
        return
    rank = {m: i for i, m in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.nodeid.split("::", 1)[0], len(rank)))


@pytest.hookimpl(optionalhook=True)  # pytest -p no:xdist runs without it
def pytest_xdist_make_scheduler(config, log):
    """Units of :func:`work_unit`, handed out in collection order (not re-sorted by size)."""
    from xdist.scheduler import LoadScopeScheduling

    class ModuleScheduling(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return work_unit(nodeid)

    config.option.loadscopereorder = False
    return ModuleScheduling(config, log)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_protocol(item, nextitem):
    """With NNBRIDGE_TEST_CPU=<file>: one JSON line per test with its wall time and the CPU
    seconds it used, its own and its child processes' (snakemake jobs, nnU-Net runs, benchmark
    children; not Slurm's jobs): where the suite's cost is, for planning its budget."""
    out = os.environ.get("NNBRIDGE_TEST_CPU")
    if not out:
        yield
        return
    import resource
    import time

    def cpu() -> tuple[float, float]:
        own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
        return own.ru_utime + own.ru_stime, kids.ru_utime + kids.ru_stime

    wall, (own, kids) = time.monotonic(), cpu()
    yield
    own2, kids2 = cpu()
    with open(out, "a") as f:
        f.write(json.dumps({"test": item.nodeid, "worker": os.environ.get("PYTEST_XDIST_WORKER", "master"),
                            "wall": round(time.monotonic() - wall, 2), "cpu_self": round(own2 - own, 2),
                            "cpu_children": round(kids2 - kids, 2)}) + "\n")
