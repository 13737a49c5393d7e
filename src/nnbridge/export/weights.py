"""Proof that an exported artifact carries the checkpoint's weights."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import onnx
import torch
from onnx import numpy_helper

from ..core.errors import NNBridgeError
from ..models.checkpoint import tensor_digest


def unused_at_inference(network: torch.nn.Module, input_shape: tuple[int, ...]) -> list[str]:
    """Parameters that do not influence the output (e.g. deep-supervision heads when it is off).

    Found by one backward pass: a parameter without gradient is not part of the inference graph,
    so an export legitimately leaves it out.
    """
    network.zero_grad(set_to_none=True)
    with torch.enable_grad():
        network(torch.randn(input_shape)).float().sum().backward()
    unused = [name for name, p in network.named_parameters() if p.grad is None]
    network.zero_grad(set_to_none=True)
    return unused


def verify_onnx_weights(model: onnx.ModelProto, weights: dict[str, torch.Tensor],
                        unused: list[str] | tuple[str, ...] = ()) -> dict[str, Any]:
    """Every checkpoint tensor the network uses must be an initializer of the graph (matched by
    name, else by content hash); ``unused`` ones (see :func:`unused_at_inference`) are listed."""
    by_name = {init.name: numpy_helper.to_array(init) for init in model.graph.initializer}
    digests = {tensor_digest(arr) for arr in by_name.values()}
    missing: list[str] = []
    by_content = 0
    for name, tensor in weights.items():
        if tensor.dtype not in (torch.float32, torch.float16, torch.float64) or name in unused:
            continue  # counters such as num_batches_tracked do not enter the graph
        if name in by_name and tensor_digest(tensor) == tensor_digest(by_name[name]):
            continue
        if tensor_digest(tensor) in digests:
            by_content += 1
            continue
        missing.append(name)
    n = sum(1 for k, t in weights.items()
            if t.dtype in (torch.float32, torch.float16, torch.float64) and k not in unused)
    return {
        "ok": not missing,
        "n_tensors": n,
        "matched_by_content": by_content,
        "unused_at_inference": list(unused),
        "missing": missing,
        "summary": (f"weights verified: {n} tensors" if not missing
                    else f"weights NOT verified: first mismatching tensor {missing[0]}"),
    }


def verify_torchscript_weights(module: torch.jit.ScriptModule,
                               weights: dict[str, torch.Tensor]) -> dict[str, Any]:
    """The traced module's state dict must equal the checkpoint's, tensor by tensor."""
    state = module.state_dict()
    missing = [k for k, v in weights.items()
               if k not in state or tensor_digest(state[k]) != tensor_digest(v)]
    return {
        "ok": not missing,
        "n_tensors": len(weights),
        "missing": missing,
        "summary": (f"weights verified: {len(weights)} tensors" if not missing
                    else f"weights NOT verified: first mismatching tensor {missing[0]}"),
    }


def refuse_unproven(weight_proof: dict[str, Any], out_path: Path) -> None:
    """An artifact that does not carry the checkpoint's weights is deleted, never shipped."""
    if not weight_proof["ok"]:
        Path(out_path).unlink(missing_ok=True)
        raise NNBridgeError(f"{out_path}: {weight_proof['summary']}; the export does not carry the "
                            "checkpoint's weights, so it was deleted")
