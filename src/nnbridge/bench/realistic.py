"""A benchmark at a realistic nnU-Net size, without a trained model.

Speed does not depend on trained weights, so this module builds the network nnU-Net builds for
a typical ``3d_fullres`` plan (``PlainConvUNet``, 6 stages, 32→320 features, patch 128³, one
input channel, 3 classes, InstanceNorm, LeakyReLU, deep supervision off) with seeded random
weights, exports it to ONNX like :mod:`nnbridge.export` (legacy exporter, opset 17, dynamic
axes), makes a static INT8 QDQ variant (calibrated on random normal patches: INT8 here is for
speed only, its accuracy cannot be judged with random weights) and, with ``ir``, the OpenVINO IR
variants (INT8 by NNCF's OpenVINO backend on the same patches, and the fp32 graph as IR, whose load
time the records hold beside the ONNX file's), and times torch eager, ONNX Runtime and OpenVINO,
each in its own process (:mod:`nnbridge.bench.measure`). The exact fp32 variants are timed as the
pipeline deploys them at that size (InstanceNormalization in two passes where
:mod:`nnbridge.export.norms` rewrites it, ``model_two_pass.onnx``); INT8 and bf16 start from the
fused graph, as the quantizers do. Each process then times the peak
kernel of its kind (:mod:`nnbridge.bench.kernels`): "% of peak" and the peak-share targets
(:data:`nnbridge.bench.targets.PEAK_TARGETS`) compare numbers of the same minute, not with a peak
measured minutes earlier on a VM whose speed moves.

The architecture travels as a JSON description (:func:`plain_unet_arch`); the benchmark child
process rebuilds the same network from it with :func:`build_network` (``torch_arch`` backend).
"""

from __future__ import annotations

import argparse
import json
import time
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path
from typing import Any

import numpy as np
import onnx

from ..core.cpu import cpu_identity
from ..core.errors import NNBridgeError
from ..core.metadata import META_PREFIX
from ..core.onnxgraph import compute_node_flops
from ..export.common import INPUT_NAME
from ..export.norms import MIN_VOXELS, two_pass_instance_norms
from ..export.onnx_export import write_onnx
from ..quantize.coverage import int8_coverage, openvino_int8_coverage
from ..quantize.openvino_ir import convert_openvino_fp32, quantize_openvino_int8
from ..quantize.static import quantize_static_int8
from ..runtime.ort import onnx_session
from .measure import benchmark_variants
from .networks import analytic_flops, build_network, check_patch, plain_unet_arch, plans_arch, _smaller_shape, stride_multiple
from .peak import ADJACENT_MIN_MS, add_throughput, peak_for_this_machine, peak_kinds, with_adjacent_peaks
from .sweep import tune_onnxruntime
from .targets import PEAK_TARGETS, speed_ceilings, speed_targets


FP32_RESULTS = ("onnx_fp32", "onnx_fp32@openvino", "fp32_ir@openvino")


INT8_RESULTS = ("int8", "int8@openvino", "int8_ir@openvino")  # the QDQ file on each runtime; the INT8 IR


INT8_NOTE = ("INT8 is for speed only: the weights are random and the calibration patches random "
             "normal, so no Dice gate is possible")


def export_network(network, arch: dict[str, Any], out_path: Path, export_shape: tuple[int, ...], *,
                   seed: int = 0, opset: int = 17) -> dict[str, Any]:
    """ONNX fp32 export as :func:`nnbridge.export.export_onnx` does it (legacy exporter, dynamic
    batch and spatial axes), traced at ``export_shape``, and checked against eager PyTorch there."""
    import torch  # noqa: PLC0415


    x = torch.randn(export_shape, generator=torch.Generator().manual_seed(seed))
    started = time.perf_counter()
    meta = {"model_kind": "random_plainconvunet", "architecture": json.dumps(arch), "seed": str(seed),
            "stride_multiple": json.dumps(list(stride_multiple(arch))), "opset": str(opset)}
    write_onnx(network, x, out_path, opset, {META_PREFIX + k: v for k, v in meta.items()})
    with torch.no_grad():
        reference = network(x).numpy()
    got = onnx_session(out_path).run(None, {INPUT_NAME: x.numpy()})[0]
    return {"path": str(out_path), "opset": opset, "size_bytes": out_path.stat().st_size,
            "seconds": round(time.perf_counter() - started, 2),
            "check": {"shape": list(export_shape), "max_abs_err": float(np.max(np.abs(reference - got)))}}


