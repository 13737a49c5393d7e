"""The self-check set a bundle ships for ``nnbridge verify``: a few of a fold's held-out patches,
rounded to float16 (and cut smaller when needed) to stay within a byte budget, with the PyTorch
reference label maps computed on exactly those values, and each variant's Dice on them where the
pipeline gates it (the verification elsewhere is bounded by it: :mod:`nnbridge.predict.verify`).

Which patches: those showing the most foreground classes, then the most foreground voxels, one
per held-out case before any case gets a second, so the set covers every class and as many
cases as the budget allows. Size: ``patches`` patches of ``max_kb`` kB in all (float16 before
compression); when they do not fit whole, each is cut around its foreground to the largest size
the network takes (a multiple of its total stride, at least half the patch per axis) that fits,
and only if even that does not fit are there fewer patches (at a real-size patch, one patch of
twice the total stride per axis, over budget if it must: the record says ``over_budget``).
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np

from ..core.dice import overlap_counts, to_labels
from ..predict.verify import write_selfcheck


def choose_patches(reference: np.ndarray, groups: list[str], classes: list[int], region_based: bool,
                   n: int) -> list[int]:
    """Indices of ``n`` patches: most foreground classes present, then most foreground voxels,
    each held-out case once before any twice."""
    sizes = overlap_counts(reference, reference, classes, region_based)[:, :, 0]
    order = sorted(range(len(reference)), key=lambda i: (-int((sizes[i] > 0).sum()), -int(sizes[i].sum()), i))
    chosen: list[int] = []
    used: set[str] = set()
    for i in order:
        if len(chosen) < n and groups[i] not in used:
            chosen.append(i)
            used.add(groups[i])
    chosen += [i for i in order if i not in chosen][: max(0, n - len(chosen))]
    return sorted(chosen)


def fit_budget(shape: tuple[int, ...], n: int, max_bytes: int, multiple: tuple[int, ...],
               dynamic: bool) -> tuple[int, tuple[int, ...]]:
    """(number of patches, spatial size) that fit ``max_bytes`` as float16: ``n`` whole patches
    if they fit, else ``n`` patches cut to the largest size (multiples of ``multiple``, at least
    half the patch per axis) that fits, else fewer; if nothing else fits, one patch of twice the
    total stride per axis (a bottleneck of 2 voxels per axis: a norm over a single voxel, as
    nnU-Net's InstanceNorm, cannot run), even over budget. A network without dynamic spatial axes
    takes whole patches only (at least one, even over budget)."""
    channels, spatial = shape[0], tuple(int(s) for s in shape[1:])
    per_voxel = 2 * channels
    if per_voxel * math.prod(spatial) * n <= max_bytes:
        return n, spatial
    if not dynamic:
        return max(1, max_bytes // (per_voxel * math.prod(spatial))), spatial

    def shrink(count: int, floor: list[int]) -> list[int]:
        side = [s - s % m for s, m in zip(spatial, multiple)]
        while per_voxel * math.prod(side) * count > max_bytes:
            axis = max(range(len(side)), key=lambda a: side[a] - floor[a])  # the axis with most room
            if side[axis] - multiple[axis] < floor[axis]:
                break
            side[axis] -= multiple[axis]
        return side

    half = [max(m, -(-(s // 2) // m) * m) for s, m in zip(spatial, multiple)]
    for count in range(n, 0, -1):
        side = shrink(count, half)
        if per_voxel * math.prod(side) * count <= max_bytes:
            return count, tuple(side)
    smallest = [min(s - s % m, 2 * m) if s >= 2 * m else s - s % m for s, m in zip(spatial, multiple)]
    return 1, tuple(shrink(1, smallest))


def cut(patches: np.ndarray, reference: np.ndarray, size: tuple[int, ...], classes: list[int],
        region_based: bool) -> np.ndarray:
    """Each patch cut to ``size`` around the centre of its foreground (or its centre)."""
    spatial = patches.shape[2:]
    if tuple(size) == tuple(spatial):
        return patches
    out = np.zeros((len(patches), patches.shape[1], *size), dtype=patches.dtype)
    for i in range(len(patches)):
        fg = reference[i, classes].max(axis=0) > 0 if region_based else np.isin(reference[i], classes)
        centre = (np.argwhere(fg).mean(axis=0) if fg.any() else np.array(spatial) / 2).round().astype(int)
        start = [int(min(max(c - s // 2, 0), full - s)) for c, s, full in zip(centre, size, spatial)]
        out[i] = patches[(i, slice(None), *(slice(a, a + s) for a, s in zip(start, size)))]
    return out


def build_selfcheck(reference_run, heldout: np.ndarray, reference_logits: np.ndarray, groups: list[str],
                    classes: list[int], region_based: bool, out: Path, *, patches: int, max_kb: float,
                    multiple: tuple[int, ...], dynamic: bool) -> tuple[np.ndarray, list[str], dict[str, Any]]:
    """Choose, round and write the fold's self-check set; ``reference_run`` (patches → logits,
    the PyTorch model) gives the label maps on exactly the stored values. Returns (the patches as
    the variants must get them, their cases, the record)."""
    reference = to_labels(reference_logits, region_based)
    chosen = choose_patches(reference, groups, classes, region_based, min(patches, len(heldout)))
    count, size = fit_budget(tuple(heldout.shape[1:]), len(chosen), int(max_kb * 1024), multiple, dynamic)
    chosen = chosen[:count]
    picked = cut(heldout[chosen], reference[chosen], size, classes, region_based)
    values = picked.astype(np.float16).astype(np.float32)  # what the bundle stores, exactly
    labels = to_labels(reference_run(values), region_based)
    cases = [groups[i] for i in chosen]
    write_selfcheck(out, values, labels, cases)
    return values, cases, {"file": str(out), "n_patches": len(chosen), "patch_indices": chosen, "cases": cases,
                           "shape": list(values.shape[1:]), "cut": tuple(size) != tuple(heldout.shape[2:]),
                           "bytes": Path(out).stat().st_size, "budget_bytes": int(max_kb * 1024),
                           "over_budget": Path(out).stat().st_size > int(max_kb * 1024),
                           "reference": "PyTorch eager label maps on the float16-rounded patches"}
