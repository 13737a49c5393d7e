"""nnU-Net model folders of other kinds than the demo's, trained for real by nnU-Net (briefly):
2d; residual-encoder plans (ResEnc M) with two input channels and region-based labels (sigmoid); and the
cascade (3d_lowres, then 3d_cascade_fullres on its segmentations).

Each goes through what the pipeline does by configuration alone: strict loading, ONNX export with
the weight proof and the two-shape check, patches from its preprocessed data, quantization with
its coverage record, and the parity gate against PyTorch.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

from nnbridge.demo import dataset, nnunet as demo
from nnbridge.core.errors import NNBridgeError
from nnbridge.core.metadata import read_metadata
from nnbridge.export.onnx_export import export_onnx
from nnbridge.models.nnunet import load_nnunet_fold, nnunet_source
from nnbridge.validate.reference import validate_source
from nnbridge.patches.sampling import load_patches, patch_source, with_previous_stage, write_patch_sets
from nnbridge.core.plans import default_previous_stage_segs
from nnbridge.core.metadata import output_labels
from nnbridge.quantize import quantize_variant

KINDS = {
    # name: (dataset options, configuration, planner, source plans, shape)
    "2d": ({}, "2d", None, "nnUNetPlans", (24, 32, 32)),
    # residual-encoder plans (ResEnc M), two input channels and region-based labels (sigmoid
    # outputs) in one model, as models trained elsewhere often combine them: each is asserted on
    # its own, and two nnU-Net plannings + trainings less (~80 s of the suite)
    "resenc_regions_two_channels": ({"n_channels": 2, "region_based": True}, "3d_fullres", "nnUNetPlannerResEncM",
                                    "nnUNetResEncUNetMPlans", (32, 32, 32)),
}
TWO_CHANNELS = REGIONS = RESENC = "resenc_regions_two_channels"


@pytest.fixture(scope="module", params=list(KINDS))
def trained(request, tmp_path_factory):
    """(kind, model folder, preprocessed dataset folder) of one briefly trained fold 0."""
    kind = request.param
    options, configuration, planner, source_plans, shape = KINDS[kind]
    dataset_id = 910 + list(KINDS).index(kind)
    root = tmp_path_factory.mktemp(f"kind_{kind}")
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    dataset.make_dataset(raw, n_cases=6, shape=shape, seed=1, dataset_id=dataset_id, **options)
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
    assert fold.num_input_channels == (2 if kind == TWO_CHANNELS else 1)
    assert len(fold.patch_size) == (2 if kind == "2d" else 3)
    assert fold.region_based == (kind == REGIONS)
    if kind == REGIONS:
        assert fold.label_names == {0: "object", 1: "box"} and fold.num_outputs == 2
    else:
        assert fold.num_outputs == 3
    if kind == RESENC:
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
    fp32 = int8_and_parity(folder, tmp_path, calibration, heldout)
    assert set(fp32["dice"]) == set(fold.label_names.values()) - {"background"}


def int8_and_parity(folder: Path, out: Path, calibration: np.ndarray, heldout: np.ndarray) -> dict:
    """Static INT8 of ``out/model.onnx`` (some nodes in INT8), then the parity gate: fp32 passes
    its exact gate, INT8 gets finite errors. Returns the fp32 verdict."""
    q = quantize_variant(out / "model.onnx", out / "int8.onnx", calibration, {"method": "static"})
    assert q["coverage"]["n_int8_compute_nodes"] > 0
    variants = {"onnx_fp32": {"kind": "onnx", "path": str(out / "model.onnx")},
                "int8_static": {"kind": "onnx", "path": str(out / "int8.onnx")}}
    tolerances = {"onnx_fp32": {"max_rel_err": 1e-4, "min_dice": 0.999}, "int8_static": {}}
    record = validate_source(nnunet_source(folder, "0"), heldout, variants, tolerances)
    fp32 = record["variants"]["onnx_fp32"]
    assert fp32["passed"], fp32
    assert np.isfinite(record["variants"]["int8_static"]["max_abs_err"])
    return fp32


# --------------------------------------------------------------------------------------------
# nnU-Net's cascade, trained for real by nnU-Net (briefly): a 3d_lowres fold 0 and the
# 3d_cascade_fullres fold 0 that takes its segmentations as one-hot input channels. Both go through
# the same stages by configuration alone; the cascade's patches carry the previous stage's
# segmentations from the lowres model's predicted_next_stage folder.

LOWRES, CASCADE = "3d_lowres", "3d_cascade_fullres"


@pytest.fixture(scope="module")
def cascade(tiny_cascade):
    """The session's cascade (tests/conftest.py: lowres fold 0, then cascade fold 0)."""
    return tiny_cascade


