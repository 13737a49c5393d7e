"""Timing a runner in this process, and this process's memory.

Memory is read from ``/proc/self/status`` (``VmHWM``, ``VmRSS``), not ``ru_maxrss``: Linux
carries ``ru_maxrss`` across fork and exec, so a child would report its parent's peak.
"""

from __future__ import annotations

import resource
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np


def _status_mb(field: str) -> float:
    """``VmHWM`` (peak resident) or ``VmRSS`` (resident now) of this process, in MB."""
    try:
        for line in Path("/proc/self/status").read_text().splitlines():
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024.0
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024.0  # not Linux


def rss_mb() -> float:
    return _status_mb("VmRSS")


def peak_rss_mb() -> float:
    return _status_mb("VmHWM")


def time_runner(run: Callable[[np.ndarray], object], x: np.ndarray, warmup: int, repeats: int) -> np.ndarray:
    """Milliseconds of each of ``repeats`` calls of ``run(x)`` after ``warmup`` untimed ones."""
    for _ in range(warmup):
        run(x)
    times = []
    for _ in range(repeats):
        started = time.perf_counter()
        run(x)
        times.append((time.perf_counter() - started) * 1000.0)
    return np.array(times)


def quick_latency_ms(run: Callable[[np.ndarray], object], shape: tuple[int, ...], seed: int = 0) -> float:
    """Median of 5 runs on one random input after one warm-up: a rough number (e.g. per step of a
    quantization loop), not a benchmark."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    return round(float(np.percentile(time_runner(run, x, 1, 5), 50)), 3)
