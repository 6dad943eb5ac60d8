"""2-D convolution on BLAS GEMM, float32, NCHW.

Every convolution, strided or not, runs on a *phase-split* flat copy of its padded input. With stride
``(sh, sw)`` the padded map splits into ``sh * sw`` phase planes, plane ``(p, q)`` holding the pixels at rows
``p, p + sh, ...`` and columns ``q, q + sw, ...`` (the space-to-depth rearrangement of strided convolutions, e.g.
Dukhan, "The indirect convolution algorithm", 2019, and the polyphase decomposition of signal processing).
Each plane of each channel is one flat row, ``(planes, C, B * Hq * Wq)``. Kernel tap ``(i, j)`` reads plane
``((i dh) mod sh, (j dw) mod sw)`` shifted by ``(i dh) div sh`` rows and ``(j dw) div sw`` columns, so with the
output counted in plane geometry (``n = b Hq Wq + y Wq + x``) the tap reads the *contiguous* range
``n + shift`` of its plane. Positions in the padding columns are computed and discarded (a few percent of
the work). With stride 1 there is one plane and this is the plain padded input.

Three exact ways to multiply (no transformed arithmetic) and one fast one, chosen per layer from its shape
(:func:`choose_method`), all without a Python loop over pixels or channels:

*shifted* (wide inputs and outputs on maps larger than :data:`IM2COL_MAX_POSITIONS` pixels). Each tap is one
GEMM of its ``K x C`` weight matrix with a shifted view of its plane, accumulated into the output with BLAS
``beta = 1``. Nothing is copied besides the phase split.

*im2col* (thin inputs such as RGB at stride 1, or at stride 2 with at least
:data:`IM2COL_STRIDED_MIN_OUT_CHANNELS` outputs; any layer whose output map at the network's declared input is
small, and a 3x3 layer where Winograd would not pay). For a chunk of output columns the patch matrix
``(taps * C + 1, columns)`` is assembled from contiguous plane rows (one ``memcpy``-like slice per tap, never a
strided gather; the last row holds ones) and multiplied by the ``K x (taps * C + 1)`` weights (the last column
holds the bias) in one GEMM.

*shifted-output* (thin outputs, such as a score map with one channel). One GEMM per plane multiplies all of
its taps' weights, ``(taps * K) x C``, with the chunk, giving every tap's product at every position; the
output is the sum of those products shifted back by each tap's offset. The GEMM's long side is then
``taps * K`` instead of ``K``, where ``K`` alone (a GEMV for ``K = 1``) would leave the vector units idle.

*rows* (filters at least 5 wide with few outputs: dlib's face detector). Pixel-major and channels-last: the
input is split by row phase only, with channels last, so the ``kw`` taps of one kernel row read ``kw * C``
values that lie ``dw * C`` apart per tap; those are copied once per chunk into a patch matrix of whole pixels
(a *row im2col*, ``kw * C`` deep), and each kernel row is one GEMM of ``(positions, kw * C)`` by ``(kw * C, K)``
whose output rows are pixels. With few output channels this is the faster side of the product for OpenBLAS
(measured: 16 outputs at depth 75, 77 against 47 GFLOP/s; 32 at depth 80, 87 against 63). The output is
channels-last memory behind the ``(B, K, Ho, Wo)`` shape, so the next such layer copies whole rows of pixels
and no layer transposes.

*winograd* (3x3, stride 1, wide inputs and outputs: VGG's and ResNet's 3x3 layers). Winograd's F(4x4, 3x3),
36 GEMMs over the channels for every 16 outputs instead of 144 multiplications (:mod:`dcnn.kernels.winograd`);
it rounds differently from the direct sum (error stated in ``docs/architecture.md``), so :func:`set_exact` turns it
off for a run that wants the exact formulations only. It is chosen where its output map at the network's declared
input is large enough (im2col below); the choice depends on the layer and that declared map, never on the map a
call gets, so a spatial block or a fused tile uses the same formulation as the whole map.

*winograd-rows* (filters whose kernel rows per row phase number 2, 3 or 5, e.g. 5 tall at stride 1 or 2, where
*rows* applies, with at least :data:`WINOGRAD_MIN_CHANNELS` inputs and outputs or a row stride above 1: every 5x5
layer of the face detector). *rows* with Winograd down the columns of each row phase: F(4, 5) at stride 1, 8
kernel-row GEMMs per 4 output rows instead of 20; F(4, 3) on the even kernel rows and F(4, 2) on the odd ones at
stride 2, 11 instead of 20 (:meth:`Conv2dKernel._winograd_rows`); off with :func:`set_exact`, like *winograd*. It
reads a kernel-row layer's output in place where :class:`dcnn.exec.forward.Forward` made it that layer's
:attr:`Conv2dKernel.reader` (no copy into phase planes, :meth:`Conv2dKernel.rows_per_image`).

Chunks of output columns are sized from the detected L2 cache (:mod:`dcnn.kernels.cache`; four L2s for the
kernel-row and shifted-output formulations, :data:`WIDE_CHUNK_L2`) and a large batch is
processed in blocks of images whose buffers fit in the L2 cache (one image when one does not), so a larger batch
runs each image as batch 1 would.
"""

from __future__ import annotations

import itertools
import threading
import weakref
from collections.abc import Sequence

import numpy as np

from dcnn.errors import ShapeError
from dcnn.kernels.blas import address, gemm_accumulate, sgemm
from dcnn.kernels.cache import cache_bytes
from dcnn.kernels.memory import empty_float32
from dcnn.kernels.phases import split_phases
from dcnn.kernels.threads import parallel_for
from dcnn.kernels.winograd import (
    ALPHA,
    COLUMN_POINTS_BY_TAPS,
    COLUMN_TILE,
    TILE,
    WinogradBands,
    images_per_block,
    minimal_filtering,
    transform_weights,
    winograd_pays,
)
from dcnn.network.window import Padding, conv_output_size, normalize_padding, pair

__all__ = ["EXACT_METHODS", "METHODS", "Conv2dKernel", "Workspace", "choose_method", "conv2d", "layout_bytes",
           "set_exact", "winograd_applies"]

