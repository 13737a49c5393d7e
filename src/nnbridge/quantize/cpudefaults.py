"""Quantization defaults decided by the CPU: the settings a quantize entry leaves out (``null`` in
the schema: not given) are chosen from the CPU's INT8 features, and every choice is recorded
with its reason; a setting the user gives always wins.

What decides (:func:`decision_features`): the architecture, AVX2, and whether INT8 dot products
sum u8×s8 products without saturation (VNNI, AMX-INT8; :data:`nnbridge.core.cpu.INT8_DOT_FLAGS`).

* ``reduce_range`` (static and dynamic INT8, ONNX Runtime's quantizer): on x86 without INT8 dot
  products ONNX Runtime's kernels sum pairs of u8×s8 products in saturating int16
  (``vpmaddubsw``); 7-bit weights keep those sums in range. ONNX Runtime recommends it for CPUs
  without VNNI; measured on an AVX2-only AMD EPYC (demo nnU-Net, static INT8): worst-class Dice
  against PyTorch 0.9605 with 8-bit weights, 0.9888 with 7-bit ones. Elsewhere full 8 bits.
* activation type (static: ``symmetric_activations``): u8 with a zero point on x86 (its INT8
  kernels take u8 activations; ONNX Runtime shifts s8 ones to u8 there), s8 symmetric on ARM.
* weight type (static: ``weight_type``): s8 on every CPU (ONNX Runtime's advice with either
  activation type, and what OpenVINO runs in INT8); recorded. u8 weights (ONNX Runtime's U8U8
  kernels sum in int32: no saturation, full 8 bits, on any x86) are accuracy-aware INT8's last
  fallback where 7-bit weights were chosen for a CPU without INT8 dot products
  (:func:`.accuracy.accuracy_aware_int8`), or given.
* ``overflow_fix`` (nncf, openvino_int8): NNCF's counterpart of ``reduce_range``: ``disable`` with
  INT8 dot products, else ``enable`` (7-bit weights in every layer). Not NNCF's own default,
  ``first_layer_only``: without VNNI OpenVINO's kernels (oneDNN) halve the weights of the layers
  left at 8 bits when they run, so such a file computes other outputs there than on the machine
  that may have gated it; with every layer at 7 bits the outputs are the same bit for bit on CPUs
  with and without VNNI (measured under QEMU's emulated Haswell on an AMD EPYC Zen 4 host, the
  test suite's 2-epoch demo nnU-Net, 2 folds, at the same worst-class Dice: 0.9957 / 0.9905 vs
  0.9927 / 0.9905 natively with ``first_layer_only``),
  and ONNX Runtime runs an ``nncf`` file's 7-bit weights without saturation, as with
  ``reduce_range``.
* whether an ONNX Runtime INT8 variant is worth building: not on x86 without AVX2 (only SSE4.1
  INT8 kernels there); recorded as advice: the file is still written, gated and benchmarked.

The pipeline decides once, on the machine that builds the workflow's DAG, and passes the
features to the job (:func:`quantize_cpu_params`; they are the rule's params, so a job on a CPU
of another kind reruns exactly the variants whose defaults depend on the features that changed).
"""

from __future__ import annotations

from typing import Any

from ..core.cpu import cpu_identity, cpu_kind, int8_dot

X86 = ("x86_64", "amd64", "i386", "i686", "x86")

# settings the CPU decides when the quantize entry leaves them out, per method
CPU_DECIDED = {"static": ("reduce_range", "symmetric_activations"), "dynamic": ("reduce_range",),
               "nncf": ("overflow_fix",), "openvino_int8": ("overflow_fix",)}


