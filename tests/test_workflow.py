"""The real pipeline: snakemake on the embedded demo in a temporary copy of the project.

One run builds everything (2 folds trained by nnU-Net), then the rerun behaviour is checked:
nothing to do after a finished run; a quantization setting reruns only quantize and what
depends on it; an edit of the report code reruns only the report; a bad config fails fast
with a one-line cause.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

import yaml

from conftest import planned_jobs, run_snakemake, set_config
from nnbridge.runtime.ov import bf16_unavailable

ROOT = Path(__file__).resolve().parents[1]
FOLDS = ("0", "1")
MODEL = "Dataset900_NNBridgeDemo/nnBridgeDemoTrainer__nnBridgeDemoPlans__3d_fullres"
QUANTIZED = ("int8_static", "int8_accurate")  # int8_dynamic, fp16, int8_nncf: library tests (conftest.shorten)
BF16 = "bf16"  # the fp32 graph on OpenVINO in bf16: runs where the CPU has it, skipped elsewhere
IR = "int8_ir"  # INT8 by NNCF's OpenVINO backend, an OpenVINO IR (.xml + .bin): OpenVINO only
NATIVE_BF16 = bf16_unavailable() is None
PLAIN = {"demo_unet": "key 'model_state_dict', module. prefixes removed"}

# one xdist worker runs the demo pipeline and every test that uses it, in order
pytestmark = [pytest.mark.workflow]


@pytest.fixture(scope="module")
def workdir(demo_workdir: Path) -> Path:
    """The demo project after one full run (tests/conftest.py; shared with the Slurm tests)."""
    return demo_workdir


@pytest.fixture(scope="module")
def no_vnni_plan(workdir: Path) -> dict[str, int]:
    """The jobs a dry run plans when this CPU is taken for one without INT8 dot products
    (NNBRIDGE_NO_VNNI), on the finished run: one dry run for the tests that compare with it."""
    return planned_jobs(run_snakemake(workdir, "-n", env={"NNBRIDGE_NO_VNNI": "1"}))


def fold_dir(workdir: Path, fold: str) -> Path:
    return workdir / "results" / MODEL / f"fold_{fold}"


def test_demo_model_is_trained_by_nnunet(workdir):
    for fold in FOLDS:
        summary = json.loads((workdir / "resources/demo/nnUNet_results" / MODEL / f"fold_{fold}"
                              / "validation/summary.json").read_text())
        dice = {k: v["Dice"] for k, v in summary["mean"].items()}
        assert set(dice) == {"1", "2"}
        assert min(dice.values()) >= 0.8, dice  # the demo model has learned the task


def test_every_fold_has_all_artifacts_and_gates(workdir):
    """Every variant on the reference fold; the other fold gets the shipped ones (bundle.variants,
    comparison.folds: reference): no TorchScript export, no int8_static, no gate of the export
    that simplify replaces."""
    compared = ("export/model.ts", "quantize/int8_static.onnx", "quantize/int8_static.json")
    for fold in FOLDS:
        base = fold_dir(workdir, fold)
        is_reference = fold == FOLDS[0]
        quantized = QUANTIZED if is_reference else tuple(q for q in QUANTIZED if q != "int8_static")
        for artifact in ("export/model.onnx", "export/model.ts", "simplify/model.onnx",
                         *(f"quantize/{name}.onnx" for name in (*QUANTIZED, BF16)), f"quantize/{IR}.xml",
                         f"quantize/{IR}.bin"):
            if not is_reference and artifact in compared:
                assert not (base / artifact).exists(), artifact
                continue
            assert (base / artifact).stat().st_size > 1000, artifact
        export = json.loads((base / "export/export.json").read_text())
        assert export["weights"]["ok"] and export["checkpoint_weights"]["ok"]
        # the deployable graph computes every InstanceNormalization in two passes (conftest.shorten
        # lowers the threshold to the demo's patch); the quantizers took the fused graph
        norms = json.loads((base / "simplify/simplify.json").read_text())["norms"]
        fused = [n.op_type for n in onnx.load(str(base / "simplify/quantizable.onnx")).graph.node]
        assert norms["rewritten"] == fused.count("InstanceNormalization") > 0 and norms["weights"]["ok"], norms
        assert "InstanceNormalization" not in {n.op_type for n in onnx.load(str(base / "simplify/model.onnx")).graph.node}
        assert json.loads((base / f"quantize/{IR}.json").read_text())["converted_from"].endswith("simplify/quantizable.onnx")
        parity = json.loads((base / "validate/parity.json").read_text())
        variants = parity["variants"]
        onnx_variants = ("onnx_fp32", "onnx_simplified", *QUANTIZED) if is_reference else ("onnx_simplified", *quantized)
        assert set(variants) == {*(("torchscript",) if is_reference else ()), *onnx_variants,
                                 *(f"{n}@openvino" for n in (*onnx_variants, BF16, IR))}
        exact = ("torchscript", "onnx_fp32", "onnx_simplified", "onnx_fp32@openvino", "onnx_simplified@openvino")
        for name in exact if is_reference else ("onnx_simplified", "onnx_simplified@openvino"):
            assert variants[name]["passed"], (fold, name, variants[name])
        for name in quantized:  # gated either way, with numbers
            assert "passed" in variants[name] and variants[name]["dice"], (fold, name)
            record = json.loads((base / f"quantize/{name}.json").read_text())
            assert record["coverage"]["n_int8_compute_nodes"] > 0, (fold, name)
            assert record["coverage_openvino"]["n_compute_nodes"] > 0, (fold, name)
        # NNCF's OpenVINO backend: an IR (no ONNX Runtime coverage), gated on OpenVINO with numbers
        ir, ir_record = variants[f"{IR}@openvino"], json.loads((base / f"quantize/{IR}.json").read_text())
        assert (ir["kind"], ir["backend"]) == ("ir", "openvino") and ir["dice"], (fold, ir)
        coverage, control = ir_record["coverage_openvino"], ir_record["accuracy_control"]
        assert "coverage" not in ir_record and coverage["n_int8_compute_nodes"] > 0
        # on every CPU: INT8 runs, and what the accuracy control left in fp32 runs in fp32
        assert 0 < coverage["int8_flop_share"] <= 1
        assert set(control["fp32_modules"]) <= set(coverage["float_compute_nodes"]), (fold, control)
        # how much it keeps in fp32 is the control's per-run decision, so no share is asserted
        accurate = json.loads((base / "quantize/int8_accurate.json").read_text())
        loop = accurate["accuracy_aware"]
        if fold == FOLDS[0]:  # the reference fold searches
            assert loop["steps"] and loop["steps"][0]["fp32_modules"] == [] and "decided_on_fold" not in loop
            assert control["passed"] == (control["min_dice"] >= 1 - control["max_drop"])
            reference = accurate, ir_record
        else:  # the others start where its search ended, with no search of their own
            assert loop["decided_on_fold"] == str(FOLDS[0]) and loop["max_steps"] == 0, loop
            assert loop["fp32_modules"] == reference[0]["accuracy_aware"]["fp32_modules"]
            assert set(reference[0]["nodes_to_exclude"]) <= set(accurate["nodes_to_exclude"])
            assert all("trials" not in step for step in loop["steps"])
            assert control["decided_on_fold"] == str(FOLDS[0]) and control["evaluations"] == 0, control
            # nothing left to decide: not checked on the calibration patches (validate gates them
            # above); the ORT loop checks only where the asymmetric fallback may still decide
            assert control["passed"] is None and control["patches"] == 0, control
            kept = reference[0]["accuracy_aware"]["steps"][reference[0]["accuracy_aware"]["kept_step"]]
            assert (loop["passed"] is None) == (not kept["symmetric_activations"]
                                                or not loop["asymmetric_fallback"]), loop
            assert set(reference[1]["accuracy_control"]["fp32_nodes"]) <= set(ir_record["nodes_to_exclude"])
        bench = json.loads((base / "benchmark/benchmark.json").read_text())["results"]
        assert set(bench) == {"torch_eager", *variants}
        bf16, bf16_bench = variants[f"{BF16}@openvino"], bench.pop(f"{BF16}@openvino")
        bf16_record = json.loads((base / f"quantize/{BF16}.json").read_text())
        if NATIVE_BF16:  # gated like any variant, timed in bf16, every convolution in bf16
            assert bf16["passed"] and 0 < bf16["max_rel_err"] < 0.05, (fold, bf16)
            assert bf16_bench["inference_precision"] == "bf16" and bf16_bench["peak_kind"] == "bf16"
            assert bf16_record["coverage_openvino"]["bf16_flop_share"] > 0.9
        else:  # not runnable here: said so everywhere, never timed or gated as if it were fp32
            assert not bf16["passed"] and bf16["skipped"], (fold, bf16)
            assert set(bf16_bench) == {"backend", "skipped"}
            assert bf16_record["coverage_openvino"] is None
        assert all(r["p50_ms"] > 0 for r in bench.values()), bench


def test_bundle_and_whole_case_parity(workdir, tmp_path):
    """The bundle ships both folds of the configured variants; on the first fold's validation cases
    (case_parity.folds: first) nnbridge predict (no torch in the deployed path) agrees with
    nnUNetPredictor within the gate, and the command line gives the same labels as the pipeline's
    case-parity run."""
    import SimpleITK as sitk

    from nnbridge.predict.bundle import Bundle

    bundle_dir = workdir / "results" / MODEL / "bundle"
    bundle = Bundle.load(bundle_dir)
    assert bundle.folds == list(FOLDS)
    assert set(bundle.manifest["variants"]) == {"onnx_simplified", "int8_accurate", BF16, IR}
    ir = bundle.manifest["variants"][IR]  # shipped as .xml + .bin, gated and run on OpenVINO only
    assert ir["kind"] == "ir" and set(ir["weights"]) == set(FOLDS) and set(ir["gates"]["0"]) == {"openvino"}
    assert all((bundle_dir / ir["files"][f]).with_suffix(".bin") == bundle_dir / ir["weights"][f] for f in FOLDS)
    bf16 = bundle.manifest["variants"][BF16]
    assert bf16["inference_precision"] == "bf16" and set(bf16["gates"]["0"]) == {"openvino"}
    assert bf16["backend"] == ("openvino" if NATIVE_BF16 else None)
    assert bundle.manifest["mirror_axes"] == [0, 1, 2]
    shipped = bundle.manifest["variants"]["onnx_simplified"]
    assert shipped["passed"] and shipped["backend"] in ("onnxruntime", "openvino")
    assert not (fold_dir(workdir, FOLDS[1]) / "case_parity").exists()
    for fold in FOLDS[:1]:
        record = json.loads((fold_dir(workdir, fold) / "case_parity/case_parity.json").read_text())
        splits = json.loads((workdir / "resources/demo/nnUNet_preprocessed/Dataset900_NNBridgeDemo"
                             / "splits_final.json").read_text())
        assert record["cases"] == splits[int(fold)]["val"][:2]  # case_parity.max_cases (tests/conftest.py shorten)
        exact = record["variants"]["onnx_simplified"]
        assert exact["passed"] and exact["min_voxel_agreement"] >= 0.9999, exact
        for case in exact["cases"].values():
            assert case["preprocessed_max_abs_diff"] == 0.0
            assert min(case["dice_nnbridge_vs_truth"].values()) > 0.5
        assert "int8_accurate" in record["variants"]
        assert record["variants"][IR]["backend"] == "openvino" and "passed" in record["variants"][IR]
        whole = record["variants"][BF16]
        if NATIVE_BF16:
            assert whole["passed"] and whole["inference_precision"] == "bf16", whole
        else:
            assert whole["skipped"] and not whole["passed"]
        assert record["nnunet"]["total_s"] > 0 and exact["speedup_vs_nnunet"] > 0
    case = record["cases"][0]  # the fold's first validation case
    raw = workdir / "resources/demo/nnUNet_raw/Dataset900_NNBridgeDemo/imagesTr"
    (tmp_path / "in").mkdir()
    (tmp_path / "in" / f"{case}_0000.nii.gz").symlink_to(raw / f"{case}_0000.nii.gz")
    env = dict(os.environ, PYTHONPATH=str(workdir / "src"))
    proc = subprocess.run([sys.executable, "-m", "nnbridge.cli", "predict", "-i", str(tmp_path / "in"),
                           "-o", str(tmp_path / "out"), "-m", str(bundle_dir), "-f", FOLDS[0],
                           "--threads", "2"], env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "1 case(s)" in proc.stderr
    ours = sitk.GetArrayFromImage(sitk.ReadImage(str(tmp_path / "out" / f"{case}.nii.gz")))
    pipeline = fold_dir(workdir, FOLDS[0]) / "case_parity/onnx_simplified" / f"{case}.nii.gz"
    np.testing.assert_array_equal(ours, sitk.GetArrayFromImage(sitk.ReadImage(str(pipeline))))


def test_report_covers_both_folds(workdir):
    html = (workdir / "results/report.html").read_text()
    md = (workdir / "results/report.md").read_text()
    for fold in FOLDS:
        assert f"fold {fold}" in md
    for variant in ("torchscript", "onnx_fp32", "onnx_simplified", *QUANTIZED, "torch_eager"):
        assert variant in md
    assert "## INT8 and bf16 coverage" in md and "## Accuracy-aware INT8" in md
    if not NATIVE_BF16:
        assert "variant(s) SKIPPED, not runnable on this machine" in md
    assert "## Whole-case parity against nnU-Net's predictor" in md and "## Deployable bundle" in md
    assert "Model quality (nnU-Net validation)" in md and "weights verified" in md
    # the deployable graph's normalizations (conftest.shorten lowers the threshold to the demo's patch)
    assert re.search(r"\| ONNX simplified: normalization \| \d+ of \d+ InstanceNormalization as two-pass reductions", md)
    assert "data:image/png;base64," in html
    # the speed targets per model and at the realistic size (tiny here), with the measured peaks
    assert "## Speed targets" in md and "## Realistic-size benchmark" in md
    assert "| realistic nnU-Net, random weights (INT8: speed only, no gate) | 32x32x32 |" in md
    realistic = json.loads((workdir / "results/realistic/realistic.json").read_text())
    assert realistic["results"]["int8@openvino"]["peak_kind"] == "int8" and realistic["peak"]["int8_gops"] > 0
    # its millisecond patches are measured against the run's peaks (no peak kernel timed after them)
    assert {r.get("peak_source") for r in realistic["results"].values() if "pct_of_peak" in r} == {"run"}
    # one peak measurement per run: every benchmark's "% of peak" refers to the same numbers
    peak = json.loads((workdir / "results/machine/peak.json").read_text())
    assert peak["gflops"] > 0 and peak["machine"]["cpus"] >= 1
    records = [realistic] + [json.loads((fold_dir(workdir, fold) / "benchmark/benchmark.json").read_text())
                             for fold in FOLDS]
    for record in records:
        assert record["peak"] == {**peak, "source": "the run's peak measurement (machine_peak), same CPU"}
        assert record["machine"] == peak["machine"]
    summary = json.loads((workdir / "results/report/summary.json").read_text())
    for targets in summary["targets"].values():
        assert targets["best_fp32_exact"]["speedup"] > 0, targets  # an exact variant passed on every fold
    # first a card per model (what to deploy, how fast), then one pair of charts per model, then the
    # details; every contents link leads to a section of the page
    assert md.index("## What to deploy") < md.index("## Speed and accuracy: ") < md.index("## Overview")
    assert set(summary["deploy"]) == {f"Dataset900_NNBridgeDemo / {m}" for m in (MODEL.split("/")[1], *PLAIN)}
    for model, deploy in summary["deploy"].items():
        assert deploy["speedup_vs_torch_eager"] > 0 and 0.98 <= deploy["worst_dice_vs_torch"] <= 1, deploy
        assert f"### {model}\n\n**Deploy {deploy['variant']} on " in md
    charts = sorted(p.name for p in (workdir / "results/report/charts").glob("*.png"))
    assert len(charts) == 2 * len(summary["deploy"]) and all(f"](report/charts/{c})" in md for c in charts)
    ids = set(re.findall(r'id="([^"]+)"', html))
    links = re.findall(r'<a href="#([^"]+)"', html)
    assert links and set(links) <= ids and {"deployment", "details", "benchmark", "case-parity"} <= set(links)


def test_plain_pytorch_models_run_through_the_pipeline(workdir):
    """The demo's U-Net (DataParallel-style checkpoint) goes through export, INT8, parity and
    benchmark by configuration alone; no bundle (nnbridge predict reproduces nnUNetv2_predict,
    i.e. nnU-Net models)."""
    md = (workdir / "results/report.md").read_text()
    for name, origin in PLAIN.items():
        base = workdir / "results/Dataset900_NNBridgeDemo" / name / "fold_0"
        export = json.loads((base / "export/export.json").read_text())
        assert export["weights"]["ok"] and export["source"]["kind"] == "pytorch"
        assert export["source"]["weights_origin"] == f"state dict ({origin})"
        assert json.loads((base / "export/torchscript.json").read_text())["weights"]["ok"]
        variants = json.loads((base / "validate/parity.json").read_text())["variants"]
        assert set(variants) == {"torchscript", "onnx_fp32", "onnx_simplified", "int8_accurate",
                                 *(f"{n}@openvino" for n in ("onnx_fp32", "onnx_simplified", "int8_accurate", BF16))}
        for exact in ("torchscript", "onnx_fp32", "onnx_simplified", "onnx_simplified@openvino"):
            assert variants[exact]["passed"], (name, exact, variants[exact])
        assert set(variants["int8_accurate"]["dice"]) == {"sphere", "box"}
        bench = json.loads((base / "benchmark/benchmark.json").read_text())["results"]
        assert bench["torch_eager"]["p50_ms"] > 0 and bench["int8_accurate@openvino"]["p50_ms"] > 0
        assert not (base.parent / "bundle").exists()
        assert f"Dataset900_NNBridgeDemo / {name}" in md
    summary = json.loads((workdir / "resources/demo/pytorch/unet.json").read_text())
    assert summary["last_loss"] < summary["first_loss"] / 2  # it learned something


def test_finished_run_has_nothing_to_do(workdir):
    assert planned_jobs(run_snakemake(workdir, "-n")) == {}


def test_the_reference_folds_way_to_its_searches_is_scheduled_first(workdir):
    """Every other fold waits for the reference fold's accuracy searches (the longest jobs at real
    size): the jobs on their way carry a scheduling priority, the same jobs of fold 1 and the
    reference fold's entries that search nothing do not."""
    proc = run_snakemake(workdir, "-n", "--forcerun", "export_onnx")
    priorities = {}
    for block in (proc.stdout + proc.stderr).split("\n\n"):
        rule = re.search(r"^(?:local)?rule (\w+):", block, re.M)
        wildcards = re.search(r"wildcards: (.*)", block)
        if not rule or not wildcards or MODEL.split("/")[0] not in wildcards.group(1):
            continue
        fields = dict(item.split("=", 1) for item in wildcards.group(1).split(", "))
        priority = re.search(r"priority: (\d+)", block)
        key = (rule.group(1), fields.get("fold"), fields.get("qvariant") or fields.get("method"))
        priorities[key] = int(priority.group(1)) if priority else 0
    first = {k: v for k, v in priorities.items() if k[1] == "0"}
    assert first[("export_onnx", "0", None)] == first[("simplify", "0", None)] == 2, priorities
    assert first[("calibrate", "0", "MinMax")] == first[("quantize", "0", "int8_accurate")] == 2, priorities
    assert first[("quantize_ir", "0", IR)] == 2, priorities
    assert first[("quantize", "0", "int8_static")] == first[("validate", "0", None)] == 0, priorities
    assert {v for k, v in priorities.items() if k[1] == "1"} == {0}, priorities


