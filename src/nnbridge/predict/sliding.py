"""nnU-Net's Gaussian sliding-window inference with test-time mirroring, in numpy.

Reproduces ``nnUNetPredictor.predict_sliding_window_return_logits`` (nnunetv2 2.x): padding to at
least the patch size, the same window positions, a Gaussian importance map in float16, mirroring
over every combination of the allowed axes, and logits accumulated in float16 as nnU-Net does
(``accumulate="float32"`` is available when exactness to nnU-Net matters less than precision).
Windows are streamed to the network in batches.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator, Sequence
from functools import lru_cache

import numpy as np
from scipy.ndimage import gaussian_filter

from ..core.errors import NNBridgeError

Network = Callable[[np.ndarray], np.ndarray]


def compute_steps_for_sliding_window(image_size: Sequence[int], tile_size: Sequence[int],
                                     tile_step_size: float) -> list[list[int]]:
    """Window start positions per axis (nnU-Net's function, unchanged)."""
    if not 0 < tile_step_size <= 1:
        raise NNBridgeError(f"step size {tile_step_size} must be in (0, 1]")
    target_steps = [i * tile_step_size for i in tile_size]
    num_steps = [int(np.ceil((i - k) / j)) + 1 for i, j, k in zip(image_size, target_steps, tile_size)]
    steps = []
    for dim in range(len(tile_size)):
        max_step_value = image_size[dim] - tile_size[dim]
        actual = max_step_value / (num_steps[dim] - 1) if num_steps[dim] > 1 else 99999999999
        steps.append([int(np.round(actual * i)) for i in range(num_steps[dim])])
    return steps


@lru_cache(maxsize=4)
def compute_gaussian(tile_size: tuple[int, ...], sigma_scale: float = 1.0 / 8,
                     value_scaling_factor: float = 10) -> np.ndarray:
    """nnU-Net's importance map: float16, no zeros (replaced by the smallest non-zero value)."""
    tmp = np.zeros(tile_size)
    tmp[tuple(i // 2 for i in tile_size)] = 1
    gaussian = gaussian_filter(tmp, [i * sigma_scale for i in tile_size], 0, mode="constant", cval=0)
    gaussian /= np.max(gaussian) / value_scaling_factor
    gaussian = gaussian.astype(np.float16)
    mask = gaussian == 0
    gaussian[mask] = np.min(gaussian[~mask])
    gaussian.setflags(write=False)
    return gaussian


def pad_to_patch(image: np.ndarray, patch_size: Sequence[int]) -> tuple[np.ndarray, tuple[slice, ...]]:
    """Zero-pad the last axes to at least the patch size, content centred (odd padding goes
    above), like acvl_utils' ``pad_nd_image``; returns the slicer that removes the padding."""
    old = image.shape
    new = list(old[: len(old) - len(patch_size)]) + [max(p, s) for p, s in zip(patch_size, old[-len(patch_size):])]
    diff = np.array(new) - np.array(old)
    below = diff // 2
    above = diff // 2 + diff % 2
    if not diff.any():
        return image, tuple(slice(None) for _ in old)
    padded = np.pad(image, list(zip(below, above)), mode="constant", constant_values=0)
    return padded, tuple(slice(int(b), int(b + s)) for b, s in zip(below, old))


def window_slicers(image_size: Sequence[int], patch_size: Sequence[int], step: float) -> list[tuple]:
    """Slicers into a (C, *image_size) array; a 2D patch on a 3D image walks slice by slice."""
    slicers: list[tuple] = []
    if len(patch_size) < len(image_size):
        if len(patch_size) != len(image_size) - 1:
            raise NNBridgeError(f"patch {tuple(patch_size)} does not fit an image of {len(image_size)} axes")
        steps = compute_steps_for_sliding_window(image_size[1:], patch_size, step)
        for d in range(image_size[0]):
            for start in itertools.product(*steps):
                slicers.append((slice(None), d, *[slice(s, s + t) for s, t in zip(start, patch_size)]))
    else:
        steps = compute_steps_for_sliding_window(image_size, patch_size, step)
        for start in itertools.product(*steps):
            slicers.append((slice(None), *[slice(s, s + t) for s, t in zip(start, patch_size)]))
    return slicers


def mirror_combinations(mirror_axes: Sequence[int] | None) -> list[tuple[int, ...]]:
    """Flip-axis tuples of a batch (N, C, *spatial), in nnU-Net's order; () is the plain pass."""
    if not mirror_axes:
        return [()]
    axes = [m + 2 for m in mirror_axes]
    return [()] + [c for i in range(len(axes)) for c in itertools.combinations(axes, i + 1)]


def predict_mirrored(network: Network, batch: np.ndarray, combos: list[tuple[int, ...]]) -> np.ndarray:
    """Average of the network's logits over the flips (nnU-Net's ``_internal_maybe_mirror_and_predict``)."""
    prediction = np.asarray(network(batch), dtype=np.float32).copy()
    for axes in combos[1:]:
        flipped = np.ascontiguousarray(np.flip(batch, axes))
        prediction += np.flip(np.asarray(network(flipped), dtype=np.float32), axes)
    if len(combos) > 1:
        prediction /= len(combos)
    return prediction


def _batches(data: np.ndarray, slicers: list[tuple], batch_size: int) -> Iterator[tuple[np.ndarray, list[tuple]]]:
    for i in range(0, len(slicers), batch_size):
        chunk = slicers[i : i + batch_size]
        yield np.stack([data[s] for s in chunk]).astype(np.float32, copy=False), chunk


def sliding_window_logits(
    data: np.ndarray,
    network: Network,
    patch_size: Sequence[int],
    num_outputs: int,
    *,
    step: float = 0.5,
    mirror_axes: Sequence[int] | None = None,
    use_gaussian: bool = True,
    batch_size: int = 1,
    accumulate: str = "float16",
    progress: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Logits of a preprocessed (C, *spatial) volume, in its shape (nnU-Net's
    ``predict_sliding_window_return_logits`` for one fold). ``network`` maps a float32 batch
    (N, C, *patch) to logits (N, num_outputs, *patch)."""
    if data.ndim != 4:
        raise NNBridgeError(f"input must be (C, X, Y, Z); got shape {data.shape}")
    dtype = {"float16": np.float16, "float32": np.float32}[accumulate]
    padded, unpad = pad_to_patch(data, patch_size)
    slicers = window_slicers(padded.shape[1:], patch_size, step)
    logits = np.zeros((num_outputs, *padded.shape[1:]), dtype=dtype)
    weights = np.zeros(padded.shape[1:], dtype=dtype)
    gaussian = compute_gaussian(tuple(int(p) for p in patch_size)).astype(dtype) if use_gaussian else dtype(1)
    combos = mirror_combinations(mirror_axes)
    done = 0
    for batch, chunk in _batches(padded, slicers, max(1, batch_size)):
        prediction = predict_mirrored(network, batch, combos)
        for pred, sl in zip(prediction, chunk):
            if use_gaussian:
                pred *= gaussian
            logits[sl] += pred
            weights[sl[1:]] += gaussian
        done += len(chunk)
        if progress:
            progress(done, len(slicers))
    np.divide(logits, weights, out=logits)
    if np.isinf(logits).any():
        raise NNBridgeError("inf in the aggregated logits (float16 overflow); use accumulate='float32'")
    return logits[(slice(None), *unpad[1:])]


def ensemble_logits(data: np.ndarray, networks: Sequence[Network], patch_size: Sequence[int], num_outputs: int,
                    **kwargs) -> np.ndarray:
    """Logits averaged over folds, one full sliding window per fold, summed in the accumulation
    precision like ``predict_logits_from_preprocessed_data``."""
    total = None
    for network in networks:
        fold_logits = sliding_window_logits(data, network, patch_size, num_outputs, **kwargs)
        if total is None:
            total = fold_logits
        else:
            total += fold_logits
    if total is None:
        raise NNBridgeError("no folds to predict with")
    if len(networks) > 1:
        total /= len(networks)
    return total
