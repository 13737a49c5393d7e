"""nnU-Net v2 inference preprocessing without torch: transpose, crop to nonzero, normalize, resample.

A re-implementation of what ``DefaultPreprocessor.run_case_npy`` (nnunetv2 2.x) does for a case
without a segmentation, built on numpy, scipy and scikit-image only. Every step repeats nnU-Net's
operations in the same order and on the same dtypes, so the result is the same array, bit for bit:

* ``configuration``: a configuration of plans.json with ``inherits_from`` resolved (``PlansManager``).
* ``crop_to_nonzero``: ``nnunetv2.preprocessing.cropping`` plus acvl_utils' bounding boxes.
* ``normalize``: the schemes of ``default_normalization_schemes`` as ``DefaultPreprocessor._normalize``
  applies them per channel.
* ``resample_data_or_seg_to_shape``: ``default_resampling`` (separate-z included) with batchgenerators'
  ``resize_segmentation`` for label maps.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import numpy as np
from scipy.ndimage import binary_fill_holes, map_coordinates
from skimage.transform import resize

from ..core.errors import NNBridgeError
from ..core.plans import configuration

ANISO_THRESHOLD = 3
"""nnunetv2.configuration.ANISO_THRESHOLD: spacing ratio above which an axis is resampled separately."""

NORMALIZATION_SCHEMES = (
    "CTNormalization",
    "ZScoreNormalization",
    "NoNormalization",
    "RescaleTo01Normalization",
    "RGBTo01Normalization",
)
RESAMPLING_FUNCTION = "resample_data_or_seg_to_shape"
RESAMPLING_KINDS = ("data", "seg", "probabilities")
_RESAMPLING_KWARGS = ("is_seg", "order", "order_z", "force_separate_z", "separate_z_anisotropy_threshold")
_EPS = 1e-8  # nnU-Net's eps for float32 targets

Spacing = Sequence[float] | np.ndarray
Shape = Sequence[int] | np.ndarray
BBox = list[list[int]]


# --------------------------------------------------------------------------------------------------- plans


def transpose_forward(plans: dict) -> list[int]:
    """The spatial axis order nnU-Net works in (``plans['transpose_forward']``)."""
    return list(plans["transpose_forward"])


def transpose_backward(plans: dict) -> list[int]:
    """The inverse of ``transpose_forward`` (``plans['transpose_backward']``)."""
    return list(plans["transpose_backward"])


def foreground_intensity_properties(plans: dict) -> dict:
    """``PlansManager.foreground_intensity_properties_per_channel`` (old plans: ``..._by_modality``)."""
    if "foreground_intensity_properties_per_channel" not in plans:
        if "foreground_intensity_properties_by_modality" in plans:
            return plans["foreground_intensity_properties_by_modality"]
        raise NNBridgeError(
            "the plans have no 'foreground_intensity_properties_per_channel'; use nnU-Net's plans.json"
        )
    return plans["foreground_intensity_properties_per_channel"]


# ------------------------------------------------------------------------------------------------ cropping


def create_nonzero_mask(data: np.ndarray) -> np.ndarray:
    """True where any channel of ``data`` (C, X, Y[, Z]) is nonzero, with holes filled."""
    if data.ndim not in (3, 4):
        raise NNBridgeError(f"data must have shape (C, X, Y, Z) or (C, X, Y), got {data.shape}")
    nonzero_mask = data[0] != 0
    for c in range(1, data.shape[0]):
        nonzero_mask |= data[c] != 0
    return binary_fill_holes(nonzero_mask)


def get_bbox_from_mask(mask: np.ndarray) -> BBox:
    """Half-open ``[start, stop)`` per axis of the True voxels; an axis without any spans the whole axis."""
    bbox = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        present = np.flatnonzero(np.any(mask, axis=other)) if other else np.flatnonzero(mask)
        if present.size:
            bbox.append([int(present[0]), int(present[-1]) + 1])
        else:
            bbox.append([0, int(mask.shape[axis])])
    return bbox


def bounding_box_to_slice(bbox: BBox) -> tuple[slice, ...]:
    """The slices selecting a half-open bounding box."""
    return tuple(slice(*i) for i in bbox)


def crop_to_nonzero(
    data: np.ndarray, seg: np.ndarray | None = None, nonzero_label: int = -1
) -> tuple[np.ndarray, np.ndarray, BBox]:
    """Crop ``data`` (and ``seg``) to the bounding box of the nonzero mask.

    Returns the cropped data (a view), the cropped seg with ``nonzero_label`` where seg is 0 outside the
    mask (int8 0 / ``nonzero_label`` if no seg is given) and the bounding box. ``seg`` is not modified.
    """
    nonzero_mask = create_nonzero_mask(data)
    bbox = get_bbox_from_mask(nonzero_mask)
    slicer = bounding_box_to_slice(bbox)
    nonzero_mask = nonzero_mask[slicer][None]

    slicer = (slice(None), *slicer)
    data = data[slicer]
    if seg is not None:
        seg = seg[slicer].copy()
        seg[(seg == 0) & (~nonzero_mask)] = nonzero_label
    else:
        seg = np.where(nonzero_mask, np.int8(0), np.int8(nonzero_label))
    return data, seg, bbox


def _int_bbox(bbox: Sequence[Sequence[int]]) -> BBox:
    as_int = [[int(i) for i in row] for row in bbox]
    if as_int != [list(row) for row in bbox]:
        raise NNBridgeError(f"invalid bounding box {bbox}: its values are not integers")
    return as_int


def insert_crop_into_image(image: np.ndarray, crop: np.ndarray, bbox: Sequence[Sequence[int]]) -> np.ndarray:
    """Write ``crop`` into ``image`` (in place) at ``bbox`` over the last ``len(bbox)`` axes.

    Parts of the box outside the image are dropped; a box entirely outside leaves the image as it is.
    """
    bbox = _int_bbox(bbox)
    leading = image.ndim - len(bbox)
    if crop.ndim < len(bbox):
        raise NNBridgeError("bounding box dimensions cannot exceed crop dimensions")
    if image.shape[:leading] != crop.shape[:leading]:
        raise NNBridgeError(f"leading dimensions of crop {crop.shape} and image {image.shape} must match")
    for i, (lo, hi) in enumerate(bbox):
        if hi <= 0 or lo >= image.shape[leading + i]:
            return image
    image_slices: list[slice] = [slice(None)] * leading
    crop_slices: list[slice] = [slice(None)] * leading
    for i, (lo, hi) in enumerate(bbox):
        crop_start = max(0, -lo)
        image_start = max(0, lo)
        image_end = min(hi, image.shape[leading + i])
        image_slices.append(slice(image_start, image_end))
        crop_slices.append(slice(crop_start, crop_start + image_end - image_start))
    image[tuple(image_slices)] = crop[tuple(crop_slices)]
    return image


# ------------------------------------------------------------------------------------------- normalization


def _zscore(image: np.ndarray, seg: np.ndarray | None, use_mask_for_norm: bool | None) -> np.ndarray:
    image = image.astype(np.float32, copy=False)
    if use_mask_for_norm and seg is None:
        raise NNBridgeError("use_mask_for_norm is set, ZScoreNormalization needs the nonzero mask (seg)")
    if seg is not None and use_mask_for_norm:
        mask = seg >= 0
        mean = image[mask].mean()
        std = image[mask].std()
        image[mask] = (image[mask] - mean) / (max(std, _EPS))
    else:
        mean = image.mean()
        std = image.std()
        image -= mean
        image /= max(std, _EPS)
    return image


def _ct(image: np.ndarray, properties: dict) -> np.ndarray:
    try:
        mean_intensity = properties["mean"]
        std_intensity = properties["std"]
        lower_bound = properties["percentile_00_5"]
        upper_bound = properties["percentile_99_5"]
    except KeyError as e:
        raise NNBridgeError(f"CTNormalization needs the intensity property {e} in the plans") from None
    image = image.astype(np.float32, copy=False)
    np.clip(image, lower_bound, upper_bound, out=image)
    image -= mean_intensity
    image /= max(std_intensity, _EPS)
    return image


def _rescale_to_01(image: np.ndarray) -> np.ndarray:
    image = image.astype(np.float32, copy=False)
    image -= image.min()
    image /= np.clip(image.max(), a_min=_EPS, a_max=None)
    return image


def _rgb_to_01(image: np.ndarray) -> np.ndarray:
    if image.min() < 0 or image.max() > 255:
        raise NNBridgeError(
            f"RGBTo01Normalization expects values in [0, 255], got [{image.min()}, {image.max()}]"
        )
    image = image.astype(np.float32, copy=False)
    image /= 255.0
    return image


def normalize_channel(
    image: np.ndarray,
    seg: np.ndarray | None,
    scheme: str,
    use_mask_for_norm: bool | None,
    intensity_properties: dict,
) -> np.ndarray:
    """One channel through the nnU-Net normalization class named ``scheme`` (float32; in place if float32)."""
    if scheme == "ZScoreNormalization":
        return _zscore(image, seg, use_mask_for_norm)
    if scheme == "CTNormalization":
        return _ct(image, intensity_properties)
    if scheme == "NoNormalization":
        return image.astype(np.float32, copy=False)
    if scheme == "RescaleTo01Normalization":
        return _rescale_to_01(image)
    if scheme == "RGBTo01Normalization":
        return _rgb_to_01(image)
    raise _unsupported_scheme(scheme)


def _unsupported_scheme(scheme: str) -> NNBridgeError:
    return NNBridgeError(
        f"normalization scheme {scheme!r} is not supported; "
        f"nnbridge supports {', '.join(NORMALIZATION_SCHEMES)}"
    )


def _normalize_in_place(data: np.ndarray, seg: np.ndarray, config: dict, plans: dict) -> np.ndarray:
    """``DefaultPreprocessor._normalize``: normalizes float32 ``data`` channel by channel, in place."""
    schemes = config["normalization_schemes"]
    use_mask = config["use_mask_for_norm"]
    if len(schemes) < data.shape[0] or len(use_mask) < data.shape[0]:
        raise NNBridgeError(
            f"the configuration has normalization schemes for {len(schemes)} channels but the input has "
            f"{data.shape[0]}"
        )
    intensity = foreground_intensity_properties(plans)
    for c in range(data.shape[0]):
        if schemes[c] not in NORMALIZATION_SCHEMES:
            raise _unsupported_scheme(schemes[c])
        if str(c) not in intensity:
            raise NNBridgeError(f"the plans have no foreground intensity properties for channel {c}")
        data[c] = normalize_channel(data[c], seg[0], schemes[c], use_mask[c], intensity[str(c)])
    return data


def normalize(data: np.ndarray, seg: np.ndarray, config: dict, plans: dict) -> np.ndarray:
    """``DefaultPreprocessor._normalize`` on a float32 copy of ``data`` (C, *spatial).

    ``seg`` is the (1, *spatial) map from ``crop_to_nonzero`` (negative outside the nonzero mask) that
    ``use_mask_for_norm`` uses; scheme and mask flag per channel come from ``config``, the intensity
    statistics from ``plans['foreground_intensity_properties_per_channel']``.
    """
    return _normalize_in_place(data.astype(np.float32), seg, config, plans)


# ---------------------------------------------------------------------------------------------- resampling


def compute_new_shape(old_shape: Shape, old_spacing: Spacing, new_spacing: Spacing) -> np.ndarray:
    """The shape of ``old_shape`` at ``new_spacing``: ``round(old_spacing / new_spacing * old_shape)``."""
    if not len(old_spacing) == len(old_shape) == len(new_spacing):
        raise NNBridgeError(
            f"shape {tuple(old_shape)}, spacing {tuple(old_spacing)} and target spacing {tuple(new_spacing)} "
            "must have the same length"
        )
    return np.array([int(round(i / j * k)) for i, j, k in zip(old_spacing, new_spacing, old_shape)])


def get_do_separate_z(spacing: Spacing, anisotropy_threshold: float = ANISO_THRESHOLD) -> bool:
    """Whether the largest spacing exceeds the smallest by more than ``anisotropy_threshold``."""
    return bool((np.max(spacing) / np.min(spacing)) > anisotropy_threshold)


def get_lowres_axis(new_spacing: Spacing) -> np.ndarray:
    """The axes with the largest spacing."""
    return np.where(max(new_spacing) / np.array(new_spacing) == 1)[0]


def determine_do_sep_z_and_axis(
    force_separate_z: bool | None,
    current_spacing: Spacing,
    new_spacing: Spacing,
    separate_z_anisotropy_threshold: float = ANISO_THRESHOLD,
) -> tuple[bool, int | None]:
    """Whether to resample one (low resolution) axis separately, and which one."""
    if force_separate_z is not None:
        do_separate_z = force_separate_z
        axis = get_lowres_axis(current_spacing) if force_separate_z else None
    elif get_do_separate_z(current_spacing, separate_z_anisotropy_threshold):
        do_separate_z = True
        axis = get_lowres_axis(current_spacing)
    elif get_do_separate_z(new_spacing, separate_z_anisotropy_threshold):
        do_separate_z = True
        axis = get_lowres_axis(new_spacing)
    else:
        do_separate_z = False
        axis = None

    if axis is not None:
        if len(axis) in (2, 3):  # e.g. (0.24, 1.25, 1.25): no single out-of-plane axis
            return False, None
        return do_separate_z, int(axis[0])
    return do_separate_z, None


def _unique_sorted(arr: np.ndarray) -> np.ndarray:
    return np.unique(arr)


def resize_segmentation(segmentation: np.ndarray, new_shape: Shape, order: int = 3) -> np.ndarray:
    """batchgenerators' ``resize_segmentation`` (seg_tiebreak='nearest'), same dtype as the input.

    Order 0 is nearest neighbour. Otherwise each label's indicator is resized and a voxel gets the label
    with the largest interpolated indicator (the smallest such label on ties) - unless the nearest
    neighbour's label also has the top score, which then wins.
    """
    tpe = segmentation.dtype
    if segmentation.ndim != len(new_shape):
        raise NNBridgeError("new shape must have same dimensionality as segmentation")
    new_shape = tuple(int(i) for i in new_shape)
    if segmentation.size == 0:
        return np.zeros(new_shape, dtype=tpe)
    kwargs: dict[str, Any] = {"mode": "edge", "clip": True, "anti_aliasing": False}
    if order == 0:
        return resize(segmentation.astype(float), new_shape, 0, **kwargs).astype(tpe)
    labels = _unique_sorted(segmentation)
    if len(labels) == 1:
        return np.full(new_shape, labels[0], dtype=tpe)

    nearest = resize(segmentation.astype(float), new_shape, 0, **kwargs)
    nn_idx = np.minimum(np.searchsorted(labels, nearest), len(labels) - 1)
    nn_idx[labels[nn_idx] != nearest] = -1
    del nearest

    win = np.zeros(new_shape, dtype=np.intp)
    nn_score = np.zeros(new_shape, dtype=np.float64)
    best: np.ndarray | None = None
    for i, c in enumerate(labels):
        score = resize((segmentation == c).astype(float), new_shape, order, **kwargs)
        np.copyto(nn_score, score, where=nn_idx == i)
        if best is None:
            best = score
            continue
        np.copyto(win, i, where=score > best)
        np.maximum(best, score, out=best)
    nn_top = (nn_score == best) & (nn_score > 0)
    np.copyto(win, nn_idx, where=nn_top)
    return labels.astype(tpe, copy=False)[win]


def _resample_axis_separately(
    reshaped_here: np.ndarray, new_shape: np.ndarray, is_seg: bool, order_z: int, out: np.ndarray
) -> None:
    """Resample the low resolution axis of ``reshaped_here`` (in-plane already done) into ``out``."""
    rows, cols, dim = new_shape[0], new_shape[1], new_shape[2]
    orig_rows, orig_cols, orig_dim = reshaped_here.shape
    row_scale = float(orig_rows) / rows
    col_scale = float(orig_cols) / cols
    dim_scale = float(orig_dim) / dim

    map_rows, map_cols, map_dims = np.mgrid[:rows, :cols, :dim]
    map_rows = row_scale * (map_rows + 0.5) - 0.5
    map_cols = col_scale * (map_cols + 0.5) - 0.5
    map_dims = dim_scale * (map_dims + 0.5) - 0.5
    coord_map = np.array([map_rows, map_cols, map_dims])
    if not is_seg or order_z == 0:
        out[...] = map_coordinates(reshaped_here, coord_map, order=order_z, mode="nearest")
    else:
        for cl in _unique_sorted(reshaped_here):
            indicator = (reshaped_here == cl).astype(float)
            out[np.round(map_coordinates(indicator, coord_map, order=order_z, mode="nearest")) > 0.5] = cl


def resample_data_or_seg(
    data: np.ndarray,
    new_shape: Shape,
    is_seg: bool = False,
    axis: int | None = None,
    order: int = 3,
    do_separate_z: bool = False,
    order_z: int = 0,
    dtype_out: Any = None,
) -> np.ndarray:
    """Resample (C, X, Y, Z) ``data`` to ``new_shape``; with ``do_separate_z`` the axis ``axis`` is
    resampled on its own with ``order_z`` after the in-plane resampling with ``order``.

    Returns ``data`` itself when the shape does not change.
    """
    if data.ndim != 4:
        raise NNBridgeError(f"data must be (C, X, Y, Z), got shape {data.shape}")
    if len(new_shape) != data.ndim - 1:
        raise NNBridgeError(f"new shape {tuple(new_shape)} must have {data.ndim - 1} entries")
    if is_seg:
        resize_fn: Callable[..., np.ndarray] = resize_segmentation
        kwargs: dict[str, Any] = {}
    else:
        resize_fn = resize
        kwargs = {"mode": "edge", "anti_aliasing": False}
    shape = np.array(data[0].shape)
    new_shape = np.array(new_shape)
    if dtype_out is None:
        dtype_out = data.dtype
    reshaped_final = np.zeros((data.shape[0], *new_shape), dtype=dtype_out)
    if not np.any(shape != new_shape):
        return data
    data = data.astype(float, copy=False)
    if not do_separate_z:
        for c in range(data.shape[0]):
            reshaped_final[c] = resize_fn(data[c], new_shape, order, **kwargs)
        return reshaped_final
    if axis is None:
        raise NNBridgeError("separate-z resampling needs the anisotropic axis")
    new_shape_2d = np.delete(new_shape, axis)
    for c in range(data.shape[0]):
        tmp = new_shape.copy()
        tmp[axis] = shape[axis]
        reshaped_here = np.zeros(tmp)
        for slice_id in range(shape[axis]):
            index = (slice(None),) * axis + (slice_id,)
            reshaped_here[index] = resize_fn(data[c][index], new_shape_2d, order, **kwargs)
        if shape[axis] != new_shape[axis]:
            _resample_axis_separately(reshaped_here, new_shape, is_seg, order_z, reshaped_final[c])
        else:
            reshaped_final[c] = reshaped_here
    return reshaped_final


def resample_data_or_seg_to_shape(
    data: np.ndarray,
    new_shape: Shape,
    current_spacing: Spacing,
    new_spacing: Spacing,
    is_seg: bool = False,
    order: int = 3,
    order_z: int = 0,
    force_separate_z: bool | None = False,
    separate_z_anisotropy_threshold: float = ANISO_THRESHOLD,
) -> np.ndarray:
    """nnU-Net's ``resample_data_or_seg_to_shape``: (C, X, Y, Z) ``data`` at ``current_spacing`` to
    ``new_shape``; separate-z resampling when forced or (``force_separate_z=None``) when either spacing
    is anisotropic beyond ``separate_z_anisotropy_threshold``.
    """
    do_separate_z, axis = determine_do_sep_z_and_axis(
        force_separate_z, current_spacing, new_spacing, separate_z_anisotropy_threshold
    )
    return resample_data_or_seg(data, new_shape, is_seg, axis, order, do_separate_z, order_z=order_z)


ResamplingFn = Callable[[np.ndarray, Shape, Spacing, Spacing], np.ndarray]


def resampling_function(config: dict, kind: str) -> ResamplingFn:
    """``ConfigurationManager.resampling_fn_<kind>``: ``(data, new_shape, current_spacing, new_spacing)``
    bound with ``config['resampling_fn_<kind>_kwargs']``; ``kind`` is data, seg or probabilities.
    """
    if kind not in RESAMPLING_KINDS:
        raise NNBridgeError(f"unknown resampling kind {kind!r}; use one of {', '.join(RESAMPLING_KINDS)}")
    name = config.get(f"resampling_fn_{kind}")
    if name != RESAMPLING_FUNCTION:
        raise NNBridgeError(
            f"the plans resample {kind} with {name!r}; nnbridge supports only {RESAMPLING_FUNCTION!r}"
        )
    kwargs = dict(config.get(f"resampling_fn_{kind}_kwargs") or {})
    unknown = sorted(set(kwargs) - set(_RESAMPLING_KWARGS))
    if unknown:
        raise NNBridgeError(
            f"resampling_fn_{kind}_kwargs has arguments {unknown} that {RESAMPLING_FUNCTION} does not take"
        )
    return partial(resample_data_or_seg_to_shape, **kwargs)


# -------------------------------------------------------------------------------------------------- a case


def target_spacing(config: dict, original_spacing: Sequence[float]) -> list[float]:
    """The configuration's spacing; 2d configurations keep the first (slice) axis' original spacing."""
    spacing = list(config["spacing"])
    if len(spacing) < len(original_spacing):
        spacing = [original_spacing[0], *spacing]
    return spacing


def physical_memory_bytes() -> int | None:
    """This machine's physical memory (None where the OS does not say)."""
    try:
        return int(os.sysconf("SC_PHYS_PAGES")) * int(os.sysconf("SC_PAGE_SIZE"))
    except (AttributeError, ValueError, OSError):
        return None