def test_a_cpu_without_int8_dot_products_requantizes_only_what_it_decides(workdir, no_vnni_plan):
    """The quantize jobs' params hold the CPU features their left-out settings depend on: on a
    CPU that differs in them (NNBRIDGE_NO_VNNI where this one has VNNI/AMX-INT8) exactly the INT8
    entries that leave such a setting out are planned again, fp16 and bf16 are not."""
    from nnbridge.core.cpu import int8_dot

    config = yaml.safe_load((workdir / "config" / "config.yaml").read_text())
    jobs = no_vnni_plan
    if not int8_dot():  # a CPU without them already: forcing it changes nothing
        assert jobs == {}, jobs
        return
    shipped = set(config["bundle"]["variants"])

    def expected(methods):  # a model's first fold gets every entry; an nnU-Net model's others the shipped ones
        names = {n for n, q in config["quantize"].items() if q.get("method", "static") in methods}
        return sum(len(own := names & set(m.get("quantize") or config["quantize"]))
                   + (len(m.get("folds", [0])) - 1) * len(own & shipped) for m in config["models"])

    assert jobs.get("quantize") == expected(("static", "dynamic", "nncf")), jobs
    assert jobs.get("quantize_ir") == expected(("openvino_int8",)), jobs  # NNCF's overflow_fix, on OpenVINO
    assert set(jobs) <= {"quantize", "quantize_ir", "validate", "benchmark_artifact", "benchmark", "bundle",
                         "case_parity", "report", "all"}, jobs


