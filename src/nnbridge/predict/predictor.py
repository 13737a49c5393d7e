"""``nnbridge predict``: nnU-Net's inference on a bundle, with ONNX Runtime or OpenVINO, no torch.

read → preprocess (transpose, crop, normalize, resample) → sliding window over every fold with
mirroring → average logits → resample back, argmax/regions, un-crop, transpose back →
postprocessing → write. Each stage is timed per case.

A cascade stage's bundle holds its previous stage: that stage predicts the case first (all of the
above but postprocessing, as ``nnUNetv2_predict`` of ``3d_lowres`` writes it), and its segmentation
enters the cascade stage's preprocessing as nnU-Net's ``-prev_stage_predictions`` does
(:func:`.preprocess.preprocess_case`). Postprocessing is the one nnU-Net chose for the model
(``nnUNetv2_apply_postprocessing`` with the bundle's recorded ``postprocessing.pkl``); several
bundles are ensembled by :mod:`.ensemble`.
"""

from __future__ import annotations

import os
import pickle
import sys
import time
import contextlib
import tempfile
import zipfile
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cpu import usable_cpus
from ..core.errors import NNBridgeError
from ..core.runlog import one_line_cause
from ..runtime import ONNX_BACKENDS, make_runner
from .bundle import Bundle, require_previous_stage
from .components import Step, apply_postprocessing, describe
from .io import check_channels, check_complete, check_finite, find_cases, num_channels, reader_writer
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
    else the bundle's record (:func:`.bundle.run_settings`; threads capped at the CPUs this process
    may use, :func:`nnbridge.core.cpu.usable_cpus`), else the runtime's default threads (0) and
    batch 1; ``why`` says which for each."""
    recorded = (entry.get("run_settings") or {}).get(backend) or {}
    reasons = recorded.get("from") or {}
    no_record = "no choice recorded in the bundle"
    if threads is not None:
        threads_why = "--threads"
    elif recorded.get("threads"):
        threads, threads_why = int(recorded["threads"]), reasons.get("threads", "the bundle")
        cpus = usable_cpus()
        if threads > cpus:
            threads, threads_why = cpus, f"{threads_why}; {threads} capped at the {cpus} CPU(s) this process may use"
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
    postprocessing: bool = True  # nnU-Net's postprocessing recorded in the bundle (or postprocessing_steps)
    postprocessing_steps: list[Step] | None = None  # explicit steps (--postprocessing FILE) instead
    networks: list[Network] = field(default_factory=list, init=False)
    precision: str = field(default="f32", init=False)  # what the loaded networks compute in
    run_choice: dict[str, Any] = field(default_factory=dict, init=False)  # threads, batch size and why
    verification: dict[str, Any] | None = field(default=None, init=False)  # nnbridge verify's record here
    verification_path: Path | None = field(default=None, init=False)  # where it is cached
    previous: Predictor | None = field(default=None, init=False)  # a cascade's previous stage
    steps: list[Step] = field(default_factory=list, init=False)  # the postprocessing applied
    postprocessing_source: str = field(default="", init=False)  # where the steps come from

    def __post_init__(self) -> None:
        self.config = configuration(self.bundle.plans, self.bundle.configuration)
        previous_stage = self.config.get("previous_stage")
        require_previous_stage(self.bundle.configuration, previous_stage, self.bundle.previous_stage is not None,
                               self.bundle.root)
        if previous_stage:  # the same choices for both stages; its segmentation is not postprocessed
            stage = self.bundle.previous_stage
            if self.variant and self.variant not in stage.manifest["variants"]:
                raise NNBridgeError(f"{stage.root}: the {previous_stage} stage has no variant {self.variant!r} "
                                    f"(it has {sorted(stage.manifest['variants'])}); choose one both stages have")
            self.previous = Predictor(stage, variant=self.variant, folds=self.folds, backend=self.backend,
                                      threads=self.threads, step=self.step, mirroring=self.mirroring,
                                      batch_size=self.batch_size, accumulate=self.accumulate,
                                      allow_ungated=self.allow_ungated, selfcheck=self.selfcheck,
                                      postprocessing=False)
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
        self.labels = Labels.from_dataset_json(self.bundle.dataset_json)
        self.patch_size = [int(p) for p in self.config["patch_size"]]
        axes = self.bundle.manifest.get("mirror_axes")
        self.mirror_axes = [int(a) for a in axes] if (self.mirroring and axes) else None
        self.rw = reader_writer(self.bundle.plans.get("image_reader_writer", "SimpleITKIO"))
        if self.postprocessing_steps is not None:
            self.steps, self.postprocessing_source = list(self.postprocessing_steps), "--postprocessing"
        elif self.postprocessing:
            recorded = self.bundle.postprocessing()
            if recorded:
                self.steps, self.postprocessing_source = recorded
            else:
                self.postprocessing_source = "none recorded in the bundle"
        else:
            self.postprocessing_source = "off"

    def describe_postprocessing(self) -> str:
        """One line: the postprocessing applied and where it comes from."""
        if not self.steps:
            return f"postprocessing: none ({self.postprocessing_source})"
        return f"postprocessing: {describe(self.steps)} (from {self.postprocessing_source})"

    def load(self) -> None:
        if self.previous is not None:
            self.previous.load()
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
        line = f"{line} [threads: {why['threads']}; batch: {why['batch_size']}]"
        if self.previous is not None:
            line = f"{self.previous.describe_run()}, then {self.bundle.configuration}: {line}"
        return line

    def preprocess(self, data: np.ndarray, properties: dict, previous_stage: np.ndarray | None = None,
                   where: str = "the case") -> tuple[np.ndarray, dict]:
        return preprocess_case(data, properties, self.bundle.plans, self.bundle.configuration, previous_stage,
                               self.labels.foreground_labels if previous_stage is not None else None, where)

    def read(self, files: Sequence[Path]) -> tuple[np.ndarray, dict]:
        """A case's files through the plans' reader, refused in one line naming the file when they
        are truncated or corrupt (:func:`check_complete`), unreadable, hold other than the model's
        channels, or hold NaN/Inf voxels."""
        for f in files:
            check_complete(Path(f))
        names = ", ".join(str(f) for f in files)
        try:
            data, properties = self.rw.read_images([str(f) for f in files])
        except NNBridgeError:
            raise
        except Exception as exc:  # noqa: BLE001 - readers raise anything on a corrupt file
            raise NNBridgeError(f"{names}: {type(self.rw).__name__} cannot read it ({one_line_cause(exc)}); the file is "
                                "truncated, corrupt or not an image: copy it again") from None
        check_channels(data, list(files), num_channels(self.bundle.dataset_json))
        check_finite(data, list(files))
        return data, properties

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
        t = time.perf_counter()
        data, properties = self.read(files)
        read = time.perf_counter() - t
        result = self.predict_arrays(case, data, properties, save_probabilities=save_probabilities,
                                     keep_intermediates=keep_intermediates, progress=progress,
                                     where=", ".join(Path(f).name for f in files))
        result.timings_s = {"read": read, **result.timings_s}
        return result

    def predict_arrays(self, case: str, data: np.ndarray, properties: dict, *, save_probabilities: bool = False,
                       keep_intermediates: bool = False, postprocess: bool = True,
                       progress: Callable[[int, int], None] | None = None, where: str = "the case") -> CaseResult:
        """A case already read (``data``, ``properties`` as the reader returns them): the previous
        stage (a cascade), preprocessing, inference, resampling back and postprocessing."""
        timings: dict[str, float] = {}
        previous = None
        if self.previous is not None:
            t = time.perf_counter()
            previous = self.previous.predict_arrays(case, data, properties, postprocess=False,
                                                    progress=progress, where=where).segmentation
            timings["previous_stage"] = time.perf_counter() - t
        t = time.perf_counter()
        pre, properties = self.preprocess(data, properties, previous, where)
        timings["preprocess"] = time.perf_counter() - t
        t = time.perf_counter()
        logits = self.logits(pre, progress)
        timings["inference"] = time.perf_counter() - t
        t = time.perf_counter()
        out = logits_to_segmentation(logits, properties, self.bundle.plans, self.bundle.configuration,
                                     self.bundle.dataset_json, return_probabilities=save_probabilities)
        seg, probs = out if save_probabilities else (out, None)
        timings["resample_back"] = time.perf_counter() - t
        if postprocess and self.steps:
            t = time.perf_counter()
            seg = apply_postprocessing(seg, self.steps)
            timings["postprocess"] = time.perf_counter() - t
        return CaseResult(case, seg, properties, timings, probs,
                          pre if keep_intermediates else None, logits if keep_intermediates else None)

    def output_files(self, case: str, output_dir: Path, save_probabilities: bool) -> list[Path]:
        """A case's output files: the segmentation, and with probabilities ``.npz`` and ``.pkl``."""
        names = [f"{case}{self.file_ending}"] + ([f"{case}.npz", f"{case}.pkl"] if save_probabilities else [])
        return [Path(output_dir) / n for n in names]

    def write_case(self, result: CaseResult, output_dir: Path) -> Path:
        """Write a case's files, each under a temporary name first and renamed when complete
        (probabilities before the segmentation): a killed run leaves no file that looks done."""
        t = time.perf_counter()
        files = self.output_files(result.case, output_dir, result.probabilities is not None)
        out = files[0]
        if result.probabilities is not None:
            with _atomic(files[1]) as tmp, open(tmp, "wb") as handle:
                np.savez_compressed(handle, probabilities=result.probabilities)
            with _atomic(files[2]) as tmp, open(tmp, "wb") as handle:
                pickle.dump(result.properties, handle)
        with _atomic(out) as tmp:
            self.rw.write_seg(result.segmentation, str(tmp), result.properties)
        result.timings_s["write"] = time.perf_counter() - t
        return out

    def case_done(self, case: str, output_dir: Path, save_probabilities: bool) -> bool:
        """``--continue_prediction``: a case is done only when every file it needs exists and is
        complete (a file cut short by a kill from an older writer does not count)."""
        for path in self.output_files(case, output_dir, save_probabilities):
            if not path.is_file() or path.stat().st_size == 0:
                return False
            try:
                check_complete(path) if path.suffix != ".pkl" else _load_pickle(path)
                if path.suffix == ".npz":
                    with zipfile.ZipFile(path) as archive:
                        if archive.testzip() is not None:
                            return False
            except (NNBridgeError, OSError, zipfile.BadZipFile, pickle.UnpicklingError, EOFError):
                return False
        return True

    @property
    def file_ending(self) -> str:
        return self.bundle.dataset_json["file_ending"]

    def cases(self, input_dir: Path) -> dict[str, list[Path]]:
        return find_cases(Path(input_dir), self.file_ending, num_channels(self.bundle.dataset_json))

    def announce(self) -> list[str]:
        """What ``nnbridge predict`` says before the first case: runtime and settings (each
        stage of a cascade), the re-check on this CPU kind where one ran, the postprocessing."""
        self.load()  # so the line can say the precision the runtime really uses
        lines = [self.describe_run()]
        for stage in (self.previous, self):
            if stage is not None and stage.verification is not None:
                here = failures_here(stage.verification, stage.variant, stage.backend or "")
                which = f"{stage.bundle.configuration}: " if self.previous is not None else ""
                lines.append(f"{which}{stage.variant} on {stage.backend} re-checked on this "
                             f"CPU kind (not the one it was gated on): "
                             f"{'FAILS, used anyway (--allow-ungated)' if here else 'passes'}; result in "
                             f"{stage.verification_path}")
        return [*lines, self.describe_postprocessing()]

    def predict_folder(self, input_dir: Path, output_dir: Path, *, save_probabilities: bool = False,
                       overwrite: bool = True, verbose: bool = True,
                       part: tuple[int, int] = (0, 1)) -> list[dict[str, Any]]:
        """Predict every case of ``input_dir`` (or one ``part``) into ``output_dir``; per-case timings."""
        return predict_folder(self, input_dir, output_dir, save_probabilities=save_probabilities,
                              overwrite=overwrite, verbose=verbose, part=part)