def _coverage_summary(coverage: dict[str, Any]) -> dict[str, Any]:
    keys = ("n_compute_nodes", "n_int8_compute_nodes", "int8_flop_share", "float_compute_nodes")
    return {key: coverage[key] for key in keys}


def make_int8(src: Path, dst: Path, arch: dict[str, Any], patch_size: tuple[int, ...], *,
              n_patches: int = 4, max_size: int = 64, seed: int = 0,
              openvino: bool = True) -> dict[str, Any]:
    """Static INT8 QDQ variant of ``src`` (per-channel weights, symmetric INT8 activations, MinMax),
    calibrated on ``n_patches`` random normal patches. Calibration keeps every intermediate
    tensor of every patch in memory (several GB per 128³ patch), so the patches are cut to at most
    ``max_size`` per axis (a multiple of the total stride; the model has dynamic axes)."""

    spatial = _smaller_shape(arch, patch_size, max_size)
    rng = np.random.default_rng(seed + 1)
    calibration = rng.standard_normal((n_patches, arch["input_channels"], *spatial)).astype(np.float32)
    record = quantize_static_int8(src, dst, calibration, quant_format="QDQ", per_channel=True,
                                  calibrate_method="MinMax", symmetric_activations=True)
    record["calibration"] = {"n_patches": n_patches, "shape": [1, arch["input_channels"], *spatial],
                             "data": "random normal", "note": INT8_NOTE}
    shape = (1, arch["input_channels"], *patch_size)
    record["coverage"] = _coverage_summary(int8_coverage(dst, src, shape))
    if openvino:
        record["coverage_openvino"] = _coverage_summary(openvino_int8_coverage(dst, src, shape))
    return record


def make_ir_variants(src: Path, out_dir: Path, arch: dict[str, Any], patch_size: tuple[int, ...], *,
                     int8: bool, n_patches: int = 4, max_size: int = 64, seed: int = 0,
                     fp32_src: Path | None = None) -> dict[str, Any]:
    """The OpenVINO IR variants of ``src``: ``model_fp32.xml`` (the fp32 graph: ``fp32_src``'s when
    given, the deployable one) and, with ``int8``, ``model_int8.xml``: INT8 by NNCF's OpenVINO
    backend (performance preset: symmetric activations, like the QDQ variant's), calibrated on the
    QDQ variant's random normal patches (same seed, cut to ``max_size`` per axis)."""
    record: dict[str, Any] = {"fp32": convert_openvino_fp32(fp32_src or src, out_dir / "model_fp32.xml")}
    if int8:
        spatial = _smaller_shape(arch, patch_size, max_size)
        rng = np.random.default_rng(seed + 1)
        calibration = rng.standard_normal((n_patches, arch["input_channels"], *spatial)).astype(np.float32)
        quantized = quantize_openvino_int8(src, out_dir / "model_int8.xml", calibration, preset="performance",
                                           threads=0)  # a job of its own: every core
        quantized["calibration"] = {"n_patches": n_patches, "shape": [1, arch["input_channels"], *spatial],
                                    "data": "random normal", "note": INT8_NOTE}
        shape = (1, arch["input_channels"], *patch_size)
        quantized["coverage_openvino"] = _coverage_summary(openvino_int8_coverage(out_dir / "model_int8.xml", src, shape))
        record["int8"] = quantized
    return record


def compute_targets(results: dict[str, Any], peak: dict[str, Any] | None = None) -> dict[str, Any]:
    """:func:`nnbridge.bench.speed_targets` on the realistic results: exact fp32 = ONNX fp32 on
    each runtime, INT8 = the QDQ variant on each runtime (speed only: no Dice gate here); with
    the ceilings the measured ``peak`` allows and the share of the peak the fastest of each should
    reach (:data:`nnbridge.bench.targets.PEAK_TARGETS`)."""

    candidates = {name: {"speedup": r.get("speedup_vs_torch_eager"), "p50_ms": r.get("p50_ms"),
                         "pct_of_peak": r.get("pct_of_peak"), "op_profile": r.get("op_profile")}
                  for name, r in results.items() if "p50_ms" in r}
    ceilings = speed_ceilings(results.get("torch_eager", {}).get("gflops_per_s"), peak or {})
    return speed_targets(candidates, FP32_RESULTS, INT8_RESULTS, ceilings=ceilings, peak_targets=PEAK_TARGETS)


