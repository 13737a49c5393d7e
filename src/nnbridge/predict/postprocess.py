"""From aggregated logits to the segmentation in the input's geometry, without torch.

Reproduces ``convert_predicted_logits_to_segmentation_with_correct_shape`` (nnunetv2 2.x):
resample the logits back to the cropped shape, argmax (labels) or sigmoid > 0.5 in
``regions_class_order`` (regions), put the crop back into the uncropped volume, transpose back;
optionally the probabilities, with background 1 outside the crop for label models.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import numpy as np

from ..core.metadata import is_region_based
from .preprocess import configuration, insert_crop_into_image, resampling_function


@dataclass(frozen=True)
class Labels:
    """What nnU-Net's ``LabelManager`` derives from ``dataset.json``."""

    all_labels: tuple[int, ...]
    has_regions: bool
    regions_class_order: tuple[int, ...] | None
    num_heads: int

    @classmethod
    def from_dataset_json(cls, dataset_json: dict[str, Any]) -> Labels:
        labels = dataset_json["labels"]
        has_regions = is_region_based(labels)
        values: set[int] = set()
        for name, value in labels.items():
            if name == "ignore":
                continue
            values.update(int(v) for v in (value if isinstance(value, (list, tuple)) else [value]))
        all_labels = tuple(sorted(values))
        order = dataset_json.get("regions_class_order") if has_regions else None
        num_regions = sum(1 for k, v in labels.items() if k not in ("background", "ignore") and v != 0)
        return cls(
            all_labels=all_labels,
            has_regions=has_regions,
            regions_class_order=tuple(int(c) for c in order) if order is not None else None,
            num_heads=num_regions if has_regions else len(all_labels),
        )

    @property
    def foreground_labels(self) -> tuple[int, ...]:
        return tuple(label for label in self.all_labels if label != 0)

    def nonlin(self, logits: np.ndarray) -> np.ndarray:
        """Sigmoid (regions) or softmax over channels, in float32."""
        logits = logits.astype(np.float32)
        if self.has_regions:
            return 1.0 / (1.0 + np.exp(-logits))
        shifted = np.exp(logits - logits.max(axis=0, keepdims=True))
        return shifted / shifted.sum(axis=0, keepdims=True)

    def probabilities_to_segmentation(self, probabilities: np.ndarray) -> np.ndarray:
        if self.has_regions:
            seg = np.zeros(probabilities.shape[1:], dtype=np.uint16)
            for i, c in enumerate(self.regions_class_order or ()):
                seg[probabilities[i] > 0.5] = c
            return seg
        return probabilities.argmax(0)

    def logits_to_segmentation(self, logits: np.ndarray) -> np.ndarray:
        return self.probabilities_to_segmentation(self.nonlin(logits) if self.has_regions else logits)


def resample_logits_back(logits: np.ndarray, properties: dict, plans: dict, configuration_name: str) -> np.ndarray:
    """Logits in the preprocessed grid → the cropped grid of the input (before resampling)."""
    config = configuration(plans, configuration_name)
    spacing_t = [properties["spacing"][i] for i in plans["transpose_forward"]]
    shape = properties["shape_after_cropping_and_before_resampling"]
    current = config["spacing"] if len(config["spacing"]) == len(shape) else [spacing_t[0], *config["spacing"]]
    return resampling_function(config, "probabilities")(logits, shape, current, spacing_t)


def logits_to_segmentation(
    logits: np.ndarray,
    properties: dict,
    plans: dict,
    configuration_name: str,
    dataset_json: dict[str, Any],
    return_probabilities: bool = False,
) -> np.ndarray | tuple[np.ndarray, np.ndarray]:
    """Segmentation (and probabilities, C first) in the geometry the case was read in."""
    labels = Labels.from_dataset_json(dataset_json)
    logits = resample_logits_back(logits, properties, plans, configuration_name)
    probabilities = None
    if return_probabilities:
        probabilities = labels.nonlin(logits)
        seg = labels.probabilities_to_segmentation(probabilities)
    else:
        seg = labels.logits_to_segmentation(logits)
    del logits
    dtype = np.uint8 if len(labels.foreground_labels) < 255 else np.uint16
    full = np.zeros(properties["shape_before_cropping"], dtype=dtype)
    full = insert_crop_into_image(full, seg, properties["bbox_used_for_cropping"])
    backward = list(plans["transpose_backward"])
    full = full.transpose(backward)
    if probabilities is None:
        return full
    reverted = np.zeros((probabilities.shape[0], *properties["shape_before_cropping"]), dtype=probabilities.dtype)
    if not labels.has_regions:
        reverted[0] = 1
    reverted = insert_crop_into_image(reverted, probabilities, properties["bbox_used_for_cropping"])
    return full, reverted.transpose([0] + [i + 1 for i in backward])