def check_part(part_id: int, num_parts: int) -> None:
    """``-part_id``/``-num_parts`` as nnUNetv2_predict takes them, or a one-line refusal."""
    if num_parts < 1:
        raise NNBridgeError(f"-num_parts {num_parts}: give the number of calls the cases are split over (1 or more)")
    if not 0 <= part_id < num_parts:
        raise NNBridgeError(f"-part_id {part_id} with -num_parts {num_parts}: part ids count from 0, so give each "
                            f"of the {num_parts} call(s) one of 0 … {num_parts - 1}")


def predict_folder(predictor: Any, input_dir: Path, output_dir: Path, *, save_probabilities: bool = False,
                   overwrite: bool = True, verbose: bool = True,
                   part: tuple[int, int] = (0, 1)) -> list[dict[str, Any]]:
    """Every case of ``input_dir`` through ``predictor`` (a :class:`Predictor` or an ensemble:
    ``cases``, ``announce``, ``predict_case``, ``write_case``, ``case_done``, ``output_files``) into
    ``output_dir``. The output folder is checked to be writable before the first case; without
    ``overwrite`` a case whose files are all complete (``case_done``) is skipped. ``part``
    (``part_id``, ``num_parts``): only every ``num_parts``-th case of the sorted case list from
    ``part_id`` on, as nnUNetv2_predict's ``-part_id``/``-num_parts`` split one folder over several
    calls (processes, nodes, Slurm array tasks) writing into the same output folder."""
    part_id, num_parts = part
    check_part(part_id, num_parts)
    found = predictor.cases(input_dir)
    cases = {case: found[case] for case in list(found)[part_id::num_parts]}
    output_dir = Path(output_dir)
    writable_folder(output_dir)
    for case in cases:  # what a killed run was writing: of this call's cases only (other parts write beside)
        for path in predictor.output_files(case, output_dir, True):
            partial_path(path).unlink(missing_ok=True)
    if verbose:
        for line in predictor.announce():
            print(f"nnbridge: {line}", file=sys.stderr)
        if num_parts > 1:
            print(f"nnbridge: part {part_id} of {num_parts} (ids 0 … {num_parts - 1}): {len(cases)} of the "
                  f"{len(found)} case(s)", file=sys.stderr)
    records = []
    for i, (case, files) in enumerate(cases.items(), 1):
        if not overwrite and predictor.case_done(case, output_dir, save_probabilities):
            continue
        progress = _progress_printer(case, i, len(cases)) if verbose else None
        result = predictor.predict_case(case, files, save_probabilities=save_probabilities, progress=progress)
        predictor.write_case(result, output_dir)
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