def test_emulated_deployment_cpus_add_one_verify_job_per_bundle_and_cpu(workdir, no_vnni_plan):
    """verify.emulated_cpus plans `nnbridge verify` under QEMU once per bundled model and CPU model,
    after its bundle, and the report after it. The quantize defaults are decided for those CPUs
    too: on a host with VNNI, listing CPUs without it requantizes exactly what NNBRIDGE_NO_VNNI
    does; elsewhere (or without QEMU to read them) nothing else reruns. A name that is no CPU
    model pattern is refused by the config check in one line."""
    from nnbridge.core.cpu import int8_dot

    jobs = planned_jobs(run_snakemake(workdir, "-n", "--config", 'verify={"emulated_cpus": ["Haswell", "Broadwell"]}'))
    expected = {"verify_emulated": 2, "report": 1, "all": 1}  # one bundled model (the nnU-Net demo)
    if shutil.which("qemu-x86_64") and int8_dot():  # Haswell and Broadwell have no VNNI
        expected = {**no_vnni_plan, **expected}
        assert expected.get("quantize"), expected
    assert jobs == expected, jobs
    if shutil.which("qemu-x86_64"):  # read once, kept for the next parse (and each Slurm job's)
        kept = json.loads((workdir / ".snakemake/nnbridge/emulated_cpus.json").read_text())["cpus"]
        assert set(kept) == {"Haswell", "Broadwell"} and kept["Haswell"]["identity"]["isa"] == ["avx2"], kept
    bad = run_snakemake(workdir, "-n", "--config", 'verify={"emulated_cpus": ["Has well"]}', check=False)
    assert bad.returncode != 0 and "emulated_cpus" in bad.stdout + bad.stderr


