"""The demo's synthetic dataset: a 3D single-channel "MRI" (white noise plus a smooth bias field), a
bright sphere (label 1) and a dark box (label 2) of random sizes at random, non-touching
positions, with per-case contrasts, written in nnU-Net's raw layout."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np


DEMO_DATASET_ID = 900


DEMO_DATASET_NAME = "Dataset900_NNBridgeDemo"


DEMO_LABELS: dict[str, int] = {"background": 0, "sphere": 1, "box": 2}


DEFAULT_N_CASES = 20


DEFAULT_SHAPE: tuple[int, int, int] = (40, 40, 40)


def _smooth_noise(rng: np.random.Generator, shape: tuple[int, ...], sigma: float) -> np.ndarray:
    """Zero-mean, unit-std low-frequency noise (a bias field)."""
    from scipy import ndimage  # noqa: PLC0415 (scipy comes with nnunetv2)

    field = ndimage.gaussian_filter(rng.standard_normal(shape), sigma, mode="wrap")
    return (field - field.mean()) / (field.std() + 1e-8)


def make_case(rng: np.random.Generator, shape: tuple[int, int, int]) -> tuple[np.ndarray, np.ndarray]:
    """One synthetic case: (image float32, labels uint8), both of ``shape`` (z, y, x).

    A sphere (label 1, 3-4 noise std brighter than the background) and an axis-aligned box
    (label 2, 3-4 noise std darker) at random, non-touching positions with random sizes
    (scaled with the smallest side; radius 6-10 and half-sides 4-8 voxels at 40), on white
    noise plus a smooth bias field (0.6 std).
    """
    shape = tuple(int(s) for s in shape)  # type: ignore[assignment]
    if len(shape) != 3 or min(shape) < 24:
        raise ValueError(f"shape {shape}: need three sides of at least 24 voxels")
    scale = min(shape) / 40.0
    for _ in range(1000):
        radius = rng.uniform(6.0, 10.0) * scale
        centre = [rng.uniform(radius + 2, s - radius - 3) for s in shape]
        half = [int(h) for h in np.round(rng.uniform(4.0, 8.0, size=3) * scale)]
        corner = [int(rng.integers(2, s - 2 * h - 3)) for h, s in zip(half, shape)]
        gap = np.sqrt(sum(max(lo - c, 0.0, c - (lo + 2 * h)) ** 2 for c, lo, h in zip(centre, corner, half)))
        if gap > radius + 2:  # sphere and box one voxel or more apart
            break
    else:  # pragma: no cover - sides >= 24 always leave room
        raise RuntimeError(f"could not place a sphere and a box in {shape}")
    grid = np.meshgrid(*[np.arange(s, dtype=np.float64) for s in shape], indexing="ij")
    sphere = sum((g - c) ** 2 for g, c in zip(grid, centre)) <= radius**2
    box = np.zeros(shape, dtype=bool)
    box[tuple(slice(lo, lo + 2 * h + 1) for lo, h in zip(corner, half))] = True

    labels = np.zeros(shape, dtype=np.uint8)
    labels[sphere] = DEMO_LABELS["sphere"]
    labels[box] = DEMO_LABELS["box"]

    image = 0.6 * _smooth_noise(rng, shape, 4.0) + rng.standard_normal(shape)
    image[sphere] += rng.uniform(3.0, 4.0)
    image[box] -= rng.uniform(3.0, 4.0)
    image = 100.0 + 20.0 * image  # MRI-like arbitrary units; nnU-Net z-scores each image
    return image.astype(np.float32), labels


def _save_nifti(array: np.ndarray, path: Path) -> None:
    """Write (z, y, x) ``array`` as NIfTI, 1 mm isotropic, identity orientation.

    nibabel gzips with mtime 0, so equal arrays give equal bytes.
    """
    import nibabel as nib  # noqa: PLC0415

    image = nib.Nifti1Image(np.ascontiguousarray(array.transpose(2, 1, 0)), affine=np.eye(4))
    image.header.set_xyzt_units("mm", "sec")
    image.set_qform(np.eye(4), code=1)
    image.set_sform(np.eye(4), code=1)
    nib.save(image, str(path))


def make_dataset(
    raw_root: Path,
    *,
    n_cases: int = DEFAULT_N_CASES,
    shape: tuple[int, int, int] = DEFAULT_SHAPE,
    seed: int = 0,
    dataset_id: int = DEMO_DATASET_ID,
    dataset_name: str | None = None,
    n_channels: int = 1,
    region_based: bool = False,
) -> Path:
    """Write a deterministic synthetic dataset in nnU-Net v2 raw format below ``raw_root``.

    Creates ``raw_root/<dataset_name>/`` with ``imagesTr/case_XXX_0000.nii.gz``,
    ``labelsTr/case_XXX.nii.gz`` and ``dataset.json`` (channel "MRI", labels
    background/sphere/box, ``.nii.gz``). Case ``i`` depends only on ``(seed, i, shape)``: the
    same arguments give the same files, byte for byte. ``dataset_name`` defaults to
    :data:`DEMO_DATASET_NAME` for the demo id, else ``DatasetXXX_NNBridgeDemo``.

    ``n_channels > 1`` adds channels ``_0001``... (the first image with inverted contrast and
    its own noise, like a second MRI sequence). ``region_based`` writes nnU-Net regions instead
    of classes: ``object`` = sphere or box, ``box`` = box (overlapping, sigmoid outputs).
    Returns the dataset folder.
    """
    if n_channels < 1:
        raise ValueError(f"n_channels={n_channels}: need at least one channel")
    if n_cases < 1:
        raise ValueError(f"n_cases={n_cases}: need at least one case")
    if dataset_name is None:
        dataset_name = DEMO_DATASET_NAME if dataset_id == DEMO_DATASET_ID else f"Dataset{dataset_id:03d}_NNBridgeDemo"
    if not dataset_name.startswith(f"Dataset{dataset_id:03d}_"):
        raise ValueError(f"dataset_name {dataset_name!r} must start with 'Dataset{dataset_id:03d}_'")
    folder = Path(raw_root) / dataset_name
    (folder / "imagesTr").mkdir(parents=True, exist_ok=True)
    (folder / "labelsTr").mkdir(parents=True, exist_ok=True)
    for i in range(n_cases):
        rng = np.random.default_rng([seed, i])
        image, labels = make_case(rng, shape)
        _save_nifti(image, folder / "imagesTr" / f"case_{i:03d}_0000.nii.gz")
        for channel in range(1, n_channels):
            other = 200.0 - image + 10.0 * rng.standard_normal(image.shape).astype(np.float32)
            _save_nifti(other.astype(np.float32), folder / "imagesTr" / f"case_{i:03d}_{channel:04d}.nii.gz")
        _save_nifti(labels, folder / "labelsTr" / f"case_{i:03d}.nii.gz")
    labels_json: dict[str, Any] = dict(DEMO_LABELS)
    extra: dict[str, Any] = {}
    if region_based:
        labels_json = {"background": 0, "object": [DEMO_LABELS["sphere"], DEMO_LABELS["box"]],
                       "box": [DEMO_LABELS["box"]]}
        extra["regions_class_order"] = [DEMO_LABELS["sphere"], DEMO_LABELS["box"]]
    dataset_json = {
        "channel_names": {str(c): ("MRI" if c == 0 else f"MRI{c + 1}") for c in range(n_channels)},
        "labels": labels_json,
        **extra,
        "numTraining": n_cases,
        "file_ending": ".nii.gz",
        "name": dataset_name,
        "description": f"nnbridge synthetic demo data: seed {seed}, shape {list(shape)}",
    }
    (folder / "dataset.json").write_text(json.dumps(dataset_json, indent=2) + "\n")
    return folder
