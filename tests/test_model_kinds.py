"""nnU-Net model folders of other kinds than the demo's, trained for real by nnU-Net (briefly):
2d, residual-encoder plans (ResEnc M), two input channels, region-based labels (sigmoid).

Each goes through what the pipeline does by configuration alone: strict loading, ONNX export with
the weight proof and the two-shape check, patches from its preprocessed data, quantization with
its coverage record, and the parity gate against PyTorch.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import onnx
import pytest

from nnbridge import demo
from nnbridge.export import export_onnx, read_metadata
from nnbridge.models import load_nnunet_fold, nnunet_source
from nnbridge.parity import validate_fold
from nnbridge.patches import load_patches, write_patch_sets
from nnbridge.quantize import output_labels, quantize_variant

KINDS = {
    # name: (dataset options, configuration, planner, source plans, shape)
    "2d": ({}, "2d", None, "nnUNetPlans", (24, 32, 32)),
    "resenc": ({}, "3d_fullres", "nnUNetPlannerResEncM", "nnUNetResEncUNetMPlans", (32, 32, 32)),
    "two_channels": ({"n_channels": 2}, "3d_fullres", None, "nnUNetPlans", (32, 32, 32)),
    "regions": ({"region_based": True}, "3d_fullres", None, "nnUNetPlans", (32, 32, 32)),
}


@pytest.fixture(scope="module", params=list(KINDS))
def trained(request, tmp_path_factory):
    """(kind, model folder, preprocessed dataset folder) of one briefly trained fold 0."""
    kind = request.param
    options, configuration, planner, source_plans, shape = KINDS[kind]
    dataset_id = 910 + list(KINDS).index(kind)
    root = tmp_path_factory.mktemp(f"kind_{kind}")
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    demo.make_dataset(raw, n_cases=6, shape=shape, seed=1, dataset_id=dataset_id, **options)
    pre_ds = demo.plan_and_preprocess(raw, pre, dataset_id=dataset_id, configuration=configuration,
                                      planner=planner, log=root / "plan.log")
    demo.derive_small_plans(pre_ds, source_plans=source_plans, configuration=configuration,
                            features=(8, 16, 32))
    demo.write_splits(pre_ds, configuration=configuration)
    fold_dir = demo.train_fold(0, raw=raw, preprocessed=pre, results=res, dataset_id=dataset_id,
                               configuration=configuration, epochs=1, iterations=3,
                               log=root / "train.log")
    return kind, fold_dir.parent, pre_ds


def test_loads_strictly_with_the_right_interface(trained):
    kind, folder, _ = trained
    fold = load_nnunet_fold(folder, "0")
    assert fold.num_input_channels == (2 if kind == "two_channels" else 1)
    assert len(fold.patch_size) == (2 if kind == "2d" else 3)
    assert fold.region_based == (kind == "regions")
    if kind == "regions":
        assert fold.label_names == {0: "object", 1: "box"} and fold.num_outputs == 2
    else:
        assert fold.num_outputs == 3
    if kind == "resenc":
        assert type(fold.network).__name__ == "ResidualEncoderUNet"


def test_export_proves_weights_and_runs_at_two_shapes(trained, tmp_path):
    kind, folder, _ = trained
    fold = load_nnunet_fold(folder, "0")
    record = export_onnx(fold, tmp_path / "model.onnx")
    assert record["weights"]["ok"], record["weights"]
    assert len(record["shape_checks"]) == 2
    assert all(c["max_abs_err"] < 1e-3 for c in record["shape_checks"]), record["shape_checks"]
    dims = onnx.load(str(tmp_path / "model.onnx")).graph.input[0].type.tensor_type.shape.dim
    assert len(dims) == len(fold.patch_size) + 2 and dims[1].dim_value == fold.num_input_channels
    meta = read_metadata(tmp_path / "model.onnx")
    assert meta["configuration"] == ("2d" if kind == "2d" else "3d_fullres")
    names, region_based = output_labels(tmp_path / "model.onnx")
    assert names == fold.label_names and region_based == fold.region_based


def test_patches_int8_and_parity_by_configuration_alone(trained, tmp_path):
    kind, folder, pre_ds = trained
    fold = load_nnunet_fold(folder, "0")
    export_onnx(fold, tmp_path / "model.onnx")
    write_patch_sets(nnunet_source(folder, "0"), pre_ds, "0", tmp_path / "cal.npz", tmp_path / "held.npz",
                     n_calibration=3, n_heldout=2, seed=0, foreground_fraction=0.5)
    calibration, heldout = load_patches(tmp_path / "cal.npz"), load_patches(tmp_path / "held.npz")
    assert heldout.shape[1:] == (fold.num_input_channels, *fold.patch_size)
    q = quantize_variant(tmp_path / "model.onnx", tmp_path / "int8.onnx", calibration, {"method": "static"})
    assert q["coverage"]["n_int8_compute_nodes"] > 0
    variants = {"onnx_fp32": {"kind": "onnx", "path": str(tmp_path / "model.onnx")},
                "int8_static": {"kind": "onnx", "path": str(tmp_path / "int8.onnx")}}
    tolerances = {"onnx_fp32": {"max_rel_err": 1e-4, "min_dice": 0.999}, "int8_static": {}}
    record = validate_fold(nnunet_source(folder, "0"), heldout, variants, tolerances)
    fp32 = record["variants"]["onnx_fp32"]
    assert fp32["passed"], fp32
    assert set(fp32["dice"]) == set(fold.label_names.values()) - {"background"}
    assert np.isfinite(record["variants"]["int8_static"]["max_abs_err"])
