"""`nnbridge predict` against nnU-Net's own predictor: sliding window, post-processing, whole
cases through the bundle (with cropping and resampling), the torch-free command line, and a
bundle that refuses tampered or ungated models.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from nnbridge.core.errors import NNBridgeError
from nnbridge.bundle.build import write_bundle
from nnbridge.predict.bundle import Bundle
from nnbridge.predict.postprocess import logits_to_segmentation
from nnbridge.predict.sliding import sliding_window_logits
from conftest import predict_without


def _nnunet_predictor(tiny_model, *, mirroring: bool = True, step: float = 0.5):
    import torch
    from nnunetv2.inference.predict_from_raw_data import nnUNetPredictor

    torch.set_num_threads(2)
    predictor = nnUNetPredictor(tile_step_size=step, use_gaussian=True, use_mirroring=mirroring,
                                perform_everything_on_device=False, device=torch.device("cpu"),
                                verbose=False, allow_tqdm=False)
    predictor.initialize_from_trained_model_folder(str(tiny_model.model_folder), use_folds=(0,),
                                                   checkpoint_name=tiny_model.checkpoint)
    return predictor


@pytest.mark.parametrize(("shape", "mirroring", "step"), [((1, 57, 44, 50), True, 0.5),
                                                          ((1, 30, 52, 41), False, 0.7)])
def test_sliding_window_matches_nnunet(tiny_model, shape, mirroring, step):
    """Same network (torch, wrapped as numpy) → our sliding window gives nnU-Net's logits, incl.
    padding an axis smaller than the patch and several windows per axis."""
    import torch

    predictor = _nnunet_predictor(tiny_model, mirroring=mirroring, step=step)
    network = predictor.network.eval()
    data = np.random.default_rng(0).standard_normal(shape).astype(np.float32)
    with torch.no_grad():
        ref = predictor.predict_sliding_window_return_logits(torch.from_numpy(data)).float().numpy()

        def run(batch: np.ndarray) -> np.ndarray:
            return network(torch.from_numpy(batch)).numpy()

        ours = sliding_window_logits(
            data, run, predictor.configuration_manager.patch_size, ref.shape[0], step=step,
            mirror_axes=predictor.allowed_mirroring_axes if mirroring else None, batch_size=2,
        )
    assert ours.shape == ref.shape and ours.dtype == np.float16
    # float16 accumulation on both sides; only summation order differs
    np.testing.assert_allclose(ours.astype(np.float32), ref, atol=2e-2, rtol=1e-2)
    assert (ours.argmax(0) == ref.argmax(0)).mean() > 0.9999


def _properties(shape_before, bbox, shape_after, spacing):
    return {"shape_before_cropping": shape_before, "bbox_used_for_cropping": bbox,
            "shape_after_cropping_and_before_resampling": shape_after, "spacing": spacing}


@pytest.mark.parametrize("regions", [False, True])
@pytest.mark.parametrize("probabilities", [False, True])
def test_postprocess_matches_nnunet(regions, probabilities):
    """Logits in the preprocessed grid → labels (and probabilities) in the input's grid, with
    resampling back over an anisotropic axis, un-cropping and a transpose, as nnU-Net does."""
    from nnunetv2.inference.export_prediction import convert_predicted_logits_to_segmentation_with_correct_shape
    from nnunetv2.utilities.plans_handling.plans_handler import PlansManager

    labels = ({"background": 0, "object": [1, 2], "box": 2} if regions else
              {"background": 0, "sphere": 1, "box": 2})
    dataset_json = {"labels": labels, "file_ending": ".nii.gz", "channel_names": {"0": "MRI"}}
    if regions:
        dataset_json["regions_class_order"] = [1, 2]
    plans = {
        "dataset_name": "Dataset999_X", "plans_name": "P", "transpose_forward": [2, 0, 1],
        "transpose_backward": [1, 2, 0], "image_reader_writer": "SimpleITKIO",
        "original_median_spacing_after_transp": [1, 1, 1], "original_median_shape_after_transp": [10, 10, 10],
        "foreground_intensity_properties_per_channel": {},
        "configurations": {"3d_fullres": {
            "data_identifier": "x", "preprocessor_name": "DefaultPreprocessor", "batch_size": 2,
            "patch_size": [16, 16, 16], "median_image_size_in_voxels": [20, 20, 20],
            "spacing": [1.0, 1.0, 1.0], "normalization_schemes": ["ZScoreNormalization"],
            "use_mask_for_norm": [False],
            "resampling_fn_data": "resample_data_or_seg_to_shape",
            "resampling_fn_seg": "resample_data_or_seg_to_shape",
            "resampling_fn_data_kwargs": {"is_seg": False, "order": 3, "order_z": 0, "force_separate_z": None},
            "resampling_fn_seg_kwargs": {"is_seg": True, "order": 1, "order_z": 0, "force_separate_z": None},
            "resampling_fn_probabilities": "resample_data_or_seg_to_shape",
            "resampling_fn_probabilities_kwargs": {"is_seg": False, "order": 1, "order_z": 0,
                                                   "force_separate_z": None},
            "architecture": {"network_class_name": "x", "arch_kwargs": {}, "_kw_requires_import": []},
            "batch_dice": True,
        }},
    }
    rng = np.random.default_rng(1)
    # preprocessed grid 14x20x18 at 1 mm; input crop 4x20x18 at 3.5 mm on the first axis (separate z)
    logits = (rng.standard_normal((2 if regions else 3, 14, 20, 18)) * 3).astype(np.float16)
    # spacing in the input's axis order: after transpose_forward [2, 0, 1] it is (3.5, 1, 1)
    props = _properties((9, 25, 22), [[2, 6], [3, 23], [1, 19]], (4, 20, 18), [1.0, 1.0, 3.5])
    pm = PlansManager(plans)
    ref = convert_predicted_logits_to_segmentation_with_correct_shape(
        logits.copy(), pm, pm.get_configuration("3d_fullres"), pm.get_label_manager(dataset_json), dict(props),
        return_probabilities=probabilities)
    ours = logits_to_segmentation(logits.copy(), dict(props), plans, "3d_fullres", dataset_json,
                                  return_probabilities=probabilities)
    if probabilities:
        (ref_seg, ref_prob), (seg, prob) = ref, ours
        np.testing.assert_allclose(prob, np.asarray(ref_prob), atol=1e-5)
    else:
        ref_seg, seg = ref, ours
    assert seg.shape == np.asarray(ref_seg).shape == (25, 22, 9)
    np.testing.assert_array_equal(seg, np.asarray(ref_seg))
    assert len(np.unique(seg)) == 3


def _write_cases(tiny_model, out: Path, spacing=(1.0, 1.0, 3.5), n=2) -> dict[str, dict]:
    """Cases of the tiny model's raw data re-written with another spacing and a zero border, so
    that prediction crops, resamples (separate z) and resamples back."""
    import SimpleITK as sitk

    raw = next((tiny_model.model_folder.parents[2] / "raw").glob("Dataset*"))
    out.mkdir(parents=True, exist_ok=True)
    cases = {}
    for path in sorted((raw / "imagesTr").glob("*_0000.nii.gz"))[:n]:
        case = path.name[: -len("_0000.nii.gz")]
        for src, dst in ((path, out / path.name), (raw / "labelsTr" / f"{case}.nii.gz", out / f"{case}_gt.nii.gz")):
            image = sitk.ReadImage(str(src))
            array = sitk.GetArrayFromImage(image)[::3]  # fewer slices: thick slices
            padded = np.zeros((array.shape[0] + 2, array.shape[1] + 6, array.shape[2] + 4), array.dtype)
            padded[1:-1, 3:-3, 2:-2] = array
            written = sitk.GetImageFromArray(padded)
            written.SetSpacing(spacing)
            written.SetOrigin((10.0, -5.0, 2.0))
            sitk.WriteImage(written, str(dst))
        cases[case] = {"images": [out / path.name], "label": out / f"{case}_gt.nii.gz"}
    return cases


@pytest.fixture(scope="module")
def bundle_dir(tiny_model, exported, tmp_path_factory) -> Path:
    out_dir, _, _ = exported
    model = tiny_model.model_folder
    checkpoint_axes = json.loads(__import__("nnbridge.core.metadata", fromlist=["x"]).read_metadata(
        out_dir / "model.onnx")["mirror_axes"])
    root = tmp_path_factory.mktemp("bundle")
    write_bundle(root, plans_file=model / "plans.json", dataset_file=model / "dataset.json",
                 info={"configuration": "3d_fullres", "mirror_axes": checkpoint_axes},
                 variants={"onnx_fp32": {"files": {"0": out_dir / "model.onnx"},
                                         "gates": {"0": {"onnxruntime": True, "openvino": False}},
                                         "latency_ms": {"onnxruntime": 10.0, "openvino": 5.0}}},
                 default_variant="onnx_fp32")
    return root


def test_bundle_chooses_the_fastest_runtime_that_passed_and_verifies_files(bundle_dir, tmp_path):
    import shutil

    bundle = Bundle.load(bundle_dir)
    # OpenVINO is faster but failed its gate: the bundle runs ONNX Runtime
    assert bundle.manifest["variants"]["onnx_fp32"]["backend"] == "onnxruntime"
    copy = tmp_path / "copy"
    shutil.copytree(bundle_dir, copy)
    with open(copy / "onnx_fp32" / "fold_0.onnx", "ab") as handle:
        handle.write(b"\0")
    with pytest.raises(NNBridgeError, match=r"fold_0.onnx: sha256 differs"):
        Bundle.load(copy)
    from nnbridge.predict.predictor import Predictor

    with pytest.raises(NNBridgeError, match=r"failed its parity gate on fold\(s\) \['0'\].*--allow-ungated"):
        Predictor(bundle, backend="openvino")
    with pytest.raises(NNBridgeError, match=r"no fold\(s\) \['3'\]"):
        Predictor(bundle, folds=["3"])


def test_whole_cases_match_nnunet_predictor(tiny_model, bundle_dir, tmp_path):
    """nnUNetPredictor vs nnbridge predict (ONNX Runtime) on whole cases that need cropping and
    anisotropic resampling: identical preprocessing, labels within the fp32 gate."""
    from nnbridge.validate.caseparity import run_case_parity

    cases = _write_cases(tiny_model, tmp_path / "in")

    def parity(variants, salt="code-1"):
        return run_case_parity(model_folder=tiny_model.model_folder, fold="0", checkpoint=tiny_model.checkpoint,
                               bundle_dir=bundle_dir, cases=cases, variants=variants, out_dir=tmp_path / "out",
                               step=0.5, mirroring=True, threads=2, cache_salt=salt)

    record = parity({"onnx_fp32": {}})
    result = record["variants"]["onnx_fp32"]
    assert "from_cache" not in record["nnunet"] and "from_cache" not in result
    # a rerun with nothing changed predicts nothing; a changed gate reruns that variant only, on
    # nnU-Net's kept arrays; another code version predicts both sides again
    again = parity({"onnx_fp32": {}})
    assert again["nnunet"]["from_cache"] and again["variants"]["onnx_fp32"] == {**result, "from_cache": True}
    stricter = parity({"onnx_fp32": {"gate": {"min_dice": 0.9999}}})
    assert stricter["nnunet"]["from_cache"] and "from_cache" not in stricter["variants"]["onnx_fp32"]
    assert stricter["variants"]["onnx_fp32"]["gate"]["min_dice"] == 0.9999
    assert stricter["variants"]["onnx_fp32"]["min_voxel_agreement"] == result["min_voxel_agreement"]
    fresh = parity({"onnx_fp32": {}}, salt="code-2")
    assert "from_cache" not in fresh["nnunet"] and "from_cache" not in fresh["variants"]["onnx_fp32"]
    for case, rec in result["cases"].items():
        assert rec["preprocessed_max_abs_diff"] <= 1e-4, case
        assert rec["logits_argmax_agreement"] > 0.999, case
    assert result["passed"], result
    assert result["min_voxel_agreement"] >= 0.9999
    assert set(result["timings_s"]) == {"read", "preprocess", "inference", "resample_back", "write"}
    assert result["speedup_vs_nnunet"] > 0
    written = sorted(p.name for p in (tmp_path / "out" / "onnx_fp32").glob("*.nii.gz"))
    assert written == sorted(f"{c}.nii.gz" for c in cases)


def test_whole_case_parity_skips_a_variant_refused_on_the_fold(tiny_model, exported, tmp_path):
    """A variant that failed its patch gate on the fold on every runtime is not compared on whole
    cases (predict refuses it): reported as skipped with the reason, and with nothing left to
    compare nnU-Net's predictor does not run; compare_failed compares it anyway, on its fastest runtime."""
    from nnbridge.validate.caseparity import run_case_parity

    out_dir, _, _ = exported
    model = tiny_model.model_folder
    root = tmp_path / "bundle"
    write_bundle(root, plans_file=model / "plans.json", dataset_file=model / "dataset.json",
                 info={"configuration": "3d_fullres", "mirror_axes": [0, 1, 2]},
                 variants={"int8_static": {"files": {"0": out_dir / "model.onnx"},
                                           "gates": {"0": {"onnxruntime": False, "openvino": False}},
                                           "latency_ms": {"onnxruntime": 10.0, "openvino": 5.0}}},
                 default_variant="int8_static")
    cases = _write_cases(tiny_model, tmp_path / "in", n=1)

    def parity(**kw):
        return run_case_parity(model_folder=model, fold="0", checkpoint=tiny_model.checkpoint, bundle_dir=root,
                               cases=cases, variants={"int8_static": {}}, out_dir=tmp_path / "out", step=0.5,
                               mirroring=False, threads=2, cache_salt="code-1", **kw)

    record = parity()
    skipped = record["variants"]["int8_static"]
    # passed nowhere: named (and compared) on its fastest runtime, where it would be deployed had it
    # passed, not on predict's default ONNX Runtime
    assert skipped["passed"] is False and skipped["backend"] == "openvino"
    assert skipped["skipped"].startswith("failed its patch gate on fold 0 on onnxruntime and openvino")
    assert record["nnunet"] is None and not (tmp_path / "out" / "nnunet").exists()
    compared = parity(compare_failed=True)["variants"]["int8_static"]
    assert "skipped" not in compared and compared["cases"] and compared["min_voxel_agreement"] > 0.99
    assert compared["backend"] == "openvino"


