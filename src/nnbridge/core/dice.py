"""Agreement of label maps: Dice per class, pooled or per case, with the worst case and how
stable a gate's verdict on it is. Shared by the validate stage (the gates) and ``nnbridge verify``
(the same gates re-checked on the deployment machine, without torch).

Dice = 2|A∩B| / (|A|+|B|) = 1 − |A△B| / (|A|+|B|): a class with n = |A|+|B| voxels moves by about
1/n per voxel that flips. A per-case gate at Dice τ on a class smaller than 1/(1−τ) voxels is
decided by a single voxel; such case–class pairs are listed, not gated (:func:`min_voxels_for`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

import numpy as np


def to_labels(logits: np.ndarray, region_based: bool = False) -> np.ndarray:
    """Segmentation from logits (N, C, ...): argmax, or per-region sigmoid > 0.5 (logit > 0)."""
    if region_based:
        return (logits > 0).astype(np.uint8)
    return np.argmax(logits, axis=1).astype(np.uint8)


def label_classes(label_names: dict[int, str], region_based: bool, n_outputs: int) -> list[int]:
    """The classes a Dice is computed for: foreground labels, or every region's output channel."""
    return list(range(n_outputs)) if region_based else sorted(c for c in label_names if c != 0)


def overlap_counts(ref: np.ndarray, test: np.ndarray, classes: Sequence[int],
                   region_based: bool = False) -> np.ndarray:
    """Per patch and class: (|A|, |B|, |A∩B|) of the reference and test label maps, shape
    (N, K, 3). Label maps are (N, ...) class indices, or (N, C, ...) binary maps per region."""
    out = np.zeros((len(ref), len(classes), 3), dtype=np.int64)
    for k, c in enumerate(classes):
        a = (ref[:, c] > 0) if region_based else (ref == c)
        b = (test[:, c] > 0) if region_based else (test == c)
        axes = tuple(range(1, a.ndim))
        out[:, k, 0] = a.sum(axis=axes)
        out[:, k, 1] = b.sum(axis=axes)
        out[:, k, 2] = np.logical_and(a, b).sum(axis=axes)
    return out


