"""Precision that holds on the CPU it runs on (issue 19, items 1, 2 and 4): quantization defaults
decided by the CPU's INT8 features, gates decided on the worst case and recorded with the CPU
kind, and ``nnbridge verify`` re-checking a bundle's variants on this machine.

``NNBRIDGE_NO_VNNI=1`` makes any CPU one without INT8 dot products, so the paths of such CPUs run
everywhere; where the CPU really lacks them, the same assertions hold without the override.
"""

from __future__ import annotations

import shutil

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from nnbridge.core.cpu import INT8_DOT_FLAGS, NO_VNNI_ENV, cpu_identity, cpu_kind, int8_dot
from nnbridge.core.emulation import qemu_here
from nnbridge.core.records import BenchmarkRecord, ParityRecord
from nnbridge.quantize import quantize_variant
from nnbridge.quantize.cpudefaults import decision_features, quantize_cpu_params, resolve
from nnbridge.validate.selfcheck import fit_budget

NO_QEMU = qemu_here()[1]  # why QEMU cannot emulate an x86 CPU here, or None

X86_NO_DOT = {"arch": "x86", "avx2": True, "int8_dot": []}
X86_VNNI = {"arch": "x86", "avx2": True, "int8_dot": True}  # as the pipeline passes it
ARM = {"arch": "aarch64", "avx2": False, "int8_dot": []}


def _choices(choices: list[dict]) -> dict[str, dict]:
    return {c["setting"]: c for c in choices}


def test_no_vnni_override_reaches_every_consumer(monkeypatch):
    monkeypatch.delenv(NO_VNNI_ENV, raising=False)
    real = cpu_identity()
    monkeypatch.setenv(NO_VNNI_ENV, "1")
    forced = cpu_identity()
    assert not set(forced["isa"]) & set(INT8_DOT_FLAGS) and int8_dot() == []
    assert set(forced["isa"]) == set(real["isa"]) - set(INT8_DOT_FLAGS)  # nothing else changes
    assert forced["forced"] == [f"{NO_VNNI_ENV}=1"] and "host" not in cpu_kind()
    assert decision_features()["int8_dot"] == [] and decision_features()["forced"] == [f"{NO_VNNI_ENV}=1"]
    monkeypatch.setenv(NO_VNNI_ENV, "0")
    assert cpu_identity()["isa"] == real["isa"] and "forced" not in cpu_identity()


def test_defaults_follow_the_cpu_and_given_settings_win():
    static = {"method": "static", "reduce_range": None, "symmetric_activations": None}
    _, choices = resolve(static, X86_NO_DOT)
    got = _choices(choices)
    assert got["reduce_range"]["value"] is True and not got["reduce_range"]["given"]
    assert "saturating int16" in got["reduce_range"]["why"]
    assert got["symmetric_activations"]["value"] is False and got["weight_type"]["value"] == "s8"
    assert _choices(resolve(static, X86_VNNI)[1])["reduce_range"]["value"] is False
    arm = _choices(resolve(static, ARM)[1])
    assert arm["reduce_range"]["value"] is False and arm["symmetric_activations"]["value"] is True
    # the user's settings win, recorded as given
    settings, choices = resolve({**static, "reduce_range": False, "symmetric_activations": True}, X86_NO_DOT)
    assert settings["reduce_range"] is False and settings["symmetric_activations"] is True
    assert _choices(choices)["reduce_range"] == {"setting": "reduce_range", "value": False, "given": True,
                                                 "why": "given in the quantize entry"}
    assert _choices(resolve({"method": "dynamic"}, X86_NO_DOT)[1])["reduce_range"]["value"] is True
    no_avx2 = _choices(resolve(static, {**X86_NO_DOT, "avx2": False})[1])
    assert no_avx2["onnxruntime_int8"]["value"] == "not worth building"
    assert _choices(resolve({"method": "nncf"}, X86_NO_DOT)[1])["overflow_fix"]["value"] == "enable"
    assert _choices(resolve({"method": "nncf"}, X86_VNNI)[1])["overflow_fix"]["value"] == "disable"
    assert _choices(resolve({"method": "nncf", "overflow_fix": "enable"}, X86_VNNI)[1])["overflow_fix"]["given"]


