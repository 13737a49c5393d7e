"""Exact parity of the zoo's networks at real patch sizes: each network of nnbridge.demo.zoo (its
seeded weights and widths), configured at a real patch size (3D 96³, 2D 512²; UNETR's fixed
img_size set to it), goes the pipeline's way — load, ONNX export with its weight proof and size
probing, simplify with the two-pass normalization — and its deployable graph (``model.onnx``) and
the quantizers' fused one (``quantizable.onnx``) run on ONNX Runtime and OpenVINO (fp32 hint)
against PyTorch in float64, on a patch whose first half is constant (a case's background, where
the runtimes' one-sum normalization kernels drift most). Prints one line per network: the
normalizations rewritten, and the max error of each graph as a fraction of the logits' range
(the exact gate is 1e-4). Minutes on 2 cores; not part of the test suite.

    PYTHONPATH=src .venv/bin/python scripts/zoo_real_size_parity.py [name ...] [--spatial-dims 3]
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from nnbridge.demo.zoo import ZOO, build, model_entry, save_checkpoint
from nnbridge.export.onnx_export import export_onnx
from nnbridge.export.simplify import simplify_onnx
from nnbridge.models.loader import load_model
from nnbridge.pipeline.plan import discover_models
from nnbridge.runtime.ort import run_onnx
from nnbridge.runtime.ov import openvino_model

SIZES = {2: (512, 512), 3: (96, 96, 96)}


def _runtimes(path: Path, x: np.ndarray, threads: int) -> dict[str, np.ndarray]:
    """Logits of ``path`` on ONNX Runtime and on OpenVINO (compiled exact, fp32, for ``x``'s shape,
    as the pipeline compiles it)."""
    return {"onnxruntime": run_onnx(path, x, threads),
            "openvino": np.asarray(openvino_model(path, threads, precision="f32", shape=x.shape)({0: x})[0])}


def screen(net, size: tuple[int, ...], threads: int) -> str:
    if "img_size" in net.init_kwargs:  # a ViT encoder's size is fixed: the real one
        net = dataclasses.replace(net, init_kwargs={**net.init_kwargs, "img_size": list(size),
                                                    "spatial_dims": len(size)})
    with tempfile.TemporaryDirectory(prefix="nnbridge-zoo-real-") as tmp:
        folder = Path(tmp)
        x = np.random.default_rng(0).standard_normal((1, 1, *size)).astype(np.float32)
        x[:, :, : size[0] // 2] = -0.8
        np.save(folder / "patches.npy", x)
        checkpoint = save_checkpoint(net, build(net).eval(),
                                     folder / ("model.ts" if net.saved_as == "torchscript" else "model.pth"))
        entry = {**model_entry(net, checkpoint, folder / "patches.npy", folder / "patches.npy"),
                 "example_size": list(size), "init_kwargs": net.init_kwargs}
        fold = load_model(next(iter(discover_models([entry], quantize_names=[]).values())).source("all"))
        started = time.perf_counter()
        export = export_onnx(fold, folder / "raw.onnx", threads=threads)
        record = simplify_onnx(folder / "raw.onnx", folder / "model.onnx", x, export_record=export,
                               quantizable=folder / "quantizable.onnx", threads=threads)
        with torch.no_grad():
            reference = fold.network.double()(torch.from_numpy(x).double()).numpy()
        scale = float(np.abs(reference).max())
        norms = record["norms"]
        graphs = ("model.onnx", "quantizable.onnx") if norms["rewritten"] else ("model.onnx",)
        errors = {g: {k: float(np.abs(v - reference).max()) / scale for k, v in _runtimes(folder / g, x, threads).items()}
                  for g in graphs}
        shown = "; ".join(f"{g}: " + ", ".join(f"{k} {v:.1e}" for k, v in e.items()) for g, e in errors.items())
        fixed = "" if "spatial" in export["dynamic_axes"] else ", fixed size"
        return (f"{net.name} {'x'.join(map(str, size))}{fixed}: {norms['rewritten']}/{norms['instance_norms']} "
                f"rewritten ({norms.get('group_norms', 0)} GroupNorm), {norms.get('error') or ''} {shown} "
                f"({time.perf_counter() - started:.0f} s)")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help="zoo networks (default: all)")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--spatial-dims", type=int, choices=(2, 3),
                        help="build the networks that take MONAI's spatial_dims in this many dimensions "
                             "(e.g. 3: SwinUNETR at 96³, its usual size); the others as the zoo has them")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    for net in ZOO:
        if args.names and net.name not in args.names:
            continue
        if args.spatial_dims and net.init_kwargs.get("spatial_dims") not in (None, args.spatial_dims):
            net = dataclasses.replace(net, init_kwargs={**net.init_kwargs, "spatial_dims": args.spatial_dims},
                                      example_size=SIZES[args.spatial_dims])
        try:
            print(screen(net, SIZES[len(net.example_size)], args.threads), flush=True)
        except Exception as exc:  # noqa: BLE001 - one network's failure is its line; the others go on
            print(f"{net.name}: {type(exc).__name__}: {str(exc).splitlines()[0][:300] if str(exc) else ''}", flush=True)


if __name__ == "__main__":
    main()
