"""Patches, simplification, INT8 quantization and the parity gates, on a real tiny model."""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nnbridge.models.nnunet import nnunet_source
from nnbridge.runtime.ort import run_onnx
from nnbridge.runtime.torchrun import run_torch
from nnbridge.validate.metrics import Tolerance, apply_gate, certain_failures, compare_logits, dice_per_class
from nnbridge.validate.parity import validate_fold
from nnbridge.validate.reference import reference_logits, validate_source
from nnbridge.quantize import quantize_variant
from nnbridge.export.simplify import simplify_onnx


def test_patch_sets_come_from_disjoint_cases(patch_sets, loaded_fold):
    summary, calibration, heldout = patch_sets
    assert calibration.shape == (6, 1, *loaded_fold.patch_size)
    assert heldout.shape == (4, 1, *loaded_fold.patch_size)
    assert not set(summary["calibration"]["cases"]) & set(summary["heldout"]["cases"])
    assert calibration.std() > 0.1  # real, normalized image data, not zeros


def test_simplified_model_is_kept_only_when_equal(exported, patch_sets, tmp_path):
    out, _, _ = exported
    _, _, heldout = patch_sets
    record = simplify_onnx(out / "model.onnx", tmp_path / "sim.onnx", heldout[:2])
    assert record["kept_simplified"], record
    assert record["check_max_abs_err"] <= 1e-4
    # an impossible tolerance: the simplified graph is refused, an exact copy is kept instead
    strict = simplify_onnx(out / "model.onnx", tmp_path / "sim2.onnx", heldout[:2], atol=-1.0)
    assert not strict["kept_simplified"]
    assert (tmp_path / "sim2.onnx").read_bytes() == (out / "model.onnx").read_bytes()
    assert [a["tool"].split()[0] for a in strict["attempts"]] == ["onnxsim", "onnxslim"]
    assert "onnxsim" in strict["error"] and "onnxslim" in strict["error"]


def test_simplifier_falls_back_to_onnxslim(exported, patch_sets, tmp_path):
    out, _, _ = exported
    _, _, heldout = patch_sets
    record = simplify_onnx(out / "model.onnx", tmp_path / "sim.onnx", heldout[:2],
                           tools=("nosuchtool", "onnxslim"))
    assert "unknown simplifier 'nosuchtool'" in record["attempts"][0]["error"]
    assert record["kept_simplified"] and record["tool"].startswith("onnxslim"), record
    assert record["check_max_abs_err"] <= 1e-4


def test_static_int8_is_qdq_and_close(exported, patch_sets, loaded_fold, tmp_path):
    out, _, _ = exported
    _, calibration, heldout = patch_sets
    record = quantize_variant(out / "model.onnx", tmp_path / "int8.onnx", calibration,
                              {"method": "static", "format": "QDQ", "per_channel": True,
                               "calibrate_method": "MinMax"})
    assert record["ops"].get("QuantizeLinear", 0) > 0 and record["ops"].get("DequantizeLinear", 0) > 0
    assert record["n_calibration_patches"] == len(calibration)
    assert record["size_bytes"] < (out / "model.onnx").stat().st_size
    ref = run_torch(loaded_fold.network, heldout)
    got = run_onnx(tmp_path / "int8.onnx", heldout)
    metrics = compare_logits(ref, got, loaded_fold.label_names)
    assert metrics["max_abs_err"] > 0  # it is really quantized
    assert metrics["voxel_agreement"] > 0.5


def test_dice_per_class():
    ref = np.array([[0, 1, 1, 2]])
    test = np.array([[0, 1, 2, 2]])
    scores = dice_per_class(ref, test, [1, 2])
    assert scores[1] == pytest.approx(2 * 1 / 3)
    assert scores[2] == pytest.approx(2 * 1 / 3)
    assert dice_per_class(ref, test, [3]) == {3: 1.0}  # absent in both


def test_gate_fails_on_each_bound():
    metrics = {"max_abs_err": 0.5, "mean_abs_err": 0.01, "max_rel_err": 0.05,
               "dice": {"sphere": 0.95, "box": 1.0}}
    assert apply_gate(metrics, Tolerance(max_abs_err=1.0, min_dice=0.9, max_rel_err=0.1)) == []
    failures = apply_gate(metrics, Tolerance(max_abs_err=0.1, mean_abs_err=0.001, min_dice=0.99,
                                             max_rel_err=0.01))
    assert len(failures) == 4 and any("sphere" in f for f in failures)
    assert any("max relative error 0.05 > 0.01" == f for f in failures)


def test_relative_error_is_scaled_by_the_reference_logits():
    ref = np.zeros((1, 3, 2, 2, 2), np.float32)
    ref[0, 1] = 20.0
    test = ref.copy()
    test[0, 1, 0, 0, 0] += 0.002
    metrics = compare_logits(ref, test, {0: "bg", 1: "a", 2: "b"})
    assert metrics["max_abs_err"] == pytest.approx(0.002, rel=1e-3)
    assert metrics["max_rel_err"] == pytest.approx(1e-4, rel=1e-3)


def _corrupted_copy(src, dst, scale=-1.0):
    """A variant whose biggest conv is sign-flipped: it must fail its gate."""
    model = onnx.load(str(src))
    victim = max(model.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    victim.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(victim) * scale, victim.name))
    onnx.save(model, str(dst))
    return dst


