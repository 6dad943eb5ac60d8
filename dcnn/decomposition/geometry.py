"""Pure index arithmetic for spatial decomposition: boxes, block splits, receptive fields, halo plans.

Nothing here knows about MPI. A *box* is a half-open rectangle of a feature map, rows ``[top, bottom)`` and
columns ``[left, right)``. Ranks are numbered row-major over a ``Py x Px`` grid (rank = ``i * Px + j``), the
order of an MPI Cartesian communicator without reordering.

For a windowed layer (convolution or pooling) with kernel ``k``, stride ``s``, dilation ``d`` and explicit
leading padding ``p``, output row ``o`` reads input rows ``s*o - p + d*i`` for ``i = 0 .. k-1``. An output box
therefore needs the input rows ``first = s*o0 - p`` to ``last = s*(o1-1) + d*(k-1) - p`` (inclusive), clipped to
the map; what falls outside the map is padding, made explicit per side.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass
from itertools import pairwise

import numpy as np

from dcnn.network.window import Padding, window_span

__all__ = [
    "EMPTY", "Box", "Transfer", "assemble_boxes", "block_boxes", "bounding_box", "bounding_box_of_difference",
    "exchange_transfers", "grid_coordinates", "input_box", "interior_box", "layer_input", "split_extent",
    "cover",
]


@dataclass(frozen=True)
class Box:
    """Rows ``[top, bottom)`` and columns ``[left, right)`` of a map; empty when either range is."""

    top: int
    bottom: int
    left: int
    right: int

    @property
    def height(self) -> int:
        """Rows covered (0 for an empty box)."""
        return max(0, self.bottom - self.top)

    @property
    def width(self) -> int:
        """Columns covered (0 for an empty box)."""
        return max(0, self.right - self.left)

    @property
    def area(self) -> int:
        """Pixels covered."""
        return self.height * self.width

    @property
    def empty(self) -> bool:
        """True when the box covers no pixel."""
        return self.area == 0

    def intersect(self, other: Box) -> Box:
        """The common part of two boxes (possibly empty)."""
        return Box(max(self.top, other.top), min(self.bottom, other.bottom),
                   max(self.left, other.left), min(self.right, other.right))

    def contains(self, other: Box) -> bool:
        """True when ``other`` is empty or lies inside this box."""
        return other.empty or (self.top <= other.top and other.bottom <= self.bottom
                               and self.left <= other.left and other.right <= self.right)

    def slices(self, origin: Box | None = None) -> tuple[slice, slice]:
        """Row and column slices of this box in an array that holds ``origin`` (the whole map by default)."""
        top, left = (0, 0) if origin is None else (origin.top, origin.left)
        return (slice(self.top - top, self.top - top + self.height),
                slice(self.left - left, self.left - left + self.width))


EMPTY = Box(0, 0, 0, 0)


def cover(boxes: list[Box]) -> Box:
    """The smallest box that contains every non-empty box of ``boxes`` (``EMPTY`` if there is none)."""
    filled = [box for box in boxes if not box.empty]
    if not filled:
        return EMPTY
    return Box(min(b.top for b in filled), max(b.bottom for b in filled), min(b.left for b in filled),
               max(b.right for b in filled))


def bounding_box(mask: np.ndarray, origin: Box) -> Box:
    """The smallest box around the true pixels of ``mask``, a boolean map of ``origin`` (``EMPTY`` if none)."""
    rows, cols = np.flatnonzero(mask.any(axis=1)), np.flatnonzero(mask.any(axis=0))
    if rows.size == 0:
        return EMPTY
    return Box(origin.top + int(rows[0]), origin.top + int(rows[-1]) + 1, origin.left + int(cols[0]),
               origin.left + int(cols[-1]) + 1)


def bounding_box_of_difference(box: Box, others: list[Box]) -> Box:
    """The smallest box that covers every pixel of ``box`` outside all of ``others`` (``EMPTY`` if none is left).

    This is what a fused tile must still compute itself when its neighbours have computed ``others``; the
    bounding box may include some of their pixels again, since kernels compute rectangles.
    """
    if box.empty:
        return EMPTY
    left_over = np.ones((box.height, box.width), bool)
    for other in others:
        part = box.intersect(other)
        if not part.empty:
            left_over[part.slices(box)] = False
    return bounding_box(left_over, box)


def split_extent(length: int, parts: int) -> list[tuple[int, int]]:
    """Split ``range(length)`` into ``parts`` contiguous ranges whose sizes differ by at most one.

    The larger ranges come first. With ``length < parts`` the trailing ranges are empty.
    """
    if parts < 1:
        raise ValueError(f"cannot split into {parts} parts")
    base, extra = divmod(length, parts)
    bounds = [0]
    for part in range(parts):
        bounds.append(bounds[-1] + base + (1 if part < extra else 0))
    return list(pairwise(bounds))


def grid_coordinates(rank: int, dims: tuple[int, int]) -> tuple[int, int]:
    """``(row, column)`` of ``rank`` in a row-major ``Py x Px`` grid."""
    return divmod(rank, dims[1])


def block_boxes(height: int, width: int, dims: tuple[int, int]) -> list[Box]:
    """The block of a ``height x width`` map that each rank of a ``Py x Px`` grid owns, in rank order."""
    rows, cols = split_extent(height, dims[0]), split_extent(width, dims[1])
    return [Box(r0, r1, c0, c1) for r0, r1 in rows for c0, c1 in cols]


def _needed_range(first_out: int, stop_out: int, kernel: int, stride: int, dilation: int, pad_before: int,
                  size: int) -> tuple[int, int, int, int]:
    """Clipped input range and (before, after) padding for output positions ``[first_out, stop_out)``.

    The range ``[first, last]`` may lie partly or wholly outside the map (a window that reads only padding);
    the padding counts exactly the positions outside, so padding plus clipped range is always the whole range.
    """
    first = stride * first_out - pad_before
    last = stride * (stop_out - 1) + window_span(kernel, dilation) - 1 - pad_before
    start = min(max(first, 0), size)
    stop = max(start, min(last + 1, size))
    return start, stop, max(0, min(last + 1, 0) - first), max(0, last + 1 - max(first, size))


def input_box(output: Box, kernel: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
              padding: Padding, in_height: int, in_width: int) -> tuple[Box, Padding]:
    """The input box an output box reads, clipped to the map, and the padding that replaces the rest.

    Parameters
    ----------
    output : Box
        Output pixels to compute.
    kernel, stride, dilation : tuple of int
        Window geometry ``(vertical, horizontal)``.
    padding : tuple of int
        The layer's explicit ``(top, bottom, left, right)`` padding; only top and left position the windows.
    in_height, in_width : int
        Size of the input map.

    Returns
    -------
    tuple
        ``(box, (top, bottom, left, right))``: running the layer's kernel on the input ``box`` with this padding
        yields exactly the ``output`` box. An empty output needs an empty box and no padding.
    """
    if output.empty:
        return EMPTY, (0, 0, 0, 0)
    r0, r1, pad_top, pad_bottom = _needed_range(output.top, output.bottom, kernel[0], stride[0], dilation[0],
                                                padding[0], in_height)
    c0, c1, pad_left, pad_right = _needed_range(output.left, output.right, kernel[1], stride[1], dilation[1],
                                                padding[2], in_width)
    return Box(r0, r1, c0, c1), (pad_top, pad_bottom, pad_left, pad_right)


def interior_box(output: Box, held: Box, kernel: tuple[int, int], stride: tuple[int, int],
                 dilation: tuple[int, int], padding: Padding, in_height: int, in_width: int) -> Box:
    """The largest sub-box of ``output`` computable from the ``held`` input block alone.

    Those outputs can be computed while the halo is still in flight. Returns an empty box if there is none.
    """
    if output.empty:
        return EMPTY

    def axis_range(lo: int, hi: int, axis: int, held_lo: int, held_hi: int, size: int) -> tuple[int, int]:
        inside = []
        for o in range(lo, hi):
            start, stop, _, _ = _needed_range(o, o + 1, kernel[axis], stride[axis], dilation[axis],
                                              padding[2 * axis], size)
            if held_lo <= start and stop <= held_hi:
                inside.append(o)
        return (inside[0], inside[-1] + 1) if inside else (lo, lo)

    rows = axis_range(output.top, output.bottom, 0, held.top, held.bottom, in_height)
    cols = axis_range(output.left, output.right, 1, held.left, held.right, in_width)
    box = Box(rows[0], rows[1], cols[0], cols[1])
    return box if not box.empty else EMPTY


@dataclass(frozen=True)
class Transfer:
    """One message of a halo exchange: ``source`` sends the part ``box`` of its block to ``dest``."""

    source: int
    dest: int
    box: Box


def exchange_transfers(held: list[Box], needed: list[Box]) -> list[Transfer]:
    """Every message of one layer's exchange, for blocks ``held[r]`` and needed input boxes ``needed[r]``.

    Each rank receives, from every other rank, the intersection of that rank's block with its own needed box.
    Corners, halos several ranks wide and empty blocks all come out of the same rule. A rank whose held box
    already covers its needed box (the replicated input of the first layer) receives nothing; otherwise the
    held boxes are assumed disjoint. Transfers come ordered by destination, then source.

    When the held blocks tile a grid (:func:`block_boxes`: every block is one row band times one column band),
    a needed box is matched only against the blocks of the bands it crosses, found by bisection, so a layer
    costs O(P log P) plus the number of messages instead of O(P^2) (the planner's 1,000-node grids).
    """
    bands = _grid_bands(held)
    transfers = []
    for dest, need in enumerate(needed):
        if held[dest].contains(need):
            continue
        sources = range(len(held)) if bands is None else _band_sources(bands, need)
        for source in sources:
            if source != dest:
                part = held[source].intersect(need)
                if not part.empty:
                    transfers.append(Transfer(source, dest, part))
    return transfers


_Bands = tuple[list[tuple[int, int]], list[tuple[int, int]], dict[tuple[int, int], int]]


def _grid_bands(held: list[Box]) -> _Bands | None:
    """The sorted, disjoint row and column bands of blocks that tile a grid, and the rank of each band pair;
    ``None`` when the non-empty blocks are not such a grid (they overlap, or do not line up in bands)."""
    blocks = {rank: box for rank, box in enumerate(held) if not box.empty}
    rows = sorted({(box.top, box.bottom) for box in blocks.values()})
    cols = sorted({(box.left, box.right) for box in blocks.values()})
    if any(a[1] > b[0] for a, b in pairwise(rows)) or any(a[1] > b[0] for a, b in pairwise(cols)):
        return None
    where = {((box.top, box.bottom), (box.left, box.right)): rank for rank, box in blocks.items()}
    return (rows, cols, where) if len(where) == len(blocks) else None


def _band_sources(bands: _Bands, need: Box) -> list[int]:
    """The ranks whose blocks (one row band times one column band) meet ``need``, in rank order."""
    rows, cols, where = bands
    crossed_rows = _crossed(rows, need.top, need.bottom)
    crossed_cols = _crossed(cols, need.left, need.right)
    return sorted(where[pair] for pair in ((r, c) for r in crossed_rows for c in crossed_cols) if pair in where)


def _crossed(bands: list[tuple[int, int]], start: int, stop: int) -> list[tuple[int, int]]:
    """The bands of a sorted, disjoint list that meet ``[start, stop)``."""
    first = bisect.bisect_right(bands, start, key=lambda band: band[1])
    crossed = []
    for band in bands[first:]:
        if band[0] >= stop:
            break
        crossed.append(band)
    return crossed


def assemble_boxes(flat: np.ndarray, boxes: list[Box], leading: tuple[int, int],
                   shape: tuple[int, int]) -> np.ndarray:
    """Place consecutive C-order ``(B, C, h, w)`` blocks of ``flat`` at ``boxes`` of a ``(B, C, H, W)`` map."""
    whole = np.empty((*leading, *shape), np.float32)
    offset = 0
    for box in boxes:
        size = leading[0] * leading[1] * box.area
        whole[(slice(None), slice(None), *box.slices())] = flat[offset:offset + size].reshape(
            *leading, box.height, box.width)
        offset += size
    return whole


def layer_input(window, in_shape: tuple[int, ...], output: Box) -> tuple[Box, Padding]:
    """The input box and map-border padding one layer needs for ``output``: :func:`input_box` for a windowed
    layer (its :class:`~dcnn.network.window.Window`), the same box for a pointwise one (``window`` is ``None``)."""
    if window is None:
        return output, (0, 0, 0, 0)
    height, width = in_shape[1:]
    return input_box(output, window.kernel, window.stride, window.dilation, window.explicit_padding(height, width),
                     height, width)
