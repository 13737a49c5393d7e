"""The demo dataset and the small plans derived from nnU-Net's real planner (no training here)."""

from __future__ import annotations

import json
import os
import re
import sys
from pathlib import Path

import numpy as np
import pytest

try:
    from nnbridge.demo import dataset, nnunet as demo
    from nnbridge.models import TRAINER_DIR
except ImportError:  # running from a checkout without `pip install -e .`
    sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "src"))
    from nnbridge.demo import dataset, nnunet as demo
    from nnbridge.models import TRAINER_DIR

SHAPE = (32, 32, 32)


def _read(path: Path) -> np.ndarray:
    import nibabel as nib

    return np.asarray(nib.load(str(path)).dataobj)


@pytest.fixture(scope="module")
def tiny_raw(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return dataset.make_dataset(tmp_path_factory.mktemp("raw"), n_cases=5, shape=SHAPE, seed=7)


def test_dataset_layout(tiny_raw: Path) -> None:
    assert tiny_raw.name == dataset.DEMO_DATASET_NAME
    info = json.loads((tiny_raw / "dataset.json").read_text())
    assert info["labels"] == {"background": 0, "sphere": 1, "box": 2}
    assert info["channel_names"] == {"0": "MRI"}
    assert info["numTraining"] == 5
    assert info["file_ending"] == ".nii.gz"
    cases = sorted(p.name for p in (tiny_raw / "labelsTr").iterdir())
    assert cases == [f"case_{i:03d}.nii.gz" for i in range(5)]
    assert sorted(p.name for p in (tiny_raw / "imagesTr").iterdir()) == [
        f"case_{i:03d}_0000.nii.gz" for i in range(5)
    ]
    import nibabel as nib

    header = nib.load(str(tiny_raw / "imagesTr" / "case_000_0000.nii.gz")).header
    assert tuple(header.get_zooms()) == (1.0, 1.0, 1.0)
    assert tuple(header.get_data_shape()) == SHAPE


def test_every_case_has_both_labels_and_contrast(tiny_raw: Path) -> None:
    for i in range(5):
        labels = _read(tiny_raw / "labelsTr" / f"case_{i:03d}.nii.gz")
        image = _read(tiny_raw / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        assert set(np.unique(labels).tolist()) == {0, 1, 2}
        # sphere brighter, box darker than the background, but noisy: classes overlap a little
        bg, sphere, box = (image[labels == k] for k in (0, 1, 2))
        assert sphere.mean() > bg.mean() + 2 * bg.std()
        assert box.mean() < bg.mean() - 2 * bg.std()
        assert sphere.min() < bg.max() and box.max() > bg.min()


def test_same_seed_same_data_other_seed_other_data(tiny_raw: Path, tmp_path: Path) -> None:
    again = dataset.make_dataset(tmp_path / "again", n_cases=2, shape=SHAPE, seed=7)
    other = dataset.make_dataset(tmp_path / "other", n_cases=2, shape=SHAPE, seed=8)
    for i in range(2):
        for sub, name in (("imagesTr", f"case_{i:03d}_0000.nii.gz"), ("labelsTr", f"case_{i:03d}.nii.gz")):
            first, second = tiny_raw / sub / name, again / sub / name
            np.testing.assert_array_equal(_read(first), _read(second))
            assert first.read_bytes() == second.read_bytes()
            assert not np.array_equal(_read(first), _read(other / sub / name))


def test_dataset_name_must_match_id(tmp_path: Path) -> None:
    with pytest.raises(ValueError):
        dataset.make_dataset(tmp_path, n_cases=1, shape=SHAPE, dataset_id=901, dataset_name="Dataset900_X")


def test_nnunet_env(tmp_path: Path) -> None:
    train = demo.nnunet_env(tmp_path / "r", tmp_path / "p", tmp_path / "res")
    assert train["nnUNet_extTrainer"] == str(TRAINER_DIR)
    assert (TRAINER_DIR / f"{demo.DEMO_TRAINER}.py").is_file()
    assert train["nnUNet_def_n_proc"] == "1" and train["nnUNet_n_proc_DA"] == "0"
    assert Path(train["nnUNet_results"]).is_absolute()
    plan = demo.nnunet_env(tmp_path / "r", tmp_path / "p", tmp_path / "res", for_training=False)
    assert "nnUNet_def_n_proc" not in plan and "nnUNet_n_proc_DA" not in plan


def test_real_planning_then_small_plans(tiny_model, tmp_path: Path) -> None:
    """nnU-Net's planning as the session's tiny model ran it (tests/conftest.py: plan_and_preprocess,
    then derive_small_plans, on 10 demo cases of the default shape); the small plans derived again
    here, next to a copy of nnU-Net's plans."""
    built = tiny_model.preprocessed
    assert built.name == dataset.DEMO_DATASET_NAME
    assert {p.name for p in built.glob("*.json")} >= {"dataset.json", "dataset_fingerprint.json", "nnUNetPlans.json"}
    pre = tmp_path / dataset.DEMO_DATASET_NAME
    pre.mkdir()
    for name in ("dataset.json", "dataset_fingerprint.json", "nnUNetPlans.json"):
        (pre / name).write_bytes((built / name).read_bytes())
    source = json.loads((pre / "nnUNetPlans.json").read_text())
    source_cfg = source["configurations"]["3d_fullres"]
    (pre / source_cfg["data_identifier"]).symlink_to(built / source_cfg["data_identifier"])
    assert len(list((pre / source_cfg["data_identifier"]).glob("*.pkl"))) == 10  # every case preprocessed

    target = demo.derive_small_plans(pre)
    assert target == pre / f"{demo.DEMO_PLANS}.json"
    assert target.read_bytes() == (built / target.name).read_bytes()  # what the fixture derived
    plans = json.loads(target.read_text())
    assert plans["plans_name"] == demo.DEMO_PLANS
    assert list(plans["configurations"]) == ["3d_fullres"]
    cfg = plans["configurations"]["3d_fullres"]
    assert cfg["data_identifier"] == source_cfg["data_identifier"]
    assert (pre / cfg["data_identifier"]).is_dir()  # the planner's preprocessed data is reused
    arch = cfg["architecture"]["arch_kwargs"]
    assert arch["features_per_stage"] == list(demo.DEFAULT_FEATURES)
    assert arch["n_stages"] == len(arch["strides"]) == len(arch["kernel_sizes"]) == len(demo.DEFAULT_FEATURES)
    stride = np.prod(np.array(arch["strides"]), axis=0)
    assert all(p % s == 0 for p, s in zip(cfg["patch_size"], stride))
    assert cfg["patch_size"] == list(dataset.DEFAULT_SHAPE)
    assert cfg["batch_size"] == demo.DEFAULT_BATCH

    # nnU-Net's default 5-fold split, written before training (the same nnU-Net's training wrote)
    splits = json.loads(demo.write_splits(pre).read_text())
    assert splits == json.loads((built / "splits_final.json").read_text())
    cases = [f"case_{i:03d}" for i in range(10)]
    assert len(splits) == 5
    assert sorted(c for s in splits for c in s["val"]) == cases
    assert all(sorted(s["train"] + s["val"]) == cases for s in splits)

    # an explicit patch is rounded up to the total stride
    odd = demo.derive_small_plans(pre, target_plans="oddPatch", features=(4, 8, 16), patch_size=(30, 21, 32))
    cfg = json.loads(odd.read_text())["configurations"]["3d_fullres"]
    assert cfg["patch_size"] == [32, 24, 32]
    assert json.loads(odd.read_text())["plans_name"] == "oddPatch"

    # the plans build with nnU-Net's own network construction
    from nnunetv2.utilities.get_network_from_plans import get_network_from_plans
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    manager = PlansManager(str(target))
    config_manager = manager.get_configuration("3d_fullres")
    network = get_network_from_plans(
        config_manager.network_arch_class_name,
        config_manager.network_arch_init_kwargs,
        config_manager.network_arch_init_kwargs_req_import,
        1,
        3,
        deep_supervision=False,
    )
    import torch

    with torch.no_grad():
        out = network(torch.zeros(1, 1, *config_manager.patch_size))
    assert tuple(out.shape) == (1, 3, *dataset.DEFAULT_SHAPE)


def test_demo_training_runs_channels_last_and_writes_contiguous_checkpoints(tiny_model, tmp_path: Path) -> None:
    """The demo's trainings run their 3D networks channels-last (oneDNN's faster NDHWC kernels);
    the checkpoints they write hold the usual contiguous weights all the same."""
    import torch

    from nnbridge.demo.nets import train_demo_net

    fold = tiny_model.model_folder / "fold_0"
    assert "memory layout channels-last" in next(fold.glob("training_log_*.txt")).read_text()
    nnunet = torch.load(fold / "checkpoint_final.pth", map_location="cpu", weights_only=False)["network_weights"]
    plain = tmp_path / "unet.pth"
    cases = sorted(p.name[:-4] for p in (tiny_model.preprocessed / "nnUNetPlans_3d_fullres").glob("*.pkl"))
    train_demo_net("unet", tiny_model.preprocessed / "nnUNetPlans_3d_fullres", cases[:2], plain, num_classes=3,
                   features=[4, 8], steps=2, threads=1)
    for weights in (nnunet, torch.load(plain, map_location="cpu")["model_state_dict"]):
        # (with one input channel, or 1x1x1 kernels, both layouts are the same strides)
        convs = [v for v in weights.values() if v.dim() == 5 and v.shape[1] > 1 and min(v.shape[2:]) > 1]
        assert convs and all(v.is_contiguous() for v in convs)
        assert not any(v.is_contiguous(memory_format=torch.channels_last_3d) for v in convs)


def test_fingerprint_intensity_samples_follow_the_setting(tiny_model, monkeypatch) -> None:
    """The suite's smaller intensity sample (tests/conftest.py) reaches nnU-Net's own fingerprint
    extractor, which has no option for it; unset, nnU-Net keeps its 10^8."""
    import subprocess

    from nnbridge.demo import nnunet as demo

    root = tiny_model.preprocessed.parent.parent
    env = demo.nnunet_env(root / "raw", root / "preprocessed", root / "results", for_training=False)
    probe = ("from nnunetv2.experiment_planning.dataset_fingerprint.fingerprint_extractor import "
             "DatasetFingerprintExtractor as F; print(F(900).num_foreground_voxels_for_intensitystats)")

    def samples() -> float:
        proc = subprocess.run([sys.executable, "-c", demo._intensity_samples_setup() + probe], env=env,
                              capture_output=True, text=True)
        assert proc.returncode == 0, proc.stderr[-2000:]
        return float(proc.stdout.split()[-1])

    monkeypatch.setenv(demo.INTENSITY_SAMPLES_ENV, "1234")
    assert samples() == 1234
    monkeypatch.delenv(demo.INTENSITY_SAMPLES_ENV)
    assert samples() == 1e8


PROBE = """
import multiprocessing, os, sys


def state(_):
    # in the worker, before anything of its task is imported: is torch already there?
    return os.getppid(), "torch" in sys.modules


def main():
    # as nnU-Net asks for its pools
    with multiprocessing.get_context("spawn").Pool(1) as pool:
        parent, torch_loaded = pool.map(state, [0])[0]
    print(os.getpid(), parent, torch_loaded, "torch" in sys.modules)
"""


@pytest.mark.parametrize("setting", ["default", "0"])
def test_nnunet_workers_fork_from_a_server_with_torch_imported(tmp_path: Path, monkeypatch, setting) -> None:
    """An nnU-Net command nnbridge starts (``_nnunet_command``, a probe entry point in its place)
    gets its spawn pools' workers forked from the fork server, which imported torch before the
    worker's task arrived (the command itself never imported it); ``NNBRIDGE_NNUNET_FORKSERVER=0``
    keeps nnU-Net's spawned workers, children of the command that start without torch."""
    import subprocess

    from nnbridge.demo import workers

    (tmp_path / "nnbridge_probe.py").write_text(PROBE)
    monkeypatch.setitem(demo._ENTRY_POINTS, "probe", ("nnbridge_probe", "main"))
    if setting == "0":
        monkeypatch.setenv(workers.ENABLE_ENV, "0")
    else:
        monkeypatch.delenv(workers.ENABLE_ENV, raising=False)
    src = str(Path(demo.__file__).resolve().parents[2])
    proc = subprocess.run(demo._nnunet_command("probe"), cwd=tmp_path, capture_output=True, text=True,
                          env={**os.environ, "PYTHONPATH": f"{tmp_path}:{src}"}, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    command, parent, torch_in_worker, torch_in_command = proc.stdout.split()
    assert torch_in_command == "False"
    if setting == "0":
        assert parent == command and torch_in_worker == "False"
    else:
        assert parent != command and torch_in_worker == "True"


def test_forked_workers_are_undone_after_the_block() -> None:
    import multiprocessing

    from nnbridge.demo.workers import nnunet_workers_forked

    assert multiprocessing.get_context("spawn").get_start_method() == "spawn"
    with nnunet_workers_forked():
        assert multiprocessing.get_context("spawn").get_start_method() == "forkserver"
        assert multiprocessing.get_context("fork").get_start_method() == "fork"
    assert multiprocessing.get_context("spawn").get_start_method() == "spawn"


def test_planning_failure_names_the_log(tmp_path: Path) -> None:
    raw = tmp_path / "raw"
    broken = dataset.make_dataset(raw, n_cases=1, shape=SHAPE, dataset_id=901)
    (broken / "labelsTr" / "case_000.nii.gz").unlink()
    log = tmp_path / "plan.log"
    with pytest.raises(RuntimeError, match=re.escape(str(log))):
        demo.plan_and_preprocess(raw, tmp_path / "pre", dataset_id=901, log=log)


def test_bench_pipeline_plans_the_real_size_model_and_every_stage(tmp_path: Path) -> None:
    """`make bench-pipeline` on a fresh machine: the real-size model folder does not exist yet,
    rule realsize_model makes it, and every stage of its 5 folds is planned behind it (it was left
    out as a missing model before)."""
    from conftest import copy_project, planned_jobs, run_snakemake

    work = copy_project(tmp_path / "project")
    proc = run_snakemake(work, "--configfile", "config/realsize.yaml", "-n")
    jobs = planned_jobs(proc)
    assert "left out" not in proc.stderr, proc.stderr[-2000:]
    assert jobs["realsize_model"] == 1, jobs
    for rule in ("export_onnx", "patches", "simplify", "reference", "validate", "benchmark", "quantize_ir"):
        assert jobs[rule] == 5, (rule, jobs)
    # what the bundle does not ship (TorchScript, int8_static) on the reference fold only
    # (comparison.folds: reference); int8_accurate and bf16 on every fold
    assert jobs["export_torchscript"] == 1 and jobs["quantize"] == 3 + 2 * 4, jobs
    assert jobs["bundle"] == jobs["case_parity"] == 1, jobs
    # each artifact timed once for the 5 folds (torch eager, TorchScript, 2 fp32 graphs, 4 variants)
    assert jobs["benchmark_artifact"] == 8, jobs
    assert not {"demo_train", "demo_preprocess"} & set(jobs), jobs
