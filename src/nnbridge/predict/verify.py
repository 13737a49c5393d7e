"""``nnbridge verify``: each bundled variant's gate re-checked on this machine, in seconds, without
torch.

An INT8 file's accuracy depends on the CPU that runs it (x86 CPUs without VNNI saturate u8×s8
sums that VNNI machines do not), so a gate measured where the pipeline ran does not carry over to
every machine by itself. The bundle therefore ships a self-check set per fold (a few held-out
patches, stored as float16, with the PyTorch reference label maps computed on exactly those
values: ``selfcheck/fold_<k>.npz``) and, per variant, fold and runtime, the Dice bounds of its
gate and the Dice it reached on that set where it was gated (``recheck``). Here each variant
that passed its gate runs on the set as ``nnbridge predict`` would run it, and its label maps
must reach ``min(gate, Dice where gated)`` — pooled per class, and per case per class when its
gate has ``min_case_dice`` — or it fails on this CPU.

``nnbridge predict`` calls :func:`ensure_verified` before it loads a variant: on a CPU kind the
bundle has not seen (neither where it was gated nor in an earlier check) the variant is checked
once and the result cached (:func:`cache_paths`): beside the bundle as
``<bundle>/verified-<cpu key>.json`` if that folder is writable, else in
``$NNBRIDGE_CACHE_DIR`` (default ``$XDG_CACHE_HOME/nnbridge`` or ``~/.cache/nnbridge``)
``/verify/<manifest sha256[:16]>/<cpu key>.json``. A cached result holds for the same manifest,
CPU kind and runtime versions only.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import tempfile
import time
from importlib import metadata
from pathlib import Path
from typing import Any

import numpy as np

from ..core.cpu import cpu_kind, cpu_kind_key, describe_cpu, int8_dot, same_cpu
from ..core.dice import case_dice, dice_of, label_classes, min_voxels_for, overlap_counts, to_labels
from ..core.errors import NNBridgeError
from ..core.metadata import is_region_based, label_names
from ..runtime import ONNX_BACKENDS, make_runner
from .bundle import MANIFEST, Bundle

FORMAT = "nnbridge-verify/1"
SELFCHECK_DIR = "selfcheck"
CACHE_ENV = "NNBRIDGE_CACHE_DIR"


def write_selfcheck(path: Path, patches: np.ndarray, labels: np.ndarray, cases: list[str]) -> None:
    """A self-check set: float16 patches (N, C, ...), the reference label maps on exactly those
    values (uint8) and each patch's case, compressed."""
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as handle:
        np.savez_compressed(handle, patches=patches.astype(np.float16), labels=labels.astype(np.uint8),
                            cases=np.array([str(c) for c in cases]))


def read_selfcheck(path: Path) -> tuple[np.ndarray, np.ndarray, list[str]]:
    """(patches as float32, reference label maps, cases) of a self-check set."""
    with np.load(path, allow_pickle=False) as archive:
        return (archive["patches"].astype(np.float32), archive["labels"],
                [str(c) for c in archive["cases"]])


# the Dice where gated is stored rounded to 6 decimals: as a bound it is lowered by half a unit of
# the last one, or the same label maps computed again fail it whenever it was rounded up (seen:
# the demo's worst self-check case 0.95862068 against its stored 0.958621, same machine)
STORED_ROUNDING = 5e-7


def recheck_thresholds(recheck: dict[str, Any]) -> dict[str, Any]:
    """The bounds a variant must reach here on the self-check set: each Dice bound of its gate,
    lowered to the Dice it reached on the same set where it was gated if that was lower (a few
    patches can sit below a gate the whole held-out set passed; that Dice less its storage's
    rounding, :data:`STORED_ROUNDING`); a bound of the gate stays."""
    tol, at_gate = recheck.get("tolerance") or {}, recheck.get("at_gate") or {}
    out: dict[str, Any] = {}
    for key in ("min_dice", "min_case_dice"):
        if tol.get(key) is not None:
            gate = float(tol[key])
            reached = float(at_gate[key]) - STORED_ROUNDING if at_gate.get(key) is not None else gate
            out[key] = min(gate, reached)
    if "min_case_dice" in out:
        voxels = tol.get("min_case_voxels")
        out["min_case_voxels"] = int(voxels) if voxels is not None else min_voxels_for(tol["min_case_dice"])
    return out


