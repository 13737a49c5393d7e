"""Export a loaded fold to TorchScript (traced; ``torch.jit.script`` fails on nnU-Net encoders),
checked like the ONNX export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch

from ..core.runlog import sha256_file
from ..models.loaded import LoadedFold
from .common import _max_abs, check_spatial_shape, fold_metadata, probe_shapes
from .weights import refuse_unproven, verify_torchscript_weights


def export_torchscript(fold: LoadedFold, out_path: Path, seed: int = 0) -> dict[str, Any]:
    """Write a traced TorchScript archive (``torch.jit.script`` fails on nnU-Net encoders)."""
    check_spatial_shape(fold.patch_size, fold.stride_multiple)
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    generator = torch.Generator().manual_seed(seed)
    dummy = torch.randn(fold.input_shape, generator=generator)
    if isinstance(fold.network, torch.jit.ScriptModule):  # the source is TorchScript already
        traced = fold.network
    else:
        with torch.no_grad():
            traced = torch.jit.trace(fold.network, (dummy,), check_trace=False)
    extra = {"nnbridge.json": json.dumps(fold_metadata(fold, opset=0))}
    torch.jit.save(traced, str(out_path), _extra_files=extra)
    loaded = torch.jit.load(str(out_path), map_location="cpu")
    weight_proof = verify_torchscript_weights(loaded, fold.weights)
    refuse_unproven(weight_proof, out_path)
    shape_checks = []
    for shape in probe_shapes(fold):
        x = torch.randn(shape, generator=generator)
        with torch.no_grad():
            ref = fold.network(x).numpy()
            got = loaded(x).numpy()
        shape_checks.append({"shape": list(shape), "max_abs_err": _max_abs(ref, got)})
    return {
        "path": str(out_path),
        "sha256": sha256_file(out_path),
        "size_bytes": out_path.stat().st_size,
        "weights": weight_proof,
        "shape_checks": shape_checks,
    }
