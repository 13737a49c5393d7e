"""A tiny, real nnU-Net v2 model to run the pipeline on: synthetic data, planning, training.

Everything here drives nnU-Net's own command line tools (``nnUNetv2_plan_and_preprocess``,
``nnUNetv2_train``) in subprocesses, so the model folder that comes out is what a user gets from
nnU-Net; only the data is synthetic, and the plans (:func:`derive_small_plans`) and the trainer
(``nnbridge/models/nnunet_trainers/nnBridgeDemoTrainer.py``) are shrunk: on two CPU cores planning takes about
20 s and a fold about 75 s, final validation included (Dice about 0.9 or more for both labels).
Two trainings side by side need one torch thread each (``threads``): two processes with two
threads each on two cores slow each other down several times over.

The synthetic dataset is a 3D single-channel "MRI": white noise plus a smooth bias field, a
bright sphere (label 1) and a dark box (label 2) of random sizes at random, non-touching
positions, with per-case contrasts.
"""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np

from ..models import TRAINER_DIR
from .dataset import DEMO_DATASET_ID
from . import workers


DEMO_TRAINER = "nnBridgeDemoTrainer"


DEMO_PLANS = "nnBridgeDemoPlans"


#: features per stage of the demo U-Net; there are len() - 1 poolings by 2
DEFAULT_FEATURES: tuple[int, ...] = (8, 16, 32, 64)


#: batch size of the demo plans; keep >= 2: for batch 1, torch's CPU heuristic picks its slow
#: non-oneDNN 3D convolution for these small tensors (training would get ~3x slower per sample)
DEFAULT_BATCH = 2


def nnunet_env(raw: Path, preprocessed: Path, results: Path, *, for_training: bool = True) -> dict[str, str]:
    """Environment for nnU-Net subprocesses: a copy of ``os.environ`` plus nnU-Net's settings.

    Sets ``nnUNet_raw`` / ``nnUNet_preprocessed`` / ``nnUNet_results`` (absolute), points
    ``nnUNet_extTrainer`` at :data:`TRAINER_DIR` so nnU-Net finds the demo trainer, and turns
    ``torch.compile`` off. With ``for_training`` nnU-Net also gets one export/metrics worker
    and no data-augmentation workers (``nnUNet_def_n_proc=1``, ``nnUNet_n_proc_DA=0``); without
    it those two are removed, because nnU-Net's planning crashes with them.
    ``nnUNetv2_train -device cpu`` sets torch to one thread per core itself.
    """
    env = dict(os.environ)
    env.update(
        {
            "nnUNet_raw": str(Path(raw).resolve()),
            "nnUNet_preprocessed": str(Path(preprocessed).resolve()),
            "nnUNet_results": str(Path(results).resolve()),
            "nnUNet_extTrainer": str(TRAINER_DIR),
            "nnUNet_compile": "false",
            "PYTHONUNBUFFERED": "1",
        }
    )
    if for_training:
        env["nnUNet_def_n_proc"] = "1"
        env["nnUNet_n_proc_DA"] = "0"
    else:
        env.pop("nnUNet_def_n_proc", None)
        env.pop("nnUNet_n_proc_DA", None)
    return env


_ENTRY_POINTS = {
    "nnUNetv2_plan_and_preprocess": (
        "nnunetv2.experiment_planning.plan_and_preprocess_entrypoints",
        "plan_and_preprocess_entry",
    ),
    "nnUNetv2_preprocess": ("nnunetv2.experiment_planning.plan_and_preprocess_entrypoints", "preprocess_entry"),
    "nnUNetv2_train": ("nnunetv2.run.run_training", "run_training_entry"),
    "nnUNetv2_export_model_to_zip": ("nnunetv2.model_sharing.entry_points", "export_pretrained_model_entry"),
    "nnUNetv2_find_best_configuration": (
        "nnunetv2.evaluation.find_best_configuration",
        "find_best_configuration_entry_point",
    ),
}


INTENSITY_SAMPLES_ENV = "NNBRIDGE_NNUNET_INTENSITY_SAMPLES"
"""Set (a number): nnU-Net's fingerprint samples this many foreground intensities per channel
over the dataset instead of its fixed 10^8 (``DatasetFingerprintExtractor``'s
``num_foreground_voxels_for_intensitystats``, which no option of nnU-Net sets). Drawing and
sorting 10^8 values takes ~10 s per channel whatever the dataset's size; the test suite, which
plans a dozen tiny datasets, sets 10^6. Unset (the demo, users): nnU-Net as it is."""


