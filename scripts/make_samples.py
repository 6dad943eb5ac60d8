#!/usr/bin/env python
"""Build ``data/samples.h5``, the bundled default image set of ``python -m dcnn.infer``.

Four public-domain photographs shipped with scikit-image (``pip install scikit-image``; needed only to run
this script), centre-cropped to squares and resized to 224 x 224 RGB with Pillow:
astronaut (NASA), coffee (Rachel Michetti, CC0), chelsea (Stefan van der Walt, CC0), rocket (NASA).

Usage: ``python scripts/make_samples.py [--output data/samples.h5] [--size 224]``
"""

import argparse

import h5py
import numpy as np
from PIL import Image

SOURCES = ("astronaut", "coffee", "chelsea", "rocket")


def square_resize(pixels: np.ndarray, size: int) -> np.ndarray:
    """Centre-crop to a square and resize with bicubic resampling."""
    height, width = pixels.shape[:2]
    side = min(height, width)
    top, left = (height - side) // 2, (width - side) // 2
    crop = Image.fromarray(pixels[top:top + side, left:left + side])
    return np.asarray(crop.resize((size, size), Image.BICUBIC))


def main() -> None:
    import skimage.data

    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", default="data/samples.h5")
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()
    images = np.stack([square_resize(getattr(skimage.data, name)()[..., :3], args.size) for name in SOURCES])
    with h5py.File(args.output, "w") as handle:
        data = handle.create_dataset("images", data=images, compression="gzip", compression_opts=6)
        data.attrs["layout"] = "NHWC uint8 RGB"
        handle.create_dataset("names", data=np.array(SOURCES, dtype="S"))
        handle.attrs["source"] = "scikit-image data: astronaut, coffee, chelsea, rocket (public domain / CC0)"
        handle.attrs["made_by"] = "scripts/make_samples.py"
    print(f"wrote {args.output}: {images.shape} {images.dtype}")


if __name__ == "__main__":
    main()