def test_quantize_setting_reruns_only_quantize_and_dependents(workdir):
    set_config(workdir, lambda c: c["quantize"]["int8_static"].update(per_channel=False))
    jobs = planned_jobs(run_snakemake(workdir, "-n"))
    # int8_static is not shipped: only the reference fold has it (comparison.folds: reference)
    assert jobs.get("quantize") == 1 and jobs.get("benchmark_artifact") == 1, jobs  # timed once per model
    assert "calibrate" not in jobs, jobs  # the activation ranges do not depend on per_channel
    # no export, patches, reference logits or other artifact's timing; the bundle and the
    # whole-case parity read every fold's parity and benchmark verdicts
    assert set(jobs) <= {"quantize", "validate", "benchmark_artifact", "benchmark", "bundle", "case_parity",
                         "report", "all"}, jobs
    run_snakemake(workdir)
    record = json.loads((fold_dir(workdir, "0") / "quantize/int8_static.json").read_text())
    assert record["per_channel"] is False
    # from the first run's calibration ranges (rule calibrate did not run again)
    assert record["calibration"]["ranges"].endswith("quantize/calibration/MinMax.json"), record["calibration"]
    # validation ran only the changed variant again: the others' results were reused
    parity = json.loads((fold_dir(workdir, "0") / "validate/parity.json").read_text())["variants"]
    rerun = {name for name, result in parity.items() if not result.get("from_cache")}
    assert rerun == {"int8_static", "int8_static@openvino"}, rerun
    # whole cases: int8_static is not bundled, so neither nnU-Net nor a bundled variant predicted again
    cases = json.loads((fold_dir(workdir, "0") / "case_parity/case_parity.json").read_text())
    assert cases["nnunet"].get("from_cache") and all(v.get("from_cache") or v.get("skipped")
                                                     for v in cases["variants"].values()), cases["variants"]
    assert planned_jobs(run_snakemake(workdir, "-n")) == {}


