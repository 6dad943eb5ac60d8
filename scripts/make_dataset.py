#!/usr/bin/env python
"""Build a face-detection image set from public-domain images shipped with scikit-image.

No FFHQ or WIDER FACE can be downloaded here, so the set is made from what a registry package carries:
scikit-image's ``astronaut`` (NASA, public domain), ``camera`` (public domain), the 200 Labeled Faces in the Wild
crops of ``lfw_subset``, and face-free photographs (``coffee``, ``chelsea``, ``rocket``, ``grass``, ``gravel``,
``brick``, ``page``) as backgrounds and negatives.

Two datasets in one HDF5 file:

- ``images``: N x 128 x 128 x 3 uint8, FFHQ-like: mostly one face filling much of the frame, at several
  scales, flipped or not, some with two small faces, and about one in six with no face at all;
- ``wide``: M x 500 x 1000 x 3 uint8, WIDER-FACE-like: several faces, large and small, pasted onto a landscape
  background (one of them may have none).

The recipe is deterministic for a given ``--seed``, so ``--count 50000`` grows the same set for benchmarks.
``data/faces.h5`` (the default input of ``python -m dcnn.infer``, committed) is
``python scripts/make_dataset.py --count 48 --wide 2 --output data/faces.h5``; as every output, an existing file
is refused unless ``--force`` (which replaces only an image set made by these scripts), so the default output
regenerates the committed set only when asked: ``--force``.
Needs scikit-image (``pip install scikit-image``) only to run.
"""

from __future__ import annotations

import argparse
import sys

import h5py
import numpy as np
from PIL import Image

from dcnn.cli.common import add_common_arguments, add_force_argument, output_path, run_main
from dcnn.errors import InputError
from dcnn.io.results import replaced_whole

SIZE = 128
WIDE = (500, 1000)
#: Face boxes (left, top, right, bottom) in the 512 x 512 originals, as dlib finds them.
FACES = {"astronaut": (168, 69, 263, 164), "camera": (180, 116, 259, 195)}
BACKGROUNDS = ("coffee", "chelsea", "rocket", "grass", "gravel", "brick", "page")


def _rgb(array: np.ndarray) -> np.ndarray:
    if array.dtype != np.uint8:
        array = (np.clip(array, 0, 1) * 255).astype(np.uint8)
    return np.stack([array] * 3, axis=-1) if array.ndim == 2 else array[..., :3]


def _resize(array: np.ndarray, width: int, height: int) -> np.ndarray:
    return np.asarray(Image.fromarray(array).resize((width, height), Image.BICUBIC))


def scikit_image_data():
    """scikit-image's ``skimage.data`` (the public-domain pictures), or a one-line error naming the extra."""
    try:
        import skimage.data
    except ModuleNotFoundError:
        raise InputError("the bundled sets are made from scikit-image's pictures: pip install '.[datasets]'") from None
    return skimage.data


class Sources:
    """The scikit-image pictures the recipe draws from."""

    def __init__(self) -> None:
        data = scikit_image_data()

        self.portraits = {name: _rgb(getattr(data, name)()) for name in FACES}
        self.backgrounds = [_rgb(getattr(data, name)()) for name in BACKGROUNDS]
        self.lfw = [_rgb(face) for face in data.lfw_subset()]

    def face_crop(self, rng: np.random.Generator, margin: float) -> np.ndarray:
        """A square crop around a face: an LFW crop, or astronaut/camera with ``margin`` face-widths around."""
        if rng.random() < 0.7:
            return self.lfw[rng.integers(len(self.lfw))]
        name = list(FACES)[rng.integers(len(FACES))]
        left, top, right, bottom = FACES[name]
        side = (right - left) * (1 + 2 * margin)
        cx, cy = (left + right) / 2, (top + bottom) / 2
        image = self.portraits[name]
        x0 = int(np.clip(cx - side / 2, 0, image.shape[1] - side))
        y0 = int(np.clip(cy - side / 2, 0, image.shape[0] - side))
        return image[y0:y0 + int(side), x0:x0 + int(side)]

    def background(self, rng: np.random.Generator, width: int, height: int) -> np.ndarray:
        """A random crop of a face-free photograph, resized to ``width x height``."""
        image = self.backgrounds[rng.integers(len(self.backgrounds))]
        scale = rng.uniform(0.5, 1.0)
        h, w = int(image.shape[0] * scale), int(image.shape[1] * scale)
        aspect = width / height
        h, w = (h, min(w, int(h * aspect))) if w / h >= aspect else (min(h, int(w / aspect)), w)
        y0, x0 = rng.integers(0, image.shape[0] - h + 1), rng.integers(0, image.shape[1] - w + 1)
        return _resize(image[y0:y0 + h, x0:x0 + w], width, height).copy()


