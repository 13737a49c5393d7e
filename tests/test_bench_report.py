"""Benchmarks in separate processes and the report built from stage records."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest

from nnbridge.bench.artifact import benchmark_artifact, reuse_same_graph
from nnbridge.bench.fold import benchmark_fold
from nnbridge.bench.peak import peak_mismatch
from nnbridge.bench.sweep import MIN_GAIN, ORT_CANDIDATES
from nnbridge.core.cpu import cpu_identity
from nnbridge.core.records import (
    BenchmarkRecord,
    BundleManifest,
    CaseParityRecord,
    ExportRecord,
    ParityRecord,
    QuantizeRecord,
    RealisticRecord,
    SimplifyRecord,
)
from nnbridge.core.runlog import write_json
from nnbridge.models.nnunet import nnunet_source
from nnbridge.report.render import build_report


def test_benchmark_fold_measures_each_backend(tiny_model, exported, machine_peak, tmp_path):
    """Each artifact timed once on the reference fold (its own processes, ORT settings searched,
    the sweep), then a fold's record assembled from them: a fold with the same graphs reuses the
    numbers, one whose graph differs is timed itself."""
    out, _, _ = exported
    source = nnunet_source(tiny_model.model_folder, "0", tiny_model.checkpoint)
    fp32 = str(out / "model.onnx")
    variants = {"onnx_fp32": {"kind": "onnx", "path": fp32, "backend": "onnxruntime"},
                "torchscript": {"kind": "torchscript", "path": str(out / "model.ts"), "backend": "torchscript"},
                "onnx_fp32@openvino": {"kind": "onnx", "path": fp32, "backend": "openvino"}}
    stop = {"min_repeats": 3, "budget_s": 5, "rel_ci": 0.05}
    # the run's peak (rule machine_peak's); a record that does not fit this job (fold 1 below)
    # makes the job measure its own
    peak = machine_peak
    timing = dict(threads=2, warmup=1, repeats=3, stop=stop, peak=peak)
    artifacts = {
        "torch_eager": benchmark_artifact("torch_eager", source, {}, fp32, **timing),
        "torchscript": benchmark_artifact("torchscript", source, {"torchscript": variants["torchscript"]}, fp32,
                                          tune=("torchscript",), **timing),
        "onnx_fp32": benchmark_artifact("onnx_fp32", source, {k: v for k, v in variants.items() if "fp32" in k},
                                        fp32, tune=("onnx_fp32",), sweep_keys=("onnx_fp32", "nope"), **timing),
        "missing": benchmark_artifact("missing", source, {"missing": {"kind": "onnx", "path": str(out / "nope.onnx")}},
                                      fp32, **timing),
    }
    assert "error" in artifacts["missing"]["results"]["missing"]
    del artifacts["missing"]
    # the ONNX Runtime session search: every candidate timed, the choice used by the timed run;
    # only ONNX Runtime variants are tuned
    assert artifacts["torchscript"]["tuning"] == {} and list(artifacts["onnx_fp32"]["tuning"]) == ["onnx_fp32"]
    tuning = artifacts["onnx_fp32"]["tuning"]["onnx_fp32"]
    assert [c["settings"] for c in tuning["candidates"]] == list(ORT_CANDIDATES)
    assert all(c["p50_ms"] > 0 for c in tuning["candidates"]), tuning
    best = min(c["p50_ms"] for c in tuning["candidates"])
    default = tuning["candidates"][0]["p50_ms"]
    assert tuning["chosen"] in ORT_CANDIDATES and (tuning["chosen"] == {} or best < default * (1 - MIN_GAIN))

    record = benchmark_fold(source, variants, artifacts, **timing)
    results = record["results"]
    assert set(record["timed_on"].values()) == {"this fold"}  # the reference fold itself
    assert results["onnx_fp32"]["ort_settings"] == tuning["chosen"]
    assert results["onnx_fp32@openvino"]["backend"] == "openvino"
    # where the time goes: convolutions dominate a U-Net on both runtimes
    assert results["onnx_fp32"]["op_profile"][0]["op"] == "Conv"
    assert results["onnx_fp32@openvino"]["op_profile"][0]["op"].startswith("Convolution [")
    assert 0.5 < sum(o["share"] for o in results["onnx_fp32"]["op_profile"]) <= 1.0001
    assert "op_profile" not in results["torch_eager"]
    # the sweep: each thread count and a batch of 2, for the variants that exist
    sweep = record["sweep"]
    assert sweep["threads"] == [1, 2] and list(sweep["results"]) == ["onnx_fp32"]
    row = sweep["results"]["onnx_fp32"]
    assert set(row["p50_ms_by_threads"]) == {"1", "2"} and all(v > 0 for v in row["p50_ms_by_threads"].values())
    assert row["p50_ms_per_patch_at_batch"] > 0
    # at the benchmark's own threads and batch 1 the sweep takes the artifact's timing, not a second one
    assert row["p50_ms_by_threads"]["2"] == artifacts["onnx_fp32"]["results"]["onnx_fp32"]["p50_ms"]
    assert set(row["p50_from"]) == {"2"}
    for name in ("torch_eager", "onnx_fp32", "torchscript", "onnx_fp32@openvino"):
        r = results[name]
        assert r["p50_ms"] > 0 and r["p99_ms"] >= r["p90_ms"] >= r["p50_ms"], r
        assert r["peak_rss_mb"] >= r["rss_after_imports_mb"] > 0
        # timing stops by the rule: between 3 and 3 runs here, and says why
        assert r["repeats"] == 3 and r["stopped"], r
        assert r["p50_ci_ms"][0] <= r["p50_ms"] <= r["p50_ci_ms"][1]
    assert results["torch_eager"]["speedup_vs_torch_eager"] == 1.0
    assert results["onnx_fp32"]["file_size_bytes"] > 0
    # throughput: FLOPs of the patch from the graph, the machine's peak measured alongside
    assert record["flops_per_patch"] > 0 and record["peak"]["gflops"] == peak["gflops"] > 1, record["peak"]
    assert record["peak"]["source"] == "the run's peak measurement (machine_peak), same CPU"
    for name in ("torch_eager", "onnx_fp32"):
        r = results[name]
        assert r["gflops_per_s"] == pytest.approx(record["flops_per_patch"] / r["p50_ms"] / 1e6, rel=0.01)
        assert r["pct_of_peak"] > 0  # no upper bound: the peak is measured under the same load
    # GPU backends are listed with the reason they are skipped (this machine has no GPU)
    assert set(record["accelerators"]) == {"onnxruntime CUDA", "onnxruntime TensorRT", "openvino GPU", "torch CUDA"}
    if not list(Path("/dev").glob("nvidia[0-9]*")):
        assert all(v.startswith("skipped: ") for v in record["accelerators"].values()), record["accelerators"]
    # each child measures its own memory: ONNX Runtime never imports torch, so its peak is
    # far below the torch baseline's (Linux's ru_maxrss would report the parent's peak)
    assert results["onnx_fp32"]["peak_rss_mb"] < 0.7 * results["torch_eager"]["peak_rss_mb"], results

    # another fold: the same graphs take the reference fold's numbers; a graph that differs
    # (here: the fp32 file with one extra node) is timed for this fold, with the tuned settings
    other = onnx.load(fp32)
    last = other.graph.output[0].name
    other.graph.node.append(onnx.helper.make_node("Identity", [last], [last + "_id"]))
    other.graph.output[0].name = last + "_id"
    onnx.save(other, str(tmp_path / "other.onnx"))
    fold1 = {**variants, "onnx_fp32@openvino": {**variants["onnx_fp32@openvino"], "path": str(tmp_path / "other.onnx")}}
    record1 = benchmark_fold({**source, "fold": "1"}, fold1, artifacts, **{**timing, "peak": {**peak, "threads": 1}})
    assert record1["peak"]["source"] == "measured here: the run-wide peak used 1 thread(s), this job 2"
    assert record1["timed_on"]["onnx_fp32"] == record1["timed_on"]["torch_eager"] == "fold 0 (the same graph)"
    assert record1["timed_on"]["onnx_fp32@openvino"] == "this fold (its graph differs from fold 0's)"
    assert record1["results"]["onnx_fp32"]["p50_ms"] == results["onnx_fp32"]["p50_ms"]
    assert record1["results"]["onnx_fp32@openvino"]["p50_ms"] != results["onnx_fp32@openvino"]["p50_ms"]
    assert record1["results"]["onnx_fp32@openvino"]["speedup_vs_torch_eager"] > 0

    # an artifact whose graph is another's takes its numbers, not timed again: here a copy of
    # the fp32 file with other weight values (onnx_fp32 when simplifying changed nothing)
    copy = onnx.load(fp32)
    weight = max(copy.graph.initializer, key=lambda t: int(np.prod(t.dims)))
    weight.CopyFrom(onnx.numpy_helper.from_array(onnx.numpy_helper.to_array(weight) * 0.5, weight.name))
    onnx.save(copy, str(tmp_path / "copy.onnx"))
    same = {"onnx_copy": {"kind": "onnx", "path": str(tmp_path / "copy.onnx"), "backend": "onnxruntime"},
            "onnx_copy@openvino": {"kind": "onnx", "path": str(tmp_path / "copy.onnx"), "backend": "openvino"}}
    fp32_record = artifacts["onnx_fp32"]
    reused = benchmark_artifact("onnx_copy", source, same, fp32, tune=("onnx_copy",), sweep_keys=("onnx_copy",),
                                same_graph=fp32_record, **timing)
    assert reused["reused"].startswith("the same graph as onnx_fp32 (signature ")
    for key, theirs in (("onnx_copy", "onnx_fp32"), ("onnx_copy@openvino", "onnx_fp32@openvino")):
        assert reused["results"][key]["p50_ms"] == fp32_record["results"][theirs]["p50_ms"]
        assert reused["results"][key]["timed_as"] == theirs
    assert reused["tuning"]["onnx_copy"] == fp32_record["tuning"]["onnx_fp32"]
    assert list(reused["sweep"]["results"]) == ["onnx_copy"]
    fold_record = benchmark_fold(source, {**variants, **same}, {**artifacts, "onnx_copy": reused}, **timing)
    assert fold_record["timed_on"]["onnx_copy@openvino"] == "this fold, as onnx_fp32@openvino (the same graph)"
    # ... and is timed itself where the other artifact's numbers would not be its own
    other_graph = {k: {**v, "path": str(tmp_path / "other.onnx")} for k, v in same.items()}
    assert reuse_same_graph("onnx_copy", other_graph, fp32_record, threads=2) == "its graph differs from onnx_fp32's"
    assert reuse_same_graph("onnx_copy", same, fp32_record, threads=1) == (
        "onnx_fp32 has no timing of onnx_fp32 at 1 thread(s)")
    assert reuse_same_graph("onnx_copy", same, fp32_record, threads=2, sweep_keys=("onnx_copy@openvino",)) == (
        "onnx_fp32 had no thread/batch sweep of onnx_fp32@openvino")
    assert reuse_same_graph("onnx_copy", same, artifacts["torchscript"], threads=2, tune=("onnx_copy",)).startswith(
        "its graph differs")


def _records(tmp_path: Path) -> list[dict]:
    base = tmp_path / "D/T__P__3d_fullres/fold_0"
    ExportRecord.of({"weights": {"summary": "weights verified: 10 tensors"},
                     "shape_checks": [{"shape": [1, 1, 8, 8, 8], "max_abs_err": 1e-6}]}).write(base / "export.json")
    SimplifyRecord.of({"kept_simplified": True, "nodes_before": 5, "nodes_after": 4,
                       "check_max_abs_err": 0.0}).write(base / "simplify.json")
    QuantizeRecord.of({
        "method": "static", "format": "QDQ", "per_channel": True, "calibrate_method": "MinMax",
        "n_calibration_patches": 4, "size_bytes": 1000,
        "coverage": {"n_compute_nodes": 4, "n_int8_compute_nodes": 3, "int8_flop_share": 0.9512,
                     "float_compute_nodes": ["decoder.transpconvs.0"], "n_conversions": 7,
                     "ops": [{"op": "QLinearConv", "precision": "int8", "count": 3},
                             {"op": "ConvTranspose", "precision": "float", "count": 1},
                             {"op": "QuantizeLinear", "precision": "conversion", "count": 7}]},
        "accuracy_aware": {"fp32_latency_ms": 4.0, "verdict": "Dice 0.9950 >= 0.995 with 1 block(s) in fp32",
                           "steps": [{"step": 0, "fp32_modules": [], "dice": {"sphere": 0.97}, "latency_ms": 3.0},
                                     {"step": 1, "fp32_modules": ["decoder.seg_layers.2"],
                                      "dice": {"sphere": 0.995}, "latency_ms": 3.5}]}}).write(base / "q.json")
    ParityRecord.of({"labels": {"0": "background", "1": "sphere"}, "variants": {
        "onnx_fp32": {"passed": True, "max_abs_err": 1e-6, "mean_abs_err": 1e-7,
                      "dice": {"sphere": 1.0}, "voxel_agreement": 1.0, "failures": []},
        "int8_static": {"passed": False, "max_abs_err": 0.3, "mean_abs_err": 0.01,
                        "dice": {"sphere": 0.97}, "voxel_agreement": 0.99,
                        "failures": ["Dice of sphere 0.9700 < 0.99"]}}}).write(base / "parity.json")
    BenchmarkRecord.of({"shape": [1, 1, 8, 8, 8], "results": {
        "torch_eager": {"p50_ms": 10.0, "p90_ms": 11.0, "peak_rss_mb": 300.0,
                        "speedup_vs_torch_eager": 1.0},
        "onnx_fp32": {"p50_ms": 5.0, "p90_ms": 6.0, "peak_rss_mb": 100.0, "file_size_bytes": 2e6,
                      "speedup_vs_torch_eager": 2.0, "gflops_per_s": 40.0, "pct_of_peak": 25.0,
                      "backend": "onnxruntime",
                      "op_profile": [{"op": "Conv", "ms_per_run": 4.5, "share": 0.9},
                                     {"op": "InstanceNormalization", "ms_per_run": 0.5, "share": 0.1}]}},
        "flops_per_patch": 200000000,
        "sweep": {"threads": [1, 2], "batch": 2, "results": {
            "onnx_fp32": {"p50_ms_by_threads": {"1": 9.0, "2": 5.0}, "p50_ms_per_patch_at_batch": 4.0}}},
        "peak": {"gflops": 160.0, "threads": 2, "method": "fp32 matrix multiply 2048x2048x2048 (torch.mm), p50 of 10",
                 "source": "measured here: the run-wide peak used 1 thread(s), this job 2"},
        "machine": {"cpu": "Example CPU", "isa": ["avx2", "avx512f"], "cpus": 2, "host": "node7"},
        "accelerators": {"onnxruntime CUDA": "skipped: no GPU"}}).write(base / "bench.json")
    write_json(base / "summary.json", {"mean": {"1": {"Dice": 0.91}}, "foreground_mean": {"Dice": 0.91}})
    return [{"dataset": "D", "model": "T__P__3d_fullres", "fold": "0",
             "export": str(base / "export.json"), "torchscript": None,
             "simplify": str(base / "simplify.json"), "quantize": {"int8_static": str(base / "q.json")},
             "parity": str(base / "parity.json"), "benchmark": str(base / "bench.json"),
             "validation_summary": str(base / "summary.json")}]


def _build(entries: list[dict], out: Path, **kwargs) -> tuple[str, str]:
    build_report(entries, md_path=out / "report.md", html_path=out / "report.html", charts_dir=out / "report/charts",
                 summary_path=out / "report/summary.json", **kwargs)
    return (out / "report.md").read_text(), (out / "report.html").read_text()


@pytest.mark.skipif(bool(list(Path("/dev").glob("nvidia[0-9]*"))), reason="this machine has an NVIDIA GPU")
def test_gpu_status_without_a_gpu_does_not_import_torch():
    """Every fold benchmark states why the GPU backends are skipped: without the NVIDIA driver's
    device files it says so without importing torch (~1.5 s per job in the serial benchmark tail)."""
    code = ("import sys; from nnbridge.bench.accelerators import accelerator_status; "
            "s = accelerator_status(); print(s['torch CUDA']); print('torch' in sys.modules)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    status, imported = proc.stdout.split("\n")[:2]
    assert status == "skipped: no NVIDIA GPU on this machine (no /dev/nvidia*)", proc.stdout
    assert imported == "False", proc.stdout


def test_report_shows_gates_numbers_and_plot(tmp_path):
    entries = _records(tmp_path)
    out = tmp_path / "out"
    md, html = _build(entries, out)
    # the verdict: one line per failure, with its cause
    assert "**1 variant(s) FAILED their gate:**\n- fold 0: int8_static — Dice of sphere 0.9700 < 0.99\n" in md
    # the card: the fastest variant that passed its gate, its speed-up and Dice
    assert "**Deploy onnx_fp32 on ONNX Runtime** (1 fold(s): 0)" in md
    assert "| speed-up | **2.0× faster than PyTorch eager** — 5.0 ms vs 10.0 ms per 8×8×8 patch" in md
    assert "| worst-class Dice vs PyTorch | **1.0000** — label maps on held-out patches; passed on 1/1" in md
    assert "| file size | **2.00 MB** |" in md
    assert "weights verified: 10 tensors" in md
    assert "0.9100" in md  # the model's own validation Dice
    assert "| 3/4 | 95.1 % |" in md  # INT8 coverage: compute nodes and FLOP share
    assert "| int8_static | onnxruntime | 95.1 % INT8 | QLinearConv×3 |" in md
    assert "QLinearConv×3" in md and "ConvTranspose×1" in md and "decoder.transpconvs.0" in md
    assert "| step 1 | decoder.seg_layers.2 | sphere 0.9950 |" in md
    assert "A patch costs 0.20 GFLOP" in md and "is 160 GFLOP/s" in md
    # where the benchmarks ran (the job's machine, not the report's), and a peak not the run's
    assert "Benchmarks ran on Example CPU (2 CPUs; avx2, avx512f; host node7)." in md
    assert "(measured here: the run-wide peak used 1 thread(s), this job 2)" in md
    assert "GPU backends: onnxruntime CUDA: skipped: no GPU." in md
    assert "| 40.0 | 25.0 (fp32) |" in md  # GFLOP/s and % of peak of onnx_fp32
    # speed targets: onnx_fp32 passed its gate at 2× torch eager; the INT8 variant failed its gate
    assert ("| D / T__P__3d_fullres | 8x8x8 | 10.000 | onnx_fp32 2.00× | met (≥ 2×) | none passed its gate "
            "| missed (< 3×) | – |") in md
    assert "| onnx_fp32 | onnxruntime | Conv 90 %, InstanceNormalization 10 % |" in md
    assert "| fold 0 | onnx_fp32 | 9.000 | 5.000 | 1.80× | 4.000 |" in md  # threads and batch
    assert "| 2.000 |" in md or "2.000" in md  # speed-up of onnx_fp32
    assert "data:image/png;base64," in html and 'class="fail"' in html
    charts = sorted(p.name for p in (out / "report/charts").iterdir())
    assert charts == ["d-t-p-3d-fullres-dice.png", "d-t-p-3d-fullres-speed-accuracy.png"]
    for chart in charts:
        assert (out / "report/charts" / chart).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
        assert f"](report/charts/{chart})" in md
    summary = json.loads((out / "report/summary.json").read_text())
    assert summary["folds"][0]["variants"]["int8_static"]["passed"] is False
    assert summary["folds"][0]["validation_dice"] == {"1": 0.91}


def test_onnx_session_applies_tuned_settings(exported):
    from nnbridge.runtime.ort import onnx_session

    out, _, _ = exported
    session = onnx_session(out / "model.onnx", 2, settings={"allow_spinning": False, "mem_pattern": False,
                                                           "cpu_arena": False, "optimization": "ORT_ENABLE_BASIC",
                                                           "execution_mode": "ORT_PARALLEL", "io_binding": True})
    options = session.get_session_options()
    assert options.get_session_config_entry("session.intra_op.allow_spinning") == "0"
    assert not options.enable_mem_pattern and not options.enable_cpu_mem_arena
    assert str(options.graph_optimization_level).endswith("ORT_ENABLE_BASIC")
    assert str(options.execution_mode).endswith("ORT_PARALLEL") and options.inter_op_num_threads == 2
    with pytest.raises(ValueError, match="unknown ONNX Runtime settings"):
        onnx_session(out / "model.onnx", 2, settings={"spin": True})
    with pytest.raises(ValueError, match="execution_mode='PARALLEL' is not one of"):
        onnx_session(out / "model.onnx", 2, settings={"execution_mode": "PARALLEL"})


def test_spinning_follows_the_environment_unless_the_settings_choose(exported, monkeypatch):
    from nnbridge.runtime.ort import SPINNING_ENV, onnx_session

    model = exported[0] / "model.onnx"

    def spinning(**settings):
        options = onnx_session(model, 2, settings=settings).get_session_options()
        try:
            return options.get_session_config_entry("session.intra_op.allow_spinning")
        except Exception:  # noqa: BLE001 - ONNX Runtime raises for an entry never set
            return None

    monkeypatch.setenv(SPINNING_ENV, "0")  # as tests/conftest.py sets it
    assert spinning() == "0" and spinning(allow_spinning=True) == "1"
    monkeypatch.setenv(SPINNING_ENV, "1")
    assert spinning() == "1" and spinning(allow_spinning=False) == "0"
    monkeypatch.delenv(SPINNING_ENV)
    assert spinning() is None  # ONNX Runtime's default


def test_io_binding_gives_the_numbers_of_plain_runs(exported, loaded_fold):
    """The IO-binding runner (a tuning candidate, used by the benchmark and nnbridge predict)
    returns exactly what session.run does, also when the batch shrinks between calls (the last
    windows of a case) and for mirrored, non-contiguous windows."""
    from nnbridge.bench.measure import _load_runner
    from nnbridge.runtime.ort import onnx_session, ort_runner

    assert {"io_binding": True} in ORT_CANDIDATES
    out, _, _ = exported
    session = onnx_session(out / "model.onnx", 2, settings={"io_binding": True})
    plain, bound = ort_runner(session), ort_runner(session, {"io_binding": True})
    assert (plain.__name__, bound.__name__) == ("<lambda>", "run_bound")
    x = np.random.default_rng(0).standard_normal((2, *loaded_fold.input_shape[1:])).astype(np.float32)
    for batch in (x, x[:1], np.flip(x[1:], axis=2), x):
        np.testing.assert_array_equal(bound(batch), plain(np.ascontiguousarray(batch)))
    spec = {"backend": "onnxruntime", "path": str(out / "model.onnx"), "settings": {"io_binding": True}}
    assert _load_runner(spec, 1, x.shape).__name__ == "run_bound"  # the benchmark times the bound run


def test_report_shows_case_parity_bundle_tuning_and_realistic(tmp_path):
    from nnbridge.bench.realistic import compute_targets

    entries = _records(tmp_path)
    base = tmp_path / "D/T__P__3d_fullres/fold_0"
    bench = json.loads((base / "bench.json").read_text())
    bench["tuning"] = {"onnx_fp32": {"chosen": {"allow_spinning": False}, "gain_vs_default": 1.1, "candidates": [
        {"settings": {}, "p50_ms": 11.0}, {"settings": {"allow_spinning": False}, "p50_ms": 10.0}]}}
    BenchmarkRecord.of(bench).write(base / "bench.json")
    case = {"preprocessed_max_abs_diff": 0.0, "logits_max_abs_diff": 0.03, "logits_argmax_agreement": 1.0,
            "voxel_agreement": 0.99, "dice_vs_nnunet": {"1": 0.98}, "min_dice_vs_nnunet": 0.98,
            "prob_max_abs_diff": 0.001, "dice_nnunet_vs_truth": {"1": 0.9}, "dice_nnbridge_vs_truth": {"1": 0.89},
            "diverges_at": "final labels", "passed": False}
    stages = {"read": 0.1, "preprocess": 0.2, "inference": 3.0, "resample_back": 0.1, "write": 0.1}
    CaseParityRecord.of({
        "fold": "0", "cases": ["c1"], "classes": [1], "nnunet": {"timings_s": stages, "total_s": 3.5},
        "variants": {"onnx_simplified": {"backend": "openvino", "cases": {"c1": case}, "timings_s": stages,
                                         "total_s": 0.5, "speedup_vs_nnunet": 7.0, "min_voxel_agreement": 0.99,
                                         "min_dice_vs_nnunet": 0.98, "passed": False,
                                         "first_divergence": "c1: final labels"}}, "all_passed": False}).write(
        base / "case_parity.json")
    BundleManifest.of({"default_variant": "onnx_simplified", "folds": ["0"], "variants": {
        "onnx_simplified": {"backend": "openvino", "latency_ms": {"onnxruntime": 20.0, "openvino": 12.0},
                            "ort_settings": {"allow_spinning": False},
                            "run_settings": {"openvino": {"threads": 2, "batch_size": 1}}}}}).write(base / "bundle.json")
    entries[0].update(case_parity=str(base / "case_parity.json"), bundle=str(base / "bundle.json"))
    results = {"torch_eager": {"p50_ms": 1000.0, "p90_ms": 1050.0, "p99_ms": 1100.0, "speedup_vs_torch_eager": 1.0},
               "onnx_fp32@openvino": {"p50_ms": 400.0, "p90_ms": 410.0, "p99_ms": 420.0, "speedup_vs_torch_eager": 2.5,
                                      "op_profile": [{"op": "Convolution", "share": 0.9}], "pct_of_peak": 95.0,
                                      "peak_kind": "fp32", "peak_source": "adjacent",
                                      "adjacent_peak": {"kind": "fp32", "gflops": 160.0, "method": "m"}},
               "int8@openvino": {"p50_ms": 500.0, "p90_ms": 510.0, "p99_ms": 520.0, "speedup_vs_torch_eager": 2.0,
                                 "op_profile": [{"op": "Convolution [i8]", "share": 0.8}], "pct_of_peak": 60.0,
                                 "peak_kind": "int8", "peak_source": "adjacent",
                                 "adjacent_peak": {"kind": "int8", "gflops": 800.0, "method": "m"}}}
    RealisticRecord.of({
        "patch_size": [128, 128, 128], "architecture": {"features_per_stage": [32, 64]},
        "flops_per_patch": 9.5e11, "peak": {"gflops": 170.0}, "results": results,
        "targets": compute_targets(results)}).write(base / "realistic.json")
    md, _ = _build(entries, tmp_path / "out", realistic_path=base / "realistic.json")
    out = tmp_path / "out"
    # the failed whole-case gate is in the verdict, one line with where it diverged
    assert ("- fold 0: onnx_simplified on whole cases — first divergence: c1: final labels; min voxel agreement "
            "99.0000 %\n") in md
    assert "| fold 0 | onnx_simplified (openvino) | 1 | 99.0000 % | 0.9800 |" in md
    assert "c1: final labels" in md and "| 3.50 / 0.50 | 7.00× | FAIL |" in md
    assert "| fold 0 | nnU-Net (torch) | 0.100 | 0.200 | 3.000 | 0.100 | 0.100 |" in md
    assert ("| onnx_simplified (default) | 0 | openvino | onnxruntime 20.0 ms, openvino 12.0 ms | allow_spinning=False "
            "| 2 / 1 |") in md
    assert "ORT defaults: 11.000 ms; allow_spinning=False: 10.000 ms" in md
    assert "## Realistic-size benchmark" in md and "950 GFLOP per patch" in md
    assert ("| realistic nnU-Net, random weights (INT8: speed only, no gate) | 128x128x128 | 1000.000 | "
            "onnx_fp32@openvino 2.50× | met (≥ 2×); 95 % of the fp32 peak: met (≥ 90 %) | int8@openvino 2.00× | "
            "missed (< 3×); 60 % of the INT8 peak: missed (< 80 %) | int8@openvino: Convolution [i8] 80 % |") in md
    # its % of peak: against the peak kernels each runtime timed right after its own timing
    assert ("2 of 2 results are measured against the peak kernel timed in their own process right after their "
            "timing, so that both numbers come from the same minute (fp32 160, int8 800 GFLOP/s or GOP/s;") in md
    summary = json.loads((out / "report/summary.json").read_text())
    assert summary["realistic"]["targets"]["fp32_target_met"] is True
    assert summary["targets"]["D / T__P__3d_fullres"]["best_fp32_exact"]["name"] == "onnx_fp32"
    assert summary["folds"][0]["case_parity"]["onnx_simplified"]["passed"] is False


def _fold(fold: str, eager: float, p50: dict[str, float], passed: dict[str, bool], *,
          eager_gflops: float | None = None, peak: dict | None = None):
    from nnbridge.report.collect import FoldResults

    profile = [{"op": "Conv", "share": 0.7}, {"op": "InstanceNormalization", "share": 0.2}]
    results = {"torch_eager": {"p50_ms": eager, **({"gflops_per_s": eager_gflops} if eager_gflops else {})}}
    results.update({n: {"p50_ms": v, "op_profile": profile} for n, v in p50.items()})
    return FoldResults(
        "D", "M", fold,
        benchmark=BenchmarkRecord.of({"shape": [1, 1, 16, 16, 16], "results": results,
                                      **({"peak": peak} if peak else {})}),
        parity=ParityRecord.of({"variants": {n: {"passed": ok} for n, ok in passed.items()}}),
        quantize={n: QuantizeRecord.of({"method": m}) for n, m in (("int8_a", "static"), ("int8_b", "dynamic"),
                                                                   ("half", "fp16"))})


def test_model_targets_count_only_gated_variants_over_all_folds():
    from nnbridge.core.keys import Variant
    from nnbridge.report.cards import model_targets, variant_precision

    folds = [
        _fold("0", 100.0, {"onnx_simplified": 40.0, "onnx_simplified@openvino": 30.0, "int8_a": 10.0,
                           "int8_b@openvino": 40.0, "half": 5.0},
              {"onnx_simplified": True, "onnx_simplified@openvino": True, "int8_a": True,
               "int8_b@openvino": True, "half": True}),
        _fold("1", 200.0, {"onnx_simplified": 100.0, "onnx_simplified@openvino": 50.0, "int8_a": 20.0,
                           "int8_b@openvino": 60.0, "half": 10.0},
              {"onnx_simplified": True, "onnx_simplified@openvino": False, "int8_a": False,
               "int8_b@openvino": True, "half": True}),
    ]
    assert [variant_precision(folds[0], Variant.parse(n)) for n in ("onnx_fp32@openvino", "int8_a@openvino",
                                                                    "half", "x")] == ["fp32", "int8", "fp16", "other"]
    t = model_targets(folds)
    # OpenVINO failed its gate on fold 1 -> the best exact runtime is ORT (median of 2.5× and 2×)
    assert t["best_fp32_exact"]["name"] == "onnx_simplified" and t["best_fp32_exact"]["speedup"] == 2.25
    assert t["fp32_target_met"]
    # int8_a is fastest but failed on fold 1; fp16 is not INT8 -> int8_b on OpenVINO (2.5×, 3.333×)
    assert t["best_int8"]["name"] == "int8_b@openvino" and t["best_int8"]["speedup"] == pytest.approx(2.917, abs=1e-3)
    assert not t["int8_target_met"]
    assert t["dominant_ops"] == {"int8_b@openvino": [{"op": "Conv", "share": 0.7},
                                                     {"op": "InstanceNormalization", "share": 0.2}]}
    assert t["torch_eager_p50_ms"] == 150.0 and t["patch"] == [16, 16, 16] and t["folds"] == 2


def test_ceilings_say_when_a_target_is_beyond_the_machine():
    """torch eager at 60 % of the fp32 peak: no exact runtime can be 2× faster (ceiling 1.67×)."""
    from nnbridge.bench.targets import speed_ceilings
    from nnbridge.report.cards import model_targets
    from nnbridge.report.collect import RunResults
    from nnbridge.report.tables import targets_table

    folds = [_fold("0", 100.0, {"onnx_simplified": 70.0, "int8_a": 30.0}, {"onnx_simplified": True, "int8_a": True},
                   eager_gflops=60.0, peak={"gflops": 100.0, "int8_gops": 400.0})]
    assert speed_ceilings(60.0, {"gflops": 100.0, "int8_gops": 400.0}) == {"fp32_ceiling": 1.67, "int8_ceiling": 6.67}
    assert speed_ceilings(None, {"gflops": 100.0}) == {}
    t = model_targets(folds)
    assert t["fp32_ceiling"] == 1.67 and t["int8_ceiling"] == 6.67 and not t["fp32_target_met"]
    row = targets_table(RunResults(folds)).rows[0]
    assert row[4] == "missed (< 2×); beyond this machine: the measured peak allows at most 1.67×"
    assert row[6] == "met (≥ 3×)"


def test_run_wide_peak_applies_only_to_the_same_cpu_and_threads():
    here = cpu_identity()
    assert here["cpus"] >= 1 and here["cpu"] and isinstance(here["isa"], list)
    peak = {"gflops": 100.0, "threads": 2, "machine": dict(here)}
    assert peak_mismatch(peak, 2, here) is None
    assert peak_mismatch(peak, 2, {**here, "host": "another-node"}) is None  # identical nodes share it
    assert peak_mismatch(peak, 1, here) == "the run-wide peak used 2 thread(s), this job 1"
    other = {**here, "cpu": "AMD EPYC 7763", "isa": ["avx2"]}
    assert peak_mismatch(peak, 2, other).startswith(f"the run-wide peak came from another CPU ({here['cpu']}")
    assert "this job: AMD EPYC 7763" in peak_mismatch(peak, 2, other)
    assert peak_mismatch({**peak, "machine": {**here, "cpus": here["cpus"] + 2}}, 2, here)  # another CPU share
    assert peak_mismatch({"gflops": 100.0, "threads": 2}, 2, here)  # a record without its machine
    assert peak_mismatch({"error": "x", "threads": 2}, 2, here) == "the run-wide peak measurement failed"
    assert peak_mismatch(None, 2, here) == "no run-wide peak given"


def test_report_keeps_skipped_bf16_apart_from_failures(tmp_path):
    """A bf16 variant on a CPU without native bf16: SKIPPED with the reason in the verdict, the
    gate, benchmark, whole-case and realistic tables — never FAILED, never timed as fp32."""
    entries = _records(tmp_path)
    base = tmp_path / "D/T__P__3d_fullres/fold_0"
    why = "this CPU has no native bf16 (AVX512_BF16 or AMX): OpenVINO lists only FP32, INT8"
    parity = json.loads((base / "parity.json").read_text())
    parity["variants"]["int8_static"].update(passed=True, failures=[])
    parity["variants"]["bf16@openvino"] = {"passed": False, "skipped": f"bf16.onnx: a bf16 variant, but {why}",
                                           "failures": [f"skipped: bf16.onnx: a bf16 variant, but {why}"]}
    ParityRecord.of(parity).write(base / "parity.json")
    bench = json.loads((base / "bench.json").read_text())
    bench["results"]["bf16@openvino"] = {"backend": "openvino", "skipped": why}
    BenchmarkRecord.of(bench).write(base / "bench.json")
    QuantizeRecord.of({"method": "bf16", "n_calibration_patches": 0, "size_bytes": 2e6, "native_bf16_here": False,
                       "bf16_unavailable": why, "coverage_openvino": None}).write(base / "q_bf16.json")
    CaseParityRecord.of({
        "fold": "0", "cases": ["c1"], "classes": [1], "nnunet": {"timings_s": {"read": 0.1}, "total_s": 0.1},
        "variants": {"bf16": {"backend": "openvino", "skipped": why, "passed": False}}, "all_passed": True}).write(
        base / "case_parity.json")
    entries[0]["quantize"]["bf16"] = str(base / "q_bf16.json")
    entries[0]["case_parity"] = str(base / "case_parity.json")
    out = tmp_path / "out"
    md, _ = _build(entries, out)
    # skipped, grouped by reason: one line per reason naming every check it skipped
    assert ("**All variants passed their gates.**\n\n**2 variant(s) SKIPPED, not runnable on this machine:**\n"
            f"- {why}: fold 0: bf16@openvino; fold 0: bf16 on whole cases\n") in md
    assert "FAILED" not in md
    assert "| bf16@openvino | SKIPPED in 1/1 (not runnable here) | – |" in md  # overview: no Dice, no latency
    assert f"| SKIPPED: bf16.onnx: a bf16 variant, but {why} |" in md  # the patch gate
    assert f"| fold 0 | bf16@openvino | 1x1x8x8x8 | skipped: {why} |" in md  # the benchmark
    assert f"| fold 0 | bf16 (openvino) | – | – | – | – | – | – | – | – | – | SKIPPED: {why} |" in md
    assert f"fp32 graph, OpenVINO bf16 inference; not runnable here: {why}" in md
    summary = json.loads((out / "report/summary.json").read_text())
    assert summary["folds"][0]["case_parity"]["bf16"]["skipped"] == why


class _Clock:
    """A clock the runner advances: call i of ``run`` takes ``durations[i]`` seconds."""

    def __init__(self, durations):
        self.now, self.durations, self.calls = 0.0, list(durations), 0

    def __call__(self):
        return self.now

    def run(self, x):
        self.now += self.durations[min(self.calls, len(self.durations) - 1)]
        self.calls += 1


def test_timing_warms_up_once_at_seconds_per_run_and_gives_up_on_a_loser():
    """A call of a tenth of the budget or more (a 128^3 patch) gets one untimed call, short ones
    the warm-up asked for; a point with a time to beat stops after two runs slower than it, and
    runs on when one of them beats it."""
    from nnbridge.runtime.timing import StopRule, time_until_stable

    rule = StopRule(max_repeats=20, min_repeats=5, budget_s=20.0, rel_ci=0.02)
    x = np.zeros(1)
    slow = _Clock([9.0, 5.0, 5.0, 5.1, 4.9, 5.0, 5.0, 5.0])  # 9 s cold, then ~5 s
    times, why = time_until_stable(slow.run, x, 3, rule, clock=slow)
    assert slow.calls == 1 + len(times) and times[0] == pytest.approx(5000.0)  # one warm-up call
    assert len(times) >= 3 and ("budget" in why or "stable" in why)

    fast = _Clock([0.01] * 50)
    times, _ = time_until_stable(fast.run, x, 3, rule, clock=fast)
    assert fast.calls == 3 + len(times)  # the three warm-up calls asked for

    loser = _Clock([6.0, 6.0, 6.1, 6.0, 6.0])
    times, why = time_until_stable(loser.run, x, 1, rule, give_up_ms=5000.0, clock=loser)
    assert len(times) == 2 and "time to beat" in why
    close = _Clock([6.0, 6.0, 4.9, 5.0, 5.0, 5.0, 5.0, 5.0])  # its second run beats 5.0 s
    times, why = time_until_stable(close.run, x, 1, rule, give_up_ms=5000.0, clock=close)
    assert len(times) > 2 and "time to beat" not in why


def test_settings_search_skips_per_call_settings_once_a_run_is_long(exported, loaded_fold):
    """At a run slower than the overhead limit (here 0 ms: any run), the candidates that change
    only a per-call cost are not timed and say why; the others still race the default, which
    stays first and timed, and the choice is one of the timed ones."""
    from nnbridge.bench.sweep import OVERHEAD_ONLY, tune_onnxruntime

    out, _, _ = exported
    spec = {"backend": "onnxruntime", "path": str(out / "model.onnx"),
            "stop": {"min_repeats": 3, "budget_s": 2, "rel_ci": 0.05}}
    result = tune_onnxruntime(spec, tuple(loaded_fold.input_shape), 1, 1, 3, overhead_limit_ms=0.0)
    by = {json.dumps(c["settings"], sort_keys=True): c for c in result["candidates"]}
    assert [c["settings"] for c in result["candidates"]] == list(ORT_CANDIDATES)
    for settings in OVERHEAD_ONLY:
        c = by[json.dumps(settings, sort_keys=True)]
        assert c["p50_ms"] is None and "per-call cost" in c["skipped"], c
    timed = [c for c in result["candidates"] if c["settings"] not in OVERHEAD_ONLY]
    assert timed[0]["settings"] == {} and len(timed) == len(ORT_CANDIDATES) - len(OVERHEAD_ONLY)
    assert all(c["p50_ms"] > 0 and "skipped" not in c for c in timed), timed
    assert result["chosen"] not in OVERHEAD_ONLY


def test_a_gate_missed_with_7_bit_weights_the_cpu_chose_names_the_remedy():
    """A failed INT8 gate whose weights have 7 bits because the CPU (no VNNI) chose them says so in
    the report, with the setting that keeps 8 bits; not when the entry gave reduce_range, nor for
    a variant that passed."""
    from nnbridge.report.collect import FoldResults, RunResults
    from nnbridge.report.tables import parity_table

    def quantize(given: bool) -> QuantizeRecord:
        return QuantizeRecord.of({"method": "static", "reduce_range": True, "weight_type": "s8", "cpu": {
            "choices": [{"setting": "reduce_range", "value": True, "given": given, "why": "w"}]}})

    failed = {"passed": False, "failures": ["Dice of box 0.9885 < 0.99"]}
    fold = FoldResults("D", "M", "0", parity=ParityRecord.of({"variants": {
        "by_cpu": failed, "by_cpu@openvino": failed, "given": failed, "passed": {"passed": True}}}),
        quantize={"by_cpu": quantize(False), "given": quantize(True), "passed": quantize(False)})
    gates = {row[1]: str(row[-1]) for row in parity_table(RunResults([fold])).rows}
    assert "7-bit weights, chosen for a CPU without INT8 dot products (weight_type: u8" in gates["by_cpu"]
    assert "7-bit weights" in gates["by_cpu@openvino"]
    assert gates["given"] == "FAIL: Dice of box 0.9885 < 0.99" and gates["passed"] == "PASS"


def test_flops_count_every_convolution_behind_the_shapes_a_graph_computes(tmp_path):
    """MONAI's SegResNet reshapes each GroupNorm's result to Shape(x) (computed in the graph): the
    FLOPs behind the first one were uncounted (1.8 of 290.6 GFLOP at 128^3) until shape inference
    propagated computed shapes. Expected: what the convolutions PyTorch ran did, counted from their
    output shapes by forward hooks."""
    import torch
    from monai.networks.nets import SegResNet

    from nnbridge.core.onnxgraph import compute_node_flops
    from nnbridge.export.onnx_export import write_onnx

    torch.manual_seed(0)
    net = SegResNet(spatial_dims=3, init_filters=4, in_channels=1, out_channels=2, blocks_down=[1, 1, 1],
                    blocks_up=[1, 1], norm=["GROUP", {"num_groups": 2}]).eval()
    ran: list[int] = []

    def count(module, _inputs, output):
        ran.append(2 * output.numel() * (module.in_channels // module.groups) * int(np.prod(module.kernel_size)))

    for module in net.modules():
        if isinstance(module, torch.nn.Conv3d):
            module.register_forward_hook(count)
    model = write_onnx(net, torch.zeros(1, 1, 16, 16, 16), tmp_path / "segresnet.onnx", 17, {})
    ran.clear()  # the export's trace ran them once
    with torch.no_grad():
        net(torch.zeros(1, 1, 32, 24, 16))
    flops = compute_node_flops(model, (1, 1, 32, 24, 16))
    assert len(flops) == len(ran) and all(v["flops"] for v in flops.values()), flops
    assert sum(v["flops"] for v in flops.values()) == sum(ran)