def test_predict_cli_runs_without_torch(tiny_model, bundle_dir, tmp_path):
    """`nnbridge predict` with torch made unimportable writes nnU-Net's file layout, with the
    input's geometry, and the same labels as the library call."""
    import SimpleITK as sitk

    from nnbridge.predict.predictor import Predictor

    cases = _write_cases(tiny_model, tmp_path / "in", n=1)
    for spec in cases.values():
        spec["label"].unlink()  # only <case>_0000.nii.gz in the input folder
    proc = predict_without(["predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", bundle_dir,
                            "--save-probabilities", "--threads", "2", "-q"])
    assert proc.returncode == 0, proc.stderr[-3000:]
    case = next(iter(cases))
    out = sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz"))
    src = sitk.ReadImage(str(cases[case]["images"][0]))
    assert out.GetSize() == src.GetSize() and out.GetSpacing() == src.GetSpacing()
    assert out.GetOrigin() == src.GetOrigin()
    probs = np.load(tmp_path / "out" / f"{case}.npz")["probabilities"]
    assert probs.shape == (3, *sitk.GetArrayFromImage(src).shape)
    result = Predictor(Bundle.load(bundle_dir), threads=2).predict_case(case, cases[case]["images"])
    np.testing.assert_array_equal(sitk.GetArrayFromImage(out), result.segmentation)
    assert set(np.unique(result.segmentation)) <= {0, 1, 2}


