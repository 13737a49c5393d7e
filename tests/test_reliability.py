"""Bad inputs and interruptions, tried as a hostile new user would (issue 18): nothing wrong passes,
nothing half-written counts, one failure hides nothing.

Each case plants one bad input and asserts the one-line message (naming the file or key and the
fix), the exit code or exception, and that no artifact a later run would accept was left. Most are
library calls or ``snakemake -n``; one real snakemake run (two tiny plain U-Nets, one with a
corrupt checkpoint, and an nnU-Net folder without plans.json) shows the report written anyway.
RGB 2D datasets (NaturalImage2DIO) run through a real, briefly trained nnU-Net model.

:data:`BAD_INPUTS` lists every bad input tried here and in tests/test_reliability_matrix.py (the
config, model entries, plain models and the command line); README "When things go wrong" counts it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import yaml

from nnbridge.core.errors import NNBridgeError
from conftest import predict_without
from test_reliability_matrix import MATRIX

ROOT = Path(__file__).resolve().parents[1]
SNAKEMAKE = str(Path(sys.executable).parent / "snakemake")

#: every bad input this file plants (README "When things go wrong" counts them): each gives a
#: one-line error naming the file or key, or (gates) a FAILED verdict with the reason; none is silent.
#: (RGB 2D cases, which nnbridge refused although nnU-Net takes them, are not bad inputs: they are
#: predicted now, test_rgb_2d_...)
ISSUE_CASES = {
    # silent failures of the issue, closed
    "NaN logits (one voxel) against a min_dice-only gate": "gate FAILED: non-finite max_abs_err",
    "all-NaN logits": "gate FAILED: non-finite",
    "NaN logits on whole cases": "case FAILED: non_finite",
    "NaN voxel in a plain model's held-out patches (validate_source)": "every variant FAILED",
    "one NaN voxel in user patches": "<file>: 1 NaN/Inf value(s) in 1 of 2 patches",
    "all-NaN user patches": "NaN/Inf value(s) in 2 of 2 patches",
    "Inf in user patches": "NaN/Inf value(s)",
    "complex-valued patches": "complex-valued patches",
    "string patches": "patches of dtype",
    "zero patches": "holds 0 patches",
    "patches not a multiple of the network's stride": "the network takes multiples of",
    "patches of another size for a model without dynamic axes": "takes [16, 16, 16]",
    "nnbridge predict on a .nii.gz cut in half": "<file>: truncated or corrupt",
    "a .nii cut short (no gzip)": "holds N of the M bytes its header announces",
    "a .nii.gz with a corrupt byte in its middle": "truncated or corrupt",
    "an RGB .png cut in half": "NaturalImage2DIO cannot read it",
    "NaN and Inf voxels in a case": "<file>: 2 NaN/Inf voxel(s)",
    "NaN voxels in an .mha": "NaN/Inf voxel(s)",
    "--continue_prediction with a 0-byte case.npz and no .pkl": "case predicted again",
    "--continue_prediction with a 100-byte case.nii.gz": "case predicted again",
    "a write that fails halfway": "no output file, no temporary file",
    "a bundle file edited in place": "the pipeline's artifact unchanged",
    "export/model.onnx changed after export": "<file>: sha256 … differs from … that export.json states",
    "simplify/model.onnx changed before quantize": "… that simplify.json states",
    "a variant changed before validate / benchmark": "… that its record states",
    "a pipeline artifact changed before the bundle copies it": "… that its record states",
    "patches changed after the patches stage": "<file>: sha256 differs from the one patches.json states",
    "tolerance for a variant that does not exist (fp61)": "config validate.tolerances.fp61",
    "whole-case gate for a variant not compared": "config case_parity.tolerances",
    "benchmark.tune names no ONNX Runtime variant": "config benchmark.tune",
    "benchmark.sweep names no variant": "config benchmark.sweep",
    # tracebacks of the issue, now one line
    "plans.json that is not JSON": "<file>: not valid JSON (line 1, column …)",
    "empty plans.json": "not valid JSON (it is empty)",
    "splits_final.json that is not JSON": "<file>: not valid JSON",
    "splits_final.json that is JSON but not splits": "not nnU-Net's splits",
    "results: pointing at a file": "config results: … is a file",
    "nnbridge inspect on a text file": "not an ONNX model, or truncated",
    "nnbridge inspect on a truncated ONNX": "not an ONNX model, or truncated",
    "nnbridge inspect on a missing path": "no such file",
    "nnbridge inspect on a folder": "is a folder",
    "nnbridge inspect on a 0-byte file": "empty file (0 bytes)",
    "nnbridge predict -o <a file>": "exists and is not a folder",
    "nnbridge predict -o <a read-only filesystem>": "cannot write there (Read-only file system)",
    "1000 mm spacing": "… voxels … TiB …, more than this machine's … of memory",
    "1e-6 mm spacing": "an empty image",
    "YAML syntax error in config/config.yaml": "YAML syntax error at line 4",
    # missing inputs: left out with --keep-going, refused without
    "an nnU-Net model folder without plans.json": "plans.json: missing",
    "an explicit folds: list with a fold that has no checkpoint": "fold_3/checkpoint_final.pth: missing",
    "a fold beyond the splits in splits_final.json": "has 5 folds, fold 7 is configured",
    "a plain model whose checkpoint is missing": "checkpoint missing",
    "raw: without dataset.json": "dataset.json missing, which whole-case parity reads",
    "a corrupt checkpoint during a real run (report still written)": "FAILED row: cause and log",
    "missing inputs without --keep-going (real run refused before any job)": "with missing inputs; fix them",
    # the channels of a case, found as nnU-Net finds them (an RGB .png holds 3 in one file: now predicted)
    "a case with a channel file too many": "has 2 files",
    "a case with a gap in its channel numbers": "lacks channel(s)",
}
#: ... and the rest of the matrix (the config, model entries, plain models, the command line), one
#: table row and one test each: tests/test_reliability_matrix.py
BAD_INPUTS = {**ISSUE_CASES, **MATRIX}


def one_line(message: str) -> str:
    assert "\n" not in message.strip() and "Traceback" not in message, message
    return message


# ------------------------------------------------------------------------------------ a plain U-Net


@pytest.fixture(scope="module")
def plain(tmp_path_factory):
    """A tiny plain PyTorch U-Net (random weights: parity needs no training), exported like the
    pipeline's export stage does: export/model.onnx with its record export/export.json."""
    import torch

    from nnbridge.core.runlog import write_json
    from nnbridge.demo.nets import UNet
    from nnbridge.export.onnx_export import export_onnx
    from nnbridge.models.loader import load_model

    root = tmp_path_factory.mktemp("plain")
    torch.manual_seed(0)
    torch.save(UNet(1, 2, [4, 8]).state_dict(), root / "net.pth")
    source = {"kind": "pytorch", "name": "tiny", "fold": "all", "checkpoint": str(root / "net.pth"),
              "class": "nnbridge.demo.nets.UNet", "init_kwargs": {"in_channels": 1, "num_classes": 2, "features": [4, 8]},
              "input_channels": 1, "example_size": [16, 16, 16], "spatial_multiple": 2,
              "labels": {"background": 0, "fg": 1}}
    write_json(root / "export" / "export.json", export_onnx(load_model(source), root / "export" / "model.onnx"))
    return root, source