def _paste(canvas: np.ndarray, face: np.ndarray, size: int, rng: np.random.Generator) -> None:
    face = _resize(face, size, size)
    if rng.random() < 0.5:
        face = face[:, ::-1]
    y = rng.integers(0, canvas.shape[0] - size + 1)
    x = rng.integers(0, canvas.shape[1] - size + 1)
    canvas[y:y + size, x:x + size] = face


def square_image(sources: Sources, rng: np.random.Generator) -> np.ndarray:
    """One 128 x 128 image: a portrait at some scale (most), two small faces, or no face."""
    kind = rng.random()
    if kind < 1 / 6:
        return sources.background(rng, SIZE, SIZE)
    if kind < 2 / 6:
        canvas = sources.background(rng, SIZE, SIZE)
        for _ in range(2):
            _paste(canvas, sources.face_crop(rng, 0.2), int(rng.integers(44, 64)), rng)
        return canvas
    face = _resize(sources.face_crop(rng, rng.uniform(0.2, 0.8)), SIZE, SIZE)
    return face[:, ::-1].copy() if rng.random() < 0.5 else face


def wide_image(sources: Sources, rng: np.random.Generator, index: int) -> np.ndarray:
    """One 500 x 1000 image with several faces of different sizes (none in every fourth image)."""
    canvas = sources.background(rng, WIDE[1], WIDE[0])
    if index % 4 != 3:
        for size in rng.choice([48, 64, 90, 130, 180, 240], size=int(rng.integers(3, 7))):
            _paste(canvas, sources.face_crop(rng, 0.3), int(size), rng)
    return canvas


def build_parser() -> argparse.ArgumentParser:
    """The argument parser of ``scripts/make_dataset.py``."""
    parser = argparse.ArgumentParser(prog="scripts/make_dataset.py",
                                     description="Make a face image set (HDF5) from scikit-image's public-domain "
                                                 "pictures, as data/faces.h5 was made.")
    parser.add_argument("--count", type=int, default=48, help="128 x 128 images (default 48)")
    parser.add_argument("--wide", type=int, default=2, help="500 x 1000 images (default 2)")
    parser.add_argument("--seed", type=int, default=2020)
    parser.add_argument("--output", default="data/faces.h5",
                        help="the HDF5 file to write; its folder is created (default data/faces.h5, the committed "
                             "set: refused as it exists, unless --force)")
    add_force_argument(parser, "the --output file")
    add_common_arguments(parser)
    return parser


def run(args: argparse.Namespace) -> int:
    """Write the image set."""
    if args.count < 0 or args.wide < 0:
        raise InputError("--count and --wide take a number of images, at least 0")
    output = output_path(args.output, "--output", force=args.force, kind="image set")
    sources = Sources()
    rng = np.random.default_rng(args.seed)
    with replaced_whole(output) as temporary, h5py.File(temporary, "w") as handle:
        images = handle.create_dataset("images", shape=(args.count, SIZE, SIZE, 3), dtype=np.uint8,
                                       chunks=(min(args.count, 64) or 1, SIZE, SIZE, 3), compression="gzip")
        block = 4096
        for start in range(0, args.count, block):
            stop = min(args.count, start + block)
            images[start:stop] = np.stack([square_image(sources, rng) for _ in range(start, stop)])
        wide = np.stack([wide_image(sources, rng, i) for i in range(args.wide)]) if args.wide else \
            np.zeros((0, *WIDE, 3), np.uint8)
        handle.create_dataset("wide", data=wide, compression="gzip")
        for name in ("images", "wide"):
            handle[name].attrs["layout"] = "NHWC uint8 RGB"
        handle.attrs["made_by"] = f"scripts/make_dataset.py --count {args.count} --wide {args.wide} --seed {args.seed}"
        handle.attrs["sources"] = ("scikit-image data: astronaut, camera, lfw_subset (faces); "
                                   + ", ".join(BACKGROUNDS) + " (backgrounds)")
    print(f"wrote {output}: images {args.count} x {SIZE}x{SIZE}, wide {args.wide} x {WIDE[0]}x{WIDE[1]}")
    return 0


if __name__ == "__main__":
    sys.exit(run_main(run, build_parser()))
