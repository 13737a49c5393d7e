"""The ``nnbridge`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from .core.errors import NNBridgeError
from .core.metadata import read_metadata
from .predict.bundle import Bundle
from .predict.components import read_steps
from .predict.ensemble import EnsemblePredictor
from .predict.predictor import Predictor, check_part
from .predict.verify import failed_checks, rebuild_hint, save, summary_lines, verify_bundle


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
    """nnUNetv2_predict (and nnUNetv2_ensemble, nnUNetv2_apply_postprocessing) on bundles, with
    ONNX Runtime or OpenVINO and no torch."""

    if not 0 < args.step_size <= 1:  # checked before anything is read or written
        raise NNBridgeError(f"--step-size {args.step_size}: the sliding window's step must be in (0, 1] (a fraction "
                            "of the patch size; nnU-Net's default 0.5)")
    check_part(args.part_id, args.num_parts)
    steps = read_steps(args.postprocessing) if args.postprocessing else None
    members = [
        Predictor(
            Bundle.load(model, verify=not args.no_verify),
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
            postprocessing=not args.no_postprocessing and len(args.model) == 1,
            postprocessing_steps=steps if len(args.model) == 1 and not args.no_postprocessing else None,
        )
        for model in args.model
    ]
    predictor: Predictor | EnsemblePredictor = members[0]
    if len(members) > 1:
        predictor = EnsemblePredictor(members, postprocessing=not args.no_postprocessing,
                                      postprocessing_steps=None if args.no_postprocessing else steps)
    records = predictor.predict_folder(args.input, args.output, save_probabilities=args.save_probabilities,
                                       overwrite=not args.continue_prediction, verbose=not args.quiet,
                                       part=(args.part_id, args.num_parts))
    if not args.quiet:
        used = "; ".join(f"{m.bundle.model or m.bundle.root}: variant {m.variant}, {m.backend}, folds "
                         f"{', '.join(map(str, m.files))}" for m in members)
        print(f"nnbridge: {len(records)} case(s) -> {args.output} ({used})", file=sys.stderr)
    return 0


def add_predict_parser(sub) -> None:
    p = sub.add_parser("predict", help="nnUNetv2_predict with exported bundles (cascades, ensembles, "
                       "postprocessing), without torch",
                       description="Segment every case of INPUT (<case>_0000.nii.gz, ... one file per "
                       "channel) into OUTPUT (<case>.nii.gz) like nnUNetv2_predict, with the ONNX models "
                       "of a bundle the pipeline wrote. A cascade's bundle (3d_cascade_fullres) holds its "
                       "3d_lowres stage and runs both, like nnUNetv2_predict with -prev_stage_predictions. "
                       "Several bundles (-m A B) are ensembled like nnUNetv2_ensemble (probabilities "
                       "averaged). Then the postprocessing nnUNetv2_find_best_configuration chose for the "
                       "model (or for the ensemble of exactly these models), as recorded in the bundle, is "
                       "applied like nnUNetv2_apply_postprocessing.")
    p.add_argument("-i", "--input", required=True, help="folder of <case>_<XXXX><file_ending> images")
    p.add_argument("-o", "--output", required=True, help="folder for <case><file_ending> segmentations")
    p.add_argument("-m", "--model", required=True, nargs="+",
                   help="bundle folder (results/<dataset>/<model>/bundle); two or more: an ensemble of "
                   "configurations (e.g. the 2d and the 3d_fullres bundle)")
    p.add_argument("-f", "--folds", nargs="+", default=None,
                   help="folds to ensemble (default: all in the bundle); the same for every bundle and stage")
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
                   action="store_true", help="also write <case>.npz (probabilities; of an ensemble: the "
                   "average) and <case>.pkl")
    p.add_argument("--continue_prediction", "--continue-prediction", dest="continue_prediction",
                   action="store_true", help="skip cases whose output exists")
    p.add_argument("-num_parts", "--num-parts", dest="num_parts", type=int, default=1,
                   help="number of separate calls the cases are split over (nnUNetv2_predict's -num_parts; "
                   "e.g. a Slurm array), all writing into OUTPUT; default 1: this call predicts every case")
    p.add_argument("-part_id", "--part-id", dest="part_id", type=int, default=0,
                   help="which of those calls this is, from 0 to num_parts - 1: it predicts every num_parts-th "
                   "case of the sorted case list from this one on (as nnUNetv2_predict splits them)")
    p.add_argument("--no-postprocessing", action="store_true",
                   help="write the segmentation without nnU-Net's postprocessing (the raw prediction, as "
                   "nnUNetv2_predict/nnUNetv2_ensemble write it)")
    p.add_argument("--postprocessing", default=None, metavar="FILE",
                   help="apply this postprocessing.pkl (read safely: nnU-Net's function and labels only) or "
                   "steps JSON instead of the one recorded in the bundle")
    p.add_argument("--threads", type=int, default=None,
                   help="runtime threads (default: the fastest count in the pipeline's benchmark sweep, "
                   "recorded in the bundle, at most the CPUs this process may use (a Slurm job's -c, "
                   "taskset); 0 = the runtime's choice)")
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
    """Re-check each variant's gate on this machine with the bundle's self-check set (a cascade:
    each stage's)."""

    outer = Bundle.load(args.model, verify=not args.no_verify)
    stages = [b for b in (outer.previous_stage, outer) if b is not None]
    records, failed = [], []
    for bundle in stages:
        record = verify_bundle(bundle, args.variant, backends=args.backend, threads=args.threads)
        record["cached_in"] = None if args.no_cache else str(save(bundle, record))
        records.append(record)
        failed += failed_checks(record)
    if args.json:
        print(json.dumps(records[0] if len(records) == 1 else
                         {b.configuration: r for b, r in zip(stages, records)}, indent=2))
    else:
        for bundle, record in zip(stages, records):
            if len(stages) > 1:
                print(f"{bundle.configuration} stage ({bundle.root}):")
            print("\n".join(summary_lines(record)))
            for hint in sorted({rebuild_hint(bundle, name, record["cpu"]) for name, *_ in failed_checks(record)}
                               - {None}):
                print(f"nnbridge verify: {hint}")
            if record["cached_in"]:
                print(f"nnbridge verify: result cached in {record['cached_in']} (nnbridge predict reads it)")
    return 1 if failed else 0


def add_verify_parser(sub) -> None:
    p = sub.add_parser("verify", help="re-check a bundle's variants on this machine, without torch",
                       description="Run each variant of a bundle that passed its gate on the self-check set the "
                       "bundle ships (held-out patches with PyTorch's label maps) and check its Dice here against "
                       "its gate (a cascade's bundle: both stages). Exit status 1 when a variant fails on this "
                       "CPU; nnbridge predict then refuses it. The result is cached beside the bundle (or in the user cache directory).")
    p.add_argument("-m", "--model", required=True, help="bundle folder (results/<dataset>/<model>/bundle)")
    p.add_argument("--variant", nargs="+", default=None, help="variants to check (default all)")
    p.add_argument("--backend", nargs="+", choices=("onnxruntime", "openvino"), default=None,
                   help="runtimes to check (default each one that passed the variant's gate)")
    p.add_argument("--threads", type=int, default=0, help="runtime threads (default: the runtime's choice)")
    p.add_argument("--json", action="store_true", help="print the whole record as JSON")
    p.add_argument("--no-cache", action="store_true",
                   help="do not cache the result (beside the bundle or in the user cache directory)")
    p.add_argument("--no-verify", action="store_true", help="skip the sha256 check of the bundle files")
    p.set_defaults(func=cmd_verify)


class OneLineParser(argparse.ArgumentParser):
    """argparse's parser, except that a usage error is one line naming the fix (argparse prints
    the whole usage block first); exit status 2 as before. Sub-commands' parsers are of this class
    too (argparse makes them of the parent's)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message}; see {self.prog} --help\n")


def build_parser() -> argparse.ArgumentParser:
    parser = OneLineParser(prog="nnbridge", description=__doc__)
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