def _intensity_samples_setup() -> str:
    """Python run before an nnU-Net planning entry point: :data:`INTENSITY_SAMPLES_ENV` applied."""
    value = os.environ.get(INTENSITY_SAMPLES_ENV)
    if not value:
        return ""
    samples = int(float(value))
    return ("from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import "
            "DatasetFingerprintExtractor as F; init = F.__init__; "
            "F.__init__ = lambda self, *a, **k: (init(self, *a, **k), "
            f"setattr(self, 'num_foreground_voxels_for_intensitystats', {samples}))[0]; ")


def _nnunet_command(name: str, setup: str = "") -> list[str]:
    """Command line running nnU-Net's console script ``name`` with the running interpreter.

    It does what the installed console script does (import the entry point, call it), as
    ``python -c``: nnU-Net's worker pools use the ``spawn`` start method, and a spawned worker
    first re-imports a script ``__main__`` (for ``nnUNetv2_train`` the whole training stack,
    ~6 s per worker on two cores) but not a ``-c`` one. Its pools' workers are forked from a
    server that imported torch once (:mod:`nnbridge.demo.workers`) unless
    ``NNBRIDGE_NNUNET_FORKSERVER=0``.
    """
    module, func = _ENTRY_POINTS[name]
    code = f"import sys; {workers.command_setup()}{setup}from {module} import {func} as entry; sys.argv[0] = {name!r}; sys.exit(entry())"
    return [sys.executable, "-c", code]


