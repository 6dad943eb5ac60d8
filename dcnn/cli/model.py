"""``python -m dcnn.model``: print a model's per-layer cost table (the paper's N_l, M_l and C_l).

Example: ``python -m dcnn.model vgg16 --input 3x224x224``.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from dcnn.cli.common import add_common_arguments, launcher_rank, run_main
from dcnn.network.graph import format_cost_table, parse_shape
from dcnn.network.zoo import get_model, model_names

__all__ = ["main"]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``python -m dcnn.model``."""
    parser = argparse.ArgumentParser(
        prog="python -m dcnn.model",
        description="Print a model's layers with output shapes, parameters (N_l), parameter bytes (M_l), "
                    "MACs (C_l) and activation bytes, with totals.")
    parser.add_argument("model", help=f"one of: {', '.join(model_names())}")
    parser.add_argument("--input", metavar="CxHxW", help="per-image input shape (default: the model's own)")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Print the table."""
    network = get_model(args.model)
    shape = parse_shape(args.input) if args.input else None
    if shape is not None and len(shape) == 2:
        shape = (network.in_channels, *shape)
    table = format_cost_table(network, shape)
    if launcher_rank() == 0:
        print(table)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of ``python -m dcnn.model``."""
    return run_main(run, build_parser(), argv)


if __name__ == "__main__":
    sys.exit(main())
