"""Aligned face chips as dlib cuts them: ``get_face_chip_details`` and ``extract_image_chips``.

A chip is described (dlib/image_transforms/interpolation.h, ``chip_details``) by a rectangle in the image, an
angle and an output size. For 5 landmarks it comes from the similarity transform that takes dlib's template
positions of the eye corners and the nose, ``((padding + t) / (2 padding + 1)) * size``, onto the landmarks:
``angle = atan2`` of its first column, ``scale`` its length, and the rectangle ``size * scale`` wide (minus one,
dlib's ``centered_drect``) around the image of the chip centre ``(size / 2, size / 2)``.

Extraction, as dlib does it for one image and its chips:

- for a chip much smaller than its rectangle, a ``pyramid_down<2>`` image pyramid: the rectangle is halved
  (``v -> v / 2 - (1.25, 0.75)``) while its halved area exceeds the chip's pixel count; each level is a 5x5
  binomial filter ``[1 4 6 4 1]`` on rows then columns, every second pixel from the third, summed in integers
  and divided by 256 (truncated), ``((n - 3) // 2)`` pixels per side;
- the pyramid is built on the bounding box of all chips' rotated rectangles, grown by ``2, 6, 14, ...``
  pixels (two per level, doubled), clipped to the image and rounded; pixels outside that box count as
  outside the image;
- each chip pixel ``(c, r)`` is the affine image of the chip corners on the rotated rectangle, sampled
  bilinearly in double, ``(1 - dy)((1 - dx) tl + dx tr) + dy((1 - dx) bl + dx br)``, truncated to uint8, and
  0 where the 2x2 neighbourhood leaves the image.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from dcnn.errors import ShapeError
from dcnn.faces.shape_predictor import similarity_matrix

__all__ = [
    "FIVE_POINT_TEMPLATE", "ChipDetails", "extract_image_chips", "face_chip_details", "pyramid_down2",
]

#: dlib's chip positions of the 5 landmarks (outer and inner corner of the eye on the image's right, of the
#: other eye, and the base of the nose) in a unit square, before padding.
FIVE_POINT_TEMPLATE = np.array([(0.8595674595992, 0.2134981538014), (0.6460604764104, 0.2289674387677),
                                (0.1205750620789, 0.2137274526848), (0.3340850613712, 0.2290642403242),
                                (0.4901123135679, 0.6277975316475)])

Box = tuple[float, float, float, float]
"""A dlib ``drectangle`` ``(left, top, right, bottom)``; its width is ``right - left + 1``."""


@dataclass(frozen=True)
class ChipDetails:
    """Where a chip lies in its image: dlib's ``chip_details``.

    Attributes
    ----------
    rect : tuple of float
        ``(left, top, right, bottom)`` of the unrotated rectangle, in image pixels.
    angle : float
        Rotation of the rectangle about its centre, radians.
    rows, cols : int
        Chip size in pixels.
    """

    rect: Box
    angle: float
    rows: int
    cols: int


def face_chip_details(parts: np.ndarray, size: int = 150, padding: float = 0.25) -> ChipDetails:
    """dlib's ``get_face_chip_details`` for 5 landmarks.

    Parameters
    ----------
    parts : numpy.ndarray
        ``(5, 2)`` landmark pixels ``(x, y)`` in dlib's 5-point order.
    size : int
        Chip side in pixels.
    padding : float
        Border around the template face, as a fraction of its size.

    Raises
    ------
    ShapeError
        If ``parts`` is not 5 points, ``size`` is not positive or ``padding`` negative.
    """
    parts = np.asarray(parts, dtype=np.float64)
    if parts.shape != (5, 2):
        raise ShapeError(f"face chips need dlib's 5 landmarks, got points of shape {parts.shape}")
    if size < 1 or padding < 0:
        raise ShapeError(f"a face chip needs a positive size and a padding of 0 or more, got {size}, {padding}")
    template = (padding + FIVE_POINT_TEMPLATE) / (2 * padding + 1) * size
    linear = similarity_matrix(template, parts)
    shift = parts.mean(axis=0) - linear @ template.mean(axis=0)
    first = linear[:, 0]
    angle = math.atan2(first[1], first[0])
    scale = math.sqrt(first[0] * first[0] + first[1] * first[1])
    centre = linear @ np.array([size / 2.0, size / 2.0]) + shift
    half_w, half_h = (size * scale - 1) / 2, (size * scale - 1) / 2
    return ChipDetails((centre[0] - half_w, centre[1] - half_h, centre[0] + half_w, centre[1] + half_h),
                       angle, size, size)


def _area(rect: Box) -> float:
    left, top, right, bottom = rect
    return 0.0 if left > right or top > bottom else (right - left + 1) * (bottom - top + 1)


def _rect_down(rect: Box) -> Box:
    """``pyramid_down<2>::rect_down``: each corner ``v -> v / 2 - (1.25, 0.75)``."""
    left, top, right, bottom = rect
    return (left / 2.0 - 1.25, top / 2.0 - 0.75, right / 2.0 - 1.25, bottom / 2.0 - 0.75)


def _rotated_corners(rect: Box, angle: float) -> np.ndarray:
    """The top-left, top-right, bottom-left and bottom-right corners of ``rect`` rotated about its centre."""
    left, top, right, bottom = rect
    cx, cy = (left + right) / 2.0, (top + bottom) / 2.0
    cos, sin = math.cos(angle), math.sin(angle)
    corners = []
    for x, y in ((left, top), (right, top), (left, bottom), (right, bottom)):
        dx, dy = x - cx, y - cy
        corners.append((cos * dx - sin * dy + cx, sin * dx + cos * dy + cy))
    return np.array(corners)


def _lround(value: float) -> int:
    """C's ``lround``: halves away from zero."""
    return int(math.copysign(math.floor(abs(value) + 0.5), value))


