"""Winograd minimal filtering F(4x4, 3x3): 3x3 stride-1 convolutions with 4x fewer multiplications.

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), after Winograd (1980): each
4x4 tile of output is ``A^T [ (G g G^T) * (B^T d B) ] A``, with ``g`` the 3x3 filter, ``d`` the 6x6 input tile
that covers the tile's windows, ``*`` the element-wise product and the transform matrices below (interpolation
points 0, 1, -1, 2, -2 and infinity). Summed over the input channels, the element-wise products become 36
independent GEMMs, one per transformed position ``(xi, nu)``: ``M[xi, nu] (K x tiles) = U[xi, nu] (K x C) @
V[xi, nu] (C x tiles)`` (36 BLAS calls per band). That is 36 multiplications per 16 outputs
instead of 144, at the cost of the input and output transforms, done separably (rows, then columns) as GEMMs
with ``B^T`` and ``A^T`` on whole bands of tiles (:class:`WinogradBands`).

The result is not exact arithmetic on the same terms as a direct convolution: the transforms round, and the
error grows with the tile (F(4x4, 3x3) is the largest tile whose float32 error stays near the direct
convolution's; measured against PyTorch in ``docs/architecture.md``). An output depends, through rounding, on
the whole 6x6 input tile, so a map split into blocks whose tiles start elsewhere agrees with the whole map to
float32 rounding, not bit for bit; the tiles always start at the block's first output, and every tile is
transformed by the same operations wherever its band starts, so the thread count changes no result.

Tiles run in bands of tile rows sized from the cache (every band the same arithmetic, so the band bounds do
not change any result); each band is transformed, multiplied and transformed back while its buffers are warm.
The bias enters the products at :data:`BIAS_POINT`, and the ReLU is applied as the band's output rows are copied
into the output, on the worker thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from dcnn.kernels.blas import address, sgemm
from dcnn.kernels.cache import cache_bytes
from dcnn.kernels.phases import split_phases_serial
from dcnn.kernels.threads import parallel_for
from dcnn.network.window import Padding

__all__ = [
    "ALPHA",
    "BIAS_POINT",
    "COLUMN_POINTS",
    "COLUMN_POINTS_BY_TAPS",
    "COLUMN_TILE",
    "TILE",
    "WinogradBands",
    "band_rows",
    "images_per_block",
    "minimal_filtering",
    "scratch_buffer",
    "scratch_bytes",
    "scratch_shapes",
    "transform_weights",
    "winograd_pays",
]

def minimal_filtering(points: Sequence[float], tile: int, taps: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Winograd's minimal filtering ``F(tile, taps)`` from its interpolation points and infinity, in float64.

    ``y = A^T [(G g) * (B^T d)]`` gives the ``tile`` outputs of the correlation of ``tile + taps - 1`` inputs ``d``
    with the ``taps`` filter values ``g``: the Toom-Cook construction (Lavin and Gray, CVPR 2016, section 4;
    Winograd, 1980) with ``alpha = tile + taps - 1`` evaluation points, the last at infinity. For point ``a_k``,
    ``A^T[i, k] = a_k^i``, ``G[k, j] = a_k^j / prod_{l != k} (a_k - a_l)`` and row ``k`` of ``B^T`` holds the
    coefficients of ``prod_{l != k} (x - a_l)``; infinity contributes ``A^T[tile - 1, -1] = G[-1, taps - 1] = 1``
    and the coefficients of ``prod_l (x - a_l)``. For points 0, 1, -1, 2, -2 and F(4, 3) these are Lavin and
    Gray's matrices.

    Parameters
    ----------
    points : sequence of float
        The ``tile + taps - 2`` finite points, distinct.
    tile, taps : int
        Outputs per tile and filter length.

    Returns
    -------
    AT, G, BT : numpy.ndarray
        ``(tile, alpha)``, ``(alpha, taps)`` and ``(alpha, alpha)`` float64.
    """
    alpha = tile + taps - 1
    a = np.asarray(points, dtype=np.float64)
    if len(a) != alpha - 1 or len(set(a.tolist())) != len(a):
        raise ValueError(f"F({tile}, {taps}) needs {alpha - 1} distinct points, got {list(points)}")
    at, g, bt = np.zeros((tile, alpha)), np.zeros((alpha, taps)), np.zeros((alpha, alpha))
    for k, point in enumerate(a):
        others = np.delete(a, k)
        at[:, k] = point ** np.arange(tile)
        g[k] = point ** np.arange(taps) / np.prod(point - others)
        bt[k, :alpha - 1] = np.polynomial.polynomial.polyfromroots(others)
    at[tile - 1, -1] = g[-1, taps - 1] = 1
    bt[-1] = np.polynomial.polynomial.polyfromroots(a)
    return at, g, bt


