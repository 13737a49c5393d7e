"""``nnbridge predict``: nnU-Net's inference on a bundle, with ONNX Runtime or OpenVINO, no torch.

read → preprocess (transpose, crop, normalize, resample) → sliding window over every fold with
mirroring → average logits → resample back, argmax/regions, un-crop, transpose back → write.
Each stage is timed per case.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.errors import NNBridgeError
from ..runtime import ONNX_BACKENDS, make_runner
from .bundle import Bundle, refuse_cascade
from .io import find_cases, num_channels, reader_writer
from .postprocess import Labels, logits_to_segmentation
from .preprocess import configuration, preprocess_case
from .sliding import Network, ensemble_logits
from .verify import ensure_verified, failures_here, refusal

BACKENDS = ONNX_BACKENDS


def openvino_only(entry: dict[str, Any]) -> bool:
    """Whether a bundle variant runs on OpenVINO only: an OpenVINO IR, or a bf16 variant."""
    return entry.get("kind") == "ir" or entry.get("inference_precision") == "bf16"


def onnx_network(path: Path, backend: str, threads: int = 0, settings: dict | None = None) -> Network:
    """A batch → logits callable of an ONNX file on ONNX Runtime (with the tuned ``settings``:
    session options and IO binding), or of an ONNX file or OpenVINO IR on OpenVINO (CPU, fp32 kept
    exact; a bf16 variant in bf16, or in fp32 with a note on a CPU without native bf16). Its
    ``precision`` attribute is what it computes in."""
    if backend not in BACKENDS:
        raise NNBridgeError(f"unknown backend {backend!r}; use one of {BACKENDS}")
    return make_runner({"backend": backend, "path": path, "settings": settings, "fallback": True}, threads)


def choose_run_settings(entry: dict[str, Any], backend: str, threads: int | None,
                        batch_size: int | None) -> dict[str, Any]:
    """Threads and batch size for a bundle variant on ``backend``: the explicit values if given,
    else the bundle's record (:func:`.bundle.run_settings`; threads capped at this machine's CPU
    count), else the runtime's default threads (0) and batch 1; ``why`` says which for each."""
    recorded = (entry.get("run_settings") or {}).get(backend) or {}
    reasons = recorded.get("from") or {}
    no_record = "no choice recorded in the bundle"
    if threads is not None:
        threads_why = "--threads"
    elif recorded.get("threads"):
        threads, threads_why = int(recorded["threads"]), reasons.get("threads", "the bundle")
        cpus = os.cpu_count() or 1
        if threads > cpus:
            threads, threads_why = cpus, f"{threads_why}; {threads} capped at this machine's {cpus} CPUs"
    else:
        threads, threads_why = 0, reasons.get("threads", f"default: {no_record}")
    if batch_size is not None:
        batch_why = "--batch-size"
    else:
        batch_size = int(recorded.get("batch_size") or 1)
        batch_why = reasons.get("batch_size", f"default: {no_record}")
    if threads < 0 or batch_size < 1:
        raise NNBridgeError(f"--threads {threads} / --batch-size {batch_size}: threads must be >= 0 "
                            "(0: the runtime's choice) and the batch size >= 1")
    return {"threads": threads, "batch_size": batch_size, "why": {"threads": threads_why, "batch_size": batch_why}}


@dataclass
class CaseResult:
    case: str
    segmentation: np.ndarray
    properties: dict[str, Any]
    timings_s: dict[str, float]
    probabilities: np.ndarray | None = None
    preprocessed: np.ndarray | None = None
    logits: np.ndarray | None = None


