"""Proof that an exported artifact carries the checkpoint's weights: every checkpoint tensor the
network uses is found in the ONNX graph bit for bit, in one of the forms of
:mod:`nnbridge.export.graph_proof` (by name, content, reshaped, transposed, split or folded); a
TorchScript module's state dict equals the checkpoint's tensor by tensor. An artifact without the
proof is deleted (:func:`refuse_unproven`).
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import torch

from ..core.errors import NNBridgeError
from ..models.checkpoint import tensor_digest
from .graph_proof import proof_record, prove_tensors


def unused_at_inference(network: torch.nn.Module, input_shape: tuple[int, ...], prefix: str = "") -> list[str]:
    """Parameters that do not influence the output (e.g. deep-supervision heads when it is off).

    Found by one backward pass: a parameter without gradient is not part of the inference graph,
    so an export legitimately leaves it out. ``prefix``: the key prefix of a wrapping module
    (:class:`nnbridge.models.plain.OutputSelector`), removed from the names returned.
    """
    network.zero_grad(set_to_none=True)
    with torch.enable_grad():
        network(torch.randn(input_shape)).float().sum().backward()
    unused = [name[len(prefix):] if prefix and name.startswith(prefix) else name
              for name, p in network.named_parameters(remove_duplicate=False) if p.grad is None]
    network.zero_grad(set_to_none=True)
    return unused


def checkpoint_arrays(weights: dict[str, torch.Tensor], unused: list[str] | tuple[str, ...] = ()
                      ) -> dict[str, np.ndarray]:
    """The checkpoint's floating-point tensors an export must carry (counters such as
    ``num_batches_tracked`` and parameters unused at inference do not enter the graph)."""
    return {k: t.detach().cpu().numpy() for k, t in weights.items()
            if t.is_floating_point() and k not in unused}


def verify_onnx_weights(model: onnx.ModelProto, weights: dict[str, torch.Tensor],
                        unused: list[str] | tuple[str, ...] = (), *, prefix: str = "",
                        reference: onnx.ModelProto | Callable[[], onnx.ModelProto] | None = None,
                        input_shape: tuple[int, ...] | None = None) -> dict[str, Any]:
    """Every checkpoint tensor the network uses (``unused`` ones, see
    :func:`unused_at_inference`, are listed) must be in the graph in one of the forms of
    :mod:`nnbridge.export.graph_proof`; the record says per tensor how. ``prefix``: the names'
    prefix in the graph (a wrapping module's); ``reference``: the graph without folding (see
    :func:`nnbridge.export.graph_proof.prove_tensors`); ``input_shape``: the input it is
    evaluated at (shape-dependent constants)."""
    truth = checkpoint_arrays(weights, unused)
    result = prove_tensors(model, truth, graph_names={k: prefix + k for k in truth},
                           reference=reference, reference_what="unfolded export", input_shape=input_shape)
    return proof_record(len(truth), result, unused)


def verify_torchscript_weights(module: torch.jit.ScriptModule, weights: dict[str, torch.Tensor],
                               prefix: str = "") -> dict[str, Any]:
    """The traced module's state dict must equal the checkpoint's, tensor by tensor (``prefix``:
    a wrapping module's key prefix)."""
    state = module.state_dict()
    missing = [k for k, v in weights.items()
               if prefix + k not in state or tensor_digest(state[prefix + k]) != tensor_digest(v)]
    return {
        "ok": not missing,
        "n_tensors": len(weights),
        "matched": {"name": len(weights) - len(missing)},
        "missing": missing,
        "summary": (f"weights verified: {len(weights)} tensors" if not missing
                    else f"weights NOT verified: first mismatching tensor {missing[0]}"),
    }


def refuse_unproven(weight_proof: dict[str, Any], out_path: Path) -> None:
    """An artifact that does not carry the checkpoint's weights is deleted, never shipped."""
    if not weight_proof["ok"]:
        Path(out_path).unlink(missing_ok=True)
        raise NNBridgeError(f"{out_path}: {weight_proof['summary']}; the export does not carry the "
                            "checkpoint's weights (not in the graph by name, content, reshape, "
                            "transpose, split or folding), so it was deleted")