def _patches(n: int = 2, size: int = 16, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).standard_normal((n, 1, size, size, size)).astype(np.float32)


# ---------------------------------------------------------------------------- 1: NaN fails every gate


def test_non_finite_metrics_fail_every_gate():
    from nnbridge.validate.caseparity import compare_case
    from nnbridge.validate.metrics import Tolerance, validate_variant

    ref = np.random.default_rng(0).standard_normal((2, 3, 8, 8, 8)).astype(np.float32)
    one = ref.copy()
    one[0, 1, 2, 2, 2] = np.nan  # one voxel: Dice is unchanged, the errors are NaN
    for test in (one, np.full_like(ref, np.nan)):
        for tol in (Tolerance(min_dice=0.99), Tolerance(max_abs_err=1e-4), Tolerance()):
            result = validate_variant(ref, test, {0: "bg", 1: "a", 2: "b"}, tol)
            assert not result["passed"], (tol, result)
            assert result["failures"][0].startswith("non-finite max_abs_err = nan"), result["failures"]
    seg = np.zeros((8, 8, 8), np.uint8)
    ours = {"preprocessed": np.zeros((1, 8, 8, 8), np.float32), "logits": one[0], "segmentation": seg,
            "probabilities": None}
    ref_case = {**ours, "logits": ref[0]}
    rec = compare_case(ref_case, ours, None, [1, 2], {"min_voxel_agreement": 0.9, "min_dice": 0.9})
    assert not rec["passed"] and rec["non_finite"] == ["logits_max_abs_diff = nan"]
    assert rec["diverges_at"] == "aggregated logits"


def test_nan_in_held_out_patches_fails_every_variant(plain):
    """The issue's case: one NaN voxel in a plain model's held-out patches gave every variant
    "passed": true with max_abs_err NaN."""
    from nnbridge.validate.reference import validate_source

    root, source = plain
    patches = _patches()
    patches[1, 0, 3, 4, 5] = np.nan
    variants = {"onnx_fp32": {"kind": "onnx", "path": str(root / "export/model.onnx"),
                              "record": str(root / "export/export.json")},
                "onnx_fp32@openvino": {"kind": "onnx", "path": str(root / "export/model.onnx"),
                                       "backend": "openvino"}}
    record = validate_source(source, patches, variants, {n: {"min_dice": 0.99} for n in variants}, threads=1)
    assert not record["all_passed"]
    for name, result in record["variants"].items():
        assert not result["passed"] and "non-finite" in result["failures"][0], (name, result)


@pytest.mark.parametrize(("plant", "message"), [
    (lambda p: p.__setitem__((1, 0, 3, 4, 5), np.nan), r"held\.npy: 1 NaN/Inf value\(s\) in 1 of 2 patches; the parity"),
    (lambda p: p.fill(np.nan), r"held\.npy: 8192 NaN/Inf value\(s\) in 2 of 2 patches"),
    (lambda p: p.__setitem__((0, 0, 0, 0, 0), np.inf), r"held\.npy: 1 NaN/Inf value\(s\) in 1 of 2 patches"),
])
def test_patches_stage_refuses_non_finite_patches(tmp_path, plant, message):
    from nnbridge.patches.sampling import copy_patch_sets

    held = _patches()
    plant(held)
    np.save(tmp_path / "cal.npy", _patches())
    np.save(tmp_path / "held.npy", held)
    out = tmp_path / "out"
    with pytest.raises(NNBridgeError, match=message) as info:
        copy_patch_sets(tmp_path / "cal.npy", tmp_path / "held.npy", out / "cal.npz", out / "held.npz",
                        channels=1, spatial=(16, 16, 16), n_calibration=2, n_heldout=2, multiple=2)
    one_line(str(info.value))
    assert not out.exists()  # nothing written: no patch file a later stage could take


@pytest.mark.parametrize(("array", "kwargs", "message"), [
    (_patches().astype(np.complex64), {}, r"held\.npy: complex-valued patches \(complex64\); give real-valued"),
    (np.full((2, 1, 16, 16, 16), "x"), {}, r"held\.npy: patches of dtype <U1; give a numeric"),
    (np.zeros((0, 1, 16, 16, 16), np.float32), {}, r"held\.npy: holds 0 patches; give at least one"),
    (_patches(size=15), {}, r"held\.npy: patches of spatial size \[15, 15, 15\]; the network takes multiples of \[2, 2, 2\]"),
    (_patches(size=18), {"dynamic_spatial": False}, r"held\.npy: .*no dynamic spatial axes and takes \[16, 16, 16\]"),
])
def test_patches_stage_refuses_unusable_patches(tmp_path, array, kwargs, message):
    from nnbridge.patches.sampling import copy_patch_sets

    np.save(tmp_path / "cal.npy", _patches())
    np.save(tmp_path / "held.npy", array)
    out = tmp_path / "out"
    with pytest.raises(NNBridgeError, match=message) as info:
        copy_patch_sets(tmp_path / "cal.npy", tmp_path / "held.npy", out / "cal.npz", out / "held.npz",
                        channels=1, spatial=(16, 16, 16), n_calibration=2, n_heldout=2, multiple=2, **kwargs)
    one_line(str(info.value))
    assert not out.exists()


# ------------------------------------------------- 5: each stage checks the sha256 its upstream states


