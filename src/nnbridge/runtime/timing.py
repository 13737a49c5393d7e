"""Timing a runner in this process, and this process's memory.

Memory is read from ``/proc/self/status`` (``VmHWM``, ``VmRSS``), not ``ru_maxrss``: Linux
carries ``ru_maxrss`` across fork and exec, so a child would report its parent's peak.
"""

from __future__ import annotations

import math
import resource
import time
from collections.abc import Callable
from dataclasses import dataclass
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


def median_ci(times: list[float] | np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """A distribution-free confidence interval of the median: the order statistics
    ``x_(j), x_(n-j+1)`` with ``P(j <= Binomial(n, 1/2) <= n-j) >= confidence``; with too few
    samples for that (n < 6 at 95 %), the whole range."""
    x = np.sort(np.asarray(times, dtype=float))
    n = len(x)
    j, tail = 0, 0.0  # tail: P(Binomial(n, 1/2) < j+1)
    while j < n // 2:
        nxt = tail + math.comb(n, j) / 2.0**n
        if 2 * nxt > 1 - confidence:
            break
        tail, j = nxt, j + 1
    if j == 0:
        return float(x[0]), float(x[-1])
    return float(x[j - 1]), float(x[n - j])


@dataclass(frozen=True)
class StopRule:
    """When timing stops: the median is stable (the half-width of its 95 % confidence interval
    within ``rel_ci`` of it, after ``min_repeats`` runs), the ``budget_s`` of this measurement is
    spent (after at least 3 runs), or ``max_repeats`` runs are done."""

    max_repeats: int = 20
    min_repeats: int = 5
    budget_s: float = 20.0
    rel_ci: float = 0.02


def time_until_stable(run: Callable[[np.ndarray], object], x: np.ndarray, warmup: int,
                      rule: StopRule, give_up_ms: float | None = None,
                      clock: Callable[[], float] = time.perf_counter) -> tuple[np.ndarray, str]:
    """Milliseconds per call of ``run(x)`` under ``rule`` after up to ``warmup`` untimed calls, and
    why timing stopped. The warm-up stops once it has used half the budget, and after its first
    call when that call took a tenth of the budget: at seconds per call (a 128³ patch) one untimed
    call pays the allocations, and the median absorbs a slower first timed one. ``give_up_ms``: a
    time to beat (the best of a settings search so far, the timing a sweep point competes with):
    after 2 timed runs slower than it the measurement stops, as it cannot be the one chosen."""
    started = clock()
    for i in range(warmup):
        t0 = clock()
        run(x)
        now = clock()
        if now - started > rule.budget_s / 2 or now - t0 >= rule.budget_s / 10:
            break
    started = clock()
    times: list[float] = []
    while True:
        t0 = clock()
        run(x)
        times.append((clock() - t0) * 1000.0)
        n = len(times)
        if n >= rule.max_repeats:
            return np.array(times), f"{n} runs (the maximum)"
        if give_up_ms is not None and n >= 2 and min(times) > give_up_ms:
            return np.array(times), f"stopped after {n} runs: each slower than {give_up_ms:.1f} ms, the time to beat"
        if n >= rule.min_repeats:
            low, high = median_ci(times)
            if (high - low) / 2 <= rule.rel_ci * float(np.median(times)):
                return np.array(times), f"stable after {n} runs (95 % CI of the median within ±{rule.rel_ci:.0%})"
        if n >= 3 and clock() - started >= rule.budget_s:
            return np.array(times), f"time budget of {rule.budget_s:g} s spent after {n} runs"


def quick_latency_ms(run: Callable[[np.ndarray], object], shape: tuple[int, ...], seed: int = 0,
                     budget_s: float = 2.0) -> float:
    """Median of up to 5 runs on one random input after one warm-up, fewer once ``budget_s`` of
    timed runs is spent (at least one: a 128³ patch on one thread takes seconds per run): a rough
    number (e.g. per step of a quantization loop), not a benchmark."""
    x = np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
    run(x)
    times: list[float] = []
    while len(times) < 5 and sum(times) < budget_s * 1000.0:
        times.extend(time_runner(run, x, 0, 1))
    return round(float(np.percentile(times, 50)), 3)