def test_a_flipped_setting_reruns_its_rule_beside_params_of_the_same_values(workdir):
    """case_parity's params hold True (mirroring) and False (trusted) besides compare_failed:
    snakemake alone, comparing the set of values, saw no change when it flipped and kept the
    old result (pipeline.params.named)."""
    config_file = workdir / "config" / "config.yaml"
    saved = config_file.read_text()
    try:
        set_config(workdir, lambda c: c["case_parity"].update(compare_failed=not c["case_parity"]["compare_failed"]))
        jobs = planned_jobs(run_snakemake(workdir, "-n"))
    finally:
        config_file.write_text(saved)
    assert set(jobs) == {"case_parity", "report", "all"}, jobs
    assert planned_jobs(run_snakemake(workdir, "-n")) == {}


def test_report_code_edit_reruns_only_report(workdir):
    # the report's code: its modules, and the templates it renders (not imported, but run)
    for edited in ("src/nnbridge/report/render.py", "src/nnbridge/report/templates/report.html.j2"):
        path = workdir / edited
        saved = path.read_text()
        path.write_text(saved + "\n")
        jobs = planned_jobs(run_snakemake(workdir, "-n"))
        assert set(jobs) == {"report", "all"}, (edited, jobs)
        path.write_text(saved)


def test_code_edits_rerun_exactly_the_stages_that_import_them(workdir):
    """A stage's cache key is its script's import closure: an edit deep in core (ONNX graph facts:
    FLOPs, tensor shapes, module names, signatures) reruns simplify (its normalization rewrite
    reads the shapes), quantize, the benchmarks and the peak (and what reads them), never export,
    patches or the PyTorch reference."""
    graph = workdir / "src/nnbridge/core/onnxgraph.py"
    saved = graph.read_text()
    graph.write_text(saved + "\n# edited\n")
    try:
        jobs = set(planned_jobs(run_snakemake(workdir, "-n")))
    finally:
        graph.write_text(saved)
    assert {"simplify", "quantize", "quantize_ir", "benchmark_artifact", "benchmark", "machine_peak",
            "realistic_benchmark"} <= jobs, jobs
    assert not jobs & {"export_onnx", "export_torchscript", "patches", "reference", "demo_train"}, jobs
    assert planned_jobs(run_snakemake(workdir, "-n")) == {}