@dataclass
class Predictor:
    """Everything ``nnbridge predict`` needs, loaded once for many cases."""

    bundle: Bundle
    variant: str | None = None
    folds: Sequence[str] | None = None
    backend: str | None = None
    threads: int | None = None  # None: the bundle's choice for the runtime (see choose_run_settings)
    step: float = 0.5
    mirroring: bool = True
    batch_size: int | None = None  # None: likewise
    accumulate: str = "float16"
    allow_ungated: bool = False
    selfcheck: bool = True  # re-check the variant on a CPU kind the bundle has not seen (nnbridge verify)
    networks: list[Network] = field(default_factory=list, init=False)
    precision: str = field(default="f32", init=False)  # what the loaded networks compute in
    run_choice: dict[str, Any] = field(default_factory=dict, init=False)  # threads, batch size and why
    verification: dict[str, Any] | None = field(default=None, init=False)  # nnbridge verify's record here
    verification_path: Path | None = field(default=None, init=False)  # where it is cached

    def __post_init__(self) -> None:
        name, entry = self.bundle.variant(self.variant)
        self.variant = name
        gates = entry.get("gates", {})
        chosen = {str(f) for f in self.folds} if self.folds else set(gates)
        if self.selfcheck:  # on a CPU kind the bundle has not seen: its gates re-checked here, once
            self.verification, self.verification_path = ensure_verified(self.bundle, name, threads=self.threads or 0)
        if self.backend is None:
            self.backend = entry.get("backend") or ("openvino" if openvino_only(entry) else "onnxruntime")
            if failures_here(self.verification, name, self.backend, sorted(chosen)):
                # the bundle's choice fails on this CPU: the fastest runtime that passes here and where gated
                latency = entry.get("latency_ms") or {}
                others = sorted((b for b in BACKENDS if b != self.backend
                                 and all(gates.get(f, {}).get(b) for f in chosen)
                                 and not failures_here(self.verification, name, b, sorted(chosen))),
                                key=lambda b: latency.get(b, float("inf")))
                self.backend = others[0] if others else self.backend
        if entry.get("kind") == "ir" and self.backend != "openvino":
            raise NNBridgeError(f"{self.bundle.root}: variant {name!r} is an OpenVINO IR, it runs on OpenVINO only; "
                                "use --backend openvino or another --variant")
        if entry.get("inference_precision") == "bf16" and self.backend != "openvino":
            raise NNBridgeError(f"{self.bundle.root}: variant {name!r} runs in bf16, on OpenVINO only; use "
                                "--backend openvino or another --variant")
        failed = sorted(f for f, per in gates.items() if f in chosen and not per.get(self.backend, False))
        if failed and not self.allow_ungated:
            raise NNBridgeError(
                f"{self.bundle.root}: variant {name!r} on {self.backend} failed its parity gate on fold(s) "
                f"{failed}; choose another --variant/--backend, or pass --allow-ungated to use it anyway"
            )
        here = failures_here(self.verification, name, self.backend, sorted(chosen))
        if here and not self.allow_ungated:
            raise NNBridgeError(refusal(self.bundle, self.verification or {}, self.verification_path, name,
                                        self.backend, here))
        self.run_choice = choose_run_settings(entry, self.backend, self.threads, self.batch_size)
        self.threads, self.batch_size = self.run_choice["threads"], self.run_choice["batch_size"]
        self.files = self.bundle.model_files(name, list(self.folds) if self.folds else None)
        self.config = configuration(self.bundle.plans, self.bundle.configuration)
        refuse_cascade(self.bundle.configuration, self.config.get("previous_stage"), self.bundle.root)
        self.labels = Labels.from_dataset_json(self.bundle.dataset_json)
        self.patch_size = [int(p) for p in self.config["patch_size"]]
        axes = self.bundle.manifest.get("mirror_axes")
        self.mirror_axes = [int(a) for a in axes] if (self.mirroring and axes) else None
        self.rw = reader_writer(self.bundle.plans.get("image_reader_writer", "SimpleITKIO"))

    def load(self) -> None:
        if not self.networks:
            _, entry = self.bundle.variant(self.variant)
            settings = entry.get("ort_settings") if self.backend == "onnxruntime" else None
            self.networks = [onnx_network(p, self.backend or "onnxruntime", self.threads or 0, settings)
                             for p in self.files]
            self.precision = getattr(self.networks[0], "precision", "f32")

    def describe_run(self) -> str:
        """One line: the runtime, threads, batch size and ONNX Runtime settings used, and why."""
        why = self.run_choice["why"]
        threads = f"{self.threads} thread{'s' * (self.threads > 1)}" if self.threads else "the runtime's threads"
        line = f"{self.variant} on {self.backend} with {threads}, batch {self.batch_size}"
        if self.networks and self.backend == "openvino":
            line += f", {self.precision} inference precision"
        if self.backend == "onnxruntime":
            settings = self.bundle.variant(self.variant)[1].get("ort_settings") or {}
            line += ", ONNX Runtime " + (", ".join(f"{k}={v}" for k, v in settings.items())
                                         + " (the benchmark's search)" if settings else "defaults")
        return f"{line} [threads: {why['threads']}; batch: {why['batch_size']}]"

    def preprocess(self, data: np.ndarray, properties: dict) -> tuple[np.ndarray, dict]:
        return preprocess_case(data, properties, self.bundle.plans, self.bundle.configuration)

    def logits(self, data: np.ndarray, progress: Callable[[int, int], None] | None = None) -> np.ndarray:
        self.load()
        return ensemble_logits(
            data, self.networks, self.patch_size, self.labels.num_heads, step=self.step,
            mirror_axes=self.mirror_axes, batch_size=self.batch_size, accumulate=self.accumulate,
            progress=progress,
        )

    def predict_case(self, case: str, files: Sequence[Path], *, save_probabilities: bool = False,
                     keep_intermediates: bool = False,
                     progress: Callable[[int, int], None] | None = None) -> CaseResult:
        timings: dict[str, float] = {}
        t = time.perf_counter()
        data, properties = self.rw.read_images([str(f) for f in files])
        timings["read"] = time.perf_counter() - t
        t = time.perf_counter()
        pre, properties = self.preprocess(data, properties)
        timings["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        logits = self.logits(pre, progress)
        timings["inference"] = time.perf_counter() - t
        t = time.perf_counter()
        out = logits_to_segmentation(logits, properties, self.bundle.plans, self.bundle.configuration,
                                     self.bundle.dataset_json, return_probabilities=save_probabilities)
        seg, probs = out if save_probabilities else (out, None)
        timings["resample_back"] = time.perf_counter() - t
        return CaseResult(case, seg, properties, timings, probs,
                          pre if keep_intermediates else None, logits if keep_intermediates else None)

    def write_case(self, result: CaseResult, output_dir: Path) -> Path:
        t = time.perf_counter()
        ending = self.bundle.dataset_json["file_ending"]
        out = Path(output_dir) / f"{result.case}{ending}"
        self.rw.write_seg(result.segmentation, str(out), result.properties)
        if result.probabilities is not None:
            np.savez_compressed(Path(output_dir) / f"{result.case}.npz", probabilities=result.probabilities)
            with open(Path(output_dir) / f"{result.case}.pkl", "wb") as handle:
                pickle.dump(result.properties, handle)
        result.timings_s["write"] = time.perf_counter() - t
        return out

    def cases(self, input_dir: Path) -> dict[str, list[Path]]:
        return find_cases(Path(input_dir), self.bundle.dataset_json["file_ending"],
                          num_channels(self.bundle.dataset_json))

    def predict_folder(self, input_dir: Path, output_dir: Path, *, save_probabilities: bool = False,
                       overwrite: bool = True, verbose: bool = True) -> list[dict[str, Any]]:
        """Predict every case of ``input_dir`` into ``output_dir``; per-case timings."""
        cases = self.cases(input_dir)
        output_dir = Path(output_dir)
        output_dir.mkdir(parents=True, exist_ok=True)
        ending = self.bundle.dataset_json["file_ending"]
        if verbose:
            self.load()  # so the line can say the precision the runtime really uses
            print(f"nnbridge: {self.describe_run()}", file=sys.stderr)
            if self.verification is not None:
                here = failures_here(self.verification, self.variant, self.backend or "")
                print(f"nnbridge: {self.variant} on {self.backend} re-checked on this CPU kind (not the one it "
                      f"was gated on): {'FAILS, used anyway (--allow-ungated)' if here else 'passes'}; result "
                      f"in {self.verification_path}", file=sys.stderr)
        records = []
        for i, (case, files) in enumerate(cases.items(), 1):
            if not overwrite and (output_dir / f"{case}{ending}").exists():
                continue
            progress = _progress_printer(case, i, len(cases)) if verbose else None
            result = self.predict_case(case, files, save_probabilities=save_probabilities, progress=progress)
            self.write_case(result, output_dir)
            if verbose:
                total = sum(result.timings_s.values())
                print(f"\r[{i}/{len(cases)}] {case}: {total:.2f} s "
                      + " ".join(f"{k} {v:.2f}" for k, v in result.timings_s.items()), file=sys.stderr)
            records.append({"case": case, "timings_s": result.timings_s})
        return records


def _progress_printer(case: str, index: int, total: int) -> Callable[[int, int], None]:
    def show(done: int, windows: int) -> None:
        print(f"\r[{index}/{total}] {case}: window {done}/{windows}", end="", file=sys.stderr, flush=True)

    return show