def _specs(out_dir: Path, arch: dict[str, Any], seed: int, backends: tuple[str, ...],
           int8: bool, ir: bool = False, fp32_file: str = "model.onnx") -> dict[str, dict[str, Any]]:
    """The benchmark specs by result name, torch eager (the baseline) first. ``fp32_file``: the
    exact fp32 graph (the two-pass one where the normalizations were rewritten); bf16 runs the
    fused graph, as the pipeline's bf16 variant does."""
    fp32, fused, quant = str(out_dir / fp32_file), str(out_dir / "model.onnx"), str(out_dir / "model_int8.onnx")
    specs: dict[str, dict[str, Any]] = {}
    if "torch" in backends:
        specs["torch_eager"] = {"backend": "torch_arch", "arch": arch, "seed": seed}
    if "onnxruntime" in backends:
        specs["onnx_fp32"] = {"backend": "onnxruntime", "path": fp32}
    if "openvino" in backends:
        specs["onnx_fp32@openvino"] = {"backend": "openvino", "path": fp32}
        specs["bf16@openvino"] = {"backend": "openvino", "path": fused, "precision": "bf16"}
    if int8 and "onnxruntime" in backends:
        specs["int8"] = {"backend": "onnxruntime", "path": quant}
    if int8 and "openvino" in backends:
        specs["int8@openvino"] = {"backend": "openvino", "path": quant}
    if ir and "openvino" in backends:
        specs["fp32_ir@openvino"] = {"backend": "openvino", "path": str(out_dir / "model_fp32.xml")}
        if int8:
            specs["int8_ir@openvino"] = {"backend": "openvino", "path": str(out_dir / "model_int8.xml")}
    return specs


def _versions() -> dict[str, str]:

    out = {}
    for package in ("torch", "onnx", "onnxruntime", "openvino", "dynamic_network_architectures"):
        try:
            out[package] = version(package)
        except PackageNotFoundError:
            out[package] = "unavailable"
    return out