def _run_logged(cmd: list[str], env: dict[str, str], log: Path | None, what: str) -> None:
    """Run ``cmd``; its output is appended to ``log`` (or kept for the error); raise on failure."""
    if log is not None:
        log = Path(log)
        log.parent.mkdir(parents=True, exist_ok=True)
        with open(log, "a") as handle:
            handle.write(f"$ {' '.join(cmd)}\n")
            handle.flush()
            proc = subprocess.run(cmd, env=env, stdout=handle, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        if proc.returncode != 0:
            raise RuntimeError(f"{what} failed (exit code {proc.returncode}); see {log}")
        return
    proc = subprocess.run(
        cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, text=True
    )
    if proc.returncode != 0:
        tail = "\n".join(proc.stdout.splitlines()[-40:])
        raise RuntimeError(f"{what} failed (exit code {proc.returncode}); last output:\n{tail}")


def _dataset_name(dataset_id: int, *roots: Path) -> str:
    """Name ``DatasetXXX_*`` of dataset ``dataset_id``, from the first root that has it."""
    for root in roots:
        matches = sorted(p.name for p in Path(root).glob(f"Dataset{dataset_id:03d}_*") if p.is_dir())
        if len(matches) > 1:
            raise RuntimeError(f"{root}: several Dataset{dataset_id:03d}_* folders: {matches}")
        if matches:
            return matches[0]
    raise RuntimeError(f"no Dataset{dataset_id:03d}_* folder in {', '.join(str(r) for r in roots)}")


def _see(log: Path | None) -> str:
    """``"; see LOG"`` for error messages, or nothing without a log."""
    return f"; see {log}" if log is not None else ""


def plan_and_preprocess(
    raw: Path,
    preprocessed: Path,
    *,
    dataset_id: int = DEMO_DATASET_ID,
    configuration: str = "3d_fullres",
    planner: str | None = None,
    log: Path | None = None,
    processes: int = 1,
) -> Path:
    """Run ``nnUNetv2_plan_and_preprocess -d ID -c CONFIG -np N -npfp N --verify_dataset_integrity``
    with N = ``processes`` (nnU-Net's workers, one case each at a time).

    (``-npfp``: fingerprint extraction has its own worker count, 8 by default.) ``planner``
    (``-pl``), e.g. ``nnUNetPlannerResEncM`` for the residual-encoder plans
    (``nnUNetResEncUNetMPlans.json``); :data:`INTENSITY_SAMPLES_ENV` sets the fingerprint's
    intensity samples. Output is appended to ``log``; a failure raises
    :class:`RuntimeError` naming it. Returns the preprocessed dataset folder.
    """
    name = _dataset_name(dataset_id, raw)
    env = nnunet_env(raw, preprocessed, preprocessed, for_training=False)
    del env["nnUNet_results"]  # planning writes no results
    Path(preprocessed).mkdir(parents=True, exist_ok=True)
    cmd = _nnunet_command("nnUNetv2_plan_and_preprocess", _intensity_samples_setup()) + [
        "-d", str(dataset_id), "-c", configuration, "-np", str(int(processes)), "-npfp", str(int(processes)),
        "--verify_dataset_integrity", "--no_pbar",
    ]  # fmt: skip
    if planner:
        cmd += ["-pl", planner]
    _run_logged(cmd, env, log, f"nnUNetv2_plan_and_preprocess of dataset {dataset_id}")
    out = Path(preprocessed) / name
    if not any(out.glob("*Plans.json")):
        raise RuntimeError(f"{out}: no plans file after planning{_see(log)}")
    return out


def preprocess(
    raw: Path,
    preprocessed: Path,
    *,
    dataset_id: int = DEMO_DATASET_ID,
    plans: str = DEMO_PLANS,
    configuration: str = "3d_lowres",
    log: Path | None = None,
) -> Path:
    """Run ``nnUNetv2_preprocess -d ID -plans_name PLANS -c CONFIG -np 1`` (nnU-Net's
    preprocessing of a configuration of existing plans, e.g. :func:`add_lowres_cascade`'s
    ``3d_lowres``). Returns the folder of the preprocessed cases (the ``data_identifier``)."""
    name = _dataset_name(dataset_id, raw)
    env = nnunet_env(raw, preprocessed, preprocessed, for_training=False)
    del env["nnUNet_results"]
    cmd = _nnunet_command("nnUNetv2_preprocess") + [
        "-d", str(dataset_id), "-plans_name", plans, "-c", configuration, "-np", "1", "--no_pbar",
    ]  # fmt: skip
    _run_logged(cmd, env, log, f"nnUNetv2_preprocess of {configuration} of dataset {dataset_id}")
    folder = Path(preprocessed) / name
    out = folder / json.loads((folder / f"{plans}.json").read_text())["configurations"][configuration]["data_identifier"]
    if not any(out.glob("*.pkl")):
        raise RuntimeError(f"{out}: no preprocessed case after preprocessing{_see(log)}")
    return out


def write_preprocessed_flag(preprocessed_dataset_dir: Path, configuration: str, flag: Path) -> Path:
    """Write ``flag``: a JSON list of the cases preprocessed for ``configuration``.

    The flag stands for the data folder in the workflow (a ``directory()`` output would get a
    snakemake timestamp file inside, which nnU-Net's dataset reader refuses). Raises when the
    folder named by the plans' ``data_identifier`` holds no preprocessed case.
    """
    folder = Path(preprocessed_dataset_dir)
    plans = json.loads((folder / "nnUNetPlans.json").read_text())
    data_folder = folder / plans["configurations"][configuration]["data_identifier"]
    cases = sorted(p.name.split(".")[0] for p in data_folder.glob("*.pkl")) if data_folder.is_dir() else []
    if not cases:
        raise RuntimeError(f"{data_folder}: no preprocessed case; nnUNetv2_plan_and_preprocess did not finish")
    Path(flag).write_text(json.dumps({"data_folder": str(data_folder), "cases": cases}, indent=1) + "\n")
    return Path(flag)


def derive_small_plans(
    preprocessed_dataset_dir: Path,
    *,
    source_plans: str = "nnUNetPlans",
    target_plans: str = DEMO_PLANS,
    configuration: str = "3d_fullres",
    features: tuple[int, ...] = DEFAULT_FEATURES,
    patch_size: tuple[int, ...] | None = None,
    batch_size: int = DEFAULT_BATCH,
) -> Path:
    """Write ``<target_plans>.json`` next to the planner's plans, with a small CPU-sized network.

    Keeps only ``configuration``, with its ``data_identifier``, so the data preprocessed for
    ``source_plans`` is reused as is. The network keeps the planner's architecture class and
    settings but gets ``len(features)`` stages with ``features`` channels, 3x3(x3) kernels and
    2x pooling between stages. ``patch_size`` (default: the median image size, i.e. one patch
    covers a whole demo image) is rounded up to a multiple of the total stride.
    Returns the path of the new plans file.
    """
    folder = Path(preprocessed_dataset_dir)
    source = folder / f"{source_plans}.json"
    if not source.is_file():
        raise RuntimeError(f"{source}: not found; run plan_and_preprocess first")
    plans: dict[str, Any] = json.loads(source.read_text())
    config = copy.deepcopy(plans["configurations"].get(configuration))
    if config is None:
        raise RuntimeError(f"{source}: no configuration {configuration!r}")
    if "inherits_from" in config or "architecture" not in config:
        raise RuntimeError(f"{source}: configuration {configuration!r} must be a full one with 'architecture'")
    if not (folder / config["data_identifier"]).is_dir():
        raise RuntimeError(f"{folder / config['data_identifier']}: not preprocessed; run plan_and_preprocess first")
    n_stages = len(features)
    if n_stages < 2 or min(features) < 1:
        raise ValueError(f"features={features}: need two or more stages of positive width")
    dim = len(config["patch_size"])
    stride = 2 ** (n_stages - 1)
    wanted = config["median_image_size_in_voxels"] if patch_size is None else patch_size
    if len(wanted) != dim:
        raise ValueError(f"patch_size {patch_size}: configuration {configuration!r} is {dim}D")
    patch = [int(-(-round(float(p)) // stride) * stride) for p in wanted]

    kwargs = config["architecture"]["arch_kwargs"]
    kwargs.update(
        {
            "n_stages": n_stages,
            "features_per_stage": [int(f) for f in features],
            "kernel_sizes": [[3] * dim for _ in range(n_stages)],
            "strides": [[1] * dim] + [[2] * dim for _ in range(n_stages - 1)],
            "n_conv_per_stage_decoder": [2] * (n_stages - 1),
        }
    )
    if "n_blocks_per_stage" in kwargs:  # residual encoder plans
        kwargs["n_blocks_per_stage"] = [1] * n_stages
    else:
        kwargs["n_conv_per_stage"] = [2] * n_stages
    config["patch_size"] = patch
    config["batch_size"] = int(batch_size)
    plans["plans_name"] = target_plans
    plans["configurations"] = {configuration: config}
    target = folder / f"{target_plans}.json"
    target.write_text(json.dumps(plans, indent=4) + "\n")
    return target


def add_lowres_cascade(
    preprocessed_dataset_dir: Path,
    *,
    plans: str = DEMO_PLANS,
    spacing_factor: float = 2.0,
) -> Path:
    """Add ``3d_lowres`` and ``3d_cascade_fullres`` to the ``3d_fullres`` plans ``<plans>.json``,
    laid out as nnU-Net's planner lays them out for large images (which the demo's are not).

    ``3d_lowres`` is ``3d_fullres`` at ``spacing_factor`` times its spacing (median image size and
    patch size shrunk accordingly, the patch a multiple of the total stride), with its own
    ``data_identifier`` (``<plans>_3d_lowres``: preprocess it with :func:`preprocess`) and
    ``next_stage: 3d_cascade_fullres``; ``3d_cascade_fullres`` inherits from ``3d_fullres`` (and
    its preprocessed data) with ``previous_stage: 3d_lowres``. Returns the plans file.
    """
    target = Path(preprocessed_dataset_dir) / f"{plans}.json"
    if not target.is_file():
        raise RuntimeError(f"{target}: not found; run derive_small_plans first")
    content: dict[str, Any] = json.loads(target.read_text())
    fullres = content["configurations"].get("3d_fullres")
    if fullres is None or "architecture" not in fullres:
        raise RuntimeError(f"{target}: needs a full 3d_fullres configuration")
    lowres = copy.deepcopy(fullres)
    stride = [int(np.prod([s[d] for s in lowres["architecture"]["arch_kwargs"]["strides"]])) for d in range(3)]
    median = [max(1, round(m / spacing_factor)) for m in fullres["median_image_size_in_voxels"]]
    lowres.update(
        {
            "data_identifier": f"{plans}_3d_lowres",
            "spacing": [float(s) * spacing_factor for s in fullres["spacing"]],
            "median_image_size_in_voxels": median,
            "patch_size": [int(-(-m // k) * k) for m, k in zip(median, stride)],
            "next_stage": "3d_cascade_fullres",
        }
    )
    content["configurations"]["3d_lowres"] = lowres
    content["configurations"]["3d_cascade_fullres"] = {"inherits_from": "3d_fullres", "previous_stage": "3d_lowres"}
    target.write_text(json.dumps(content, indent=4) + "\n")
    return target


def write_splits(
    preprocessed_dataset_dir: Path,
    *,
    plans: str = DEMO_PLANS,
    configuration: str = "3d_fullres",
) -> Path:
    """Write ``splits_final.json``: nnU-Net's default 5-fold split of the preprocessed cases.

    The same split ``nnUNetTrainer.do_split`` creates on first use (sorted case identifiers,
    ``generate_crossval_split(seed=12345, n_splits=5)``), written up front so that folds trained
    in parallel do not race to create it. Returns the path of the file.
    """
    from batchgenerators.utilities.file_and_folder_operations import save_json  # noqa: PLC0415
    from nnunetv2.training.dataloading.nnunet_dataset import infer_dataset_class  # noqa: PLC0415
    from nnunetv2.utilities.crossval_split import generate_crossval_split  # noqa: PLC0415

    folder = Path(preprocessed_dataset_dir)
    plans_file = folder / f"{plans}.json"
    if not plans_file.is_file():
        raise RuntimeError(f"{plans_file}: not found; run plan_and_preprocess (and derive_small_plans) first")
    data_folder = folder / json.loads(plans_file.read_text())["configurations"][configuration]["data_identifier"]
    if not data_folder.is_dir():
        raise RuntimeError(f"{data_folder}: not preprocessed; run plan_and_preprocess first")
    identifiers = sorted(infer_dataset_class(str(data_folder)).get_identifiers(str(data_folder)))
    if len(identifiers) < 5:
        raise RuntimeError(f"{data_folder}: {len(identifiers)} cases; a 5-fold split needs at least 5")
    target = folder / "splits_final.json"
    save_json(generate_crossval_split(identifiers, seed=12345, n_splits=5), str(target))
    return target


def train_fold(
    fold: int,
    *,
    raw: Path,
    preprocessed: Path,
    results: Path,
    dataset_id: int = DEMO_DATASET_ID,
    configuration: str = "3d_fullres",
    plans: str = DEMO_PLANS,
    trainer: str = DEMO_TRAINER,
    epochs: int | None = None,
    iterations: int | None = None,
    threads: int | None = None,
    npz: bool = False,
    log: Path | None = None,
) -> Path:
    """Run ``nnUNetv2_train ID CONFIG FOLD -tr TRAINER -p PLANS -device cpu [--npz]``.

    That is nnU-Net's training including its final validation of the fold (``validation/``
    with ``summary.json``; with ``npz`` also the probabilities, ``validation/<case>.npz``, that
    ``nnUNetv2_find_best_configuration`` needs to ensemble configurations). ``epochs`` /
    ``iterations`` (per epoch) override the demo trainer's defaults via ``NNBRIDGE_DEMO_EPOCHS``
    / ``NNBRIDGE_DEMO_ITERS``; ``threads`` its torch threads (``NNBRIDGE_DEMO_THREADS``; else
    nnU-Net's one per core). Output is
    appended to ``log``; a failure raises :class:`RuntimeError` naming it. Returns the fold
    folder ``results/<dataset>/<trainer>__<plans>__<configuration>/fold_<fold>``.
    """
    name = _dataset_name(dataset_id, preprocessed, raw)
    env = nnunet_env(raw, preprocessed, results, for_training=True)
    if epochs is not None:
        env["NNBRIDGE_DEMO_EPOCHS"] = str(int(epochs))
    if iterations is not None:
        env["NNBRIDGE_DEMO_ITERS"] = str(int(iterations))
    if threads is not None:
        env["NNBRIDGE_DEMO_THREADS"] = str(int(threads))
    Path(results).mkdir(parents=True, exist_ok=True)
    cmd = _nnunet_command("nnUNetv2_train") + [
        str(dataset_id), configuration, str(fold), "-tr", trainer, "-p", plans, "-device", "cpu",
    ] + (["--npz"] if npz else [])  # fmt: skip
    _run_logged(cmd, env, log, f"nnUNetv2_train of fold {fold} of dataset {dataset_id}")
    fold_dir = Path(results) / name / f"{trainer}__{plans}__{configuration}" / f"fold_{fold}"
    for needed in ("checkpoint_final.pth", "validation/summary.json"):
        if not (fold_dir / needed).is_file():
            raise RuntimeError(f"{fold_dir / needed}: missing after training{_see(log)}")
    return fold_dir


def validation_dice(fold_dir: Path) -> dict[str, float]:
    """Mean Dice per label of nnU-Net's final validation of a fold, plus ``"mean"``.

    Reads ``fold_dir/validation/summary.json``; labels are named by the ``dataset.json`` of the
    model folder (the fold's parent), e.g. ``{"sphere": 0.95, "box": 0.97, "mean": 0.96}``.
    """
    fold_dir = Path(fold_dir)
    summary_file = fold_dir / "validation" / "summary.json"
    if not summary_file.is_file():
        raise RuntimeError(f"{summary_file}: not found; the fold's final validation did not run")
    summary = json.loads(summary_file.read_text())
    labels = json.loads((fold_dir.parent / "dataset.json").read_text())["labels"]
    names = {str(value): name for name, value in labels.items() if isinstance(value, int)}
    dice = {names.get(str(key), str(key)): float(metrics["Dice"]) for key, metrics in summary["mean"].items()}
    dice["mean"] = float(summary["foreground_mean"]["Dice"])
    return dice


def export_model_zip(
    results: Path,
    out: Path,
    *,
    dataset_id: int = DEMO_DATASET_ID,
    configurations: tuple[str, ...] = ("3d_fullres",),
    folds: tuple[str | int, ...] = (0,),
    checkpoints: tuple[str, ...] = ("checkpoint_final.pth",),
    plans: str = DEMO_PLANS,
    trainer: str = DEMO_TRAINER,
    log: Path | None = None,
) -> Path:
    """Run ``nnUNetv2_export_model_to_zip -d ID -o OUT -c CONFIGS -tr TRAINER -p PLANS -f FOLDS
    -chk CHECKPOINTS``: the zip nnU-Net users share (every configuration needs every fold).
    Returns the zip."""
    env = nnunet_env(results, results, results, for_training=False)
    cmd = _nnunet_command("nnUNetv2_export_model_to_zip") + [
        "-d", str(dataset_id), "-o", str(Path(out).resolve()), "-c", *configurations, "-tr", trainer,
        "-p", plans, "-f", *[str(f) for f in folds], "-chk", *checkpoints,
    ]  # fmt: skip
    Path(out).parent.mkdir(parents=True, exist_ok=True)
    _run_logged(cmd, env, log, f"nnUNetv2_export_model_to_zip of dataset {dataset_id}")
    if not Path(out).is_file():
        raise RuntimeError(f"{out}: no zip after nnUNetv2_export_model_to_zip{_see(log)}")
    return Path(out)


def find_best_configuration(
    raw: Path,
    preprocessed: Path,
    results: Path,
    *,
    dataset_id: int = DEMO_DATASET_ID,
    configurations: tuple[str, ...] = ("3d_fullres",),
    folds: tuple[str | int, ...] = (0,),
    plans: str = DEMO_PLANS,
    trainer: str = DEMO_TRAINER,
    log: Path | None = None,
) -> dict[str, Any]:
    """Run ``nnUNetv2_find_best_configuration ID -c CONFIGS -f FOLDS -p PLANS -tr TRAINER -np 1``.

    nnU-Net collects each configuration's validation predictions of ``folds``
    (``<model>/crossval_results_folds_<folds>/``), ensembles every pair from the folds'
    ``validation/*.npz`` (train with ``npz=True``; ``<results>/<dataset>/ensembles/``), evaluates
    all against the reference labels, and runs ``determine_postprocessing`` on the best one only
    (its ``postprocessing.pkl``). Returns the ``inference_information.json`` it writes beside
    ``inference_instructions.txt`` in ``<results>/<dataset>/``.
    """
    name = _dataset_name(dataset_id, preprocessed, raw)
    env = nnunet_env(raw, preprocessed, results, for_training=False)
    cmd = _nnunet_command("nnUNetv2_find_best_configuration") + [
        str(dataset_id), "-c", *configurations, "-f", *[str(f) for f in folds], "-p", plans, "-tr", trainer,
        "-np", "1",
    ]  # fmt: skip
    _run_logged(cmd, env, log, f"nnUNetv2_find_best_configuration of dataset {dataset_id}")
    info = Path(results) / name / "inference_information.json"
    if not info.is_file():
        raise RuntimeError(f"{info}: missing after nnUNetv2_find_best_configuration{_see(log)}")
    return json.loads(info.read_text())
