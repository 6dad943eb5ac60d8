"""``python -m dcnn.model``: print a model's per-layer cost table (the paper's N_l, M_l and C_l).

Example: ``python -m dcnn.model vgg16 --input 3x224x224``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dcnn.cli.common import add_common_arguments, run_main
from dcnn.exec.workloads import DETECTOR, DETECTOR_IMAGE, is_detector, workload_input, workload_names
from dcnn.network.graph import format_cost_table, format_shape

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dcnn.model``."""
    parser = argparse.ArgumentParser(
        prog="python -m dcnn.model",
        description="Print a model's layers with output shapes, parameters (N_l), parameter bytes (M_l), "
                    "MACs (C_l) and activation bytes, with totals.")
    parser.add_argument("model", help=f"one of: {', '.join(workload_names())} ({DETECTOR}: dlib's face detector), "
                                      "or an ONNX model file (a path ending in .onnx, or any existing file)")
    parser.add_argument("--input", metavar="[Cx]HxW",
                        help=f"per-image input (classifiers and ONNX files: default the model's own, 224 for a "
                             f"dynamic height or width; {DETECTOR}: the image size, "
                             f"default {DETECTOR_IMAGE[0]}x{DETECTOR_IMAGE[1]}, whose network input is the image "
                             "pyramid)")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the table."""
    network, shape, size = workload_input(args.model, args.input)
    if is_detector(args.model):
        print(f"{network.name} on {size} images (network input: the image pyramid, {format_shape(shape)})")
    print(format_cost_table(network, shape))
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dcnn.model``."""
    return run_main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
