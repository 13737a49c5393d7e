"""Speed targets: the best exact fp32 and the best gated INT8 runtime against torch eager, with the
ceiling the measured peak allows and, when missed, where the time goes."""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any


FP32_TARGET = 2.0  # speed-up over torch eager the best exact fp32 runtime should reach


INT8_TARGET = 3.0  # ... and the best INT8 variant that passed its Dice gate


# the share of this machine's measured peak the fastest exact fp32 runtime and the fastest INT8
# variant should reach at a realistic size (128^3), where a network is large enough to use it
PEAK_TARGETS = {"fp32": 90.0, "int8": 80.0}


TOP_OPS = 5


def _fastest(candidates: dict[str, dict[str, Any]], names: Iterable[str]) -> dict[str, Any] | None:
    """The candidate of ``names`` with the highest speed-up, as {name, speedup, p50_ms}."""
    done = [(n, candidates[n]) for n in names if candidates.get(n, {}).get("speedup") is not None]
    if not done:
        return None
    name, best = max(done, key=lambda item: item[1]["speedup"])
    out = {"name": name, "speedup": round(float(best["speedup"]), 3), "p50_ms": best.get("p50_ms")}
    if best.get("pct_of_peak") is not None:
        out["pct_of_peak"] = best["pct_of_peak"]
    return out


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
                  int8_target: float = INT8_TARGET, peak_targets: dict[str, float] | None = None,
                  top: int = TOP_OPS) -> dict[str, Any]:
    """The speed targets on one set of results. ``candidates``: name → {speedup (vs torch eager),
    p50_ms, pct_of_peak (optional), op_profile (optional)}; ``exact``: the names that count as
    exact fp32 runtimes, ``int8``: the INT8 ones (the caller passes only those that passed their
    Dice gate); ``ceilings``: :func:`speed_ceilings`, recorded alongside; ``peak_targets``
    (``{"fp32": %, "int8": %}``, e.g. :data:`PEAK_TARGETS`): the share of the measured peak the
    fastest of each should reach too (``fp32_peak_target_met``, ``int8_peak_target_met``; None
    when its share is unknown: no peak measured). For each fastest runtime that misses a target,
    the top operators of its profile say where the time goes."""
    fp32_best, int8_best = _fastest(candidates, exact), _fastest(candidates, int8)
    out: dict[str, Any] = {
        **(ceilings or {}),
        "fp32_target": fp32_target, "int8_target": int8_target,
        "best_fp32_exact": fp32_best, "fp32_target_met": bool(fp32_best and fp32_best["speedup"] >= fp32_target),
        "best_int8": int8_best, "int8_target_met": bool(int8_best and int8_best["speedup"] >= int8_target),
    }
    missed = {"fp32": not out["fp32_target_met"], "int8": not out["int8_target_met"]}
    for kind, best in (("fp32", fp32_best), ("int8", int8_best)):
        if peak_targets and kind in peak_targets:
            share = (best or {}).get("pct_of_peak")
            out[f"{kind}_peak_target"] = peak_targets[kind]
            out[f"{kind}_peak_target_met"] = None if share is None else share >= peak_targets[kind]
            missed[kind] = missed[kind] or out[f"{kind}_peak_target_met"] is False
    dominant = {}
    for kind, best in (("fp32", fp32_best), ("int8", int8_best)):
        if best and missed[kind] and candidates[best["name"]].get("op_profile"):
            dominant[best["name"]] = candidates[best["name"]]["op_profile"][:top]
    if dominant:
        out["dominant_ops"] = dominant
    return out
