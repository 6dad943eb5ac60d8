"""dlib's ``shape_predictor`` (an ensemble of regression trees, Kazemi and Sullivan 2014): reader and predictor.

The file (dlib/image_processing/shape_predictor.h, dlib/serialize.h) is a chain of dlib's variable-length
integers and nothing else: version 1; the initial (mean) shape as a ``matrix<float,0,1>`` (``-rows, -cols``,
then each float as an integer mantissa and exponent); per cascade a vector of regression trees, each a vector
of splits ``(idx1, idx2, threshold)`` and a vector of leaf vectors; per cascade the anchor part of every feature
pixel; per cascade the offset of every feature pixel from its anchor, in the mean shape's normalised frame.

Prediction of a face box, as dlib computes it (:meth:`ShapePredictor.predict` runs every box of an image at once):

1. ``current = initial`` (normalised coordinates, the box's top left corner at 0 and bottom right at 1);
2. per cascade, the feature pixels are ``A * delta + current[anchor]``, with ``A`` the 2x2 part of the
   least-squares similarity transform from ``initial`` to ``current`` (Umeyama's closed form, in double, then
   rounded to float32), mapped into the image by the box (``x -> left + x (right - left)``) and rounded to the
   nearest pixel; a pixel's value is its grey level ``(r + g + b) // 3`` (dlib's RGB to grey), 0 outside;
3. each tree goes left while ``value[idx1] - value[idx2] > threshold``; its leaf vector is added to ``current``
   in float32, tree after tree;
4. the parts are ``current`` mapped into the image and rounded to the nearest pixel (dlib's ``point``).
"""

from __future__ import annotations

import os
from array import array
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path

import numpy as np

from dcnn.errors import ShapeError, WeightsError
from dcnn.faces.dlib_format import read_model_bytes

__all__ = [
    "Cascade", "ShapePredictor", "decode_integers", "encode_floats", "encode_integers", "grey_levels",
    "read_shape_predictor", "save_shape_predictor", "similarity_matrix",
]

#: No 5- or 68-point model comes near these; larger values mean a damaged file.
MAX_PARTS = 1000
MAX_CASCADES = 100
MAX_TREES = 10000
MAX_TREE_DEPTH = 16
MAX_FEATURES = 100000
#: Integers decoded at a time: the reader holds the file's bytes, the model and one chunk's temporaries (a few
#: MiB), never the decoded file.
DECODE_CHUNK = 1 << 16
#: Trees of up to this many splits (depth 4, dlib's default) find their leaves in a table of 2**15 entries
#: indexed by all their split flags at once; deeper ones are walked level by level.
MAX_TABLE_SPLITS = 15
#: dlib's float_details exponents that stand for +inf, -inf and NaN.
SPECIAL_EXPONENTS = 32000
KIND = "dlib shape predictor file"


@dataclass(frozen=True)
class Cascade:
    """One cascade: its feature pixels and its complete binary regression trees of one depth.

    Attributes
    ----------
    anchors : numpy.ndarray
        ``(F,)`` int64, the part each feature pixel is placed relative to.
    deltas : numpy.ndarray
        ``(F, 2)`` float32 offsets ``(x, y)`` from the anchor, in the initial shape's frame.
    first, second : numpy.ndarray
        ``(T, S)`` int64 feature indices of each tree's ``S`` splits (breadth-first order).
    thresholds : numpy.ndarray
        ``(T, S)`` float32 split thresholds.
    leaves : numpy.ndarray
        ``(T, S + 1, 2 * parts)`` float32 shape increments ``x0, y0, x1, y1, ...``.
    """

    anchors: np.ndarray
    deltas: np.ndarray
    first: np.ndarray
    second: np.ndarray
    thresholds: np.ndarray
    leaves: np.ndarray


def _integer_chunks(data: bytes, source: str) -> Iterator[np.ndarray]:
    """The dlib integers of a file that holds nothing else, in order, as int64 arrays of up to
    :data:`DECODE_CHUNK` values: only one chunk's positions and temporaries exist at a time.

    Raises
    ------
    WeightsError
        If a control byte is invalid, the last integer is cut short, or a magnitude exceeds 63 bits.
    """
    buffer = np.frombuffer(data, dtype=np.uint8)
    position, end = 0, len(data)
    while position < end:
        positions = array("q")  # 8 bytes an integer: a list of Python ints would take 36
        while position < end and len(positions) < DECODE_CHUNK:
            positions.append(position)
            position += 1 + (data[position] & 0x0F)
        if position > end:
            raise WeightsError(f"{source}: not a valid {KIND} (truncated: the last integer at byte "
                               f"{positions[-1]} runs past the end)")
        yield _decode_at(buffer, np.frombuffer(positions, dtype=np.int64), source)


