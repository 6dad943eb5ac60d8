"""The header scan: every image's size and readability, checked before any work (pure: no MPI).

Before a run starts, every image of the input is probed (:meth:`dcnn.images.ImageSet.probe`): a folder's files
have their headers read and their structure verified without decoding pixels (Pillow's ``verify``; for PNG every
chunk's CRC up to IEND, which finds truncated files, text files named ``.png`` and empty files), an HDF5 set has
one shape for all of its images. Each distinct size is then mapped to the network input it makes; a size the
model cannot take (a thumbnail smaller than its receptive field) makes its images unusable.

JPEG files (and BMP, TIFF, WebP and the other formats of :data:`dcnn.io.images.PHOTO_FORMATS`) have no checksums:
``verify`` reads only their header (which also tells a floating-point image, unusable), so a truncated file is
found when it is decoded. With ``--skip-unreadable`` such an image is skipped and recorded then (see
:mod:`dcnn.exec.workloads`);
without it, the run stops naming the file and the finished images can be resumed.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from dcnn.errors import DcnnError, InputError
from dcnn.io.images import ImageSet
from dcnn.network.layers import Shape

__all__ = ["Scan", "Skip", "scan_images", "skip_for", "unusable_message"]

#: Unusable files named in a refusal; the rest are counted.
NAMED_FILES = 3


@dataclass(frozen=True)
class Skip:
    """An image that is not computed: its index in the input, where it comes from, and why."""

    index: int
    path: str
    reason: str


@dataclass
class Scan:
    """What the header scan found.

    Attributes
    ----------
    shapes : list of tuple
        The distinct network inputs ``(C, H, W)``, in order of first appearance.
    shape_of : numpy.ndarray
        ``(N,)`` int32: per image, its index in ``shapes``, or -1 when it is skipped.
    skipped : list of Skip
        The unreadable and unusable images, by index.
    """

    shapes: list[Shape]
    shape_of: np.ndarray
    skipped: list[Skip] = field(default_factory=list)

    def counts(self) -> dict[Shape, int]:
        """Images per distinct network input shape (skipped images left out)."""
        counts = np.bincount(self.shape_of[self.shape_of >= 0], minlength=len(self.shapes))
        return {shape: int(count) for shape, count in zip(self.shapes, counts)}

    def first_index(self, shape: Shape) -> int:
        """The first image whose input has ``shape`` (to name it in messages)."""
        return int(np.flatnonzero(self.shape_of == self.shapes.index(shape))[0])


def scan_images(images: ImageSet, input_shape: Callable[[int, int], Shape]) -> Scan:
    """Probe every image and map each distinct size to its network input.

    Parameters
    ----------
    images : ImageSet
        The input. A set whose images all have one size (:attr:`~dcnn.images.ImageSet.uniform`, an HDF5
        dataset) is probed once.
    input_shape : callable
        ``input_shape(height, width)``: the per-image network input for an image size; raises
        :class:`~dcnn.errors.DcnnError` (e.g. :class:`~dcnn.errors.ShapeError`, whose message names the size and
        becomes the reason) for a size the model cannot take. It is called once per distinct size.
    """
    outcomes: dict[tuple[int, int], int | str] = {}
    shapes: list[Shape] = []
    shape_of = np.full(len(images), -1, np.int32)
    skipped = []
    for index in range(1 if images.uniform else len(images)):
        try:
            size = images.probe(index)
        except InputError as error:
            skipped.append(skip_for(images, index, error))
            continue
        if size not in outcomes:
            try:
                shapes.append(tuple(input_shape(*size)))
                outcomes[size] = len(shapes) - 1
            except DcnnError as error:
                outcomes[size] = str(error)
        outcome = outcomes[size]
        if isinstance(outcome, str):
            skipped.append(Skip(index, images.name(index), outcome))
        else:
            shape_of[index] = outcome
    if images.uniform:
        shape_of[:] = shape_of[0]
        skipped = [Skip(index, images.name(index), skipped[0].reason) for index in range(len(images))] \
            if skipped else []
    return Scan(shapes, shape_of, skipped)


def skip_for(images: ImageSet, index: int, error: DcnnError) -> Skip:
    """The record of image ``index`` that could not be used: its path, and the error without the path it starts
    with (the path is recorded beside it)."""
    path, message = images.name(index), str(error)
    return Skip(index, path, message[len(path) + 2:] if message.startswith(f"{path}: ") else message)


def unusable_message(source: str, skipped: list[Skip], total: int) -> str:
    """One line naming the first unusable images and counting the rest."""
    named = "; ".join(f"{skip.path}: {skip.reason}" for skip in skipped[:NAMED_FILES])
    more = f"; and {len(skipped) - NAMED_FILES} more" if len(skipped) > NAMED_FILES else ""
    return (f"{source}: {len(skipped)} of {total} images cannot be used ({named}{more}); fix or remove them, "
            f"or run with --skip-unreadable to compute the rest and record these in the result file")
