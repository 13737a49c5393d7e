"""What the ONNX and TorchScript exports share: tensor names, shape checks, provenance metadata."""

from __future__ import annotations

import json
import platform
from collections.abc import Callable
from typing import Any

import numpy as np
import onnx
import torch

from .. import __version__
from ..core.errors import NNBridgeError
from ..core.metadata import META_PREFIX
from ..models.loaded import LoadedFold


INPUT_NAME = "input"


OUTPUT_NAME = "logits"


def check_spatial_shape(spatial: tuple[int, ...], multiple: tuple[int, ...]) -> None:
    """Refuse spatial sizes that the network's total stride does not divide."""
    bad = [(s, m) for s, m in zip(spatial, multiple) if s % m]
    if bad:
        raise NNBridgeError(
            f"spatial size {tuple(spatial)} is not a multiple of the network's total stride "
            f"{tuple(multiple)}; use sizes divisible by {tuple(multiple)} per axis"
        )


def grown_shape(fold: LoadedFold) -> tuple[int, ...]:
    """The patch grown by one total stride on its first spatial axis."""
    grown = list(fold.input_shape)
    grown[2] += fold.stride_multiple[0]
    return tuple(grown)


def gradient_shape(fold: LoadedFold) -> tuple[int, ...]:
    """A small valid input for finding the parameters an output does not depend on
    (:func:`nnbridge.export.weights.unused_at_inference`, a forward and a backward pass): twice
    the total stride per axis (a bottleneck of 2 voxels: instance norms need more than one), the
    patch where that is not smaller, and the patch itself when the spatial size is fixed. At a
    128³ patch the pass took 31 s of a 65 s ONNX export; at 64³ an eighth of that."""
    if "spatial" not in fold.dynamic_axes:
        return fold.input_shape
    spatial = [min(p, 2 * m) for p, m in zip(fold.patch_size, fold.stride_multiple)]
    return (1, *fold.input_shape[1:2], *spatial)


def probe_shapes(fold: LoadedFold) -> list[tuple[int, ...]]:
    """Two valid input shapes: the patch, and one whose spatial size differs from it (or batch 2
    when only the batch axis is dynamic; just the patch when nothing is).

    The other size, per axis, is the smallest odd multiple (≥ 3) of the total stride that is at
    least half the patch and below it (the patch where there is none): odd, so that a stride the
    network understates shows; smaller than the patch, since the exports' PyTorch forward passes
    are most of their time at real size (a 128³ patch with stride 32 is probed at 96³: 42 % of a
    forward pass at the patch, where the patch grown by one stride cost 125 %). Where no axis can
    shrink, the patch grown by one stride (:func:`grown_shape`), which :func:`run_shape_checks`
    also takes when PyTorch itself cannot run the smaller size (a network whose stride is
    understated reaches a one-voxel bottleneck there)."""
    first = fold.input_shape
    if "spatial" in fold.dynamic_axes:
        other = list(first)
        for axis, (p, m) in enumerate(zip(fold.patch_size, fold.stride_multiple), start=2):
            k = max(3, -(-p // (2 * m)))  # multiples of m: at least 3, at least half the patch
            k += 1 - k % 2  # odd
            if k * m < p:
                other[axis] = k * m
        return [first, tuple(other) if other != list(first) else grown_shape(fold)]
    if "batch" in fold.dynamic_axes:
        return [first, (2, *first[1:])]
    return [first]


def software_versions() -> dict[str, str]:
    versions = {"nnbridge": __version__, "torch": torch.__version__, "onnx": onnx.__version__,
                "python": platform.python_version()}
    try:
        from importlib.metadata import version  # noqa: PLC0415

        versions["nnunetv2"] = version("nnunetv2")
    except Exception:  # noqa: BLE001 - nnunetv2 absent is reported, not fatal
        versions["nnunetv2"] = "unavailable"
    return versions


def fold_metadata(fold: LoadedFold, opset: int) -> dict[str, str]:
    """Provenance stored in every ONNX file (all values strings, as ONNX requires)."""
    meta = {
        "source_checkpoint": str(fold.checkpoint_path),
        "source_sha256": fold.checkpoint_sha256,
        "model_kind": fold.kind,
        "fold": fold.fold,
        "patch_size": json.dumps(list(fold.patch_size)),
        "stride_multiple": json.dumps(list(fold.stride_multiple)),
        "dynamic_axes": json.dumps(list(fold.dynamic_axes)),
        "num_input_channels": str(fold.num_input_channels),
        "num_outputs": str(fold.num_outputs),
        "mirror_axes": json.dumps(list(fold.mirror_axes)),
        "opset": str(opset),
        "versions": json.dumps(software_versions()),
    }
    if fold.kind == "nnunet":
        meta.update(trainer=fold.trainer_name, configuration=str(fold.configuration),
                    plans=json.dumps(fold.plans), dataset_json=json.dumps(fold.dataset_json))
        if fold.trainer_note is not None:  # the trainer class was not installed: default network
            meta.update(trainer_fallback=fold.trainer_note)
        if fold.previous_stage is not None:  # cascade: image channels, then one-hot of these labels
            meta.update(previous_stage=fold.previous_stage,
                        num_image_channels=str(fold.num_image_channels),
                        onehot_labels=json.dumps(list(fold.previous_stage_labels)))
    else:
        meta.update(model_class=fold.trainer_name,
                    init_kwargs=json.dumps(fold.source.get("init_kwargs") or {}),
                    checkpoint_format=str(fold.source.get("format", "state_dict")),
                    labels=json.dumps(fold.labels), region_based=json.dumps(fold.region_based))
    return {META_PREFIX + k: v for k, v in meta.items()}


def _max_abs(a: np.ndarray, b: np.ndarray) -> float:
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64))))