def _decode_at(buffer: np.ndarray, starts: np.ndarray, source: str) -> np.ndarray:
    """The complete dlib integers that begin at byte offsets ``starts`` of the uint8 ``buffer``, as int64."""
    control = buffer[starts]
    sizes = control & 0x0F
    bad = (sizes == 0) | (sizes > 8) | ((control & 0x70) != 0)
    if bad.any():
        where = int(starts[np.argmax(bad)])
        raise WeightsError(f"{source}: not a valid {KIND} (bad integer control byte 0x{buffer[where]:02x} at "
                           f"byte {where})")
    magnitude = np.zeros(len(starts), dtype=np.uint64)
    for byte in range(int(sizes.max())):
        # An integer of fewer bytes may end the file: its index is clipped, and its byte dropped.
        value = buffer.take(starts + (1 + byte), mode="clip").astype(np.uint64)
        value[sizes <= byte] = 0
        magnitude |= value << np.uint64(8 * byte)
    if (magnitude >> np.uint64(63)).any():
        raise WeightsError(f"{source}: not a valid {KIND} (an integer beyond 63 bits)")
    values = magnitude.view(np.int64)
    np.negative(values, out=values, where=(control & 0x80) != 0)
    return values


def decode_integers(data: bytes, source: str) -> np.ndarray:
    """Every dlib integer of a file that holds nothing else, in order, as int64.

    Raises
    ------
    WeightsError
        As :func:`_integer_chunks`.
    """
    return np.concatenate([np.zeros(0, np.int64), *_integer_chunks(data, source)])


def encode_integers(values: np.ndarray) -> bytes:
    """dlib's serialization of int64 ``values``: per value a control byte (bit 7: negative; low bits: the byte
    count, at least 1) then the magnitude's bytes, little-endian (``pack_int`` in dlib/serialize.h)."""
    values = np.asarray(values, dtype=np.int64).reshape(-1)
    magnitude = np.abs(values).astype(np.uint64)
    sizes = np.ones(len(values), np.int64)
    for byte in range(1, 8):
        sizes += (magnitude >> np.uint64(8 * byte)) != 0
    starts = np.concatenate([[0], np.cumsum(1 + sizes)[:-1]])
    out = np.zeros(int((1 + sizes).sum()), np.uint8)
    out[starts] = sizes | np.where(values < 0, 0x80, 0)
    for byte in range(8):
        mask = sizes > byte
        out[starts[mask] + 1 + byte] = (magnitude[mask] >> np.uint64(8 * byte)) & np.uint64(0xFF)
    return out.tobytes()


def encode_floats(values: np.ndarray) -> np.ndarray:
    """float32 ``values`` as dlib's ``float_details`` integer pairs ``(mantissa, exponent)``, shape ``(n, 2)``.

    ``mantissa = frexp(v) * 2**24`` and ``exponent = e - 24``, then whole zero bytes are shifted out of the
    mantissa (dlib/float_details.h).
    """
    fraction, exponent = np.frexp(np.asarray(values, np.float64).reshape(-1))
    mantissa = (fraction * (1 << 24)).astype(np.int64)
    exponent = exponent.astype(np.int64) - 24
    for _ in range(8):
        zero = (mantissa & 0xFF) == 0
        mantissa[zero] >>= 8
        exponent[zero] += 8
    return np.stack([mantissa, exponent], axis=1)


def _float32(pairs: np.ndarray, fail) -> np.ndarray:
    """dlib's ``float_details`` pairs ``(mantissa, exponent)`` of shape ``(..., 2)`` as float32 values.

    ``fail(what)`` makes the error for values that are infinite, NaN or beyond float32.
    """
    mantissa, exponent = pairs[..., 0], pairs[..., 1]
    if (np.abs(exponent) >= SPECIAL_EXPONENTS).any():
        raise fail("an infinite or NaN value")
    if (np.abs(exponent) > 300).any() or (np.abs(mantissa) >= 1 << 53).any():
        raise fail("a float beyond float32")
    values = np.ldexp(mantissa.astype(np.float64), exponent.astype(np.int32))
    if not (np.abs(values) <= np.finfo(np.float32).max).all():
        raise fail("a float beyond float32")
    return values.astype(np.float32)


