"""Latency and memory of each backend, each measured in its own process.

A parent process starts one child per backend (``python -m nnbridge.bench.measure``) so that peak
memory is the backend's own and one backend's allocator or thread pool never affects another's
timing. Memory is read from ``/proc/self/status`` (``VmHWM``, ``VmRSS``), not ``ru_maxrss``:
Linux carries ``ru_maxrss`` across fork and exec, so a child would report its parent's peak. All
numbers of one report come from one run of the same machine; compare ratios, not absolute times.
"""

from __future__ import annotations

import argparse
import importlib
import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import numpy as np

from ..core.artifacts import artifact_size
from ..core.metadata import inference_precision
from ..runtime import ONNX_BACKENDS, RUNNER_BACKENDS, make_runner
from ..runtime.ov import precision_unavailable
from ..runtime.profile import op_profile
from ..runtime.timing import StopRule, median_ci, peak_rss_mb, rss_mb, time_runner, time_until_stable
from ..runtime.torchrun import module_runner, set_torch_threads
from .kernels import time_peak_kernel
from .networks import build_network


BACKENDS = ("torch", "torchscript", "torch_arch", "onnxruntime", "openvino", "sgemm")
PEAK_N = 2048  # the fp32 matrix multiply that measures this machine's practical peak


# the package each backend imports on first use: imported before the load is timed
RUNTIME_PACKAGES = {"onnxruntime": "onnxruntime", "openvino": "openvino", "torchscript": "torch", "torch": "torch",
                    "torch_arch": "torch", "sgemm": "torch"}


def _load_runner(spec: dict[str, Any], threads: int, shape: tuple[int, ...]):
    """A callable running one batch of ``shape`` on the spec's backend: the runtimes' own factory
    (:func:`nnbridge.runtime.make_runner`, OpenVINO compiled for ``shape``) for artifacts; eager torch for a checkpoint
    (``torch``) or a network description (``torch_arch``); ``sgemm`` for the fp32 peak."""
    backend = spec["backend"]
    if backend in RUNNER_BACKENDS:
        return make_runner({**spec, "shape": shape}, threads)
    if backend == "torch":
        from ..models.loader import load_model  # noqa: PLC0415 - only a torch child may carry torch in its memory

        set_torch_threads(threads)
        return module_runner(load_model(spec["source"]).network, threads)
    if backend == "torch_arch":  # a network built from a JSON description (random weights)
        set_torch_threads(threads)
        return module_runner(build_network(spec["arch"], int(spec.get("seed", 0))), threads)
    if backend == "sgemm":  # the peak micro-benchmark: an n x n x n fp32 matmul (MKL/oneDNN)
        import torch  # noqa: PLC0415 - torch only in the sgemm child

        set_torch_threads(threads)
        n = int(spec.get("n", PEAK_N))
        a, b = torch.randn(n, n), torch.randn(n, n)

        def run(x: np.ndarray) -> None:
            torch.mm(a, b)

        return run
    raise ValueError(f"unknown backend {backend!r}; use one of {BACKENDS}")


def measure(spec: dict[str, Any], shape: tuple[int, ...], threads: int, warmup: int,
            repeats: int, seed: int = 0, give_up_ms: float | None = None) -> dict[str, Any]:
    """Time runs of the spec's backend in this process after ``warmup`` untimed ones: exactly
    ``repeats`` runs, or, when the spec carries a ``stop`` rule (:class:`StopRule` fields, with
    ``repeats`` as its maximum), until the median is stable, the time budget is spent or (with
    ``give_up_ms``, a time to beat) two runs were slower than that. A spec with ``adjacent_peak``
    (``fp32``, ``int8`` or ``bf16``) also times that peak kernel here right after
    (:func:`nnbridge.bench.kernels.time_peak_kernel`) when its median run took at least
    ``adjacent_min_ms`` (default 0): its "% of peak" then compares two numbers of the same minute.
    ``load_ms``: reading and compiling the artifact (the runtime's import excluded), what
    ``nnbridge predict`` pays per fold before its first window."""
    if spec["backend"] in RUNTIME_PACKAGES:
        importlib.import_module(RUNTIME_PACKAGES[spec["backend"]])
    rss_start = rss_mb()
    started = time.perf_counter()
    run = _load_runner(spec, threads, shape)  # read and compile (an ONNX import, an IR read, a checkpoint load)
    load_ms = 1000 * (time.perf_counter() - started)
    rss_loaded = rss_mb()
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    if spec.get("stop") is not None:
        rule = StopRule(**{"max_repeats": repeats, **spec["stop"]})
        arr, stopped = time_until_stable(run, x, warmup, rule, give_up_ms=give_up_ms)
    else:
        arr, stopped = time_runner(run, x, warmup, repeats), f"{repeats} runs (fixed)"
    profile = None
    if spec["backend"] in ONNX_BACKENDS and spec.get("profile", True):
        # one profiled run is enough once a run takes a second: the timing warmed everything up
        runs = 1 if float(np.median(arr)) > 1000 else 3
        profile = op_profile(spec["backend"], Path(spec["path"]), x, threads,
                             precision=spec.get("precision"), runs=runs)  # after the timing
    peak_rss = peak_rss_mb()  # before a peak kernel below adds its own buffers
    adjacent = ({"adjacent_peak": time_peak_kernel(spec["adjacent_peak"], threads)}
                if spec.get("adjacent_peak") and float(np.median(arr)) >= float(spec.get("adjacent_min_ms", 0))
                else {})
    low, high = median_ci(arr)
    return {
        "backend": spec["backend"],
        "shape": list(shape),
        "threads": threads,
        "warmup": warmup,
        "repeats": int(len(arr)),
        "stopped": stopped,
        "p50_ms": float(np.percentile(arr, 50)),
        "p50_ci_ms": [round(low, 4), round(high, 4)],
        "p90_ms": float(np.percentile(arr, 90)),
        "p99_ms": float(np.percentile(arr, 99)),
        "mean_ms": float(arr.mean()),
        "min_ms": float(arr.min()),
        "load_ms": round(load_ms, 1),
        "rss_after_imports_mb": round(rss_start, 1),
        "rss_after_load_mb": round(rss_loaded, 1),
        "peak_rss_mb": round(peak_rss, 1),
        **({"inference_precision": run.precision} if hasattr(run, "precision") else {}),
        **({"op_profile": profile} if profile is not None else {}),
        **adjacent,
    }


