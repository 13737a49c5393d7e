"""The networks people train with MONAI and segmentation_models_pytorch, tiny and seeded, each
saved the way training scripts save them, and the config entries a user writes for them: the
zoo matrix of the tests (tests/test_zoo.py) and of the README's coverage table
(scripts/zoo_coverage.py). smp encoders are built with ``encoder_weights=None`` (nothing is
downloaded); channel counts and sizes are small so the whole matrix runs in about a minute.
"""

from __future__ import annotations

import importlib
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from ..bench.measure import benchmark_variants
from ..core.artifacts import artifact_path, method_kind
from ..core.runlog import write_json
from ..export.onnx_export import export_onnx
from ..export.simplify import simplify_onnx
from ..export.torchscript_export import export_torchscript
from ..models.loader import load_model
from ..pipeline.plan import FoldKey, discover_models, fold_variants, variant_tolerance
from ..quantize import quantize_variant
from ..validate.reference import validate_source

MONAI = "monai.networks.nets."
SMP = "segmentation_models_pytorch."
SMP_COMMON = {"encoder_weights": None, "in_channels": 1, "classes": 2}


@dataclass(frozen=True)
class ZooNet:
    """One network of the zoo: how to build it, its size, how its checkpoint is saved."""

    name: str
    cls: str
    init_kwargs: dict[str, Any]
    example_size: tuple[int, ...]
    saved_as: str
    """A key of :data:`SAVERS`: how the checkpoint file is written."""
    what: str
    """What it exercises, in a few words."""
    entry: dict[str, Any] = field(default_factory=dict)
    """Extra config keys a user would write (``output_index``...)."""

    @property
    def library(self) -> str:
        return "MONAI" if self.cls.startswith(MONAI) else "smp"

    @property
    def short_class(self) -> str:
        return self.cls.rsplit(".", 1)[1]