class _Stream:
    """Bounds-checked reads of the integers of a shape predictor file, decoded a chunk at a time as they are
    read (:func:`_integer_chunks`): the decoded file is never held whole."""

    def __init__(self, data: bytes, source: str):
        self.chunks = _integer_chunks(data, source)
        self.pending = np.zeros(0, np.int64)  # decoded, not yet taken
        self.cursor = 0  # values taken so far
        self.source = source

    def fail(self, what: str) -> WeightsError:
        return WeightsError(f"{self.source}: not a valid {KIND} ({what} at value {self.cursor})")

    def take(self, count: int) -> np.ndarray:
        parts = [self.pending]
        have = len(self.pending)
        while have < count:
            chunk = next(self.chunks, None)
            if chunk is None:
                raise self.fail(f"truncated: {count} values wanted, {have} left")
            parts.append(chunk)
            have += len(chunk)
        values = np.concatenate(parts) if len(parts) > 1 else self.pending
        self.pending = values[count:]
        self.cursor += count
        return values[:count]

    def peek(self) -> int:
        """The next value, left to be taken."""
        value = self.take(1)
        self.pending, self.cursor = np.concatenate([value, self.pending]), self.cursor - 1
        return int(value[0])

    def left(self) -> int:
        """Values after the cursor (the rest of the file decoded)."""
        return len(self.pending) + sum(len(chunk) for chunk in self.chunks)

    def count(self, low: int, high: int, what: str) -> int:
        value = int(self.take(1)[0])
        if not low <= value <= high:
            raise self.fail(f"{what} of {value}, expected {low} to {high}")
        return value

    def floats(self, count: int) -> np.ndarray:
        return _float32(self.take(2 * count).reshape(count, 2), self.fail)

    def column(self, length: int, what: str) -> np.ndarray:
        """A ``matrix<float,0,1>`` of ``length`` rows (dlib writes ``-rows, -cols``; old files ``rows, cols``)."""
        rows, cols = (int(v) for v in self.take(2))
        if (abs(rows), abs(cols)) != (length, 1) or (rows < 0) != (cols < 0):
            raise self.fail(f"{what} of {rows} x {cols}, expected {length} x 1")
        return self.floats(length)


