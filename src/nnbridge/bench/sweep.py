"""Runtime settings searched per machine: threads and batch size, and ONNX Runtime's session options."""

from __future__ import annotations

from typing import Any

from ..runtime.timing import StopRule
from .measure import benchmark_points_in_subprocess, skip_reason


def sweep(specs: dict[str, dict[str, Any]], names: list[str] | tuple[str, ...], shape: tuple[int, ...],
          threads: int, batch: int, warmup: int, repeats: int,
          measured: dict[str, float | None] | None = None) -> dict[str, Any]:
    """p50 of each named spec at 1..``threads`` threads (batch 1), and per patch at ``batch``
    patches per run with ``threads`` threads; a spec's points in one process of their own
    (:func:`benchmark_points_in_subprocess`). ``measured``: p50s the caller already has of these
    specs at ``threads`` threads and batch 1 (the artifact's main timing), not timed again
    (``p50_from`` says so), and the time each point has to beat: at a 128³ patch each point is
    ~20-40 s, and one clearly slower stops after two runs (``stopped`` says so)."""
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
        known = (measured or {}).get(name)
        counts = range(1, threads + (known is None))  # thread counts timed here
        # with the artifact's own timing known, a point stops after two runs slower than it
        # (per patch): it cannot be the setting chosen (at a 128³ patch a point is 20-40 s)
        beat = {} if known is None else {"give_up_ms": known}
        points = [{"spec": spec, "shape": list(shape), "threads": t, **beat} for t in counts]
        if batch > 1:
            points.append({"spec": spec, "shape": [batch, *shape[1:]], "threads": threads,
                           **({} if known is None else {"give_up_ms": known * batch})})
        timed = benchmark_points_in_subprocess(points, warmup, repeats)
        by_threads = {str(t): r.get("p50_ms") for t, r in zip(counts, timed)}
        row: dict[str, Any] = {"p50_ms_by_threads": by_threads}
        labels = [f"threads {t}" for t in counts] + ([f"batch {batch}"] if batch > 1 else [])
        gave_up = {label: r["stopped"] for label, r in zip(labels, timed) if "time to beat" in r.get("stopped", "")}
        if gave_up:
            row["stopped_early"] = gave_up
        if known is not None:
            by_threads[str(threads)] = known
            row["p50_from"] = {str(threads): "the artifact's timing at batch 1"}
        if batch > 1:
            r = timed[-1]
            row["p50_ms_per_patch_at_batch"] = r["p50_ms"] / batch if "p50_ms" in r else None
        out["results"][name] = row
    return out


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

# candidates that change a per-call cost only (spinning threads' wake-ups between operators, the
# allocator, the output's copy: milliseconds per run), not how an operator computes: once a run
# takes longer than OVERHEAD_LIMIT_MS, MIN_GAIN of it is more than they can save, and they are not
# timed (at a real-size 128^3 patch, 3-4 s per run on 2 cores, they took ~40 s of the search, and
# their "wins" were noise: AMD EPYC Zen 4, 2026-12-02)
OVERHEAD_ONLY: tuple[dict[str, Any], ...] = (
    {"allow_spinning": False},
    {"mem_pattern": False, "cpu_arena": False},
    {"io_binding": True},
)
OVERHEAD_LIMIT_MS = 1000.0


def tune_onnxruntime(spec: dict[str, Any], shape: tuple[int, ...], threads: int, warmup: int,
                     repeats: int, overhead_limit_ms: float = OVERHEAD_LIMIT_MS) -> dict[str, Any]:
    """Time each of :data:`ORT_CANDIDATES` (one session each, all in one process of their own);
    choose the fastest if it beats ORT's default by more than :data:`MIN_GAIN`. With a ``stop``
    rule in ``spec``, each candidate gets half its time budget and 3 runs at least: six
    candidates at a 128³ patch (4-8 s per run) otherwise took ~3 min of an exclusive job. The
    candidates race: one whose first two runs are both slower than the fastest p50 so far stops
    there (it cannot be chosen; its ``stopped`` says so). The :data:`OVERHEAD_ONLY` candidates
    are not timed once the fastest run so far is slower than ``overhead_limit_ms`` (their
    ``skipped`` says why)."""
    stop = spec.get("stop")
    if stop is not None:
        stop = {**stop, "budget_s": float(stop.get("budget_s", StopRule.budget_s)) / 2,
                "min_repeats": min(3, int(stop.get("min_repeats", StopRule.min_repeats)))}
    points = [{"spec": {**spec, "settings": settings, "profile": False, **({"stop": stop} if stop else {})},
               "shape": list(shape), "threads": threads, "race": True,
               **({"skip_when_slower_ms": overhead_limit_ms} if settings in OVERHEAD_ONLY else {})}
              for settings in ORT_CANDIDATES]
    tried = []
    for settings, r in zip(ORT_CANDIDATES, benchmark_points_in_subprocess(points, warmup, repeats)):
        tried.append({"settings": settings, "p50_ms": r.get("p50_ms"), **({"error": r["error"]} if "error" in r
                                                                           else {}),
                      **({"skipped": r["skipped"]} if "skipped" in r else {}),
                      **({"stopped": r["stopped"]} if "time to beat" in r.get("stopped", "") else {})})
    default = tried[0]["p50_ms"]
    ok = [t for t in tried if t["p50_ms"] is not None]
    best = min(ok, key=lambda t: t["p50_ms"]) if ok else tried[0]
    chosen = best if (default is None or best["p50_ms"] < default * (1 - MIN_GAIN)) else tried[0]
    return {"chosen": chosen["settings"], "gain_vs_default": (round(default / chosen["p50_ms"], 3)
                                                             if default and chosen["p50_ms"] else None),
            "candidates": tried}
