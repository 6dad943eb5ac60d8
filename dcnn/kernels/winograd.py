"""Winograd minimal filtering F(4x4, 3x3): 3x3 stride-1 convolutions with 4x fewer multiplications.

Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks" (CVPR 2016), after Winograd (1980): each
4x4 tile of output is ``A^T [ (G g G^T) * (B^T d B) ] A``, with ``g`` the 3x3 filter, ``d`` the 6x6 input tile
that covers the tile's windows, ``*`` the element-wise product and the transform matrices below (interpolation
points 0, 1, -1, 2, -2 and infinity). Summed over the input channels, the element-wise products become 36
independent GEMMs, one per transformed position ``(xi, nu)``: ``M[xi, nu] (K x tiles) = U[xi, nu] (K x C) @
V[xi, nu] (C x tiles)`` (one ``numpy.matmul`` of the stacks). That is 36 multiplications per 16 outputs
instead of 144, at the cost of the input and output transforms (additions and multiplications by small powers
of two, done here with numpy on whole bands of tiles, separably: rows, then columns).

The result is not exact arithmetic on the same terms as a direct convolution: the transforms round, and the
error grows with the tile (F(4x4, 3x3) is the largest tile whose float32 error stays near the direct
convolution's; measured against PyTorch in ``docs/architecture.md``). An output depends, through rounding, on
the whole 6x6 input tile, so a map split into blocks whose tiles start elsewhere agrees with the whole map to
float32 rounding, not bit for bit; the tiles always start at the block's first output, and every tile is
transformed by the same operations wherever its band starts, so the thread count changes no result.

Tiles run in bands of tile rows sized from the cache (every band the same arithmetic, so the band bounds do
not change any result); each band is transformed, multiplied and transformed back while its buffers are warm,
and bias and ReLU are applied to it on the worker thread.
"""

from __future__ import annotations

import math
import threading
from collections.abc import Sequence

import numpy as np

from dcnn.kernels.cache import cache_bytes
from dcnn.kernels.threads import parallel_for

