"""dlib's tiled image pyramid and MMOD box decoding, in numpy (pure: no MPI, no dlib).

An RGB image becomes one network input as dlib's ``input_rgb_image_pyramid<pyramid_down<6>>`` does it:

- level 0 is ``(pixel - mean) / 256`` per channel (R, G, B); each further level is the previous one resized
  by ``floor(5/6)`` per side with align-corners bilinear interpolation, until a level is under 5 rows;
- the levels are packed into one zero-filled tensor: a first column stacked downwards at the left, the rest
  stacked upwards from the bottom right (levels that would overlap level 0 are dropped), with 10 pixels between
  levels and 11 around the whole.

An output cell ``(c, r)`` of the network looks at input point ``(s*c + o, s*r + o)`` (``s = 8, o = 14`` for the
face detector). The detector window is centred there, assigned to the nearest pyramid level, and mapped back
to image coordinates with ``v -> 1.2 v + 0.3`` once per level. Boxes are rounded half away from zero and
suppressed with dlib's overlap test (intersection over the area of the two boxes' bounding box).
"""

from __future__ import annotations

import threading

import numpy as np

from dcnn.kernels.cache import cache_bytes
from dcnn.kernels.memory import empty_float32
from dcnn.kernels.threads import numeric_threads, parallel_for

__all__ = [
    "Rect", "decode_boxes", "nms", "pyramid_sizes", "pyramid_tensor", "resize_bilinear", "resize_rgb",
    "round_half_away", "tiled_layout", "upsample_image", "upsampled_size",
]

Rect = tuple[int, int, int, int]
"""An inclusive rectangle ``(left, top, right, bottom)``, as dlib's."""

MIN_LEVEL_HEIGHT = 5
SCALE_DOWN = 5.0 / 6.0


def pyramid_sizes(height: int, width: int) -> list[tuple[int, int]]:
    """``(rows, cols)`` of every ``pyramid_down<6>`` level, level 0 first."""
    sizes = [(height, width)]
    rows, cols = height, width
    while True:
        rows, cols = int(SCALE_DOWN * rows), int(SCALE_DOWN * cols)
        if rows * cols == 0 or rows < MIN_LEVEL_HEIGHT:
            return sizes
        sizes.append((rows, cols))


def tiled_layout(sizes: list[tuple[int, int]], padding: int, outer: int) -> tuple[int, int, list[Rect]]:
    """Rows and columns of the tiled tensor, and each kept level's inclusive rectangle in it."""
    height0, width0 = sizes[0]
    total = sum(h + padding for h, _ in sizes) - 2 * padding
    height, previous_width = 0, 0
    for h, w in sizes:
        if w <= width0 - previous_width - padding and (height - height0) * 2 >= total - height0:
            break
        height += h + padding
        previous_width = w
    height -= padding
    rects: list[Rect] = []
    y = outer
    index = 0
    while y < height + outer and index < len(sizes):
        h, w = sizes[index]
        rects.append((outer, y, outer + w - 1, y + h - 1))
        y += h + padding
        index += 1
    y -= padding
    while index < len(sizes):
        h, w = sizes[index]
        right, bottom = outer + width0 - 1, y - 1
        rect = (right - w + 1, bottom - h + 1, right, bottom)
        first = rects[0]
        if not (rect[2] < first[0] or rect[0] > first[2] or rect[3] < first[1] or rect[1] > first[3]):
            break
        rects.append(rect)
        y -= h + padding
        index += 1
    return height + 2 * outer, width0 + 2 * outer, rects


