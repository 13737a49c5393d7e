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
import resource
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

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
        from .onnxrun import openvino_model  # noqa: PLC0415

        request = openvino_model(Path(spec["path"]), threads).create_infer_request()

        def run(x: np.ndarray) -> None:
            request.infer({0: x})

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

        profile = op_profile(spec["backend"], Path(spec["path"]), x, threads)  # after the timing
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


def benchmark_variants(specs: dict[str, dict[str, Any]], shape: tuple[int, ...], threads: int,
                       warmup: int, repeats: int, baseline: str = "torch_eager") -> dict[str, Any]:
    """Benchmark every named spec one after another; add speed-ups against ``baseline``."""
    results = {name: benchmark_in_subprocess(spec, shape, threads, warmup, repeats)
               for name, spec in specs.items()}
    base = results.get(baseline, {}).get("p50_ms")
    for result in results.values():
        if base and "p50_ms" in result:
            result[f"speedup_vs_{baseline}"] = round(base / result["p50_ms"], 3)
    return {"shape": list(shape), "threads": threads, "warmup": warmup, "repeats": repeats,
            "baseline": baseline, "results": results}


def measure_peak_gflops(threads: int, repeats: int = 10, n: int = PEAK_N) -> dict[str, Any]:
    """This machine's practical fp32 peak with ``threads`` threads, measured in its own process:
    the p50 of an ``n``³ matrix multiply by torch (MKL/oneDNN sgemm), as GFLOP/s."""
    result = benchmark_in_subprocess({"backend": "sgemm", "n": n}, (1,), threads, 2, repeats)
    if "p50_ms" not in result:
        return {"error": result.get("error", "peak measurement failed")}
    return {"gflops": round(2 * n**3 / (result["p50_ms"] / 1000) / 1e9, 1), "threads": threads,
            "method": f"fp32 matrix multiply {n}x{n}x{n} (torch.mm), p50 of {repeats}"}


def add_throughput(record: dict[str, Any], flops: int, peak_gflops: float | None) -> None:
    """Per result: achieved GFLOP/s at the patch's FLOPs and the fraction of the fp32 peak."""
    record["flops_per_patch"] = int(flops)
    for result in record["results"].values():
        if "p50_ms" in result and flops:
            result["gflops_per_s"] = round(flops / (result["p50_ms"] / 1000) / 1e9, 2)
            if peak_gflops:
                result["pct_of_peak"] = round(100 * result["gflops_per_s"] / peak_gflops, 1)


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
# Not tried: execution_mode ORT_PARALLEL, since a U-Net is a chain of convolutions with nothing to
# run side by side (measured: no faster than sequential on the demo model, 2 threads).
ORT_CANDIDATES: tuple[dict[str, Any], ...] = (
    {},
    {"allow_spinning": False},
    {"optimization": "ORT_ENABLE_EXTENDED"},
    {"mem_pattern": False, "cpu_arena": False},
    {"io_binding": True},
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
                   sweep_batch: int = 2, tune: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Torch eager (the baseline) and every variant of a fold, at the fold's patch size; the ONNX
    Runtime variants named in ``tune`` first get their session settings searched (the timed run
    then uses the chosen ones); then a thread and batch sweep of ``sweep_variants``."""
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
    record["peak"] = measure_peak_gflops(threads)
    record["accelerators"] = accelerator_status()
    reference = next((v["path"] for v in variants.values() if v["kind"] == "onnx"
                      and Path(v["path"]).is_file()), None)
    if reference:
        import onnx  # noqa: PLC0415

        from .coverage import compute_node_flops  # noqa: PLC0415

        flops = sum(n["flops"] for n in compute_node_flops(onnx.load(reference, load_external_data=False),
                                                          tuple(shape)).values())
        add_throughput(record, flops, record["peak"].get("gflops"))
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