def labels_of(bundle: Bundle) -> tuple[list[int], list[str], bool]:
    """(classes, their names, region-based) as the gates count them, from the bundle's dataset.json."""
    labels = bundle.dataset_json.get("labels", {})
    region_based = is_region_based(labels)
    names = label_names(labels, region_based)
    classes = label_classes(names, region_based, len(names))
    return classes, [names.get(c, str(c)) for c in classes], region_based


def check_file(path: Path, backend: str, patches: np.ndarray, reference: np.ndarray, cases: list[str],
               classes: list[int], names: list[str], region_based: bool, bounds: dict[str, Any], *,
               threads: int = 0, settings: dict | None = None) -> dict[str, Any]:
    """One variant file's label maps on ``backend`` (run as ``nnbridge predict`` runs it) against
    the reference ones: pooled and per-case Dice per class and the verdict on ``bounds``."""
    started = time.perf_counter()
    run = make_runner({"backend": backend, "path": path, "settings": settings, "fallback": True}, threads)
    logits = np.concatenate([run(patches[i : i + 1]) for i in range(len(patches))])
    counts = overlap_counts(reference, to_labels(logits, region_based), classes, region_based)
    pooled = {n: round(float(d), 6) for n, d in zip(names, dice_of(counts.sum(axis=0)))}
    per_case = case_dice(counts, cases, names, threshold=bounds.get("min_case_dice"),
                         min_voxels=bounds.get("min_case_voxels"))
    failures = []
    if bounds.get("min_dice") is not None:
        failures += [f"Dice of {n} {d:.4f} < {bounds['min_dice']:.4g}" for n, d in pooled.items()
                     if d < bounds["min_dice"]]
    below = per_case.get("below", [])
    failures += [f"Dice of {b['class']} on case {b['case']} {b['dice']:.4f} < {bounds['min_case_dice']:.4g}"
                 for b in below[:2]] + ([f"{len(below) - 2} more case-class pair(s) below"] if len(below) > 2 else [])
    return {"dice": pooled, "min_dice": min(pooled.values()) if pooled else 1.0,
            "min_case_dice": per_case["min_case_dice"], "worst_case": per_case["worst"],
            "cases": {c: r["dice"] for c, r in per_case["cases"].items()},
            "bounds": bounds, "passed": not failures, "failures": failures,
            "precision": getattr(run, "precision", "f32"), "n_patches": int(len(patches)),
            "seconds": round(time.perf_counter() - started, 3)}


def runtime_versions() -> dict[str, str | None]:
    """Versions of the runtimes (a kernel change between versions can move INT8 results)."""
    out = {}
    for name in ONNX_BACKENDS:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = None
    return out


def manifest_sha256(bundle: Bundle) -> str:
    return hashlib.sha256((bundle.root / MANIFEST).read_bytes()).hexdigest()


def has_selfcheck(bundle: Bundle) -> bool:
    return bool((bundle.manifest.get("selfcheck") or {}).get("files"))


def seen_here(bundle: Bundle, kind: dict[str, Any] | None = None) -> bool:
    """Whether the bundle's gates were measured on this CPU kind (model, features, CPUs)."""
    kind = kind or cpu_kind()
    return any(same_cpu(kind, gated) for gated in (bundle.manifest.get("gated_on") or {}).values())


