"""Ensembles of configurations (``nnbridge predict -m bundleA bundleB``), like ``nnUNetv2_ensemble``.

nnU-Net's way: each configuration predicts the case with ``--save_probabilities`` (probabilities
in the input's geometry, float32, background 1 outside the crop), ``nnUNetv2_ensemble`` averages
them in float32 in the order of its input folders (``average_probabilities``), takes the argmax
(or the regions over 0.5) of the average, and ``nnUNetv2_apply_postprocessing`` applies the
postprocessing ``nnUNetv2_find_best_configuration`` chose for that ensemble. Here each member is a
:class:`~.predictor.Predictor` (a cascade member runs its previous stage itself), none
postprocesses alone, and the ensemble's postprocessing is the one a member's bundle records for
exactly these models (``ensembles`` in its manifest).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NNBridgeError
from .components import Step, apply_postprocessing, describe
from .postprocess import Labels
from .predictor import CaseResult, Predictor, predict_folder


@dataclass
class EnsemblePredictor:
    """Several bundles' predictors (their own postprocessing off), one segmentation per case."""

    members: list[Predictor]
    postprocessing: bool = True
    postprocessing_steps: list[Step] | None = None  # explicit steps (--postprocessing FILE)
    steps: list[Step] = field(default_factory=list, init=False)
    postprocessing_source: str = field(default="", init=False)

    def __post_init__(self) -> None:
        if len(self.members) < 2:
            raise NNBridgeError("an ensemble needs two or more bundles")
        first = self.members[0].bundle
        for member in self.members[1:]:
            other = member.bundle
            for key in ("labels", "file_ending", "channel_names"):
                if first.dataset_json.get(key) != other.dataset_json.get(key):
                    raise NNBridgeError(
                        f"{other.root}: its dataset.json {key} differs from that of {first.root}; only models of "
                        "the same dataset (same labels, channels and file ending) can be ensembled"
                    )
            if first.dataset_json.get("regions_class_order") != other.dataset_json.get("regions_class_order"):
                raise NNBridgeError(f"{other.root}: regions_class_order differs from that of {first.root}; "
                                    "only models of the same dataset can be ensembled")
        models = [m.bundle.model or str(Path(m.bundle.root).resolve()) for m in self.members]
        if len(set(models)) < len(models):
            raise NNBridgeError(f"the bundles {', '.join(str(m.bundle.root) for m in self.members)} hold the same "
                                f"model twice ({models}); ensemble different configurations")
        self.labels = Labels.from_dataset_json(first.dataset_json)
        if self.postprocessing_steps is not None:
            self.steps, self.postprocessing_source = list(self.postprocessing_steps), "--postprocessing"
        elif not self.postprocessing:
            self.postprocessing_source = "off"
        else:
            folds = sorted({f for m in self.members for f in (m.folds or m.bundle.folds)})
            for member in self.members:
                recorded = member.bundle.ensemble_postprocessing(models, folds)
                if recorded:
                    self.steps, self.postprocessing_source = recorded
                    break
            else:
                self.postprocessing_source = (f"no bundle records postprocessing for the ensemble of "
                                              f"{' and '.join(models)}")

    @property
    def file_ending(self) -> str:
        return self.members[0].file_ending

    def cases(self, input_dir: Path) -> dict[str, list[Path]]:
        return self.members[0].cases(input_dir)

    def announce(self) -> list[str]:
        lines = []
        for i, member in enumerate(self.members, 1):
            lines += [f"member {i}/{len(self.members)} ({member.bundle.model or member.bundle.root}): {line}"
                      for line in member.announce()[:-1]]  # without its own postprocessing line
        if self.steps:
            pp = f"postprocessing: {describe(self.steps)} (from {self.postprocessing_source})"
        else:
            pp = f"postprocessing: none ({self.postprocessing_source})"
        return [*lines, f"ensemble of {len(self.members)} configurations, probabilities averaged; {pp}"]

    def predict_case(self, case: str, files: Sequence[Path], *, save_probabilities: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> CaseResult:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        read: dict[str, tuple[np.ndarray, dict]] = {}
        properties: dict[str, Any] | None = None
        total: np.ndarray | None = None
        for i, member in enumerate(self.members):
            reader = member.bundle.plans.get("image_reader_writer", "SimpleITKIO")
            if reader not in read:  # the same reader reads the same files once
                start = time.perf_counter()
                read[reader] = member.read(files)  # refused in one line when truncated, corrupt or non-finite
                timings["read"] = timings.get("read", 0.0) + time.perf_counter() - start
            data, props = read[reader]
            result = member.predict_arrays(case, data, props, save_probabilities=True, postprocess=False,
                                           progress=progress)
            if properties is None:  # nnU-Net writes with the first member's properties
                properties = result.properties
            probabilities = result.probabilities.astype(np.float32, copy=False)
            if total is None:
                total = probabilities.copy()
            else:
                if total.shape != probabilities.shape:
                    raise NNBridgeError(f"{case}: member {i + 1} gives probabilities of shape {probabilities.shape}, "
                                        f"member 1 {total.shape}")
                total += probabilities
        total /= len(self.members)
        timings["members"] = time.perf_counter() - t - timings.get("read", 0.0)
        t = time.perf_counter()
        seg = self.labels.probabilities_to_segmentation(total)
        seg = seg.astype(np.uint8 if len(self.labels.foreground_labels) < 255 else np.uint16)
        timings["average"] = time.perf_counter() - t
        if self.steps:
            t = time.perf_counter()
            seg = apply_postprocessing(seg, self.steps)
            timings["postprocess"] = time.perf_counter() - t
        return CaseResult(case, seg, properties or {}, timings, total if save_probabilities else None)

    def write_case(self, result: CaseResult, output_dir: Path) -> Path:
        """Written like a single model's case (temporary names, renamed when complete), with the
        first member's writer, as nnU-Net writes an ensemble."""
        return self.members[0].write_case(result, output_dir)

    def case_done(self, case: str, output_dir: Path, save_probabilities: bool) -> bool:
        return self.members[0].case_done(case, output_dir, save_probabilities)

    def output_files(self, case: str, output_dir: Path, save_probabilities: bool) -> list[Path]:
        return self.members[0].output_files(case, output_dir, save_probabilities)

    def predict_folder(self, input_dir: Path, output_dir: Path, *, save_probabilities: bool = False,
                       overwrite: bool = True, verbose: bool = True,
                       part: tuple[int, int] = (0, 1)) -> list[dict[str, Any]]:
        return predict_folder(self, input_dir, output_dir, save_probabilities=save_probabilities,
                              overwrite=overwrite, verbose=verbose, part=part)