def test_defaults_for_deployment_cpus_go_by_what_all_of_them_have():
    """With emulated deployment CPUs (verify.emulated_cpus) the defaults are decided for the
    features the build machine and every one of them have; the rule params name the CPUs where
    they changed a decision, and the record's reasons say so."""
    from nnbridge.core.cpu import least_capable

    host = {"cpu": "Xeon", "isa": ["avx2", "avx512f", "avx512_vnni", "avx512_bf16"], "arch": "x86_64"}
    haswell = {"cpu": "Xeon", "isa": ["avx2"], "arch": "x86_64"}
    icelake = {"cpu": "Xeon", "isa": ["avx2", "avx512f", "avx512_vnni"], "arch": "x86_64"}
    both = least_capable(host, {"Haswell": haswell, "Icelake-Server": icelake})
    assert both["isa"] == ["avx2"] and both["targets"] == ["Haswell", "Icelake-Server"]
    static = {"method": "static", "reduce_range": None}
    assert quantize_cpu_params(static, both) == {"arch": "x86", "avx2": True, "int8_dot": False,
                                                 "for": ["Haswell", "Icelake-Server"]}
    # a target that only lacks bf16 changes no INT8 decision: the params stay those of the host
    assert quantize_cpu_params(static, least_capable(host, {"Icelake-Server": icelake})) == {
        "arch": "x86", "avx2": True, "int8_dot": True}
    settings, choices = resolve(static, {**decision_features(both), "for": ["Haswell"]})
    assert settings["reduce_range"] is True
    assert "the deployment CPU(s) Haswell of verify.emulated_cpus" in _choices(choices)["reduce_range"]["why"]


def test_the_rule_params_hold_the_features_only_when_a_default_depends_on_them(monkeypatch):
    """The quantize rule's ``cpu`` param: the decision features when the entry leaves a CPU-decided
    setting out (so Snakemake reruns it on a CPU that differs in them), else {} (reused anywhere)."""
    given = {"method": "static", "reduce_range": True, "symmetric_activations": False}
    assert quantize_cpu_params(given) == {}
    assert quantize_cpu_params({"method": "fp16"}) == {} and quantize_cpu_params({"method": "bf16"}) == {}
    vnni_host = {"cpu": "x", "isa": ["avx2", "avx512f", "avx512_vnni"], "cpus": 2, "arch": "x86_64"}
    avx2_host = {**vnni_host, "isa": ["avx2"]}
    amx_host = {**vnni_host, "cpu": "y", "isa": ["avx2", "avx512f", "avx512_vnni", "amx_int8"], "cpus": 4}
    auto = {"method": "static", "reduce_range": None, "symmetric_activations": False}
    assert quantize_cpu_params(auto, vnni_host) == {"arch": "x86", "avx2": True, "int8_dot": True}
    assert quantize_cpu_params(auto, avx2_host) == {"arch": "x86", "avx2": True, "int8_dot": False}
    # another CPU model with INT8 dot products too: the same params, the file is reused
    assert quantize_cpu_params(auto, vnni_host) == quantize_cpu_params(auto, amx_host)
    assert quantize_cpu_params(auto, avx2_host) == quantize_cpu_params(auto, {**avx2_host, "cpu": "z", "cpus": 8})


def _int8_weight_range(path) -> int:
    """The largest |value| of the INT8 weights (conv weights quantized per channel) in a QDQ file."""
    model = onnx.load(str(path))
    values = [numpy_helper.to_array(i) for i in model.graph.initializer
              if i.data_type == onnx.TensorProto.INT8 and len(i.dims) >= 4]
    assert values
    return int(max(np.abs(v.astype(np.int16)).max() for v in values))


