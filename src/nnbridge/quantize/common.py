"""What every quantization method shares: the calibration reader, metadata carried over, the
artifact record, one-line refusals of settings."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.artifacts import artifact_sha256, artifact_size
from ..core.errors import NNBridgeError
from ..core.graphs import op_histogram


class PatchReader:
    """``onnxruntime.quantization.CalibrationDataReader`` over an array of patches (batch 1)."""

    def __init__(self, input_name: str, patches: np.ndarray) -> None:
        self.input_name = input_name
        self.patches = patches.astype(np.float32)
        self.index = 0

    def get_next(self) -> dict[str, np.ndarray] | None:
        if self.index >= len(self.patches):
            return None
        item = {self.input_name: self.patches[self.index : self.index + 1]}
        self.index += 1
        # ONNX Runtime asks for the patches only while it calibrates (~10 s each at 128³, 1 thread)
        print(f"nnbridge: calibration: patch {self.index}/{len(self.patches)}", flush=True)
        return item

    def rewind(self) -> None:
        self.index = 0


def _copy_metadata(src: Path, dst: Path) -> None:
    """The quantizers drop model metadata: carry the provenance of ``src`` over to ``dst``."""
    original = onnx.load(str(src), load_external_data=False)
    converted = onnx.load(str(dst))
    del converted.metadata_props[:]
    converted.metadata_props.extend(original.metadata_props)
    onnx.save(converted, str(dst))


def _file_record(dst: Path) -> dict[str, Any]:
    """Operators, path, sha256 and size of an artifact (an IR: of its .xml and .bin together)."""
    return {"ops": op_histogram(dst), "path": str(dst), "sha256": artifact_sha256(dst),
            "size_bytes": artifact_size(dst)}


# voxels the accuracy searches rank their candidates on when the entry does not say: two patches
# of 128^3 (a real-size nnU-Net's 3d_fullres), every patch of small ones (the demo's 8 of 40^3)
RANKING_VOXELS = 2 * 128**3


def ranking_patches(check: np.ndarray, asked: int | None) -> int:
    """How many of the ``check`` patches (batch 1 each) an accuracy search ranks its candidates
    on: ``asked`` (the entry's ``ranking_patches``), else as many as hold :data:`RANKING_VOXELS`
    (at least one). Ranking only orders the candidates (which block or operation goes back to fp32
    first); every step the search keeps is still checked on all of ``check``."""
    n = len(check)
    if asked is not None:
        return max(1, min(int(asked), n))
    voxels = int(np.prod(check.shape[2:]))  # per patch: channels do not count
    return max(1, min(n, RANKING_VOXELS // max(voxels, 1)))


def _choice(what: str, value: Any, allowed: tuple[Any, ...]) -> None:
    """Refuse a setting outside ``allowed`` in one line that names the choices."""
    if value not in allowed:
        raise NNBridgeError(f"{what} {value!r} unknown; use one of {allowed}")


def _paths(src: Path, dst: Path, calibration: np.ndarray | None = None) -> tuple[Path, Path]:
    """``src`` and ``dst`` as paths, ``dst``'s folder made; a calibrated method refuses an empty
    ``calibration``."""
    if calibration is not None and len(calibration) == 0:
        raise NNBridgeError("no calibration patches; raise quantize n_calibration_patches")
    src, dst = Path(src), Path(dst)
    dst.parent.mkdir(parents=True, exist_ok=True)
    return src, dst
