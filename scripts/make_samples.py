#!/usr/bin/env python
"""Build ``data/samples.h5``, the bundled default image set of ``python -m dcnn.infer``.

Four public-domain photographs shipped with scikit-image (the ``[datasets]`` extra; needed only to run
this script), centre-cropped to squares and resized to 224 x 224 RGB with Pillow:
astronaut (NASA), coffee (Rachel Michetti, CC0), chelsea (Stefan van der Walt, CC0), rocket (NASA).

Usage: ``python scripts/make_samples.py [--output data/samples.h5] [--size 224] [--force]`` (an existing
``--output``, the committed ``data/samples.h5`` by default, is replaced only with ``--force``)
"""

import argparse
import sys

import h5py
import numpy as np
from make_dataset import scikit_image_data
from PIL import Image

from dcnn.cli.common import add_common_arguments, add_force_argument, output_path, run_main
from dcnn.errors import InputError
from dcnn.io.results import replaced_whole

SOURCES = ("astronaut", "coffee", "chelsea", "rocket")


def square_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize with bicubic resampling."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(pixels[top:top + side, left:left + side])
    return np.asarray(crop.resize((size, size), Image.BICUBIC))


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scripts/make_samples.py``."""
    parser = argparse.ArgumentParser(prog="scripts/make_samples.py",
                                     description="Build data/samples.h5, four photographs for the classifiers.")
    parser.add_argument("--output", default="data/samples.h5",
                        help="the HDF5 file to write; its folder is created (default data/samples.h5)")
    parser.add_argument("--size", type=int, default=224, help="side of the square images (default 224)")
    add_force_argument(parser, "the --output file")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the image set."""
    if args.size < 1:
        raise InputError(f"--size must be at least 1, got {args.size}")
    output = output_path(args.output, "--output", force=args.force, kind="image set")
    data = scikit_image_data()
    images = np.stack([square_resize(getattr(data, name)()[..., :3], args.size) for name in SOURCES])
    with replaced_whole(output) as temporary, h5py.File(temporary, "w") as handle:
        data = handle.create_dataset("images", data=images, compression="gzip", compression_opts=6)
        data.attrs["layout"] = "NHWC uint8 RGB"
        handle.create_dataset("names", data=np.array(SOURCES, dtype="S"))
        handle.attrs["source"] = "scikit-image data: astronaut, coffee, chelsea, rocket (public domain / CC0)"
        handle.attrs["made_by"] = "scripts/make_samples.py"
    print(f"wrote {output}: {images.shape} {images.dtype}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(run, build_parser()))
