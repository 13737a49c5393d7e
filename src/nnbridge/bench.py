"""Latency and memory of each backend, each measured in its own process.

A parent process starts one child per backend (``python -m nnbridge.bench``) so that peak
memory is the backend's own and one backend's allocator or thread pool never affects another's
timing. Memory is read from ``/proc/self/status`` (``VmHWM``, ``VmRSS``), not ``ru_maxrss``:
Linux carries ``ru_maxrss`` across fork and exec, so a child would report its parent's peak. All numbers of one report come from one run of the same machine;
compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any, Iterable

import numpy as np

BACKENDS = ("torch", "torchscript", "torch_arch", "onnxruntime", "openvino", "sgemm")
PEAK_N = 2048  # the fp32 matrix multiply that measures this machine's practical peak


def _status_mb(field: str) -> float:
    """``VmHWM`` (peak resident) or ``VmRSS`` (resident now) of this process, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux


def _rss_mb() -> float:
    return _status_mb("VmRSS")


def _peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def _load_runner(spec: dict[str, Any], threads: int):
    """A callable running one batch on the spec's backend."""
    backend = spec["backend"]
    if backend in ("torch", "torchscript", "torch_arch"):
        import torch  # noqa: PLC0415

        torch.set_num_threads(threads)
        torch.set_num_interop_threads(1)
        if backend == "torch":
            from .models import load_model  # noqa: PLC0415

            module = load_model(spec["source"]).network
        elif backend == "torch_arch":  # a network built from a JSON description (random weights)
            from .realistic import build_network  # noqa: PLC0415

            module = build_network(spec["arch"], int(spec.get("seed", 0)))
        else:
            module = torch.jit.load(spec["path"], map_location="cpu").eval()

        def run(x: np.ndarray) -> None:
            with torch.no_grad():
                module(torch.from_numpy(x))

        return run
    if backend == "sgemm":  # the peak micro-benchmark: an n x n x n fp32 matmul (MKL/oneDNN)
        import torch  # noqa: PLC0415

        torch.set_num_threads(threads)
        n = int(spec.get("n", PEAK_N))
        a, b = torch.randn(n, n), torch.randn(n, n)

        def run(x: np.ndarray) -> None:
            torch.mm(a, b)

        return run
    if backend == "openvino":
        from .onnxrun import compiled_precision, openvino_model  # noqa: PLC0415

        compiled = openvino_model(Path(spec["path"]), threads, precision=spec.get("precision"))
        request = compiled.create_infer_request()

        def run(x: np.ndarray) -> None:
            request.infer({0: x})

        run.precision = compiled_precision(compiled)  # type: ignore[attr-defined]
        return run
    if backend == "onnxruntime":
        from .onnxrun import onnx_session, ort_runner  # noqa: PLC0415

        session = onnx_session(Path(spec["path"]), threads, settings=spec.get("settings"))
        return ort_runner(session, spec.get("settings"))  # with IO binding if the settings say so
    raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")