def _trees(stream: _Stream, parts: int, features: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """One cascade's regression trees as ``(first, second, thresholds, leaves)`` (see :class:`Cascade`)."""
    trees = stream.count(1, MAX_TREES, "tree count")
    splits = -1
    first, second, thresholds, leaves = [], [], [], []
    for _ in range(trees):
        count = stream.count(1, (1 << MAX_TREE_DEPTH) - 1, "split count")
        if count & (count + 1) or splits not in (-1, count):
            raise stream.fail(f"a tree of {count} splits (trees must be complete and of one depth)")
        splits = count
        rows = stream.take(4 * count).reshape(count, 4)
        if (rows[:, :2] < 0).any() or (rows[:, :2] >= features).any():
            raise stream.fail(f"a split on a feature outside 0 to {features - 1}")
        first.append(rows[:, 0])
        second.append(rows[:, 1])
        thresholds.append(_float32(rows[:, 2:], stream.fail))
        stream.count(count + 1, count + 1, "leaf count")
        block = stream.take((count + 1) * (2 + 4 * parts)).reshape(count + 1, 2 + 4 * parts)
        if (np.abs(block[:, 0]) != 2 * parts).any() or (np.abs(block[:, 1]) != 1).any():
            raise stream.fail(f"a leaf vector that is not {2 * parts} x 1")
        leaves.append(_float32(block[:, 2:].reshape(count + 1, 2 * parts, 2), stream.fail))
    return np.stack(first), np.stack(second), np.stack(thresholds), np.stack(leaves)


def read_shape_predictor(path: str | os.PathLike) -> ShapePredictor:
    """Parse a dlib ``shape_predictor`` file (``shape_predictor_5_face_landmarks.dat`` and its kind).

    Raises
    ------
    WeightsError
        If the file is missing, truncated, altered, or not a shape predictor.
    """
    stream = _Stream(read_model_bytes(path, "shape predictor file"), str(path))
    stream.count(1, 1, "version")
    rows = stream.peek()
    parts = abs(rows) // 2
    if not 1 <= parts <= MAX_PARTS:
        raise stream.fail(f"an initial shape of {rows} values")
    initial = stream.column(2 * parts, "initial shape")
    # The trees come before the feature pixels they index, so their indices are checked once those are read.
    forests = [_trees(stream, parts, MAX_FEATURES) for _ in range(stream.count(1, MAX_CASCADES, "cascade count"))]
    stream.count(len(forests), len(forests), "anchor vector count")
    anchors = []
    for _ in forests:
        anchor = stream.take(stream.count(1, MAX_FEATURES, "feature count"))
        if (anchor < 0).any() or (anchor >= parts).any():
            raise stream.fail(f"an anchor outside parts 0 to {parts - 1}")
        anchors.append(anchor.copy())  # not a view that keeps its decoded chunk alive
    stream.count(len(forests), len(forests), "delta vector count")
    cascades = []
    for anchor, (first, second, thresholds, leaves) in zip(anchors, forests):
        deltas = stream.floats(2 * stream.count(len(anchor), len(anchor), "delta count")).reshape(-1, 2)
        if max(first.max(), second.max()) >= len(anchor):
            raise stream.fail(f"a split on a feature outside 0 to {len(anchor) - 1}")
        cascades.append(Cascade(anchor, deltas, first, second, thresholds, leaves))
    trailing = stream.left()
    if trailing:
        raise stream.fail(f"{trailing} unexpected trailing values")
    return ShapePredictor(initial.reshape(parts, 2), tuple(cascades))


def save_shape_predictor(predictor: ShapePredictor, path: str | os.PathLike) -> None:
    """Write ``predictor`` in dlib's ``shape_predictor`` serialization (the inverse of
    :func:`read_shape_predictor`; dlib's own model files round-trip byte for byte)."""
    parts = predictor.parts
    column = [-2 * parts, -1]
    chunks = [np.array([1, *column]), encode_floats(predictor.initial_shape), np.array([len(predictor.cascades)])]
    for cascade in predictor.cascades:
        trees, splits = cascade.first.shape
        chunks.append(np.array([trees]))
        for tree in range(trees):
            rows = np.concatenate([cascade.first[tree][:, None], cascade.second[tree][:, None],
                                   encode_floats(cascade.thresholds[tree])], axis=1)
            leaves = encode_floats(cascade.leaves[tree]).reshape(splits + 1, -1)
            chunks += [np.array([splits]), rows, np.array([splits + 1]),
                       np.concatenate([np.tile(column, (splits + 1, 1)), leaves], axis=1)]
    chunks.append(np.array([len(predictor.cascades)]))
    for cascade in predictor.cascades:
        chunks += [np.array([len(cascade.anchors)]), cascade.anchors]
    chunks.append(np.array([len(predictor.cascades)]))
    for cascade in predictor.cascades:
        chunks += [np.array([len(cascade.deltas)]), encode_floats(cascade.deltas)]
    Path(path).write_bytes(encode_integers(np.concatenate([np.asarray(c, np.int64).reshape(-1) for c in chunks])))


def grey_levels(image: np.ndarray) -> np.ndarray:
    """dlib's grey level of an ``H x W x 3`` uint8 RGB image (``(r + g + b) // 3``) or an ``H x W`` grey one.

    Raises
    ------
    ShapeError
        If the image is neither.
    """
    if image.dtype != np.uint8 or not (image.ndim == 2 or (image.ndim == 3 and image.shape[2] == 3)):
        raise ShapeError(f"landmarks need an H x W x 3 RGB or H x W grey uint8 image, got {image.shape} "
                         f"{image.dtype}")
    if image.ndim == 2:
        return image
    return (image.astype(np.uint16).sum(axis=2) // 3).astype(np.uint8)


def similarity_matrix(source: np.ndarray, target: np.ndarray) -> np.ndarray:
    """The 2x2 linear part ``c R`` of the least-squares similarity transform from ``source`` to ``target``.

    Umeyama (1991), eqs. 34-43, as dlib's ``find_similarity_transform``, in its closed form for two
    dimensions: with centred points ``a`` (source) and ``b`` (target), covariance ``C = mean(b a^T)`` and
    ``s = mean(|a|^2)``, ``c R = [[p, -q], [q, p]]`` where ``p = (C00 + C11) / s`` and ``q = (C10 - C01) / s``
    (the best proper rotation, which dlib's SVD with its reflection fix also yields). In float64; the
    identity where the source points coincide.

    Parameters
    ----------
    source : numpy.ndarray
        ``(P, 2)`` points.
    target : numpy.ndarray
        ``(P, 2)`` points, or ``(n, P, 2)``: one set per transform.

    Returns
    -------
    numpy.ndarray
        ``(2, 2)``, or ``(n, 2, 2)`` for ``n`` target sets.
    """
    a = source.astype(np.float64) - source.astype(np.float64).mean(axis=0)
    return _similarity_from(a, (a * a).sum() / len(a), target)


def _similarity_from(centred: np.ndarray, spread: float, target: np.ndarray) -> np.ndarray:
    """:func:`similarity_matrix` from the centred source points and their mean squared norm (a predictor's
    mean shape: computed once)."""
    if spread == 0:
        return np.broadcast_to(np.eye(2), (*target.shape[:-2], 2, 2)).copy()
    b = target.astype(np.float64)
    b -= b.mean(axis=-2, keepdims=True)
    cov = np.swapaxes(b, -1, -2) @ centred / len(centred)
    p, q = (cov[..., 0, 0] + cov[..., 1, 1]) / spread, (cov[..., 1, 0] - cov[..., 0, 1]) / spread
    return np.stack([p, -q, q, p], axis=-1).reshape(*target.shape[:-2], 2, 2)


def _box_frames(boxes: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per ``(n, 4)`` box, the ``(n, 1, 2)`` float64 scale ``(right - left, bottom - top)`` and origin
    ``(left, top)`` that map normalised points into the image."""
    scale = np.stack([boxes[:, 2] - boxes[:, 0], boxes[:, 3] - boxes[:, 1]], axis=1).astype(np.float64)
    return scale[:, None], boxes[:, None, :2].astype(np.float64)


def _to_image(points: np.ndarray, scale: np.ndarray, origin: np.ndarray) -> np.ndarray:
    """Normalised coordinates mapped into the image by the scale and origin of :func:`_box_frames` (or one
    coordinate's part of them), rounded as dlib's ``point`` (``floor(x + 0.5)``), as int64."""
    return np.floor(points * scale + origin + 0.5).astype(np.int64)


def _walk(left: np.ndarray) -> np.ndarray:
    """The leaf (``0 .. splits``) that each row of ``(m, splits)`` "go left" flags of a complete tree reaches from
    its root: node ``i``'s children are ``2i + 1`` (left) and ``2i + 2``, leaves follow the splits (dlib's
    ``regression_tree``)."""
    count, splits = left.shape
    base, flat = np.arange(count) * splits, left.reshape(-1)
    node = np.zeros(count, np.int64)
    for _ in range(splits.bit_length()):  # complete trees: depth log2(splits + 1)
        node = 2 * node + 2 - flat.take(base + node)
    return node - splits


@lru_cache(maxsize=4)
def _leaf_table(splits: int) -> np.ndarray:
    """:func:`_walk` of every pattern of ``splits`` flags, indexed by the pattern (bit ``s``: split ``s``)."""
    patterns = np.arange(1 << splits)
    return _walk(((patterns[:, None] >> np.arange(splits)) & 1).astype(bool))


def _leaves(left: np.ndarray) -> np.ndarray:
    """:func:`_walk`; for trees of up to :data:`MAX_TABLE_SPLITS` splits, one lookup of each row's flags as an
    integer instead of a pass per level."""
    splits = left.shape[1]
    if splits > MAX_TABLE_SPLITS:
        return _walk(left)
    return _leaf_table(splits).take(left @ (1 << np.arange(splits)))


@dataclass(frozen=True)
class ShapePredictor:
    """A parsed shape predictor: the initial shape and its cascades.

    Attributes
    ----------
    initial_shape : numpy.ndarray
        ``(P, 2)`` float32 mean shape in box-normalised coordinates.
    cascades : tuple of Cascade
        Applied in order.
    """

    initial_shape: np.ndarray
    cascades: tuple[Cascade, ...]

    @property
    def parts(self) -> int:
        """Number of landmarks."""
        return len(self.initial_shape)

    @property
    def nbytes(self) -> int:
        """Bytes of the model's arrays."""
        return self.initial_shape.nbytes + sum(array.nbytes for cascade in self.cascades
                                               for array in vars(cascade).values())

    def working_bytes(self, faces: int) -> int:
        """An upper bound of the temporaries :meth:`predict` holds at once for ``faces`` faces, in bytes
        (besides the grey levels it is given).

        Per face and feature pixel of the largest cascade, 64 bytes (its float32 position, the float64 and
        int64 pixel arithmetic, the index and the value); per split, 24 (the gathered values and their indices,
        the flags); per tree and shape value, 12 (its leaf increment, gathered and summed). Measured peaks
        (``tracemalloc``) are about 70 % of it for the 5-point model.
        """
        return faces * max(64 * len(c.anchors) + 24 * c.first.size + 12 * c.leaves.shape[0] * 2 * self.parts
                           for c in self.cascades)

    def predict(self, grey: np.ndarray | Sequence[np.ndarray], boxes: np.ndarray,
                image: np.ndarray | None = None) -> np.ndarray:
        """The landmarks of the faces in ``boxes`` as dlib's ``shape_predictor(image, rectangle)`` finds them.

        All faces (of one image or of several) go through each cascade together, and all trees of a cascade
        together: features, splits and leaves are gathered with numpy indexing; only the leaves' sum runs tree
        after tree (dlib's float32 order: a reduction over the trees' axis, which numpy runs row after row).

        Parameters
        ----------
        grey : numpy.ndarray or sequence of numpy.ndarray
            ``H x W`` uint8 grey levels (see :func:`grey_levels`), or several images of any sizes.
        boxes : numpy.ndarray
            ``(n, 4)`` inclusive ``(left, top, right, bottom)`` in pixels.
        image : numpy.ndarray, optional
            ``(n,)`` index into ``grey`` of each box's image, when ``grey`` is a sequence.

        Returns
        -------
        numpy.ndarray
            ``(n, P, 2)`` int64 pixel positions ``(x, y)`` in the model's part order.
        """
        boxes = np.asarray(boxes, np.int64).reshape(-1, 4)
        faces = len(boxes)
        if faces == 0:
            return np.zeros((0, self.parts, 2), np.int64)
        greys = [grey] if isinstance(grey, np.ndarray) else list(grey)
        image = np.zeros(faces, np.int64) if image is None else np.asarray(image, np.int64)
        sizes = np.array([g.shape for g in greys], np.int64)
        starts = np.concatenate([[0], np.cumsum(sizes[:, 0] * sizes[:, 1])[:-1]])
        # Per face: its image's height, width and first pixel in the concatenated grey levels.
        height, width, first = sizes[image, 0, None], sizes[image, 1, None], starts[image, None]
        flat_grey = np.concatenate([g.reshape(-1) for g in greys])
        frames = _box_frames(boxes)
        (scale_x, scale_y), (origin_x, origin_y) = np.moveaxis(frames[0], -1, 0), np.moveaxis(frames[1], -1, 0)
        centred = self.initial_shape.astype(np.float64) - self.initial_shape.astype(np.float64).mean(axis=0)
        spread = (centred * centred).sum() / len(centred)
        current = np.repeat(self.initial_shape[None], faces, axis=0)
        for cascade in self.cascades:
            linear = _similarity_from(centred, spread, current).astype(np.float32)
            dx, dy = cascade.deltas[:, 0], cascade.deltas[:, 1]
            anchor = current.take(cascade.anchors, axis=1)
            # Per coordinate, (faces, features) contiguous: float32 products and sums in dlib's order (A * delta,
            # then + anchor), then into the image.
            x = _to_image(linear[:, 0, 0, None] * dx + linear[:, 0, 1, None] * dy + anchor[..., 0], scale_x, origin_x)
            y = _to_image(linear[:, 1, 0, None] * dx + linear[:, 1, 1, None] * dy + anchor[..., 1], scale_y, origin_y)
            inside = (x >= 0) & (x < width) & (y >= 0) & (y < height)
            values = np.where(inside, flat_grey.take(np.where(inside, first + y * width + x, 0)), 0).astype(np.float32)
            # Every split of every tree of every face at once: (faces * trees, splits) "go left" flags.
            trees, splits = cascade.first.shape
            offsets = (np.arange(faces) * values.shape[1])[:, None, None]
            left = (values.take(cascade.first + offsets) - values.take(cascade.second + offsets)
                    > cascade.thresholds).reshape(faces * trees, splits)
            leaf = (_leaves(left).reshape(faces, trees)
                    + np.arange(trees) * (splits + 1)).reshape(-1)
            increments = cascade.leaves.reshape(trees * (splits + 1), -1).take(leaf, axis=0)
            # dlib adds the leaves one tree after another in float32. A reduction over an axis that is not the
            # innermost runs row after row (numpy sums pairwise only along the innermost): dlib's order.
            total = np.add.reduce(np.concatenate([current.reshape(faces, 1, -1), increments.reshape(faces, trees, -1)],
                                                 axis=1), axis=1, dtype=np.float32)
            current = total.reshape(faces, -1, 2)
        return _to_image(current, *frames)