#: The exact GEMM formulations of :class:`Conv2dKernel` (see the module docstring): any geometry.
EXACT_METHODS = ("shifted", "im2col", "shifted-output", "rows")
#: Every formulation; ``"winograd"`` only for 3x3 filters at stride 1, dilation 1, one group, ``"winograd-rows"``
#: only for filters at least :data:`ROWS_MIN_KERNEL` wide whose kernel rows per row phase have Winograd points
#: (:func:`column_winograd_applies`: 5 tall at stride 1 or 2), dilation 1, one group.
METHODS = (*EXACT_METHODS, "winograd", "winograd-rows")
#: Layers with at least this many input and output channels take Winograd's F(4x4, 3x3) where it applies:
#: below it the transforms, linear in the channels, cost more than the GEMMs save (VGG's 3 -> 64 first layer).
WINOGRAD_MIN_CHANNELS = 16
#: Inputs with fewer channels per group than this use im2col: a shifted GEMM with a tiny inner dimension
#: runs far below the BLAS peak (measured by ``scripts/bench_kernels.py``).
TAP_GEMM_MIN_CHANNELS = 16
#: Outputs with fewer channels per group than this multiply all taps at once (shifted-output): a GEMM with
#: so few rows runs at GEMV speed (measured on dlib's 45 -> 1 score layer by ``scripts/bench_faces.py``).
SHIFTED_OUTPUT_MAX_CHANNELS = 4
#: Outputs with at most this many channels per group, from filters at least :data:`ROWS_MIN_KERNEL` wide, use the
#: pixel-major kernel-row formulation (measured on dlib's face detector: its 16-, 32- and 45-channel 5x5 layers,
#: stride 2 and 1, run 1.1-1.5x faster than as shifted GEMMs, whose output-channel side is the short one).
ROWS_MAX_CHANNELS = 48
#: float32 lanes of an AVX-512 register (two AVX2 ones): the kernel-row formulation computes a few zero output
#: channels up to a multiple of this when they cost at most 1/8 more (45 -> 48: measured 72 -> 85 GFLOP/s).
GEMM_LANES = 16
#: The kernel-row and shifted-output formulations size their chunks to this many L2 caches: chunks of one L2 (a
#: few hundred to a few thousand positions) pay each GEMM call's ~7 us of Python and ctypes too often (measured on
#: the face detector, interleaved, one thread: 1, 2, 4, 8 and 16 L2s took 32.0, 30.6-31.0, 30.1, 31.2 and 36.1 ms
#: per image in its layers).
WIDE_CHUNK_L2 = 4
#: Narrower filters than this keep the shifted GEMMs: a kernel row of 1 or 3 taps gives too shallow a GEMM.
ROWS_MIN_KERNEL = 5
#: Thin inputs at a stride above 1 use im2col from this many output channels (shifted GEMMs below it).
IM2COL_STRIDED_MIN_OUT_CHANNELS = 32
#: Output maps of at most this many pixels (14x14) use im2col: one GEMM instead of one per tap.
IM2COL_MAX_POSITIONS = 196
#: float32 values in a 64-byte cache line: chunk bounds of the flat formulations are multiples of it.
CACHE_LINE = 16
#: Chunks never get narrower than this many columns, so each GEMM stays efficient.
MIN_CHUNK_COLUMNS = 1024
#: The number of chunks of a layer is a multiple of this, whatever the thread count: 1, 2 and 4 threads get equal
#: shares, and the chunk bounds (so every float result) do not depend on how many threads run them.
CHUNK_GRANULE = 4

_exact = False


def set_exact(exact: bool) -> None:
    """Choose only exact formulations (no Winograd) for the kernels built from now on (``--exact-conv``)."""
    global _exact
    _exact = bool(exact)


def winograd_applies(kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                     groups: int) -> bool:
    """Whether F(4x4, 3x3) can compute a convolution of this geometry."""
    return tuple(kernel_size) == (3, 3) and tuple(stride) == (1, 1) and tuple(dilation) == (1, 1) and groups == 1


def column_phases(kernel_height: int, stride: int) -> list[list[int]]:
    """The kernel rows of each row phase of a convolution ``stride`` rows apart (dilation 1): phase ``p`` holds
    rows ``p, p + stride, ...``, which read the input rows ``p, p + stride, ...`` one phase-plane row apart."""
    return [list(range(phase, kernel_height, stride)) for phase in range(min(stride, kernel_height))]


def column_winograd_applies(kernel_size: tuple[int, int], stride: tuple[int, int], dilation: tuple[int, int],
                            groups: int) -> bool:
    """Whether the kernel-row formulation with Winograd down the columns (``"winograd-rows"``) can compute a
    convolution of this geometry: every row phase's filter length has its points in
    :data:`dcnn.kernels.winograd.COLUMN_POINTS_BY_TAPS` (5 tall at stride 1 or 2)."""
    return (all(len(rows) in COLUMN_POINTS_BY_TAPS for rows in column_phases(kernel_size[0], stride[0]))
            and kernel_size[1] >= ROWS_MIN_KERNEL and tuple(dilation) == (1, 1) and groups == 1)


def choose_method(in_channels: int, out_channels: int, stride: tuple[int, int] = (1, 1),
                  kernel_size: tuple[int, int] = (1, 1), dilation: tuple[int, int] = (1, 1),
                  groups: int = 1, map_size: tuple[int, int] | None = None) -> str:
    """The formulation for a convolution with these channels *per group* (one of :data:`METHODS`).

    Winograd for a 3x3 stride-1 layer with at least :data:`WINOGRAD_MIN_CHANNELS` input and output channels
    unless :func:`set_exact` asked for exact formulations (measured with ``scripts/bench_kernels.py``: VGG-16's
    3x3 layers run 1.1-2.3x faster, the 64-channel ones least; the whole network about 1.5x), if its output map
    ``map_size`` (the one at the network's declared input; ``None``: large) is large enough
    (:func:`dcnn.kernels.winograd.winograd_pays`); on a smaller one, im2col: one GEMM, which at ResNet-50's 7x7
    and 14x14 maps ran 1.3-2x faster than the shifted GEMMs, each a few dozen columns wide.

    Filters at least :data:`ROWS_MIN_KERNEL` wide with at most :data:`ROWS_MAX_CHANNELS` outputs take the
    kernel-row GEMMs (*rows*), with Winograd down the columns (*winograd-rows*) where it applies and the layer
    has :data:`WINOGRAD_MIN_CHANNELS` inputs and outputs or a row stride above 1 (the face detector's thin first
    layer, 3 -> 16 5x5/2: 3.84 against 4.37 ms per image as *rows*).

    Measured with ``scripts/bench_kernels.py`` and interleaved A/B runs: im2col wins for thin inputs at stride
    1 (VGG's 3 -> 64: about 1.7x the shifted GEMMs, whose K = 3 products re-read the output nine times); at
    stride 2 a thin narrow filter (3 -> 16, 3x3) runs faster as shifted GEMMs on the phase planes, because its
    im2col copies rows of only ~140 values (the face detector's 5x5 first layer: 10-30 %); with
    :data:`IM2COL_STRIDED_MIN_OUT_CHANNELS` outputs or more, im2col wins at stride 2 too (ResNet-50's 7x7 3 -> 64
    stem: 4.4 ms against 7.6; MobileNetV2's 3x3 3 -> 32: 0.75 against 1.0). On an output map of at most
    :data:`IM2COL_MAX_POSITIONS` pixels (at the network's declared input) im2col's one GEMM also beats the shifted
    ones, each only that many columns wide (ResNet-50's 512-channel 3x3 stride-2 layer, 7x7 output: 3.8 ms
    against 4.7).
    """
    if (not _exact and winograd_applies(kernel_size, stride, dilation, groups)
            and min(in_channels, out_channels) >= WINOGRAD_MIN_CHANNELS):
        return "winograd" if winograd_pays(in_channels, out_channels, map_size) else "im2col"
    if out_channels < SHIFTED_OUTPUT_MAX_CHANNELS and in_channels >= TAP_GEMM_MIN_CHANNELS:
        return "shifted-output"
    if min(kernel_size) >= ROWS_MIN_KERNEL and out_channels <= ROWS_MAX_CHANNELS:
        # Down the columns of a thin input too where the filter is strided: its row phases' F(4, 3) and F(4, 2)
        # read whole transformed rows (the face detector's 3 -> 16 5x5/2: 3.84 against 4.37 ms per image as rows).
        wide = min(in_channels, out_channels) >= WINOGRAD_MIN_CHANNELS or stride[0] > 1
        return ("winograd-rows" if not _exact and wide and column_winograd_applies(kernel_size, stride, dilation,
                                                                                   groups) else "rows")
    if in_channels < TAP_GEMM_MIN_CHANNELS:
        return "im2col" if max(stride) == 1 or out_channels >= IM2COL_STRIDED_MIN_OUT_CHANNELS else "shifted"
    small = map_size is not None and map_size[0] * map_size[1] <= IM2COL_MAX_POSITIONS
    return "im2col" if small else "shifted"