def run_shape_checks(fold: LoadedFold, run: Callable[[torch.Tensor], np.ndarray],
                     generator: torch.Generator) -> list[dict[str, Any]]:
    """Outputs of ``run`` against eager PyTorch at :func:`probe_shapes`; a shape it cannot run
    is recorded with the error (one line), not raised."""
    def eager(shape: tuple[int, ...]) -> tuple[torch.Tensor, np.ndarray]:
        x = torch.randn(shape, generator=generator)
        with torch.no_grad():
            return x, fold.network(x).numpy()

    checks = []
    for index, shape in enumerate(probe_shapes(fold)):
        try:
            x, ref = eager(shape)
        except Exception:  # noqa: BLE001 - PyTorch itself cannot run the smaller size: probe the grown one
            if index == 0 or tuple(shape) == grown_shape(fold):
                raise
            shape = grown_shape(fold)
            x, ref = eager(shape)
        try:
            got = run(x)
        except Exception as exc:  # noqa: BLE001 - recorded; the caller decides
            checks.append({"shape": list(shape), "error": f"{type(exc).__name__}: {(str(exc).strip().splitlines() or [''])[0][:200]}"})
            continue
        checks.append({"shape": list(shape), "max_abs_err": _max_abs(ref, got) if ref.shape == got.shape else float("inf"),
                       "max_abs_ref": float(np.max(np.abs(ref)))})
    return checks


def traced_size_bound(checks: list[dict[str, Any]]) -> str | None:
    """Why the graph does not hold at another spatial size than the traced one (the trace baked
    its size in), or None:
    it fails there, or its logits are off by more than 1e-3 of their range while the traced size's
    are within."""
    first, *grown = checks
    for check in grown:
        if "error" in check:
            return f"at input shape {check['shape']} it fails ({check['error']})"
        bound = 1e-3 * max(check["max_abs_ref"], 1e-6)
        if check["max_abs_err"] > bound and first.get("max_abs_err", 0.0) <= bound:
            return (f"at input shape {check['shape']} its logits differ from PyTorch's by "
                    f"{check['max_abs_err']:.3g} (at the traced shape {first.get('max_abs_err', 0.0):.3g})")
    return None


def raise_multiple(fold: LoadedFold, run: Callable[[torch.Tensor], np.ndarray],
                   generator: torch.Generator) -> tuple[int, ...] | None:
    """The smallest spatial multiple above the fold's (doubling, dividing the patch size) at which
    the exported graph (``run``) matches eager PyTorch (a network that pads odd sizes in Python, traced at
    a size needing no padding, holds at multiples of its total stride), or None."""
    multiple = list(fold.stride_multiple)
    while True:
        grown = [m * 2 if m * 2 <= p and p % (m * 2) == 0 else m for m, p in zip(multiple, fold.patch_size)]
        if grown == multiple:
            return None
        multiple = grown
        shape = (1, fold.num_input_channels, *(p + m for p, m in zip(fold.patch_size, multiple)))
        x = torch.randn(shape, generator=generator)
        try:
            with torch.no_grad():
                ref = fold.network(x).numpy()
            got = run(x)
        except Exception:  # noqa: BLE001 - not at this size; try the next
            continue
        if ref.shape == got.shape and float(abs(ref - got).max()) <= 1e-3 * max(float(abs(ref).max()), 1e-6):
            return tuple(multiple)
