"""Networks built from a JSON description (random weights): nnU-Net's PlainConvUNet for a typical
plan, or the network of any plans file, rebuilt identically in a benchmark's child process."""

from __future__ import annotations

import json
from math import prod
from pathlib import Path
from typing import Any

from ..core.errors import NNBridgeError
from ..core.plans import configuration as plans_configuration


# the keyword arguments of PlainConvUNet that the JSON description carries as they are
_PLAIN_KEYS = ("input_channels", "n_stages", "features_per_stage", "kernel_sizes", "strides",
               "n_conv_per_stage", "num_classes", "n_conv_per_stage_decoder", "conv_bias",
               "norm_op_kwargs", "dropout_op_kwargs", "nonlin_kwargs", "deep_supervision")


# torch.nn classes a description may name (conv_op, norm_op, dropout_op, nonlin)
_TORCH_OPS = frozenset({"Conv2d", "Conv3d", "InstanceNorm2d", "InstanceNorm3d", "BatchNorm2d",
                        "BatchNorm3d", "Dropout2d", "Dropout3d", "LeakyReLU", "ReLU"})


def plain_unet_arch(features: tuple[int, ...] | list[int] = (32, 64, 128, 256, 320, 320), *, dims: int = 3,
                    input_channels: int = 1, num_classes: int = 3, kernel: int = 3,
                    n_conv_per_stage: int = 2) -> dict[str, Any]:
    """JSON description of the ``PlainConvUNet`` nnU-Net builds for a plan with these features per
    stage: stride 1 then 2 per stage, conv bias, InstanceNorm (eps 1e-5, affine), LeakyReLU
    (in place), no dropout, deep supervision off."""
    n = len(features)
    if n < 2:
        raise NNBridgeError(f"a U-Net needs at least 2 stages; got features {tuple(features)}")
    return {
        "network_class": "PlainConvUNet",
        "input_channels": int(input_channels),
        "n_stages": n,
        "features_per_stage": [int(f) for f in features],
        "conv_op": f"Conv{dims}d",
        "kernel_sizes": [[int(kernel)] * dims for _ in range(n)],
        "strides": [[1] * dims] + [[2] * dims for _ in range(n - 1)],
        "n_conv_per_stage": [int(n_conv_per_stage)] * n,
        "num_classes": int(num_classes),
        "n_conv_per_stage_decoder": [int(n_conv_per_stage)] * (n - 1),
        "conv_bias": True,
        "norm_op": f"InstanceNorm{dims}d",
        "norm_op_kwargs": {"eps": 1e-5, "affine": True},
        "dropout_op": None,
        "dropout_op_kwargs": None,
        "nonlin": "LeakyReLU",
        "nonlin_kwargs": {"inplace": True},
        "deep_supervision": False,
    }


PLANS_NETWORK = "nnunet_plans"  # a description that carries a plans file's architecture as it is


def plans_arch(plans_file: Path, configuration: str = "3d_fullres", *, input_channels: int | None = None,
               num_classes: int | None = None) -> tuple[dict[str, Any], tuple[int, ...]]:
    """The architecture and patch size of one configuration of an nnU-Net plans file (any network
    class nnU-Net builds: PlainConvUNet, ResidualEncoderUNet, …; ``inherits_from`` resolved).
    Input channels and classes come from the ``dataset.json`` beside the plans file when not
    given, else 1 and 3."""

    plans_file = Path(plans_file)
    try:
        plans = json.loads(plans_file.read_text())
    except (OSError, ValueError) as err:
        raise NNBridgeError(f"{plans_file}: cannot read the plans file ({err}); set "
                            "benchmark.realistic.plans to an nnU-Net plans .json") from err
    try:
        cfg = plans_configuration(plans, configuration)
    except NNBridgeError as err:
        raise NNBridgeError(f"{plans_file}: {err}") from err
    arch = cfg.get("architecture")
    if not arch or "network_class_name" not in arch:
        raise NNBridgeError(f"{plans_file}: configuration {configuration!r} has no 'architecture' block; "
                            "use a plans file written by nnU-Net v2.4 or later")
    dataset_file = plans_file.parent / "dataset.json"
    if dataset_file.is_file() and (input_channels is None or num_classes is None):
        dataset = json.loads(dataset_file.read_text())
        channels = dataset.get("channel_names") or dataset.get("modality") or {"0": "image"}
        input_channels = input_channels or len(channels)
        num_classes = num_classes or len(dataset.get("labels", {}) or {"0": 0, "1": 1, "2": 2})
    kwargs = arch["arch_kwargs"]
    description = {
        "network_class": PLANS_NETWORK, "arch_class_name": arch["network_class_name"],
        "arch_kwargs": kwargs, "arch_kwargs_req_import": list(arch.get("_kw_requires_import", [])),
        "input_channels": int(input_channels or 1), "num_classes": int(num_classes or 3),
        "strides": kwargs["strides"], "features_per_stage": kwargs.get("features_per_stage"),
        "source": f"{plans_file} ({configuration})",
    }
    return description, tuple(int(v) for v in cfg["patch_size"])