def test_every_stage_checks_its_upstream_sha256(plain, tmp_path):
    """export → simplify → quantize → validate/benchmark → bundle: a file changed after its stage
    wrote it is refused in one line naming the file and the record, before anything is written."""
    from nnbridge.bench.artifact import benchmark_artifact
    from nnbridge.bench.fold import benchmark_fold
    from nnbridge.bundle.build import write_bundle
    from nnbridge.core.runlog import write_json
    from nnbridge.export.simplify import simplify_onnx
    from nnbridge.patches.sampling import copy_patch_sets, load_patches
    from nnbridge.quantize import quantize_variant
    from nnbridge.validate.reference import validate_source

    root, source = plain
    work = tmp_path / "fold"
    shutil.copytree(root / "export", work / "export")
    np.save(tmp_path / "cal.npy", _patches())
    np.save(tmp_path / "held.npy", _patches(seed=1))
    write_json(work / "patches/patches.json", copy_patch_sets(
        tmp_path / "cal.npy", tmp_path / "held.npy", work / "patches/calibration.npz", work / "patches/heldout.npz",
        channels=1, spatial=(16, 16, 16), n_calibration=2, n_heldout=2, multiple=2))
    held = load_patches(work / "patches/heldout.npz", record=work / "patches/patches.json")
    write_json(work / "simplify/simplify.json", simplify_onnx(
        work / "export/model.onnx", work / "simplify/model.onnx", held, src_record=work / "export/export.json"))
    write_json(work / "quantize/fp16.json", quantize_variant(
        work / "simplify/model.onnx", work / "quantize/fp16.onnx", held, {"method": "fp16"},
        src_record=work / "simplify/simplify.json"))

    def tamper(path: Path) -> bytes:
        original = path.read_bytes()
        with open(path, "ab") as handle:
            handle.write(b"\0")
        return original

    # simplify reads an export that changed after export.json was written
    original = tamper(work / "export/model.onnx")
    with pytest.raises(NNBridgeError, match=r"export/model\.onnx: sha256 \w+… differs from \w+… that .*export/export\.json "
                                            r"states; the file changed after it was written: delete both files and rerun"):
        simplify_onnx(work / "export/model.onnx", tmp_path / "again.onnx", held, src_record=work / "export/export.json")
    assert not (tmp_path / "again.onnx").exists()
    (work / "export/model.onnx").write_bytes(original)
    # quantize reads a simplified graph that changed
    original = tamper(work / "simplify/model.onnx")
    with pytest.raises(NNBridgeError, match=r"simplify/model\.onnx: sha256 .* that .*simplify/simplify\.json states"):
        quantize_variant(work / "simplify/model.onnx", tmp_path / "q.onnx", held, {"method": "fp16"},
                         src_record=work / "simplify/simplify.json")
    assert not (tmp_path / "q.onnx").exists()
    # validate and benchmark check every variant before running any
    variants = {"onnx_simplified": {"kind": "onnx", "path": str(work / "simplify/model.onnx"),
                                    "record": str(work / "simplify/simplify.json")}}
    for run in (lambda: validate_source(source, held, variants, {}),
                lambda: benchmark_artifact("onnx_simplified", source, variants, work / "export/model.onnx",
                                           threads=1, warmup=0, repeats=1),
                lambda: benchmark_fold(source, variants, {}, threads=1, warmup=0, repeats=1)):
        with pytest.raises(NNBridgeError, match=r"simplify/model\.onnx: sha256 .*/simplify\.json states") as info:
            run()
        one_line(str(info.value))
    # the bundle copies only what its record states
    with pytest.raises(NNBridgeError, match=r"simplify/model\.onnx: sha256 .*/simplify\.json states"):
        write_bundle(tmp_path / "bundle", plans_file=work / "export/export.json", dataset_file=work / "export/export.json",
                     info={}, variants={"onnx_simplified": {"files": {"0": work / "simplify/model.onnx"},
                                                            "records": {"0": work / "simplify/simplify.json"},
                                                            "gates": {"0": {"onnxruntime": True}}}},
                     default_variant="onnx_simplified")
    assert not (tmp_path / "bundle/bundle.json").exists()
    (work / "simplify/model.onnx").write_bytes(original)
    # patches changed after the patches stage
    tamper(work / "patches/heldout.npz")
    with pytest.raises(NNBridgeError, match=r"heldout\.npz: sha256 differs from the one .*patches\.json states"):
        load_patches(work / "patches/heldout.npz", record=work / "patches/patches.json")


def test_bundle_is_a_copy(plain, tmp_path):
    """Editing a bundle file must not edit the pipeline's artifact (they were hard links)."""
    from nnbridge.bundle.build import write_bundle
    from nnbridge.core.artifacts import verify_recorded
    from nnbridge.core.runlog import sha256_file

    root, _ = plain
    artifact, record = root / "export/model.onnx", root / "export/export.json"
    write_bundle(tmp_path / "bundle", plans_file=record, dataset_file=record, info={},
                 variants={"onnx_fp32": {"files": {"0": artifact}, "records": {"0": record},
                                         "gates": {"0": {"onnxruntime": True}}}}, default_variant="onnx_fp32")
    shipped = tmp_path / "bundle/onnx_fp32/fold_0.onnx"
    assert os.stat(shipped).st_ino != os.stat(artifact).st_ino and os.stat(shipped).st_nlink == 1
    with open(shipped, "ab") as handle:
        handle.write(b"edited")
    verify_recorded(artifact, record)  # the pipeline's file is what export.json states
    assert sha256_file(shipped) != sha256_file(artifact)
    assert not list((tmp_path / "bundle").rglob("*.partial"))


# -------------------------------------------------- 2, 3, 4 and tracebacks: nnbridge predict and inspect


def predict(bundle: Path, inp: Path, out: Path, *extra: str) -> tuple[int, str]:
    """`nnbridge predict` in-process (the CLI's own entry point): (exit code, stderr)."""
    import contextlib
    import io

    from nnbridge.cli import main

    err = io.StringIO()
    with contextlib.redirect_stderr(err):
        rc = main(["predict", "-i", str(inp), "-o", str(out), "-m", str(bundle), "--threads", "1",
                   "--disable_tta", *extra])
    return rc, err.getvalue()


def _case(src: Path, folder: Path, edit=None, name: str = "case_0000.nii.gz", spacing=None) -> Path:
    import SimpleITK as sitk

    folder.mkdir(parents=True, exist_ok=True)
    image = sitk.ReadImage(str(src))
    if edit is not None:
        array = sitk.GetArrayFromImage(image).astype(np.float32)
        edit(array)
        edited = sitk.GetImageFromArray(array)
        edited.CopyInformation(image)
        image = edited
    if spacing is not None:
        image.SetSpacing(spacing)
    sitk.WriteImage(image, str(folder / name))
    return folder / name


def _cut(path: Path, keep: float = 0.5) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: int(len(data) * keep)])


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    path.write_bytes(bytes(data))


@pytest.mark.parametrize(("plant", "message"), [
    (_cut, r"case_0000\.nii\.gz: truncated or corrupt \(Compressed file ended before the end-of-stream marker was "
           r"reached\); copy the file again"),
    (_flip_byte, r"case_0000\.nii\.gz: truncated or corrupt \(.*\); copy the file again"),
])
def test_predict_refuses_truncated_or_corrupt_images(nifti_bundle, tmp_path, plant, message):
    """SimpleITK reads a .nii.gz cut in half without an error (the missing half as zeros)."""
    import SimpleITK as sitk

    bundle, source = nifti_bundle
    path = _case(source, tmp_path / "in")
    plant(path)
    if plant is _cut:
        sitk.ReadImage(str(path))  # what made it silent: SimpleITK accepts the file
    rc, err = predict(bundle, tmp_path / "in", tmp_path / "out")
    assert rc == 2, err
    line = one_line(err.strip().splitlines()[-1])
    assert line.startswith("nnbridge: error: ") and __import__("re").search(message, line), line
    assert not list((tmp_path / "out").glob("case*"))


def test_truncated_uncompressed_nifti_and_mha_nan(tmp_path):
    import SimpleITK as sitk

    from nnbridge.predict.io import SimpleITKIO, check_complete, check_finite

    array = np.random.default_rng(0).standard_normal((20, 20, 20)).astype(np.float32)
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "x.nii"))
    _cut(tmp_path / "x.nii", 0.6)
    with pytest.raises(NNBridgeError, match=r"x\.nii: truncated: holds \d+ of the 32352 bytes its header announces"):
        check_complete(tmp_path / "x.nii")
    array[3, 4, 5] = np.nan
    sitk.WriteImage(sitk.GetImageFromArray(array), str(tmp_path / "x.mha"))
    data, _ = SimpleITKIO().read_images([str(tmp_path / "x.mha")])
    with pytest.raises(NNBridgeError, match=r"x\.mha: 1 NaN/Inf voxel\(s\) of 8000; nnU-Net cannot segment"):
        check_finite(data, [tmp_path / "x.mha"])