def test_predict_cli_names_a_missing_channel(bundle_dir, tmp_path, capsys):
    from nnbridge.cli import main

    (tmp_path / "in").mkdir()
    (tmp_path / "in" / "case_0001.nii.gz").write_bytes(b"")
    rc = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(bundle_dir)])
    assert rc == 2
    assert "case 'case' lacks channel(s) case_0000.nii.gz" in capsys.readouterr().err


def _sweep(ort_ms: dict[str, float], ort_batch: float, ov_ms: dict[str, float], ov_batch: float) -> dict:
    """A benchmark's thread/batch sweep (batch 2) of the fp32 graph on both runtimes, as JSON."""
    return {"threads": [1, 2], "batch": 2, "results": {
        "torch_eager": {"p50_ms_by_threads": {"1": 1.0, "2": 1.0}, "p50_ms_per_patch_at_batch": 0.1},
        "onnx_fp32": {"p50_ms_by_threads": ort_ms, "p50_ms_per_patch_at_batch": ort_batch},
        "onnx_fp32@openvino": {"p50_ms_by_threads": ov_ms, "p50_ms_per_patch_at_batch": ov_batch}}}


def test_run_settings_come_from_the_benchmark_sweep():
    """Threads: the lowest median p50 over folds on the same runtime; batch: the sweep's batch
    only when it is more than 3 % faster per patch than batch 1 at full threads."""
    from nnbridge.bundle.build import run_settings
    from nnbridge.core.keys import Variant
    from nnbridge.core.records import Sweep

    sweeps = [Sweep.from_dict(_sweep({"1": 30.0, "2": 20.0}, 18.0, {"1": 10.0, "2": 12.0}, 11.9)),
              Sweep.from_dict(_sweep({"1": 30.0, "2": 35.0}, 30.0, {"1": 11.0, "2": 12.0}, 11.8))]
    got = run_settings(sweeps, "int8")  # not swept itself: the fp32 graph's sweep stands in
    # ONNX Runtime: medians 30 vs 27.5 ms -> 2 threads; batch 2: 24 ms per patch vs 27.5 -> kept
    assert (got["onnxruntime"]["threads"], got["onnxruntime"]["batch_size"]) == (2, 2)
    assert got["onnxruntime"]["from"]["threads"] == ("sweep of onnx_fp32, the fp32 graph on this runtime: "
                                                     "lowest median p50 at 2 of 1, 2 threads (1: 30.0 ms, 2: 27.5 ms)")
    # OpenVINO: 1 thread; batch 2 is 1.7 % faster per patch (11.85 vs 12.0 ms): noise, batch 1
    assert (got["openvino"]["threads"], got["openvino"]["batch_size"]) == (1, 1)
    assert "not more than 3% faster" in got["openvino"]["from"]["batch_size"]
    assert "sweep of onnx_fp32@openvino" in got["openvino"]["from"]["batch_size"]
    # a variant swept itself uses its own sweep
    sweeps[0].results[Variant("int8")] = {"p50_ms_by_threads": {"1": 5.0, "2": 9.0}}
    own = run_settings(sweeps[:1], "int8")["onnxruntime"]
    assert own["threads"] == 1 and own["batch_size"] == 1 and own["from"]["threads"].startswith("sweep of int8:")
    # the deployed fp32 graph's sweep (the default benchmark.sweep) before the export's
    both = Sweep.from_dict(_sweep({"1": 30.0, "2": 20.0}, 18.0, {"1": 10.0, "2": 12.0}, 11.9))
    both.results[Variant("onnx_simplified")] = {"p50_ms_by_threads": {"1": 5.0, "2": 9.0}}
    simplified = run_settings([both], "int8")["onnxruntime"]
    assert simplified["threads"] == 1
    assert simplified["from"]["threads"].startswith("sweep of onnx_simplified, the fp32 graph on this runtime: ")
    # no sweep: the runtimes' defaults, said so
    assert run_settings([], "int8")["openvino"] == {"threads": None, "batch_size": 1, "from": {
        "threads": "default: the benchmark swept no int8@openvino or onnx_simplified@openvino or onnx_fp32@openvino",
        "batch_size": "default: the benchmark swept no int8@openvino or onnx_simplified@openvino or onnx_fp32@openvino"}}