def test_static_int8_uses_7_bit_weights_without_vnni_unless_told(exported, patch_sets, tmp_path, monkeypatch):
    out, _, _ = exported
    calibration = patch_sets[1][:3]
    settings = {"method": "static", "format": "QDQ", "per_channel": True, "calibrate_method": "MinMax",
                "symmetric_activations": None, "reduce_range": None, "nodes_to_exclude": []}
    monkeypatch.setenv(NO_VNNI_ENV, "1")
    record = quantize_variant(out / "model.onnx", tmp_path / "auto.onnx", calibration, settings)
    choice = _choices(record["cpu"]["choices"])["reduce_range"]
    assert record["reduce_range"] is True and choice["value"] is True and not choice["given"]
    assert record["cpu"]["decided_for"]["int8_dot"] == [] and record["cpu"]["decided_by"] == "this machine"
    assert _int8_weight_range(tmp_path / "auto.onnx") <= 64  # ONNX Runtime's reduced INT8 range
    told = quantize_variant(out / "model.onnx", tmp_path / "told.onnx", calibration,
                            {**settings, "reduce_range": False})
    assert told["reduce_range"] is False and _choices(told["cpu"]["choices"])["reduce_range"]["given"]
    assert _int8_weight_range(tmp_path / "told.onnx") > 64
    # decided for the features the pipeline passes (the DAG host's), noted when this CPU differs
    monkeypatch.delenv(NO_VNNI_ENV)
    passed = quantize_variant(out / "model.onnx", tmp_path / "pipe.onnx", calibration, settings,
                              cpu=X86_VNNI)
    assert passed["reduce_range"] is False and passed["cpu"]["decided_by"].startswith("the pipeline")
    assert ("note" in passed["cpu"]) == (not int8_dot())


# --- item 4: gates that bound the worst case ---------------------------------------------------

def _logits(labels: np.ndarray, classes: int = 3) -> np.ndarray:
    """One-hot logits (N, C, ...) whose argmax is ``labels``."""
    return np.moveaxis(np.eye(classes, dtype=np.float32)[labels], -1, 1)


def _patch(sphere: int, box: int, side: int = 30) -> np.ndarray:
    """A label patch with ``sphere`` voxels of class 1 and ``box`` of class 2 (the rest 0)."""
    flat = np.zeros(side ** 3, dtype=np.int64)
    flat[:sphere] = 1
    flat[sphere : sphere + box] = 2
    return flat.reshape(side, side, side)


def test_the_worst_case_decides_where_the_pooled_dice_passes():
    """A small structure that INT8 erodes on one case: pooled over all patches the Dice passes
    0.99, on that case it is 0.947 and the per-case gate fails, naming the case; a structure of
    a handful of voxels is listed but does not decide."""
    from nnbridge.validate.metrics import Tolerance, validate_variant

    names = {0: "background", 1: "sphere", 2: "box"}
    ref = np.stack([_patch(9000, 9000), _patch(9000, 9000), _patch(9000, 200), _patch(9000, 10)])
    test = ref.copy()
    test[2][test[2] == 2] = 0
    test[2].reshape(-1)[9000:9180] = 2  # case B keeps 180 of its 200 box voxels
    test[3].reshape(-1)[9000] = 0  # case C: 1 of 10 box voxels lost (too small to decide)
    groups = ["case_A", "case_A", "case_B", "case_C"]
    tol = Tolerance(min_dice=0.99, min_case_dice=0.98)
    result = validate_variant(_logits(ref), _logits(test), names, tol, groups=groups)
    assert result["dice"]["box"] > 0.99  # pooled: passes
    cases = result["case_dice"]
    assert cases["min_voxels"] == 50  # 1/(1 - 0.98): below, one voxel alone decides
    assert cases["worst"]["case"] == "case_B" and cases["worst"]["class"] == "box"
    assert abs(cases["worst"]["dice"] - 2 * 180 / 380) < 1e-6
    assert cases["distribution"]["box"]["worst_case"] == "case_B" and cases["distribution"]["box"]["max"] == 1.0
    assert cases["not_gated"] == [{"case": "case_C", "class": "box", "voxels": 19, "dice": round(18 / 19, 6)}]
    assert not result["passed"] and result["failures"] == ["Dice of box on case case_B 0.9474 < 0.98"]
    assert cases["cases"]["case_B"]["voxels"]["box"] == 200
    # the same variant with the gate pooled only passes: what the per-case gate adds
    assert validate_variant(_logits(ref), _logits(test), names, Tolerance(min_dice=0.99))["passed"]


