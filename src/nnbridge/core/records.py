"""Every stage's JSON, written and read through one small dataclass per record kind.

A record on disk is the stage's JSON object plus two stamps, ``"record"`` (its kind: ``benchmark``,
``parity``, …) and ``"schema_version"``. Writing stamps them; reading checks them, so a file written
by an older nnbridge, or the wrong file, is one clear line naming the file and the fix
(``rerun the stage: snakemake --forcerun <rule>``) instead of a KeyError deep in the report.

Only the fields the report and the bundle consume are typed; every other key stays in ``extra``
exactly as the stage wrote it (deep detail stays plain nested dicts), and writing gives it back in
its order. Typing one more field is one line in its class. Keys of results per variant and runtime
are :class:`~nnbridge.core.keys.Variant`\\ s (``int8_static@openvino``), never parsed by hand.

The stamp is ``"record"``, not ``"kind"``: the realistic-size record already has a ``kind``
field (its description), and JSON field names stay as the stages write them.
"""

from __future__ import annotations

import json
import types
from dataclasses import MISSING, dataclass, field, fields
from functools import cache
from pathlib import Path
from typing import Any, ClassVar, TypeVar, Union, get_args, get_origin, get_type_hints

from .artifacts import method_kind
from .errors import NNBridgeError
from .keys import Variant
from .runlog import write_json

KIND_KEY = "record"
VERSION_KEY = "schema_version"
STAMP = (KIND_KEY, VERSION_KEY)

P = TypeVar("P", bound="Part")
R = TypeVar("R", bound="Record")


class RecordError(NNBridgeError):
    """A record that cannot be read as its kind: the message names the file and the fix."""


class _Invalid(Exception):
    """A field missing or of the wrong shape, somewhere inside a record (``Record`` adds the file)."""


def _decode(hint: Any, value: Any, where: str) -> Any:
    """``value`` (plain JSON) as the annotated type: Parts built, Variant keys parsed."""
    if value is None:
        return None
    origin = get_origin(hint)
    if origin in (Union, types.UnionType):
        args = [a for a in get_args(hint) if a is not type(None)]
        return _decode(args[0], value, where) if len(args) == 1 else value
    if isinstance(hint, type) and issubclass(hint, Part):
        return hint.from_dict(value, where)
    if origin is dict:
        key_type, item_type = get_args(hint)
        if not isinstance(value, dict):
            raise _Invalid(f"{where} is {type(value).__name__}, not an object")
        return {(Variant.parse(k) if key_type is Variant else k): _decode(item_type, v, f"{where}.{k}")
                for k, v in value.items()}
    if origin is list:
        (item_type,) = get_args(hint)
        if not isinstance(value, list):
            raise _Invalid(f"{where} is {type(value).__name__}, not a list")
        return [_decode(item_type, v, f"{where}[{i}]") for i, v in enumerate(value)]
    return value