def verify_bundle(bundle: Bundle, variants: list[str] | None = None, *, backends: list[str] | None = None,
                  threads: int = 0) -> dict[str, Any]:
    """Re-check each variant (default all) on each runtime (default those that passed its gate)
    and fold of the bundle on this machine. Variants, runtimes or folds that failed their gate
    where they were gated are not re-checked (they stay refused); one without a Dice bound is
    listed as not re-checked."""
    if not has_selfcheck(bundle):
        raise NNBridgeError(f"{bundle.root}: the bundle has no self-check set (built before nnbridge verify "
                            "existed, or by hand); rebuild it with the pipeline")
    started = time.perf_counter()
    selfcheck = bundle.manifest["selfcheck"]
    classes, names, region_based = labels_of(bundle)
    sets = {fold: read_selfcheck(bundle.root / rel) for fold, rel in selfcheck["files"].items()}
    out: dict[str, dict[str, Any]] = {}
    for name in variants or list(bundle.manifest["variants"]):
        name, entry = bundle.variant(name)
        out[name] = {}
        for backend in backends or ONNX_BACKENDS:
            per_fold = {}
            for fold, rel in entry["files"].items():
                gates = (entry.get("gates") or {}).get(fold) or {}
                recheck = ((entry.get("recheck") or {}).get(fold) or {}).get(backend)
                if not gates.get(backend):
                    continue  # failed (or never ran) where it was gated: refused anyway
                if fold not in sets or not recheck or not recheck_thresholds(recheck):
                    per_fold[fold] = {"passed": True, "not_rechecked": "no self-check set or Dice bound for "
                                      f"fold {fold} on {backend} in the bundle"}
                    continue
                patches, reference, cases = sets[fold]
                settings = entry.get("ort_settings") if backend == "onnxruntime" else None
                result = check_file(bundle.root / rel, backend, patches, reference, cases, classes, names,
                                    region_based, recheck_thresholds(recheck), threads=threads, settings=settings)
                result["at_gate"] = recheck.get("at_gate")
                per_fold[fold] = result
            if per_fold:
                out[name][backend] = per_fold
    return {"format": FORMAT, "bundle": str(bundle.root), "manifest_sha256": manifest_sha256(bundle),
            "cpu": cpu_kind(), "runtimes": runtime_versions(),
            "checked_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "variants": out, "seconds": round(time.perf_counter() - started, 3)}


def cache_paths(bundle: Bundle, kind: dict[str, Any] | None = None) -> list[Path]:
    """Where a verification of ``bundle`` on this CPU kind is cached, in order of preference:
    beside the bundle, then the user cache directory."""
    key = cpu_kind_key(kind or cpu_kind())
    base = os.environ.get(CACHE_ENV) or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "nnbridge"
    return [bundle.root / f"verified-{key}.json",
            Path(base) / "verify" / manifest_sha256(bundle)[:16] / f"{key}.json"]


def load_cached(bundle: Bundle) -> tuple[dict[str, Any] | None, Path | None]:
    """The cached verification on this CPU kind that still holds (same manifest, CPU kind and
    runtime versions), and where it is."""
    kind = cpu_kind()
    for path in cache_paths(bundle, kind):
        try:
            record = json.loads(path.read_text())
        except (OSError, json.JSONDecodeError):
            continue
        if (record.get("format") == FORMAT and record.get("manifest_sha256") == manifest_sha256(bundle)
                and same_cpu(record.get("cpu"), kind) and record.get("runtimes") == runtime_versions()):
            return record, path
    return None, None


def save(bundle: Bundle, record: dict[str, Any]) -> Path:
    """Write ``record`` to the first writable place of :func:`cache_paths` (atomically)."""
    errors = []
    for path in cache_paths(bundle, record["cpu"]):
        temp = None
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            with tempfile.NamedTemporaryFile("w", dir=path.parent, prefix=".verify-", suffix=".json",
                                             delete=False) as handle:
                temp = Path(handle.name)
                json.dump(record, handle, indent=2)
            os.replace(temp, path)
            return path
        except OSError as exc:
            errors.append(f"{path}: {exc.strerror or exc}")
            if temp is not None:
                temp.unlink(missing_ok=True)
    raise NNBridgeError(f"could not cache the verification ({'; '.join(errors)}); set {CACHE_ENV} to a "
                        "writable folder")


def ensure_verified(bundle: Bundle, variant: str, *, threads: int = 0) -> tuple[dict[str, Any] | None, Path | None]:
    """What ``nnbridge predict`` asks before loading ``variant``: (the verification on this CPU
    kind, where it is cached), running and caching it if this kind has not been seen; (None,
    None) when the bundle was gated on this kind or has no self-check set."""
    if not has_selfcheck(bundle) or seen_here(bundle):
        return None, None
    record, path = load_cached(bundle)
    if record is not None and variant in record["variants"]:
        return record, path
    fresh = verify_bundle(bundle, [variant], threads=threads)
    if record is not None:  # keep what was checked before for other variants
        fresh["variants"] = {**record["variants"], **fresh["variants"]}
    return fresh, save(bundle, fresh)


def failures_here(record: dict[str, Any] | None, variant: str, backend: str,
                  folds: list[str] | None = None) -> list[str]:
    """Why ``variant`` on ``backend`` fails on this CPU according to ``record`` (empty: it
    passes here, or was not re-checked)."""
    if not record:
        return []
    per_fold = (record["variants"].get(variant) or {}).get(backend) or {}
    return [f"fold {fold}: {'; '.join(result['failures'])}" for fold, result in sorted(per_fold.items())
            if (folds is None or fold in folds) and not result.get("passed", True)]


REBUILD_FOR_NO_DOT = (
    "rebuild the bundle for it: the pipeline with verify.emulated_cpus listing a QEMU model of this CPU "
    "(e.g. [Haswell] for AVX2 without VNNI) or NNBRIDGE_NO_VNNI=1 builds 7-bit INT8 weights, which compute the "
    "same outputs on CPUs with and without VNNI (config/README.md, 'Building on one kind of CPU for another')")


def rebuild_hint(bundle: Bundle, variant: str, cpu: dict[str, Any] | None) -> str | None:
    """Why a variant may fail on ``cpu`` and what helps, when its INT8 settings were chosen for a
    CPU with INT8 dot products (VNNI, AMX-INT8: 8-bit weights) and ``cpu`` has none (its kernels
    saturate or halve such weights); None otherwise."""
    built = (bundle.manifest["variants"].get(variant) or {}).get("built_for") or {}
    if not built.get("int8_dot") or cpu is None or int8_dot(cpu):
        return None
    return (f"{variant} was quantized for CPUs with INT8 dot products (VNNI, AMX-INT8), which this one lacks; "
            + REBUILD_FOR_NO_DOT)


def refusal(bundle: Bundle, record: dict[str, Any], path: Path | None, variant: str, backend: str,
            failures: list[str]) -> str:
    """The one line ``nnbridge predict`` refuses a variant that fails on this CPU with."""
    where = f"checked by nnbridge verify, cached in {path}" if path else "checked by nnbridge verify"
    hint = rebuild_hint(bundle, variant, record.get("cpu"))
    return (f"{bundle.root}: variant {variant!r} on {backend} fails its gate on this CPU, "
            f"{describe_cpu(record['cpu'])}: {' | '.join(failures)} ({where}); "
            + (f"{hint}; or " if hint else "") + "choose another --variant/--backend, or pass --allow-ungated "
            "to use it anyway")


def failed_checks(record: dict[str, Any]) -> list[tuple[str, str, str, list[str]]]:
    """(variant, runtime, fold, failures) of each re-check in ``record`` that failed here."""
    return [(name, backend, fold, result.get("failures") or ["failed"])
            for name, per_backend in record["variants"].items() for backend, per_fold in per_backend.items()
            for fold, result in sorted(per_fold.items()) if not result.get("passed", True)]


def summary_lines(record: dict[str, Any]) -> list[str]:
    """One line per variant, runtime and fold: the Dice here, the bounds and the verdict."""
    lines = [f"nnbridge verify: {record['bundle']} on {describe_cpu(record['cpu'])} "
             f"({record['seconds']:.1f} s)"]
    for name, per_backend in record["variants"].items():
        if not per_backend:
            lines.append(f"  {name:20s} no runtime passed its gate where it was gated: not re-checked")
        for backend, per_fold in per_backend.items():
            for fold, result in sorted(per_fold.items()):
                head = f"  {name:20s} {backend:12s} fold {fold}"
                if "not_rechecked" in result:
                    lines.append(f"{head}  not re-checked: {result['not_rechecked']}")
                    continue
                bounds = result["bounds"]
                text = f"worst class Dice {result['min_dice']:.4f} (bound {bounds.get('min_dice', 0):.4g}"
                if "min_case_dice" in bounds:
                    text += f"; worst case {result['min_case_dice']:.4f}, bound {bounds['min_case_dice']:.4g}"
                at = result.get("at_gate") or {}
                if at.get("min_dice") is not None:
                    text += f"; {at['min_dice']:.4f} where gated"
                verdict = "PASS" if result["passed"] else "FAIL: " + "; ".join(result["failures"])
                lines.append(f"{head}  {text})  {verdict}")
    return lines