def test_predict_refuses_non_finite_voxels(nifti_bundle, tmp_path):
    """In .mha (which keeps them; SimpleITK reads NaN/Inf in NIfTI as 0, for nnU-Net too) nnU-Net's
    preprocessing would z-score NaN into NaN logits and an all-background segmentation; its dataset
    check refuses NaN: refuse, naming the file and the count."""
    import SimpleITK as sitk

    from nnbridge.bundle.build import write_bundle
    from nnbridge.predict.bundle import Bundle

    bundle, source = nifti_bundle
    shipped = Bundle.load(bundle)
    (tmp_path / "dataset.json").write_text(json.dumps({**shipped.dataset_json, "file_ending": ".mha"}))
    write_bundle(tmp_path / "mha_bundle", plans_file=bundle / "plans.json", dataset_file=tmp_path / "dataset.json",
                 info={"configuration": "3d_fullres", "mirror_axes": shipped.manifest["mirror_axes"]},
                 variants={"onnx_fp32": {"files": {"0": bundle / "onnx_fp32/fold_0.onnx"},
                                         "gates": {"0": {"onnxruntime": True}}}}, default_variant="onnx_fp32")

    def plant(a):
        a[1, 2, 3], a[4, 5, 6] = np.nan, np.inf

    path = _case(source, tmp_path / "in", plant, name="case_0000.mha")
    assert np.count_nonzero(~np.isfinite(sitk.GetArrayFromImage(sitk.ReadImage(str(path))))) == 2
    rc, err = predict(tmp_path / "mha_bundle", tmp_path / "in", tmp_path / "out")
    assert rc == 2
    assert one_line(err.strip().splitlines()[-1]) == (
        "nnbridge: error: case_0000.mha: 2 NaN/Inf voxel(s) of 64000; nnU-Net cannot segment non-finite "
        "intensities (its dataset check refuses them): replace them with a value that makes sense for the image")
    assert not list((tmp_path / "out").glob("case*"))