def test_validate_fold_passes_exact_and_fails_broken_variant(tiny_model, exported, patch_sets, tmp_path):
    out, _, _ = exported
    _, _, heldout = patch_sets
    broken = _corrupted_copy(out / "model.onnx", tmp_path / "broken.onnx")
    variants = {
        "onnx_fp32": {"kind": "onnx", "path": str(out / "model.onnx")},
        "torchscript": {"kind": "torchscript", "path": str(out / "model.ts")},
        "broken": {"kind": "onnx", "path": str(broken)},
        "unreadable": {"kind": "onnx", "path": str(tmp_path / "missing.onnx")},
        "onnx_fp32@openvino": {"kind": "onnx", "path": str(out / "model.onnx"), "backend": "openvino"},
        "broken@openvino": {"kind": "onnx", "path": str(broken), "backend": "openvino"},
    }
    tol = {"max_abs_err": 1e-3, "min_dice": 0.999}
    record = validate_source(nnunet_source(tiny_model.model_folder, "0", tiny_model.checkpoint), heldout,
                           variants, {name: tol for name in variants})
    results = record["variants"]
    assert results["onnx_fp32"]["passed"], results["onnx_fp32"]
    assert results["torchscript"]["passed"], results["torchscript"]
    assert not results["broken"]["passed"]
    assert any("max abs error" in f for f in results["broken"]["failures"])
    assert results["onnx_fp32@openvino"]["passed"], results["onnx_fp32@openvino"]
    assert results["onnx_fp32@openvino"]["backend"] == "openvino"
    assert not results["broken@openvino"]["passed"]
    assert not results["unreadable"]["passed"]
    assert "could not run" in results["unreadable"]["failures"][0]
    assert record["all_passed"] is False
    # as many patches as the gate needs: an exact variant far inside its bounds is decided on the
    # first two, so is one whose error there already exceeds its bound (the max only grows)
    assert len(heldout) > 2
    assert results["onnx_fp32"]["n_patches"] == 2 and results["onnx_fp32"]["decided_early"]
    assert results["broken"]["n_patches"] == 2 and "fails whatever" in results["broken"]["decided_early"]


def test_validate_reuses_unchanged_variants_only(tiny_model, exported, patch_sets, tmp_path):
    """The reference is computed once; with a cache, a rerun reuses each variant whose file, gate,
    reference and CPU are unchanged, and runs again the one whose file changed."""
    out, _, _ = exported
    _, _, heldout = patch_sets
    source = nnunet_source(tiny_model.model_folder, "0", tiny_model.checkpoint)
    reference = reference_logits(source, heldout, tmp_path / "reference.npy")
    shutil.copy(out / "model.onnx", tmp_path / "variant.onnx")
    variants = {"onnx_fp32": {"kind": "onnx", "path": str(out / "model.onnx")},
                "variant": {"kind": "onnx", "path": str(tmp_path / "variant.onnx")}}
    gates = {"onnx_fp32": {"max_abs_err": 1e-3}, "variant": {"max_abs_err": 1e-3}}
    first = validate_fold(reference, heldout, variants, gates, cache_dir=tmp_path / "cache", cache_salt="v1")
    assert first["all_passed"] and not any(r.get("from_cache") for r in first["variants"].values())
    _corrupted_copy(out / "model.onnx", tmp_path / "variant.onnx")  # this variant changes
    second = validate_fold(reference, heldout, variants, gates, cache_dir=tmp_path / "cache", cache_salt="v1")
    assert second["variants"]["onnx_fp32"]["from_cache"] and not second["variants"]["variant"].get("from_cache")
    assert not second["variants"]["variant"]["passed"]
    # another code version (or gate, or CPU kind) runs everything again
    third = validate_fold(reference, heldout, variants, {**gates, "onnx_fp32": {"max_abs_err": 1e-2}},
                          cache_dir=tmp_path / "cache", cache_salt="v1")
    assert not third["variants"]["onnx_fp32"].get("from_cache")
    np.save(tmp_path / "reference.npy", np.zeros(1))  # a reference changed behind its record's back
    with pytest.raises(ValueError, match="differs from the reference record"):
        validate_fold(reference, heldout, variants, gates)


def test_a_gate_fails_early_only_when_no_remaining_patch_can_save_it():
    """Four patches of 64 voxels, class 1 on half of each; the variant's first two patches lose 8
    voxels of class 1 (logit +1 -> -1). Worked by hand: Dice on those two 2*56/(64+56) = 0.933; if
    the other two agreed exactly, at most 2*(56+64)/(64+56+128) = 0.9677; the mean abs error is at
    least 8*2 / 512 = 0.03125 over all four; the max abs error is 2 already."""
    ref = np.zeros((4, 2, 4, 4, 4), np.float32)
    ref[:, 1] = -1.0
    ref[:, 1, :2] = 1.0  # class 1 on half of every patch
    first = ref[:2].copy()
    first[0, 1, 0, 0, :] = -1.0
    first[0, 1, 0, 1, :] = -1.0  # 8 voxels of class 1 lost
    labels = {0: "background", 1: "organ"}

    def failures(**gate):
        return certain_failures(ref, first, labels, Tolerance.from_config(gate))

    assert failures(min_dice=0.97) == ["Dice of organ at most 0.9677 < 0.97"]
    assert failures(min_dice=0.96) == []  # 0.933 so far, but the other patches could lift it to 0.9677
    assert failures(mean_abs_err=0.03) == ["mean abs error at least 0.0312 > 0.03"]
    assert failures(mean_abs_err=0.04) == []
    assert failures(max_abs_err=1.5) == ["max abs error 2 > 1.5"] and failures(max_abs_err=2.5) == []
    assert failures(max_rel_err=1.9) == ["max relative error 2 > 1.9"]
    first[1, 0, 0, 0, 0] = np.nan
    assert failures(min_dice=0.0)[0].startswith("non-finite logits")