#: Output tile side (m) and input tile side (alpha = m + r - 1 for the 3x3 filter).
TILE = 4
ALPHA = 6
#: Output transform A^T (m x alpha), filter transform G (alpha x 3) and input transform B^T (alpha x alpha) of
#: F(4, 3) at the points 0, 1, -1, 2, -2.
AT, G, BT = minimal_filtering((0, 1, -1, 2, -2), TILE, 3)
#: The product position (point 1 down the rows, point 1 across the columns: ``6 * 1 + 1``) whose output-transform
#: row and column (point 1's column of A^T) are all ones: a value added there reaches each of the 16 outputs of
#: its tile once, as the bias does (:class:`WinogradBands`).
BIAS_POINT = ALPHA * 1 + 1
#: F(4, 5) along the columns of 5-tall filters (:mod:`dcnn.kernels.conv`'s ``"winograd-rows"``): points 0, +-1,
#: +-2, +-1/2 (the smallest magnitudes after 0, 1 and 2; Lavin and Gray's choice for their larger tiles). Measured
#: on the face detector's 5x5 layers against float64: 3e-6 of the output's largest magnitude (F(2, 5) at 0, +-1,
#: +-2: 2e-6, at 1.6x the time).
COLUMN_TILE = 4
COLUMN_POINTS = (0, 1, -1, 2, -2, 0.5, -0.5)
#: The finite points of F(4, n) down the columns by filter length n: F(4, 5) for stride 1 (above); at stride 2 a
#: 5-tall filter's even kernel rows (3 taps on the even input rows) take F(4, 3) at Lavin and Gray's points, its
#: odd ones (2 taps) F(4, 2) at 0, +-1 and 2, the smallest magnitudes (the error of each in
#: ``docs/architecture.md``).
COLUMN_POINTS_BY_TAPS = {2: (0, 1, -1, 2), 3: (0, 1, -1, 2, -2), 5: COLUMN_POINTS}
#: A band of tiles has at least this many tiles, so each of its 36 GEMMs stays efficient. Measured with
#: interleaved runs of one band (VGG-16's 64, 128 and 256 channel layers): from 16 to about 128 tiles the
#: GEMMs speed up; beyond it the band's buffers leave the L2 cache and the transforms slow down.
MIN_BAND_TILES = 128
#: A block of images has at least this many tiles (or the whole batch): a small map's GEMMs would otherwise
#: have a few dozen columns, and stream the transformed filters (36 K C floats) once per image.
MIN_BLOCK_TILES = 4 * MIN_BAND_TILES
#: Winograd pays on a map of at least this many output tiles per image times channels (the smaller of input and
#: output channels). Below it, its transformed filters (4x the direct ones) are streamed for GEMMs a few tiles
#: wide, and the transforms (per tile, linear in the channels) weigh more than the multiplications saved.
#: Measured at batch 1 against im2col (CPU time, Winograd / im2col): 512 channels at 7x7 (4 tiles) 2.0, at 10x10
#: (9) 1.55; 256 at 14x14 (16) 1.24; 512 at 14x14 0.90; 256 at 20x20 (25) 0.80; 128 and 256 at 28x28 (49) 0.65;
#: 64 at 56x56 0.71.
WINOGRAD_MIN_TILE_CHANNELS = 6144
#: Float64 bytes of temporaries (:data:`TRANSFORM_TEMPORARIES` values per filter) that :func:`transform_weights`
#: holds at a time.
TRANSFORM_CHUNK_BYTES = 4 << 20
#: Float64 values per filter in :func:`transform_weights`'s temporaries: the filter (9), its rows laid out for the
#: first product (9), ``G g`` and its transposed copy (18 each) and ``G g G^T`` (36).
TRANSFORM_TEMPORARIES = 9 + 9 + 2 * 3 * ALPHA + ALPHA * ALPHA