def test_cascade_previous_stage_is_where_nnunet_writes_it(cascade):
    """Lowres fold 0's final validation wrote its validation cases for the next stage, into the
    folder nnbridge derives from the cascade model folder by default."""
    splits = json.loads((cascade.pre_ds / "splits_final.json").read_text())
    assert cascade.predicted == sorted(splits[0]["val"]) and cascade.filled == sorted(splits[0]["train"])
    assert default_previous_stage_segs(cascade.cascade, LOWRES) == cascade.segs
    _data, _patch, previous = patch_source(nnunet_source(cascade.cascade, "0"), cascade.pre_ds)
    assert previous is not None and previous.segs == cascade.segs and previous.labels == (1, 2)


def test_cascade_loads_with_image_and_onehot_channels(cascade):
    lowres = load_nnunet_fold(cascade.lowres, "0")
    assert (lowres.configuration, lowres.num_input_channels, lowres.previous_stage) == (LOWRES, 1, None)
    assert lowres.patch_size == (16, 16, 16)
    fold = load_nnunet_fold(cascade.cascade, "0")
    assert (fold.configuration, fold.previous_stage, fold.previous_stage_labels) == (CASCADE, LOWRES, (1, 2))
    assert (fold.num_input_channels, fold.num_image_channels) == (3, 1)
    assert fold.patch_size == (32, 32, 32)


def test_cascade_onehot_channels_as_nnunet_feeds_them(cascade):
    """nnbridge's one-hot channels equal nnU-Net's validation transform's (same data, same seg)."""
    import torch
    from nnunetv2.training.dataloading.nnunet_dataset import nnUNetDatasetBlosc2
    from nnunetv2.training.nnUNetTrainer.nnUNetTrainer import nnUNetTrainer

    data_folder, _patch, previous = patch_source(nnunet_source(cascade.cascade, "0"), cascade.pre_ds)
    case = cascade.predicted[0]
    data, seg, seg_prev, _props = nnUNetDatasetBlosc2(str(data_folder), [case], str(cascade.segs)).load_case(case)
    ours = with_previous_stage(np.asarray(data[:], np.float32), seg_prev, previous, case)
    transform = nnUNetTrainer.get_validation_transforms(None, is_cascaded=True, foreground_labels=[1, 2])
    segmentation = torch.cat([torch.from_numpy(np.asarray(seg[:], np.int16)),
                              torch.from_numpy(np.asarray(seg_prev[:], np.int16))[None]])
    theirs = transform(image=torch.from_numpy(np.asarray(data[:], np.float32)), segmentation=segmentation)["image"]
    np.testing.assert_array_equal(ours, theirs.numpy())
    assert ours[1:].sum() > 0  # the lowres model found foreground


@pytest.mark.parametrize("stage", [LOWRES, CASCADE])
def test_cascade_export_patches_int8_and_parity(cascade, stage, tmp_path):
    folder = cascade.lowres if stage == LOWRES else cascade.cascade
    fold = load_nnunet_fold(folder, "0")
    record = export_onnx(fold, tmp_path / "model.onnx")
    assert record["weights"]["ok"], record["weights"]
    assert all(c["max_abs_err"] < 1e-3 for c in record["shape_checks"]), record["shape_checks"]
    meta = read_metadata(tmp_path / "model.onnx")
    assert meta["configuration"] == stage and meta["num_input_channels"] == str(fold.num_input_channels)
    if stage == CASCADE:
        assert (meta["previous_stage"], meta["num_image_channels"]) == (LOWRES, "1")
        assert json.loads(meta["onehot_labels"]) == [1, 2]
    else:
        assert "previous_stage" not in meta
    summary = write_patch_sets(nnunet_source(folder, "0"), cascade.pre_ds, "0", tmp_path / "cal.npz",
                               tmp_path / "held.npz", n_calibration=3, n_heldout=2, seed=0,
                               foreground_fraction=0.5)
    calibration, heldout = load_patches(tmp_path / "cal.npz"), load_patches(tmp_path / "held.npz")
    assert heldout.shape[1:] == (fold.num_input_channels, *fold.patch_size)
    # lowres: its own preprocessed data; the cascade: 3d_fullres's, which it inherits
    assert Path(summary["data_folder"]).name == {LOWRES: f"{demo.DEMO_PLANS}_3d_lowres",
                                                 CASCADE: "nnUNetPlans_3d_fullres"}[stage]
    if stage == CASCADE:
        assert summary["previous_stage"]["segs"] == str(cascade.segs)
        onehot = heldout[:, 1:]
        assert set(np.unique(onehot)) <= {0.0, 1.0} and onehot.sum(axis=1).max() <= 1 and onehot.sum() > 0
    int8_and_parity(folder, tmp_path, calibration, heldout)


