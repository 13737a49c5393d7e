"""Models as they are shared (issue 15, items 1-3 and 7): a zip from ``nnUNetv2_export_model_to_zip``
and a folder of the user's own images, without nnU-Net's preprocessed data.

One model, trained for real by nnU-Net (briefly) and shared as a zip by nnU-Net's own command, serves
every test: a ``3d_halfiso`` configuration defined on top of ``3d_fullres`` (``inherits_from``, its own
spacing and preprocessed data), fold ``all``, with ``checkpoint_final.pth`` and ``checkpoint_best.pth``.
As shared zips often are, it was trained with a trainer class this machine does not have (the demo
trainer's checkpoints, renamed ``nnUNetTrainerFromElsewhere``: the trainer builds nnU-Net's default
network, so nnbridge's fallback must load it). A real snakemake run takes the zip alone plus the raw
images without labels through export → patches → quantize → validate; dry runs plan the rest.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
import yaml

from nnbridge.core.errors import NNBridgeError
from nnbridge.demo import dataset, nnunet as demo

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")
DATASET_ID = 940
DATASET = f"Dataset{DATASET_ID}_NNBridgeDemo"
CONFIGURATION = "3d_halfiso"
SHARED_TRAINER = "nnUNetTrainerFromElsewhere"
MODEL = f"{SHARED_TRAINER}__{demo.DEMO_PLANS}__{CONFIGURATION}"
HALFISO = {"inherits_from": "3d_fullres", "data_identifier": f"{demo.DEMO_PLANS}_{CONFIGURATION}",
           "spacing": [2.0, 2.0, 2.0], "median_image_size_in_voxels": [16, 16, 16], "patch_size": [16, 16, 16]}


def _rename_trainer(folder: Path, trainer: str) -> Path:
    """A copy of a trained model folder as if ``trainer`` had trained it (folder name and the
    checkpoints' ``trainer_name``, nothing else)."""
    import torch

    target = folder.parent / f"{trainer}__{folder.name.split('__', 1)[1]}"
    shutil.copytree(folder, target)
    for checkpoint in target.glob("fold_*/checkpoint_*.pth"):
        content = torch.load(checkpoint, map_location="cpu", weights_only=False)
        content["trainer_name"] = trainer
        torch.save(content, checkpoint)
    return target


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """Dataset → nnU-Net planning → small plans + 3d_halfiso (preprocessed by nnUNetv2_preprocess)
    → fold all trained by nnUNetv2_train → renamed trainer → nnUNetv2_export_model_to_zip."""
    root = tmp_path_factory.mktemp("intake")
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    dataset.make_dataset(raw, n_cases=5, shape=(32, 32, 32), seed=1, dataset_id=DATASET_ID)
    pre_ds = demo.plan_and_preprocess(raw, pre, dataset_id=DATASET_ID, log=root / "plan.log")
    plans_file = demo.derive_small_plans(pre_ds, features=(8, 16, 32))
    plans = json.loads(plans_file.read_text())
    plans["configurations"][CONFIGURATION] = HALFISO
    plans_file.write_text(json.dumps(plans, indent=2))
    demo.preprocess(raw, pre, dataset_id=DATASET_ID, configuration=CONFIGURATION, log=root / "plan.log")
    fold_dir = demo.train_fold("all", raw=raw, preprocessed=pre, results=res, dataset_id=DATASET_ID,
                               configuration=CONFIGURATION, epochs=2, iterations=4, log=root / "train.log")
    renamed = _rename_trainer(fold_dir.parent, SHARED_TRAINER)
    model_zip = demo.export_model_zip(res, root / "shared" / "model.zip", dataset_id=DATASET_ID,
                                      configurations=(CONFIGURATION,), folds=("all",), trainer=SHARED_TRAINER,
                                      checkpoints=("checkpoint_final.pth", "checkpoint_best.pth"),
                                      log=root / "zip.log")
    return SimpleNamespace(root=root, raw=raw / DATASET, pre_ds=pre_ds, trained=fold_dir.parent, renamed=renamed,
                           zip=model_zip, images=raw / DATASET / "imagesTr", labels=raw / DATASET / "labelsTr")


def _one_line(error: pytest.ExceptionInfo) -> str:
    message = str(error.value)
    assert "\n" not in message, message
    return message


# ------------------------------------------------------------------------------------------------
# item 1: the zip, listed when the DAG is built


def test_zip_gives_every_configuration_and_fold_unless_narrowed(shared, tmp_path):
    from nnbridge.pipeline.plan import discover_models

    cache = tmp_path / "cache"
    base = {"zip": str(shared.zip), "images": str(shared.images)}
    models = discover_models([base], zip_cache=cache)
    assert list(models) == [f"{DATASET}/{MODEL}"]
    model = models[f"{DATASET}/{MODEL}"]
    assert model.folds == ("all",) and model.checkpoint == "checkpoint_final.pth"
    from nnbridge.core.runlog import sha256_file

    sha = sha256_file(shared.zip)
    assert model.folder == f"{cache}/{sha[:16]}/{DATASET}/{MODEL}"  # keyed by the zip's sha256
    assert json.loads((cache / "sha256.json").read_text()) == {
        f"{shared.zip.resolve()}|{shared.zip.stat().st_size}|{shared.zip.stat().st_mtime_ns}": sha}
    assert model.zip_member(f"{model.folder}/fold_all/checkpoint_best.pth") == f"{DATASET}/{MODEL}/fold_all/checkpoint_best.pth"
    assert model.zip_member(f"{model.folder}/fold_0/checkpoint_final.pth") is None
    assert not (cache / sha[:16]).exists()  # nothing unpacked when the DAG is built
    assert sorted(model.images.cases) == [f"case_{i:03d}" for i in range(5)]
    best = discover_models([{**base, "checkpoint": "checkpoint_best.pth", "configurations": [CONFIGURATION],
                             "folds": ["all"]}], zip_cache=cache)[f"{DATASET}/{MODEL}"]
    assert best.checkpoint_of("all").endswith("fold_all/checkpoint_best.pth")
    for narrowed, expected in (({"configurations": ["3d_fullres"]}, "configuration '3d_fullres' is not in the zip"),
                               ({"folds": [0]}, "no fold_0/checkpoint_final.pth in the zip")):
        with pytest.raises(NNBridgeError) as error:
            discover_models([{**base, **narrowed}], zip_cache=cache)
        assert expected in _one_line(error) and str(shared.zip) in str(error.value)

    # a zip of a whole nnUNet_results folder: every model folder in it is a model
    both = tmp_path / "both.zip"
    with zipfile.ZipFile(both, "w") as archive:
        for folder in (shared.trained, shared.renamed):
            for f in sorted(folder.rglob("*")):
                if f.is_file():
                    archive.write(f, f"nnUNet_results/{f.relative_to(folder.parent.parent)}")
    models = discover_models([{"zip": str(both), "images": str(shared.images)}], zip_cache=cache)
    assert sorted(models) == sorted(f"{DATASET}/{f.name}" for f in (shared.trained, shared.renamed))


def test_zip_with_a_path_outside_its_root_is_refused(shared, tmp_path):
    from nnbridge.intake.modelzip import extract_member
    from nnbridge.pipeline.plan import discover_models

    for evil in ("../../outside.txt", "/etc/evil", f"{DATASET}/../../x", "C:\\evil"):
        bad = tmp_path / "bad.zip"
        shutil.copy(shared.zip, bad)
        with zipfile.ZipFile(bad, "a") as archive:
            archive.writestr(zipfile.ZipInfo(evil), b"x")
        with pytest.raises(NNBridgeError) as error:
            discover_models([{"zip": str(bad), "images": str(shared.images)}], zip_cache=tmp_path / "cache")
        assert "zip-slip" in _one_line(error) and repr(evil) in str(error.value)
        with pytest.raises(NNBridgeError, match="zip-slip"):
            extract_member(bad, evil, tmp_path / "out")
    assert not (tmp_path / "out").exists() and not (tmp_path.parent / "outside.txt").exists()


# ------------------------------------------------------------------------------------------------
# item 3: a trainer class that is not installed


def test_trainer_not_installed_builds_the_default_network_with_a_note(shared):
    """(The export record and the console line: the pipeline test.)"""
    from nnbridge.models.nnunet import find_trainer_class, load_nnunet_fold

    with pytest.raises(NNBridgeError):  # really not installed
        find_trainer_class(SHARED_TRAINER)
    fold = load_nnunet_fold(shared.renamed, "all", "checkpoint_best.pth")
    assert fold.trainer_name == SHARED_TRAINER and fold.weight_check.ok
    assert SHARED_TRAINER in fold.trainer_note and "not installed" in fold.trainer_note
    assert "\n" not in fold.trainer_note
    # the installed trainer loads as before, without a note, into the same network
    trained = load_nnunet_fold(shared.trained, "all", "checkpoint_best.pth")
    assert trained.trainer_note is None and type(trained.network) is type(fold.network)


def test_trainer_not_installed_that_builds_another_network_is_refused(shared, tmp_path):
    """A trainer whose build_network_architecture widens the network: its weights do not fit the
    default network, and the strict load says so in one line."""
    import importlib.util

    import torch
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    from nnbridge.models.nnunet import load_nnunet_fold

    (tmp_path / "trainers").mkdir()
    (tmp_path / "trainers" / "nnUNetTrainerWide.py").write_text(
        "from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer\n"
        "from nnunetv2.utilities.get_network_from_plans import get_network_from_plans\n\n\n"
        "class nnUNetTrainerWide(nnUNetTrainer):\n"
        "    @staticmethod\n"
        "    def build_network_architecture(plans_manager, configuration_manager, num_input_channels,\n"
        "                                   num_output_channels, enable_deep_supervision=True):\n"
        "        kwargs = dict(configuration_manager.network_arch_init_kwargs)\n"
        "        kwargs['features_per_stage'] = [2 * f for f in kwargs['features_per_stage']]\n"
        "        return get_network_from_plans(configuration_manager.network_arch_class_name, kwargs,\n"
        "                                      configuration_manager.network_arch_init_kwargs_req_import,\n"
        "                                      num_input_channels, num_output_channels,\n"
        "                                      deep_supervision=enable_deep_supervision)\n")
    spec = importlib.util.spec_from_file_location("nnUNetTrainerWide", tmp_path / "trainers" / "nnUNetTrainerWide.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    folder = tmp_path / DATASET / f"nnUNetTrainerWide__{demo.DEMO_PLANS}__{CONFIGURATION}"
    shutil.copytree(shared.trained, folder)
    checkpoint_file = folder / "fold_all" / "checkpoint_final.pth"
    checkpoint = torch.load(checkpoint_file, map_location="cpu", weights_only=False)
    plans_manager = PlansManager(checkpoint["init_args"]["plans"])
    wide = module.nnUNetTrainerWide.build_network_architecture(
        plans_manager, plans_manager.get_configuration(CONFIGURATION), 1, 3, enable_deep_supervision=True)
    checkpoint.update(trainer_name="nnUNetTrainerWide", network_weights=wide.state_dict())
    torch.save(checkpoint, checkpoint_file)
    with pytest.raises(NNBridgeError) as error:
        load_nnunet_fold(folder, "all")
    message = _one_line(error)
    assert str(checkpoint_file) in message and "nnUNetTrainerWide" in message
    assert "not installed" in message and "nnUNet_extTrainer" in message


# ------------------------------------------------------------------------------------------------
# item 2: images instead of nnU-Net's preprocessed folder


def test_images_are_preprocessed_by_the_plans_own_preprocessor(shared, tmp_path):
    """nnbridge's preprocessing of the images equals what nnUNetv2_preprocess wrote for the same
    configuration (3d_halfiso: its own spacing, inherited normalization and resampling)."""
    import blosc2
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2

    from nnbridge.intake.images import list_image_cases, preprocess_images

    dataset_json = json.loads((shared.trained / "dataset.json").read_text())
    labelled = list_image_cases(shared.images, dataset_json, shared.labels)
    cases = {c: labelled[c] for c in ("case_000", "case_001")}
    record = preprocess_images(shared.trained, cases, tmp_path / "with_labels")
    assert record["configuration"] == CONFIGURATION and record["labels"]
    assert record["preprocessor"].endswith("DefaultPreprocessor")
    ours = Path(record["data_folder"])
    theirs = shared.pre_ds / HALFISO["data_identifier"]
    assert ours.name == theirs.name
    for case in cases:
        a = blosc2.open(urlpath=str(ours / f"{case}.b2nd"), mode="r")[:]
        b = blosc2.open(urlpath=str(theirs / f"{case}.b2nd"), mode="r")[:]
        assert a.shape == (1, 16, 16, 16)  # halfiso's spacing 2 on 32^3 images
        np.testing.assert_array_equal(a, b)
        props = nnUNetDatasetBlosc2(str(ours), [case]).load_case(case)[3]
        assert set(props["class_locations"]) == {1, 2}
    unlabelled = preprocess_images(shared.trained, {c: {**f, "label": None} for c, f in cases.items()},
                                   tmp_path / "without")
    assert not unlabelled["labels"]
    props = nnUNetDatasetBlosc2(unlabelled["data_folder"], ["case_000"]).load_case("case_000")[3]
    assert "class_locations" not in props
    with pytest.raises(NNBridgeError) as error:  # labels for some cases only
        empty = tmp_path / "labels"
        empty.mkdir()
        shutil.copy(shared.labels / "case_000.nii.gz", empty)
        list_image_cases(shared.images, dataset_json, empty)
    assert "case_001.nii.gz missing" in _one_line(error)


def test_split_of_the_images(shared, tmp_path):
    """With a splits_final.json (nnU-Net's own 5-fold split) the fold's split decides; fold all
    and missing splits give a seeded split, recorded; calibration and held-out never overlap."""
    from nnbridge.patches.images import image_split

    splits_file = demo.write_splits(shared.pre_ds, configuration=CONFIGURATION)
    splits = json.loads(splits_file.read_text())
    cases = [f"case_{i:03d}" for i in range(5)] + ["new_case"]
    for k in range(5):
        split = image_split(cases, str(k), splits_file)
        assert split["source"] == "splits_final.json"
        assert split["calibration"] == sorted(splits[k]["train"])
        assert split["heldout"] == sorted([*splits[k]["val"], "new_case"]) and split["not_in_split"] == ["new_case"]
    seeded = image_split(cases, "0", None, seed=3)
    assert seeded["source"] == "seeded" and seeded["seed"] == 3 and "held-out" in seeded["note"]
    assert len(seeded["heldout"]) == 1 and sorted(seeded["calibration"] + seeded["heldout"]) == sorted(cases)
    assert image_split(cases, "0", None, seed=3) == seeded
    assert image_split(cases, "all", splits_file, seed=3)["source"] == "seeded"  # fold all trained on all
    for bad_cases, expected in ((["new_case", "other"], "none is a training case"),
                                (sorted(splits[0]["train"]), "every one is a training case")):
        with pytest.raises(NNBridgeError) as error:
            image_split(bad_cases, "0", splits_file)
        assert expected in _one_line(error)
    with pytest.raises(NNBridgeError) as error:
        image_split(["case_000"], "all")
    assert "two cases or more" in _one_line(error)


def test_labelled_patches_centre_on_labelled_foreground(shared, tmp_path):
    import blosc2

    from nnbridge.intake.images import list_image_cases, preprocess_images
    from nnbridge.models.nnunet import nnunet_source
    from nnbridge.patches.images import write_image_patch_sets
    from nnbridge.patches.sampling import load_patches

    dataset_json = json.loads((shared.trained / "dataset.json").read_text())
    cases = list_image_cases(shared.images, dataset_json, shared.labels)
    record = preprocess_images(shared.trained, cases, tmp_path / "pre")
    summary = write_image_patch_sets(nnunet_source(shared.trained, "all"), tmp_path / "pre", "all",
                                     tmp_path / "cal.npz", tmp_path / "held.npz", cases=sorted(cases), labels=True,
                                     splits=None, n_calibration=6, n_heldout=3, seed=0, foreground_fraction=1.0)
    assert summary["foreground"]["from"] == "labels" and summary["split"]["source"] == "seeded"
    assert not set(summary["calibration"]["cases"]) & set(summary["heldout"]["cases"])
    assert load_patches(tmp_path / "held.npz").shape == (3, 1, 16, 16, 16)
    for name in ("calibration", "heldout"):
        assert summary[name]["foreground_centred"] == summary[name]["n"]
        for patch in summary[name]["patches"]:  # the centre is that class in nnU-Net's own seg
            seg = blosc2.open(urlpath=f"{record['data_folder']}/{patch['case']}_seg.b2nd", mode="r")[:][0]
            centre = tuple(np.array(patch["start"]) + 8)
            assert seg[centre] == patch["class"], patch


def test_folder_with_preprocessed_data_fold_all_best_checkpoint_and_inherited_configuration(shared, tmp_path):
    """Item 7 the way a trainer holds the model (a model folder and nnUNet_preprocessed): fold all
    and checkpoint_best.pth found by configuration alone, 3d_halfiso's own preprocessed data."""
    from nnbridge.models.nnunet import load_nnunet_fold
    from nnbridge.patches.sampling import load_patches, write_patch_sets
    from nnbridge.pipeline.plan import discover_models

    demo.write_splits(shared.pre_ds, configuration=CONFIGURATION)
    entry = {"folder": str(shared.trained), "preprocessed": str(shared.pre_ds), "checkpoint": "checkpoint_best.pth"}
    model = discover_models([entry])[f"{DATASET}/{shared.trained.name}"]
    assert model.folds == ("all",) and model.source("all")["checkpoint"] == "checkpoint_best.pth"
    fold = load_nnunet_fold(shared.trained, "all", "checkpoint_best.pth")
    assert fold.configuration == CONFIGURATION and fold.patch_size == (16, 16, 16)
    summary = write_patch_sets(model.source("all"), shared.pre_ds, "all", tmp_path / "cal.npz", tmp_path / "held.npz",
                               n_calibration=2, n_heldout=2, seed=0, foreground_fraction=0.5)
    assert Path(summary["data_folder"]).name == HALFISO["data_identifier"] and "seen in training" in summary["note"]
    assert load_patches(tmp_path / "held.npz").shape == (2, 1, 16, 16, 16)


# ------------------------------------------------------------------------------------------------
# the pipeline: a zip alone plus unlabelled images


def _workdir(tmp_path: Path, models: list[dict]) -> Path:
    work = tmp_path / "project"
    work.mkdir()
    for item in ("Snakefile", "workflow", "config", "envs", "src", "constraints.txt"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    _set_models(work, models)
    return work


def _set_models(work: Path, models: list[dict]) -> None:
    """The shipped config, minus what the intake does not need to be shown: one INT8 variant,
    ONNX Runtime only, no TorchScript, no realistic-size benchmark, few patches."""
    path = work / "config" / "config.yaml"
    config = yaml.safe_load((ROOT / "config" / "config.yaml").read_text())
    config["models"] = models
    config["quantize"] = {"int8_static": config["quantize"]["int8_static"]}
    config["validate"]["tolerances"] = {k: v for k, v in config["validate"]["tolerances"].items()
                                        if k in ("torchscript", "onnx_fp32", "onnx_simplified", *config["quantize"])}
    config["backends"] = ["onnxruntime"]
    config["export"]["torchscript"] = False
    config["patches"].update(calibration=4, heldout=2, foreground_fraction=0.5)
    config["benchmark"].update(realistic={"enabled": False}, tune=[], sweep=[])
    config["bundle"] = {"variants": ["onnx_simplified"]}
    config["case_parity"].update(variants=["onnx_simplified"], tolerances={})
    path.write_text(yaml.safe_dump(config, sort_keys=False))


def _snakemake(work: Path, *args: str, check: bool = True) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(work / "src"))
    env.pop("nnUNet_extTrainer", None)  # as on a machine that has only nnunetv2 and nnbridge
    proc = subprocess.run([SNAKEMAKE, "--cores", "2", *args], cwd=work, env=env, capture_output=True, text=True,
                          timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake {' '.join(args)} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-5000:]}")
    return proc


def _jobs(proc: subprocess.CompletedProcess) -> dict[str, int]:
    import re

    text = proc.stdout + proc.stderr
    if "Nothing to be done" in text:
        return {}
    table = text.split("Job stats:", 1)[1]
    return {m[1]: int(m[2]) for m in re.finditer(r"^(\w+)\s+(\d+)\s*$", table, re.M) if m[1] != "total"}


@pytest.fixture(scope="module")
def pipeline(shared, tmp_path_factory):
    """The zip and the images folder without labels, checkpoint_best.pth, through export →
    patches → quantize → validate of fold all."""
    entry = {"zip": str(shared.zip), "images": str(shared.images), "checkpoint": "checkpoint_best.pth"}
    work = _workdir(tmp_path_factory.mktemp("pipeline"), [entry])
    fold = work / "results" / DATASET / MODEL / "fold_all"
    proc = _snakemake(work, str(fold.relative_to(work) / "validate" / "parity.json"))
    return SimpleNamespace(work=work, fold=fold, proc=proc, entry=entry)


def test_pipeline_runs_from_a_zip_and_unlabelled_images(shared, pipeline):
    from nnbridge.core.metadata import read_metadata
    from nnbridge.core.runlog import sha256_file

    # unpacked once, into the cache keyed by the zip's sha256: only the files the jobs read
    cache = pipeline.work / "results" / "cache" / "zip" / sha256_file(shared.zip)[:16] / DATASET / MODEL
    unpacked = sorted(str(p.relative_to(cache)) for p in cache.rglob("*") if p.is_file())
    assert unpacked == ["dataset.json", "fold_all/checkpoint_best.pth", "plans.json"]
    with zipfile.ZipFile(shared.zip) as archive:
        assert (cache / "fold_all/checkpoint_best.pth").read_bytes() == archive.read(
            f"{DATASET}/{MODEL}/fold_all/checkpoint_best.pth")
    # the trainer class is not installed: one line on the console, and in the export record
    notes = [line for line in pipeline.proc.stderr.splitlines() if line.startswith("nnbridge note:")]
    assert len(notes) == 1 and SHARED_TRAINER in notes[0] and "not installed" in notes[0], notes
    export = json.loads((pipeline.fold / "export" / "export.json").read_text())
    assert export["trainer_fallback"] in notes[0] and export["weights"]["ok"]
    assert export["source"]["checkpoint"].endswith("fold_all/checkpoint_best.pth")
    meta = read_metadata(pipeline.fold / "export" / "model.onnx")
    assert meta["trainer_fallback"] == export["trainer_fallback"] and meta["trainer"] == SHARED_TRAINER
    assert meta["configuration"] == CONFIGURATION and json.loads(meta["patch_size"]) == [16, 16, 16]
    # preprocessed by nnU-Net's preprocessor with 3d_halfiso's own spacing (inherits_from resolved)
    cases = json.loads((pipeline.fold.parent / "preprocessed" / "cases.json").read_text())
    assert cases["data_identifier"] == HALFISO["data_identifier"] and not cases["labels"]
    assert cases["cases"] == [f"case_{i:03d}" for i in range(5)]
    # patches: a recorded seeded split (no splits file; fold all), disjoint, foreground from the model
    patches = json.loads((pipeline.fold / "patches" / "patches.json").read_text())
    split = patches["split"]
    assert split["source"] == "seeded" and split["seed"] == 0 and split["heldout"] and split["calibration"]
    assert not set(split["heldout"]) & set(split["calibration"])
    assert set(patches["heldout"]["cases"]) <= set(split["heldout"])
    assert set(patches["calibration"]["cases"]) <= set(split["calibration"])
    assert patches["foreground"]["from"] == "prediction" and "no labels" in patches["foreground"]["note"]
    parity = json.loads((pipeline.fold / "validate" / "parity.json").read_text())["variants"]
    assert parity["onnx_fp32"]["passed"] and parity["onnx_simplified"]["passed"], parity
    assert "int8_static" in parity and parity["int8_static"]["dice"]


def test_unlabelled_patches_centre_on_the_models_own_foreground(shared, pipeline):
    """Each foreground-centred patch is centred on a voxel nnU-Net's own predictor labels with that
    class (the trained folder: the same weights under the installed trainer's name)."""
    import blosc2
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    patches = json.loads((pipeline.fold / "patches" / "patches.json").read_text())
    centred = [p for name in ("calibration", "heldout") for p in patches[name]["patches"] if p["class"] is not None]
    assert centred  # seed 0, foreground_fraction 0.5: 2 of the 4 calibration patches
    from nnbridge.models.nnunet import find_trainer_class

    find_trainer_class(demo.DEMO_TRAINER)  # makes nnbridge's trainers findable by nnU-Net
    predictor = nnUNetPredictor(use_mirroring=False, perform_everything_on_device=False, device=torch.device("cpu"),
                                allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(shared.trained), ("all",), "checkpoint_best.pth")
    data_folder = pipeline.work / patches["data_folder"]  # relative to the project
    for patch in centred:
        data = torch.from_numpy(blosc2.open(urlpath=str(data_folder / f"{patch['case']}.b2nd"), mode="r")[:])
        seg = predictor.label_manager.convert_logits_to_segmentation(predictor.predict_logits_from_preprocessed_data(data))
        assert int(np.asarray(seg)[tuple(np.array(patch["start"]) + 8)]) == patch["class"], patch


def test_whole_case_parity_on_unlabelled_held_out_images(shared, pipeline, tmp_path):
    """nnU-Net's predictor (the trainer is not installed: given the default network, proven) against
    nnbridge predict on the fold's held-out images, no labels: the gate compares the predictors."""
    from nnbridge.bundle.build import write_bundle
    from nnbridge.core.metadata import read_metadata
    from nnbridge.validate.caseparity import heldout_image_cases, run_case_parity

    model_folder = pipeline.work / json.loads((pipeline.fold / "export" / "export.json").read_text())[
        "source"]["checkpoint"].rsplit("/fold_all/", 1)[0]
    onnx_file = pipeline.fold / "simplify" / "model.onnx"
    meta = read_metadata(onnx_file)
    write_bundle(tmp_path / "bundle", plans_file=model_folder / "plans.json", dataset_file=model_folder / "dataset.json",
                 info={"configuration": meta["configuration"], "patch_size": json.loads(meta["patch_size"]),
                       "mirror_axes": json.loads(meta["mirror_axes"])},
                 variants={"onnx_simplified": {"files": {"all": onnx_file}, "gates": {"all": {"onnxruntime": True}}}},
                 default_variant="onnx_simplified")
    dataset_json = json.loads((model_folder / "dataset.json").read_text())
    cases = heldout_image_cases(pipeline.fold / "patches" / "patches.json", shared.images, None, dataset_json)
    assert list(cases) == json.loads((pipeline.fold / "patches" / "patches.json").read_text())["split"]["heldout"]
    record = run_case_parity(model_folder=model_folder, fold="all", checkpoint="checkpoint_best.pth",
                             bundle_dir=tmp_path / "bundle", cases=cases, variants={"onnx_simplified": {}},
                             out_dir=tmp_path / "out", step=0.5, mirroring=True, threads=1)
    assert SHARED_TRAINER in record["reference_note"]
    result = record["variants"]["onnx_simplified"]
    assert result["passed"] and result["min_voxel_agreement"] >= 0.9999, result
    for case in result["cases"].values():
        assert case["preprocessed_max_abs_diff"] == 0.0 and "dice_nnbridge_vs_truth" not in case


def test_dry_runs_plan_the_rest(shared, pipeline, tmp_path):
    """The whole target from there (bundle, benchmark, whole-case parity of fold all on its held-out
    images, report) without unpacking or preprocessing again, even with the zip touched; with labels, a splits file and the
    zip's other checkpoint; a zip-slip zip stops the run in one line."""
    try:
        _dry_runs(shared, pipeline, tmp_path)
    finally:
        _set_models(pipeline.work, [pipeline.entry])


def _dry_runs(shared, pipeline, tmp_path) -> None:
    os.utime(shared.zip)  # a touched zip with the same bytes is the same model: nothing reruns
    jobs = _jobs(_snakemake(pipeline.work, "-n"))
    assert jobs["case_parity"] == 1 and jobs["bundle"] == 1 and jobs["report"] == 1 and jobs["benchmark"] == 1
    assert jobs["unzip_model_file"] == 1  # nnU-Net's validation summary, for the report; nothing else again
    assert "preprocess_images" not in jobs and "export_onnx" not in jobs and "patches" not in jobs
    splits_file = demo.write_splits(shared.pre_ds, configuration=CONFIGURATION)
    _set_models(pipeline.work, [{**pipeline.entry, "labels": str(shared.labels), "splits": str(splits_file),
                                 "checkpoint": "checkpoint_final.pth", "configurations": [CONFIGURATION]}])
    jobs = _jobs(_snakemake(pipeline.work, "-n"))
    assert jobs["preprocess_images"] == 1 and jobs["patches"] == 1 and jobs["export_onnx"] == 1
    assert jobs["unzip_model_file"] == 2  # checkpoint_final.pth and the validation summary
    bad = tmp_path / "bad.zip"
    shutil.copy(shared.zip, bad)
    with zipfile.ZipFile(bad, "a") as archive:
        archive.writestr("../../escape.txt", b"x")
    _set_models(pipeline.work, [{"zip": str(bad), "images": str(shared.images)}])
    proc = _snakemake(pipeline.work, "-n", check=False)
    assert proc.returncode != 0
    lines = [line for line in (proc.stdout + proc.stderr).splitlines() if "zip-slip" in line]
    assert lines and str(bad) in lines[0] and "'../../escape.txt'" in lines[0]