def measure(spec: dict[str, Any], shape: tuple[int, ...], threads: int, warmup: int,
            repeats: int, seed: int = 0) -> dict[str, Any]:
    """Time ``repeats`` runs after ``warmup`` runs in this process."""
    rss_start = _rss_mb()
    run = _load_runner(spec, threads)
    rss_loaded = _rss_mb()
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - started) * 1000.0)
    arr = np.array(times)
    profile = None
    if spec["backend"] in ("onnxruntime", "openvino") and spec.get("profile", True):
        from .opprofile import op_profile  # noqa: PLC0415

        profile = op_profile(spec["backend"], Path(spec["path"]), x, threads,
                             precision=spec.get("precision"))  # after the timing
    return {
        "backend": spec["backend"],
        "shape": list(shape),
        "threads": threads,
        "warmup": warmup,
        "repeats": repeats,
        "p50_ms": float(np.percentile(arr, 50)),
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "rss_after_imports_mb": round(rss_start, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(_peak_rss_mb(), 1),
        **({"inference_precision": run.precision} if hasattr(run, "precision") else {}),
        **({"op_profile": profile} if profile is not None else {}),
    }


def benchmark_in_subprocess(spec: dict[str, Any], shape: tuple[int, ...], threads: int,
                            warmup: int, repeats: int, timeout: float = 1800) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter; failures are returned, not raised."""
    cmd = [sys.executable, "-m", "nnbridge.bench", "--spec", json.dumps(spec),
           "--shape", json.dumps(list(shape)), "--threads", str(threads),
           "--warmup", str(warmup), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"backend": spec["backend"], "error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(lines[-1])
    if spec.get("path"):
        result["file_size_bytes"] = Path(spec["path"]).stat().st_size
    return result


def spec_precision(spec: dict[str, Any]) -> str:
    """The inference precision an OpenVINO spec runs in: its own ``precision``, else its file's
    (``bf16`` for a bf16 variant), else fp32; every other backend: ``f32`` (its file decides)."""
    if spec.get("backend") != "openvino":
        return "f32"
    if spec.get("precision"):
        return str(spec["precision"])
    from .onnxmeta import inference_precision  # noqa: PLC0415

    path = Path(spec.get("path", ""))
    return inference_precision(path) if path.is_file() else "f32"


def skip_reason(spec: dict[str, Any]) -> str | None:
    """Why a spec cannot run on this machine (a bf16 run on a CPU without native bf16), or None."""
    from .onnxrun import precision_unavailable  # noqa: PLC0415

    return precision_unavailable(spec_precision(spec))


def benchmark_variants(specs: dict[str, dict[str, Any]], shape: tuple[int, ...], threads: int,
                       warmup: int, repeats: int, baseline: str = "torch_eager") -> dict[str, Any]:
    """Benchmark every named spec one after another (a spec this machine cannot run is recorded
    as ``skipped`` with the reason); add speed-ups against ``baseline``."""
    results = {}
    for name, spec in specs.items():
        why = skip_reason(spec)
        results[name] = ({"backend": spec["backend"], "skipped": why} if why else
                         benchmark_in_subprocess(spec, shape, threads, warmup, repeats))
    base = results.get(baseline, {}).get("p50_ms")
    for result in results.values():
        if base and "p50_ms" in result:
            result[f"speedup_vs_{baseline}"] = round(base / result["p50_ms"], 3)
    return {"shape": list(shape), "threads": threads, "warmup": warmup, "repeats": repeats,
            "baseline": baseline, "results": results}


# the convolutions that measure OpenVINO's practical peak: 3x3x3, channels in = out, cube side
PEAK_CONV_FP32 = (128, 32)  # 7.2 GFLOP
PEAK_CONV_INT8 = (256, 24)  # 49 GOP


def peak_conv_onnx(path: Path, channels: int, side: int, *, int8: bool) -> int:
    """Write a one-convolution ONNX model (3×3×3, ``channels`` in and out, ``side``³ input, padded;
    as QDQ with INT8 weights and activations when ``int8``) and return its FLOPs per run."""
    import onnx  # noqa: PLC0415
    from onnx import TensorProto, helper, numpy_helper  # noqa: PLC0415

    rng = np.random.default_rng(0)
    shape = [1, channels, side, side, side]
    if int8:
        inits = [numpy_helper.from_array(rng.integers(-100, 100, (channels, channels, 3, 3, 3)).astype(np.int8), "wq"),
                 numpy_helper.from_array(np.full(channels, 0.01, np.float32), "ws"),
                 numpy_helper.from_array(np.zeros(channels, np.int8), "wz"),
                 numpy_helper.from_array(np.array(0.05, np.float32), "xs"),
                 numpy_helper.from_array(np.array(0, np.int8), "xz")]
        nodes = [helper.make_node("QuantizeLinear", ["x", "xs", "xz"], ["xq"]),
                 helper.make_node("DequantizeLinear", ["xq", "xs", "xz"], ["xd"]),
                 helper.make_node("DequantizeLinear", ["wq", "ws", "wz"], ["w"], axis=0),
                 helper.make_node("Conv", ["xd", "w"], ["y"], pads=[1] * 6)]
    else:
        inits = [numpy_helper.from_array((0.05 * rng.standard_normal((channels, channels, 3, 3, 3))).astype(np.float32), "w")]
        nodes = [helper.make_node("Conv", ["x", "w"], ["y"], pads=[1] * 6)]
    graph = helper.make_graph(nodes, "peak", [helper.make_tensor_value_info("x", TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", TensorProto.FLOAT, shape)], inits)
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return 2 * channels * channels * 27 * side**3


def _peak_conv(threads: int, channels: int, side: int, repeats: int, *, int8: bool,
               precision: str = "f32") -> dict[str, Any]:
    """Throughput of one large convolution on OpenVINO (oneDNN's best kernels on this CPU), in
    ``precision`` (``f32``, or ``bf16``) unless ``int8``."""
    import tempfile  # noqa: PLC0415

    with tempfile.TemporaryDirectory(prefix="nnbridge-peak-") as tmp:
        path = Path(tmp) / "conv.onnx"
        flops = peak_conv_onnx(path, channels, side, int8=int8)
        result = benchmark_in_subprocess({"backend": "openvino", "path": str(path), "profile": False,
                                          "precision": precision}, (1, channels, side, side, side), threads, 2,
                                         repeats)
    kind = "INT8 (QDQ)" if int8 else {"f32": "fp32"}.get(precision, precision)
    what = f"{kind} 3x3x3 convolution {channels}->{channels} channels at {side}^3 on OpenVINO, p50 of {repeats}"
    if "p50_ms" not in result:
        return {"method": what, "error": result.get("error", "failed")}
    return {"method": what, "gflops": round(flops / (result["p50_ms"] / 1000) / 1e9, 1)}


# CPU features that change which kernels the runtimes pick (and so the peak)
ISA_FLAGS = ("avx2", "avx512f", "avx512_vnni", "avx_vnni", "avx512_bf16", "avx512_fp16", "amx_bf16",
             "amx_int8", "amx_fp16")


def cpu_identity() -> dict[str, Any]:
    """What makes two machines' peaks comparable: the CPU model, the instruction-set features the
    runtimes' kernels depend on (:data:`ISA_FLAGS`), and the CPUs this process may use; plus the
    host name (identical nodes of a cluster share a peak, so it is not compared)."""
    info: dict[str, str] = {}
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():  # the first CPU's lines
            key, _, value = line.partition(":")
            info.setdefault(key.strip(), value.strip())
    except OSError:
        pass
    model = info.get("model name") or platform.processor() or platform.machine()
    flags = set(info.get("flags", "").split())
    cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count()
    return {"cpu": model, "isa": [f for f in ISA_FLAGS if f in flags], "cpus": cpus, "host": platform.node()}


def same_cpu(a: dict[str, Any] | None, b: dict[str, Any] | None) -> bool:
    """Whether two :func:`cpu_identity` records describe the same kind of machine (host aside)."""
    keys = ("cpu", "isa", "cpus")
    return bool(a and b) and all(a.get(k) == b.get(k) for k in keys)


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
        from .onnxrun import precision_unavailable  # noqa: PLC0415

        fp32["conv_openvino"] = _peak_conv(threads, *PEAK_CONV_FP32, repeats, int8=False)
        int8 = _peak_conv(threads, *PEAK_CONV_INT8, repeats, int8=True)
        no_bf16 = precision_unavailable("bf16")
        bf16 = (_peak_conv(threads, *PEAK_CONV_INT8, repeats, int8=False, precision="bf16") if no_bf16 is None
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
    """Result name → ``int8`` (a quantized file on either runtime) or ``bf16`` (an OpenVINO run in
    bf16), the peak its "% of peak" refers to; fp32 results are left out."""
    kinds = {}
    for name, spec in specs.items():
        if spec["backend"] not in ("onnxruntime", "openvino") or not Path(spec["path"]).is_file():
            continue
        if is_int8_model(spec["path"]):
            kinds[name] = "int8"
        elif spec_precision(spec) == "bf16":
            kinds[name] = "bf16"
    return kinds


def is_int8_model(path: str | Path) -> bool:
    """Whether an ONNX file holds quantized operators (QDQ pairs or integer convolutions/matmuls)."""
    import onnx  # noqa: PLC0415

    quantized = {"QuantizeLinear", "DynamicQuantizeLinear", "QLinearConv", "ConvInteger", "MatMulInteger",
                 "QLinearMatMul"}
    graph = onnx.load(str(path), load_external_data=False).graph
    return any(node.op_type in quantized for node in graph.node)


PEAK_KEYS = {"fp32": "gflops", "int8": "int8_gops", "bf16": "bf16_gflops"}


def add_throughput(record: dict[str, Any], flops: int, peak: dict[str, Any],
                   kinds: dict[str, str] | None = None) -> None:
    """Per result: achieved GFLOP/s at the patch's FLOPs and the fraction of the peak that
    applies: ``kinds`` maps result names to ``int8`` or ``bf16`` (measured against
    ``peak["int8_gops"]`` / ``peak["bf16_gflops"]``), every other result against the fp32 peak;
    ``peak_kind`` says which."""
    record["flops_per_patch"] = int(flops)
    for name, result in record["results"].items():
        if "p50_ms" in result and flops:
            result["gflops_per_s"] = round(flops / (result["p50_ms"] / 1000) / 1e9, 2)
            kind = (kinds or {}).get(name, "fp32")
            limit = peak.get(PEAK_KEYS[kind])
            if limit:
                result["pct_of_peak"] = round(100 * result["gflops_per_s"] / limit, 1)
                result["peak_kind"] = kind


FP32_TARGET = 2.0  # speed-up over torch eager the best exact fp32 runtime should reach
INT8_TARGET = 3.0  # ... and the best INT8 variant that passed its Dice gate
TOP_OPS = 5


def _fastest(candidates: dict[str, dict[str, Any]], names: Iterable[str]) -> dict[str, Any] | None:
    """The candidate of ``names`` with the highest speed-up, as {name, speedup, p50_ms}."""
    done = [(n, candidates[n]) for n in names if candidates.get(n, {}).get("speedup") is not None]
    if not done:
        return None
    name, best = max(done, key=lambda item: item[1]["speedup"])
    return {"name": name, "speedup": round(float(best["speedup"]), 3), "p50_ms": best.get("p50_ms")}


def speed_ceilings(eager_gflops: float | None, peak: dict[str, Any]) -> dict[str, float]:
    """The largest speed-up over torch eager any runtime can reach on this machine: the measured
    peak (fp32, INT8) over what torch eager achieves. A target above its ceiling cannot be met
    here by a faster kernel, only by doing less work."""
    if not eager_gflops:
        return {}
    out = {}
    for key, limit in (("fp32_ceiling", peak.get("gflops")), ("int8_ceiling", peak.get("int8_gops"))):
        if limit:
            out[key] = round(float(limit) / float(eager_gflops), 2)
    return out


def speed_targets(candidates: dict[str, dict[str, Any]], exact: Iterable[str], int8: Iterable[str], *,
                  ceilings: dict[str, float] | None = None, fp32_target: float = FP32_TARGET,
                  int8_target: float = INT8_TARGET, top: int = TOP_OPS) -> dict[str, Any]:
    """The speed targets on one set of results. ``candidates``: name → {speedup (vs torch eager),
    p50_ms, op_profile (optional)}; ``exact``: the names that count as exact fp32 runtimes,
    ``int8``: the INT8 ones (the caller passes only those that passed their Dice gate);
    ``ceilings``: :func:`speed_ceilings`, recorded alongside. For each target missed, the top
    operators of the best runtime's profile say where the time goes."""
    fp32_best, int8_best = _fastest(candidates, exact), _fastest(candidates, int8)
    out: dict[str, Any] = {
        **(ceilings or {}),
        "fp32_target": fp32_target, "int8_target": int8_target,
        "best_fp32_exact": fp32_best, "fp32_target_met": bool(fp32_best and fp32_best["speedup"] >= fp32_target),
        "best_int8": int8_best, "int8_target_met": bool(int8_best and int8_best["speedup"] >= int8_target),
    }
    dominant = {}
    for best, met in ((fp32_best, out["fp32_target_met"]), (int8_best, out["int8_target_met"])):
        if best and not met and candidates[best["name"]].get("op_profile"):
            dominant[best["name"]] = candidates[best["name"]]["op_profile"][:top]
    if dominant:
        out["dominant_ops"] = dominant
    return out


def sweep(specs: dict[str, dict[str, Any]], names: list[str] | tuple[str, ...], shape: tuple[int, ...],
          threads: int, batch: int, warmup: int, repeats: int) -> dict[str, Any]:
    """p50 of each named spec at 1..``threads`` threads (batch 1), and per patch at ``batch``
    patches per run with ``threads`` threads; each point in its own process."""
    out: dict[str, Any] = {"threads": list(range(1, threads + 1)), "batch": batch, "results": {}}
    for name in names:
        spec = specs.get(name)
        if spec is None:
            continue
        spec = {**spec, "profile": False}
        why = skip_reason(spec)
        if why:  # left out of the results, whose readers expect timings
            out.setdefault("skipped", {})[name] = why
            continue
        row: dict[str, Any] = {"p50_ms_by_threads": {}}
        for t in range(1, threads + 1):
            r = benchmark_in_subprocess(spec, shape, t, warmup, repeats)
            row["p50_ms_by_threads"][str(t)] = r.get("p50_ms")
        if batch > 1:
            r = benchmark_in_subprocess(spec, (batch, *shape[1:]), threads, warmup, repeats)
            row["p50_ms_per_patch_at_batch"] = r["p50_ms"] / batch if "p50_ms" in r else None
        out["results"][name] = row
    return out


def accelerator_status() -> dict[str, str]:
    """Why each GPU backend is or is not part of the benchmark on this machine (the report shows
    it): ONNX Runtime's CUDA and TensorRT providers, OpenVINO's GPU device, torch CUDA."""
    import onnxruntime as ort  # noqa: PLC0415

    gpu_files = sorted(str(p) for p in Path("/dev").glob("nvidia[0-9]*"))
    no_gpu = "no NVIDIA GPU on this machine (no /dev/nvidia*)"
    providers = ort.get_available_providers()
    status = {}
    for provider, label in (("CUDAExecutionProvider", "onnxruntime CUDA"),
                            ("TensorrtExecutionProvider", "onnxruntime TensorRT")):
        if provider not in providers:
            status[label] = (f"skipped: this onnxruntime build has no {provider} (CPU-only package)"
                             + ("" if gpu_files else f"; {no_gpu}"))
        elif not gpu_files:
            status[label] = f"skipped: {no_gpu}"
        else:
            status[label] = "available, not benchmarked by this nnbridge version"
    try:
        import openvino as ov  # noqa: PLC0415

        devices = ov.Core().available_devices
        status["openvino GPU"] = ("available, not benchmarked by this nnbridge version" if any(
            d.startswith("GPU") for d in devices) else f"skipped: OpenVINO sees only {', '.join(devices)}")
    except ImportError:
        status["openvino GPU"] = "skipped: openvino is not installed"
    try:
        import torch  # noqa: PLC0415

        status["torch CUDA"] = ("available, not benchmarked by this nnbridge version" if torch.cuda.is_available()
                                else "skipped: torch.cuda.is_available() is False" + ("" if gpu_files else
                                                                                       f" ({no_gpu})"))
    except ImportError:
        status["torch CUDA"] = "skipped: torch is not installed"
    return status


# ONNX Runtime settings tried per variant (the first is ORT's default); see onnxrun.ORT_SETTINGS.
# ORT_PARALLEL runs independent nodes side by side (inter-op threads = the threads): a plain U-Net
# is a chain with little to overlap, a UNet++'s nested skip paths are not.
ORT_CANDIDATES: tuple[dict[str, Any], ...] = (
    {},
    {"allow_spinning": False},
    {"optimization": "ORT_ENABLE_EXTENDED"},
    {"mem_pattern": False, "cpu_arena": False},
    {"io_binding": True},
    {"execution_mode": "ORT_PARALLEL"},
)
MIN_GAIN = 0.03  # a candidate must beat the default p50 by this share, else noise decides


def tune_onnxruntime(spec: dict[str, Any], shape: tuple[int, ...], threads: int, warmup: int,
                     repeats: int) -> dict[str, Any]:
    """Time each of :data:`ORT_CANDIDATES` in its own process; choose the fastest if it beats
    ORT's default by more than :data:`MIN_GAIN`."""
    tried = []
    for settings in ORT_CANDIDATES:
        r = benchmark_in_subprocess({**spec, "settings": settings, "profile": False}, shape, threads, warmup,
                                    repeats)
        tried.append({"settings": settings, "p50_ms": r.get("p50_ms"), **({"error": r["error"]} if "error" in r
                                                                           else {})})
    default = tried[0]["p50_ms"]
    ok = [t for t in tried if t["p50_ms"] is not None]
    best = min(ok, key=lambda t: t["p50_ms"]) if ok else tried[0]
    chosen = best if (default is None or best["p50_ms"] < default * (1 - MIN_GAIN)) else tried[0]
    return {"chosen": chosen["settings"], "gain_vs_default": (round(default / chosen["p50_ms"], 3)
                                                             if default and chosen["p50_ms"] else None),
            "candidates": tried}


def benchmark_fold(source: dict[str, Any],
                   variants: dict[str, dict[str, str]], *, threads: int, warmup: int,
                   repeats: int, sweep_variants: list[str] | tuple[str, ...] = (),
                   sweep_batch: int = 2, tune: list[str] | tuple[str, ...] = (),
                   peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """Torch eager (the baseline) and every variant of a fold, at the fold's patch size; the ONNX
    Runtime variants named in ``tune`` first get their session settings searched (the timed run
    then uses the chosen ones); then a thread and batch sweep of ``sweep_variants``. ``peak``: the
    machine's peaks (:func:`measure_peak_gflops`, measured once per run by the workflow so every
    fold's "% of peak" refers to the same number); used if it came from this kind of CPU, else
    measured here (:func:`peak_for_this_machine`)."""
    from .models import load_model  # noqa: PLC0415

    loaded = load_model(source)
    shape = loaded.input_shape
    if "batch" not in loaded.dynamic_axes:
        sweep_batch = 1  # a fixed-batch export runs batch 1 only
    specs: dict[str, dict[str, Any]] = {"torch_eager": {"backend": "torch", "source": dict(source)}}
    for name, variant in variants.items():
        backend = variant.get("backend") or ("torchscript" if variant["kind"] == "torchscript" else "onnxruntime")
        specs[name] = {"backend": backend, "path": variant["path"]}
    tuning = {}
    for name in tune:
        if name in specs and specs[name]["backend"] == "onnxruntime":
            tuning[name] = tune_onnxruntime(specs[name], shape, threads, min(warmup, 2), max(5, repeats // 2))
            specs[name]["settings"] = tuning[name]["chosen"]
    record = benchmark_variants(specs, shape, threads, warmup, repeats)
    for name, result in tuning.items():
        record["results"][name]["ort_settings"] = result["chosen"]
    record.update({"model_folder": str(loaded.model_folder), "fold": loaded.fold, "tuning": tuning})
    if sweep_variants:
        record["sweep"] = sweep(specs, sweep_variants, tuple(shape), threads, sweep_batch,
                                min(warmup, 1), max(3, repeats // 4))
    record["peak"] = peak_for_this_machine(peak, threads)
    record["machine"] = cpu_identity()
    record["accelerators"] = accelerator_status()
    reference = next((v["path"] for v in variants.values() if v["kind"] == "onnx"
                      and Path(v["path"]).is_file()), None)
    if reference:
        import onnx  # noqa: PLC0415

        from .coverage import compute_node_flops  # noqa: PLC0415

        flops = sum(n["flops"] for n in compute_node_flops(onnx.load(reference, load_external_data=False),
                                                          tuple(shape)).values())
        add_throughput(record, flops, record["peak"], peak_kinds(specs))
    return record


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="benchmark one backend (internal)")
    parser.add_argument("--spec", required=True)
    parser.add_argument("--shape", required=True)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    result = measure(json.loads(args.spec), tuple(json.loads(args.shape)), args.threads,
                     args.warmup, args.repeats)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