ZOO: tuple[ZooNet, ...] = (
    ZooNet("monai_unet", MONAI + "UNet",
           {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "channels": [8, 16, 32],
            "strides": [2, 2], "num_res_units": 1}, (16, 16, 16), "dataparallel",
           "PReLU slopes (reshaped), residual units, DataParallel keys"),
    ZooNet("monai_basicunet", MONAI + "BasicUNet",
           {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 16, 32, 4]},
           (32, 32), "monai_checkpoint_saver", "MONAI CheckpointSaver file {net, opt}"),
    ZooNet("monai_basicunetpp", MONAI + "BasicUNetPlusPlus",
           {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 16, 32, 4],
            "deep_supervision": False}, (32, 32), "model_state_dict",
           "forward returns a one-element list; {model_state_dict, epoch}"),
    ZooNet("monai_basicunetpp_ds", MONAI + "BasicUNetPlusPlus",
           {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "features": [4, 4, 8, 16, 32, 4],
            "deep_supervision": True}, (32, 32), "compiled",
           "four full-resolution heads (deepest chosen); torch.compile keys"),
    ZooNet("monai_attentionunet", MONAI + "AttentionUnet",
           {"spatial_dims": 2, "in_channels": 1, "out_channels": 2, "channels": [4, 8, 16],
            "strides": [2, 2]}, (32, 32), "state_dict", "attention gates, BatchNorm, PReLU"),
    ZooNet("monai_segresnet", MONAI + "SegResNet",
           {"spatial_dims": 3, "init_filters": 4, "in_channels": 1, "out_channels": 2,
            "blocks_down": [1, 1, 1], "blocks_up": [1, 1], "norm": ["GROUP", {"num_groups": 2}]},
           (16, 16, 16), "bare", "GroupNorm (scales reshaped), trilinear upsampling"),
    ZooNet("monai_dynunet", MONAI + "DynUNet",
           {"spatial_dims": 3, "in_channels": 1, "out_channels": 2, "kernel_size": [3, 3, 3],
            "strides": [1, 2, 2], "upsample_kernel_size": [2, 2], "filters": [4, 8, 16],
            "deep_supervision": True, "deep_supr_num": 1, "res_block": True},
           (16, 16, 16), "model", "deep supervision (heads unused in eval), residual blocks"),
    ZooNet("monai_unetr", MONAI + "UNETR",
           {"in_channels": 1, "out_channels": 2, "img_size": [32, 32], "feature_size": 4,
            "hidden_size": 32, "mlp_dim": 64, "num_heads": 2, "spatial_dims": 2},
           (32, 32), "bare", "ViT encoder with img_size: fixed spatial size; Linear weights transposed"),
    ZooNet("monai_swinunetr", MONAI + "SwinUNETR",
           {"in_channels": 1, "out_channels": 2, "feature_size": 12, "spatial_dims": 2,
            "depths": [1, 1, 1, 1], "num_heads": [1, 1, 1, 1], "window_size": 4},
           (64, 64), "model_state_dict", "shifted-window attention; relative position bias gathered"),
    ZooNet("monai_vnet", MONAI + "VNet", {"spatial_dims": 2, "in_channels": 1, "out_channels": 2},
           (32, 32), "torchscript", "TorchScript archive; 5x5 convolutions, ELU, BatchNorm"),
    ZooNet("smp_unet", SMP + "Unet",
           {"encoder_name": "tu-test_resnet", "decoder_channels": [16, 8, 8, 8, 8], **SMP_COMMON},
           (64, 64), "lightning", "timm ResNet encoder; Lightning checkpoint (model. prefix)"),
    ZooNet("smp_unetplusplus", SMP + "UnetPlusPlus",
           {"encoder_name": "tu-test_efficientnet", "decoder_channels": [16, 8, 8, 8, 8], **SMP_COMMON},
           (64, 64), "bare", "EfficientNet encoder (depthwise, squeeze-excitation, SiLU)"),
    ZooNet("smp_fpn", SMP + "FPN",
           {"encoder_name": "tu-test_convnext", "decoder_pyramid_channels": 32,
            "decoder_segmentation_channels": 32, **SMP_COMMON},
           (64, 64), "dataparallel_model_state_dict", "ConvNeXt encoder (LayerNorm, GELU), GroupNorm"),
    ZooNet("smp_deeplabv3plus", SMP + "DeepLabV3Plus",
           {"encoder_name": "tu-test_resnet", "decoder_channels": 16, **SMP_COMMON},
           (64, 64), "state_dict", "dilated encoder, ASPP with separable convolutions"),
    ZooNet("smp_manet", SMP + "MAnet",
           {"encoder_name": "tu-test_efficientnet", "decoder_channels": [16, 8, 8, 8, 8],
            "decoder_pab_channels": 8, **SMP_COMMON},
           (64, 64), "bare", "position and multi-scale attention blocks"),
    ZooNet("smp_linknet", SMP + "Linknet", {"encoder_name": "tu-test_resnet", **SMP_COMMON},
           (64, 64), "pickle", "a whole pickled model (trusted: true)"),
    ZooNet("smp_pan", SMP + "PAN", {"encoder_name": "tu-test_resnet", "decoder_channels": 8, **SMP_COMMON},
           (128, 128), "model", "feature pyramid attention (needs 128 px)"),
    ZooNet("smp_segformer", SMP + "Segformer",
           {"encoder_name": "mit_b0", "decoder_segmentation_channels": 16, **SMP_COMMON},
           (64, 64), "state_dict", "Mix Transformer encoder (efficient attention)"),
)


def import_class(path: str) -> type:
    module, _, name = path.rpartition(".")
    return getattr(importlib.import_module(module), name)


def build(net: ZooNet, seed: int = 0) -> torch.nn.Module:
    """The network with seeded weights, made to look trained: every tensor that initialisation
    leaves constant (norm scales and shifts, BatchNorm statistics, PReLU slopes) gets distinct
    values, so that each tensor of the checkpoint is told apart by its values."""
    torch.manual_seed(seed)
    network = import_class(net.cls)(**net.init_kwargs)
    generator = torch.Generator().manual_seed(seed + 1)
    with torch.no_grad():
        for name, tensor in network.state_dict().items():
            if not tensor.is_floating_point() or tensor.numel() == 0:
                continue
            if tensor.numel() == 1 or bool((tensor == tensor.flatten()[0]).all()):
                noise = torch.rand(tensor.shape, generator=generator)
                if name.endswith("running_var"):
                    tensor.copy_(0.5 + 1.5 * noise)
                else:
                    tensor.add_(0.4 * noise - 0.2)
    return network.eval()


def _lightning(state: dict[str, torch.Tensor]) -> dict[str, Any]:
    return {"state_dict": {f"model.{k}": v for k, v in state.items()}, "epoch": 12, "global_step": 3400,
            "pytorch-lightning_version": "2.5.0", "optimizer_states": [], "lr_schedulers": []}


