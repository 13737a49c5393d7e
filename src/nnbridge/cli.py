"""The ``nnbridge`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from .core.errors import NNBridgeError
from .core.metadata import read_metadata
from .predict.bundle import Bundle
from .predict.predictor import Predictor
from .predict.verify import save, summary_lines, verify_bundle


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the provenance metadata nnbridge stored in an ONNX file or OpenVINO IR (.xml)."""

    meta = read_metadata(args.model)
    if not meta:
        raise NNBridgeError(f"{args.model}: no nnbridge metadata; it was not exported by nnbridge")
    if args.json:
        print(json.dumps(meta, indent=2))
        return 0
    for key, value in meta.items():
        if key in ("plans", "dataset_json") and not args.full:
            value = f"<{len(value)} characters; --full shows them>"
        print(f"{key:20s} {value}")
    return 0


def cmd_predict(args: argparse.Namespace) -> int:
    """nnUNetv2_predict on a bundle, with ONNX Runtime or OpenVINO and no torch."""

    predictor = Predictor(
        Bundle.load(args.model, verify=not args.no_verify),
        variant=args.variant,
        folds=args.folds,
        backend=args.backend,
        threads=args.threads,
        step=args.step_size,
        mirroring=not args.disable_tta,
        batch_size=args.batch_size,
        accumulate="float32" if args.fp32_accumulate else "float16",
        allow_ungated=args.allow_ungated,
        selfcheck=not args.no_selfcheck,
    )
    records = predictor.predict_folder(args.input, args.output, save_probabilities=args.save_probabilities,
                                       overwrite=not args.continue_prediction, verbose=not args.quiet)
    if not args.quiet:
        print(f"nnbridge: {len(records)} case(s) -> {args.output} "
              f"(variant {predictor.variant}, {predictor.backend}, folds {', '.join(map(str, predictor.files))})",
              file=sys.stderr)
    return 0


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="nnUNetv2_predict with an exported bundle, without torch",
                       description="Segment every case of INPUT (<case>_0000.nii.gz, ... one file per "
                       "channel) into OUTPUT (<case>.nii.gz) like nnUNetv2_predict, with the ONNX models "
                       "of a bundle the pipeline wrote.")
    p.add_argument("-i", "--input", required=True, help="folder of <case>_<XXXX><file_ending> images")
    p.add_argument("-o", "--output", required=True, help="folder for <case><file_ending> segmentations")
    p.add_argument("-m", "--model", required=True, help="bundle folder (results/<dataset>/<model>/bundle)")
    p.add_argument("-f", "--folds", nargs="+", default=None, help="folds to ensemble (default: all in the bundle)")
    p.add_argument("--variant", default=None,
                   help="bundle variant (default: the manifest's default); a bf16 variant runs on OpenVINO in "
                   "bf16 where the CPU has it natively, else in fp32")
    p.add_argument("--backend", choices=("onnxruntime", "openvino"), default=None,
                   help="runtime (default: the fastest one that passed the variant's parity gate)")
    p.add_argument("-step_size", "--step-size", dest="step_size", type=float, default=0.5,
                   help="sliding-window step as a fraction of the patch (nnU-Net default 0.5)")
    p.add_argument("--disable_tta", "--disable-tta", dest="disable_tta", action="store_true",
                   help="no test-time mirroring (faster, slightly different result)")
    p.add_argument("--save_probabilities", "--save-probabilities", dest="save_probabilities",
                   action="store_true", help="also write <case>.npz (probabilities) and <case>.pkl")
    p.add_argument("--continue_prediction", "--continue-prediction", dest="continue_prediction",
                   action="store_true", help="skip cases whose output exists")
    p.add_argument("--threads", type=int, default=None,
                   help="runtime threads (default: the fastest count in the pipeline's benchmark sweep, "
                   "recorded in the bundle, at most this machine's CPUs; 0 = the runtime's choice)")
    p.add_argument("--batch-size", type=int, default=None,
                   help="windows per network call (default: the bundle's choice from the benchmark sweep, else 1)")
    p.add_argument("--fp32-accumulate", action="store_true",
                   help="sum window logits in float32 (nnU-Net sums in float16)")
    p.add_argument("--allow-ungated", action="store_true",
                   help="use a variant that failed its parity gate (where gated, or on this CPU)")
    p.add_argument("--no-selfcheck", action="store_true",
                   help="skip re-checking the variant on a CPU kind the bundle has not seen (nnbridge verify)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle files")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=cmd_predict)


def cmd_verify(args: argparse.Namespace) -> int:
    """Re-check each variant's gate on this machine with the bundle's self-check set."""

    bundle = Bundle.load(args.model, verify=not args.no_verify)
    record = verify_bundle(bundle, args.variant, backends=args.backend, threads=args.threads)
    record["cached_in"] = str(save(bundle, record))
    if args.json:
        print(json.dumps(record, indent=2))
    else:
        print("\n".join(summary_lines(record)))
        print(f"nnbridge verify: result cached in {record['cached_in']} (nnbridge predict reads it)")
    failed = [(n, b, f) for n, per in record["variants"].items() for b, folds in per.items()
              for f, r in folds.items() if not r.get("passed", True)]
    return 1 if failed else 0


def add_verify_parser(sub) -> None:
    p = sub.add_parser("verify", help="re-check a bundle's variants on this machine, without torch",
                       description="Run each variant of a bundle that passed its gate on the self-check set the "
                       "bundle ships (held-out patches with PyTorch's label maps) and check its Dice here against "
                       "its gate. Exit status 1 when a variant fails on this CPU; nnbridge predict then refuses it. "
                       "The result is cached beside the bundle (or in the user cache directory).")
    p.add_argument("-m", "--model", required=True, help="bundle folder (results/<dataset>/<model>/bundle)")
    p.add_argument("--variant", nargs="+", default=None, help="variants to check (default all)")
    p.add_argument("--backend", nargs="+", choices=("onnxruntime", "openvino"), default=None,
                   help="runtimes to check (default each one that passed the variant's gate)")
    p.add_argument("--threads", type=int, default=0, help="runtime threads (default: the runtime's choice)")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle files")
    p.set_defaults(func=cmd_verify)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnbridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="show the provenance stored in an exported ONNX model or OpenVINO IR")
    inspect.add_argument("model", help="ONNX file or OpenVINO IR .xml written by nnbridge")
    inspect.add_argument("--json", action="store_true", help="print as JSON")
    inspect.add_argument("--full", action="store_true", help="include plans and dataset.json")
    inspect.set_defaults(func=cmd_inspect)
    add_predict_parser(sub)
    add_verify_parser(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except NNBridgeError as exc:
        print(f"nnbridge: error: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":
    sys.exit(main())