@pytest.fixture(scope="module")
def swept_bundle_dir(tiny_model, exported, tmp_path_factory) -> Path:
    """A bundle built by the pipeline's builder from two folds' parity and benchmark records."""
    from nnbridge.bundle.build import build_from_pipeline
    from nnbridge.core.records import BenchmarkRecord, ParityRecord

    out_dir, _, _ = exported
    root = tmp_path_factory.mktemp("swept")
    folds = {}
    for fold, sweep in (("0", _sweep({"1": 30.0, "2": 20.0}, 18.0, {"1": 10.0, "2": 12.0}, 11.9)),
                        ("1", _sweep({"1": 30.0, "2": 35.0}, 30.0, {"1": 11.0, "2": 12.0}, 11.8))):
        ParityRecord.of({"variants": {"onnx_fp32": {"passed": True}, "onnx_fp32@openvino": {"passed": True}}}).write(
            root / fold / "parity.json")
        BenchmarkRecord.of({
            "threads": 2, "results": {"onnx_fp32": {"p50_ms": 20.0}, "onnx_fp32@openvino": {"p50_ms": 30.0}},
            "tuning": {"onnx_fp32": {"chosen": {"io_binding": True}}}, "sweep": sweep}).write(root / fold / "benchmark.json")
        folds[fold] = {"files": {"onnx_fp32": out_dir / "model.onnx"}, "parity": root / fold / "parity.json",
                       "benchmark": root / fold / "benchmark.json"}
    build_from_pipeline(root / "bundle", plans_file=tiny_model.model_folder / "plans.json",
                        dataset_file=tiny_model.model_folder / "dataset.json", folds=folds,
                        variant_names=["onnx_fp32"], default_variant="onnx_fp32", model="m", dataset="d")
    return root / "bundle"