def _row_samples(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """dlib's row sample positions: ``y`` grows by ``scale`` per row, added up in float64 from ``-scale``.

    Returns the top row, the bottom row (clamped to the image) and the float64 fraction ``y - top``.
    """
    scale = (size_in - 1) / max(size_out - 1, 1)
    steps = np.full(size_out + 1, scale)
    steps[0] = -scale
    y = np.cumsum(steps)[1:]
    top = np.floor(y).astype(np.intp)
    return top, np.minimum(top + 1, size_in - 1), y - top


def _column_samples(size_in: int, size_out: int) -> tuple[int, np.ndarray, np.ndarray, np.ndarray]:
    """dlib's column sample positions: four-wide float32 vectors, then a float64 tail.

    The vector part starts its four lanes at ``-4 scale + j scale`` (float64, rounded to float32) and adds the
    float32 ``4 scale`` once per block; it stops at the first block whose last lane's right neighbour lies past
    the image. The remaining columns restart from ``-scale + c scale`` in float64 and add ``scale`` per column.

    Returns
    -------
    vector : int
        Columns computed by the float32 vector part.
    left, right : numpy.ndarray
        Per output column, the left sample and its right neighbour (clamped in the tail).
    fraction : numpy.ndarray
        Per output column, ``x - left``: float32 for the vector part's columns, float64 for the tail's (one
        float64 array; the vector part's values are exactly their float32 ones).
    """
    scale = (size_in - 1) / max(size_out - 1, 1)
    blocks = size_out // 4 + 2
    lanes = np.empty((blocks + 1, 4), np.float32)
    lanes[0] = [-4 * scale + lane * scale for lane in range(4)]
    lanes[1:] = np.float32(4 * scale)
    lanes = np.cumsum(lanes, axis=0, dtype=np.float32)[1:]
    lane_left = lanes.astype(np.intp)
    stop = int(np.argmax(lane_left[:, 3] + 1 >= size_in))
    vector = min(4 * stop, size_out)
    left = np.empty(size_out, np.intp)
    right = np.empty(size_out, np.intp)
    fraction = np.empty(size_out, np.float64)
    left[:vector] = lane_left.reshape(-1)[:vector]
    right[:vector] = left[:vector] + 1
    fraction[:vector] = (lanes.reshape(-1)[:vector] - left[:vector].astype(np.float32)).astype(np.float32)
    steps = np.full(size_out - vector + 1, scale)
    steps[0] = -scale + vector * scale
    x = np.cumsum(steps)[1:]
    left[vector:] = np.floor(x).astype(np.intp)
    right[vector:] = np.minimum(left[vector:] + 1, size_in - 1)
    fraction[vector:] = x - left[vector:]
    return vector, left, right, fraction


def _vector_weights(tb: np.ndarray, lr: np.ndarray) -> tuple[np.ndarray, ...]:
    """The four float32 corner weights of dlib's vector part: ``(1-tb)(1-lr), (1-tb) lr, tb (1-lr), tb lr``."""
    tb32, inverse_tb = tb.astype(np.float32)[:, None], (1 - tb).astype(np.float32)[:, None]
    lr32 = lr.astype(np.float32)[None, :]
    inverse_lr = np.float32(1) - lr32
    return inverse_tb * inverse_lr, inverse_tb * lr32, tb32 * inverse_lr, tb32 * lr32


#: Bytes of one band of output rows of :func:`_resize_planes` (each of its four corner buffers) and of
#: :func:`_copy_level`: a quarter of the L2 cache, at most 256 KiB. Measured at 16 images per batch, upsample 1,
#: CPU time per image: on a 1 MiB L2 (AMD EPYC), bands of 128 KiB, 256 KiB, 512 KiB and 1 MiB took 4.30, 3.93, 3.99
#: and 4.70 ms; on a 2 MiB L2 (Intel Xeon), bands of 64 KiB, 128 KiB, 256 KiB, 512 KiB, 1 MiB and 2 MiB took 6.9,
#: 6.0-6.2, 6.1, 6.7, 8.7 and 8.7 ms. With two task threads, whose numpy calls wait for each other's turn of the
#: interpreter lock, 512 KiB bands took 0.89 s where 128 KiB took 1.25 (fewer, longer calls; AMD): the bands are
#: this size times :func:`~dcnn.kernels.threads.numeric_threads` (:func:`_band_bytes`).
BAND_BYTES = min(cache_bytes(2) // 4, 256 << 10)


def _band_bytes() -> int:
    """Bytes of one band: :data:`BAND_BYTES` per thread that may run numpy calls at once in this process, at most
    half the L2 (measured with one and two threads only)."""
    return min(BAND_BYTES * numeric_threads(), max(BAND_BYTES, cache_bytes(2) // 2))


#: Bytes of resize plans kept (:func:`_resize_plan`): the first plans made are kept while they fit, none is
#: dropped (a pyramid resizes its sizes in a cycle, which would make a least-recently-used cache miss every
#: time once the cycle outgrows it). A 128x128 image's pyramid at upsample 1 needs about 7 MiB; a 1000x500 one
#: would need 54 MB, so most of its levels are made each time.
PLAN_CACHE_BYTES = 16 << 20
_plans: dict[tuple[int, int, int, int], tuple] = {}
_plans_lock = threading.Lock()  # threads that each run their own images (batch mode) share the plans


def _resize_plan(height: int, width: int, rows: int, cols: int) -> tuple:
    """What :func:`_resize_planes` needs of a ``height x width -> rows x cols`` resize besides the pixels, kept
    for the next batch (which resizes the same sizes) within :data:`PLAN_CACHE_BYTES`: the row samples
    (:func:`_row_samples`), the column samples (:func:`_column_samples`), the vector part's corner weights
    (:func:`_vector_weights`, as ``(rows, vector, 1)``) and the flat pixel index of each corner sample, all
    read-only."""
    key = (height, width, rows, cols)
    plan = _plans.get(key)
    if plan is not None:
        return plan
    plan = _make_resize_plan(height, width, rows, cols)
    with _plans_lock:
        if key not in _plans and sum(map(_plan_bytes, _plans.values())) + _plan_bytes(plan) <= PLAN_CACHE_BYTES:
            _plans[key] = plan
    return plan


def _plan_bytes(plan: tuple) -> int:
    """Bytes of the arrays of a resize plan."""
    return sum(array.nbytes for array in (*plan[:3], *plan[4:7], *plan[7], *plan[8]))


def _make_resize_plan(height: int, width: int, rows: int, cols: int) -> tuple:
    """The arrays of :func:`_resize_plan`, made."""
    top, bottom, tb = _row_samples(height, rows)
    vector, left, right, lr = _column_samples(width, cols)
    weights = [w[:, :, None] for w in _vector_weights(tb, lr[:vector])]
    corners = [(row[:, None] * width + column[None, :vector]) for row in (top, bottom) for column in (left, right)]
    for array in (top, bottom, tb, left, right, lr, *weights, *corners):
        array.flags.writeable = False
    return top, bottom, tb, vector, left, right, lr, weights, corners


def _resize_planes(image: np.ndarray, rows: int, cols: int, rgb: bool) -> np.ndarray:
    """dlib's ``resize_image`` of the planes of a channels-last ``(H, W, P)`` float32 image, bit for bit.

    The layout puts the ``P`` planes (images times channels) of one pixel side by side, so each corner sample
    of a band of output rows is one ``np.take`` of whole pixels (never a strided gather along a row), and the
    weighted sums run on bands that stay in cache. The vector part computes ``((w_tl tl + w_tr tr) + w_bl bl)
    + w_br br`` in float32 with the corner weights of :func:`_vector_weights`. In the tail, ``rgb`` selects
    dlib's RGB arithmetic (float64 throughout, truncated to uint8) over its grayscale float one (float32 inner
    sums with float32 weights, float64 outer sum). Source: dlib/image_transforms/interpolation.h,
    ``resize_image``.

    Returns
    -------
    numpy.ndarray
        ``(rows, cols, P)`` float32 (with ``rgb``, the truncated values dlib stores in its uint8 pixels).
    """
    height, width, planes = image.shape
    flat = image.reshape(height * width, planes)
    top, bottom, tb, vector, left, right, lr, weights, corners = _resize_plan(height, width, rows, cols)
    out = np.empty((rows, cols, planes), np.float32)
    band = max(1, _band_bytes() // (4 * max(vector, 1) * planes))
    scratch = np.empty((4, min(band, rows) * vector * planes), np.float32)
    for first in range(0, rows, band):
        last = min(rows, first + band)
        products = scratch[:, :(last - first) * vector * planes].reshape(4, last - first, vector, planes)
        for index, (weight, corner) in enumerate(zip(weights, corners)):
            np.take(flat, corner[first:last].reshape(-1), axis=0, out=products[index].reshape(-1, planes))
            np.multiply(weight[first:last], products[index], out=products[index])
        total = np.add(products[0], products[1], out=out[first:last, :vector])
        total += products[2]
        total += products[3]
        if rgb:
            np.trunc(total, out=total)
    if vector < cols:
        tail = slice(vector, cols)
        samples = [flat[row[:, None] * width + column[None, tail]] for row in (top, bottom)
                   for column in (left, right)]
        if rgb:
            fraction, inverse = lr[tail, None], 1 - lr[tail, None]
        else:
            fraction = lr[tail, None].astype(np.float32)
            inverse = np.float32(1) - fraction
        upper_sum, lower_sum = (inverse * (a.astype(np.float64) if rgb else a) + fraction * b
                                for a, b in (samples[:2], samples[2:]))
        tb64 = tb[:, None, None]
        blend = (1 - tb64) * upper_sum.astype(np.float64) + tb64 * lower_sum.astype(np.float64)
        out[:, tail] = np.trunc(blend) if rgb else blend
    return out


def _planes_last(images: np.ndarray) -> np.ndarray:
    """``(..., H, W, C)`` to the channels-last ``(H, W, P)`` of :func:`_resize_planes` (``P`` = images x C)."""
    height, width, channels = images.shape[-3:]
    return np.ascontiguousarray(images.reshape(-1, height, width, channels).transpose(1, 2, 0, 3)).reshape(
        height, width, -1)


def resize_bilinear(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's ``resize_image`` of float32 planes (the last two axes), bit for bit.

    This is the bilinear resize of dlib's ``tt::resize_bilinear`` that builds the MMOD input pyramid: align
    corners (``scale = (n_in - 1) / (n_out - 1)``), sample positions accumulated as dlib does, float32
    ``tl w_tl + tr w_tr + bl w_bl + br w_br`` in the vector part, and in the float64 tail
    ``(1-tb)((1-lr) tl + lr tr) + tb((1-lr) bl + lr br)`` with float32 inner sums and float64 outer ones
    (see :func:`_resize_planes`). Source: dlib/image_transforms/interpolation.h, ``resize_image`` for
    grayscale images of one pixel type.

    Parameters
    ----------
    image : numpy.ndarray
        ``(..., H, W)`` float32.
    rows, cols : int
        Output size.

    Returns
    -------
    numpy.ndarray
        ``(..., rows, cols)`` float32.
    """
    image = np.asarray(image, np.float32)
    *leading, height, width = image.shape
    planes = image.reshape(-1, height, width).transpose(1, 2, 0)
    out = _resize_planes(np.ascontiguousarray(planes), rows, cols, rgb=False)
    return np.ascontiguousarray(out.transpose(2, 0, 1)).reshape(*leading, rows, cols)


def resize_rgb(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """dlib's ``resize_image`` of ``H x W x 3`` uint8 RGB images, bit for bit.

    Each channel is interpolated with float32 weights in the vector part and in float64 in the tail (the
    formulas of :func:`resize_bilinear`, with float64 inner sums), and truncated to uint8. Source:
    dlib/image_transforms/interpolation.h, ``resize_image`` for RGB images.

    Parameters
    ----------
    image : numpy.ndarray
        ``(..., H, W, 3)`` uint8: one image or a batch of equally sized ones.
    rows, cols : int
        Output size.

    Returns
    -------
    numpy.ndarray
        ``(..., rows, cols, 3)`` uint8.
    """
    image = np.asarray(image)
    leading = image.shape[:-3]
    out = _resize_planes(_planes_last(image).astype(np.float32), rows, cols, rgb=True).astype(np.uint8)
    return np.ascontiguousarray(out.reshape(rows, cols, -1, 3).transpose(2, 0, 1, 3)).reshape(
        *leading, rows, cols, 3)


def upsampled_size(height: int, width: int) -> tuple[int, int]:
    """The size dlib's ``pyramid_up`` makes of a ``height x width`` image: ``(2H+1) x (2W+2)``."""
    return 2 * height + 1, 2 * width + 2


def upsample_image(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_up`` of ``(..., H, W, 3)`` uint8 images: :func:`resize_rgb` to ``(2H+1) x (2W+2)``."""
    return resize_rgb(image, *upsampled_size(*image.shape[-3:-1]))


def pyramid_tensor(images: np.ndarray, mean_rgb: tuple[float, float, float], padding: int = 10,
                   outer: int = 11, upsample: int = 0, buffer_rows: int = 0) -> tuple[np.ndarray, list[Rect]]:
    """The network input for a batch of equally sized images, and the level rectangles.

    The images are first upsampled ``upsample`` times (:func:`upsample_image`); the levels are then computed
    channels-last for all images at once (:func:`_resize_planes`), and each is copied into its rectangle of
    the tensor.

    Parameters
    ----------
    images : numpy.ndarray
        ``(B, H, W, 3)`` uint8 RGB.
    mean_rgb : tuple of float
        The mean subtracted from each channel before the division by 256.
    padding, outer : int
        Pixels between levels and around the whole (:func:`tiled_layout`).
    upsample : int
        How many times to double the images first.
    buffer_rows : int
        Rows per image of the memory behind the tensor, if more than its own (zeros past them): what the
        detector's first convolution reads in place (:meth:`dcnn.exec.forward.Forward.input_rows`).

    Returns
    -------
    tensor : numpy.ndarray
        ``(B, 3, rows, cols)`` float32, a view of channels-last memory ``(B, max(rows, buffer_rows), cols, 3)``:
        what the detector's first convolution reads by whole rows of pixels (:mod:`dcnn.kernels.conv`).
    rects : list of Rect
        Each level's inclusive rectangle in the tensor, level 0 first.
    """
    batch, height, width, _ = images.shape
    for _ in range(upsample):
        height, width = upsampled_size(height, width)
    rows, cols, rects = tiled_layout(pyramid_sizes(height, width), padding, outer)
    pixels = empty_float32((batch, max(rows, buffer_rows), cols, 3))
    pixels.fill(0)
    # Slices of the batch on the kernel threads: every plane's arithmetic is its own, so any split is bit-exact.
    parallel_for(lambda part: _fill_pyramid(pixels[part.start:part.stop], images[part.start:part.stop], mean_rgb,
                                            rects, upsample), range(batch))
    return pixels[:, :rows].transpose(0, 3, 1, 2), rects


def _fill_pyramid(pixels: np.ndarray, images: np.ndarray, mean_rgb: tuple[float, float, float], rects: list[Rect],
                  upsample: int) -> None:
    """:func:`pyramid_tensor`'s levels of ``images`` into their rectangles ``rects`` of the channels-last
    ``pixels`` ``(B, rows, cols, 3)``."""
    batch, height, width, _ = images.shape
    level = _planes_last(images).astype(np.float32)
    for _ in range(upsample):
        height, width = upsampled_size(height, width)
        level = _resize_planes(level, height, width, rgb=True)
    channels = level.reshape(height, width, batch, 3)
    np.subtract(channels, np.asarray(mean_rgb, np.float32), out=channels)
    np.divide(channels, np.float32(256), out=channels)
    for index, (left, top, right, bottom) in enumerate(rects):
        if index:
            level = _resize_planes(level, bottom - top + 1, right - left + 1, rgb=False)
        _copy_level(pixels, level, left, top)


def _copy_level(pixels: np.ndarray, level: np.ndarray, left: int, top: int) -> None:
    """Copy a channels-last ``(h, w, B * 3)`` level into ``pixels[:, top:top + h, left:left + w]`` (B, rows, cols, 3).

    By bands of rows that fit in the L2 cache: copied whole, each of the ``B`` images would stream the entire
    level through the cache again.
    """
    rows, cols, planes = level.shape
    band = max(1, _band_bytes() // (4 * cols * planes))
    for first in range(0, rows, band):
        last = min(rows, first + band)
        source = level[first:last].reshape(last - first, cols, -1, 3).transpose(2, 0, 1, 3)
        for channel in range(3):  # one channel at a time: runs of pixels, not runs of three values
            pixels[:, top + first:top + last, left:left + cols, channel] = source[..., channel]


def round_half_away(values: np.ndarray) -> np.ndarray:
    """C's ``lround``: to the nearest integer, halves away from zero."""
    return (np.sign(values) * np.floor(np.abs(values) + 0.5)).astype(np.int64)


def _nearest_level(points: np.ndarray, rects: np.ndarray) -> np.ndarray:
    """Per point, the first level rectangle containing it, else the nearest one (first on ties)."""
    left, top, right, bottom = (rects[:, i][None, :] for i in range(4))
    x, y = points[:, 0:1], points[:, 1:2]
    dx = np.maximum(np.maximum(left - x, 0), x - right)
    dy = np.maximum(np.maximum(top - y, 0), y - bottom)
    distance = np.sqrt(dx.astype(np.float64) ** 2 + dy.astype(np.float64) ** 2)
    return np.argmin(distance, axis=1)


def decode_boxes(scores: np.ndarray, rects: list[Rect], window: tuple[int, int], stride: int, offset: int,
                 threshold: float = 0.0) -> np.ndarray:
    """Detections of one output map, before non-max suppression, by descending score.

    Returns
    -------
    numpy.ndarray
        ``(n, 5)`` float64 rows ``left, top, right, bottom, score``; coordinates are integers (inclusive) in the
        image that made the pyramid.
    """
    rows, cols = np.nonzero(scores > threshold)
    if rows.size == 0:
        return np.zeros((0, 5))
    score = scores[rows, cols].astype(np.float64)
    center = np.stack([stride * cols + offset, stride * rows + offset], axis=1).astype(np.float64)
    half = np.array([(window[0] - 1) / 2, (window[1] - 1) / 2])
    corners = np.concatenate([center - half, center + half], axis=1)
    table = np.asarray(rects, dtype=np.float64)
    level = _nearest_level(np.floor(center + 0.5), table)
    corners -= np.concatenate([table[level, :2], table[level, :2]], axis=1)
    for step in range(1, int(level.max(initial=0)) + 1):
        mask = level >= step
        corners[mask] = corners[mask] * (6 / 5.0) + 0.3
    boxes = np.concatenate([round_half_away(corners).astype(np.float64), score[:, None]], axis=1)
    return boxes[np.argsort(-score, kind="stable")]


def _overlaps(box: np.ndarray, kept: np.ndarray, iou: float, covered: float) -> bool:
    """dlib's ``test_box_overlap`` of one inclusive box against several."""
    inner_w = np.minimum(box[2], kept[:, 2]) - np.maximum(box[0], kept[:, 0]) + 1
    inner_h = np.minimum(box[3], kept[:, 3]) - np.maximum(box[1], kept[:, 1]) + 1
    inner = np.where((inner_w > 0) & (inner_h > 0), inner_w * inner_h, 0)
    outer = ((np.maximum(box[2], kept[:, 2]) - np.minimum(box[0], kept[:, 0]) + 1)
             * (np.maximum(box[3], kept[:, 3]) - np.minimum(box[1], kept[:, 1]) + 1))
    area_box = (box[2] - box[0] + 1) * (box[3] - box[1] + 1)
    area_kept = (kept[:, 2] - kept[:, 0] + 1) * (kept[:, 3] - kept[:, 1] + 1)
    hit = (inner > 0) & ((inner / outer > iou) | (inner / area_box > covered) | (inner / area_kept > covered))
    return bool(hit.any())


def nms(boxes: np.ndarray, iou: float, covered: float) -> np.ndarray:
    """Keep each box (in the given, descending-score order) unless it overlaps one already kept."""
    kept: list[np.ndarray] = []
    for box in boxes:
        if not kept or not _overlaps(box, np.asarray(kept), iou, covered):
            kept.append(box)
    return np.asarray(kept).reshape(-1, 5)
