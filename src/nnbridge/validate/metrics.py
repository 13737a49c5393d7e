"""Agreement of a variant's logits with a reference: tensor errors, label Dice, gates."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.dice import case_dice, dice_of, label_classes, min_voxels_for, overlap_counts, to_labels

__all__ = ["to_labels", "dice_per_class", "compare_logits", "Tolerance", "apply_gate", "validate_variant",
           "label_classes", "certain_failures"]


def dice_per_class(ref: np.ndarray, test: np.ndarray, classes: list[int],
                   region_based: bool = False) -> dict[int, float]:
    """Dice of each foreground class, pooled over all patches; 1.0 when both are empty."""
    scores: dict[int, float] = {}
    for c in classes:
        if region_based:
            a, b = ref[:, c] > 0, test[:, c] > 0
        else:
            a, b = ref == c, test == c
        denom = int(a.sum()) + int(b.sum())
        scores[c] = 1.0 if denom == 0 else 2.0 * int(np.logical_and(a, b).sum()) / denom
    return scores


def compare_logits(ref: np.ndarray, test: np.ndarray, label_names: dict[int, str],
                   region_based: bool = False, groups: Sequence[str] | None = None,
                   case_gate: tuple[float | None, int | None] = (None, None)) -> dict[str, Any]:
    """Tensor errors and label agreement of ``test`` against the reference logits; with
    ``groups`` (the case each patch comes from) also the per-class Dice per case under
    ``case_dice`` (:func:`nnbridge.core.dice.case_dice`, with ``case_gate`` = (threshold,
    min_voxels) for the gated minimum and the verdict's stability)."""
    if ref.shape != test.shape:
        raise ValueError(f"logit shapes differ: reference {ref.shape}, variant {test.shape}")
    diff = np.abs(ref.astype(np.float64) - test.astype(np.float64))
    ref_labels, test_labels = to_labels(ref, region_based), to_labels(test, region_based)
    classes = label_classes(label_names, region_based, ref.shape[1])
    if region_based:
        dice = dice_per_class(ref, test, classes, region_based=True)
    else:
        dice = dice_per_class(ref_labels, test_labels, classes)
    named = {label_names.get(c, str(c)): round(v, 6) for c, v in dice.items()}
    scale = float(np.abs(ref).max())
    per_case = {}
    if groups is not None:
        names = [label_names.get(c, str(c)) for c in classes]
        counts = overlap_counts(ref_labels, test_labels, classes, region_based)
        per_case = {"case_dice": case_dice(counts, list(groups), names, threshold=case_gate[0],
                                           min_voxels=case_gate[1])}
    return {
        "max_abs_err": float(diff.max()),
        "mean_abs_err": float(diff.mean()),
        # the error relative to the largest reference logit: fp32 kernels that sum in another
        # order differ by ~1e-6 of the logits' range, whatever that range is
        "max_rel_err": float(diff.max()) / scale if scale > 0 else float(diff.max()),
        "ref_max_abs": scale,
        "voxel_agreement": float(np.mean(ref_labels == test_labels)),
        "dice": named,
        "min_dice": min(named.values()) if named else 1.0,
        **per_case,
    }


@dataclass(frozen=True)
class Tolerance:
    """Gate of one variant; ``None`` disables a bound."""

    max_abs_err: float | None = None
    mean_abs_err: float | None = None
    min_dice: float | None = None
    max_rel_err: float | None = None
    min_case_dice: float | None = None
    """Worst per-class Dice over the held-out cases (each case's patches pooled)."""
    min_case_voxels: int | None = None
    """Case–class pairs smaller than this (|A|+|B| voxels) are listed, not gated; None:
    :func:`nnbridge.core.dice.min_voxels_for` ``min_case_dice``."""

    @classmethod
    def from_config(cls, entry: dict[str, Any] | None) -> "Tolerance":
        entry = entry or {}
        return cls(entry.get("max_abs_err"), entry.get("mean_abs_err"), entry.get("min_dice"),
                   entry.get("max_rel_err"), entry.get("min_case_dice"), entry.get("min_case_voxels"))

    @property
    def case_gate(self) -> tuple[float | None, int | None]:
        """(threshold, min_voxels) of the per-case gate."""
        voxels = self.min_case_voxels if self.min_case_voxels is not None else min_voxels_for(self.min_case_dice)
        return self.min_case_dice, voxels

    def to_dict(self) -> dict[str, float | None]:
        out = {"max_abs_err": self.max_abs_err, "mean_abs_err": self.mean_abs_err,
               "max_rel_err": self.max_rel_err, "min_dice": self.min_dice}
        if self.min_case_dice is not None:
            out.update(min_case_dice=self.min_case_dice, min_case_voxels=self.case_gate[1])
        return out


GATED_METRICS = ("max_abs_err", "mean_abs_err", "max_rel_err", "ref_max_abs", "voxel_agreement", "min_dice")


def non_finite_metrics(metrics: dict[str, Any], names: tuple[str, ...] = GATED_METRICS) -> list[str]:
    """``name = value`` of the metrics (of ``names``, and every Dice) that are NaN or infinite: a
    comparison with NaN is always false, so ``NaN > tol`` would pass a gate that must fail."""
    values = [(n, metrics.get(n)) for n in names]
    values += [(f"Dice of {k}", v) for k, v in (metrics.get("dice") or {}).items()]
    return [f"{n} = {v}" for n, v in values if isinstance(v, (int, float)) and not math.isfinite(v)]


def apply_gate(metrics: dict[str, Any], tol: Tolerance) -> list[str]:
    """Reasons the metrics fail ``tol`` (empty when the variant passes). A non-finite metric
    (NaN or Inf logits on either side) fails every gate, whatever bounds it sets."""
    failures = []
    bad = non_finite_metrics(metrics)
    if bad:
        failures.append(f"non-finite {', '.join(bad)}: NaN or Inf in the logits")
    if tol.max_abs_err is not None and metrics["max_abs_err"] > tol.max_abs_err:
        failures.append(f"max abs error {metrics['max_abs_err']:.3g} > {tol.max_abs_err:g}")
    if tol.max_rel_err is not None and metrics["max_rel_err"] > tol.max_rel_err:
        failures.append(f"max relative error {metrics['max_rel_err']:.3g} > {tol.max_rel_err:g}")
    if tol.mean_abs_err is not None and metrics["mean_abs_err"] > tol.mean_abs_err:
        failures.append(f"mean abs error {metrics['mean_abs_err']:.3g} > {tol.mean_abs_err:g}")
    if tol.min_dice is not None:
        for name, value in metrics["dice"].items():
            if value < tol.min_dice:
                failures.append(f"Dice of {name} {value:.4f} < {tol.min_dice:g}")
    if tol.min_case_dice is not None:
        if "case_dice" not in metrics:
            failures.append("min_case_dice set but the patches' cases are unknown")
        else:
            limit = tol.case_gate[0]
            low = metrics["case_dice"].get("below", [])
            failures += [f"Dice of {b['class']} on case {b['case']} {b['dice']:.4f} < {limit:g}" for b in low[:5]]
            if len(low) > 5:
                failures.append(f"and {len(low) - 5} more case-class pair(s) below {limit:g}")
    return failures


def validate_variant(ref: np.ndarray, test: np.ndarray, label_names: dict[int, str],
                     tol: Tolerance, region_based: bool = False,
                     groups: Sequence[str] | None = None) -> dict[str, Any]:
    """Metrics, gate and verdict of one variant (``groups``: the case of each patch, for the
    per-case Dice and its gate)."""
    metrics = compare_logits(ref, test, label_names, region_based, groups, tol.case_gate)
    failures = apply_gate(metrics, tol)
    return {**metrics, "tolerance": tol.to_dict(), "passed": not failures, "failures": failures}


def certain_failures(ref: np.ndarray, first: np.ndarray, label_names: dict[int, str], tol: Tolerance,
                     region_based: bool = False) -> list[str]:
    """Reasons ``tol`` fails whatever the variant gives on the patches it has not run yet:
    ``first`` is its logits on the first ``len(first)`` patches of ``ref`` (the reference on all).

    Bounds that hold for any remaining logits: the max abs error only grows; the max relative
    error's denominator is the largest reference logit over all patches (known); the mean abs
    error is at least what the first patches add over all elements; a class's pooled Dice is at
    most what it would be if every remaining patch agreed with the reference exactly. Non-finite
    logits fail every gate. Empty when the remaining patches could still make it pass."""
    k = len(first)
    if not np.all(np.isfinite(first)):
        return [f"non-finite logits on the first {k} patch(es): NaN or Inf fails every gate"]
    diff = np.abs(ref[:k].astype(np.float64) - first.astype(np.float64))
    reasons = []
    largest = float(diff.max()) if diff.size else 0.0
    scale = float(np.abs(ref).max())
    relative = largest / scale if scale > 0 else largest  # as compare_logits: over the largest reference logit
    floor = float(diff.sum()) / ref.size  # the mean if every remaining logit were exact
    if tol.max_abs_err is not None and largest > tol.max_abs_err:
        reasons.append(f"max abs error {largest:.3g} > {tol.max_abs_err:g}")
    if tol.max_rel_err is not None and relative > tol.max_rel_err:
        reasons.append(f"max relative error {relative:.3g} > {tol.max_rel_err:g}")
    if tol.mean_abs_err is not None and floor > tol.mean_abs_err:
        reasons.append(f"mean abs error at least {floor:.3g} > {tol.mean_abs_err:g}")
    if tol.min_dice is not None:
        classes = label_classes(label_names, region_based, ref.shape[1])
        ref_labels = to_labels(ref, region_based)
        seen = overlap_counts(ref_labels[:k], to_labels(first, region_based), classes, region_based).sum(axis=0)
        agreeing = overlap_counts(ref_labels[k:], ref_labels[k:], classes, region_based).sum(axis=0)
        for c, best in zip(classes, dice_of(seen + agreeing)):
            if best < tol.min_dice:
                reasons.append(f"Dice of {label_names.get(c, str(c))} at most {best:.4f} < {tol.min_dice:g}")
    return reasons