def test_predictor_uses_the_recorded_threads_and_batch_unless_told(swept_bundle_dir):
    import os

    from nnbridge.predict.predictor import Predictor

    bundle = Bundle.load(swept_bundle_dir)
    entry = bundle.manifest["variants"]["onnx_fp32"]
    assert entry["backend"] == "onnxruntime" and entry["ort_settings"] == {"io_binding": True}
    predictor = Predictor(bundle)
    assert (predictor.threads, predictor.batch_size) == (min(2, os.cpu_count() or 1), 2)
    line = predictor.describe_run()
    assert line.startswith(f"onnx_fp32 on onnxruntime with {predictor.threads} threads, batch 2, "
                           "ONNX Runtime io_binding=True (the benchmark's search) [threads: sweep of onnx_fp32: ")
    assert "batch: sweep of onnx_fp32: 24.0 ms per window at batch 2 vs 27.5 ms at batch 1, more than 3% faster]" in line
    ov = Predictor(bundle, backend="openvino")
    assert (ov.threads, ov.batch_size) == (1, 1)
    explicit = Predictor(bundle, threads=1, batch_size=3)
    assert (explicit.threads, explicit.batch_size) == (1, 3)
    assert explicit.run_choice["why"] == {"threads": "--threads", "batch_size": "--batch-size"}
    with pytest.raises(NNBridgeError, match="the batch size >= 1"):
        Predictor(bundle, batch_size=0)
    # a bundle written on a machine with more cores: capped at the CPUs this process may use
    cpus = len(os.sched_getaffinity(0))
    entry["run_settings"]["onnxruntime"]["threads"] = cpus + 6
    capped = Predictor(bundle)
    assert capped.threads == cpus and f"{cpus + 6} capped at the {cpus} CPU(s) this process may use" in capped.describe_run()
    # ... which a Slurm job's -c, taskset or a container's cpuset make fewer than the machine has
    everything = os.sched_getaffinity(0)
    os.sched_setaffinity(0, {min(everything)})
    try:
        one = Predictor(bundle)
    finally:
        os.sched_setaffinity(0, everything)
    assert one.threads == 1 and f"{cpus + 6} capped at the 1 CPU(s) this process may use" in one.describe_run()