#: Groups of transformed positions that the threads share in a one-band map (a divisor of 36 and a multiple
#: of the chunk granule of :mod:`dcnn.kernels.conv`: 1, 2 and 4 threads get equal shares).
GEMM_GROUPS = 4

_scratch = threading.local()


def scratch_buffer(role: str, shape: tuple[int, ...]) -> np.ndarray:
    """A float32 array of ``shape`` on this thread's buffer for ``role``, grown on demand, kept for later calls.

    Per thread, because the bands of one call run on several threads at once; kept, because faulting in
    megabytes of fresh pages on every layer costs more than the transforms.
    """
    size = int(np.prod(shape))
    buffers = _scratch.__dict__
    buffer = buffers.get(role)
    if buffer is None or buffer.size < size:
        buffer = buffers[role] = np.empty(size, dtype=np.float32)
    return buffer[:size].reshape(shape)


def transform_weights(weight: np.ndarray) -> np.ndarray:
    """``U = G g G^T`` of every ``(K, C, 3, 3)`` filter, as ``(36, K, C)`` float32 (row ``6 xi + nu``).

    Computed in float64 and rounded once, by chunks of output channels whose float64 temporaries take at most
    :data:`TRANSFORM_CHUNK_BYTES` (each value is the same sum whatever the chunk), so building VGG's or
    ResNet's 512 -> 512 layer does not hold its transformed filters in float64 on top of the float32 result.
    Each side is one matrix product over all filters of the chunk, ``G (g rows)`` then ``(.) G^T``: VGG-16's
    twelve layers in about 0.2 s, where one ``einsum`` over the four indices took 1.9 s (numpy's loops, no BLAS).
    """
    out_channels, channels = weight.shape[:2]
    u = np.empty((ALPHA, ALPHA, out_channels, channels), dtype=np.float32)
    step = max(1, TRANSFORM_CHUNK_BYTES // (8 * TRANSFORM_TEMPORARIES * channels))
    for first in range(0, out_channels, step):
        chunk = np.asarray(weight[first : first + step], dtype=np.float64)
        filters = chunk.shape[0] * channels
        rows = G @ chunk.transpose(2, 0, 1, 3).reshape(3, filters * 3)  # (xi, filter, j): G g of every filter
        products = G @ rows.reshape(ALPHA, filters, 3).transpose(0, 2, 1)  # (xi, nu, filter): (G g) G^T
        u[:, :, first : first + step] = products.reshape(ALPHA, ALPHA, chunk.shape[0], channels)
    return u.reshape(ALPHA * ALPHA, out_channels, channels)


def winograd_pays(channels: int, out_channels: int, map_size: tuple[int, int] | None) -> bool:
    """Whether F(4x4, 3x3) is expected to beat one im2col GEMM on an output map of ``map_size`` (``None``:
    unknown, taken as large): :data:`WINOGRAD_MIN_TILE_CHANNELS`. A rule on the geometry only, never a timing."""
    if map_size is None:
        return True
    tiles = -(-map_size[0] // TILE) * -(-map_size[1] // TILE)
    return tiles * min(channels, out_channels) >= WINOGRAD_MIN_TILE_CHANNELS


def images_per_block(batch: int, tiles_per_image: int) -> int:
    """Images to transform and multiply together: enough for :data:`MIN_BLOCK_TILES` tiles, at most ``batch``.

    A large map (VGG's 224x224: 3,136 tiles) runs one image at a time, as batch 1 would.
    """
    return max(1, min(batch, -(-MIN_BLOCK_TILES // max(1, tiles_per_image))))


def band_rows(channels: int, out_channels: int, tiles_wide: int) -> int:
    """Tile rows per band: its transformed input ``V`` and products ``M`` (36 (C + K) floats per tile; the band
    holds about twice that in all, :func:`scratch_shapes`, but its stages read and write two buffers at a time)
    fit in the L2 cache, or it has at least :data:`MIN_BAND_TILES` tiles and at least as many tiles as the layer
    has input or output channels.
    Depends on the layer and the map only, never on the thread count.

    The last bound keeps each of the 36 ``(K x C) @ (C x tiles)`` GEMMs at least as wide as it is deep: BLAS
    packs the ``K x C`` filters on every call, and VGG-16's 256-channel layers at 56x56 took 27 ms in two
    bands of 98 tiles against 20 ms in one of 196 (CPU time, interleaved); the 64-channel layers, whose
    transforms cost more than their GEMMs, keep their L2-sized bands.
    """
    per_row = 4 * ALPHA * ALPHA * (channels + out_channels) * tiles_wide
    least_tiles = max(MIN_BAND_TILES, channels, out_channels)
    return max(cache_bytes(2) // per_row, -(-least_tiles // tiles_wide), 1)


def scratch_shapes(channels: int, out_channels: int, rows: int, tiles_wide: int) -> dict[str, tuple[int, ...]]:
    """The float32 buffers one thread holds for a band of ``rows`` tile rows ``tiles_wide`` tiles wide, by role:
    the band's input phases (its plane rows and the next one, each ``tiles_wide + 1`` wide), the row-transformed
    input, ``V``, the products ``M``, the row-transformed output and the output rows of each row phase."""
    wide = tiles_wide + 1
    return {
        "phases": (TILE, TILE, channels, rows + 1, wide),
        "rows": (ALPHA, TILE, channels, rows + 1, wide),
        "v": (ALPHA, ALPHA, channels, rows + 1, wide),
        "m": (ALPHA, ALPHA, out_channels, rows * wide),
        "half": (TILE, ALPHA, out_channels, rows * wide),
        "out": (TILE, out_channels, rows, wide * TILE),
    }


def scratch_bytes(channels: int, out_channels: int, tiles_high: int, tiles_wide: int, batch: int) -> dict[str, int]:
    """Per role of :func:`scratch_shapes`, the bytes of the widest band of a call on ``batch`` images whose output
    is ``tiles_high x tiles_wide`` tiles: a block of :func:`images_per_block` images, bands of :func:`band_rows`
    tile rows (at most the block's). Each thread keeps the largest buffer per role that it has needed."""
    block = images_per_block(batch, tiles_high * tiles_wide)
    rows = min(block * (tiles_high + 1) - 1, band_rows(channels, out_channels, tiles_wide))
    shapes = scratch_shapes(channels, out_channels, rows, tiles_wide)
    return {role: 4 * math.prod(shape) for role, shape in shapes.items()}


#: B^T and A^T in float32 (their entries are small integers, exact), the left operands of the transform GEMMs, and
#: A (the right operand of the last one).
_BT32 = np.ascontiguousarray(BT, dtype=np.float32)
_AT32 = np.ascontiguousarray(AT, dtype=np.float32)
_A32 = np.ascontiguousarray(AT.T, dtype=np.float32)


def _transform(m: int, n: int, left: int, k: int, source: int, source_stride: int, target: int, target_stride: int,
               shift: int, shifted: int) -> None:
    """``target = left[:, :k] @ source`` (``m x n``) plus ``left[:, k:k + shifted] @ (source rows 0.. shifted by
    shift elements)``: one 1-D input transform of ``n`` values as two GEMMs on float32 buffers given by address
    (:func:`dcnn.kernels.blas.sgemm`); ``left`` is the address of a C-order ``m x (k + shifted)`` matrix."""
    width = k + shifted
    sgemm(m, n, k, left, width, source, source_stride, target, target_stride, False)
    sgemm(m, n, shifted, left + 4 * k, width, source + 4 * shift, source_stride, target, target_stride, True)


class WinogradBands:
    """One call of F(4x4, 3x3) over a block of images, band by band, every transform a GEMM.

    The images are padded to ``4 (th + 1)`` rows (their ``th`` tile rows and a spare one) and ``4 (tw + 1)``
    columns and stacked by tile rows. A band of tile rows ``[first, stop)`` is split by row and column modulo 4
    into its own phase planes ``(4, 4, C, rows + 1, tw + 1)``: tile row ``t``'s input row ``4 t + i`` is plane
    row ``t + i // 4`` of phase ``i mod 4``, so the band holds the next tile row too. In that layout each 1-D
    transform is a GEMM on contiguous memory: the six inputs of a transformed row ``xi`` are the four row phases
    (equally far apart) and the first two again, one plane row further on; the six of a transformed column, the
    four column phases and the first two one element further on. Each GEMM runs across the channels and plane
    rows of the band at once, so it also computes values for the band's extra plane row and each row's spare
    column, from neighbouring values; those positions are never read by a valid output. The 36 products then
    take the band's valid plane rows only, and the output transforms are GEMMs likewise.

    The bands depend on the layer and the map only (:func:`band_rows`), and the threads share whole bands or, for
    a map of one band, fixed groups of the 36 products, so the thread count changes no result; other band bounds
    change the results only as far as BLAS sums a GEMM of another width in another order.

    Parameters
    ----------
    x : numpy.ndarray
        ``(b, C, H, W)`` float32 input.
    padding : tuple of int
        ``(top, bottom, left, right)`` zero padding.
    out : numpy.ndarray
        ``(b, K, Ho, Wo)`` float32 output.
    u : numpy.ndarray
        ``(36, K, C)`` transformed filters (:func:`transform_weights`).
    bias : numpy.ndarray, optional
        ``(K,)`` or ``(K, 1)`` bias. It enters the products at point ``(1, 1)`` (:data:`BIAS_POINT`), whose
        output-transform row and column are all ones, so each output gets it once and no pass over the output
        adds it.
    relu : bool
        Apply ``max(x, 0)`` to the output, as the output rows are copied into ``out``.
    share_gemms : bool
        Split a band's 36 product GEMMs over the kernel threads (in :data:`GEMM_GROUPS` fixed groups of
        positions, so every product is the same at any thread count). For a map of one band, which would
        otherwise run on one thread; never from inside a :func:`dcnn.kernels.threads.parallel_for` worker.
    """

    def __init__(self, x: np.ndarray, padding: Padding, out: np.ndarray, u: np.ndarray,
                 bias: np.ndarray | None = None, relu: bool = False, share_gemms: bool = False):
        out_channels, channels = u.shape[1:]
        if (u.dtype != np.float32 or not u.flags.c_contiguous or u.shape[0] != ALPHA * ALPHA
                or x.shape[1] != channels or out.shape[:2] != (len(x), out_channels)):
            raise ValueError(f"transformed filters {u.shape} {u.dtype} do not fit input {x.shape} and output "
                             f"{out.shape}: (36, K, C) C-contiguous float32 expected")
        self.x, self.padding, self.out, self.u = x, padding, out, u
        self.bias = None if bias is None else np.asarray(bias, np.float32).reshape(out_channels, 1)
        self.relu = relu
        self.share_gemms = share_gemms
        out_h, out_w = out.shape[2:]
        self.tiles_high, self.tiles_wide = -(-out_h // TILE), -(-out_w // TILE)
        self.image_rows = self.tiles_high + 1
        #: Tile rows to compute: the last image's spare tile row would read past the stack.
        self.tile_rows = len(x) * self.image_rows - 1

    def band_rows(self) -> int:
        """Tile rows per band (:func:`band_rows` of this layer and map)."""
        return band_rows(self.u.shape[2], self.u.shape[1], self.tiles_wide)

    def _images(self, first: int, stop: int) -> list[tuple[int, int, int]]:
        """``(image, first tile row, stop)`` of each image's part of stacked tile rows ``[first, stop)``."""
        parts = []
        row = first
        while row < stop:
            image, local = divmod(row, self.image_rows)
            end = min(stop - row, self.image_rows - local) + local
            parts.append((image, local, end))
            row += end - local
        return parts

    def _split(self, first: int, stop: int, phases: np.ndarray) -> None:
        """The band's input phases: plane rows ``[first, stop]`` of the stack (the zero-padded images)."""
        top, bottom, left, right = self.padding
        at = 0
        for image, local, end in self._images(first, stop + 1):
            target = phases[:, :, :, at:at + end - local][:, :, :, None]
            split_phases_serial(target, self.x[image:image + 1], (top - TILE * local, bottom, left, right),
                                (TILE, TILE))
            at += end - local

    def _scatter(self, first: int, stop: int, result: np.ndarray) -> None:
        """Copy the band's output rows ``result`` (4, K, rows, 4 (tw + 1)), by row phase, into :attr:`out`, valid
        pixels only, through the ReLU if :attr:`relu`: whole rows, every fourth one."""
        out_h, out_w = self.out.shape[2:]
        at = 0
        for image, local, end in self._images(first, stop):
            valid = min(end, self.tiles_high)
            for i in range(TILE):
                row0 = TILE * local + i
                count = len(range(row0, min(out_h, TILE * valid), TILE))
                if count <= 0:
                    continue
                target = self.out[image, :, row0:row0 + TILE * count:TILE]
                source = result[i, :, at:at + count, :out_w]
                if self.relu:
                    np.maximum(source, np.float32(0), out=target)
                else:
                    target[...] = source
            at += end - local

    def run(self, band: tuple[int, int]) -> None:
        """Compute tile rows ``band`` into :attr:`out`.

        Parameters
        ----------
        band : tuple of int
            ``(first, stop)``: tile rows of the stack, ``0 <= first < stop <=`` :attr:`tile_rows`.

        Raises
        ------
        ValueError
            If a buffer of the band would need a row stride of 2^31 elements or more (BLAS's integers).
        """
        first, stop = band
        rows, wide = stop - first, self.tiles_wide + 1
        out_channels, channels = self.u.shape[1:]
        if max(TILE * channels * (rows + 1) * wide, ALPHA * out_channels * rows * wide) >= 2**31:
            raise ValueError(f"a band of {rows} tile rows of {channels} -> {out_channels} channels, {wide} tiles "
                             "wide, is too large for BLAS's 32-bit strides")
        shapes = scratch_shapes(channels, out_channels, rows, self.tiles_wide)
        buffers = {role: scratch_buffer(role, shape) for role, shape in shapes.items()}
        self._split(first, stop, buffers["phases"])
        phases, by_rows, v, m, half, result = (address(buffers[role]) for role in shapes)
        plane = channels * (rows + 1) * wide  # one phase plane of the band
        bt, at = address(_BT32), address(_AT32)
        # Rows: by_rows[xi, q] = sum_j BT[xi, j] phases[j mod 4, q] (plane rows j // 4 further on), per column
        # phase q; the last plane row's outputs, which would read past the plane, are zeroed instead.
        span = plane - wide
        for q in range(TILE):
            _transform(ALPHA, span, bt, TILE, phases + 4 * q * plane, TILE * plane, by_rows + 4 * q * plane,
                       TILE * plane, wide, ALPHA - TILE)
        buffers["rows"].reshape(ALPHA, TILE, -1)[:, :, span:] = 0
        # Columns: V[xi, nu] = sum_j BT[nu, j] by_rows[xi, j mod 4] (one element further on for j >= 4).
        for xi in range(ALPHA):
            _transform(ALPHA, plane - 1, bt, TILE, by_rows + 4 * xi * TILE * plane, plane,
                       v + 4 * xi * ALPHA * plane, plane, 1, ALPHA - TILE)
        buffers["v"].reshape(ALPHA * ALPHA, -1)[:, -1] = 0
        # The 36 products on the band's valid plane rows: M[p] (K x rows wide) = U[p] (K x C) @ V[p].
        columns = rows * wide
        weights = address(self.u)

        def multiply(positions: Sequence[int]) -> None:
            for position in positions:
                biased = position == BIAS_POINT and self.bias is not None
                if biased:
                    buffers["m"].reshape(ALPHA * ALPHA, out_channels, columns)[position] = self.bias
                sgemm(out_channels, columns, channels, weights + 4 * position * out_channels * channels, channels,
                      v + 4 * position * plane, (rows + 1) * wide, m + 4 * position * out_channels * columns,
                      columns, biased)

        if self.share_gemms:
            step = ALPHA * ALPHA // GEMM_GROUPS
            def multiply_groups(groups: Sequence[int]) -> None:
                for group in groups:
                    multiply(range(group * step, (group + 1) * step))

            parallel_for(multiply_groups, range(GEMM_GROUPS))
        else:
            multiply(range(ALPHA * ALPHA))
        # Output transform: over xi per nu, then over nu per output row phase i.
        block = out_channels * columns
        for nu in range(ALPHA):
            sgemm(TILE, block, ALPHA, at, ALPHA, m + 4 * nu * block, ALPHA * block, half + 4 * nu * block,
                  ALPHA * block, False)
        # Over nu per output row phase i, as (K rows wide) x 4 = half[i]^T A: the 4 outputs j of each tile column
        # land side by side, so each row of the result is a row of the output (and its spare tile column).
        a = address(_A32)
        for i in range(TILE):
            sgemm(block, TILE, ALPHA, half + 4 * i * ALPHA * block, block, a, TILE, result + 4 * i * TILE * block,
                  TILE, False, transpose_a=True)
        self._scatter(first, stop, buffers["out"])