SAVERS = {
    "bare": lambda net: net.state_dict(),
    "dataparallel": lambda net: {f"module.{k}": v for k, v in net.state_dict().items()},
    "compiled": lambda net: {f"_orig_mod.{k}": v for k, v in net.state_dict().items()},
    "state_dict": lambda net: {"state_dict": net.state_dict(), "epoch": 40},
    "model_state_dict": lambda net: {"model_state_dict": net.state_dict(), "epoch": 300},
    "dataparallel_model_state_dict": lambda net: {
        "model_state_dict": {f"module.{k}": v for k, v in net.state_dict().items()},
        "optimizer_state_dict": {"state": {}, "param_groups": [{"lr": 1e-3, "params": [0, 1]}]},
        "epoch": 80, "best_dice": np.float64(0.91)},
    "model": lambda net: {"model": net.state_dict(), "epoch": 5},
    "monai_checkpoint_saver": lambda net: {"net": net.state_dict(),
                                           "opt": {"state": {}, "param_groups": [{"lr": 1e-4, "params": [0]}]}},
    "lightning": lambda net: _lightning(net.state_dict()),
}
FORMATS = {"torchscript": "torchscript", "pickle": "pickle"}


def save_checkpoint(net: ZooNet, network: torch.nn.Module, path: Path) -> Path:
    """Write ``network`` to ``path`` as :attr:`ZooNet.saved_as` says."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if net.saved_as == "torchscript":
        torch.jit.trace(network, torch.zeros(1, 1, *net.example_size), check_trace=False).save(str(path))
    elif net.saved_as == "pickle":
        torch.save(network, path)
    else:
        torch.save(SAVERS[net.saved_as](network), path)
    return path


def model_entry(net: ZooNet, checkpoint: Path, calibration: Path, heldout: Path) -> dict[str, Any]:
    """The ``models:`` entry a user writes for it: class, init kwargs, channels, example size and
    patches; no spatial multiple, no output choice (nnbridge finds them)."""
    entry: dict[str, Any] = {"kind": "pytorch", "name": net.name, "dataset": "zoo",
                             "checkpoint": str(checkpoint), "input_channels": 1,
                             "example_size": list(net.example_size),
                             "patches": {"calibration": str(calibration), "heldout": str(heldout)},
                             **net.entry}
    if net.saved_as in FORMATS:
        entry["format"] = FORMATS[net.saved_as]
        entry["trusted"] = net.saved_as == "pickle" or None
    if net.saved_as != "torchscript":
        entry.update({"class": net.cls, "init_kwargs": net.init_kwargs})
    return {k: v for k, v in entry.items() if v is not None}


def synthetic_patches(n: int, size: tuple[int, ...], seed: int) -> np.ndarray:
    """(n, 1, *size) float32 images: a few bright smooth blobs on a noisy background, normalised."""
    rng = np.random.default_rng(seed)
    grids = np.meshgrid(*[np.linspace(-1, 1, s) for s in size], indexing="ij")
    out = np.empty((n, 1, *size), np.float32)
    for i in range(n):
        image = 0.3 * rng.standard_normal(size)
        for _ in range(3):
            centre = rng.uniform(-0.6, 0.6, len(size))
            radius = rng.uniform(0.15, 0.4)
            dist = sum((g - c) ** 2 for g, c in zip(grids, centre))
            image += np.exp(-dist / (2 * radius ** 2)) * rng.uniform(1, 2)
        out[i, 0] = (image - image.mean()) / image.std()
    return out


# the pipeline's settings for the zoo: config/config.yaml's, with the accuracy-aware loop held to
# one round at a lower target and few patches, so the matrix stays fast (the networks are trained
# a dozen steps on synthetic blobs; their INT8 label maps are not those of converged networks)
ZOO_CONFIG: dict[str, Any] = {
    "export": {"opset": 17, "torchscript": True, "fold_batchnorm": False},
    "simplify": {"atol": 1e-4},
    "quantize": {
        "int8_static": {"method": "static", "format": "QDQ", "per_channel": True,
                        "calibrate_method": "MinMax", "symmetric_activations": False},
        "int8_accurate": {"method": "static", "symmetric_activations": True,
                          "accuracy_aware": {"min_dice": 0.995, "max_steps": 1, "exclude_per_step": 1,
                                             "candidates": 3, "patches": 4}},
    },
    "backends": ["onnxruntime", "openvino"],
    "validate": {
        "default_tolerance": {"min_dice": 0.99},
        "tolerances": {
            "torchscript": {"max_abs_err": 1e-4, "min_dice": 0.999},
            "onnx_fp32": {"max_rel_err": 1e-4, "mean_abs_err": 1e-4, "min_dice": 0.999},
            "onnx_simplified": {"max_rel_err": 1e-4, "mean_abs_err": 1e-4, "min_dice": 0.999},
            "int8_static": {"min_dice": 0.99},
            "int8_accurate": {"min_dice": 0.99},
        },
    },
}
N_CALIBRATION, N_HELDOUT = 4, 2
STAGES = ("load", "export_onnx", "export_torchscript", "simplify", "int8_static", "int8_accurate", "validate")


TRAIN_STEPS = 8


def train_briefly(network: torch.nn.Module, images: np.ndarray, steps: int = TRAIN_STEPS,
                  seed: int = 0) -> float:
    """A few Adam steps segmenting the patches' bright blobs (label: image > 1), so the network
    gives label maps with regions, as a trained one does (a random network's are noise, on which
    any INT8 error flips voxels); returns the last loss."""
    torch.manual_seed(seed)
    x = torch.from_numpy(images)
    target = (x[:, 0] > 1.0).long()
    network.train()
    optimizer = torch.optim.Adam(network.parameters(), lr=3e-3)
    loss = torch.zeros(())
    for _ in range(steps):
        out = network(x)
        if isinstance(out, torch.Tensor) and out.dim() == x.dim() + 1:
            out = out.unbind(1)  # DynUNet in training: its heads stacked on axis 1
        outs = [o for o in ([out] if isinstance(out, torch.Tensor) else list(out))
                if isinstance(o, torch.Tensor) and o.shape[2:] == x.shape[2:]]
        loss = sum(torch.nn.functional.cross_entropy(o, target) for o in outs) / len(outs)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
    return float(network.eval() and loss.detach())


def prepare(net: ZooNet, folder: Path, seed: int = 0, quantize: list[str] | None = None) -> dict[str, Any]:
    """Build, seed, train briefly and save the network, write its patches; the config entry for
    it (``quantize``: its `quantize:` list, default every variant of the config)."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    calibration, heldout = folder / "calibration.npy", folder / "heldout.npy"
    cal = synthetic_patches(N_CALIBRATION, net.example_size, seed)
    np.save(calibration, cal)
    np.save(heldout, synthetic_patches(N_HELDOUT, net.example_size, seed + 100))
    network = build(net, seed)
    train_briefly(network, cal, seed=seed)
    checkpoint = save_checkpoint(net, network.eval(),
                                 folder / ("model.ts" if net.saved_as == "torchscript" else "model.pth"))
    entry = model_entry(net, checkpoint, calibration, heldout)
    if quantize is not None:
        entry["quantize"] = list(quantize)
    return entry


