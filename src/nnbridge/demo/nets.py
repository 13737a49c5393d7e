"""The demo's plain PyTorch models: a small U-Net and a UNet++, trained briefly on the demo data.

They stand in for the ``.pth`` files users bring from their own PyTorch code (the nnU-Net-free
path of nnbridge): the U-Net is saved the way DataParallel training scripts save checkpoints
(wrapped under ``model_state_dict`` with ``module.`` prefixes and an optimizer state beside it),
the UNet++ as a bare state dict. Architectures follow the common tutorials: U-Net (Ronneberger
et al.) with InstanceNorm, UNet++ (NestedUNet, Zhou et al.) with BatchNorm and dense nested skips.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from ..core.errors import NNBridgeError
from ..patches.sampling import open_dataset


def _conv(dim: int) -> type[nn.Module]:
    return nn.Conv3d if dim == 3 else nn.Conv2d


class ConvBlock(nn.Module):
    """Two 3×3(×3) convolutions, each followed by a normalization and a nonlinearity."""

    def __init__(self, dim: int, c_in: int, c_out: int, norm: str = "instance") -> None:
        super().__init__()
        conv = _conv(dim)
        if norm == "batch":
            norm_cls = nn.BatchNorm3d if dim == 3 else nn.BatchNorm2d
            norms = (norm_cls(c_out), norm_cls(c_out))
        else:
            norm_cls = nn.InstanceNorm3d if dim == 3 else nn.InstanceNorm2d
            norms = (norm_cls(c_out, affine=True), norm_cls(c_out, affine=True))
        self.block = nn.Sequential(
            conv(c_in, c_out, 3, padding=1), norms[0], nn.LeakyReLU(0.01, inplace=True),
            conv(c_out, c_out, 3, padding=1), norms[1], nn.LeakyReLU(0.01, inplace=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.block(x)


class UNet(nn.Module):
    """U-Net: an encoder of ``len(features)`` stages (2× pooling between them), a decoder with
    transposed convolutions and skip connections, a 1×1 head. Spatial sizes must be multiples
    of ``2 ** (len(features) - 1)``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2,
                 features: tuple[int, ...] | list[int] = (8, 16, 32), dim: int = 3) -> None:
        super().__init__()
        feats = list(features)
        pool = nn.MaxPool3d if dim == 3 else nn.MaxPool2d
        up = nn.ConvTranspose3d if dim == 3 else nn.ConvTranspose2d
        self.encoders = nn.ModuleList(
            ConvBlock(dim, c_in, c_out) for c_in, c_out in zip([in_channels, *feats[:-1]], feats)
        )
        self.pool = pool(2)
        self.ups = nn.ModuleList(up(feats[i + 1], feats[i], 2, stride=2) for i in reversed(range(len(feats) - 1)))
        self.decoders = nn.ModuleList(ConvBlock(dim, 2 * feats[i], feats[i]) for i in reversed(range(len(feats) - 1)))
        self.head = _conv(dim)(feats[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for i, encoder in enumerate(self.encoders):
            x = encoder(x if i == 0 else self.pool(x))
            skips.append(x)
        x = skips.pop()
        for up, decoder in zip(self.ups, self.decoders):
            x = decoder(torch.cat([skips.pop(), up(x)], dim=1))
        return self.head(x)


class NestedUNet(nn.Module):
    """UNet++ (NestedUNet): node X[i][j] takes X[i][0..j-1] and the upsampled X[i+1][j-1];
    BatchNorm blocks, bilinear/trilinear upsampling, one head on X[0][depth-1] (no deep
    supervision). Spatial sizes must be multiples of ``2 ** (len(features) - 1)``."""

    def __init__(self, in_channels: int = 1, num_classes: int = 2,
                 features: tuple[int, ...] | list[int] = (8, 16, 32), dim: int = 3) -> None:
        super().__init__()
        feats = list(features)
        self.depth = len(feats)
        self.pool = (nn.MaxPool3d if dim == 3 else nn.MaxPool2d)(2)
        self.up = nn.Upsample(scale_factor=2, mode="trilinear" if dim == 3 else "bilinear", align_corners=True)
        self.nodes = nn.ModuleDict()
        for j in range(self.depth):
            for i in range(self.depth - j):
                if j == 0:
                    c_in = in_channels if i == 0 else feats[i - 1]
                else:
                    c_in = feats[i] * j + feats[i + 1]
                self.nodes[f"x{i}_{j}"] = ConvBlock(dim, c_in, feats[i], norm="batch")
        self.head = _conv(dim)(feats[0], num_classes, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out: dict[tuple[int, int], torch.Tensor] = {}
        for i in range(self.depth):
            out[i, 0] = self.nodes[f"x{i}_0"](x if i == 0 else self.pool(out[i - 1, 0]))
        for j in range(1, self.depth):
            for i in range(self.depth - j):
                inputs = [out[i, k] for k in range(j)] + [self.up(out[i + 1, j - 1])]
                out[i, j] = self.nodes[f"x{i}_{j}"](torch.cat(inputs, dim=1))
        return self.head(out[0, self.depth - 1])


DEMO_NETS: dict[str, dict[str, Any]] = {
    "unet": {"class": "nnbridge.demo.nets.UNet", "save": "wrapped"},
    "unetpp": {"class": "nnbridge.demo.nets.NestedUNet", "save": "bare"},
}


def _random_crop(data: np.ndarray, seg: np.ndarray, patch: tuple[int, ...],
                 rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    spatial = np.array(data.shape[1:])
    pad = [(0, 0)] + [(0, max(0, p - s)) for p, s in zip(patch, spatial)]
    data, seg = np.pad(data, pad), np.pad(seg, pad)
    start = [int(rng.integers(0, s - p + 1)) for s, p in zip(data.shape[1:], patch)]
    window = tuple(slice(s, s + p) for s, p in zip(start, patch))
    return data[(slice(None), *window)], seg[(slice(None), *window)]


def train_demo_net(net: str, data_folder: Path, cases: list[str], out_path: Path, *,
                   num_classes: int, features: list[int], patch_size: tuple[int, ...] = (32, 32, 32),
                   steps: int = 100, batch_size: int = 2, seed: int = 0, threads: int = 2) -> dict[str, Any]:
    """Train ``net`` (``unet`` or ``unetpp``) for ``steps`` Adam steps on random ``patch_size``
    crops of the preprocessed ``cases`` (nnU-Net's preprocessed data, cross-entropy loss), then save it the way
    :data:`DEMO_NETS` says. Seeded; returns a summary with the loss curve's ends."""

    if net not in DEMO_NETS:
        raise NNBridgeError(f"demo net {net!r}: one of {sorted(DEMO_NETS)}")
    torch.manual_seed(seed)
    torch.set_num_threads(threads)
    rng = np.random.default_rng(seed)
    cls = UNet if net == "unet" else NestedUNet
    model = cls(in_channels=1, num_classes=num_classes, features=features, dim=len(patch_size))
    dataset = open_dataset(data_folder, cases)
    loaded = []
    for case in cases:
        data, seg, _prev, _props = dataset.load_case(case)
        loaded.append((np.asarray(data[:], dtype=np.float32), np.maximum(np.asarray(seg[:]), 0)))
    # oneDNN's NDHWC convolutions: steps 17-32 % faster (AMD Zen 4, 2026-12-04; nnBridgeDemoTrainer)
    if len(patch_size) == 3:
        model = model.to(memory_format=torch.channels_last_3d)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    weight = torch.ones(num_classes)
    losses = []
    start = time.perf_counter()
    model.train()
    for _step in range(steps):
        crops = [_random_crop(*loaded[int(rng.integers(len(loaded)))], patch_size, rng) for _ in range(batch_size)]
        x = torch.from_numpy(np.stack([c[0] for c in crops]))
        y = torch.from_numpy(np.stack([c[1][0] for c in crops]).astype(np.int64))
        loss = nn.functional.cross_entropy(model(x), y, weight=weight)
        optimizer.zero_grad()
        loss.backward()
        optimizer.step()
        losses.append(float(loss.detach()))
    model.eval()
    state = model.to(memory_format=torch.contiguous_format).state_dict()  # the layout checkpoints have
    out_path = Path(out_path)
    out_path.parent.mkdir(parents=True, exist_ok=True)
    if DEMO_NETS[net]["save"] == "wrapped":  # as a DataParallel training script saves it
        torch.save({"epoch": steps, "model_state_dict": {f"module.{k}": v for k, v in state.items()},
                    "optimizer_state_dict": optimizer.state_dict()}, out_path)
    else:
        torch.save(state, out_path)
    return {"net": net, "class": DEMO_NETS[net]["class"], "steps": steps, "cases": cases,
            "first_loss": losses[0], "last_loss": float(np.mean(losses[-10:])),
            "seconds": time.perf_counter() - start, "path": str(out_path)}