def test_comparison_on_every_fold_plans_the_compared_variants_there_too(workdir):
    """comparison.folds: all gives the other fold the variants the bundle does not ship (its
    TorchScript export, int8_static) and the validation that gates them; planned, not run (the
    reference fold ran them). Nothing upstream of them runs again."""
    config_file = workdir / "config" / "config.yaml"
    saved = config_file.read_text()
    try:
        set_config(workdir, lambda c: c.update(comparison={"folds": "all"}))
        jobs = planned_jobs(run_snakemake(workdir, "-n"))
    finally:
        config_file.write_text(saved)
    assert jobs.get("export_torchscript") == 1 and jobs.get("quantize") == 1 and "validate" in jobs, jobs
    assert not set(jobs) & {"export_onnx", "simplify", "calibrate", "reference", "patches"}, jobs
    assert planned_jobs(run_snakemake(workdir, "-n")) == {}


def test_quantizers_take_the_fused_graph_and_an_exact_ir_the_deployable_one(workdir):
    """The two-pass normalization (nnbridge.export.norms) is for the exact variants: an
    openvino_fp32 entry (the fp32 graph as IR) is converted from simplify's deployable graph, the
    INT8 entries and the calibration from its fused one. Planned, not run."""
    config_file = workdir / "config" / "config.yaml"
    saved = config_file.read_text()
    try:
        set_config(workdir, lambda c: c["quantize"].update(ir32={"method": "openvino_fp32"}))
        proc = run_snakemake(workdir, "-n", "--forcerun", "quantize_ir", "calibrate")
    finally:
        config_file.write_text(saved)
    sources = {}
    for block in re.findall(r"^rule (quantize_ir|calibrate):\n(.*?)(?:\n\n|\Z)", proc.stdout + proc.stderr, re.M | re.S):
        variant = re.search(r"(?:qvariant|method)=(\w+)", block[1]).group(1)
        onnx_inputs = [p for p in re.search(r"input: (.*)", block[1]).group(1).split(", ") if p.endswith(".onnx")]
        sources.setdefault(variant, set()).update(Path(p).name for p in onnx_inputs)
    assert sources == {"ir32": {"model.onnx"}, IR: {"quantizable.onnx"}, "MinMax": {"quantizable.onnx"}}, sources