def pyramid_down2(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_down<2>`` of an ``H x W x 3`` uint8 image: ``((H - 3) // 2) x ((W - 3) // 2)``.

    Empty when a side has 8 pixels or fewer (as dlib).
    """
    height, width = image.shape[:2]
    if height <= 8 or width <= 8:
        return np.zeros((0, 0, 3), np.uint8)
    out_w, out_h = (width - 3) // 2, (height - 3) // 2
    pixels = image.astype(np.int32)
    taps = (1, 4, 6, 4, 1)
    rows = sum(weight * pixels[:, k:k + 2 * out_w - 1:2] for k, weight in enumerate(taps))
    columns = sum(weight * rows[k:k + 2 * out_h - 1:2] for k, weight in enumerate(taps))
    return (columns // 256).astype(np.uint8)


def _bilinear(source: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """dlib's ``interpolate_bilinear`` at points ``(x, y)`` (float64), 0 where it leaves the image."""
    height, width = source.shape[:2]
    left, top = np.floor(x).astype(np.int64), np.floor(y).astype(np.int64)
    inside = (left >= 0) & (top >= 0) & (left + 1 < width) & (top + 1 < height)
    out = np.zeros((len(x), source.shape[2]), np.uint8)
    left, top, x, y = left[inside], top[inside], x[inside], y[inside]
    dx, dy = (x - left)[:, None], (y - top)[:, None]
    pixels = source.astype(np.float64)
    upper = (1 - dx) * pixels[top, left] + dx * pixels[top, left + 1]
    lower = (1 - dx) * pixels[top + 1, left] + dx * pixels[top + 1, left + 1]
    out[inside] = ((1 - dy) * upper + dy * lower).astype(np.uint8)
    return out


def extract_image_chips(image: np.ndarray, details: list[ChipDetails]) -> list[np.ndarray]:
    """dlib's ``extract_image_chips`` with bilinear interpolation (see the module notes).

    Parameters
    ----------
    image : numpy.ndarray
        ``H x W x 3`` uint8 RGB image.
    details : list of ChipDetails
        The chips to cut; they share one pyramid, as in dlib.

    Returns
    -------
    list of numpy.ndarray
        One ``rows x cols x 3`` uint8 chip per entry.

    Raises
    ------
    ShapeError
        If the image is not ``H x W x 3`` uint8.
    """
    if image.ndim != 3 or image.shape[2] != 3 or image.dtype != np.uint8:
        raise ShapeError(f"face chips are cut from H x W x 3 uint8 RGB images, got {image.shape} {image.dtype}")
    height, width = image.shape[:2]
    box: tuple[int, int, int, int] | None = None
    depth = 0
    for chip in details:
        levels, grow = 0, 2.0
        rect = _rect_down(chip.rect)
        while _area(rect) > chip.rows * chip.cols:
            rect = _rect_down(rect)
            levels += 1
            grow = grow * 2 + 2
        corners = _rotated_corners(chip.rect, chip.angle)
        grown = (max(corners[:, 0].min() - grow, 0), max(corners[:, 1].min() - grow, 0),
                 min(corners[:, 0].max() + grow, width - 1), min(corners[:, 1].max() + grow, height - 1))
        rounded = tuple(_lround(v) for v in grown)
        if rounded[0] <= rounded[2] and rounded[1] <= rounded[3]:
            box = rounded if box is None else (min(box[0], rounded[0]), min(box[1], rounded[1]),
                                               max(box[2], rounded[2]), max(box[3], rounded[3]))
        depth = max(depth, levels)
    left, top, right, bottom = box if box is not None else (0, 0, -1, -1)
    window = image[top:bottom + 1, left:right + 1] if box is not None else image[:0, :0]
    pyramid = []
    for _ in range(depth):
        pyramid.append(pyramid_down2(pyramid[-1] if pyramid else window))
    chips = []
    for chip in details:
        if chip.angle == 0 and (chip.rows, chip.cols) == _size(chip.rect):
            chips.append(_copy_chip(image, chip))
            continue
        level = -1
        rect = (chip.rect[0] - left, chip.rect[1] - top, chip.rect[2] - left, chip.rect[3] - top)
        while _area(_rect_down(rect)) > chip.rows * chip.cols:
            level += 1
            rect = _rect_down(rect)
        corners = _rotated_corners(rect, chip.angle)
        # The affine map taking chip corners (0, 0), (cols - 1, 0), (0, rows - 1) onto the rotated rectangle.
        origin = corners[0]
        along_x = (corners[1] - origin) / max(chip.cols - 1, 1)
        along_y = (corners[2] - origin) / max(chip.rows - 1, 1)
        r, c = np.mgrid[0:chip.rows, 0:chip.cols].reshape(2, -1).astype(np.float64)
        x = along_x[0] * c + along_y[0] * r + origin[0]
        y = along_x[1] * c + along_y[1] * r + origin[1]
        source = window if level == -1 else pyramid[level]
        chips.append(_bilinear(source, x, y).reshape(chip.rows, chip.cols, 3))
    return chips


def _size(rect: Box) -> tuple[float, float]:
    left, top, right, bottom = rect
    return (bottom - top + 1, right - left + 1) if left <= right and top <= bottom else (0.0, 0.0)


def _copy_chip(image: np.ndarray, chip: ChipDetails) -> np.ndarray:
    """dlib's ``basic_extract_image_chip``: the rounded rectangle copied as it is, 0 outside the image."""
    left, top = _lround(chip.rect[0]), _lround(chip.rect[1])
    out = np.zeros((chip.rows, chip.cols, 3), np.uint8)
    rows = slice(max(top, 0), min(top + chip.rows, image.shape[0]))
    cols = slice(max(left, 0), min(left + chip.cols, image.shape[1]))
    out[rows.start - top:rows.stop - top, cols.start - left:cols.stop - left] = image[rows, cols]
    return out