def benchmark_in_subprocess(spec: dict[str, Any], shape: tuple[int, ...], threads: int,
                            warmup: int, repeats: int, timeout: float = 1800) -> dict[str, Any]:
    """Run :func:`measure` in a fresh interpreter; failures are returned, not raised."""
    cmd = [sys.executable, "-m", "nnbridge.bench.measure", "--spec", json.dumps(spec),
           "--shape", json.dumps(list(shape)), "--threads", str(threads),
           "--warmup", str(warmup), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    if proc.returncode != 0 or not lines:
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        return {"backend": spec["backend"], "error": f"exit {proc.returncode}: {tail}"}
    result = json.loads(lines[-1])
    if spec.get("path"):
        result["file_size_bytes"] = artifact_size(spec["path"])  # an IR: .xml and .bin
    return result


def benchmark_points_in_subprocess(points: list[dict[str, Any]], warmup: int, repeats: int,
                                   timeout: float = 1800) -> list[dict[str, Any]]:
    """Several measurements (``{"spec", "shape", "threads"}`` each) one after another in ONE fresh
    interpreter: the settings search and the thread/batch sweep, whose points differ in session
    settings, threads or batch but not in what is loaded, and whose numbers are compared with each
    other only. A point may carry ``give_up_ms`` (a time to beat) and ``race: true`` (the fastest
    p50 of the earlier racing points is one): it stops after two runs slower than that
    (:func:`nnbridge.runtime.timing.time_until_stable`); a racing point with
    ``skip_when_slower_ms`` is not timed at all (``skipped``) once that fastest p50 exceeds it. Each point still builds its own session (a runtime's thread pool belongs to its
    session; torch's thread count is set per point) and the interpreter's start and the runtime's
    import are paid once, not per point: on the 2-core machines that start is 1-3 s, more than a
    demo model's whole timing. Peak memory is not reported here (it would be the group's): the
    main measurement of each artifact keeps its own process (:func:`benchmark_in_subprocess`).
    A failure is returned per point; a crash of the interpreter marks every point not measured."""
    cmd = [sys.executable, "-m", "nnbridge.bench.measure", "--points", json.dumps(points),
           "--warmup", str(warmup), "--repeats", str(repeats)]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    lines = [ln for ln in proc.stdout.splitlines() if ln.startswith("{")]
    results = [json.loads(ln) for ln in lines]
    if proc.returncode != 0 or len(results) < len(points):
        tail = (proc.stderr.strip().splitlines() or ["no output"])[-1]
        results += [{"backend": p["spec"]["backend"], "error": f"exit {proc.returncode}: {tail}"}
                    for p in points[len(results):]]
    return results


def spec_precision(spec: dict[str, Any]) -> str:
    """The inference precision an OpenVINO spec runs in: its own ``precision``, else its file's
    (``bf16`` for a bf16 variant), else fp32; every other backend: ``f32`` (its file decides)."""
    if spec.get("backend") != "openvino":
        return "f32"
    if spec.get("precision"):
        return str(spec["precision"])

    path = Path(spec.get("path", ""))
    return inference_precision(path) if path.is_file() else "f32"


def skip_reason(spec: dict[str, Any]) -> str | None:
    """Why a spec cannot run on this machine (a bf16 run on a CPU without native bf16), or None."""

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


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="benchmark one backend (internal)")
    parser.add_argument("--spec", help="one measurement: what to run")
    parser.add_argument("--shape")
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--points", help="several measurements ([{spec, shape, threads}]), one JSON line each")
    parser.add_argument("--warmup", type=int, default=3)
    parser.add_argument("--repeats", type=int, default=10)
    args = parser.parse_args(argv)
    if args.points:
        best = None  # the fastest p50 so far of the points marked "race"
        for point in json.loads(args.points):
            give_up = point.get("give_up_ms")
            if point.get("race") and best is not None:
                give_up = best if give_up is None else min(give_up, best)
            limit = point.get("skip_when_slower_ms")
            if point.get("race") and best is not None and limit is not None and best > limit:
                print(json.dumps({"backend": point["spec"]["backend"], "skipped": (
                    f"not timed: a run takes {best:.0f} ms, over {limit:g} ms, where what this setting "
                    "changes (a per-call cost) is less than a candidate must gain")}), flush=True)
                continue
            try:
                result = measure(point["spec"], tuple(point["shape"]), int(point["threads"]), args.warmup,
                                 args.repeats, give_up_ms=give_up)
            except Exception as exc:  # noqa: BLE001 - one failing point is reported, the others still run
                result = {"backend": point["spec"]["backend"], "error": f"{type(exc).__name__}: {exc}"}
            if point.get("race") and "p50_ms" in result:
                best = result["p50_ms"] if best is None else min(best, result["p50_ms"])
            print(json.dumps(result), flush=True)
        return
    if not (args.spec and args.shape):
        parser.error("--spec and --shape, or --points")
    result = measure(json.loads(args.spec), tuple(json.loads(args.shape)), args.threads,
                     args.warmup, args.repeats)
    print(json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