def test_keep_going_finishes_the_other_models(workdir):
    """A truncated plain checkpoint and an nnU-Net fold whose checkpoint is corrupt fail with a
    one-line cause naming the file; with --keep-going the good model and fold still finish."""
    config_file = workdir / "config" / "config.yaml"
    saved = config_file.read_text()
    pytorch_dir = workdir / "resources/demo/pytorch"
    (pytorch_dir / "cut.pth").write_bytes((pytorch_dir / "unet.pth").read_bytes()[:4000])
    shutil.copy(pytorch_dir / "unet.pth", pytorch_dir / "copy.pth")
    demo_folder = workdir / "resources/demo/nnUNet_results" / MODEL
    broken = workdir / "resources/broken/Dataset950_Broken" / demo_folder.name
    shutil.copytree(demo_folder, broken)
    (broken / "fold_1/checkpoint_final.pth").write_bytes(b"not a checkpoint")

    def add_models(config):
        unet = next(m for m in config["models"] if m.get("name") == "demo_unet")
        config["models"] += [
            {**unet, "name": "cut", "checkpoint": "resources/demo/pytorch/cut.pth"},
            {**unet, "name": "copy", "checkpoint": "resources/demo/pytorch/copy.pth"},
            {"folder": str(broken.relative_to(workdir)), "folds": [0, 1],
             "preprocessed": config["models"][0]["preprocessed"]},
        ]

    try:
        set_config(workdir, add_models)
        targets = [f"results/Dataset900_NNBridgeDemo/{m}/fold_0/export/export.json" for m in ("cut", "copy")]
        targets += [f"results/Dataset950_Broken/{broken.name}/fold_{f}/export/export.json" for f in FOLDS]
        proc = run_snakemake(workdir, "--keep-going", *targets, check=False)
        assert proc.returncode != 0
        # the cause is on the console too, one line per failed job
        assert "nnbridge error: resources/demo/pytorch/cut.pth: not a torch checkpoint" in proc.stderr
        assert (workdir / targets[1]).is_file() and (workdir / targets[2]).is_file()
        assert not (workdir / targets[0]).exists() and not (workdir / targets[3]).exists()
        log = (workdir / "logs/Dataset900_NNBridgeDemo/cut/fold_0/export_onnx.log").read_text()
        assert "cut.pth: not a torch checkpoint (corrupt or truncated file); re-copy it" in log
        log = (workdir / f"logs/Dataset950_Broken/{broken.name}/fold_1/export_onnx.log").read_text()
        assert "fold_1/checkpoint_final.pth: not a torch checkpoint (corrupt or truncated file)" in log
    finally:
        config_file.write_text(saved)


def test_bad_config_fails_with_one_line_cause(workdir):
    set_config(workdir, lambda c: c["export"].update(opsett=17))
    proc = run_snakemake(workdir, "-n", check=False)
    assert proc.returncode != 0
    text = proc.stdout + proc.stderr
    assert "config: invalid value at export: Additional properties are not allowed ('opsett'" in text