def realistic_benchmark(out_dir: Path, *, patch_size: tuple[int, ...] = (128, 128, 128),
                        features: tuple[int, ...] = (32, 64, 128, 256, 320, 320), threads: int = 2,
                        warmup: int = 1, repeats: int = 3, int8: bool = True,
                        backends: tuple[str, ...] = ("torch", "onnxruntime", "openvino"),
                        seed: int = 0, plans: Path | None = None, configuration: str = "3d_fullres",
                        peak: dict[str, Any] | None = None, ir: bool = True,
                        adjacent_min_ms: float = ADJACENT_MIN_MS,
                        two_pass_norm_voxels: int = MIN_VOXELS) -> dict[str, Any]:
    """Build, export, quantize and time a random-weight nnU-Net ``PlainConvUNet`` at ``patch_size``
    — or, with ``plans``, the network of that plans file's ``configuration`` at its own patch size
    (``patch_size`` and ``features`` then do not apply). ``peak``: the machine's measured peaks
    (:func:`nnbridge.bench.measure_peak_gflops`), used when measured on this kind of CPU, else
    measured here (:func:`nnbridge.bench.peak_for_this_machine`). Each runtime times its peak
    kernel of its kind right after its own timing when a patch takes at least ``adjacent_min_ms``
    (as the fold benchmarks do: at 128^3 every runtime; a patch of a few milliseconds is measured
    against ``peak``, and a second of kernel timing per runtime would be most of its run).

    Writes ``out_dir/model.onnx`` (and ``out_dir/model_int8.onnx`` when ``int8``; with ``ir`` and
    openvino among the ``backends`` the IRs ``model_fp32.xml``, ``model_int8.xml``), and
    ``model_two_pass.onnx``, the exact graph timed, where its largest InstanceNormalization has
    ``two_pass_norm_voxels`` per channel or more (the record's ``norms``). Returns a
    JSON-serializable record: the architecture, input shape, FLOPs per patch (from the graph, and
    counted from the description as a check), the machine's measured fp32 peak, per result
    (``torch_eager``, ``onnx_fp32`` with tuned ONNX Runtime settings, ``onnx_fp32@openvino``,
    ``bf16@openvino`` (the fp32 file in bf16; ``skipped`` on CPUs without native bf16), ``int8``,
    ``int8@openvino``, with ``ir`` ``fp32_ir@openvino`` and ``int8_ir@openvino``) latency
    percentiles, load time, peak memory, speed-up against torch eager,
    GFLOP/s and % of peak, and the ``targets`` block (:func:`compute_targets`).
    """


    unknown = set(backends) - {"torch", "onnxruntime", "openvino"}
    if unknown:
        raise NNBridgeError(f"unknown backends {sorted(unknown)}; use torch, onnxruntime, openvino")
    started = time.perf_counter()
    if plans:
        arch, patch_size = plans_arch(Path(plans), configuration)
    else:
        arch = plain_unet_arch(features, dims=len(patch_size))
    check_patch(arch, tuple(patch_size))
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    shape = (1, arch["input_channels"], *patch_size)
    export_shape = (1, arch["input_channels"], *_smaller_shape(arch, tuple(patch_size), 64))
    network = build_network(arch, seed)
    export = export_network(network, arch, out_dir / "model.onnx", export_shape, seed=seed)
    two_pass, norms = two_pass_instance_norms(onnx.load(str(out_dir / "model.onnx")), shape, two_pass_norm_voxels)
    fp32_file = "model.onnx"
    if norms["rewritten"]:  # the exact graph as simplify deploys it at this size
        fp32_file = "model_two_pass.onnx"
        onnx.save(two_pass, str(out_dir / fp32_file))
    quantized = (make_int8(out_dir / "model.onnx", out_dir / "model_int8.onnx", arch, tuple(patch_size),
                           seed=seed, openvino="openvino" in backends) if int8 else None)
    ir = ir and "openvino" in backends
    ir_variants = (make_ir_variants(out_dir / "model.onnx", out_dir, arch, tuple(patch_size), int8=int8, seed=seed,
                                    fp32_src=out_dir / fp32_file) if ir else None)

    specs = _specs(out_dir, arch, seed, tuple(backends), int8, ir, fp32_file)
    tuning = None
    if "onnx_fp32" in specs:
        tuning = tune_onnxruntime(specs["onnx_fp32"], shape, threads, min(warmup, 2), max(3, repeats // 2))
        specs["onnx_fp32"]["settings"] = tuning["chosen"]
    # each runtime times its peak kernel where a patch is slow enough (the search above timed plain specs)
    record = benchmark_variants(with_adjacent_peaks(specs, min_ms=adjacent_min_ms), shape, threads, warmup, repeats)
    if tuning is not None and "p50_ms" in record["results"]["onnx_fp32"]:
        record["results"]["onnx_fp32"]["ort_settings"] = tuning["chosen"]
    record["peak"] = peak_for_this_machine(peak, threads)
    record["machine"] = cpu_identity()
    graph = onnx.load(str(out_dir / "model.onnx"))
    flops = sum(node["flops"] for node in compute_node_flops(graph, shape).values())
    add_throughput(record, flops, record["peak"], peak_kinds(specs))
    if ir_variants:  # what OpenVINO pays to read and compile each kind of fp32 file
        record["load_ms"] = {k: record["results"][k].get("load_ms") for k in ("onnx_fp32@openvino", "fp32_ir@openvino")
                             if k in record["results"]}
    record.update({
        "kind": "realistic nnU-Net benchmark (random weights)",
        "architecture": arch, "seed": seed, "patch_size": list(patch_size),
        "stride_multiple": list(stride_multiple(arch)),
        "flops_analytic": analytic_flops(arch, tuple(patch_size)),
        "export": export, "norms": norms, "int8_variant": quantized, "ir_variants": ir_variants,
        "files": {name: spec["path"] for name, spec in specs.items() if "path" in spec},
        "int8_note": INT8_NOTE if int8 else None,
        "tuning": tuning, "targets": compute_targets(record["results"], record["peak"]), "versions": _versions(),
        "seconds": round(time.perf_counter() - started, 1),
    })
    return record


def main(argv: list[str] | None = None) -> None:
    """``python -m nnbridge.realistic OUT_DIR [--patch 128 128 128] ...``: run and print the record."""

    parser = argparse.ArgumentParser(description="benchmark a random-weight nnU-Net at a realistic size")
    parser.add_argument("out_dir", type=Path)
    parser.add_argument("--patch", type=int, nargs="+", default=[128, 128, 128])
    parser.add_argument("--features", type=int, nargs="+", default=[32, 64, 128, 256, 320, 320])
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--warmup", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--no-int8", action="store_true")
    parser.add_argument("--no-ir", action="store_true", help="no OpenVINO IR variants")
    args = parser.parse_args(argv)
    record = realistic_benchmark(args.out_dir, patch_size=tuple(args.patch), features=tuple(args.features),
                                 threads=args.threads, warmup=args.warmup, repeats=args.repeats,
                                 int8=not args.no_int8, ir=not args.no_ir)
    (args.out_dir / "realistic.json").write_text(json.dumps(record, indent=2))
    print(json.dumps({k: record[k] for k in ("flops_per_patch", "peak", "targets")}, indent=2))


if __name__ == "__main__":
    main()