def _cause(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0] if text else ''}"[:400]


def run_entry(entry: dict[str, Any], folder: Path, config: dict[str, Any] | None = None) -> dict[str, Any]:
    """One ``models:`` entry through the pipeline's stages, as the workflow runs them (its
    library calls, without snakemake): load → ONNX and TorchScript export with weight proofs →
    simplify → INT8 static and accuracy-aware (ONNX Runtime and OpenVINO) → parity of every
    variant on both runtimes against eager PyTorch. A stage that cannot work for the network is
    SKIPPED with its cause (one line), stages that need it are SKIPPED saying so, the others go
    on; a weight proof that fails is FAILED. Returns ``{stage: record}``."""
    config = config or ZOO_CONFIG
    folder = Path(folder)
    records: dict[str, Any] = {}
    state: dict[str, Any] = {}

    def stage(name: str, needs: tuple[str, ...], run: Any) -> None:
        missing = [n for n in needs if records.get(n, {}).get("status") != "ok"]
        if missing:
            records[name] = {"status": "SKIPPED", "cause": f"needs {missing[0]} ({records[missing[0]]['status']})"}
            return
        wall, cpu = time.perf_counter(), time.process_time()
        try:
            result = run()
            if name in record_files:  # where the pipeline writes it: later stages check sha256s against it
                write_json(folder / record_files[name], result)
            records[name] = {"status": "ok", **result}
        except Exception as exc:  # noqa: BLE001 - a stage that cannot work for this network: say why, go on
            failed = "weights NOT verified" in str(exc)
            records[name] = {"status": "FAILED" if failed else "SKIPPED", "cause": _cause(exc)}
        records[name]["stage_seconds"] = {"wall": round(time.perf_counter() - wall, 2),
                                          "cpu": round(time.process_time() - cpu, 2)}

    record_files = {"export_onnx": "export/export.json", "export_torchscript": "export/torchscript.json",
                    "simplify": "simplify/simplify.json",
                    **{name: f"quantize/{name}.json" for name in config["quantize"]}}
    model = next(iter(discover_models([entry], quantize_names=list(config["quantize"])).values()))
    source = model.source(model.folds[0])
    cal, held = np.load(entry["patches"]["calibration"]), np.load(entry["patches"]["heldout"])

    def load() -> dict[str, Any]:
        fold = load_model(source)
        state["fold"] = fold
        return {"weights": fold.weight_check.to_dict(), "weights_origin": fold.weights_origin,
                "output": fold.output, "spatial": fold.spatial}

    stage("load", (), load)

    def onnx_export() -> dict[str, Any]:
        return export_onnx(state["fold"], folder / "export" / "model.onnx", opset=config["export"]["opset"],
                           fold_batchnorm=config["export"].get("fold_batchnorm", False))

    stage("export_onnx", ("load",), onnx_export)
    stage("export_torchscript", ("load",),
          lambda: export_torchscript(state["fold"], folder / "export" / "model.ts"))
    stage("simplify", ("export_onnx",),
          lambda: simplify_onnx(folder / "export" / "model.onnx", folder / "simplify" / "model.onnx",
                                held[:2], atol=config["simplify"]["atol"],
                                export_record=records["export_onnx"]))
    for name, settings in config["quantize"].items():
        if model.quantize is not None and name not in model.quantize:
            continue  # not this model's (its entry's `quantize:` list)
        # an OpenVINO IR method writes quantize/<name>.xml (+ .bin), every other one <name>.onnx
        dst = Path(artifact_path(str(folder / "quantize" / name), method_kind((settings or {}).get("method"))))
        stage(name, ("simplify",),
              lambda settings=settings, dst=dst: quantize_variant(
                  folder / "simplify" / "model.onnx", dst, cal, settings,
                  threads=2, backends=tuple(config["backends"])))

    def validate() -> dict[str, Any]:
        key = FoldKey(model.dataset, model.name, model.folds[0])
        variants = fold_variants(str(folder.parent), key, config, model.quantize)
        base = key.dir(str(folder.parent))
        for variant in variants.values():  # the artifacts and their records are in this folder
            variant["path"] = str(folder / Path(variant["path"]).relative_to(base))
            variant["record"] = str(folder / Path(variant["record"]).relative_to(base))
        ready = {n: v for n, v in variants.items() if records.get(_stage_of(n), {}).get("status") == "ok"}
        not_run = {n: records[_stage_of(n)] for n in variants if n not in ready}
        tolerances = {n: variant_tolerance(n, config["validate"]) for n in ready}
        record = validate_source(source, held, ready, tolerances, threads=2)
        for name, why in not_run.items():
            record["variants"][name] = {"passed": False, "skipped": f"{_stage_of(name)} {why['status']}: {why.get('cause')}"}
        return record

    stage("validate", ("load",), validate)
    return records