def _encode(value: Any) -> Any:
    if isinstance(value, Part):
        return value.to_dict()
    if isinstance(value, dict):
        return {(k.key if isinstance(k, Variant) else k): _encode(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_encode(v) for v in value]
    return value


@dataclass
class Part:
    """A typed view of one JSON object: the declared fields, and every other key in ``extra``."""

    extra: dict[str, Any] = field(default_factory=dict, repr=False, compare=False, kw_only=True)
    _keys: tuple[str, ...] = field(default=(), repr=False, compare=False, kw_only=True)
    """The keys as read, in order (written back in that order; absent optional fields stay absent)."""

    @classmethod
    @cache
    def _typed(cls) -> dict[str, Any]:
        hints = get_type_hints(cls)
        return {f.name: hints[f.name] for f in fields(cls) if f.name not in ("extra", "_keys")}

    @classmethod
    def from_dict(cls: type[P], data: Any, where: str = "") -> P:
        if not isinstance(data, dict):
            raise _Invalid(f"{where or cls.__name__} is {type(data).__name__}, not an object")
        typed = cls._typed()
        kwargs: dict[str, Any] = {}
        for f in fields(cls):
            if f.name not in typed:
                continue
            if f.name in data:
                kwargs[f.name] = _decode(typed[f.name], data[f.name], f"{where}.{f.name}".lstrip("."))
            elif f.default is MISSING and f.default_factory is MISSING:
                raise _Invalid(f"no {f.name!r}" + (f" in {where}" if where else ""))
        extra = {k: v for k, v in data.items() if k not in typed}
        return cls(**kwargs, extra=extra, _keys=tuple(data))

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: keys in the order read, then typed fields set since, then new extras."""
        typed = self._typed()
        out: dict[str, Any] = {}
        for key in self._keys:
            if key in typed:
                out[key] = _encode(getattr(self, key))
            elif key in self.extra:
                out[key] = _encode(self.extra[key])
        for f in fields(self):
            if f.name in typed and f.name not in out:
                value = getattr(self, f.name)
                default = f.default_factory() if f.default_factory is not MISSING else f.default
                if f.default is MISSING and f.default_factory is MISSING or value != default:
                    out[f.name] = _encode(value)
        for key, value in self.extra.items():
            out.setdefault(key, _encode(value))
        return out


RECORDS: dict[str, type[Record]] = {}
"""Every record kind by its stamp."""


@dataclass
class Record(Part):
    """A stage's JSON file. ``KIND`` is its stamp, ``RULE`` the workflow rule that writes it,
    ``VERSION`` its schema version (raise it when a typed field changes meaning or goes away;
    adding a field needs no new version)."""

    KIND: ClassVar[str] = ""
    RULE: ClassVar[str] = ""
    VERSION: ClassVar[int] = 1

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.__dict__.get("KIND"):
            RECORDS[cls.KIND] = cls

    @classmethod
    def fix(cls) -> str:
        return f"rerun the stage: snakemake --forcerun {cls.RULE}"

    @classmethod
    def of(cls: type[R], data: dict[str, Any]) -> R:
        """A stage's result as this record (before writing it): every typed field it must have."""
        try:
            return cls.from_dict({k: v for k, v in data.items() if k not in STAMP})
        except _Invalid as exc:
            raise RecordError(f"the {cls.KIND} stage's result has {exc}; this is a bug in nnbridge") from None

    def to_dict(self) -> dict[str, Any]:
        return {KIND_KEY: self.KIND, VERSION_KEY: self.VERSION, **super().to_dict()}

    def write(self, path: str | Path) -> None:
        write_json(path, self.to_dict())

    @classmethod
    def load(cls: type[R], data: Any, path: str | Path) -> R:
        """``data`` read from ``path``, checked to be this kind at this schema version."""
        fix = cls.fix()
        if not isinstance(data, dict) or VERSION_KEY not in data:
            raise RecordError(f"{path}: not a stamped nnbridge record (no {VERSION_KEY!r}; written by an "
                              f"nnbridge older than typed records); {fix}")
        kind, version = data.get(KIND_KEY), data[VERSION_KEY]
        if kind != cls.KIND:
            known = "an unknown" if kind not in RECORDS else "a"
            raise RecordError(f"{path}: {known} {kind!r} record where a {cls.KIND!r} record belongs; {fix}")
        if not isinstance(version, int) or version < cls.VERSION:
            raise RecordError(f"{path}: a {cls.KIND} record of schema version {version!r}, older than this "
                              f"nnbridge's {cls.VERSION}; {fix}")
        if version > cls.VERSION:
            raise RecordError(f"{path}: a {cls.KIND} record of schema version {version}, newer than this nnbridge "
                              f"reads ({cls.VERSION}); update nnbridge, or {fix}")
        try:
            return cls.from_dict({k: v for k, v in data.items() if k not in STAMP})
        except _Invalid as exc:
            raise RecordError(f"{path}: the {cls.KIND} record has {exc}; {fix}") from None

    @classmethod
    def read(cls: type[R], path: str | Path) -> R:
        path = Path(path)
        try:
            data = json.loads(path.read_text())
        except FileNotFoundError:
            raise RecordError(f"{path}: missing; {cls.fix()}") from None
        except (json.JSONDecodeError, UnicodeDecodeError) as exc:
            raise RecordError(f"{path}: not valid JSON ({exc}); {cls.fix()}") from None
        return cls.load(data, path)

    @classmethod
    def read_optional(cls: type[R], path: str | Path | None) -> R | None:
        """The record, or None where the run has none (not configured, or not produced yet)."""
        if not path or not Path(path).is_file():
            return None
        return cls.read(path)


# ---- parts shared by several records ----------------------------------------------------------


@dataclass
class Machine(Part):
    """The CPU a measurement ran on (:func:`nnbridge.core.cpu.cpu_identity`)."""

    cpu: str
    isa: list[str] = field(default_factory=list)
    cpus: int | None = None
    host: str | None = None


@dataclass
class Peak(Part):
    """The machine's measured peaks (fp32, INT8, bf16) the "% of peak" figures refer to."""

    gflops: float | None = None
    threads: int | None = None
    method: str | None = None
    candidates: dict[str, dict[str, Any]] | None = None
    machine: Machine | None = None
    int8_gops: float | None = None
    int8_method: str | None = None
    bf16_gflops: float | None = None
    bf16_method: str | None = None
    source: str | None = None
    error: str | None = None


@dataclass
class BenchResult(Part):
    """One variant on one runtime, batch 1, in its own process; or why it did not run."""

    backend: str | None = None
    p50_ms: float | None = None
    p90_ms: float | None = None
    p99_ms: float | None = None
    load_ms: float | None = None
    """Reading and compiling the artifact (an ONNX import, an IR read, a checkpoint load), the runtime's
    import excluded: what ``nnbridge predict`` pays per fold before its first window."""
    peak_rss_mb: float | None = None
    file_size_bytes: int | None = None
    """Bytes of all the artifact's files (an OpenVINO IR: its .xml and .bin)."""
    gflops_per_s: float | None = None
    pct_of_peak: float | None = None
    peak_kind: str | None = None
    peak_source: str | None = None
    """``adjacent``: against the peak kernel timed in the same process right after (``adjacent_peak``);
    ``run``: against the run's ``machine_peak``."""
    adjacent_peak: dict[str, Any] | None = None
    speedup_vs_torch_eager: float | None = None
    threads: int | None = None
    ort_settings: dict[str, Any] | None = None
    inference_precision: str | None = None
    op_profile: list[dict[str, Any]] | None = None
    skipped: str | None = None
    error: str | None = None

    @property
    def timed(self) -> bool:
        return self.p50_ms is not None


@dataclass
class Tuning(Part):
    """The ONNX Runtime session search of one variant."""

    chosen: dict[str, Any]
    candidates: list[dict[str, Any]] = field(default_factory=list)
    gain_vs_default: float | None = None


@dataclass
class Sweep(Part):
    """p50 per thread count (and per patch at a larger batch) of some variants."""

    threads: list[int]
    results: dict[Variant, dict[str, Any]] = field(default_factory=dict)
    batch: int = 1


# ---- the records ------------------------------------------------------------------------------


@dataclass
class Weights(Part):
    summary: str
    ok: bool | None = None


@dataclass
class ShapeCheck(Part):
    shape: list[int]
    max_abs_err: float | None = None


@dataclass
class Source(Part):
    kind: str
    weights_origin: str | None = None
    checkpoint: str | None = None


@dataclass
class TorchscriptRecord(Record):
    KIND: ClassVar[str] = "torchscript"
    RULE: ClassVar[str] = "export_torchscript"

    weights: Weights
    shape_checks: list[ShapeCheck] = field(default_factory=list)
    path: str | None = None
    size_bytes: int | None = None


@dataclass
class ExportRecord(TorchscriptRecord):
    KIND: ClassVar[str] = "export"
    RULE: ClassVar[str] = "export_onnx"

    source: Source | None = None
    checkpoint_weights: Weights | None = None


@dataclass
class SimplifyRecord(Record):
    KIND: ClassVar[str] = "simplify"
    RULE: ClassVar[str] = "simplify"

    kept_simplified: bool
    nodes_before: int | None = None
    nodes_after: int | None = None
    tool: str | None = None
    error: str | None = None
    check_max_abs_err: float | None = None
    path: str | None = None
    size_bytes: int | None = None
    # the InstanceNormalization rewrite of the deployable graph (nnbridge.export.norms), and the
    # graph the quantizers take ({"path", "sha256"}: the same file when nothing was rewritten)
    norms: dict[str, Any] | None = None
    quantizable: dict[str, Any] | None = None


@dataclass
class PatchesRecord(Record):
    KIND: ClassVar[str] = "patches"
    RULE: ClassVar[str] = "patches"

    patch_size: list[int] | None = None


@dataclass
class Coverage(Part):
    """What a runtime runs in low precision (``precision``: int8, or bf16 for the bf16 variant)."""

    n_compute_nodes: int
    float_compute_nodes: list[str] = field(default_factory=list)
    n_conversions: int = 0
    ops: list[dict[str, Any]] = field(default_factory=list)
    precision: str = "int8"

    @property
    def n_low_precision_nodes(self) -> int | None:
        return self.extra.get(f"n_{self.precision}_compute_nodes")

    @property
    def flop_share(self) -> float | None:
        """Share of the FLOPs that run in :attr:`precision`."""
        return self.extra.get(f"{self.precision}_flop_share")


@dataclass
class QuantizeRecord(Record):
    KIND: ClassVar[str] = "quantize"
    RULE: ClassVar[str] = "quantize"

    @classmethod
    def fix(cls) -> str:
        # an OpenVINO IR variant's record is written by quantize_ir (workflow/rules/quantize.smk)
        return f"{super().fix()} quantize_ir"

    method: str
    path: str | None = None
    """The artifact's main file: an ONNX file, or an OpenVINO IR's .xml (its .bin beside it)."""
    sha256: str | None = None
    """The main file's sha256; an IR's is ``<xml sha256>+<bin sha256>`` (:func:`nnbridge.core.artifacts.artifact_sha256`)."""
    size_bytes: int | None = None
    """Bytes of all the artifact's files."""
    n_calibration_patches: int = 0
    format: str | None = None
    per_channel: bool | None = None
    calibrate_method: str | None = None
    preset: str | None = None
    ignored_types: list[str] | None = None
    coverage: Coverage | None = None
    coverage_openvino: Coverage | None = None
    accuracy_aware: dict[str, Any] | None = None
    accuracy_control: dict[str, Any] | None = None
    calibration: dict[str, Any] | None = None
    """Static INT8: whether ONNX Runtime's calibration ranges were ``reused`` (the fold's
    calibration cache, by ``key``) or calibrated by this job."""
    native_bf16_here: bool | None = None
    bf16_unavailable: str | None = None
    reduce_range: bool | None = None
    """Static and dynamic INT8: 7-bit weights."""
    weight_type: str | None = None
    """Static INT8: ``s8`` or ``u8`` weights."""
    cpu: dict[str, Any] | None = None
    """INT8 methods: the CPU the defaults were decided for and each choice with its reason
    (:func:`nnbridge.quantize.cpudefaults.cpu_record`)."""

    @property
    def seven_bit_by_cpu(self) -> bool:
        """Whether its weights have 7 bits because the CPU (no INT8 dot products) chose it, not the entry."""
        chosen = {c.get("setting"): c for c in (self.cpu or {}).get("choices", [])}
        return bool(self.reduce_range) and chosen.get("reduce_range", {}).get("given") is False

    @property
    def precision(self) -> str:
        """``fp16``, ``bf16``, ``fp32`` (the fp32 graph as OpenVINO IR) or ``int8`` (every other
        method quantizes to INT8)."""
        if self.method == "openvino_fp32":
            return "fp32"
        return self.method if self.method in ("fp16", "bf16") else "int8"

    @property
    def kind(self) -> str:
        """The kind of artifact it wrote: ``ir`` (an OpenVINO IR) or ``onnx``."""
        return method_kind(self.method)

    @property
    def accuracy_verdict(self) -> str | None:
        """The verdict of its accuracy-aware loop or NNCF accuracy control, if it ran one."""
        return (self.accuracy_aware or self.accuracy_control or {}).get("verdict")


@dataclass
class Gate(Part):
    """A variant's parity against eager PyTorch on held-out patches."""

    passed: bool
    skipped: str | None = None
    failures: list[str] = field(default_factory=list)
    dice: dict[str, float] = field(default_factory=dict)
    min_dice: float | None = None
    max_abs_err: float | None = None
    max_rel_err: float | None = None
    mean_abs_err: float | None = None
    voxel_agreement: float | None = None
    backend: str | None = None
    tolerance: dict[str, Any] | None = None

    @property
    def worst_dice(self) -> float | None:
        """The lowest per-class Dice against PyTorch (None: not measured)."""
        return self.min_dice if self.min_dice is not None else min(self.dice.values(), default=None)


@dataclass
class ParityRecord(Record):
    KIND: ClassVar[str] = "parity"
    RULE: ClassVar[str] = "validate"

    variants: dict[Variant, Gate]
    labels: dict[str, str] = field(default_factory=dict)
    fold: str | None = None
    all_passed: bool | None = None


@dataclass
class BenchmarkRecord(Record):
    KIND: ClassVar[str] = "benchmark"
    RULE: ClassVar[str] = "benchmark"

    results: dict[Variant, BenchResult]
    shape: list[int] = field(default_factory=list)
    threads: int | None = None
    tuning: dict[Variant, Tuning] = field(default_factory=dict)
    sweep: Sweep | None = None
    peak: Peak | None = None
    machine: Machine | None = None
    accelerators: dict[str, str] | None = None
    flops_per_patch: float | None = None


@dataclass
class PeakRecord(Record, Peak):
    KIND: ClassVar[str] = "peak"
    RULE: ClassVar[str] = "machine_peak"


@dataclass
class RealisticRecord(Record):
    KIND: ClassVar[str] = "realistic"
    RULE: ClassVar[str] = "realistic_benchmark"

    patch_size: list[int]
    results: dict[Variant, BenchResult]
    architecture: dict[str, Any] = field(default_factory=dict)
    flops_per_patch: float | None = None
    peak: Peak | None = None
    machine: Machine | None = None
    targets: dict[str, Any] | None = None
    tuning: Tuning | None = None
    load_ms: dict[Variant, float | None] | None = None
    """OpenVINO's read + compile time of the fp32 graph from the ONNX file and from its IR (with ``ir``)."""
    norms: dict[str, Any] | None = None
    """The exact graph's InstanceNormalization rewrite (nnbridge.export.norms) at this patch size."""
    files: dict[Variant, str] | None = None
    """The file each result ran."""


@dataclass
class StageTimes(Part):
    timings_s: dict[str, float]
    total_s: float


@dataclass
class CaseVariant(Part):
    """One bundled variant on whole cases against nnU-Net's predictor (on the bundle's runtime)."""

    backend: str | None = None
    passed: bool = False
    skipped: str | None = None
    cases: dict[str, dict[str, Any]] = field(default_factory=dict)
    timings_s: dict[str, float] = field(default_factory=dict)
    total_s: float | None = None
    speedup_vs_nnunet: float | None = None
    min_voxel_agreement: float | None = None
    min_dice_vs_nnunet: float | None = None
    first_divergence: str | None = None
    inference_precision: str | None = None


@dataclass
class CaseParityRecord(Record):
    KIND: ClassVar[str] = "case_parity"
    RULE: ClassVar[str] = "case_parity"

    variants: dict[str, CaseVariant]
    nnunet: StageTimes | None = None
    fold: str | None = None
    cases: list[str] = field(default_factory=list)
    all_passed: bool | None = None

    def on_runtime(self) -> dict[Variant, CaseVariant]:
        """The compared variants keyed by variant and the runtime they ran on."""
        return {Variant(name, v.backend) if v.backend else Variant(name): v for name, v in self.variants.items()}


@dataclass
class BundleVariant(Part):
    backend: str | None = None
    passed: bool = False
    latency_ms: dict[str, float] = field(default_factory=dict)
    ort_settings: dict[str, Any] = field(default_factory=dict)
    run_settings: dict[str, dict[str, Any]] = field(default_factory=dict)
    inference_precision: str | None = None
    kind: str = "onnx"
    """``onnx``, or ``ir``: an OpenVINO IR (runs on OpenVINO only)."""
    files: dict[str, str] = field(default_factory=dict)
    """Fold → the main file (``<variant>/fold_<k>.onnx``, an IR's ``.xml``), relative to the bundle."""
    sha256: dict[str, str] = field(default_factory=dict)
    weights: dict[str, str] = field(default_factory=dict)
    """Fold → an IR's weights file (``<variant>/fold_<k>.bin``, beside its ``.xml``); none for ONNX."""
    weights_sha256: dict[str, str] = field(default_factory=dict)
    built_for: dict[str, Any] | None = None
    """An INT8 variant's: the CPU features (``arch``, ``avx2``, ``int8_dot``) its CPU-decided
    quantization settings were chosen for (:mod:`nnbridge.quantize.cpudefaults`)."""


@dataclass
class BundleManifest(Record):
    """``bundle.json``: ``nnbridge predict`` reads it as a plain manifest (:mod:`nnbridge.predict.bundle`,
    which checks its ``format``); the report reads it through this record."""

    KIND: ClassVar[str] = "bundle"
    RULE: ClassVar[str] = "bundle"

    variants: dict[str, BundleVariant]
    default_variant: str
    format: str | None = None
    folds: list[str] = field(default_factory=list)
    dataset: str | None = None
    model: str | None = None


@dataclass
class EmulatedVerifyRecord(Record):
    """A bundle's ``nnbridge verify`` on a CPU emulated by QEMU (:mod:`nnbridge.predict.emulated`)."""

    KIND: ClassVar[str] = "verify_emulated"
    RULE: ClassVar[str] = "verify_emulated"

    cpu_model: str
    threads: int = 0
    skipped: str | None = None
    """Why it did not run here (QEMU not installed, not an x86 machine)."""
    emulator: str | None = None
    cpu: dict[str, Any] | None = None
    """The emulated CPU's kind as nnbridge read it there (from CPUID)."""
    records: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Per stage (``""`` for a single-stage bundle): ``nnbridge verify``'s record."""
    passed: bool | None = None
    failed: list[str] = field(default_factory=list)
    seconds: float | None = None


@dataclass
class DemoNetRecord(Record):
    KIND: ClassVar[str] = "demo_net"
    RULE: ClassVar[str] = "demo_train_pytorch"

    first_loss: float | None = None
    last_loss: float | None = None


@dataclass
class NnunetValidation(Part):
    """nnU-Net's own ``validation/summary.json`` of a fold (not an nnbridge record: no stamp)."""

    mean: dict[str, dict[str, Any]] = field(default_factory=dict)
    foreground_mean: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def read_optional(cls, path: str | Path | None) -> NnunetValidation | None:
        if not path or not Path(path).is_file():
            return None
        try:
            return cls.from_dict(json.loads(Path(path).read_text()))
        except (json.JSONDecodeError, _Invalid) as exc:
            raise RecordError(f"{path}: not an nnU-Net validation summary ({exc}); rerun nnU-Net's "
                              "validation of that fold") from None
