"""nnU-Net's recommended inference, deployed (issue 15, items 4-6): a cascade in one bundle, nnU-Net's
postprocessing recorded in the bundle, ensembles of configurations, all by ``nnbridge predict``.

The models are the session's cascade (tests/conftest.py ``tiny_cascade``: a 3d_lowres fold 0 and the
3d_cascade_fullres fold 0 that takes its segmentation, trained for real by ``nnUNetv2_train --npz``),
copied into a results tree of this module, where nnU-Net's own
``nnUNetv2_find_best_configuration <id> -c 3d_lowres 3d_cascade_fullres -f 0 -np 1`` runs (a
subprocess with nnU-Net's environment; 27-40 s measured on two busy cores, most of it starting
nnU-Net's one-process worker pools). It collects each configuration's
validation predictions (``crossval_results_folds_0/``), ensembles the pair from the ``--npz``
probabilities (``ensembles/ensemble___<lowres>___<cascade>___0/``), evaluates all three, and writes
``inference_information.json`` / ``inference_instructions.txt`` and the ``postprocessing.pkl`` of its
winner. The bundles record what it wrote; the primary parity test deploys its choice
(``inference_information.json``: the configurations it selects, the postprocessing file it names)
and compares with the commands of its ``inference_instructions.txt``.

find_best_configuration determines postprocessing for its winner only, and which one wins is not
fixed: the demo trainer is seeded, so on one machine the models and the choice repeat (on the AMD
Zen 4 of this writing the ensemble wins, Dice 0.241 against 0.236 for 3d_lowres and 0.204 for the
cascade, and keeps the largest component of {1, 2}, then of {2}), but floating-point summation
differs between CPU kinds. The tests take whichever won. So that the cascade alone and the
2-configuration ensemble are always tested with nnU-Net's postprocessing, when one of them lost,
``nnUNetv2_determine_postprocessing`` (the function find_best_configuration ends with) runs on the
folder of validation predictions find_best_configuration wrote and evaluated for it, with the same
reference labels. nnU-Net may choose no postprocessing at all, or one that changes nothing on the
test cases; so a postprocessing that certainly removes voxels is tested as well: a
``postprocessing.pkl`` written by nnU-Net's ``determine_postprocessing`` on predictions where removing
stray components helps (``_determine_postprocessing``), given with ``--postprocessing`` to the cascade
and the ensemble.

The reference is nnU-Net's own inference in this process: ``nnUNetPredictor.predict_from_files_sequential``
(what ``nnUNetv2_predict -npp 0 -nps 0`` runs; ``-prev_stage_predictions`` for the cascade,
``--save_probabilities`` for the ensemble), and the entry points of ``nnUNetv2_ensemble`` and
``nnUNetv2_apply_postprocessing``. The cases are raw images re-written with thick slices (separate-z
resampling of image and previous-stage segmentation), a zero border (cropping) and a zeroed corner
inside the crop (where nnU-Net's preprocessing marks the segmentation -1).
"""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import time
from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest

from nnbridge.core.errors import NNBridgeError
from nnbridge.demo.workers import nnunet_workers_forked
from nnbridge.predict.bundle import Bundle
from conftest import predict_without

LOWRES, CASCADE = "3d_lowres", "3d_cascade_fullres"
ROOT = Path(__file__).resolve().parents[1]
GATE = 0.9999  # voxel agreement with nnU-Net on every case


def _read(path: Path) -> np.ndarray:
    import SimpleITK as sitk

    return sitk.GetArrayFromImage(sitk.ReadImage(str(path)))