def decision_features(identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The CPU features the defaults depend on (nothing else, so that CPUs alike in these share
    the pipeline's cache): ``arch`` (x86 or the machine name), ``avx2``, ``int8_dot`` (the
    VNNI/AMX-INT8 flags), and ``forced`` when ``NNBRIDGE_NO_VNNI`` took them away."""
    identity = identity if identity is not None else cpu_identity()
    arch = str(identity.get("arch") or "x86_64").lower()
    features: dict[str, Any] = {"arch": "x86" if arch in X86 else arch,
                                "avx2": "avx2" in (identity.get("isa") or []),
                                "int8_dot": int8_dot(identity)}
    if identity.get("forced"):
        features["forced"] = list(identity["forced"])
    return features


def _undecided(settings: dict[str, Any]) -> list[str]:
    """The CPU-decided settings this entry leaves out."""
    method = settings.get("method", "static")
    return [k for k in CPU_DECIDED.get(method, ()) if settings.get(k) is None]


def quantize_cpu_params(settings: dict[str, Any], identity: dict[str, Any] | None = None) -> dict[str, Any]:
    """The CPU features a quantize entry's defaults depend on when it leaves any CPU-decided
    setting out: ``arch``, ``avx2`` and ``int8_dot`` (whether it has any; which one does not
    change a choice), else ``{}`` (nothing about the CPU matters, and a job on another CPU kind
    reuses the file); ``for``: the deployment CPUs (config ``verify.emulated_cpus``) that changed
    them, when ``identity`` is :func:`nnbridge.core.cpu.least_capable` of this machine and those.
    The quantize rule's ``cpu`` param."""
    if not _undecided(settings):
        return {}
    features = decision_features(identity)
    out = {"arch": features["arch"], "avx2": features["avx2"], "int8_dot": bool(features["int8_dot"])}
    if identity and identity.get("targets"):  # deployment CPUs took features away: named where they decide
        host = decision_features({**identity, "isa": identity.get("host_isa") or []})
        if (host["avx2"], bool(host["int8_dot"])) != (out["avx2"], out["int8_dot"]):
            out["for"] = sorted(identity["targets"])
    return out


def _dot_text(features: dict[str, Any]) -> str:
    forced = f" ({', '.join(features['forced'])})" if features.get("forced") else ""
    if features.get("for"):
        forced += f" (the deployment CPU(s) {', '.join(features['for'])} of verify.emulated_cpus)"
    dot = features.get("int8_dot")
    if not dot:
        return f"no INT8 dot products (VNNI, AMX-INT8){forced}"
    return f"INT8 dot products ({', '.join(dot) if isinstance(dot, list) else 'VNNI or AMX-INT8'})"


def resolve(settings: dict[str, Any], features: dict[str, Any]) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    """``settings`` with the CPU-decided ones it leaves out filled in for a CPU with ``features``
    (:func:`decision_features`), and the choices: ``{"setting", "value", "given", "why"}`` each,
    given ones included (so the record says what was used and who decided)."""
    method = settings.get("method", "static")
    out = dict(settings)
    choices: list[dict[str, Any]] = []
    x86 = features.get("arch") == "x86"
    dot = bool(features.get("int8_dot"))

    def choose(key: str, value: Any, why: str) -> None:
        given = settings.get(key) is not None
        out[key] = settings[key] if given else value
        choices.append({"setting": key, "value": out[key], "given": given,
                        "why": "given in the quantize entry" if given else why})

    if method in ("static", "dynamic"):
        if not x86:
            why = f"not an x86 CPU ({features.get('arch')}): the int16 saturation of x86's INT8 kernels does not arise"
            choose("reduce_range", False, why)
        elif dot:
            choose("reduce_range", False, f"{_dot_text(features)} sum u8×s8 products in int32 without "
                   "saturation: full 8-bit weights")
        else:
            choose("reduce_range", True, f"{_dot_text(features)}: ONNX Runtime's x86 INT8 kernels sum pairs of "
                   "u8×s8 products in saturating int16 (vpmaddubsw); 7-bit weights keep them in range "
                   "(ONNX Runtime's advice for CPUs without VNNI)")
        if method == "static":
            if x86:
                choose("symmetric_activations", False, "x86: ONNX Runtime's INT8 kernels take u8 activations "
                       "(s8 ones are shifted to u8), so asymmetric u8 activations with a zero point")
            else:
                choose("symmetric_activations", True, f"{features.get('arch')}: ONNX Runtime's ARM kernels take "
                       "s8 activations, so symmetric s8 ones")
        if method == "static":
            choose("weight_type", "s8", "s8 weights: ONNX Runtime's advice on every CPU (and the INT8 convolutions "
                   "OpenVINO runs); without INT8 dot products accuracy-aware INT8 may fall back to u8 weights, "
                   "whose kernels do not saturate")
        else:
            choices.append({"setting": "weight_type", "value": "s8", "given": False,
                            "why": "s8 weights: ONNX Runtime's advice on every CPU"})
        worth = not x86 or features.get("avx2", False)
        choices.append({"setting": "onnxruntime_int8", "value": "worth building" if worth else "not worth building",
                        "given": False,
                        "why": (("INT8 dot products run natively" if dot else "AVX2 INT8 kernels (saturation "
                                 "handled by reduce_range)") if worth else
                                "x86 without AVX2: ONNX Runtime has only SSE4.1 INT8 kernels here; built and "
                                "gated anyway, the benchmark shows whether it pays")})
    elif method in ("nncf", "openvino_int8"):
        if dot or not x86:
            choose("overflow_fix", "disable", f"{_dot_text(features) if x86 else features.get('arch')}: no "
                   "int16 saturation, so every layer keeps the full 8-bit weight range")
        else:
            choose("overflow_fix", "enable", f"{_dot_text(features)}: 7-bit weights in every layer, so no "
                   "int16 saturation on ONNX Runtime and the same outputs on OpenVINO with and without VNNI "
                   "(with NNCF's first_layer_only, OpenVINO halves the other layers' 8-bit weights at run time "
                   "on such CPUs: other outputs than where the file was gated)")
    return out, choices


def cpu_record(features: dict[str, Any], choices: list[dict[str, Any]], *, from_pipeline: bool) -> dict[str, Any]:
    """The quantize record's ``cpu`` entry: the features the defaults were decided for, the
    choices, and the CPU kind the job ran on (with a note when the two differ)."""
    here = cpu_kind()
    record: dict[str, Any] = {"decided_for": features, "ran_on": here, "choices": choices,
                              "decided_by": "the pipeline (features of the machine that built the DAG)"
                              if from_pipeline else "this machine"}
    mine = decision_features(here)
    def kind(f: dict[str, Any]) -> tuple:  # what the choices depend on
        return f.get("arch"), bool(f.get("avx2")), bool(f.get("int8_dot"))

    if from_pipeline and features and kind(features) != kind(mine):
        record["note"] = (f"decided for a CPU with {_dot_text(features)}, but this job ran on one with "
                          f"{_dot_text(mine)}; give the settings explicitly to pin them")
    return record
