"""nnU-Net's postprocessing without torch and without unpickling arbitrary objects.

``nnUNetv2_find_best_configuration`` (``determine_postprocessing`` in
``nnunetv2.postprocessing.remove_connected_components``) stores its choice as
``postprocessing.pkl``: a pickled ``(functions, kwargs)`` pair whose only function is
``remove_all_but_largest_component_from_segmentation``, applied in order, each with
``labels_or_regions`` (the foreground labels at once, then single labels or regions) and
optionally ``background_label``. ``nnUNetv2_apply_postprocessing`` reads each segmentation and
applies them.

:func:`read_postprocessing_pkl` reads that file with an unpickler that resolves only that one
function and numpy's integer scalars (nnU-Net's labels are ``np.int64``), then checks the
structure; any other object in the file is refused before it is built. The steps it returns are
plain JSON (:func:`steps_to_json` form), which is what a bundle records and ``nnbridge predict``
applies (:func:`apply_postprocessing`), voxel for voxel like nnU-Net: a label is ``seg == label``,
a region the union of its labels, the mask of a step the union of its entries; every connected
component (full connectivity, skimage's ``label`` as acvl_utils uses it) except the largest (all
of the largest on ties) is set to the background label.
"""

from __future__ import annotations

import io
import json
import pickle
from pathlib import Path
from typing import Any

import numpy as np
from skimage.measure import label

from ..core.errors import NNBridgeError

NNUNET_FUNCTION = ("nnunetv2.postprocessing.remove_connected_components",
                   "remove_all_but_largest_component_from_segmentation")
STEP_NAME = "remove_all_but_largest_component"
"""The name a step has in a bundle's JSON."""

Step = dict[str, Any]


class _Marker:
    """Stands for nnU-Net's function while the pickle is read (never called)."""

    def __reduce__(self):  # pragma: no cover - never pickled
        raise TypeError("not picklable")


_FUNCTION = _Marker()


def _safe_dtype(spec: Any, align: bool = False, copy: bool = True) -> np.dtype:
    dtype = np.dtype(spec) if isinstance(spec, str) else None
    if dtype is None or dtype.kind not in "iub":
        raise pickle.UnpicklingError(f"numpy dtype {spec!r} is not an integer type")
    return np.dtype(spec, bool(align), bool(copy))


def _safe_scalar(dtype: Any, data: Any = None) -> Any:
    if not isinstance(dtype, np.dtype) or dtype.kind not in "iub" or not isinstance(data, bytes) \
            or len(data) != dtype.itemsize:
        raise pickle.UnpicklingError("a numpy scalar that is not an integer")
    return np.frombuffer(data, dtype=dtype, count=1)[0].item()


_ALLOWED = {
    NNUNET_FUNCTION: _FUNCTION,
    ("numpy", "dtype"): _safe_dtype,
    ("numpy.core.multiarray", "scalar"): _safe_scalar,
    ("numpy._core.multiarray", "scalar"): _safe_scalar,
}


class _Unpickler(pickle.Unpickler):
    """Resolves only :data:`_ALLOWED`; anything else stops the read before it is built."""

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"{module}.{name}") from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids")


def _entry(value: Any, where: str) -> int | list[int]:
    """A label (int) or a region (list of ints)."""
    if isinstance(value, bool):
        raise NNBridgeError(f"{where}: label {value!r} is not an integer")
    if isinstance(value, (int, np.integer)):
        return int(value)
    if isinstance(value, (tuple, list)) and value and all(
            isinstance(v, (int, np.integer)) and not isinstance(v, bool) for v in value):
        return [int(v) for v in value]
    raise NNBridgeError(f"{where}: {value!r} is neither a label nor a region (a tuple of labels)")


def _step(kwargs: Any, where: str) -> Step:
    if not isinstance(kwargs, dict) or "labels_or_regions" not in kwargs \
            or set(kwargs) - {"labels_or_regions", "background_label"}:
        raise NNBridgeError(f"{where}: arguments {kwargs!r} are not those of "
                            f"{NNUNET_FUNCTION[1]} (labels_or_regions, background_label)")
    value = kwargs["labels_or_regions"]
    # nnU-Net: a list is several labels/regions; anything else (a label, a region tuple) is one
    entries = [_entry(v, where) for v in value] if isinstance(value, list) else [_entry(value, where)]
    if not entries:
        raise NNBridgeError(f"{where}: a step with no labels or regions")
    return {"function": STEP_NAME, "labels_or_regions": entries,
            "background_label": _label(kwargs.get("background_label", 0), where)}


def _label(value: Any, where: str) -> int:
    entry = _entry(value, where)
    if isinstance(entry, list):
        raise NNBridgeError(f"{where}: background_label {value!r} is not a label")
    return entry