def _write_cases(raw: Path, out: Path, n: int = 3) -> list[str]:
    """Raw cases re-written: every fourth slice at 4 mm (separate-z resampling; one 32^3 window of
    the cascade per case), a zero border, a zeroed corner block."""
    import SimpleITK as sitk

    out.mkdir(parents=True, exist_ok=True)
    cases = []
    for path in sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[:n]:
        array = sitk.GetArrayFromImage(sitk.ReadImage(str(path)))[::4].copy()
        array[: array.shape[0] // 2, :6, :6] = 0  # outside the nonzero mask, inside its bounding box
        padded = np.zeros((array.shape[0] + 2, array.shape[1] + 6, array.shape[2] + 4), array.dtype)
        padded[1:-1, 3:-3, 2:-2] = array
        image = sitk.GetImageFromArray(padded)
        image.SetSpacing((1.0, 1.0, 4.0))
        image.SetOrigin((10.0, -5.0, 2.0))
        sitk.WriteImage(image, str(out / path.name))
        cases.append(path.name[: -len("_0000.nii.gz")])
    return cases


def _export_and_bundle(folder: Path, out: Path, **extra) -> Path:
    """Fold 0 exported to ONNX and bundled by the pipeline's builder (its gates passed)."""
    from nnbridge.bundle.build import build_from_pipeline
    from nnbridge.core.keys import Variant
    from nnbridge.core.records import BenchmarkRecord, BenchResult, Gate, ParityRecord
    from nnbridge.export.onnx_export import export_onnx
    from nnbridge.models.nnunet import load_nnunet_fold

    out.mkdir(parents=True, exist_ok=True)
    export_onnx(load_nnunet_fold(folder, "0"), out / "model.onnx")
    ParityRecord(variants={Variant("onnx_fp32"): Gate(passed=True)}, fold="0").write(out / "parity.json")
    BenchmarkRecord(results={Variant("onnx_fp32"): BenchResult(p50_ms=1.0)}).write(out / "benchmark.json")
    build_from_pipeline(out / "bundle", plans_file=folder / "plans.json", dataset_file=folder / "dataset.json",
                        folds={"0": {"files": {"onnx_fp32": out / "model.onnx"}, "parity": out / "parity.json",
                                     "benchmark": out / "benchmark.json"}},
                        variant_names=["onnx_fp32"], default_variant="onnx_fp32", model=folder.name,
                        dataset=folder.parent.name, **extra)
    return out / "bundle"


def _determine_postprocessing(raw: Path, cases: list[str], plans: dict, dataset_json: dict, out: Path) -> Path:
    """nnU-Net's ``determine_postprocessing`` on predictions that are the reference labels plus a
    stray blob of each label: it keeps the largest component per label (not over the union of the
    labels, which would drop the smaller object). Returns its ``postprocessing.pkl``."""
    import SimpleITK as sitk
    from nnunetv2.postprocessing.remove_connected_components import determine_postprocessing

    out.mkdir(parents=True, exist_ok=True)
    for case in cases:
        reference = sitk.ReadImage(str(raw / "labelsTr" / f"{case}.nii.gz"))
        labels = sitk.GetArrayFromImage(reference)
        free = []  # corner blocks of 3 voxels with no label within one more voxel
        for ends in np.ndindex(2, 2, 2):
            near = tuple(slice(0, 4) if e == 0 else slice(-4, None) for e in ends)
            if not labels[near].any():
                free.append(tuple(slice(0, 3) if e == 0 else slice(-3, None) for e in ends))
        assert len(free) >= 2, f"{case}: fewer than two free corners for stray blobs"
        predicted = labels.copy()
        predicted[free[0]], predicted[free[1]] = 1, 2
        image = sitk.GetImageFromArray(predicted)
        image.CopyInformation(reference)
        sitk.WriteImage(image, str(out / f"{case}.nii.gz"))
    with nnunet_workers_forked():
        determine_postprocessing(str(out), str(raw / "labelsTr"), plans, dataset_json, num_processes=1,
                                 keep_postprocessed_files=False)
    return out / "postprocessing.pkl"


def _nnunet_predict(folder: Path, inputs: Path, out: Path, previous: Path | None = None) -> None:
    """``nnUNetv2_predict -f 0 --save_probabilities -npp 0 -nps 0 [-prev_stage_predictions]``."""
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(2)
    predictor = nnUNetPredictor(tile_step_size=0.5, use_gaussian=True, use_mirroring=True,
                                perform_everything_on_device=False, device=torch.device("cpu"), verbose=False,
                                verbose_preprocessing=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(folder), use_folds=(0,), checkpoint_name="checkpoint_final.pth")
    out.mkdir(parents=True, exist_ok=True)
    predictor.predict_from_files_sequential(str(inputs), str(out), save_probabilities=True, overwrite=True,
                                            folder_with_segs_from_prev_stage=str(previous) if previous else None)


def _nnunet_command(entry, *argv: str) -> None:
    """An nnU-Net console script's entry point, run here with its command line."""
    saved = sys.argv
    sys.argv = [entry.__name__, *argv]
    try:
        with nnunet_workers_forked():  # as nnbridge starts nnU-Net's commands (its workers' imports once)
            entry()
    finally:
        sys.argv = saved


def _chosen(pkl: Path) -> tuple[str, bool]:
    """What a ``postprocessing.pkl`` does, read with pickle (nnU-Net's own function objects), in
    the words of nnbridge's console and report; and whether it does anything."""
    with open(pkl, "rb") as handle:
        functions, kwargs = pickle.load(handle)
    assert {f.__name__ for f in functions} <= {"remove_all_but_largest_component_from_segmentation"}
    if not functions:
        return "none (nnU-Net chose no postprocessing)", False
    parts = []
    for k in kwargs:
        entries = k["labels_or_regions"]
        entries = [entries] if np.isscalar(entries) else list(entries)
        assert all(np.isscalar(e) for e in entries), kwargs  # labels, no regions in this dataset
        parts.append("largest component of {" + ", ".join(str(int(e)) for e in entries) + "}")
    return "; then ".join(parts), True


def _console(pkl: Path, source: str) -> str:
    """The postprocessing line of ``nnbridge predict`` for a bundle recording ``pkl``."""
    chosen, anything = _chosen(pkl)
    return f"postprocessing: {chosen} (from {source})" if anything else f"postprocessing: none ({source})"


@pytest.fixture(scope="module")
def deployed(tiny_cascade, tmp_path_factory):
    """Model folders after ``nnUNetv2_find_best_configuration``, their bundles (the cascade's
    holding the lowres bundle), the cases, and nnU-Net's own predictions, ensemble and
    postprocessing of them."""
    from nnunetv2.ensembling.ensemble import entry_point_ensemble_folders
    from nnunetv2.postprocessing.remove_connected_components import (
        entry_point_apply_postprocessing, entry_point_determine_postprocessing_folder)

    from conftest import CASCADE_DATASET_ID
    from nnbridge.demo import nnunet as demo
    from nnbridge.models import TRAINER_DIR
    from nnbridge.pipeline.plan import discover_models, postprocessing_sources

    os.environ.setdefault("nnUNet_extTrainer", str(TRAINER_DIR))  # nnU-Net's predictor finds the demo trainer
    root = tmp_path_factory.mktemp("deployed")
    dataset_dir = root / "results" / tiny_cascade.cascade.parent.name
    lowres = shutil.copytree(tiny_cascade.lowres, dataset_dir / tiny_cascade.lowres.name)
    cascade = shutil.copytree(tiny_cascade.cascade, dataset_dir / tiny_cascade.cascade.name)
    plans = json.loads((cascade / "plans.json").read_text())
    dataset_json = json.loads((cascade / "dataset.json").read_text())

    # nnU-Net's recommended inference for the two configurations, chosen by nnU-Net on the copies
    started = time.perf_counter()
    info = demo.find_best_configuration(tiny_cascade.raw.parent, tiny_cascade.pre_ds.parent, root / "results",
                                        dataset_id=CASCADE_DATASET_ID, configurations=(LOWRES, CASCADE), folds=(0,),
                                        log=root / "find_best_configuration.log")
    find_best_s = time.perf_counter() - started
    ensemble_name = f"ensemble___{lowres.name}___{cascade.name}___0"
    evaluated = {LOWRES: lowres / "crossval_results_folds_0", CASCADE: cascade / "crossval_results_folds_0",
                 "ensemble": dataset_dir / "ensembles" / ensemble_name}
    best = Path(info["best_model_or_ensemble"]["postprocessing_file"]).parent
    winner = next(key for key, folder in evaluated.items() if folder == best)
    # find_best_configuration determines the postprocessing of its winner only. For the cascade
    # alone and the ensemble, when they lost, nnUNetv2_determine_postprocessing does the same on the
    # folder of validation predictions find_best_configuration wrote and evaluated for them.
    completed = []
    for key in (CASCADE, "ensemble"):
        if key != winner:
            reference = tiny_cascade.pre_ds / "gt_segmentations" if key == "ensemble" else tiny_cascade.raw / "labelsTr"
            _nnunet_command(entry_point_determine_postprocessing_folder, "-i", str(evaluated[key]), "-ref",
                            str(reference), "-np", "1")
            completed.append(key)
    own = evaluated[CASCADE] / "postprocessing.pkl"
    ensemble_pkl = evaluated["ensemble"] / "postprocessing.pkl"
    planted = _determine_postprocessing(tiny_cascade.raw, sorted(
        p.name[: -len(".nii.gz")] for p in (tiny_cascade.raw / "labelsTr").glob("*.nii.gz"))[:3],
        plans, dataset_json, root / "determine")

    entries = [{"folder": str(f), "preprocessed": str(tiny_cascade.pre_ds), "folds": ["0"]} for f in (lowres, cascade)]
    models = discover_models(entries)
    sources = {m.name: postprocessing_sources(m) for m in models.values()}
    lowres_bundle = _export_and_bundle(lowres, root / "lowres", postprocessing=sources[lowres.name]["own"],
                                       ensembles=sources[lowres.name]["ensembles"])
    cascade_bundle = _export_and_bundle(cascade, root / "cascade", previous_stage=lowres_bundle,
                                        postprocessing=sources[cascade.name]["own"],
                                        ensembles=sources[cascade.name]["ensembles"])

    inputs = root / "in"
    cases = _write_cases(tiny_cascade.raw, inputs)
    nnunet = root / "nnunet"
    _nnunet_predict(lowres, inputs, nnunet / LOWRES)
    _nnunet_predict(cascade, inputs, nnunet / CASCADE, previous=nnunet / LOWRES)
    _nnunet_command(entry_point_ensemble_folders, "-i", str(nnunet / LOWRES), str(nnunet / CASCADE),
                    "-o", str(nnunet / "ensemble"), "-np", "1")
    # the recommended inference: nnUNetv2_apply_postprocessing -pp_pkl_file <postprocessing_file> on the
    # winner's prediction (for the cascade or the ensemble the same command as their own below)
    recommended = {"ensemble": "ensemble_pp", CASCADE: "cascade_pp", LOWRES: "lowres_pp"}[winner]
    for folder, out, pkl in (("ensemble", "ensemble_pp", ensemble_pkl), (CASCADE, "cascade_pp", own),
                             ("ensemble", "ensemble_planted", planted), (CASCADE, "cascade_planted", planted),
                             *([(LOWRES, "lowres_pp", Path(info["best_model_or_ensemble"]["postprocessing_file"]))]
                               if winner == LOWRES else [])):
        _nnunet_command(entry_point_apply_postprocessing, "-i", str(nnunet / folder), "-o", str(nnunet / out),
                        "-pp_pkl_file", str(pkl), "-np", "1",
                        "-plans_json", str(info["best_model_or_ensemble"]["some_plans_file"]))
    return SimpleNamespace(root=root, dataset_dir=dataset_dir, lowres=lowres, cascade=cascade, info=info,
                           winner=winner, completed=completed, find_best_s=find_best_s, own=own,
                           ensemble_pkl=ensemble_pkl, planted=planted, ensemble_name=ensemble_name, sources=sources,
                           lowres_bundle=lowres_bundle, cascade_bundle=cascade_bundle,
                           bundles={LOWRES: lowres_bundle, CASCADE: cascade_bundle}, inputs=inputs, cases=cases,
                           nnunet=nnunet, recommended=nnunet / recommended, plans=plans, dataset_json=dataset_json)


def _agreement(ours: Path, theirs: Path, cases: list[str]) -> dict[str, float]:
    out = {}
    for case in cases:
        a, b = _read(ours / f"{case}.nii.gz"), _read(theirs / f"{case}.nii.gz")
        assert a.shape == b.shape, case
        out[case] = float((a == b).mean())
    return out


def _changed(before: Path, after: Path, cases: list[str]) -> int:
    return sum(int((_read(before / f"{c}.nii.gz") != _read(after / f"{c}.nii.gz")).sum()) for c in cases)


# ------------------------------------------------------------------------------------------------
# the bundle


def test_find_best_configuration_ran_on_both_configurations_and_their_ensemble(deployed):
    """nnUNetv2_find_best_configuration -c 3d_lowres 3d_cascade_fullres -f 0 evaluated each
    configuration's validation predictions of fold 0 and their ensemble (from the --npz
    probabilities), chose one and its postprocessing, and wrote how to run it."""
    info = deployed.info
    assert set(info["all_results"]) == {deployed.lowres.name, deployed.cascade.name, deployed.ensemble_name}
    assert all(0.0 <= dice <= 1.0 for dice in info["all_results"].values())
    best = info["best_model_or_ensemble"]
    assert best["result_on_crossval_pre_pp"] == max(info["all_results"].values())
    selected = [m["configuration"] for m in best["selected_model_or_models"]]
    assert selected == ([LOWRES, CASCADE] if deployed.winner == "ensemble" else [deployed.winner])
    assert Path(best["postprocessing_file"]).is_file()
    cases = {p.name for p in (deployed.cascade / "fold_0" / "validation").glob("*.nii.gz")}
    ensembled = deployed.dataset_dir / "ensembles" / deployed.ensemble_name
    assert cases and {p.name for p in ensembled.glob("*.nii.gz")} == cases
    instructions = (deployed.dataset_dir / "inference_instructions.txt").read_text()
    assert f"-pp_pkl_file {best['postprocessing_file']}" in instructions
    assert ("nnUNetv2_ensemble" in instructions) == (deployed.winner == "ensemble")


def test_cascade_bundle_holds_its_lowres_stage_and_nnunets_postprocessing(deployed):
    bundle = Bundle.load(deployed.cascade_bundle)
    assert bundle.configuration == CASCADE and bundle.model == deployed.cascade.name
    stage = bundle.previous_stage
    assert stage is not None and stage.configuration == LOWRES and stage.model == deployed.lowres.name
    assert bundle.manifest["previous_stage"]["bundle"] == "previous_stage"
    assert (deployed.cascade_bundle / "previous_stage" / "onnx_fp32" / "fold_0.onnx").is_file()
    # the cascade's crossval_results_folds_0/postprocessing.pkl, byte for byte, its steps as nnU-Net pickled them
    steps, source = bundle.postprocessing()
    assert source == f"{deployed.cascade.name}/crossval_results_folds_0/postprocessing.pkl"
    record = bundle.manifest["postprocessing"]
    assert (deployed.cascade_bundle / record["file"]).read_bytes() == deployed.own.read_bytes()
    with open(deployed.own, "rb") as handle:
        _functions, kwargs = pickle.load(handle)
    assert [s["labels_or_regions"] for s in steps] == [np.atleast_1d(k["labels_or_regions"]).tolist() for k in kwargs]
    with open(deployed.ensemble_pkl, "rb") as handle:
        _functions, ensemble_kwargs = pickle.load(handle)
    members = [deployed.lowres.name, deployed.cascade.name]
    for b in (bundle, stage, Bundle.load(deployed.lowres_bundle)):
        ensemble_steps, ensemble_source = b.ensemble_postprocessing(members[::-1], ["0"])
        assert ensemble_source == f"ensembles/{deployed.ensemble_name}/postprocessing.pkl"
        assert [s["labels_or_regions"] for s in ensemble_steps] == [
            np.atleast_1d(k["labels_or_regions"]).tolist() for k in ensemble_kwargs]
    # find_best_configuration determines postprocessing for its winner only
    assert (stage.postprocessing() is not None) == (deployed.winner == LOWRES)
    assert bundle.ensemble_postprocessing([deployed.cascade.name, "other__model__2d"]) is None


def test_the_report_shows_the_cascade_and_its_postprocessing(deployed):
    from nnbridge.core.records import BundleManifest
    from nnbridge.report.collect import FoldResults, RunResults
    from nnbridge.report.tables import deployment_table

    folds = [FoldResults(dataset="d", model=folder.name, fold="0", bundle=BundleManifest.read(b / "bundle.json"))
             for b, folder in ((deployed.cascade_bundle, deployed.cascade), (deployed.lowres_bundle, deployed.lowres))]
    table = deployment_table(RunResults(folds=folds))
    assert table.header[1] == "previous stage" and len(table.rows) == 2
    cascade, lowres = table.rows
    assert cascade[1] == f"{LOWRES} ({deployed.lowres.name}), in the bundle"
    source = f"{deployed.cascade.name}/crossval_results_folds_0/postprocessing.pkl"
    assert cascade[2] == f"{_chosen(deployed.own)[0]} ({source})"
    assert lowres[1] == "–"
    if deployed.winner != LOWRES:
        assert lowres[2] == "none recorded"
    assert lowres[3] == f"with {deployed.cascade.name}: {_chosen(deployed.ensemble_pkl)[0]}"


def test_the_reports_stage_times_line_up_for_a_cascade_beside_a_single_stage():
    from nnbridge.core.records import CaseParityRecord, CaseVariant, StageTimes
    from nnbridge.report.collect import FoldResults, RunResults
    from nnbridge.report.tables import case_stage_table

    def parity(stages):
        timings = {k: 1.0 for k in stages}
        return CaseParityRecord(nnunet=StageTimes(timings_s=timings, total_s=len(stages)),
                                variants={"onnx_fp32": CaseVariant(backend="onnxruntime", timings_s=dict(timings))})

    single, cascade = ("read", "preprocess", "inference"), ("read", "previous_stage", "preprocess", "inference")
    folds = [FoldResults(dataset="d", model="fullres", fold="0", case_parity=parity(single)),
             FoldResults(dataset="d", model="cascade", fold="0", case_parity=parity(cascade))]
    table = case_stage_table(RunResults(folds=folds))
    assert table.header == ["fold", "predictor", "read", "preprocess", "inference", "previous_stage"]
    assert [r[2:] for r in table.rows] == [["1.000", "1.000", "1.000", "–"]] * 2 + [["1.000"] * 4] * 2


def test_a_changed_file_of_the_lowres_stage_is_refused(deployed, tmp_path):
    copy = tmp_path / "bundle"
    shutil.copytree(deployed.cascade_bundle, copy)
    with open(copy / "previous_stage" / "onnx_fp32" / "fold_0.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(NNBridgeError, match=r"previous_stage/onnx_fp32/fold_0.onnx: sha256 differs"):
        Bundle.load(copy)
    shutil.copy(deployed.lowres_bundle / "bundle.json", copy / "previous_stage" / "bundle.json")
    manifest = json.loads((copy / "previous_stage" / "bundle.json").read_text())
    manifest["default_variant"] = "onnx_fp32 "
    (copy / "previous_stage" / "bundle.json").write_text(json.dumps(manifest))
    with pytest.raises(NNBridgeError, match=r"previous_stage/bundle.json: sha256 differs"):
        Bundle.load(copy)


def test_a_cascade_bundle_needs_the_bundle_of_its_previous_stage(deployed, tmp_path):
    from nnbridge.bundle.build import build_from_pipeline

    folds = {"0": {"files": {"onnx_fp32": deployed.root / "cascade" / "model.onnx"},
                   "parity": deployed.root / "cascade" / "parity.json",
                   "benchmark": deployed.root / "cascade" / "benchmark.json"}}
    common = {"plans_file": deployed.cascade / "plans.json", "dataset_file": deployed.cascade / "dataset.json",
              "folds": folds, "variant_names": ["onnx_fp32"], "default_variant": "onnx_fp32", "model": "m",
              "dataset": "d"}
    with pytest.raises(NNBridgeError, match="holds no 3d_lowres stage; configure the 3d_lowres model folder too"):
        build_from_pipeline(tmp_path / "a", **common)
    with pytest.raises(NNBridgeError, match="a bundle of 3d_cascade_fullres, but 3d_cascade_fullres takes the "
                                            "3d_lowres segmentation"):
        build_from_pipeline(tmp_path / "b", **common, previous_stage=deployed.cascade_bundle)


# ------------------------------------------------------------------------------------------------
# postprocessing read safely, applied like nnU-Net


def test_postprocessing_steps_equal_nnunets_function_on_labels_and_regions(tmp_path):
    """Every form determine_postprocessing writes (all labels at once, one label, a region, a
    list of regions; numpy and python integers), on label maps with many components and ties."""
    from batchgenerators.utilities.file_and_folder_operations import save_pickle
    from nnunetv2.postprocessing.remove_connected_components import (
        apply_postprocessing as nnunet_apply, remove_all_but_largest_component_from_segmentation as keep_largest)

    from nnbridge.predict.components import apply_postprocessing, read_postprocessing_pkl

    kwargs = [{"labels_or_regions": [np.int64(1), np.int64(2)]}, {"labels_or_regions": np.int64(1)},
              {"labels_or_regions": (1, 2)}, {"labels_or_regions": [(1, 2), 2], "background_label": 0},
              {"labels_or_regions": 2}]
    save_pickle(([keep_largest] * len(kwargs), kwargs), str(tmp_path / "pp.pkl"))
    steps = read_postprocessing_pkl(tmp_path / "pp.pkl")
    assert [s["labels_or_regions"] for s in steps] == [[1, 2], [1], [[1, 2]], [[1, 2], 2], [2]]
    rng = np.random.default_rng(0)
    changed = 0
    for trial in range(12):
        seg = (rng.random((9, 11, 10)) < 0.12).astype(np.uint8) * rng.integers(1, 3, (9, 11, 10), dtype=np.uint8)
        if trial % 3 == 0:  # two equal largest components: both kept
            seg[:] = 0
            seg[1:3, 1:3, 1:3], seg[6:8, 6:8, 6:8], seg[4, 9, 9] = 1, 1, 1
        for i in range(len(kwargs)):
            theirs = nnunet_apply(seg.astype(np.float32), [keep_largest] * (i + 1), kwargs[: i + 1])
            ours = apply_postprocessing(seg, steps[: i + 1])
            np.testing.assert_array_equal(ours, theirs)
            changed += int((ours != seg).sum())
    assert changed > 0


def test_a_pickle_that_is_not_nnunets_postprocessing_is_refused_unbuilt(deployed, tmp_path, capsys):
    """nnU-Net's function with a payload in its arguments: refused before anything is built or run."""
    from nnunetv2.postprocessing.remove_connected_components import (
        remove_all_but_largest_component_from_segmentation as keep_largest)

    from nnbridge.cli import main

    marker = tmp_path / "ran"

    class Payload:
        def __reduce__(self):
            return (subprocess.call, (["touch", str(marker)],))

    pkl = tmp_path / "postprocessing.pkl"
    with open(pkl, "wb") as handle:
        pickle.dump(([keep_largest], [{"labels_or_regions": Payload()}]), handle)
    rc = main(["predict", "-i", str(deployed.inputs), "-o", str(tmp_path / "out"), "-m", str(deployed.cascade_bundle),
               "--postprocessing", str(pkl), "-q"])
    err = capsys.readouterr().err
    assert rc == 2 and not marker.exists() and not (tmp_path / "out").exists()
    assert f"{pkl}: refused: it holds subprocess.call, not only nnU-Net's postprocessing" in err
    assert err.count("\n") == 1


# ------------------------------------------------------------------------------------------------
# nnbridge predict against nnU-Net's own commands


def test_cascade_matches_nnunet_predict_with_previous_stage_predictions(deployed, tmp_path):
    """nnbridge predict with the cascade bundle (no postprocessing) = nnUNetv2_predict of 3d_lowres,
    then of 3d_cascade_fullres with -prev_stage_predictions; the lowres stage inside it = nnU-Net's."""
    from nnbridge.predict.predictor import Predictor

    predictor = Predictor(Bundle.load(deployed.cascade_bundle), threads=2, postprocessing=False)
    records = predictor.predict_folder(deployed.inputs, tmp_path / "cascade", verbose=False)
    assert {"previous_stage", "preprocess", "inference"} <= set(records[0]["timings_s"])
    agreement = _agreement(tmp_path / "cascade", deployed.nnunet / CASCADE, deployed.cases)
    assert min(agreement.values()) >= GATE, agreement
    assert predictor.previous is not None
    predictor.previous.predict_folder(deployed.inputs, tmp_path / "lowres", verbose=False)
    agreement = _agreement(tmp_path / "lowres", deployed.nnunet / LOWRES, deployed.cases)
    assert min(agreement.values()) >= GATE, agreement
    for case in deployed.cases:  # the lowres model found foreground to one-hot encode
        assert set(np.unique(_read(deployed.nnunet / LOWRES / f"{case}.nii.gz"))) == {0, 1, 2}


def test_find_best_configurations_choice_matches_its_inference_instructions(deployed, tmp_path, capsys):
    """What nnUNetv2_find_best_configuration chose, deployed: nnbridge predict -m <the bundle of
    each configuration inference_information.json selects> = the commands of its
    inference_instructions.txt (nnUNetv2_predict of each, nnUNetv2_ensemble if an ensemble won,
    nnUNetv2_apply_postprocessing with the postprocessing_file and plans it names). For the cascade
    those instructions leave out the 3d_lowres run and -prev_stage_predictions (nnU-Net's
    generate_inference_command looks for a configuration named 'previous_stage'), without which
    nnUNetv2_predict refuses a cascade; the reference runs them."""
    from nnbridge.cli import main

    best = deployed.info["best_model_or_ensemble"]
    bundles = [deployed.bundles[m["configuration"]] for m in best["selected_model_or_models"]]
    rc = main(["predict", "-i", str(deployed.inputs), "-o", str(tmp_path / "out"), "-m", *map(str, bundles),
               "--threads", "2"])
    assert rc == 0
    source = Path(best["postprocessing_file"]).relative_to(deployed.dataset_dir).as_posix()
    assert _console(Path(best["postprocessing_file"]), source) in capsys.readouterr().err
    agreement = _agreement(tmp_path / "out", deployed.recommended, deployed.cases)
    assert min(agreement.values()) >= GATE, agreement


def test_cascade_with_its_postprocessing_matches_apply_postprocessing(deployed, tmp_path, capsys):
    """nnbridge predict -m <cascade bundle> applies the recorded postprocessing (the cascade's
    crossval_results_folds_0/postprocessing.pkl) like nnUNetv2_apply_postprocessing on
    nnUNetv2_predict's output."""
    from nnbridge.cli import main

    rc = main(["predict", "-i", str(deployed.inputs), "-o", str(tmp_path / "pp"), "-m", str(deployed.cascade_bundle),
               "--threads", "2"])
    assert rc == 0
    err = capsys.readouterr().err
    assert _console(deployed.own, f"{deployed.cascade.name}/crossval_results_folds_0/postprocessing.pkl") in err
    assert "3d_cascade_fullres: onnx_fp32 on onnxruntime" in err
    agreement = _agreement(tmp_path / "pp", deployed.nnunet / "cascade_pp", deployed.cases)
    assert min(agreement.values()) >= GATE, agreement


def test_ensemble_with_postprocessing_matches_nnunet_ensemble_without_torch(deployed, tmp_path):
    """nnbridge predict -m <lowres bundle> <cascade bundle> (torch unimportable) = nnUNetv2_predict
    of both with --save_probabilities, nnUNetv2_ensemble, nnUNetv2_apply_postprocessing with the
    ensemble's postprocessing.pkl (find_best_configuration's folder ensembles/ensemble___..___0);
    without postprocessing = nnUNetv2_ensemble's output."""
    from nnbridge.predict.ensemble import EnsemblePredictor
    from nnbridge.predict.predictor import Predictor

    proc = predict_without(["predict", "-i", deployed.inputs, "-o", tmp_path / "pp", "-m", deployed.lowres_bundle,
                            deployed.cascade_bundle, "--threads", "2"], blocked=("torch", "nnunetv2"))
    assert proc.returncode == 0, proc.stderr[-3000:]
    line = _console(deployed.ensemble_pkl, f"ensembles/{deployed.ensemble_name}/postprocessing.pkl")
    assert f"ensemble of 2 configurations, probabilities averaged; {line}" in proc.stderr
    agreement = _agreement(tmp_path / "pp", deployed.nnunet / "ensemble_pp", deployed.cases)
    assert min(agreement.values()) >= GATE, agreement
    members = [Predictor(Bundle.load(b), threads=2, postprocessing=False)
               for b in (deployed.lowres_bundle, deployed.cascade_bundle)]
    EnsemblePredictor(members, postprocessing=False).predict_folder(deployed.inputs, tmp_path / "raw",
                                                                     verbose=False)
    agreement = _agreement(tmp_path / "raw", deployed.nnunet / "ensemble", deployed.cases)
    assert min(agreement.values()) >= GATE, agreement


def test_a_postprocessing_that_removes_voxels_matches_apply_postprocessing_on_cascade_and_ensemble(
        deployed, tmp_path, capsys):
    """The planted postprocessing.pkl (nnU-Net's determine_postprocessing where removing stray
    components helps: the largest component of each label on its own) given with --postprocessing
    to the cascade and to the ensemble = nnUNetv2_apply_postprocessing with it; it changes voxels
    on these cases, which find_best_configuration's choice on briefly trained models need not."""
    from nnbridge.cli import main

    with open(deployed.planted, "rb") as handle:
        functions, kwargs = pickle.load(handle)
    assert [f.__name__ for f in functions] == ["remove_all_but_largest_component_from_segmentation"] * 2
    assert [k["labels_or_regions"] for k in kwargs] == [1, 2]
    for name, bundles in (("cascade", [deployed.cascade_bundle]),
                          ("ensemble", [deployed.lowres_bundle, deployed.cascade_bundle])):
        raw = deployed.nnunet / (CASCADE if name == "cascade" else "ensemble")
        assert _changed(raw, deployed.nnunet / f"{name}_planted", deployed.cases) > 0
        rc = main(["predict", "-i", str(deployed.inputs), "-o", str(tmp_path / name), "-m", *map(str, bundles),
                   "--postprocessing", str(deployed.planted), "--threads", "2"])
        assert rc == 0
        assert ("postprocessing: largest component of {1}; then largest component of {2} (from --postprocessing)"
                in capsys.readouterr().err)
        agreement = _agreement(tmp_path / name, deployed.nnunet / f"{name}_planted", deployed.cases)
        assert min(agreement.values()) >= GATE, (name, agreement)


def test_an_ensemble_of_different_datasets_or_one_model_twice_is_refused(deployed):
    from nnbridge.predict.ensemble import EnsemblePredictor
    from nnbridge.predict.predictor import Predictor

    lowres = Predictor(Bundle.load(deployed.lowres_bundle), threads=1, selfcheck=False)
    other = Bundle.load(deployed.cascade_bundle)
    other.dataset_json = {**other.dataset_json, "labels": {"background": 0, "liver": 1}}
    with pytest.raises(NNBridgeError, match="dataset.json labels differs") as error:
        EnsemblePredictor([lowres, Predictor(other, threads=1, selfcheck=False)])
    assert "\n" not in str(error.value)
    with pytest.raises(NNBridgeError, match="hold the same model twice"):
        EnsemblePredictor([lowres, Predictor(Bundle.load(deployed.lowres_bundle), threads=1, selfcheck=False)])


def test_whole_case_parity_runs_the_cascade_on_both_sides(deployed, tmp_path):
    """The pipeline's case-parity stage on a cascade: nnU-Net's lowres predictor writes its
    segmentation, the cascade's preprocessor reads it back; nnbridge runs the bundle's lowres
    stage. The cascade's input (image and one-hot channels) is the same array. One case (the
    others are compared with nnU-Net's commands above)."""
    from nnbridge.validate.caseparity import run_case_parity

    cases = {c: {"images": [deployed.inputs / f"{c}_0000.nii.gz"], "label": None} for c in deployed.cases[:1]}
    record = run_case_parity(model_folder=deployed.cascade, fold="0", checkpoint="checkpoint_final.pth",
                             bundle_dir=deployed.cascade_bundle, cases=cases, variants={"onnx_fp32": {}},
                             out_dir=tmp_path, threads=2,
                             previous_stage={"folder": str(deployed.lowres), "checkpoint": "checkpoint_final.pth"})
    result = record["variants"]["onnx_fp32"]
    assert record["previous_stage"]["configuration"] == LOWRES
    for case, rec in result["cases"].items():
        assert rec["preprocessed_max_abs_diff"] == 0.0, case
    assert result["passed"] and result["min_voxel_agreement"] >= GATE, result
    assert "previous_stage" in result["timings_s"] and "previous_stage" in record["nnunet"]["timings_s"]
    with pytest.raises(NNBridgeError, match="whole-case parity needs the model folder of its 3d_lowres stage"):
        run_case_parity(model_folder=deployed.cascade, fold="0", checkpoint="checkpoint_final.pth",
                        bundle_dir=deployed.cascade_bundle, cases=cases, variants={"onnx_fp32": {}},
                        out_dir=tmp_path / "again")


# ------------------------------------------------------------------------------------------------
# the pipeline


def test_a_zip_carries_the_postprocessing_files_to_the_bundle(deployed, tiny_cascade, tmp_path):
    """nnUNetv2_export_model_to_zip of both stages takes the postprocessing files along; the
    workflow finds them as zip members and names the cascade's previous stage's model."""
    import zipfile

    from conftest import CASCADE_DATASET_ID
    from nnbridge.demo import nnunet as demo
    from nnbridge.pipeline.plan import discover_models, postprocessing_sources, previous_stage_model

    model_zip = demo.export_model_zip(deployed.root / "results", tmp_path / "model.zip",
                                      dataset_id=CASCADE_DATASET_ID,
                                      configurations=(LOWRES, CASCADE), log=tmp_path / "zip.log")
    common = {"zip": str(model_zip), "preprocessed": str(tiny_cascade.pre_ds)}
    models = discover_models([{**common, "configurations": [LOWRES]},
                              {**common, "configurations": [CASCADE], "previous_stage_segs": str(tiny_cascade.segs)}],
                             zip_cache=tmp_path / "cache")
    lowres = next(m for m in models.values() if m.name == deployed.lowres.name)
    cascade = next(m for m in models.values() if m.name == deployed.cascade.name)
    assert previous_stage_model(cascade, models) is lowres and previous_stage_model(lowres, models) is None
    sources = postprocessing_sources(cascade)
    cache = tmp_path / "cache" / cascade.zip.key
    dataset = deployed.cascade.parent.name
    assert sources["own"] == {"pkl": f"{cache}/{dataset}/{cascade.name}/crossval_results_folds_0/postprocessing.pkl",
                              "source": f"{cascade.name}/crossval_results_folds_0/postprocessing.pkl",
                              "folds": ["0"]}
    assert [e["pkl"] for e in sources["ensembles"]] == [
        f"{cache}/{dataset}/ensembles/{deployed.ensemble_name}/postprocessing.pkl"]
    assert (postprocessing_sources(lowres)["own"] is None) == (deployed.winner != LOWRES)
    assert postprocessing_sources(lowres)["ensembles"][0]["members"] == [lowres.name, cascade.name]
    with zipfile.ZipFile(model_zip) as archive:  # each is a member the unzip rule can unpack
        names = set(archive.namelist())
    assert f"{dataset}/inference_information.json" in names  # find_best_configuration's choice travels along
    assert {p["pkl"][len(str(cache)) + 1:] for p in [sources["own"], *sources["ensembles"]]} <= names


def test_the_workflow_bundles_the_cascade_after_its_lowres_stage(deployed, tiny_cascade, tmp_path):
    """A config with both stages: the cascade's bundle waits for the lowres bundle, takes the
    postprocessing files as inputs, and both get whole-case parity (dry run)."""
    import re

    import yaml

    from conftest import copy_project, planned_jobs, run_snakemake

    work = copy_project(tmp_path / "project")
    config = yaml.safe_load((work / "config" / "config.yaml").read_text())
    config["models"] = [{"folder": str(f), "preprocessed": str(tiny_cascade.pre_ds), "raw": str(tiny_cascade.raw),
                         "folds": [0]} for f in (deployed.lowres, deployed.cascade)]
    config["benchmark"]["realistic"] = {"enabled": False}
    (work / "config" / "config.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    proc = run_snakemake(work, "-n")
    jobs = planned_jobs(proc)
    assert jobs["bundle"] == 2 and jobs["case_parity"] == 2 and jobs["export_onnx"] == 2, jobs
    text = proc.stdout + proc.stderr
    bundle_jobs = [block for block in re.split(r"\n(?=\w*rule )", text) if re.match(r"\w*rule bundle:", block)]
    cascade_job = next(b for b in bundle_jobs if deployed.cascade.name + "/bundle/bundle.json" in b.split("output:")[1])
    inputs = cascade_job.split("input:")[1].split("output:")[0]
    assert f"{deployed.lowres.name}/bundle/bundle.json" in inputs
    assert str(deployed.own) in inputs and deployed.ensemble_name in inputs
    case_parity = [b for b in re.split(r"\n(?=\w*rule )", text) if re.match(r"\w*rule case_parity:", b)]
    cascade_parity = next(b for b in case_parity if deployed.cascade.name in b.split("output:")[1])
    assert f"{deployed.lowres.name}/fold_0/checkpoint_final.pth" in cascade_parity.split("output:")[0]
