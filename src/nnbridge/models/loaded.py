"""The loaded model every stage works on, whatever its source."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from ..core.metadata import label_names
from .checkpoint import WeightCheck


@dataclass
class LoadedFold:
    """A trained network ready for export: an nnU-Net fold or a plain PyTorch model."""

    model_folder: Path
    fold: str
    checkpoint_path: Path
    checkpoint_sha256: str
    network: torch.nn.Module
    plans: dict[str, Any] | None
    dataset_json: dict[str, Any] | None
    configuration: str | None
    trainer_name: str
    patch_size: tuple[int, ...]
    num_input_channels: int
    num_outputs: int
    mirror_axes: tuple[int, ...]
    stride_multiple: tuple[int, ...]
    region_based: bool
    weights: dict[str, torch.Tensor]
    weight_check: WeightCheck
    kind: str = "nnunet"
    dynamic_axes: tuple[str, ...] = ("batch", "spatial")
    labels: dict[str, Any] | None = None
    """Label name → class index (or region list) for plain models; nnU-Net's come from dataset.json."""
    source: dict[str, Any] = field(default_factory=dict)
    """How the model was loaded (the config entry), stored in the artifacts' metadata."""
    weights_origin: str = "nnU-Net checkpoint (network_weights)"
    """Where in the checkpoint the weights were found (after removing prefixes)."""
    weights_prefix: str = ""
    """Prefix of the checkpoint's keys in ``network``'s state dict (``network.`` when an
    :class:`nnbridge.models.plain.OutputSelector` picks the logits from several outputs)."""
    output: dict[str, Any] | None = None
    """What the network's forward returns and which output is the logits (plain models)."""
    spatial: dict[str, Any] | None = None
    """How the spatial multiple was found (given or probed) and why sizes are fixed, if they are."""
    previous_stage: str | None = None
    """Cascade stage (e.g. ``3d_cascade_fullres``): the configuration whose segmentation it takes."""
    previous_stage_labels: tuple[int, ...] = ()
    """Cascade stage: the labels of its one-hot input channels, in order after the image channels
    (nnU-Net's foreground labels; ``determine_num_input_channels``)."""
    trainer_note: str | None = None
    """Set when the checkpoint's trainer class is not installed and the network was built the way
    nnU-Net's default trainer builds it (the strict load and weight proof vouch for it)."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        """Batch-1 input shape of one training patch."""
        return (1, self.num_input_channels, *self.patch_size)

    @property
    def num_image_channels(self) -> int:
        """Input channels that are image channels (all but a cascade stage's one-hot ones)."""
        return self.num_input_channels - len(self.previous_stage_labels)

    @property
    def label_names(self) -> dict[int, str]:
        """Class index → label name; for region-based models, output channel → region name."""
        labels = self.dataset_json["labels"] if self.dataset_json is not None else self.labels
        return label_names(labels, self.region_based)