#: bytes per voxel and channel that resampling holds at once: nnU-Net's float64 copy of the
#: cropped input, the float32 result and the float64 slice buffers of separate-z resampling
RESAMPLE_BYTES_PER_VOXEL = 20


def check_spacing(spacing: Spacing, where: str = "the case") -> None:
    """Every spacing is a positive finite number (else resampling divides by zero or yields NaN)."""
    values = [float(s) for s in spacing]
    if not all(np.isfinite(s) and s > 0 for s in values):
        raise NNBridgeError(f"{where}: spacing {values} mm; every spacing must be a positive number: fix the "
                            "image header")


def check_resampled_size(shape: Shape, spacing: Spacing, new_spacing: Spacing, new_shape: Shape,
                         channels: int, where: str = "the case", memory: int | None = None) -> None:
    """Refuse a resampling that cannot work before trying it: a target shape with an empty axis
    (1e-6 mm images shrink to nothing, and nnU-Net's normalization then yields NaN), or one that
    needs more than this machine's memory (1000 mm images grow to hundreds of TiB: MemoryError
    after a long wait). ``memory``: bytes available (default: the physical memory)."""
    spacing = [float(s) for s in spacing]
    new_shape = [int(s) for s in new_shape]
    if min(new_shape) < 1:
        raise NNBridgeError(f"{where}: spacing {spacing} mm resampled to the plans' {list(new_spacing)} mm turns "
                            f"{list(shape)} voxels into {new_shape}: an empty image; check the spacing in the image header")
    voxels = float(np.prod(np.array(new_shape, dtype=np.float64)))
    needed = voxels * channels * RESAMPLE_BYTES_PER_VOXEL
    memory = physical_memory_bytes() if memory is None else memory
    if memory and needed > memory:
        raise NNBridgeError(
            f"{where}: spacing {spacing} mm resampled to the plans' {list(new_spacing)} mm turns {list(shape)} "
            f"voxels into {new_shape} ({voxels:.3g} voxels, {_size(voxels * channels * 4)} as float32, about "
            f"{_size(needed)} to resample), more than this machine's {_size(memory)} of memory; check the "
            "spacing in the image header"
        )