def _stage_of(variant: str) -> str:
    """The stage that makes a variant's artifact."""
    base = variant.split("@", 1)[0]
    return {"torchscript": "export_torchscript", "onnx_fp32": "export_onnx",
            "onnx_simplified": "simplify"}.get(base, base)


def measure_speed(entry: dict[str, Any], records: dict[str, Any], folder: Path, *, threads: int = 2,
                  warmup: int = 3, repeats: int = 20) -> dict[str, Any]:
    """Latency of torch eager and of every variant the run produced, each in its own process
    (:func:`nnbridge.bench.measure.benchmark_variants`), batch 1 at the example size; speed-ups
    against torch eager."""
    folder = Path(folder)
    source = next(iter(discover_models([entry], quantize_names=list(ZOO_CONFIG["quantize"])).values())).source("all")
    specs: dict[str, dict[str, Any]] = {"torch_eager": {"backend": "torch", "source": source}}
    for name, variant in records.get("validate", {}).get("variants", {}).items():
        if variant.get("skipped") or "path" not in variant:
            continue
        backend = variant["backend"] if variant["kind"] == "onnx" else "torchscript"
        specs[name] = {"backend": backend, "path": variant["path"], "profile": False}
    shape = (1, int(entry["input_channels"]), *entry["example_size"])
    return benchmark_variants(specs, shape, threads, warmup, repeats)