def dice_of(counts: np.ndarray) -> np.ndarray:
    """Dice from summed counts (..., K, 3); 1.0 where both maps lack the class."""
    denom = counts[..., 0] + counts[..., 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(denom == 0, 1.0, 2.0 * counts[..., 2] / np.maximum(denom, 1))


def min_voxels_for(threshold: float | None) -> int:
    """The smallest class size (|A|+|B| voxels) on which one flipped voxel does not by itself
    decide a Dice gate at ``threshold``: ⌈1/(1−τ)⌉ (0 without a gate)."""
    if threshold is None or threshold >= 1:
        return 0
    return math.ceil(1.0 / (1.0 - threshold) - 1e-9)


def group_counts(counts: np.ndarray, groups: Sequence[str]) -> tuple[list[str], np.ndarray]:
    """Counts summed per group (case), groups in order of first appearance: (names, (G, K, 3))."""
    names = list(dict.fromkeys(str(g) for g in groups))
    index = {g: i for i, g in enumerate(names)}
    out = np.zeros((len(names), *counts.shape[1:]), dtype=np.int64)
    for row, g in zip(counts, groups):
        out[index[str(g)]] += row
    return names, out


def _worst(dice: np.ndarray, sizes: np.ndarray, min_voxels: int) -> tuple[float, tuple[int, int] | None]:
    """Worst Dice over gated (group, class) entries (size >= min_voxels) and where it is."""
    gated = sizes >= max(min_voxels, 1)
    if not gated.any():
        return 1.0, None
    masked = np.where(gated, dice, np.inf)
    g, k = np.unravel_index(int(np.argmin(masked)), masked.shape)
    return float(dice[g, k]), (int(g), int(k))


def case_dice(counts: np.ndarray, groups: Sequence[str], names: Sequence[str], *,
              threshold: float | None = None, min_voxels: int | None = None,
              resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """Per-class Dice per case (``groups``: the case of each patch), the worst case, the
    distribution over cases, and — with a ``threshold`` — the stability of the verdict
    "worst gated Dice >= threshold" under resampling the patches within each case.

    ``min_voxels`` (default :func:`min_voxels_for` the threshold): case–class pairs with fewer
    voxels (|A|+|B|) are listed under ``not_gated``, not counted in ``min_case_dice``; those
    gated below the threshold under ``below``, worst first.

    Stability: ``resamples`` bootstrap draws of each case's patches (with replacement, seeded);
    ``same_verdict`` is the share that reach the full sample's verdict; ``stable`` when ≥ 0.9. A
    case with one patch cannot vary, so with one patch per case stability is not judged.
    """
    min_voxels = min_voxels_for(threshold) if min_voxels is None else int(min_voxels)
    cases, per_case = group_counts(counts, groups)
    dice = dice_of(per_case)  # (G, K)
    sizes = per_case[..., 0] + per_case[..., 1]
    worst, where = _worst(dice, sizes, min_voxels)
    record: dict[str, Any] = {
        "cases": {c: {"dice": {n: round(float(dice[i, k]), 6) for k, n in enumerate(names)},
                      "voxels": {n: int(per_case[i, k, 0]) for k, n in enumerate(names)}}
                  for i, c in enumerate(cases)},
        "distribution": {n: {"min": round(float(dice[:, k].min()), 6),
                             "median": round(float(np.median(dice[:, k])), 6),
                             "max": round(float(dice[:, k].max()), 6),
                             "worst_case": cases[int(np.argmin(dice[:, k]))]} for k, n in enumerate(names)},
        "n_cases": len(cases),
        "min_voxels": min_voxels,
        "min_case_dice": round(worst, 6),
        "worst": ({"case": cases[where[0]], "class": names[where[1]], "dice": round(worst, 6),
                   "voxels": int(sizes[where])} if where else None),
        "not_gated": [{"case": cases[i], "class": n, "voxels": int(sizes[i, k]), "dice": round(float(dice[i, k]), 6)}
                      for i in range(len(cases)) for k, n in enumerate(names)
                      if 0 < sizes[i, k] < min_voxels],
    }
    if threshold is not None:
        below = [(float(dice[i, k]), cases[i], n, int(sizes[i, k])) for i in range(len(cases))
                 for k, n in enumerate(names) if dice[i, k] < threshold and sizes[i, k] >= max(min_voxels, 1)]
        record["below"] = [{"case": c, "class": n, "dice": round(d, 6), "voxels": v} for d, c, n, v in sorted(below)]
        record["stability"] = verdict_stability(counts, groups, threshold, min_voxels, resamples, seed)
    return record


def verdict_stability(counts: np.ndarray, groups: Sequence[str], threshold: float, min_voxels: int,
                      resamples: int = 200, seed: int = 0) -> dict[str, Any]:
    """How often resampling each case's patches (with replacement) keeps the verdict of the gate
    "worst per-case per-class Dice >= threshold" (see :func:`case_dice`)."""
    cases, per_case = group_counts(counts, groups)
    verdict = _worst(dice_of(per_case), per_case[..., 0] + per_case[..., 1], min_voxels)[0] >= threshold
    members = {c: [i for i, g in enumerate(groups) if str(g) == c] for c in cases}
    per_case_patches = [len(v) for v in members.values()]
    record: dict[str, Any] = {"verdict": "pass" if verdict else "fail", "resamples": resamples,
                              "patches_per_case": {"min": min(per_case_patches), "max": max(per_case_patches)}}
    if max(per_case_patches) < 2:
        return {**record, "same_verdict": None, "stable": None,
                "note": "one patch per case: the verdict's stability cannot be judged; raise patches.heldout "
                        "to at least 2 per held-out case"}
    rng = np.random.default_rng(seed)
    same = 0
    for _ in range(resamples):
        drawn = np.zeros_like(per_case)
        for g, idx in enumerate(members.values()):
            drawn[g] = counts[rng.choice(idx, size=len(idx), replace=True)].sum(axis=0)
        again = _worst(dice_of(drawn), drawn[..., 0] + drawn[..., 1], min_voxels)[0] >= threshold
        same += int(again == verdict)
    share = same / resamples
    record.update(same_verdict=round(share, 3), stable=share >= 0.9)
    if share < 0.9:
        record["note"] = (f"the verdict holds in {share:.0%} of resamples: raise patches.heldout (now "
                          f"{len(groups)} patches over {len(cases)} case(s)) for a decision that does not hang "
                          "on which patches were drawn")
    return record