def test_outputs_are_atomic_and_continue_counts_complete_cases_only(nifti_bundle, tmp_path):
    """After a kill, a 0-byte case.npz (no .pkl) and a 100-byte case.nii.gz were skipped as done."""
    import pickle

    from nnbridge.predict.predictor import PARTIAL, _atomic

    bundle, source = nifti_bundle
    _case(source, tmp_path / "in")
    out = tmp_path / "out"
    out.mkdir()
    (out / "case.npz").write_bytes(b"")
    (out / "case.nii.gz").write_bytes((tmp_path / "in/case_0000.nii.gz").read_bytes()[:100])
    (out / f"case{PARTIAL}.nii.gz").write_bytes(b"left by a killed run")
    rc, err = predict(bundle, tmp_path / "in", out, "--continue_prediction", "--save_probabilities")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["case.nii.gz", "case.npz", "case.pkl"]
    assert np.load(out / "case.npz")["probabilities"].shape[0] == 3
    assert pickle.loads((out / "case.pkl").read_bytes())["spacing"]
    done = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
    rc, err = predict(bundle, tmp_path / "in", out, "--continue_prediction", "--save_probabilities")
    assert rc == 0 and {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == done  # complete: skipped
    # a write that fails halfway leaves neither the file nor its temporary
    with pytest.raises(RuntimeError), _atomic(tmp_path / "x.nii.gz") as tmp:
        tmp.write_bytes(b"half")
        raise RuntimeError("disk full")
    assert not list(tmp_path.glob("x*"))


def test_parts_split_the_cases_like_nnunet_and_leave_the_other_parts_files_alone(nifti_bundle, tmp_path):
    """-num_parts/-part_id as nnUNetv2_predict: part k predicts cases k, k+n, … of the sorted list,
    into the one output folder the other parts write to at the same time: a part removes only its
    own cases' leftovers of a killed run, never a file another part is writing."""
    import SimpleITK as sitk

    from nnbridge.predict.predictor import PARTIAL

    bundle, source = nifti_bundle
    for i, case in enumerate(("c", "a", "d", "b")):  # sorted: a b c d -> part 0: a c, part 1: b d
        _case(source, tmp_path / "in", lambda x, i=i: x.__setitem__(slice(None), np.roll(x, 5 * i, axis=2)),
              name=f"{case}_0000.nii.gz")
    rc, err = predict(bundle, tmp_path / "in", tmp_path / "all")
    assert rc == 0, err
    out = tmp_path / "parts"
    out.mkdir()
    (out / f"a{PARTIAL}.nii.gz").write_bytes(b"part 0 writing a")
    (out / f"b{PARTIAL}.nii.gz").write_bytes(b"left by a killed part 1")
    rc, err = predict(bundle, tmp_path / "in", out, "-num_parts", "2", "-part_id", "1")
    assert rc == 0, err
    assert "part 1 of 2 (ids 0 … 1): 2 of the 4 case(s)" in err
    assert sorted(p.name for p in out.iterdir()) == ["a.nnbridge-partial.nii.gz", "b.nii.gz", "d.nii.gz"]
    rc, err = predict(bundle, tmp_path / "in", out, "--num-parts", "2", "--part-id", "0")
    assert rc == 0, err
    assert sorted(p.name for p in out.iterdir()) == ["a.nii.gz", "b.nii.gz", "c.nii.gz", "d.nii.gz"]
    segs = {case: [sitk.GetArrayFromImage(sitk.ReadImage(str(folder / f"{case}.nii.gz"))) for folder in (out, tmp_path / "all")]
            for case in "abcd"}
    assert all(np.array_equal(*pair) for pair in segs.values())  # as one call over every case gave them
    assert not np.array_equal(segs["a"][0], segs["b"][0])  # (the cases differ: a mix-up would show)
    for args, message in ((("-num_parts", "2", "-part_id", "2"), "-part_id 2 with -num_parts 2: part ids count "
                           "from 0, so give each of the 2 call(s) one of 0 … 1"),
                          (("-num_parts", "0"), "-num_parts 0: give the number of calls the cases are split "
                           "over (1 or more)")):
        rc, err = predict(bundle, tmp_path / "in", tmp_path / "bad", *args)
        assert rc == 2 and one_line(err.strip()) == f"nnbridge: error: {message}"
        assert not (tmp_path / "bad").exists()  # refused before anything is written


def test_predict_refuses_unusable_output_folders_before_the_first_case(nifti_bundle, tmp_path):
    bundle, source = nifti_bundle
    _case(source, tmp_path / "in")
    (tmp_path / "afile").write_text("x")
    rc, err = predict(bundle, tmp_path / "in", tmp_path / "afile")
    assert rc == 2 and one_line(err.strip()) == (
        f"nnbridge: error: {tmp_path / 'afile'}: exists and is not a folder; give -o a folder (new or existing)")
    if not shutil.which("unshare"):
        pytest.skip("no unshare: cannot mount a read-only filesystem here")
    ro = tmp_path / "ro"
    ro.mkdir()
    script = tmp_path / "predict.py"
    script.write_text("import sys\nfrom nnbridge.cli import main\n"
                      f"sys.exit(main(['predict', '-i', {str(tmp_path / 'in')!r}, '-o', {str(ro)!r}, '-m', {str(bundle)!r}]))\n")
    proc = subprocess.run(["unshare", "--mount", "--map-root-user", "sh", "-c",
                           f"mount -t tmpfs -o ro,size=1m tmpfs '{ro}' && exec '{sys.executable}' '{script}'"],
                          capture_output=True, text=True, timeout=120, env={**os.environ, "PYTHONPATH": str(ROOT / "src")})
    if "mount:" in proc.stderr or "unshare:" in proc.stderr:
        pytest.skip(f"cannot mount a read-only filesystem here: {proc.stderr.strip()}")
    assert proc.returncode == 2, proc.stderr
    assert one_line(proc.stderr.strip()) == (f"nnbridge: error: {ro}: cannot write there (Read-only file system); "
                                             "give -o a writable folder")


@pytest.mark.parametrize(("spacing", "message"), [
    ((1000.0, 1000.0, 1000.0), r"case_0000\.nii\.gz: spacing \[1000\.0, 1000\.0, 1000\.0\] mm resampled to the plans' "
                               r"\[1\.0, 1\.0, 1\.0\] mm turns \[40, 40, 40\] voxels into \[40000, 40000, 40000\] \(6\.4e\+13 "
                               r"voxels, 233 TiB as float32, about 1164 TiB to resample\), more than this machine's .* of memory; check the spacing in the image header"),
    ((1e-6, 1e-6, 1e-6), r"case_0000\.nii\.gz: spacing .* turns \[40, 40, 40\] voxels into \[0, 0, 0\]: an empty "
                         r"image; check the spacing in the image header"),
])
def test_predict_refuses_absurd_spacings_with_the_number(nifti_bundle, tmp_path, spacing, message):
    bundle, source = nifti_bundle
    _case(source, tmp_path / "in", spacing=spacing)
    rc, err = predict(bundle, tmp_path / "in", tmp_path / "out")
    assert rc == 2
    assert __import__("re").fullmatch("nnbridge: error: " + message, one_line(err.strip().splitlines()[-1])), err


@pytest.mark.parametrize(("files", "message"), [
    (["case_0000.nii.gz", "case_0001.nii.gz"], r"case 'case' has 2 files \(case_0000\.nii\.gz … case_0001\.nii\.gz\); "
                                               r"the model takes 1 channel\(s\)"),
    (["case_0001.nii.gz"], r"case 'case' lacks channel\(s\) case_0000\.nii\.gz; the model takes 1 channel\(s\)"),
])
def test_predict_checks_the_channels_nnunet_would_find(nifti_bundle, tmp_path, files, message):
    bundle, source = nifti_bundle
    for name in files:
        _case(source, tmp_path / "in", name=name)
    rc, err = predict(bundle, tmp_path / "in", tmp_path / "out")
    assert rc == 2 and __import__("re").search(message, one_line(err.strip())), err


def test_inspect_gives_one_line_for_every_bad_path(plain, tmp_path, capsys):
    from nnbridge.cli import main

    onnx_file = plain[0] / "export/model.onnx"
    (tmp_path / "notes.onnx").write_text("not a model\n" * 20)
    (tmp_path / "cut.onnx").write_bytes(onnx_file.read_bytes()[: onnx_file.stat().st_size // 2])
    (tmp_path / "empty.onnx").write_bytes(b"")
    cases = {"notes.onnx": "not an ONNX model, or truncated (DecodeError); copy or export it again",
             "cut.onnx": "not an ONNX model, or truncated",
             "missing.onnx": "no such file; give the path of an .onnx file",
             "": "is a folder; give the path of an .onnx file in it",
             "empty.onnx": "empty file (0 bytes), not an ONNX model; copy or export it again"}
    for name, message in cases.items():
        assert main(["inspect", str(tmp_path / name)]) == 2
        err = one_line(capsys.readouterr().err.strip())
        assert err.startswith(f"nnbridge: error: {tmp_path / name}") and message in err, err
    assert main(["inspect", str(onnx_file)]) == 0  # the good file still works


# ------------------------------------------------------------------ 6, 8 and tracebacks: the config


def _nnunet_folder(root: Path, folds=(0, 1), plans: str | None = '{"configurations": {"3d_fullres": {}}}',
                   splits: str | None = None, dataset: str = "Dataset940_X") -> dict:
    folder = root / dataset / "nnUNetTrainer__nnUNetPlans__3d_fullres"
    for fold in folds:
        (folder / f"fold_{fold}").mkdir(parents=True, exist_ok=True)
        (folder / f"fold_{fold}" / "checkpoint_final.pth").write_bytes(b"x")
    if plans is not None:
        (folder / "plans.json").write_text(plans)
    (folder / "dataset.json").write_text("{}")
    (root / "pre").mkdir(exist_ok=True)
    (root / "pre" / "splits_final.json").write_text(splits or json.dumps([{"train": [], "val": []}] * 5))
    return {"folder": str(folder), "preprocessed": str(root / "pre")}


def test_missing_inputs_are_found_before_the_run(tmp_path):
    """Strict: one line naming the file; with --keep-going: that model or fold is left out and
    reported (dataset, model, fold, stage, cause) while the others stay."""
    from nnbridge.pipeline.plan import INPUTS_STAGE, MissingInput, plan_models

    good = _nnunet_folder(tmp_path / "a", folds=(0, 1, 7))
    no_plans = _nnunet_folder(tmp_path / "b", plans=None, dataset="Dataset941_X")
    bad_json = _nnunet_folder(tmp_path / "c", plans='{"configurations": ', dataset="Dataset942_X")
    entries = [{**good, "folds": [0, 3, 7]}, no_plans, bad_json]
    with pytest.raises(MissingInput, match=r"config models\[0\] .*fold_3/checkpoint_final\.pth: missing, so fold 3 "
                                           r"cannot be exported; remove 3 from `folds:` or copy the fold's checkpoint"):
        plan_models(entries)
    models, failures = plan_models(entries, keep_going=True)
    assert [m.folds for m in models.values()] == [("0",)]
    causes = [(f["fold"], f["cause"]) for f in failures]
    assert all(f["stage"] == INPUTS_STAGE and f["model"] == "nnUNetTrainer__nnUNetPlans__3d_fullres" for f in failures)
    assert [f["dataset"] for f in failures] == ["Dataset940_X", "Dataset940_X", "Dataset941_X", "Dataset942_X"]
    assert causes[0][0] == "3" and "fold_3/checkpoint_final.pth: missing" in causes[0][1]
    assert causes[1][0] == "7" and "splits_final.json has 5 folds, fold 7 is configured" in causes[1][1]
    assert causes[2][0] is None and "b/Dataset941_X/nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json: missing; an " \
        "nnU-Net model folder holds it" in causes[2][1]
    assert causes[3][0] is None and "c/Dataset942_X/nnUNetTrainer__nnUNetPlans__3d_fullres/plans.json: not valid " \
        "JSON (line 1, column 20: Expecting value)" in causes[3][1]
    for cause in (c for _, c in causes):
        one_line(cause)
    # plain models and raw data: a missing checkpoint; raw without dataset.json drops whole-case parity only
    plain_entry = {"kind": "pytorch", "name": "p", "checkpoint": str(tmp_path / "none.pth"), "class": "x.Y",
                   "input_channels": 1, "example_size": [16, 16, 16],
                   "patches": {"calibration": "c.npy", "heldout": "h.npy"}}
    raw = {**_nnunet_folder(tmp_path / "d"), "raw": str(tmp_path / "raw")}
    models, failures = plan_models([plain_entry, raw], keep_going=True)
    assert "none.pth: checkpoint missing; fix `checkpoint:` of the model" in failures[0]["cause"]
    assert "raw/dataset.json missing, which whole-case parity reads" in failures[1]["cause"]
    assert list(models.values())[0].raw is None and list(models.values())[0].folds == ("0", "1")


def test_json_that_is_not_json_gets_one_line(tmp_path):
    from nnbridge.core.runlog import read_json
    from nnbridge.patches.sampling import fold_cases

    (tmp_path / "plans.json").write_text("")
    with pytest.raises(NNBridgeError, match=r"plans\.json: not valid JSON \(it is empty\); fix it"):
        read_json(tmp_path / "plans.json")
    (tmp_path / "splits_final.json").write_text('[{"train": ["a"], "val": ["b"]},]')
    with pytest.raises(NNBridgeError, match=r"splits_final\.json: not valid JSON \(line 1, column 33: Expecting value\); "
                                            r"copy it again from the training machine's nnUNet_preprocessed folder"):
        fold_cases(tmp_path, "0")
    (tmp_path / "splits_final.json").write_text('{"train": []}')
    with pytest.raises(NNBridgeError, match=r"splits_final\.json: not nnU-Net's splits"):
        fold_cases(tmp_path, "0")


@pytest.mark.parametrize(("mutate", "message"), [
    (lambda c: c["validate"]["tolerances"].update(fp61={"min_dice": 0.9}),
     r"config validate\.tolerances\.fp61: no variant 'fp61' in this config, so the tolerance would never apply"),
    (lambda c: c["case_parity"]["tolerances"].update(int8_static={"min_dice": 0.9}),
     r"config case_parity\.tolerances\.int8_static: 'int8_static' is not compared on whole cases"),
    (lambda c: c["benchmark"].update(tune=["torchscript"]),
     r"config benchmark\.tune: 'torchscript' is not an ONNX Runtime variant of this config, so nothing would be tuned"),
    (lambda c: c["benchmark"].update(sweep=["onnx_fp32@tensorrt"]),
     r"config benchmark\.sweep: 'onnx_fp32@tensorrt' is not a variant of this config, so it would never be swept"),
    (lambda c: c.update(results="README.md"), r"config results: README\.md is a file; `results:` names the folder"),
])
def test_config_that_would_be_ignored_is_refused(mutate, message, monkeypatch):
    from nnbridge.core.config import validate_config
    from nnbridge.pipeline.plan import check_config_names

    config = validate_config(yaml.safe_load((ROOT / "config/config.yaml").read_text()),
                             ROOT / "workflow/schemas/config.schema.yaml")
    check_config_names(config)  # the shipped config is fine
    monkeypatch.chdir(ROOT)
    mutate(config)
    with pytest.raises(NNBridgeError, match=message) as info:
        check_config_names(config)
    one_line(str(info.value))


def test_default_sweep_follows_the_backends():
    from nnbridge.pipeline.plan import check_config_names

    config = {"quantize": {}, "backends": ["onnxruntime"], "export": {"torchscript": True},
              "benchmark": {"sweep": ["onnx_simplified", "onnx_simplified@openvino"]}}
    check_config_names(config)  # the default the user did not write: its OpenVINO entry is dropped
    assert config["benchmark"]["sweep"] == ["onnx_simplified"]
    config["benchmark"]["sweep"] = ["torch_eager", "onnx_fp32@openvino"]  # written by the user: refused
    with pytest.raises(NNBridgeError, match="benchmark.sweep: 'onnx_fp32@openvino' is not a variant"):
        check_config_names(config)


# --------------------------------------------------------- snakemake: dry runs and the one real run


def _project(work: Path) -> Path:
    for item in ("Snakefile", "workflow", "profiles", "envs", "src"):
        src = ROOT / item
        (shutil.copytree if src.is_dir() else shutil.copy)(src, work / item)
    (work / "config").mkdir()
    return work


def _snakemake(work: Path, *args: str) -> subprocess.CompletedProcess:
    env = dict(os.environ, PYTHONPATH=str(work / "src"))
    return subprocess.run([SNAKEMAKE, "--cores", "2", *args], cwd=work, env=env, capture_output=True,
                          text=True, timeout=900)


def _tiny_config(work: Path) -> dict:
    """Two tiny plain U-Nets (one with a corrupt checkpoint) and an nnU-Net folder without plans.json;
    no TorchScript, no quantized variant (test_workflow runs those), ONNX Runtime only, a minimal
    benchmark."""
    import torch

    from nnbridge.demo.nets import UNet

    inputs = work / "inputs"
    inputs.mkdir()
    torch.manual_seed(0)
    torch.save(UNet(1, 2, [4, 8]).state_dict(), inputs / "good.pth")
    (inputs / "bad.pth").write_bytes(b"not a checkpoint")
    np.save(inputs / "cal.npy", _patches())
    np.save(inputs / "held.npy", _patches(seed=1))
    lost = _nnunet_folder(inputs, folds=(0,), plans=None)
    plain_entry = {"kind": "pytorch", "dataset": "Dataset960_Tiny", "class": "nnbridge.demo.nets.UNet",
                   "init_kwargs": {"in_channels": 1, "num_classes": 2, "features": [4, 8]}, "input_channels": 1,
                   "example_size": [16, 16, 16], "spatial_multiple": 2, "labels": {"background": 0, "fg": 1},
                   "patches": {"calibration": "inputs/cal.npy", "heldout": "inputs/held.npy"}}
    return {
        "models": [{**plain_entry, "name": "good", "checkpoint": "inputs/good.pth"},
                   {**plain_entry, "name": "bad", "checkpoint": "inputs/bad.pth"},
                   {"folder": str(Path(lost["folder"]).relative_to(work)), "folds": [0],
                    "preprocessed": str(Path(lost["preprocessed"]).relative_to(work))}],
        "export": {"torchscript": False}, "quantize": {}, "backends": ["onnxruntime"],
        "patches": {"calibration": 2, "heldout": 2},
        "validate": {"threads": 1, "tolerances": {"onnx_fp32": {"max_rel_err": 1e-4}}},
        "benchmark": {"threads": 1, "warmup": 0, "repeats": 1, "sweep": [], "tune": [],
                      "realistic": {"enabled": False}},
        "bundle": {"variants": ["onnx_simplified"]}, "case_parity": {"variants": []},
    }


@pytest.fixture(scope="module")
def pipeline_run(tmp_path_factory):
    """The one real snakemake run (the workstation profile: --keep-going): a good model, a corrupt
    checkpoint and a model folder without plans.json."""
    work = _project(tmp_path_factory.mktemp("rel_pipeline"))
    (work / "config/config.yaml").write_text(yaml.safe_dump(_tiny_config(work), sort_keys=False))
    return work, _snakemake(work)


def test_config_mistakes_fail_the_dry_run_in_one_line(tmp_path):
    work = _project(tmp_path)
    config = {"models": [{"folder": "x/T__P__3d_fullres", "preprocessed": "p", "folds": [0]}],
              "validate": {"tolerances": {"fp61": {"min_dice": 0.9}}}}
    (work / "config/config.yaml").write_text(yaml.safe_dump(config))
    proc = _snakemake(work, "-n")
    assert proc.returncode != 0
    assert ("config validate.tolerances.fp61: no variant 'fp61' in this config, so the tolerance would never apply"
            in proc.stdout + proc.stderr), proc.stdout[-2000:]
    (work / "config/config.yaml").write_text("models:\n  - folder: x\n    folds: [0\n    preprocessed: p\n")
    proc = _snakemake(work, "-n")
    assert proc.returncode != 0
    assert ("config/config.yaml: YAML syntax error at line 4, column 17: expected ',' or ']', but got ':' (while "
            "parsing a flow sequence that starts at line 3); fix the line") in proc.stdout + proc.stderr, proc.stdout[-2000:]


def test_one_failing_model_still_gets_a_report(pipeline_run):
    """With --keep-going the good model's stages finish, the report is written with a row per
    failed stage (cause and log) and the run exits non-zero; the failed model left nothing a
    later run would take for done."""
    work, proc = pipeline_run
    assert proc.returncode != 0
    err = proc.stderr
    assert "nnbridge error: inputs/bad.pth: not a torch checkpoint (corrupt or truncated file); re-copy it" in err
    assert ("nnbridge: report of what finished written to results/report_incomplete.html and "
            "results/report_incomplete.md (2 failed stage(s) listed with cause and log); the run failed") in err
    assert not (work / "results/report.md").exists()  # never where a later run would take it for done
    good = work / "results/Dataset960_Tiny/good/fold_all"
    assert json.loads((good / "validate/parity.json").read_text())["all_passed"]
    assert (good / "benchmark/benchmark.json").is_file()
    assert not (work / "results/Dataset960_Tiny/bad/fold_all/export").exists()
    md = (work / "results/report_incomplete.md").read_text()
    assert "**2 stage(s) FAILED** to run; what they would have produced is missing below:" in md
    assert ("| Dataset960_Tiny / bad | all | export_onnx | inputs/bad.pth: not a torch checkpoint (corrupt or "
            "truncated file); re-copy it | logs/Dataset960_Tiny/bad/fold_all/export_onnx.log |") in md
    assert ("| Dataset940_X / nnUNetTrainer__nnUNetPlans__3d_fullres | – | inputs (checked before the run) | "
            "config models[2] (nnUNetTrainer__nnUNetPlans__3d_fullres): inputs/Dataset940_X/nnUNetTrainer__nnUNetPlans__"
            "3d_fullres/plans.json: missing") in md
    assert "| onnx_simplified | 1/1 PASS |" in md  # the good model's results are in the report
    summary = json.loads((work / "results/report/summary_incomplete.json").read_text())
    assert [(r["model"], r["stage"]) for r in summary["failed_stages"]] == [
        ("nnUNetTrainer__nnUNetPlans__3d_fullres", "inputs (checked before the run)"), ("bad", "export_onnx")]
    record = json.loads((work / "logs/Dataset960_Tiny/bad/fold_all/export_onnx.failed.json").read_text())
    assert record["cause"].startswith("inputs/bad.pth: not a torch checkpoint")


def test_failed_stages_ignore_outdated_records(tmp_path):
    """After a failure, a later stage's record from an earlier run (its job had to run again and
    did not) is outdated, and so is a failure record older than the run: neither counts."""
    import time

    from nnbridge.core.runlog import failure_record, logged, write_json
    from nnbridge.report.failures import complete, failed_stages

    stages = [{"stage": s, "record": str(tmp_path / f"{s}.json"), "log": str(tmp_path / f"{s}.log")}
              for s in ("export_onnx", "simplify", "validate")]
    write_json(tmp_path / "export_onnx.json", {})
    write_json(tmp_path / "validate.json", {})  # from an earlier run
    write_json(failure_record(tmp_path / "validate.log"), {"cause": "an old failure"})
    since = time.time() + 1
    while time.time() < since:
        time.sleep(0.05)
    with pytest.raises(NNBridgeError), logged(tmp_path / "simplify.log"):
        raise NNBridgeError("model.onnx: sha256 differs")
    entry = {"dataset": "D", "model": "M", "fold": "0", "stages": stages}
    unfinished = {str(tmp_path / "simplify.json"), str(tmp_path / "validate.json")}
    rows = failed_stages([entry], unfinished=unfinished, since=since)
    assert [(r["stage"], r["cause"]) for r in rows] == [("simplify", "model.onnx: sha256 differs")]
    assert not complete(entry, unfinished) and complete({**entry, "stages": stages[:1]}, unfinished)
    stale = {**entry, "stages": [stages[0], stages[2]]}
    assert complete(stale) and not complete(stale, unfinished)  # only the run knows validate.json is outdated


def test_a_rerun_redoes_only_what_failed_and_refuses_without_keep_going(pipeline_run):
    import re

    work, _ = pipeline_run
    proc = _snakemake(work, "-n")
    text = proc.stdout + proc.stderr
    jobs = dict(re.findall(r"^(\w+)\s+(\d+)\s*$", text.split("Job stats:", 1)[1], re.M))
    # the bad model's stages (its three artifacts timed once each: torch eager, ONNX fp32, simplified)
    assert jobs == {"export_onnx": "1", "simplify": "1", "reference": "1", "validate": "1", "benchmark_artifact": "3",
                    "benchmark": "1", "report": "1", "all": "1", "total": "10"}, text
    outputs = re.findall(r"^\s+output: (.*)$", text, re.M)
    assert outputs and not [o for o in outputs if "/good/" in o]  # the good model's stages are done
    # without --keep-going (no workstation profile) the run refuses before any job starts
    proc = _snakemake(work, "--workflow-profile", "none")
    assert proc.returncode != 0
    assert ("plans.json: missing; an nnU-Net model folder holds it: copy it from the training machine's "
            "nnUNet_results/<Dataset>/<Trainer>__<Plans>__<configuration> (1 model(s)/fold(s) with missing inputs; fix "
            "them, or run with --keep-going to run the others and report these as failed)") in proc.stderr
    assert "Select jobs to execute" not in proc.stdout + proc.stderr


# ----------------------------------------------------------------------- 10: RGB 2D (NaturalImage2DIO)


def make_rgb_dataset(raw_root: Path, dataset_id: int, n: int = 5, size: tuple[int, int] = (32, 32)) -> Path:
    """nnU-Net's road-segmentation layout: one RGB ``case_0000.png`` per case (3 channels), labels as
    PNG, channel_names R/G/B; a reddish disk on noise is the foreground."""
    from skimage import io

    folder = Path(raw_root) / f"Dataset{dataset_id}_RGB"
    (folder / "imagesTr").mkdir(parents=True)
    (folder / "labelsTr").mkdir()
    for i in range(n):
        rng = np.random.default_rng([7, i])
        yy, xx = np.mgrid[: size[0], : size[1]]
        centre, radius = rng.uniform(9, min(size) - 9, 2), rng.uniform(5, 8)
        disk = (yy - centre[0]) ** 2 + (xx - centre[1]) ** 2 <= radius**2
        image = rng.normal(90, 20, (*size, 3))
        image[disk] += (90, -40, 30)
        io.imsave(folder / "imagesTr" / f"rgb_{i:03d}_0000.png", np.clip(image, 0, 255).astype(np.uint8),
                  check_contrast=False)
        io.imsave(folder / "labelsTr" / f"rgb_{i:03d}.png", disk.astype(np.uint8), check_contrast=False)
    (folder / "dataset.json").write_text(json.dumps({
        "channel_names": {"0": "R", "1": "G", "2": "B"}, "labels": {"background": 0, "disk": 1},
        "numTraining": n, "file_ending": ".png"}))
    return folder


@pytest.fixture(scope="module")
def rgb(tmp_path_factory):
    """A real RGB 2D nnU-Net model (planned, preprocessed and trained by nnU-Net, 1 epoch of 2
    iterations), exported and bundled."""
    from nnbridge.bundle.build import write_bundle
    from nnbridge.core.metadata import read_metadata
    from nnbridge.demo import nnunet as demo
    from nnbridge.export.onnx_export import export_onnx
    from nnbridge.models import TRAINER_DIR
    from nnbridge.models.nnunet import load_nnunet_fold

    root = tmp_path_factory.mktemp("rgb")
    raw, pre, res = root / "raw", root / "preprocessed", root / "results"
    raw_ds = make_rgb_dataset(raw, 930)
    pre_ds = demo.plan_and_preprocess(raw, pre, dataset_id=930, configuration="2d", log=root / "plan.log")
    demo.derive_small_plans(pre_ds, configuration="2d", features=(8, 16, 32))
    demo.write_splits(pre_ds, configuration="2d")
    fold_dir = demo.train_fold(0, raw=raw, preprocessed=pre, results=res, dataset_id=930, configuration="2d",
                               epochs=1, iterations=2, log=root / "train.log")
    os.environ.setdefault("nnUNet_extTrainer", str(TRAINER_DIR))
    folder = fold_dir.parent
    export_onnx(load_nnunet_fold(folder, "0"), root / "model.onnx")
    write_bundle(root / "bundle", plans_file=folder / "plans.json", dataset_file=folder / "dataset.json",
                 info={"configuration": "2d", "mirror_axes": json.loads(read_metadata(root / "model.onnx")["mirror_axes"])},
                 variants={"onnx_fp32": {"files": {"0": root / "model.onnx"}, "gates": {"0": {"onnxruntime": True}}}},
                 default_variant="onnx_fp32")
    return root, folder, raw_ds, pre_ds


def test_rgb_2d_whole_cases_match_nnunet_and_predict_without_torch(rgb, tmp_path):
    """One .png holds the three channels: the cases are found as nnU-Net finds them and the reader
    decides the channels, in whole-case parity and in `nnbridge predict` (torch blocked)."""
    from skimage import io

    from nnbridge.validate.caseparity import run_case_parity, validation_cases

    root, folder, raw_ds, pre_ds = rgb
    cases = validation_cases(pre_ds, "0", raw_ds, ".png")
    assert all(len(c["images"]) == 1 for c in cases.values())  # one file, three channels
    record = run_case_parity(model_folder=folder, fold="0", checkpoint="checkpoint_final.pth",
                             bundle_dir=root / "bundle", cases=cases, variants={"onnx_fp32": {}},
                             out_dir=tmp_path / "parity", threads=2)
    result = record["variants"]["onnx_fp32"]
    assert result["passed"] and result["min_voxel_agreement"] >= 0.9999, result
    assert all(c["preprocessed_max_abs_diff"] <= 1e-4 for c in result["cases"].values())
    case = next(iter(cases))
    (tmp_path / "cut").mkdir()
    shutil.copy(cases[case]["images"][0], tmp_path / "cut" / "cut_0000.png")
    _cut(tmp_path / "cut" / "cut_0000.png")
    rc, err = predict(root / "bundle", tmp_path / "cut", tmp_path / "out")
    assert rc == 2 and one_line(err.strip().splitlines()[-1]) == (
        f"nnbridge: error: {tmp_path / 'cut' / 'cut_0000.png'}: NaturalImage2DIO cannot read it (OSError: image file "
        "is truncated); the file is truncated, corrupt or not an image: copy it again")
    (tmp_path / "in").mkdir()
    shutil.copy(cases[case]["images"][0], tmp_path / "in")
    proc = predict_without(["predict", "-i", tmp_path / "in", "-o", tmp_path / "out", "-m", root / "bundle", "-q"],
                           timeout=300)
    assert proc.returncode == 0, proc.stderr
    ours, theirs = io.imread(tmp_path / "out" / f"{case}.png"), io.imread(tmp_path / "parity/nnunet" / f"{case}.png")
    assert ours.shape == theirs.shape == (32, 32) and (ours == theirs).mean() >= 0.9999


def test_case_files_are_found_as_nnunet_finds_them(tmp_path):
    from nnunetv2.utilities.utils import (
        create_lists_from_splitted_dataset_folder,
        get_identifiers_from_splitted_dataset_folder,
    )

    from nnbridge.predict.io import case_files

    for name in ("a_0000.png", "a_0001.png", "b_c_0000.png", "b_0000.png", "b_0000.nii.gz", "x.png", "a_00001.png"):
        (tmp_path / name).write_bytes(b"")
    ours = {case: [str(p) for p in files] for case, files in case_files(tmp_path, ".png").items()}
    identifiers = get_identifiers_from_splitted_dataset_folder(str(tmp_path), ".png")
    theirs = create_lists_from_splitted_dataset_folder(str(tmp_path), ".png", identifiers, num_processes=1)
    theirs = {str(case): files for case, files in zip(identifiers, theirs) if case}  # nnU-Net also lists "" (x.png)
    assert ours == theirs and ours["a"] == [str(tmp_path / "a_0000.png"), str(tmp_path / "a_0001.png")]


def test_readme_counts_this_matrix_and_the_profile_reruns_what_a_kill_left():
    readme = (ROOT / "README.md").read_text()
    assert len(BAD_INPUTS) == len(ISSUE_CASES) + len(MATRIX)  # no name counted twice
    assert f"**{len(BAD_INPUTS)} bad inputs, {len(BAD_INPUTS)} clear one-line errors" in readme and "0 silent" in readme
    assert ".venv/bin/snakemake --unlock\n.venv/bin/snakemake " in readme
    for profile in ("profiles/default", "profiles/slurm"):
        settings = yaml.safe_load((ROOT / profile / "config.yaml").read_text())
        assert settings["rerun-incomplete"] is True and settings["keep-going"] is True, profile