def test_predict_cli_explicit_threads_win_and_old_bundles_still_predict(tiny_model, swept_bundle_dir, tmp_path,
                                                                      capsys):
    """--threads/--batch-size override the bundle's record; a manifest from before the record
    (no run_settings) predicts with the runtime's threads and batch 1, the same labels."""
    import shutil

    import SimpleITK as sitk

    from nnbridge.cli import main
    from nnbridge.predict.predictor import Predictor

    cases = _write_cases(tiny_model, tmp_path / "in", n=1)
    case = next(iter(cases))
    rc = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(swept_bundle_dir),
               "-f", "0", "--threads", "1", "--batch-size", "3"])
    assert rc == 0
    assert ("nnbridge: onnx_fp32 on onnxruntime with 1 thread, batch 3, ONNX Runtime io_binding=True (the "
            "benchmark's search) [threads: --threads; batch: --batch-size]") in capsys.readouterr().err
    old = tmp_path / "old"
    shutil.copytree(swept_bundle_dir, old)
    manifest = json.loads((old / "bundle.json").read_text())
    del manifest["variants"]["onnx_fp32"]["run_settings"]
    (old / "bundle.json").write_text(json.dumps(manifest))
    predictor = Predictor(Bundle.load(old), folds=["0"])
    assert (predictor.threads, predictor.batch_size) == (0, 1)
    assert predictor.run_choice["why"]["batch_size"] == "default: no choice recorded in the bundle"
    result = predictor.predict_case(case, cases[case]["images"])
    written = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz")))
    np.testing.assert_array_equal(written, result.segmentation)