def test_cascade_missing_previous_stage_fails_clearly(cascade, tmp_path):
    empty = tmp_path / "predicted_next_stage" / CASCADE
    empty.mkdir(parents=True)
    source = nnunet_source(cascade.cascade, "0", previous_stage_segs=empty)
    with pytest.raises(NNBridgeError) as error:
        write_patch_sets(source, cascade.pre_ds, "0", tmp_path / "cal.npz", tmp_path / "held.npz",
                         n_calibration=1, n_heldout=1, seed=0, foreground_fraction=0.5)
    message = str(error.value)
    assert "\n" not in message and str(empty) in message
    assert "3d_lowres" in message and "previous_stage_segs" in message
    assert not (tmp_path / "cal.npz").exists()


def test_cascade_in_the_workflow_config(cascade, tmp_path):
    from nnbridge.pipeline.plan import discover_models

    base = {"preprocessed": str(cascade.pre_ds), "folds": ["0"]}
    models = discover_models([{"folder": str(cascade.lowres), **base}, {"folder": str(cascade.cascade), **base}])
    lowres, stage = (models[f"{f.parent.name}/{f.name}"] for f in (cascade.lowres, cascade.cascade))
    assert (lowres.previous_stage, lowres.previous_stage_segs) == (None, None)
    assert (stage.previous_stage, stage.previous_stage_segs) == (LOWRES, str(cascade.segs))
    assert stage.source("0")["previous_stage_segs"] == str(cascade.segs)
    for entry, expected in (
        ({"folder": str(cascade.cascade), "previous_stage_segs": str(tmp_path / "nowhere")},
         f"{tmp_path / 'nowhere'} does not exist"),
        ({"folder": str(cascade.lowres), "previous_stage_segs": str(cascade.segs)}, "cascade stages only"),
    ):
        with pytest.raises(NNBridgeError, match="previous_stage_segs") as error:
            discover_models([{**entry, **base}])
        assert expected in str(error.value) and "\n" not in str(error.value)


def test_cascade_without_its_previous_stage_refused_by_bundle_and_predict(cascade, tmp_path):
    """A cascade stage deploys with its previous stage (tests/test_cascade_ensemble.py); alone it is
    refused, naming the missing stage."""
    import onnx
    from onnx import TensorProto, helper

    from nnbridge.bundle.build import build_from_pipeline, write_bundle
    from nnbridge.predict.bundle import Bundle
    from nnbridge.predict.predictor import Predictor

    graph = helper.make_graph([helper.make_node("Identity", ["x"], ["y"])], "g",
                              [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    model = helper.make_model(graph)
    helper.set_model_props(model, {"nnbridge.configuration": CASCADE, "nnbridge.previous_stage": LOWRES})
    onnx.save(model, tmp_path / "model.onnx")
    files = {"plans_file": cascade.cascade / "plans.json", "dataset_file": cascade.cascade / "dataset.json"}
    with pytest.raises(NNBridgeError, match="holds no 3d_lowres stage; configure the 3d_lowres model folder too"):
        build_from_pipeline(tmp_path / "b1", **files, folds={"0": {"files": {"onnx_fp32": tmp_path / "model.onnx"}}},
                            variant_names=["onnx_fp32"], default_variant="onnx_fp32", model="m", dataset="d")
    write_bundle(tmp_path / "b2", **files, info={"configuration": CASCADE},
                 variants={"onnx_fp32": {"files": {"0": tmp_path / "model.onnx"}, "gates": {}}},
                 default_variant="onnx_fp32")
    with pytest.raises(NNBridgeError, match=f"{CASCADE} is a cascade stage") as error:
        Predictor(Bundle.load(tmp_path / "b2"))
    assert "\n" not in str(error.value)
