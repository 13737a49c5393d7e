"""Export to ONNX / TorchScript: weights proven, outputs equal, metadata present."""

from __future__ import annotations

import json

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nnbridge.cli import main as cli_main
from nnbridge.core.errors import NNBridgeError
from nnbridge.core.metadata import read_metadata
from nnbridge.export.common import check_spatial_shape, gradient_shape
from nnbridge.export.weights import unused_at_inference, verify_onnx_weights


def test_onnx_export_carries_checkpoint_weights(exported, loaded_fold):
    _, record, _ = exported
    assert record["weights"]["ok"], record["weights"]
    # deep supervision is off: only the last segmentation head is in the graph
    unused = record["weights"]["unused_at_inference"]
    assert unused and all(k.startswith("decoder.seg_layers.") for k in unused)
    assert record["weights"]["n_tensors"] == len(loaded_fold.weights) - len(unused)
    # found by a backward pass at a small valid shape (at a 128^3 patch that pass was half of
    # the export): the same parameters as at the patch
    small = gradient_shape(loaded_fold)
    assert np.prod(small) < np.prod(loaded_fold.input_shape), (small, loaded_fold.input_shape)
    assert sorted(unused_at_inference(loaded_fold.network, loaded_fold.input_shape)) == sorted(unused)
    shapes = [tuple(c["shape"]) for c in record["shape_checks"]]
    assert len(set(shapes)) == 2  # two different input shapes through the dynamic axes
    assert all(c["max_abs_err"] < 1e-4 for c in record["shape_checks"])


def test_planted_onnx_weight_mismatch_is_found(exported, loaded_fold):
    out, _, _ = exported
    model = onnx.load(str(out / "model.onnx"))
    victim = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    array = numpy_helper.to_array(victim).copy()
    array.flat[0] += 0.5
    victim.CopyFrom(numpy_helper.from_array(array, victim.name))
    unused = unused_at_inference(loaded_fold.network, loaded_fold.input_shape)
    assert verify_onnx_weights(onnx.load(str(out / "model.onnx")), loaded_fold.weights, unused)["ok"]
    proof = verify_onnx_weights(model, loaded_fold.weights, unused)
    assert not proof["ok"]
    assert "NOT verified" in proof["summary"]


def test_onnx_metadata_and_inspect(exported, loaded_fold, capsys):
    out, _, _ = exported
    meta = read_metadata(out / "model.onnx")
    assert meta["source_sha256"] == loaded_fold.checkpoint_sha256
    assert json.loads(meta["patch_size"]) == list(loaded_fold.patch_size)
    assert meta["configuration"] == "3d_fullres" and meta["fold"] == "0"
    assert json.loads(meta["plans"])["plans_name"] == loaded_fold.plans["plans_name"]
    assert "nnunetv2" in json.loads(meta["versions"])
    assert cli_main(["inspect", str(out / "model.onnx")]) == 0
    printed = capsys.readouterr().out
    assert "source_sha256" in printed and loaded_fold.checkpoint_sha256 in printed


def test_torchscript_export(exported):
    _, _, record = exported
    assert record["weights"]["ok"]
    assert all(c["max_abs_err"] < 1e-4 for c in record["shape_checks"])


def test_non_multiple_shape_is_refused():
    with pytest.raises(NNBridgeError, match=r"multiple of .*\(8, 8, 8\)"):
        check_spatial_shape((20, 32, 32), (8, 8, 8))
    check_spatial_shape((24, 32, 32), (8, 8, 8))
