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

import numpy as np

__all__ = [
    "Rect", "decode_boxes", "nms", "pyramid_sizes", "pyramid_tensor", "resize_bilinear", "round_half_away",
    "tiled_layout", "upsample_image",
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


def _axis_weights(size_in: int, size_out: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Align-corners sample positions: lower index, upper index, upper weight (float32)."""
    scale = (size_in - 1) / max(size_out - 1, 1)
    position = np.arange(size_out) * scale
    lower = np.floor(position).astype(np.intp)
    upper = np.minimum(lower + 1, size_in - 1)
    return lower, upper, (position - lower).astype(np.float32)


def resize_bilinear(image: np.ndarray, rows: int, cols: int) -> np.ndarray:
    """Align-corners bilinear resize of the last two axes (dlib's ``resize_image``), in float32."""
    top, bottom, fy = _axis_weights(image.shape[-2], rows)
    left, right, fx = _axis_weights(image.shape[-1], cols)
    fy = fy[:, None]
    upper = image[..., top, :] * (1 - fy) + image[..., bottom, :] * fy
    return (upper[..., left] * (1 - fx) + upper[..., right] * fx).astype(np.float32, copy=False)


def upsample_image(image: np.ndarray) -> np.ndarray:
    """dlib's ``pyramid_up`` of an ``H x W x 3`` uint8 image: ``(2H+1) x (2W+2)``, truncated to uint8."""
    height, width = image.shape[:2]
    planes = resize_bilinear(image.transpose(2, 0, 1).astype(np.float32), 2 * height + 1, 2 * width + 2)
    return np.clip(planes, 0, 255).astype(np.uint8).transpose(1, 2, 0)


def pyramid_tensor(images: np.ndarray, mean_rgb: tuple[float, float, float], padding: int = 10,
                   outer: int = 11) -> tuple[np.ndarray, list[Rect]]:
    """The network input for a batch of equally sized ``B x H x W x 3`` uint8 images, and the level rectangles."""
    batch, height, width, _ = images.shape
    sizes = pyramid_sizes(height, width)
    rows, cols, rects = tiled_layout(sizes, padding, outer)
    tensor = np.zeros((batch, 3, rows, cols), np.float32)
    level = ((images.astype(np.float32) - np.asarray(mean_rgb, np.float32)) / np.float32(256)).transpose(0, 3, 1, 2)
    for index, (left, top, right, bottom) in enumerate(rects):
        if index:
            level = resize_bilinear(level, bottom - top + 1, right - left + 1)
        tensor[:, :, top:bottom + 1, left:right + 1] = level
    return tensor, rects


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