__all__ = [
    "ALPHA",
    "COLUMN_POINTS",
    "COLUMN_POINTS_BY_TAPS",
    "COLUMN_TILE",
    "TILE",
    "WinogradBands",
    "band_rows",
    "images_per_block",
    "minimal_filtering",
    "scatter_tiles",
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
#: Output transform A^T (m x alpha, applied by :func:`_output_1d`), filter transform G (alpha x 3) and input
#: transform B^T (alpha x alpha, applied by :func:`_input_1d`) of F(4, 3) at the points 0, 1, -1, 2, -2.
AT, G, BT = minimal_filtering((0, 1, -1, 2, -2), TILE, 3)
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
#: Float64 bytes of transformed filters computed at a time by :func:`transform_weights`.
TRANSFORM_CHUNK_BYTES = 4 << 20

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

    Computed in float64 and rounded once, :data:`TRANSFORM_CHUNK_BYTES` of float64 products at a time (by
    output channels: each value is the same sum whatever the chunk), so building VGG's or ResNet's 512 -> 512
    layer does not hold twice its transformed filters in float64 on top of the float32 result.
    """
    out_channels, channels = weight.shape[:2]
    u = np.empty((ALPHA, ALPHA, out_channels, channels), dtype=np.float32)
    step = max(1, TRANSFORM_CHUNK_BYTES // (8 * ALPHA * ALPHA * channels))
    for first in range(0, out_channels, step):
        chunk = np.asarray(weight[first : first + step], dtype=np.float64)
        u[:, :, first : first + step] = np.einsum("ai,kcij,bj->abkc", G, chunk, G)
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
    """Tile rows per band: the band's transformed input and products fit in the L2 cache, or it has at
    least :data:`MIN_BAND_TILES` tiles and at least as many tiles as the layer has input or output channels.
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
    the row-transformed input, ``V``, the products ``M`` and the row-transformed output."""
    tiles = rows * tiles_wide
    return {
        "rows": (ALPHA, TILE, channels, rows, tiles_wide + 1),
        "v": (ALPHA * ALPHA, channels, tiles),
        "m": (ALPHA * ALPHA, out_channels, tiles),
        "half": (TILE, ALPHA, out_channels, rows, tiles_wide),
    }


def scratch_bytes(channels: int, out_channels: int, tiles_high: int, tiles_wide: int, batch: int) -> dict[str, int]:
    """Per role of :func:`scratch_shapes`, the bytes of the widest band of a call on ``batch`` images whose output
    is ``tiles_high x tiles_wide`` tiles: a block of :func:`images_per_block` images, bands of :func:`band_rows`
    tile rows (at most the block's). Each thread keeps the largest buffer per role that it has needed."""
    block = images_per_block(batch, tiles_high * tiles_wide)
    rows = min(block * (tiles_high + 1) - 1, band_rows(channels, out_channels, tiles_wide))
    shapes = scratch_shapes(channels, out_channels, rows, tiles_wide)
    return {role: 4 * math.prod(shape) for role, shape in shapes.items()}


def _input_1d(d: Sequence[np.ndarray], out: np.ndarray) -> None:
    """``out[i] = sum_j BT[i, j] d[j]`` for six equally shaped arrays ``d`` (``out``: (6, ...))."""
    p = d[4] - 4 * d[2]
    q = d[3] - 4 * d[1]
    np.add(p, q, out=out[1])
    np.subtract(p, q, out=out[2])
    p = np.subtract(d[4], d[2], out=p)
    q = np.subtract(d[3], d[1], out=q)
    q *= 2
    np.add(p, q, out=out[3])
    np.subtract(p, q, out=out[4])
    np.multiply(d[0], 4, out=out[0])
    out[0] += d[4]
    np.multiply(d[2], 5, out=p)
    out[0] -= p
    np.multiply(d[1], 4, out=out[5])
    out[5] += d[5]
    np.multiply(d[3], 5, out=p)
    out[5] -= p


def _output_1d(m: Sequence[np.ndarray], out: Sequence[np.ndarray]) -> None:
    """``out[i] = sum_j AT[i, j] m[j]`` for six equally shaped arrays ``m`` into four arrays ``out``."""
    a = m[1] + m[2]
    b = m[1] - m[2]
    c = m[3] + m[4]
    d = m[3] - m[4]
    np.add(m[0], a, out=out[0])
    out[0] += c
    np.multiply(c, 4, out=out[2])
    out[2] += a
    np.multiply(d, 2, out=out[1])
    out[1] += b
    d *= 8
    np.add(b, d, out=out[3])
    out[3] += m[5]


class WinogradBands:
    """One call of F(4x4, 3x3) over a block of images, band by band, on phase planes.

    Input and output are split by row and column modulo 4 (as :mod:`dcnn.kernels.conv` splits a strided
    convolution's input), so every tile's row ``4 t + i`` is row ``t + i // 4`` of phase ``i mod 4`` and each
    transform reads and writes whole contiguous rows of tiles instead of every fourth value.

    Parameters
    ----------
    planes : numpy.ndarray
        ``(4, 4, C, rows, tw + 1)`` zero-padded input: phase ``(p, q)`` holds padded pixels ``(4 r + p, 4 c + q)``
        of ``b`` images stacked by rows, each image ``th + 1`` plane rows high (its tile rows, then zeros).
    result : numpy.ndarray
        ``(4, 4, K, rows, tw)`` output in the same geometry: ``result[i, j, k, t, u]`` is output pixel
        ``(4 t + i, 4 u + j)`` of channel ``k``.
    u : numpy.ndarray
        ``(36, K, C)`` transformed filters (:func:`transform_weights`).
    tile_rows : int
        Tile rows to compute (``b (th + 1) - 1``: the last image's trailing tile row reads past the buffer).
    share_gemms : bool
        Split a band's 36 GEMMs over the kernel threads (in :data:`GEMM_GROUPS` fixed groups of positions, so
        every product is the same at any thread count). For a map of one band, which would otherwise run on one
        thread; never from inside a :func:`dcnn.kernels.threads.parallel_for` worker.
    """

    def __init__(
        self, planes: np.ndarray, result: np.ndarray, u: np.ndarray, tile_rows: int, share_gemms: bool = False
    ):
        self.planes, self.result, self.u, self.tile_rows = planes, result, u, tile_rows
        self.share_gemms = share_gemms
        self.tiles_wide = result.shape[-1]

    def band_rows(self) -> int:
        """Tile rows per band (:func:`band_rows` of this layer and map)."""
        return band_rows(self.u.shape[2], self.u.shape[1], self.tiles_wide)

    def run(self, band: tuple[int, int]) -> None:
        """Compute tile rows ``band = (first, stop)`` into :attr:`result`."""
        first, stop = band
        rows, wide = stop - first, self.tiles_wide
        channels, out_channels = self.u.shape[2], self.u.shape[1]
        # Rows: input row 4 t + i is plane row t + i // 4 of row phase i mod 4 -> (6, 4, C, rows, tw + 1).
        shapes = scratch_shapes(channels, out_channels, rows, wide)
        by_rows = scratch_buffer("rows", shapes["rows"])
        _input_1d([self.planes[i % TILE, :, :, first + i // TILE : stop + i // TILE] for i in range(ALPHA)], by_rows)
        # Columns, likewise -> V (xi, nu, C, rows, tw): one (C, tiles) matrix per position (xi, nu).
        v = scratch_buffer("v", shapes["v"])
        _input_1d(
            [by_rows[:, j % TILE, :, :, j // TILE : j // TILE + wide] for j in range(ALPHA)],
            v.reshape(ALPHA, ALPHA, channels, rows, wide).transpose(1, 0, 2, 3, 4),
        )
        # The 36 GEMMs in one call: numpy hands each (K x C) @ (C x tiles) of the stack to BLAS sgemm.
        m = scratch_buffer("m", shapes["m"])
        if self.share_gemms:

            def multiply(groups: Sequence[tuple[int, int]]) -> None:
                for first_position, stop_position in groups:
                    np.matmul(
                        self.u[first_position:stop_position],
                        v[first_position:stop_position],
                        out=m[first_position:stop_position],
                    )

            step = ALPHA * ALPHA // GEMM_GROUPS
            parallel_for(multiply, [(g * step, (g + 1) * step) for g in range(GEMM_GROUPS)])
        else:
            np.matmul(self.u, v, out=m)
        # Output transform: rows over xi, then columns over nu, straight into the output phases.
        half = scratch_buffer("half", shapes["half"])
        _output_1d(list(m.reshape(ALPHA, ALPHA, out_channels, rows, wide)), half)
        _output_1d([half[:, nu] for nu in range(ALPHA)], [self.result[:, j, :, first:stop] for j in range(TILE)])


def scatter_tiles(result: np.ndarray, out: np.ndarray, images_rows: int) -> None:
    """Copy ``result`` (4, 4, K, b * images_rows, tw) from tile phases into ``out`` (b, K, Ho, Wo).

    Parallel over channels (:func:`dcnn.kernels.threads.parallel_for`).
    """
    batch, out_channels, out_h, out_w = out.shape
    phases = result.reshape(TILE, TILE, out_channels, batch, images_rows, -1)

    def copy_channels(channels: Sequence[int]) -> None:
        if len(channels):
            block = slice(channels[0], channels[-1] + 1)
            for i in range(min(TILE, out_h)):
                for j in range(min(TILE, out_w)):
                    target = out[:, block, i::TILE, j::TILE]
                    target[...] = phases[i, j, block, :, : target.shape[2], : target.shape[3]].transpose(1, 0, 2, 3)

    parallel_for(copy_channels, range(out_channels))
