"""The ``nnbridge`` command line."""

from __future__ import annotations

import argparse
import json
import sys

from .errors import NNBridgeError


def cmd_inspect(args: argparse.Namespace) -> int:
    """Print the provenance metadata nnbridge stored in an ONNX file."""
    from .export import read_metadata  # noqa: PLC0415

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


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="nnbridge", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    inspect = sub.add_parser("inspect", help="show the provenance stored in an exported ONNX model")
    inspect.add_argument("model", help="ONNX file written by nnbridge")
    inspect.add_argument("--json", action="store_true", help="print as JSON")
    inspect.add_argument("--full", action="store_true", help="include plans and dataset.json")
    inspect.set_defaults(func=cmd_inspect)
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