def test_the_verdicts_stability_is_measured_by_resampling_each_cases_patches():
    from nnbridge.core.dice import case_dice, overlap_counts

    ref = np.stack([_patch(500, 500), _patch(500, 500), _patch(500, 500), _patch(500, 500)])
    test = ref.copy()
    test[1].reshape(-1)[:30] = 0  # case A's second patch: 30 of 500 sphere voxels lost
    counts = overlap_counts(ref, test, [1, 2])
    # two patches per case: case A's Dice depends on which patches are drawn
    shaky = case_dice(counts, ["A", "A", "B", "B"], ["sphere", "box"], threshold=0.99)
    assert shaky["min_case_dice"] < 0.99 and shaky["stability"]["verdict"] == "fail"
    assert 0 < shaky["stability"]["same_verdict"] < 0.9 and shaky["stability"]["stable"] is False
    assert "raise patches.heldout" in shaky["stability"]["note"]
    firm = case_dice(counts, ["A", "A", "B", "B"], ["sphere", "box"], threshold=0.95)
    assert firm["stability"] == {**firm["stability"], "verdict": "pass", "same_verdict": 1.0, "stable": True}
    one = case_dice(counts, ["A", "B", "C", "D"], ["sphere", "box"], threshold=0.99)
    assert one["stability"]["stable"] is None and "at least 2 per held-out case" in one["stability"]["note"]


# --- item 2: gates per CPU kind, carried into deployment ----------------------------------------

@pytest.fixture(scope="module")
def gated_bundle(tiny_model, exported, patch_sets, tmp_path_factory):
    """A bundle built by the pipeline's builder from a real validate record (this CPU kind, a
    self-check set), then planted: its INT8 file replaced by a deliberately bad quantization
    (calibrated on patches scaled by 0.05: clipped activations) with the manifest's sha256
    updated, as if it had passed where it was gated and misbehaved on this CPU."""
    import json
    import shutil

    from nnbridge.bundle.build import build_from_pipeline
    from nnbridge.core.runlog import sha256_file
    from nnbridge.models.nnunet import nnunet_source
    from nnbridge.patches.sampling import fold_cases
    from nnbridge.quantize.static import quantize_static_int8
    from nnbridge.validate.reference import validate_source

    out, _, _ = exported
    _, calibration, heldout = patch_sets
    val = fold_cases(tiny_model.preprocessed, "0")[1]
    groups = [val[i % len(val)] for i in range(len(heldout))]  # how the patches stage cycles the cases
    root = tmp_path_factory.mktemp("gated")
    model = str(out / "model.onnx")
    variants = {"onnx_fp32": {"kind": "onnx", "path": model},
                "onnx_fp32@openvino": {"kind": "onnx", "path": model, "backend": "openvino"},
                "int8": {"kind": "onnx", "path": model}}  # the fp32 file: an INT8 variant that passes
    tolerances = {"onnx_fp32": {"min_dice": 0.999}, "onnx_fp32@openvino": {"min_dice": 0.999},
                  "int8": {"min_dice": 0.99, "min_case_dice": 0.98}}
    parity = validate_source(nnunet_source(tiny_model.model_folder, "0"), heldout, variants, tolerances, threads=2,
                           groups=groups, selfcheck_out=root / "selfcheck.npz",
                           selfcheck={"patches": 3, "max_kb": 96})
    ParityRecord.of(parity).write(root / "parity.json")
    BenchmarkRecord.of({"results": {"onnx_fp32": {"backend": "onnxruntime", "p50_ms": 10.0},
                                    "onnx_fp32@openvino": {"backend": "openvino", "p50_ms": 20.0},
                                    "int8": {"backend": "onnxruntime", "p50_ms": 5.0}}}).write(root / "benchmark.json")
    bundle = root / "bundle"
    # the quantize record of a file quantized for a CPU with INT8 dot products (8-bit weights)
    (root / "int8.json").write_text(json.dumps({"path": model, "sha256": sha256_file(out / "model.onnx"), "cpu": {
        "decided_for": {"arch": "x86", "avx2": True, "int8_dot": True}}}))
    build_from_pipeline(bundle, plans_file=tiny_model.model_folder / "plans.json",
                        dataset_file=tiny_model.model_folder / "dataset.json",
                        folds={"0": {"files": {"onnx_fp32": model, "int8": model}, "parity": root / "parity.json",
                                     "benchmark": root / "benchmark.json", "selfcheck": root / "selfcheck.npz",
                                     "records": {"int8": root / "int8.json"}}},
                        variant_names=["onnx_fp32", "int8"], default_variant="int8", model="m", dataset="d")
    quantize_static_int8(out / "model.onnx", root / "bad.onnx", calibration[:2] * 0.05, per_channel=False)
    planted = bundle / "int8" / "fold_0.onnx"
    planted.unlink()  # a hard link to the exported model: never write through it
    shutil.copyfile(root / "bad.onnx", planted)
    manifest = json.loads((bundle / "bundle.json").read_text())
    manifest["variants"]["int8"]["sha256"]["0"] = sha256_file(planted)
    (bundle / "bundle.json").write_text(json.dumps(manifest, indent=2))
    return {"bundle": bundle, "parity": parity, "root": root}


