"""Export a loaded fold to TorchScript (traced; ``torch.jit.script`` fails on nnU-Net encoders),
checked like the ONNX export."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..core.runlog import sha256_file
from ..models.loaded import LoadedFold
from .common import check_spatial_shape, fold_metadata
from .common import raise_multiple, run_shape_checks, traced_size_bound
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
    weight_proof = verify_torchscript_weights(loaded, fold.weights, fold.weights_prefix)
    refuse_unproven(weight_proof, out_path)

    def run(x: torch.Tensor) -> np.ndarray:
        with torch.no_grad():
            return loaded(x).numpy()

    shape_checks = run_shape_checks(fold, run, generator)
    record = {
        "path": str(out_path),
        "sha256": sha256_file(out_path),
        "size_bytes": out_path.stat().st_size,
        "weights": weight_proof,
        "shape_checks": shape_checks,
    }
    bound = traced_size_bound(shape_checks) if "spatial" in fold.dynamic_axes else None
    raised = raise_multiple(fold, run, generator) if bound else None
    if raised:
        record["spatial_multiple"] = list(raised)
        record["raised"] = (f"the traced module holds at multiples of {list(raised)}, not of "
                            f"{list(fold.stride_multiple)} ({bound})")
    elif bound:  # a trace has no dynamic axes to turn off: say which sizes it holds for
        record["fixed_size"] = f"the traced module holds the example size only ({bound})"
    return record