def layout_bytes(weight_shape: tuple[int, int, int, int], stride: tuple[int, int] = (1, 1),
                 dilation: tuple[int, int] = (1, 1), groups: int = 1, map_size: tuple[int, int] | None = None) -> int:
    """Bytes of the filters in the layout the kernel keeps, besides the loaded ``weight``.

    Parameters
    ----------
    weight_shape : tuple of int
        ``(K, C / groups, kh, kw)``.
    stride, dilation : tuple of int
        ``(vertical, horizontal)``.
    groups : int
        Channel groups.
    map_size : tuple of int, optional
        Output map the kernel was built for (:func:`choose_method`).

    Returns
    -------
    int
        ``36 K C`` float32 values for the transformed filters of :func:`choose_method`'s ``"winograd"``
        (:func:`dcnn.kernels.winograd.transform_weights`), else a reordered copy of the filters, as many
        values as the weight (im2col: and a bias column; the kernel-row formulations: a bias row per kernel
        row, or per transformed row for *winograd-rows*, and output channels rounded up by
        :func:`_row_width`). Follows :func:`set_exact`.
    """
    out_channels, group_channels, kh, kw = weight_shape
    method = choose_method(group_channels, out_channels // groups, stride, (kh, kw), dilation, groups, map_size)
    if method in ("rows", "winograd-rows"):
        rows = kh if method == "rows" else sum(COLUMN_TILE + len(taps) - 1 for taps in column_phases(kh, stride[0]))
        return 4 * rows * (kw * group_channels + 1) * _row_width(out_channels, groups)
    if method == "winograd":
        return 4 * out_channels * group_channels * ALPHA * ALPHA
    return 4 * out_channels * (group_channels * kh * kw + (method == "im2col"))


def _row_width(out_channels: int, groups: int) -> int:
    """Output channels the kernel-row formulation computes: with one group, rounded up to a multiple of
    :data:`GEMM_LANES` when that adds at most 1/8 (the extra channels have zero filters and are never read)."""
    lanes = -(-out_channels // GEMM_LANES) * GEMM_LANES
    return lanes if groups == 1 and 8 * (lanes - out_channels) <= out_channels else out_channels


def _stacked_rows(out_h: int) -> int:
    """Rows per image of *winograd-rows*' stack for ``out_h`` output rows: its tiles of :data:`COLUMN_TILE` rows
    and a spare one."""
    return (-(-out_h // COLUMN_TILE) + 1) * COLUMN_TILE


def balanced_chunks(total: int, target: int, align: int = 1, granule: int = CHUNK_GRANULE) -> list[tuple[int, int]]:
    """Split ``range(total)`` into near-equal ``(start, stop)`` chunks of about ``target`` or fewer.

    The number of chunks is a multiple of ``granule`` (:data:`CHUNK_GRANULE`: 1, 2 and 4 threads get equal
    shares) where the chunks stay at least half the target (else as few as hold ``target`` each: four chunks of a
    7x7 map's 61 columns made ResNet-50's 512-channel 3x3 GEMMs 16 columns wide, at a third of the BLAS rate), and
    it never depends on the thread count, so results are bit-identical at any ``--threads`` (a run resumed with
    another thread count continues it exactly).
    Inner bounds are multiples of ``align``: with ``align = 16`` float32 columns (one 64-byte cache line), threads
    never share a cache line of output. Chunks that would be empty after alignment are dropped.
    """
    count = -(-total // max(1, target))
    granular = -(-count // granule) * granule
    count = min(total, granular if 2 * total >= granular * target else count)
    bounds = sorted({0, total} | {min(total, total * i // count // align * align) for i in range(1, count)})
    return list(itertools.pairwise(bounds))


class Workspace:
    """Scratch buffers reused across kernel calls, grown on demand.

    Reusing the padded-input and GEMM-output buffers avoids allocating (and page-faulting) tens of megabytes
    per layer; worker threads faulting in fresh pages at the same time serialise in the kernel. One workspace
    serves a whole network run: each buffer is dead once its kernel call returns. The buffers are per calling
    thread, so threads that each run their own images through the same compiled network
    (batch mode's task threads, :func:`dcnn.kernels.threads.task_threads`) never share one.
    """

    def __init__(self) -> None:
        self._local = threading.local()
        self._shared = threading.local()

    def get(self, role: str, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous float32 array of ``shape`` backed by the calling thread's buffer for ``role`` (contents
        undefined)."""
        size = int(np.prod(shape))
        buffers = self._local.__dict__
        buffer = buffers.get(role)
        if buffer is None or buffer.size < size:
            buffer = buffers[role] = np.empty(size, dtype=np.float32)
        return buffer[:size].reshape(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held for the calling thread."""
        return sum(buffer.nbytes for buffer in self._local.__dict__.values())

    def share_rows(self, out: np.ndarray, rows: int, zero_from: int | None = None) -> None:
        """Record that ``out`` ``(B, C, H, W)``, a view of channels-last memory, lies in a buffer of ``rows`` rows
        per image whose rows from ``zero_from`` (default ``H``) on are zeros: what a following kernel may read in
        place (:meth:`shared_rows`). The calling thread's last record only; it holds no reference to ``out``."""
        self._shared.record = (weakref.ref(out), rows, out.shape[2] if zero_from is None else zero_from)

    def shared_rows(self, x: np.ndarray) -> int | None:
        """The rows per image recorded by :meth:`share_rows` if ``x`` is that array or its top left part (a
        spatial engine's input box) holding every row before the zeros, and it is alive (so its memory is no
        other array's); else ``None``."""
        record = getattr(self._shared, "record", None)
        out = None if record is None else record[0]()
        if (out is None or x.strides != out.strides or x.shape[:2] != out.shape[:2]
                or not record[2] <= x.shape[2] <= out.shape[2] or x.shape[3] > out.shape[3]
                or x.__array_interface__["data"][0] != out.__array_interface__["data"][0]):
            return None
        return record[1]


def _row_phases_into(planes: np.ndarray, x: np.ndarray, top: int, left: int) -> None:
    """Split ``x`` (b, C, H, W), padded by ``top`` rows and ``left`` columns, by row phase, channels last, into
    ``planes`` (sh, b, rows, padded width, C): plane row ``r`` of phase ``p`` is padded row ``p + sh r``; the
    padding, and plane rows past the input, are zeros (the kernel-row formulations' input)."""
    stride, rows = planes.shape[0], planes.shape[2]
    height, width = x.shape[2:]
    source = x.transpose(0, 2, 3, 1)
    for phase in range(stride):
        first = min(rows, max(0, -((phase - top) // stride)))
        last = max(first, min(rows, -((phase - top - height) // stride)))
        plane = planes[phase]
        plane[:, first:last, left:left + width] = source[:, phase + first * stride - top::stride][:, :last - first]
        plane[:, :first] = 0
        plane[:, last:] = 0
        plane[:, first:last, :left] = 0
        plane[:, first:last, left + width:] = 0


class Conv2dKernel:
    """A convolution with its weights laid out once for repeated calls.

    Parameters
    ----------
    weight : numpy.ndarray
        ``(K, C // groups, kh, kw)`` filters.
    bias : numpy.ndarray, optional
        ``(K,)`` bias.
    stride, dilation : tuple of int
        ``(vertical, horizontal)``.
    groups : int
        Number of channel groups.
    relu : bool
        Apply ``max(x, 0)`` to the output (a ReLU that follows the convolution, fused into it).
    method : str
        ``"auto"`` (:func:`choose_method`) or one of :data:`METHODS`; all give the same result up to
        float32 rounding.
    map_size : tuple of int, optional
        The output map the layer runs on at its network's declared input, for ``"auto"``.

    Raises
    ------
    ValueError
        For an unknown method, or ``"winograd"`` on a geometry it cannot compute.

    Notes
    -----
    Padding is an argument of :meth:`__call__`, not of the kernel, because a spatial block pads only the
    sides that lie on the border of the whole feature map. The bias is added by the GEMMs (a row of ones in
    the patches of im2col and the kernel-row formulations, Winograd's point ``(1, 1)``) or to each chunk of
    output right after its GEMMs (shifted, shifted-output), and the ReLU is applied to each chunk on the worker
    thread while it is still in cache.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None = None,
                 stride: tuple[int, int] = (1, 1), dilation: tuple[int, int] = (1, 1), groups: int = 1,
                 relu: bool = False, method: str = "auto", map_size: tuple[int, int] | None = None):
        weight = np.asarray(weight, dtype=np.float32)
        if weight.ndim != 4:
            raise ValueError(f"conv weight must be 4-D (K, C/groups, kh, kw), got shape {weight.shape}")
        out_channels, group_channels, kh, kw = weight.shape
        if groups < 1 or out_channels % groups:
            raise ValueError(f"{out_channels} output channels cannot be split into {groups} groups")
        if method != "auto" and method not in METHODS:
            raise ValueError(f"convolution method must be 'auto' or one of {METHODS}, got {method!r}")
        self.out_channels = out_channels
        self.in_channels = group_channels * groups
        self.kernel_size = (kh, kw)
        self.stride = (int(stride[0]), int(stride[1]))
        self.dilation = (int(dilation[0]), int(dilation[1]))
        self.groups = groups
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1, 1)
        self.relu = relu
        #: The next layer's kernel when it reads this kernel's output buffer in place (:meth:`rows_per_image`),
        #: set by :class:`dcnn.exec.forward.Forward` for a chain of kernel-row convolutions.
        self.reader: Conv2dKernel | None = None
        group_out = out_channels // groups
        if method == "winograd" and not winograd_applies((kh, kw), self.stride, self.dilation, groups):
            raise ValueError("the winograd convolution method needs a 3x3 filter, stride 1, dilation 1 and one "
                             f"group, got {kh}x{kw}, stride {self.stride}, dilation {self.dilation}, {groups} groups")
        if method == "winograd-rows" and not column_winograd_applies((kh, kw), self.stride, self.dilation, groups):
            raise ValueError("the winograd-rows convolution method needs a filter 5 tall at stride 1 or 2 (any "
                             f"with 2, 3 or 5 kernel rows per row phase), at least {ROWS_MIN_KERNEL} wide, dilation 1 "
                             f"and one group, got {kh}x{kw}, stride {self.stride}, dilation {self.dilation}, "
                             f"{groups} groups")
        self.method = (choose_method(group_channels, group_out, self.stride, (kh, kw), self.dilation, groups,
                                     map_size) if method == "auto" else method)
        (sh, sw), (dh, dw) = self.stride, self.dilation
        # Per tap (i, j) in row-major order: its phase plane and its (row, column) shift within the plane.
        self._tap_plane = [(i * dh % sh) * sw + j * dw % sw for i in range(kh) for j in range(kw)]
        self._tap_shift = [(i * dh // sh, j * dw // sw) for i in range(kh) for j in range(kw)]
        taps = kh * kw
        if self.method == "winograd":
            self._weight = transform_weights(weight)
        elif self.method == "shifted":
            # (taps, K, C/g): one contiguous K x C/g matrix per tap.
            self._weight = np.ascontiguousarray(weight.transpose(2, 3, 0, 1)).reshape(taps, out_channels,
                                                                                      group_channels)
        elif self.method == "rows":
            # (groups, kh, kw * C/g + 1, K/g): per kernel row, the (column tap, channel) x output-channel matrix
            # and a last row that multiplies the patches' column of ones: the bias in kernel row 0, else zeros.
            depth = kw * group_channels
            self._row_width = _row_width(out_channels, groups)
            width = self._row_width // groups
            self._weight = np.zeros((groups, kh, depth + 1, width), np.float32)
            per_row = weight.reshape(groups, group_out, group_channels, kh, kw).transpose(0, 3, 4, 2, 1)
            self._weight[..., :depth, :group_out] = per_row.reshape(groups, kh, depth, group_out)
            if self.bias is not None:
                self._weight[:, 0, depth, :group_out] = self.bias.reshape(groups, group_out)
        elif self.method == "winograd-rows":
            # Per row phase p (kernel rows p, p + sh, ...: n_p taps), F(4, n_p) down the columns. Stacked over the
            # phases: (sum alpha_p, kw * C + 1, K') filters, per transformed row xi of phase p the kernel-row
            # filters (G_p g_p)[xi] and a last row that multiplies the patches' column of ones: the bias at phase
            # 0's point 1, whose output-transform column is all ones (so every output row gets it once), else
            # zeros; the output transform [A_0^T | A_1^T | ...] sums the phases.
            depth = kw * group_channels
            self._row_width = _row_width(out_channels, 1)
            per_row = weight.astype(np.float64).transpose(2, 3, 1, 0).reshape(kh, depth, out_channels)
            phases = column_phases(kh, self.stride[0])
            self._phases = []
            filters, output_transforms = [], []
            for rows in phases:
                at, g, bt = minimal_filtering(COLUMN_POINTS_BY_TAPS[len(rows)], COLUMN_TILE, len(rows))
                self._phases.append((len(filters), len(g), bt.astype(np.float32)))
                filters.extend(np.einsum("xi,idk->xdk", g, per_row[rows]))
                output_transforms.append(at)
            self._at = np.hstack(output_transforms).astype(np.float32)
            self._weight = np.zeros((len(filters), depth + 1, self._row_width), np.float32)
            self._weight[:, :depth, :out_channels] = filters
            if self.bias is not None:
                self._weight[COLUMN_POINTS_BY_TAPS[len(phases[0])].index(1), depth, :out_channels] = self.bias[:, 0]
        elif self.method == "im2col":
            # (K, taps * C/g + 1): the filters in (tap, channel) order, the row order of the patch matrix, and a
            # last column that multiplies the patches' row of ones: the bias, else zeros.
            depth = taps * group_channels
            self._weight = np.zeros((out_channels, depth + 1), np.float32)
            for tap, (i, j) in enumerate(itertools.product(range(kh), range(kw))):  # no temporary of the whole
                self._weight[:, tap * group_channels:(tap + 1) * group_channels] = weight[:, :, i, j]
            if self.bias is not None:
                self._weight[:, depth] = self.bias[:, 0]
        else:
            # Taps sorted by plane, so each plane's taps are one block of rows: (groups, taps * K/g, C/g).
            self._order = sorted(range(taps), key=self._tap_plane.__getitem__)
            per_tap = weight.reshape(groups, group_out, group_channels, taps)[..., self._order]
            self._weight = np.ascontiguousarray(per_tap.transpose(0, 3, 1, 2)).reshape(
                groups, taps * group_out, group_channels)
            planes = [self._tap_plane[t] for t in self._order]
            self._plane_runs = [(plane, planes.index(plane), len(planes) - planes[::-1].index(plane))
                                for plane in dict.fromkeys(planes)]

    def reads_in_place(self) -> bool:
        """Whether this kernel can read a kernel-row output buffer in place, as :attr:`reader` of its producer:
        *winograd-rows* splits its input by row phase only, and a producer's rows ``p, p + sh, ...`` are such a
        phase plane once the buffer's rows per image are ``sh`` times the tile rows this kernel stacks."""
        return self.method == "winograd-rows"

    def feeds_in_place(self, reader: Conv2dKernel) -> bool:
        """Whether ``reader`` can read this kernel's output in place, as its :attr:`reader`: a kernel-row output
        without spare channels (:func:`_row_width`: the reader takes a pixel's values as its channels) and a
        reader that reads in place (:meth:`reads_in_place`)."""
        return (self.method in ("rows", "winograd-rows") and self._row_width == self.out_channels
                and reader.reads_in_place())

    def _unpadded_rows(self, height: int) -> int:
        """Output rows for an unpadded input of ``height`` rows."""
        return conv_output_size(height, self.kernel_size[0], self.stride[0], 0, 0, self.dilation[0])

    def _tile_rows(self, height: int) -> int:
        """*winograd-rows*' rows per image for an unpadded input of ``height`` rows (:func:`_stacked_rows`)."""
        return _stacked_rows(self._unpadded_rows(height))

    def rows_per_image(self, height: int, at_least: int) -> int:
        """Rows per image of this kernel's output, and per row phase of its input, when it reads an unpadded
        input of ``height`` rows in place (:meth:`reads_in_place`): at least ``at_least`` and its own tile rows,
        a multiple of 4, and as many as its own :attr:`reader` asks for.

        A producer whose output this kernel reads gives its buffer ``sh`` times these rows per image, so that
        the rows of each row phase of every image are this kernel's tile rows, stacked as its copy would stack
        them (:meth:`_winograd_rows`); the rows past the producer's output are zeros, as the copy's would be.
        """
        out_h = self._unpadded_rows(height)
        return self._output_rows(-(-max(at_least, _stacked_rows(out_h)) // COLUMN_TILE) * COLUMN_TILE, out_h)

    def _output_rows(self, rows: int, out_h: int) -> int:
        """Rows per image of a kernel-row output whose own computation needs ``rows``: as many as :attr:`reader`
        asks for an input of ``out_h`` rows, if there is one."""
        if self.reader is None:
            return rows
        step = self.reader.stride[0]
        return step * self.reader.rows_per_image(out_h, -(-rows // step))

    def _shared_input(self, x: np.ndarray, padding: Padding, workspace: Workspace) -> int | None:
        """This kernel's rows per image if it reads ``x`` in place: ``x`` is the output its producer shared
        (:meth:`Workspace.shared_rows`), unpadded, channels last with no spare channels, and its buffer's rows per
        image are ``sh`` times tile rows this kernel can stack; else ``None`` (the input is copied)."""
        rows = workspace.shared_rows(x) if self.reads_in_place() else None
        sh = self.stride[0]
        if (rows is None or any(padding) or x.strides[1] != 4 or x.strides[3] != 4 * x.shape[1]
                or x.strides[0] != rows * x.strides[2] or rows % (sh * COLUMN_TILE)
                or rows // sh < self._tile_rows(x.shape[2])):
            return None
        return rows // sh

    def output_shape(self, height: int, width: int, padding: Padding) -> tuple[int, int]:
        """Output ``(height, width)`` for an input of the given size and explicit padding."""
        top, bottom, left, right = padding
        return (conv_output_size(height, self.kernel_size[0], self.stride[0], top, bottom, self.dilation[0]),
                conv_output_size(width, self.kernel_size[1], self.stride[1], left, right, self.dilation[1]))

    def __call__(self, x: np.ndarray, padding: int | Sequence[int] = 0,
                 workspace: Workspace | None = None) -> np.ndarray:
        """Convolve a batch.

        Parameters
        ----------
        x : numpy.ndarray
            ``(B, C, H, W)`` float32 input.
        padding : int or sequence of int
            Zero padding, see :func:`dcnn.network.window.normalize_padding`.
        workspace : Workspace, optional
            Scratch buffers to reuse; a private one is used if omitted.

        Returns
        -------
        numpy.ndarray
            ``(B, K, Ho, Wo)`` float32 output.
        """
        padding = normalize_padding(padding)
        if x.ndim != 4 or x.shape[1] != self.in_channels:
            raise ShapeError(f"convolution expects (B, {self.in_channels}, H, W) input, got {x.shape}")
        batch, channels, height, width = x.shape
        out_h, out_w = self.output_shape(height, width, padding)
        if out_h < 1 or out_w < 1:
            raise ShapeError(
                f"a {height}x{width} input with padding {padding} is smaller than the "
                f"{self.kernel_size[0]}x{self.kernel_size[1]} kernel (dilation {self.dilation})")
        workspace = Workspace() if workspace is None else workspace
        x = np.asarray(x, dtype=np.float32)
        top, bottom, left, right = padding
        planes_h = -(-(height + top + bottom) // self.stride[0])
        planes_w = -(-(width + left + right) // self.stride[1])
        rows_like = self.method in ("rows", "winograd-rows")
        shared = self._shared_input(x, padding, workspace)
        if rows_like:
            # Channels-last memory in plane geometry behind the (B, K, Ho, Wo) view: the GEMMs write it directly,
            # and the next layer reads whole rows of pixels. winograd-rows computes whole tiles of rows, a spare
            # tile row per image, and the valid columns only (its GEMMs never run across rows as rows' do). With a
            # reader, as many rows per image as it reads in place (more rows of zero input, computed and zeroed).
            own = planes_h if self.method == "rows" else _stacked_rows(out_h)
            rows = shared if shared is not None else self._output_rows(own, out_h)
            cols = planes_w if self.method == "rows" else out_w
            full = empty_float32((batch, rows, cols, self._row_width))
            out = full[:, :out_h, :out_w, :self.out_channels].transpose(0, 3, 1, 2)
        else:
            out = empty_float32((batch, self.out_channels, out_h, out_w))
        # Images per block: the phase planes and GEMM output of a block fit in the L2 cache, else one image, so
        # a larger batch runs each image as batch 1 would (sized by the L3, VGG-16 at batch 4 was 3-7 % slower
        # per image than at batch 1 on a shared 32 MiB L3). Winograd blocks small maps together instead
        # (:func:`dcnn.kernels.winograd.images_per_block`).
        image_bytes = 4 * planes_h * planes_w * (self.stride[0] * self.stride[1] * channels + self.out_channels)
        block = max(1, min(batch, cache_bytes(2) // image_bytes))
        if self.method == "winograd":
            block = images_per_block(batch, -(-out_h // TILE) * -(-out_w // TILE))
        if rows_like:
            # Its GEMMs run on chunks sized by the L2 whatever the block, so the block only has to keep the input
            # planes and output in the L3 (measured on the face detector: 0.5-0.8 ms per layer and image faster
            # than one image per block, whose few hundred columns per chunk made small GEMMs).
            block = max(1, min(batch, cache_bytes(3) // image_bytes))
        for first in range(0, batch, block):
            if self.method == "rows":
                self._rows(x[first:first + block], full[first:first + block], padding, workspace)
            elif self.method == "winograd-rows":
                self._winograd_rows(x[first:first + block], full[first:first + block], padding, workspace,
                                    shared is not None)
            else:
                self._convolve_block(x[first:first + block], out[first:first + block], padding, planes_h, planes_w,
                                     workspace)
        if rows_like and self.reader is not None:
            full[:, out_h:] = 0
            workspace.share_rows(out, full.shape[1])
        return out

    def _convolve_block(self, x: np.ndarray, out: np.ndarray, padding: Padding, planes_h: int, planes_w: int,
                        workspace: Workspace) -> None:
        """Convolve the images ``x`` (b, C, H, W) into ``out`` (b, K, Ho, Wo) through the phase planes."""
        batch, channels = x.shape[:2]
        if self.method == "winograd":
            self._winograd(x, out, padding)
            return
        sh, sw = self.stride
        flat = workspace.get("input", (sh * sw, channels, batch * planes_h * planes_w))
        split_phases(flat.reshape(sh, sw, channels, batch, planes_h, planes_w), x, padding, self.stride)
        if self.method == "im2col":
            self._im2col(flat.reshape(sh * sw, channels, batch, planes_h, planes_w), out)
        else:
            self._flat_gemms(flat, out, planes_h, planes_w, workspace)

    def _im2col(self, planes: np.ndarray, out: np.ndarray) -> None:
        """im2col from phase planes ``(sh * sw, C, b, Hq, Wq)`` into ``out`` (b, K, Ho, Wo), by bands of rows.

        The patch matrix of a band has a last row of ones, which the filters' last column (the bias) multiplies,
        so the GEMM adds the bias. A band's patches and output fit in the L2 cache together (at least
        :data:`MIN_CHUNK_COLUMNS` columns), so the fused ReLU reads the output while it is still there.
        """
        batch, out_channels, out_h, out_w = out.shape
        group_in = planes.shape[1] // self.groups
        group_out = out_channels // self.groups
        taps = len(self._tap_plane)
        depth = taps * group_in + 1
        column_bytes = 4 * (depth + group_out)
        row_bands = balanced_chunks(out_h, max(1, max(MIN_CHUNK_COLUMNS, cache_bytes(2) // column_bytes) // out_w))
        widest = max(stop - start for start, stop in row_bands)
        plane_size = out_h * out_w
        bands = [(image, group, row0, row1) for image in range(batch) for group in range(self.groups)
                 for row0, row1 in row_bands]

        def run_bands(items: Sequence[tuple[int, int, int, int]]) -> None:
            patches = np.empty(depth * widest * out_w, dtype=np.float32)
            for image, group, row0, row1 in items:
                columns = (row1 - row0) * out_w
                band = patches[:(depth - 1) * columns].reshape(taps, group_in, row1 - row0, out_w)
                patches[(depth - 1) * columns:depth * columns] = 1
                channel = slice(group * group_in, (group + 1) * group_in)
                for tap, (plane, (down, right)) in enumerate(zip(self._tap_plane, self._tap_shift)):
                    band[tap] = planes[plane, channel, image, row0 + down:row1 + down, right:right + out_w]
                gemm_accumulate(out, (image * out_channels + group * group_out) * plane_size + row0 * out_w,
                                plane_size, self._weight, group * group_out * depth, depth,
                                patches, 0, columns, group_out, columns, depth, accumulate=False)
                channels = slice(group * group_out, (group + 1) * group_out)
                self._epilogue(out[image, channels].reshape(group_out, plane_size)[:, row0 * out_w:row1 * out_w],
                               None)

        parallel_for(run_bands, bands)

    def _flat_gemms(self, flat: np.ndarray, out: np.ndarray, planes_h: int, planes_w: int,
                    workspace: Workspace) -> None:
        """The shifted and shifted-output formulations on flat phase planes ``(sh * sw, C, b * Hq * Wq)``.

        Output is computed in plane geometry into a workspace buffer, then its valid part is copied to ``out``.
        """
        channels, flat_len = flat.shape[1:]
        batch, out_channels, out_h, out_w = out.shape
        image_len = planes_h * planes_w
        # Output position n reads plane position n + shift; the last valid position reads the last element.
        n_valid = (batch - 1) * image_len + (out_h - 1) * planes_w + out_w
        shifts = [rows * planes_w + cols for rows, cols in self._tap_shift]
        result = workspace.get("output", (out_channels, flat_len))
        group_in = channels // self.groups
        group_out = out_channels // self.groups
        taps = len(shifts)
        # Bytes one output column touches: its input column, the products of every tap (shifted-output), output.
        column_bytes = 4 * (group_in + group_out + (taps * group_out if self.method == "shifted-output" else 0))
        caches = WIDE_CHUNK_L2 if self.method == "shifted-output" else 1
        chunks = balanced_chunks(n_valid, max(MIN_CHUNK_COLUMNS, caches * cache_bytes(2) // column_bytes), CACHE_LINE)
        widest = max(stop - start for start, stop in chunks)

        def plane_offset(plane: int, group: int) -> int:
            return (plane * channels + group * group_in) * flat_len

        def run_shifted(chunks: Sequence[tuple[int, int]]) -> None:
            for start, stop in chunks:
                cols = stop - start
                for group in range(self.groups):
                    for tap, (plane, shift) in enumerate(zip(self._tap_plane, shifts)):
                        gemm_accumulate(
                            result, group * group_out * flat_len + start, flat_len,
                            self._weight, (tap * out_channels + group * group_out) * group_in, group_in,
                            flat, plane_offset(plane, group) + start + shift, flat_len,
                            group_out, cols, group_in, accumulate=tap > 0)
                self._epilogue(result[:, start:stop], self.bias)

        def run_shifted_output(chunks: Sequence[tuple[int, int]]) -> None:
            reach = max(shifts)
            products = np.empty(taps * group_out * (widest + reach), dtype=np.float32)
            for start, stop in chunks:
                cols = stop - start
                span = cols + reach
                tap_products = products[:taps * group_out * span].reshape(taps, group_out, span)
                for group in range(self.groups):
                    for plane, first, last in self._plane_runs:
                        gemm_accumulate(products, first * group_out * span, span,
                                        self._weight[group], first * group_out * group_in, group_in,
                                        flat, plane_offset(plane, group) + start, flat_len,
                                        (last - first) * group_out, span, group_in, accumulate=False)
                    target = result[group * group_out:(group + 1) * group_out, start:stop]
                    for rank, tap in enumerate(self._order):
                        shifted = tap_products[rank, :, shifts[tap]:shifts[tap] + cols]
                        if rank:
                            target += shifted
                        else:
                            target[...] = shifted
                self._epilogue(result[:, start:stop], self.bias)

        parallel_for(run_shifted if self.method == "shifted" else run_shifted_output, chunks)
        _copy_valid(result.reshape(out_channels, batch, planes_h, planes_w)[:, :, :out_h, :out_w], out)

    def _rows(self, x: np.ndarray, full: np.ndarray, padding: Padding, workspace: Workspace) -> None:
        """The pixel-major kernel-row formulation of ``x`` (b, C, H, W) into ``full`` (b, Hq, Wq, K'), ``K' >= K``.

        ``x`` may have any strides; channels-last memory (what this method writes) is read by whole rows of
        pixels. ``full`` is the output in plane geometry, channels last: its ``[:, :Ho, :Wo, :K]`` is the output,
        the rest (see :func:`_row_width` for the channels) is computed and ignored. The padded input is split by
        row phase only, channels last, as ``(sh, b, Hq, sw Wq, C)``. With the output counted in plane geometry
        (``n = b Hq Wq + y Wq + x``), output ``n`` of kernel row ``i`` reads the ``kw`` pixels from pixel
        ``sw n + Wq sw ((i dh) div sh)`` on, ``dw`` apart, of phase plane ``(i dh) mod sh``. Per chunk of outputs
        and per phase, those ``kw * C`` values of every position are copied once into a patch matrix (the *row
        im2col*); each kernel row is then one GEMM of ``(positions, kw * C + 1)`` by its ``(kw * C + 1, K')``
        filters, accumulated into the pixel-major output (BLAS ``beta = 1``): a GEMM whose long side is the
        pixels, with ``kh`` calls of depth ``kw * C`` instead of ``kh kw`` of depth ``C``. The extra column of the
        patches holds ones and
        the extra row of kernel row 0's filters the bias, so the GEMMs add it.
        """
        batch, channels, height, width = x.shape
        planes_h, planes_w, out_channels = full.shape[1:]
        out_h, out_w = self.output_shape(height, width, padding)
        (sh, sw), (dh, dw) = self.stride, self.dilation
        kh, kw = self.kernel_size
        top, _, left, _ = padding
        padded_w = planes_w * sw
        planes = workspace.get("input", (sh, batch, planes_h, padded_w, channels))
        _row_phases_into(planes, x, top, left)
        image_len = planes_h * planes_w
        n_valid = (batch - 1) * image_len + (out_h - 1) * planes_w + out_w
        group_in, group_out = channels // self.groups, out_channels // self.groups
        depth = kw * group_in
        # Per kernel row: its phase plane and its shift in output positions (whole plane rows).
        row_phase = [i * dh % sh for i in range(kh)]
        row_shift = [i * dh // sh * planes_w for i in range(kh)]
        phases = sorted(set(row_phase))
        reach = {p: max(row_shift[i] for i in range(kh) if row_phase[i] == p) for p in phases}
        result = full.reshape(batch * image_len, out_channels)
        column_bytes = 4 * (len(phases) * (depth + 1) + out_channels)
        chunks = balanced_chunks(n_valid, max(MIN_CHUNK_COLUMNS, WIDE_CHUNK_L2 * cache_bytes(2) // column_bytes),
                                 CACHE_LINE)
        widest = max(stop - start for start, stop in chunks)
        flat = planes.reshape(sh, -1)
        item = flat.itemsize
        row = depth + 1
        longest = widest + max(reach.values())
        # Per (group, phase): the kw pixels that every position reads (overlapping, read-only views, sliced per
        # chunk). The last position any chunk reads is the last valid output's, so no view reaches past the plane.
        windows = {(group, phase): np.lib.stride_tricks.as_strided(
            flat[phase, group * group_in:], shape=(n_valid + reach[phase], kw, group_in),
            strides=(sw * channels * item, dw * channels * item, item), writeable=False)
            for group in range(self.groups) for phase in phases}

        # BLAS by address: every view below lies in ``patches``, ``self._weight`` and ``result`` by construction
        # (a chunk's outputs are within ``n_valid``, its patches within ``longest`` rows).
        weight_address = address(self._weight)
        result_address = address(result)

        def run_chunks(items: Sequence[tuple[int, int]]) -> None:
            patches = np.empty((len(phases), longest, row), dtype=np.float32)
            patches[..., depth] = 1
            targets = [patches[slot, :, :depth].reshape(longest, kw, group_in) for slot in range(len(phases))]
            patch_rows = [address(patches) + 4 * (phases.index(row_phase[i]) * longest + row_shift[i]) * row
                          for i in range(kh)]
            for start, stop in items:
                cols = stop - start
                for group in range(self.groups):
                    for slot, phase in enumerate(phases):
                        span = cols + reach[phase]
                        targets[slot][:span] = windows[group, phase][start:start + span]
                    for i in range(kh):
                        sgemm(cols, group_out, row, patch_rows[i], row,
                              weight_address + 4 * (group * kh + i) * row * group_out, group_out,
                              result_address + 4 * (start * out_channels + group * group_out), out_channels, i > 0)
                if self.relu:
                    np.maximum(result[start:stop], np.float32(0), out=result[start:stop])

        parallel_for(run_chunks, chunks)

    def _winograd_rows(self, x: np.ndarray, full: np.ndarray, padding: Padding, workspace: Workspace,
                       in_place: bool = False) -> None:
        """The kernel-row formulation with Winograd down the columns, ``x`` (b, C, H, W) into ``full``
        (b, 4 (T + 1), Wo, K'), channels last (as :meth:`_rows`, but only the valid output columns; ``T`` tiles
        of 4 output rows per image).

        The padded input is split by row phase (``sh`` phase planes, as :meth:`_rows`). Kernel rows ``p, p + sh,
        ...`` (``n_p`` of them, :func:`column_phases`) read rows ``y, y + 1, ...`` of phase plane ``p`` for output row
        ``y``: a stride-1 correlation down the plane's columns, done with F(4, n_p). Each tile of 4 output rows
        reads ``alpha_p = 4 + n_p - 1`` rows ``d`` of each plane; ``V = B_p^T d`` (one small GEMM per tile and
        phase) gives ``alpha_p`` independent *transformed rows*: transformed row ``xi`` is a 1 x kw convolution
        (stride ``sw``) of ``V[xi]`` with the kernel-row filters ``(G_p g_p)[xi]``, computed as :meth:`_rows`
        computes one kernel row (a row im2col of ``kw * C + 1`` values per position, one GEMM), and the tile's
        outputs are ``[A_0^T | A_1^T ...] M`` (:func:`dcnn.kernels.winograd.minimal_filtering`). A 5-tall filter
        takes 8 GEMMs per 4 output rows instead of 20 at stride 1 (F(4, 5)), 11 instead of 20 at stride 2
        (F(4, 3) on its even rows, F(4, 2) on its odd ones), at the cost of the transforms, each a shallow GEMM.

        Images are stacked by rows, each ``4 (T + 1)`` plane rows (its padded rows, then zeros), so tile row ``r``
        of the stack starts at plane row ``4 r`` and a chunk of tile rows may span images; the spare tile row of
        each image is computed and discarded, the last image's not at all. The chunks depend on the layer and
        the map only, and every tile runs the same operations, so the thread count changes no result.

        ``in_place``: ``x`` lies in a producer's buffer of ``sh`` times ``full``'s rows per image, zeros past its
        rows (:meth:`_shared_input`); its rows ``p, p + sh, ...`` are read as phase plane ``p`` without the copy
        (the buffer's spare columns only reach transformed columns that no output reads), with the same result.
        """
        batch, channels, _, width = x.shape
        image_rows, out_w, out_channels = full.shape[1:]
        sh, sw = self.stride
        kw = self.kernel_size[1]
        tile, alphas = COLUMN_TILE, len(self._weight)
        item = 4
        top, _, left, right = padding
        tile_rows = batch * image_rows // tile - 1
        if in_place:
            pixels = x.transpose(0, 2, 3, 1)  # (b, H, W', C) from the buffer's first element
            row_len, step = x.strides[2] // item, sh * x.strides[2]
            sources = [pixels[:, phase:] for phase in range(sh)]
        else:
            planes = workspace.get("input", (sh, batch, image_rows, width + left + right, channels))
            _row_phases_into(planes, x, top, left)
            row_len, step = planes.shape[3] * channels, planes.shape[3] * channels * item
            sources = list(planes.reshape(sh, -1))
        depth = kw * channels
        row = depth + 1
        # Per tile row: its transformed input, patches and products (the patches are reused per xi).
        row_bytes = 4 * (alphas * row_len + out_w * row + alphas * out_w * out_channels)
        chunks = balanced_chunks(tile_rows, max(1, WIDE_CHUNK_L2 * cache_bytes(2) // row_bytes))
        widest = max(stop - start for start, stop in chunks)
        result = full.reshape(-1)
        # Per phase, the alpha_p plane rows every tile row reads (overlapping, read-only; sliced per chunk): the
        # last tile row reads plane rows up to 4 (T' - 1) + alpha_p - 1 < 4 (T' + 1) of the stack (alpha_p <= 8).
        inputs = [np.lib.stride_tricks.as_strided(sources[phase], (tile_rows, alpha, row_len),
                                                  (tile * step, step, item), writeable=False)
                  for phase, (_, alpha, _) in enumerate(self._phases)]
        weight_address = address(self._weight)

        def run_chunks(items: Sequence[tuple[int, int]]) -> None:
            transformed = np.empty((widest, alphas, row_len), dtype=np.float32)
            patches = np.empty((widest * out_w, row), dtype=np.float32)
            patches[:, depth] = 1
            products = np.empty((alphas, widest, out_w * out_channels), dtype=np.float32)
            # Per transformed row xi, each position's kw * C values (read-only views, sliced per chunk), and the
            # patch matrix they are copied into; BLAS by address on these buffers, all allocated here.
            windows = [np.lib.stride_tricks.as_strided(
                transformed.reshape(-1)[xi * row_len:], (widest, out_w, depth),
                (alphas * row_len * item, sw * channels * item, item), writeable=False) for xi in range(alphas)]
            targets = patches[:, :depth].reshape(widest, out_w, depth)
            patches_address, products_address = address(patches), address(products)
            for start, stop in items:
                rows = stop - start
                for phase, (offset, alpha, bt) in enumerate(self._phases):
                    np.matmul(bt, inputs[phase][start:stop], out=transformed[:rows, offset:offset + alpha])
                m = products[:, :rows]
                for xi in range(alphas):
                    targets[:rows] = windows[xi][:rows]
                    sgemm(rows * out_w, out_channels, row, patches_address, row,
                          weight_address + 4 * xi * row * out_channels, out_channels,
                          products_address + 4 * xi * widest * out_w * out_channels, out_channels, False)
                outputs = result[start * tile * out_w * out_channels:stop * tile * out_w * out_channels]
                outputs = outputs.reshape(rows, tile, out_w * out_channels)
                np.matmul(self._at, m.transpose(1, 0, 2), out=outputs)
                if self.relu:
                    np.maximum(outputs, np.float32(0), out=outputs)

        parallel_for(run_chunks, chunks)

    def _winograd(self, x: np.ndarray, out: np.ndarray, padding: Padding) -> None:
        """F(4x4, 3x3) of the images ``x`` (b, C, H, W) into ``out`` (b, K, Ho, Wo), by bands of tile rows
        (:class:`dcnn.kernels.winograd.WinogradBands`); one band when the map is small: the GEMMs need wide
        bands."""
        bands = WinogradBands(x, padding, out, self._weight, self.bias, self.relu)

        def run_bands(items: Sequence[tuple[int, int]]) -> None:
            for band in items:
                bands.run(band)

        rows = bands.band_rows()
        bands.share_gemms = rows >= bands.tile_rows  # one band: its GEMMs shared by the threads instead
        # Bands as long as band_rows asks (no granule): four bands of 11 tile rows instead of three of 15 made
        # VGG-16's 56x56 layers 10 % slower on blocks of three images.
        parallel_for(run_bands, [(0, bands.tile_rows)] if bands.share_gemms
                     else balanced_chunks(bands.tile_rows, rows, granule=1))

    def _epilogue(self, block: np.ndarray, bias: np.ndarray | None) -> None:
        """Add the bias and apply the fused ReLU to a (channels, columns) block of output, in place."""
        if bias is not None:
            block += bias
        if self.relu:
            np.maximum(block, np.float32(0), out=block)


def _copy_valid(valid: np.ndarray, out: np.ndarray) -> None:
    """Copy ``valid`` (K, b, Ho, Wo), a view of a kernel's channel-major result, into ``out`` (b, K, Ho, Wo)."""

    def copy_channels(channels_slice: Sequence[int]) -> None:
        if len(channels_slice):
            block = slice(channels_slice[0], channels_slice[-1] + 1)
            out[:, block] = valid[block].transpose(1, 0, 2, 3)

    parallel_for(copy_channels, range(out.shape[1]))


def conv2d(x: np.ndarray, weight: np.ndarray, bias: np.ndarray | None = None,
           stride: int | tuple[int, int] = 1, padding: int | Sequence[int] = 0,
           dilation: int | tuple[int, int] = 1, groups: int = 1) -> np.ndarray:
    """Functional 2-D convolution (cross-correlation, as in PyTorch).

    Parameters
    ----------
    x : numpy.ndarray
        ``(B, C, H, W)`` input.
    weight : numpy.ndarray
        ``(K, C // groups, kh, kw)`` filters.
    bias : numpy.ndarray, optional
        ``(K,)`` bias.
    stride, dilation : int or tuple of int
        Per axis, or one value for both.
    padding : int or sequence of int
        See :func:`dcnn.network.window.normalize_padding`.
    groups : int
        Number of channel groups.

    Returns
    -------
    numpy.ndarray
        ``(B, K, Ho, Wo)`` float32.
    """
    return Conv2dKernel(weight, bias, pair(stride), pair(dilation), groups)(x, padding)