def test_selfcheck_budget_never_cuts_below_what_the_network_takes():
    """A real-size fold's share of the bundle's budget (256 kB over 5 folds) holds no 128^3 patch
    of a stride-32 network: one patch of 64^3 (a 2-voxel bottleneck; at 32^3 nnU-Net's
    InstanceNorm over one voxel cannot run), over budget; a demo-size share still cuts."""
    assert fit_budget((1, 128, 128, 128), 4, 256 * 1024 // 5, (32, 32, 32), True) == (1, (64, 64, 64))
    assert fit_budget((1, 40, 40, 40), 4, 128 * 1024, (8, 8, 8), True) == (4, (24, 24, 24))  # 4 x 27.6 kB
    assert fit_budget((1, 40, 40, 40), 4, 1 << 20, (8, 8, 8), True) == (4, (40, 40, 40))


def test_gates_name_their_cpu_kind_and_the_bundle_ships_a_small_selfcheck(gated_bundle, loaded_fold):
    from nnbridge.predict.bundle import Bundle
    from nnbridge.predict.verify import read_selfcheck
    from nnbridge.runtime.torchrun import run_torch

    parity = gated_bundle["parity"]
    assert parity["cpu_kind"] == cpu_kind() and "host" not in parity["cpu_kind"]
    int8 = parity["variants"]["int8"]
    assert int8["passed"] and int8["tolerance"]["min_case_dice"] == 0.98
    assert set(int8["case_dice"]["cases"]) == {"case_000", "case_007"}
    assert int8["case_dice"]["n_cases"] == parity["n_cases"] == 2
    bundle = Bundle.load(gated_bundle["bundle"])
    manifest = bundle.manifest
    assert manifest["gated_on"] == {"0": cpu_kind()}
    selfcheck = manifest["selfcheck"]
    assert 0 < selfcheck["bytes"] <= 96 * 1024
    with np.load(bundle.root / selfcheck["files"]["0"]) as archive:
        assert archive["patches"].dtype == np.float16 and archive["labels"].dtype == np.uint8
    patches, labels, cases = read_selfcheck(bundle.root / selfcheck["files"]["0"])
    assert len(patches) == 3 and set(cases) == {"case_000", "case_007"}  # both held-out cases
    assert patches.shape[2:] != (40, 40, 40)  # cut to fit the budget: 3 x 40^3 float16 would be 384 kB
    np.testing.assert_array_equal(labels, run_torch(loaded_fold.network, patches).argmax(1))
    recheck = manifest["variants"]["int8"]["recheck"]["0"]["onnxruntime"]
    assert recheck["tolerance"] == {"min_dice": 0.99, "min_case_dice": 0.98, "min_case_voxels": 50}
    assert recheck["at_gate"]["min_dice"] == 1.0  # the fp32 file it was gated as


def test_verify_passes_the_label_maps_it_was_gated_on_whatever_the_stored_rounding():
    """The Dice where gated is stored rounded to 6 decimals; the same label maps checked again
    against it pass even when it was rounded up (seen on the demo: 0.95862068 against 0.958621 failed
    `nnbridge verify` on the machine that gated it), and one voxel less still fails."""
    from nnbridge.core.dice import case_dice, dice_of
    from nnbridge.predict.verify import recheck_thresholds

    counts = np.array([[[1450, 1450, 1390]]])  # one patch, one class: |A|, |B|, |A∩B|: Dice 0.958620690
    where_gated = case_dice(counts, ["c1"], ["box"], threshold=0.98)
    assert where_gated["min_case_dice"] == 0.958621 > 2 * 1390 / 2900  # stored rounded up
    bounds = recheck_thresholds({"tolerance": {"min_dice": 0.99, "min_case_dice": 0.98}, "at_gate": {
        "min_dice": round(float(dice_of(counts.sum(axis=0))[0]), 6), "min_case_dice": where_gated["min_case_dice"]}})
    assert bounds["min_dice"] < 0.99 and bounds["min_case_dice"] < 0.98

    def below(c):
        return case_dice(c, ["c1"], ["box"], threshold=bounds["min_case_dice"], min_voxels=bounds["min_case_voxels"])["below"]

    assert below(counts) == []
    fewer = counts.copy()
    fewer[0, 0, 2] -= 1  # one voxel of the overlap lost here
    assert below(fewer) and float(dice_of(fewer.sum(axis=0))[0]) < bounds["min_dice"]


def test_verify_catches_the_planted_variant_on_this_cpu(gated_bundle, capsys):
    from nnbridge.cli import main

    rc = main(["verify", "-m", str(gated_bundle["bundle"]), "--threads", "2"])
    out = capsys.readouterr().out
    assert rc == 1, out
    lines = out.splitlines()
    fp32 = [line for line in lines if line.split()[:1] == ["onnx_fp32"]]
    bad = [line for line in lines if line.split()[:1] == ["int8"]]
    assert len(fp32) == 2 and all(line.endswith("PASS") for line in fp32)  # both runtimes passed where gated
    assert len(bad) == 1 and "onnxruntime" in bad[0] and "FAIL: Dice of sphere" in bad[0]
    assert "1.0000 where gated" in bad[0]
    # the remedy, where this CPU lacks the INT8 dot products the file was quantized for
    assert ("int8 was quantized for CPUs with INT8 dot products" in out) == (not int8_dot()), out
    assert "result cached in" in out and list(gated_bundle["bundle"].glob("verified-*.json"))


def test_predict_rechecks_on_an_unseen_cpu_kind_and_refuses_what_fails_here(gated_bundle, monkeypatch, tmp_path):
    """On the CPU kind the bundle was gated on nothing is re-checked; on another (the manifest's
    gated_on renamed: any CPU, an AVX2-only one too, becomes one the bundle has not seen) the
    variant is checked once, cached beside the bundle, and refused with the CPU, the Dice and,
    where this CPU lacks the INT8 dot products the file was quantized for (forced here by
    NNBRIDGE_NO_VNNI), the rebuild that helps; --allow-ungated still runs it; an unwritable place
    falls back to the user cache directory."""
    import json
    import shutil

    from nnbridge.cli import main
    from nnbridge.core.cpu import describe_cpu
    from nnbridge.core.errors import NNBridgeError
    from nnbridge.predict.bundle import Bundle
    from nnbridge.predict.predictor import Predictor
    from nnbridge.predict.verify import cache_paths

    root = tmp_path / "bundle"
    shutil.copytree(gated_bundle["bundle"], root)
    for old in root.glob("verified-*.json"):
        old.unlink()
    bundle = Bundle.load(root)
    here = Predictor(bundle, variant="int8")  # gated on this CPU kind: trusted as gated
    assert here.verification is None and not list(root.glob("verified-*.json"))

    manifest = json.loads((root / "bundle.json").read_text())
    manifest["gated_on"] = {fold: {**gated, "cpu": "another CPU"} for fold, gated in manifest["gated_on"].items()}
    (root / "bundle.json").write_text(json.dumps(manifest, indent=2))
    bundle = Bundle.load(root)
    monkeypatch.setenv(NO_VNNI_ENV, "1")
    kind = cpu_kind()
    with pytest.raises(NNBridgeError) as refused:
        Predictor(bundle, variant="int8")
    message = str(refused.value)
    assert f"variant 'int8' on onnxruntime fails its gate on this CPU, {describe_cpu(kind)}" in message
    assert "NNBRIDGE_NO_VNNI=1" in message and "fold 0: Dice of sphere 0." in message
    assert "int8 was quantized for CPUs with INT8 dot products (VNNI, AMX-INT8), which this one lacks; " \
           "rebuild the bundle for it" in message and "verify.emulated_cpus" in message
    assert bundle.manifest["variants"]["int8"]["built_for"]["int8_dot"]
    assert "built_for" not in bundle.manifest["variants"]["onnx_fp32"]
    cache = cache_paths(bundle, kind)[0]
    assert cache.parent == root and f"cached in {cache}" in message
    stamp = cache.stat().st_mtime_ns
    ungated = Predictor(bundle, variant="int8", allow_ungated=True)  # from the cache: not checked again
    assert cache.stat().st_mtime_ns == stamp and not ungated.verification["variants"]["int8"]["onnxruntime"]["0"]["passed"]
    exact = Predictor(bundle, variant="onnx_fp32")  # checked now, added to the cache
    assert exact.verification["variants"]["onnx_fp32"]["onnxruntime"]["0"]["passed"]
    assert set(json.loads(cache.read_text())["variants"]) == {"int8", "onnx_fp32"}
    rc = main(["predict", "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "-m", str(root)])
    assert rc == 2  # the default variant (int8) refused in one line before anything is read

    # beside the bundle unwritable (a folder in the way): the user cache directory
    cache.unlink()
    cache.mkdir()
    monkeypatch.setenv("NNBRIDGE_CACHE_DIR", str(tmp_path / "user-cache"))
    with pytest.raises(NNBridgeError, match="fails its gate on this CPU"):
        Predictor(bundle, variant="int8")
    fallback = cache_paths(bundle, kind)[1]
    assert fallback.is_file() and str(fallback).startswith(str(tmp_path / "user-cache" / "verify"))
    assert not list(root.glob(".verify-*"))  # nothing half-written left beside the bundle


@pytest.mark.skipif(NO_QEMU is not None, reason=str(NO_QEMU))
def test_the_bundle_is_verified_on_an_emulated_deployment_cpu(gated_bundle):
    """The verify_emulated stage: `nnbridge verify` under QEMU's Haswell (AVX2, no VNNI) on the
    bundle, not cached in it (the bundle stays as the pipeline wrote it); the planted variant is
    caught there too and the report lists it; a CPU model QEMU does not know is refused in one line."""
    from nnbridge.core.errors import NNBridgeError
    from nnbridge.core.records import EmulatedVerifyRecord
    from nnbridge.predict.emulated import verify_emulated
    from nnbridge.report.collect import FoldResults, RunResults
    from nnbridge.report.render import verdict
    from nnbridge.report.tables import emulated_table

    from nnbridge.core.emulation import emulated_identity

    assert emulated_identity("Haswell")["isa"] == ["avx2"] and emulated_identity("NoSuchCPU") is None
    bundle = gated_bundle["bundle"]
    before = sorted(p.name for p in bundle.iterdir())
    record = EmulatedVerifyRecord.of(verify_emulated(bundle, "Haswell", threads=2))
    assert sorted(p.name for p in bundle.iterdir()) == before  # nothing cached in the bundle
    assert record.cpu["isa"] == ["avx2"] and record.cpu_model == "Haswell" and record.threads == 2
    assert record.passed is False and len(record.failed) == 1, record.failed
    assert record.failed[0].startswith("int8 on onnxruntime fold 0: Dice of sphere")
    checked = record.records[""]["variants"]
    assert all(r["passed"] for per in checked["onnx_fp32"].values() for r in per.values())
    fold = FoldResults("d", "m", "0", emulated={"Haswell": record})
    rows = emulated_table(RunResults([fold])).rows
    marks = {(row[2], row[3]): str(row[-1]) for row in rows}
    assert marks[("int8", "onnxruntime")].startswith("FAIL: Dice of sphere")
    assert marks[("onnx_fp32", "onnxruntime")] == marks[("onnx_fp32", "openvino")] == "PASS"
    assert [line for line in verdict(RunResults([fold])).failed if "on emulated Haswell: int8 on onnxruntime" in line]
    with pytest.raises(NNBridgeError, match=r"verify\.emulated_cpus: 'NoSuchCPU' is not a CPU model of qemu-x86_64"):
        verify_emulated(bundle, "NoSuchCPU", threads=2)


@pytest.mark.skipif(NO_QEMU is not None, reason=str(NO_QEMU))
def test_deployment_cpu_identities_are_read_once_and_serve_a_node_without_qemu(tmp_path, monkeypatch):
    """The workflow reads verify.emulated_cpus' identities under QEMU when it is parsed, on the
    planning machine and again in each Slurm job: kept in a file, the reading is the planning
    machine's everywhere (a node without QEMU decides the quantize defaults as planned, and no
    job runs QEMU); an entry of another QEMU version is read again, one of another CPUID reader
    is never used, a corrupt file is read again."""
    import json

    from nnbridge.core import emulation

    cache = tmp_path / "emulated_cpus.json"
    first = emulation.emulated_identities(["Haswell", "NoSuchCPU"], cache=cache)
    assert first["Haswell"]["isa"] == ["avx2"] and first["NoSuchCPU"] is None
    stored = json.loads(cache.read_text())["cpus"]
    assert set(stored) == {"Haswell"} and stored["Haswell"]["qemu"].startswith("qemu-x86_64 version")

    def plant(qemu_line, isa):
        data = json.loads(cache.read_text())
        data["cpus"]["Haswell"].update(qemu=qemu_line)
        data["cpus"]["Haswell"]["identity"]["isa"] = isa
        cache.write_text(json.dumps(data))

    plant(stored["Haswell"]["qemu"], ["kept"])  # same QEMU: the kept reading is used, QEMU not run
    assert emulation.emulated_identities(["Haswell"], cache=cache)["Haswell"]["isa"] == ["kept"]
    with monkeypatch.context() as m:  # a Slurm node without QEMU
        m.setattr(emulation.shutil, "which", lambda name: None)
        assert emulation.emulated_identities(["Haswell"], cache=cache)["Haswell"]["isa"] == ["kept"]
        assert emulation.emulated_identities(["Haswell"]) == {"Haswell": None}  # nothing kept, nothing known
        m.setattr(emulation, "_identity_code", lambda: "another reader")
        assert emulation.emulated_identities(["Haswell"], cache=cache) == {"Haswell": None}
    plant("qemu-x86_64 version 0.1", ["older qemu"])  # another QEMU: read again, and kept
    assert emulation.emulated_identities(["Haswell"], cache=cache)["Haswell"]["isa"] == ["avx2"]
    assert json.loads(cache.read_text())["cpus"]["Haswell"] == stored["Haswell"]
    cache.write_text("{")
    assert emulation.emulated_identities(["Haswell"], cache=cache)["Haswell"]["isa"] == ["avx2"]


def test_without_qemu_the_emulated_check_is_skipped_with_the_install_line(tmp_path, monkeypatch):
    """Where qemu-x86_64 is not installed the stage records SKIPPED with the command that installs
    it (the run goes on), and the report says so instead of a verdict."""
    from nnbridge.core.records import EmulatedVerifyRecord
    from nnbridge.core import emulation
    from nnbridge.predict import emulated
    from nnbridge.report.collect import FoldResults, RunResults
    from nnbridge.report.render import verdict
    from nnbridge.report.tables import emulated_table

    monkeypatch.setattr(emulation.shutil, "which", lambda name: None)
    monkeypatch.setattr(emulation.platform, "machine", lambda: "x86_64")
    record = EmulatedVerifyRecord.of(emulated.verify_emulated(tmp_path, "Haswell", threads=2))
    assert record.skipped == "qemu-x86_64 is not installed (Debian/Ubuntu: apt-get install qemu-user; make test installs it as root)"
    assert record.passed is None and not record.failed
    fold = FoldResults("d", "m", "0", emulated={"Haswell": record})
    (row,) = emulated_table(RunResults([fold])).rows
    assert row[1] == "Haswell" and str(row[-1]).startswith("SKIPPED: qemu-x86_64 is not installed")
    assert not verdict(RunResults([fold])).failed
    monkeypatch.setattr(emulation.platform, "machine", lambda: "aarch64")
    assert "needs an x86 machine (this one: aarch64)" in emulated.verify_emulated(tmp_path, "Haswell", threads=2)["skipped"]