def _size(n_bytes: float) -> str:
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n_bytes < 1024 or unit == "TiB":
            return f"{n_bytes:.0f} {unit}" if n_bytes >= 100 else f"{n_bytes:.3g} {unit}"
        n_bytes /= 1024
    return f"{n_bytes:.3g} TiB"


def preprocess_case(
    data: np.ndarray,
    properties: dict,
    plans: dict,
    configuration_name: str,
    previous_stage: np.ndarray | None = None,
    onehot_labels: Sequence[int] | None = None,
    where: str = "the case",
) -> tuple[np.ndarray, dict]:
    """``DefaultPreprocessor.run_case_npy``: transpose, crop, normalize, resample.

    ``data`` is (C, X, Y, Z) as nnU-Net's image readers return it, ``properties`` their properties (with
    ``spacing``). Returns the float32 (C, *spatial) network input and a copy of ``properties`` with
    ``shape_before_cropping``, ``bbox_used_for_cropping`` and
    ``shape_after_cropping_and_before_resampling`` added. Neither input is modified.

    A cascade stage (``3d_cascade_fullres``) also takes ``previous_stage``: the previous stage's
    segmentation of the case in the input's geometry (what ``nnUNetv2_predict
    -prev_stage_predictions`` reads back from the file the previous stage wrote). It goes through
    ``run_case_npy`` as nnU-Net's ``seg``: read as float32, transposed, cropped with -1 outside the
    nonzero mask (which ``use_mask_for_norm`` then uses), resampled with ``resampling_fn_seg``,
    cast to int8/int16; its one-hot encoding over ``onehot_labels`` (the foreground labels,
    ``convert_labelmap_to_one_hot``) is appended to the image channels, in float32.

    Spacings that cannot be resampled here are refused first (:func:`check_resampled_size`;
    ``where`` names the case in the message).
    """
    config = configuration(plans, configuration_name)
    forward = transpose_forward(plans)
    if data.ndim != len(forward) + 1:
        raise NNBridgeError(
            f"data must be (C, *spatial) with {len(forward)} spatial axes, got shape {data.shape}"
        )
    if "spacing" not in properties or len(properties["spacing"]) != len(forward):
        raise NNBridgeError(f"properties need a 'spacing' with {len(forward)} entries")
    seg = None
    if previous_stage is not None:
        if onehot_labels is None:
            raise NNBridgeError("a previous stage's segmentation needs the labels to one-hot encode")
        seg = np.asarray(previous_stage).astype(np.float32)  # as nnU-Net's reader returns it (a copy)
        if seg.ndim == data.ndim - 1:
            seg = seg[None]
        if seg.shape[1:] != data.shape[1:]:
            raise NNBridgeError(f"the previous stage's segmentation has shape {seg.shape[1:]}, the image "
                                f"{data.shape[1:]}; they must be the same grid")
    properties = dict(properties)

    data = data.astype(np.float32)  # a copy, as in nnU-Net
    data = data.transpose([0, *[i + 1 for i in forward]])
    if seg is not None:
        seg = seg.transpose([0, *[i + 1 for i in forward]])
    original_spacing = [properties["spacing"][i] for i in forward]

    properties["shape_before_cropping"] = data.shape[1:]
    data, seg, bbox = crop_to_nonzero(data, seg)
    properties["bbox_used_for_cropping"] = bbox
    properties["shape_after_cropping_and_before_resampling"] = data.shape[1:]

    new_spacing = target_spacing(config, original_spacing)
    check_spacing(original_spacing, where)
    new_shape = compute_new_shape(data.shape[1:], original_spacing, new_spacing)
    check_resampled_size(data.shape[1:], original_spacing, new_spacing, new_shape, data.shape[0], where)
    # normalize before resampling, on the cropped view, exactly like nnU-Net
    data = _normalize_in_place(data, seg, config, plans)
    data = resampling_function(config, "data")(data, new_shape, original_spacing, new_spacing)
    data = np.ascontiguousarray(data, dtype=np.float32)
    if previous_stage is None:
        return data, properties
    seg = resampling_function(config, "seg")(seg, new_shape, original_spacing, new_spacing)
    seg = seg.astype(np.int16 if np.max(seg) > 127 else np.int8)
    onehot = np.zeros((len(onehot_labels), *seg.shape[1:]), dtype=data.dtype)
    for i, label in enumerate(onehot_labels):
        onehot[i] = seg[0] == label
    return np.ascontiguousarray(np.vstack((data, onehot)), dtype=np.float32), properties
