"""This machine's practical fp32, INT8 and bf16 peaks, measured by the best kernels found, and the
share of them each result reaches."""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import Any

from ..core.cpu import cpu_identity, same_cpu
from ..core.graphs import is_int8
from ..runtime.ov import precision_unavailable
from .kernels import PEAK_KERNELS, kernel_method, peak_conv_onnx
from .measure import PEAK_N, benchmark_in_subprocess, spec_precision


def _peak_conv(threads: int, kind: str, repeats: int) -> dict[str, Any]:
    """Throughput of the peak convolution of ``kind`` (``fp32``, ``int8``, ``bf16``:
    :data:`nnbridge.bench.kernels.PEAK_KERNELS`) on OpenVINO, in a process of its own."""

    (channels, side), precision, int8 = PEAK_KERNELS[kind]
    with tempfile.TemporaryDirectory(prefix="nnbridge-peak-") as tmp:
        path = Path(tmp) / "conv.onnx"
        flops = peak_conv_onnx(path, channels, side, int8=int8)
        result = benchmark_in_subprocess({"backend": "openvino", "path": str(path), "profile": False,
                                          "precision": precision}, (1, channels, side, side, side), threads, 2,
                                         repeats)
    what = kernel_method(kind, repeats)
    if "p50_ms" not in result:
        return {"method": what, "error": result.get("error", "failed")}
    return {"method": what, "gflops": round(flops / (result["p50_ms"] / 1000) / 1e9, 1)}


def peak_mismatch(peak: dict[str, Any] | None, threads: int, here: dict[str, Any]) -> str | None:
    """Why the run-wide ``peak`` does not apply to a job on machine ``here`` with ``threads``
    threads, or None when it does."""
    if not peak:
        return "no run-wide peak given"
    if "gflops" not in peak:
        return "the run-wide peak measurement failed"
    if peak.get("threads") != threads:
        return f"the run-wide peak used {peak.get('threads')} thread(s), this job {threads}"
    theirs = peak.get("machine")
    if not same_cpu(theirs, here):
        theirs = theirs or {}
        return (f"the run-wide peak came from another CPU ({theirs.get('cpu', 'not recorded')}, "
                f"{theirs.get('cpus', '?')} CPUs, {', '.join(theirs.get('isa', [])) or '?'}; host "
                f"{theirs.get('host', '?')}); this job: {here['cpu']}, {here['cpus']} CPUs, "
                f"{', '.join(here['isa'])}; host {here['host']}")
    return None


def peak_for_this_machine(peak: dict[str, Any] | None, threads: int) -> dict[str, Any]:
    """``peak`` (the run's :func:`measure_peak_gflops`, measured once by the workflow) when it was
    measured on this kind of CPU with these threads; else this machine's own, measured now (a
    cluster node of another CPU model, an old record), with ``source`` saying why."""
    why = peak_mismatch(peak, threads, cpu_identity())
    if why is None:
        return {**peak, "source": "the run's peak measurement (machine_peak), same CPU"}
    return {**measure_peak_gflops(threads), "source": f"measured here: {why}"}


def measure_peak_gflops(threads: int, repeats: int = 5, n: int = PEAK_N) -> dict[str, Any]:
    """This machine's practical peak with ``threads`` threads, each micro-benchmark in its own
    process. fp32: the best of an ``n``³ matrix multiply by torch (MKL/oneDNN sgemm) and a large
    3D convolution on OpenVINO; INT8: the same convolution quantized (QDQ) on OpenVINO, in
    GOP/s (multiply-add = 2); bf16 (on CPUs that run it natively, else ``bf16_unavailable``
    says why): the INT8 one's convolution in bf16 on OpenVINO. A peak measured by the best kernels found, not derived from clock
    and vector units (clocks boost, and FMA pipes per core vary by CPU model): results close to
    100 % are at the best this machine showed; above 100 % means a runtime beat the micro-benchmarks."""
    fp32: dict[str, dict[str, Any]] = {}
    result = benchmark_in_subprocess({"backend": "sgemm", "n": n}, (1,), threads, 2, repeats)
    fp32["sgemm"] = ({"method": f"fp32 matrix multiply {n}x{n}x{n} (torch.mm), p50 of {repeats}",
                      "gflops": round(2 * n**3 / (result["p50_ms"] / 1000) / 1e9, 1)} if "p50_ms" in result
                     else {"method": "torch.mm", "error": result.get("error", "failed")})
    int8 = bf16 = None
    try:
        import openvino  # noqa: F401, PLC0415
    except ImportError:
        fp32["conv_openvino"] = {"method": "OpenVINO convolution", "error": "openvino is not installed"}
    else:

        fp32["conv_openvino"] = _peak_conv(threads, "fp32", repeats)
        int8 = _peak_conv(threads, "int8", repeats)
        no_bf16 = precision_unavailable("bf16")
        bf16 = (_peak_conv(threads, "bf16", repeats) if no_bf16 is None
                else {"method": "bf16 convolution on OpenVINO", "error": no_bf16})
    done = {k: v for k, v in fp32.items() if "gflops" in v}
    if not done:
        return {"error": "; ".join(f"{k}: {v.get('error')}" for k, v in fp32.items()), "candidates": fp32}
    best = max(done, key=lambda k: done[k]["gflops"])
    record: dict[str, Any] = {"gflops": done[best]["gflops"], "threads": threads, "method": done[best]["method"],
                              "candidates": fp32, "machine": cpu_identity()}
    if int8 and "gflops" in int8:
        record["int8_gops"] = int8["gflops"]
        record["int8_method"] = int8["method"]
    if bf16 and "gflops" in bf16:
        record["bf16_gflops"] = bf16["gflops"]
        record["bf16_method"] = bf16["method"]
    elif bf16:
        record["bf16_unavailable"] = bf16["error"]
    return record


