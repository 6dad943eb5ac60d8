"""dlib's ``num_jitters``: random crops, rotations and mirror images of a face chip, and dlib's ``rand``.

dlib's ``jitter_image`` (dlib/image_transforms/interpolation.h) draws, from a ``dlib::rand``, in this order:
a shift ``(x, y)`` of up to 2% of the chip (shrunk by 3 pixels a side) rounded to whole pixels, a scale in
``[0.97, 0.99999)``, an angle in ``[-3, 3)`` degrees, and a coin for the left-right mirror. The crop, a square
of ``int(height / scale)`` pixels centred on the shifted centre, is cut back to the chip size with
:func:`~dcnn.faces.chips.extract_image_chips`. It changes no colours (dlib's separate ``disturb_colors`` is
not part of ``compute_face_descriptor``). The descriptor of a jittered face is the float32 mean of the
network's outputs over the jittered chips; dlib does this only for ``num_jitters > 1``.

``dlib::rand`` is the 32-bit Mersenne Twister (MT19937) with its standard default seed 5489, of which the first
10,000 outputs are skipped; a double in ``[0, 1)`` is ``(2**24 a' + b') / (2**48 - 1 + 0.05)`` from two outputs
``a, b`` masked to 24 bits (dlib/rand/rand_kernel_1.h).

dlib's recogniser keeps one generator for its whole life, so its jitters depend on every face described
before. dcnn starts every face from a fresh generator instead (what dlib draws for the first face of a
freshly loaded model), so a face's descriptor does not depend on which rank described it or in what order.
"""

from __future__ import annotations

import math
from collections.abc import Iterator

import numpy as np

from dcnn.faces.chips import ChipDetails, extract_image_chips

__all__ = ["DlibRand", "jitter_chip", "jittered_batches", "jittered_chips"]

MAX_ROTATION_DEGREES = 3.0
MIN_OBJECT_HEIGHT, MAX_OBJECT_HEIGHT = 0.97, 0.99999
TRANSLATE_AMOUNT = 0.02
#: dlib's divisor of the 48-bit random integer: ``0xFFFFFF * 0x1000000 + 0xFFFFFF + 0.05``.
MAX_VALUE = float(0xFFFFFF) * 0x1000000 + 0xFFFFFF + 0.05
DEFAULT_SEED = 5489
WARM_UP = 10000


class DlibRand:
    """A ``dlib::rand`` in its default state (no seed string)."""

    def __init__(self) -> None:
        self._generator = np.random.RandomState(DEFAULT_SEED)._bit_generator  # MT19937, init_genrand(5489)
        self._generator.random_raw(WARM_UP)

    def random_double(self) -> float:
        """``get_random_double``: a double in ``[0, 1)`` from two 24-bit draws."""
        high, low = (int(v) & 0xFFFFFF for v in self._generator.random_raw(2))
        value = (float(high) * 0x1000000 + low) / MAX_VALUE
        return value if value < 1.0 else 1.0 - np.finfo(float).eps

    def double_in_range(self, begin: float, end: float) -> float:
        """``get_double_in_range``: ``begin + random_double() * (end - begin)``."""
        return begin + self.random_double() * (end - begin)


def _round(value: float) -> int:
    """dlib's conversion of a double point to an integer point: ``floor(v + 0.5)``."""
    return math.floor(value + 0.5)


def jitter_chip(chip: np.ndarray, rand: DlibRand) -> np.ndarray:
    """One jittered copy of a square ``S x S x 3`` uint8 chip (dlib's ``jitter_image``)."""
    size = chip.shape[0]
    low, high = 3, size - 1 - 3  # shrink_rect(get_rect(chip), 3): inclusive corners
    extent = high - low + 1
    # The two shift draws are arguments of one constructor call; dlib-bin's compiler evaluates the second
    # (vertical) first, as the tests against dlib.jitter_image confirm.
    shift_y = _round(rand.double_in_range(-TRANSLATE_AMOUNT, TRANSLATE_AMOUNT) * extent)
    shift_x = _round(rand.double_in_range(-TRANSLATE_AMOUNT, TRANSLATE_AMOUNT) * extent)
    scale = rand.double_in_range(MIN_OBJECT_HEIGHT, MAX_OBJECT_HEIGHT)
    box = int(extent / scale)
    centre = ((low + high + 1) // 2 + shift_x, (low + high + 1) // 2 + shift_y)
    left, top = centre[0] - box // 2, centre[1] - box // 2
    angle = rand.double_in_range(-MAX_ROTATION_DEGREES, MAX_ROTATION_DEGREES) * math.pi / 180
    crop = extract_image_chips(chip, [ChipDetails((left, top, left + box - 1, top + box - 1), angle, size,
                                                  size)])[0]
    if rand.random_double() > 0.5:
        crop = crop[:, ::-1].copy()
    return crop


def jittered_batches(chip: np.ndarray, count: int, batch: int) -> Iterator[np.ndarray]:
    """``count`` jittered copies of one chip from a fresh :class:`DlibRand`, ``batch`` at a time (the last batch
    may be shorter): arrays ``(b, S, S, 3)``, so that thousands of copies (``--jitter 10000``) never all lie in
    memory at once."""
    rand = DlibRand()
    for first in range(0, count, batch):
        yield np.stack([jitter_chip(chip, rand) for _ in range(min(batch, count - first))])


def jittered_chips(chip: np.ndarray, count: int) -> np.ndarray:
    """``count`` jittered copies ``(count, S, S, 3)`` of one chip, from a fresh :class:`DlibRand`."""
    return np.concatenate(list(jittered_batches(chip, count, max(count, 1))))