def _torch_op(name: str | None):
    """The ``torch.nn`` class a description names (``None`` stays ``None``)."""
    import torch  # noqa: PLC0415

    if name is None:
        return None
    if name not in _TORCH_OPS:
        raise NNBridgeError(f"operator {name!r} is not supported in an architecture description; "
                            f"use one of {sorted(_TORCH_OPS)}")
    return getattr(torch.nn, name)


def build_network(arch: dict[str, Any], seed: int = 0):
    """The ``PlainConvUNet`` of ``arch`` (see :func:`plain_unet_arch`) in eval mode, with weights
    initialised as nnU-Net does (He, ``neg_slope`` 1e-2) from ``seed``; the global torch RNG is
    left untouched."""
    import torch  # noqa: PLC0415
    from dynamic_network_architectures.architectures.unet import PlainConvUNet  # noqa: PLC0415

    if arch.get("network_class") == PLANS_NETWORK:
        from nnunetv2.utilities.get_network_from_plans import get_network_from_plans  # noqa: PLC0415

        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(int(seed))
            network = get_network_from_plans(arch["arch_class_name"], arch["arch_kwargs"],
                                             arch["arch_kwargs_req_import"], arch["input_channels"],
                                             arch["num_classes"], allow_init=True, deep_supervision=False)
        return network.eval()
    if arch.get("network_class", "PlainConvUNet") != "PlainConvUNet":
        raise NNBridgeError(f"network_class {arch.get('network_class')!r} unknown; "
                            "only PlainConvUNet is built")
    kwargs = {key: arch[key] for key in _PLAIN_KEYS}
    kwargs.update({key: _torch_op(arch.get(key)) for key in ("conv_op", "norm_op", "dropout_op", "nonlin")})
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(int(seed))
        network = PlainConvUNet(**kwargs)
        if hasattr(network, "initialize"):
            network.apply(network.initialize)
    return network.eval()


def stride_multiple(arch: dict[str, Any]) -> tuple[int, ...]:
    """Total stride per axis: every spatial size must be a multiple of it."""
    return tuple(int(prod(axis)) for axis in zip(*arch["strides"]))


def check_patch(arch: dict[str, Any], patch_size: tuple[int, ...]) -> None:
    """Refuse a patch of the wrong rank or one the network's total stride does not divide."""
    multiple = stride_multiple(arch)
    if len(patch_size) != len(multiple):
        raise NNBridgeError(f"patch size {tuple(patch_size)} has {len(patch_size)} axes; the network "
                            f"has {len(multiple)} spatial axes")
    bad = [(s, m) for s, m in zip(patch_size, multiple) if s <= 0 or s % m]
    if bad:
        raise NNBridgeError(
            f"patch size {tuple(patch_size)} is not a multiple of the network's total stride "
            f"{multiple}; use sizes divisible by {multiple} per axis (e.g. "
            f"{tuple(max(m, s // m * m) for s, m in zip(patch_size, multiple))})")


def analytic_flops(arch: dict[str, Any], patch_size: tuple[int, ...]) -> int | None:
    """FLOPs of one patch counted from the description alone (a multiply-add = 2, bias ignored,
    as :func:`nnbridge.coverage.compute_node_flops` counts them): encoder convs, decoder
    transposed convs and convs, and the one segmentation head deep supervision off leaves.
    ``None`` for an architecture from a plans file (its graph is counted instead)."""
    if arch.get("network_class") == PLANS_NETWORK:
        return None
    feats, kernels, strides = arch["features_per_stage"], arch["kernel_sizes"], arch["strides"]
    n = arch["n_stages"]
    spatial, channels_in, voxels, flops = list(patch_size), arch["input_channels"], [], 0
    for s in range(n):
        spatial = [size // stride for size, stride in zip(spatial, strides[s])]
        voxels.append(prod(spatial))
        for i in range(arch["n_conv_per_stage"][s]):
            flops += 2 * voxels[s] * feats[s] * (channels_in if i == 0 else feats[s]) * prod(kernels[s])
        channels_in = feats[s]
    for s in range(n - 2, -1, -1):  # decoder, deepest first; the skip doubles the first conv's input
        flops += 2 * voxels[s + 1] * feats[s + 1] * feats[s] * prod(strides[s + 1])
        for i in range(arch["n_conv_per_stage_decoder"][n - 2 - s]):
            flops += 2 * voxels[s] * feats[s] * (2 * feats[s] if i == 0 else feats[s]) * prod(kernels[s])
    return int(flops + 2 * voxels[0] * arch["num_classes"] * feats[0])


def _smaller_shape(arch: dict[str, Any], patch_size: tuple[int, ...], limit: int) -> tuple[int, ...]:
    """Per axis the patch size, capped at the largest multiple of the total stride ≤ ``limit``."""
    return tuple(s if s <= limit else max(m, limit // m * m)
                 for s, m in zip(patch_size, stride_multiple(arch)))