def peak_kinds(specs: dict[str, dict[str, Any]]) -> dict[str, str]:
    """Result name → ``int8`` (a quantized ONNX file on either runtime, or INT8 IR) or ``bf16`` (an OpenVINO run in
    bf16), the peak its "% of peak" refers to; fp32 results are left out."""
    kinds = {}
    for name, spec in specs.items():
        if spec["backend"] not in ("onnxruntime", "openvino") or not Path(spec["path"]).is_file():
            continue
        if is_int8(spec["path"]):
            kinds[name] = "int8"
        elif spec_precision(spec) == "bf16":
            kinds[name] = "bf16"
    return kinds


PEAK_KEYS = {"fp32": "gflops", "int8": "int8_gops", "bf16": "bf16_gflops"}


# a runtime whose patch takes this long or longer times its peak kernel right after its own timing
# (2-5 s at 2 threads): over such a run this VM's speed can move away from the run-wide peak
# measured at the start (2x within an hour on the AMD Zen 4 of README Measured), and the extra
# seconds are small beside the timing; a faster patch (the demo's, ms) keeps the run-wide peak
ADJACENT_MIN_MS = 500.0


def with_adjacent_peaks(specs: dict[str, dict[str, Any]],
                        min_ms: float = ADJACENT_MIN_MS) -> dict[str, dict[str, Any]]:
    """Copies of the benchmark ``specs`` that also time the peak kernel of their kind
    (:func:`peak_kinds`, fp32 otherwise) right after their own timing when a patch takes at
    least ``min_ms`` (:func:`nnbridge.bench.measure.measure`); :func:`add_throughput` then
    measures them against it. The settings search and the sweeps keep the plain specs."""
    kinds = peak_kinds(specs)
    return {name: {**spec, "adjacent_peak": kinds.get(name, "fp32"), "adjacent_min_ms": float(min_ms)}
            for name, spec in specs.items()}


def add_throughput(record: dict[str, Any], flops: int, peak: dict[str, Any],
                   kinds: dict[str, str] | None = None) -> None:
    """Per result: achieved GFLOP/s at the patch's FLOPs and the fraction of the peak that
    applies: ``kinds`` maps result names to ``int8`` or ``bf16`` (measured against
    ``peak["int8_gops"]`` / ``peak["bf16_gflops"]``), every other result against the fp32 peak;
    ``peak_kind`` says which. A result that timed its own peak kernel right after its timing
    (``adjacent_peak``, :func:`nnbridge.bench.kernels.time_peak_kernel`) is measured against
    that one instead (``peak_source: adjacent``; else ``run``)."""
    record["flops_per_patch"] = int(flops)
    for name, result in record["results"].items():
        if "p50_ms" in result and flops:
            result["gflops_per_s"] = round(flops / (result["p50_ms"] / 1000) / 1e9, 2)
            kind = (kinds or {}).get(name, "fp32")
            adjacent = result.get("adjacent_peak") or {}
            own = adjacent.get("kind") == kind and adjacent.get("gflops")
            limit = adjacent["gflops"] if own else peak.get(PEAK_KEYS[kind])
            if limit:
                result["pct_of_peak"] = round(100 * result["gflops_per_s"] / limit, 1)
                result["peak_kind"] = kind
                result["peak_source"] = "adjacent" if own else "run"