PARTIAL = ".nnbridge-partial"


def partial_path(path: Path) -> Path:
    """The name ``path`` is written under until complete: beside it, with the same file ending (so
    writers pick the same format), e.g. ``case.nnbridge-partial.nii.gz``."""
    path = Path(path)
    stem, dot, rest = path.name.partition(".")
    return path.with_name(f"{stem}{PARTIAL}.{rest}" if dot else f"{path.name}{PARTIAL}")


@contextlib.contextmanager
def _atomic(path: Path) -> Iterator[Path]:
    """A temporary name beside ``path`` (:func:`partial_path`) that becomes ``path`` only when the
    block finishes; removed on failure."""
    tmp = partial_path(path)
    try:
        yield tmp
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)


def _load_pickle(path: Path) -> Any:
    with open(path, "rb") as handle:
        return pickle.load(handle)


def writable_folder(folder: Path) -> None:
    """Make ``folder`` if needed and check a file can be written in it, or refuse in one line
    (an output path that is a file, a read-only filesystem), before any case is predicted."""
    folder = Path(folder)
    if folder.exists() and not folder.is_dir():
        raise NNBridgeError(f"{folder}: exists and is not a folder; give -o a folder (new or existing)")
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".nnbridge-write-check"):
            pass
    except OSError as exc:
        raise NNBridgeError(f"{folder}: cannot write there ({exc.strerror or exc}); give -o a writable folder") from None