def read_postprocessing_pkl(path: str | Path) -> list[Step]:
    """The steps of an nnU-Net ``postprocessing.pkl``, read without building any object but
    nnU-Net's postprocessing function (by name) and integers. Raises :class:`NNBridgeError`
    naming the file for anything else."""
    path = Path(path)
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise NNBridgeError(f"{path}: cannot read it ({exc.strerror})") from None
    try:
        content = _Unpickler(io.BytesIO(raw)).load()
    except pickle.UnpicklingError as exc:
        raise NNBridgeError(f"{path}: refused: it holds {exc}, not only nnU-Net's postprocessing "
                            f"({NNUNET_FUNCTION[1]} and its labels); use the postprocessing.pkl "
                            "nnUNetv2_find_best_configuration wrote") from None
    except Exception as exc:  # truncated or not a pickle at all
        raise NNBridgeError(f"{path}: not a readable postprocessing.pkl ({type(exc).__name__}: {exc})") from None
    if not (isinstance(content, (tuple, list)) and len(content) == 2
            and isinstance(content[0], (list, tuple)) and isinstance(content[1], (list, tuple))
            and len(content[0]) == len(content[1])):
        raise NNBridgeError(f"{path}: not nnU-Net's (functions, kwargs) pair of postprocessing.pkl")
    functions, kwargs = content
    if any(f is not _FUNCTION for f in functions):
        raise NNBridgeError(f"{path}: a step is not {NNUNET_FUNCTION[1]}")
    return [_step(k, f"{path} step {i + 1}") for i, k in enumerate(kwargs)]


def read_steps(path: str | Path) -> list[Step]:
    """Steps from a ``postprocessing.pkl`` or from JSON (a list of steps, or a bundle's
    ``{"steps": [...]}`` record)."""
    path = Path(path)
    if path.suffix != ".json":
        return read_postprocessing_pkl(path)
    try:
        content = json.loads(path.read_text())
    except (OSError, ValueError) as exc:
        raise NNBridgeError(f"{path}: not readable JSON ({exc})") from None
    return check_steps(content.get("steps") if isinstance(content, dict) else content, str(path))


def check_steps(steps: Any, where: str) -> list[Step]:
    """Validated JSON steps (as a bundle records them)."""
    if not isinstance(steps, list):
        raise NNBridgeError(f"{where}: postprocessing steps must be a list")
    out = []
    for i, step in enumerate(steps):
        if not isinstance(step, dict) or step.get("function") != STEP_NAME:
            raise NNBridgeError(f"{where}: step {i + 1} is not {STEP_NAME}")
        entries = step.get("labels_or_regions")
        if not isinstance(entries, list) or not entries:
            raise NNBridgeError(f"{where}: step {i + 1} has no labels_or_regions")
        out.append({"function": STEP_NAME,
                    "labels_or_regions": [_entry(e, f"{where} step {i + 1}") for e in entries],
                    "background_label": _label(step.get("background_label", 0), f"{where} step {i + 1}")})
    return out


def describe(steps: list[Step]) -> str:
    """One line: what the steps do."""
    if not steps:
        return "none (nnU-Net chose no postprocessing)"
    parts = []
    for step in steps:
        names = ", ".join(str(tuple(e)) if isinstance(e, list) else str(e) for e in step["labels_or_regions"])
        parts.append(f"largest component of {{{names}}}")
    return "; then ".join(parts)


def _mask(segmentation: np.ndarray, entries: list[int | list[int]]) -> np.ndarray:
    mask = np.zeros(segmentation.shape, dtype=bool)
    for entry in entries:
        for value in entry if isinstance(entry, list) else [entry]:
            mask |= segmentation == value
    return mask


def largest_component(mask: np.ndarray) -> np.ndarray:
    """acvl_utils' ``remove_all_but_largest_component``: the components (full connectivity) of
    the largest size."""
    labeled, count = label(mask, return_num=True, connectivity=None)
    if count == 0:
        return np.zeros(mask.shape, dtype=bool)
    sizes = np.bincount(labeled.ravel())[1:]
    keep = np.flatnonzero(sizes == sizes.max()) + 1
    return np.isin(labeled, keep)


def apply_postprocessing(segmentation: np.ndarray, steps: list[Step]) -> np.ndarray:
    """The steps in order on a label map (a copy; ``segmentation`` is not modified)."""
    out = segmentation
    for step in steps:
        mask = _mask(out, step["labels_or_regions"])
        remove = mask & ~largest_component(mask)
        out = out.copy()
        out[remove] = step.get("background_label", 0)
    return out if out is not segmentation else segmentation.copy()
