"""Depthwise and pointwise (1x1) convolutions, float32, NCHW, and the choice of kernel for a convolution.

The general kernel (:class:`dcnn.kernels.conv.Conv2dKernel`) loops over channel groups, which for a depthwise
convolution (MobileNet's ``groups == channels``) is a Python loop over channels. The two kernels here have none:

*Depthwise* (``groups == in_channels``, any multiplier ``K / C``, stride, dilation). Every output channel reads
one input channel, so each kernel tap is one vectorised multiply-add over the whole batch and all channels:
``out += w[:, i, j] * x_padded[:, :, i*dh + sh*y, j*dw + sw*x]``, ``kh * kw`` of them, no patch matrix. Two
layouts, which give the same bits (the same products, summed in tap order, then the bias):

- *channels-last* (every map at horizontal stride 1; at other strides, maps of few pixels per channel,
  :data:`DEPTHWISE_EINSUM_RATIO`): the input is copied once, zero-padded, channels last, and each block of output
  rows is one ``numpy.einsum`` over a sliding-window view of it: at stride 1 a row's ``Wo * K`` outputs, and
  what each tap reads, are contiguous runs, so numpy's inner loop runs over whole rows (the weights and bias
  tiled along the row); otherwise over the channels of a pixel. ``einsum`` makes one multiply-add pass per tap
  where ``multiply`` and ``add`` make two. The output is the ``(B, K, Ho, Wo)`` view of a ``(B, Ho, Wo, K)``
  array, which the pointwise layers around MobileNet's depthwise ones read and write without a transposed copy.
- *channels-first* (strided layers on large maps with a channels-first input, MobileNetV2's 96-channel
  112x112/2 layer): the input is split, zero-padded, into its ``sh x sw`` phase planes (the phase split of
  :mod:`dcnn.kernels.conv`), on which every tap reads a *shifted* window of flat planes; outputs in the few
  extra columns are computed and dropped; passes of channels stay in cache, each adding the bias, applying the
  fused (capped) ReLU and copying its valid outputs out.

*Pointwise* (1x1, one group, any stride). The output is ``W @ X``: one GEMM per image of the ``K x C`` weights
with the ``C x (H W)`` input (taken every ``stride`` pixels first) over the whole map, the output pre-filled with
the bias (BLAS ``beta = 1``); the kernel threads share fixed blocks of output channels (:func:`_row_blocks`),
each followed by the fused ReLU. A layer next to depthwise ones runs channels-last instead, ``X W^T`` over all
positions (the layout is the kernel's, fixed per layer, never the input's).

:func:`conv_kernel` picks the kernel for a convolution; all three take the same call arguments.
"""

from __future__ import annotations

import functools
import itertools
import threading
from collections import OrderedDict
from collections.abc import Iterable, Sequence

import numpy as np

from dcnn.errors import ShapeError
from dcnn.kernels.blas import address, sgemm
from dcnn.kernels.cache import cache_bytes
from dcnn.kernels.conv import CHUNK_GRANULE, Conv2dKernel, Workspace
from dcnn.kernels.elementwise import relu as relu_pass
from dcnn.kernels.phases import split_phases
from dcnn.kernels.threads import parallel_for
from dcnn.kernels.winograd import scratch_buffer
from dcnn.network.window import Padding, conv_output_size, normalize_padding

__all__ = ["DepthwiseConv2dKernel", "PointwiseConv2dKernel", "conv_kernel"]

#: Output channels of one block of a pointwise GEMM at least (:func:`_row_blocks`).
POINTWISE_MIN_ROWS = 256
#: A depthwise pass works on this many L2 caches' worth of planes, products and sums at most: in smaller passes the
#: numpy calls per tap cost more than the cache misses save (MobileNetV2's depthwise layers at batch 1, CPU time
#: of all 17: 12.8 ms at half the L2, 11.8 at one, 11.3 at four).
DEPTHWISE_CACHE_SCALE = 4
#: Strided depthwise convolutions whose output maps have fewer pixels than this many times the channels run
#: channels-last (``einsum`` over each pixel's channels; at horizontal stride 1 every map does). MobileNetV2's 576
#: channels at 14x14/2 ... 144 at 56x56/2 (5.4 pixels per channel) ran 0.40 ms channels-last from a channels-last
#: input against 0.81 channels-first.
DEPTHWISE_EINSUM_RATIO = 64
#: The same for a channels-first input, which the channels-last path must transpose as it pads (numpy's transposing
#: copy is slow: 1.06 ms for 96 channels at 112x112 against 0.11 for a plain copy): 96 channels at 112x112/2 (33
#: pixels per channel) 2.18 ms channels-last against 1.46 channels-first, 144 at 56x56/2 0.57 against 0.81.
DEPTHWISE_EINSUM_RATIO_NCHW = 16
#: Row widths whose tiled taps a depthwise kernel keeps (:meth:`DepthwiseConv2dKernel._row_taps`), the least
#: recently used dropped first: a map's rows, a spatial block's and a few fused tiles' (each width costs
#: ``kh kw Wo K`` floats, 0.4 MiB for MobileNetV2's 144 channels at 56 wide; a folder of images of many sizes
#: would otherwise keep one per size).
ROW_TAPS_WIDTHS = 8


def _padded(x: np.ndarray, padding: Padding, workspace: Workspace) -> np.ndarray:
    """``x`` zero-padded by ``(top, bottom, left, right)``, in the workspace's input buffer (or ``x`` itself)."""
    if not any(padding):
        return x
    top, bottom, left, right = padding
    batch, channels, height, width = x.shape
    padded = workspace.get("input", (batch, channels, height + top + bottom, width + left + right))
    padded[..., top:top + height, left:left + width] = x
    padded[..., :top, :] = 0
    padded[..., top + height:, :] = 0
    padded[..., top:top + height, :left] = 0
    padded[..., top:top + height, left + width:] = 0
    return padded


class _Kernel:
    """What the depthwise and pointwise kernels share: weights' geometry, output size, bias and ReLU."""

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
                 dilation: tuple[int, int], relu: bool, relu_cap: float):
        weight = np.asarray(weight, dtype=np.float32)
        if weight.ndim != 4:
            raise ValueError(f"conv weight must be 4-D (K, C/groups, kh, kw), got shape {weight.shape}")
        self.out_channels = weight.shape[0]
        self.kernel_size = (weight.shape[2], weight.shape[3])
        self.stride = (int(stride[0]), int(stride[1]))
        self.dilation = (int(dilation[0]), int(dilation[1]))
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.relu = relu
        self.relu_cap = float(relu_cap)

    def output_shape(self, height: int, width: int, padding: Padding) -> tuple[int, int]:
        """Output ``(height, width)`` for an input of the given size and explicit padding."""
        top, bottom, left, right = padding
        return (conv_output_size(height, self.kernel_size[0], self.stride[0], top, bottom, self.dilation[0]),
                conv_output_size(width, self.kernel_size[1], self.stride[1], left, right, self.dilation[1]))

    def _checked(self, x: np.ndarray, padding: int | Sequence[int]) -> tuple[Padding, int, int]:
        padding = normalize_padding(padding)
        if x.ndim != 4 or x.shape[1] != self.in_channels:  # type: ignore[attr-defined]
            raise ShapeError(f"convolution expects (B, {self.in_channels}, H, W) input, "  # type: ignore[attr-defined]
                             f"got {x.shape}")
        out_h, out_w = self.output_shape(x.shape[2], x.shape[3], padding)
        if out_h < 1 or out_w < 1:
            raise ShapeError(f"a {x.shape[2]}x{x.shape[3]} input with padding {padding} is smaller than the "
                             f"{self.kernel_size[0]}x{self.kernel_size[1]} kernel (dilation {self.dilation})")
        return padding, out_h, out_w

    def _epilogue(self, block: np.ndarray, bias: np.ndarray | None) -> None:
        """Add a bias broadcast over ``block``'s trailing axes and apply the fused ReLU (capped), in place."""
        if bias is not None:
            block += bias
        if self.relu:
            relu_pass(block, out=block, cap=self.relu_cap)


class DepthwiseConv2dKernel(_Kernel):
    """A convolution with one group per input channel (``weight`` of shape ``(C * m, 1, kh, kw)``).

    Parameters
    ----------
    weight : numpy.ndarray
        ``(K, 1, kh, kw)`` filters, ``K`` a multiple of the input channels ``C``; output channel ``k`` reads
        input channel ``k // (K / C)`` (PyTorch's grouping).
    bias : numpy.ndarray, optional
        ``(K,)``.
    stride, dilation : tuple of int
        ``(vertical, horizontal)``.
    in_channels : int
        ``C``.
    relu : bool
        Apply a following ReLU to the output.
    relu_cap : float
        Upper bound of that ReLU (6 for ReLU6; infinite for a plain ReLU).
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
                 dilation: tuple[int, int], in_channels: int, relu: bool = False, relu_cap: float = np.inf):
        super().__init__(weight, bias, stride, dilation, relu, relu_cap)
        if np.shape(weight)[1] != 1 or self.out_channels % in_channels:
            raise ValueError(f"a depthwise convolution of {in_channels} channels needs (m*{in_channels}, 1, kh, kw) "
                             f"weights, got {np.shape(weight)}")
        self.in_channels = in_channels
        kh, kw = self.kernel_size
        # (kh * kw, K): the tap's per-channel weights.
        self._taps = np.ascontiguousarray(np.asarray(weight, np.float32).reshape(self.out_channels, kh * kw).T)
        # (kh, kw, K): the same, for the channels-last windows.
        self._taps_hwc = self._taps.reshape(kh, kw, self.out_channels)
        self._row_taps_by_width: OrderedDict[int, tuple[np.ndarray, np.ndarray | None]] = OrderedDict()
        self._row_taps_lock = threading.Lock()  # task threads share a compiled network's kernels

    def __call__(self, x: np.ndarray, padding: int | Sequence[int] = 0,
                 workspace: Workspace | None = None) -> np.ndarray:
        """Convolve a ``(B, C, H, W)`` float32 batch; returns ``(B, K, Ho, Wo)``."""
        padding, out_h, out_w = self._checked(x, padding)
        x = np.asarray(x, np.float32)
        workspace = Workspace() if workspace is None else workspace
        if self._runs_channels_last(x, out_h * out_w):
            return self._channels_last(x, padding, (out_h, out_w), workspace)
        batch, height, width = x.shape[0], x.shape[2], x.shape[3]
        kh, kw = self.kernel_size
        (sh, sw), (dh, dw) = self.stride, self.dilation
        top, bottom, left, right = padding
        planes_h, planes_w = -(-(height + top + bottom) // sh), -(-(width + left + right) // sw)
        # Tap (i, j) of output (y, x) reads padded pixel (sh y + i dh, sw x + j dw): plane row y + (i dh) // sh of
        # row phase (i dh) % sh, and likewise for columns. On the phase planes every tap is a shift.
        taps = [((i * dh % sh) * sw + j * dw % sw, (i * dh // sh) * planes_w + j * dw // sw)
                for i in range(kh) for j in range(kw)]
        out = np.empty((batch, self.out_channels, out_h, out_w), np.float32)
        self._channels_first(x, padding, (planes_h, planes_w), taps, out, workspace)
        return out

    def _runs_channels_last(self, x: np.ndarray, pixels: int) -> bool:
        """Whether a call on ``x`` with ``pixels`` output pixels per channel runs :meth:`_channels_last`: always at
        horizontal stride 1, else below :data:`DEPTHWISE_EINSUM_RATIO` (or :data:`DEPTHWISE_EINSUM_RATIO_NCHW`
        for a channels-first ``x``) pixels per channel. Both paths give the same bits."""
        ratio = DEPTHWISE_EINSUM_RATIO if _is_channels_last(x) else DEPTHWISE_EINSUM_RATIO_NCHW
        return self.stride[1] == 1 or pixels < ratio * self.out_channels

    def _channels_first(self, x: np.ndarray, padding: Padding, planes_shape: tuple[int, int],
                        taps: list[tuple[int, int]], out: np.ndarray, workspace: Workspace) -> None:
        """Each tap a multiply-add of flat plane rows ``(channel, image)``, over channels in cache-sized passes."""
        batch, (sh, sw), (planes_h, planes_w) = x.shape[0], self.stride, planes_shape
        plane_len = planes_h * planes_w
        out_h, out_w = out.shape[2:]
        # Output (y, x) is flat position y * planes_w + x; the last valid output reads the last position it needs,
        # so the dropped columns after it are not computed.
        length = (out_h - 1) * planes_w + out_w
        # Rows of the flat planes: (channel, image) pairs, the order of the phase split.
        if (sh, sw) == (1, 1) and not any(padding) and batch == 1 and x.flags.c_contiguous:
            planes = x.reshape(1, self.in_channels, plane_len)  # one phase: the input itself
        else:
            split = workspace.get("input", (sh, sw, self.in_channels, batch, planes_h, planes_w))
            split_phases(split, x, padding, self.stride)
            planes = split.reshape(sh * sw, self.in_channels * batch, plane_len)
        multiplier = self.out_channels // self.in_channels
        if multiplier > 1:
            planes = np.repeat(planes.reshape(sh * sw, self.in_channels, batch * plane_len), multiplier,
                               axis=1).reshape(sh * sw, -1, plane_len)
        weights = np.repeat(self._taps, batch, axis=1)[:, :, None]
        bias = None if self.bias is None else np.repeat(self.bias, batch)[:, None]
        # Channels per pass (:data:`DEPTHWISE_CACHE_SCALE`).
        channel_bytes = 4 * batch * (len({plane for plane, _ in taps}) * plane_len + 2 * length)
        step = max(1, cache_bytes(2) * DEPTHWISE_CACHE_SCALE // channel_bytes)

        def run_channels(channels: Sequence[int]) -> None:
            if not len(channels):
                return
            scratch = scratch_buffer("depthwise", (2, min(step, len(channels)) * batch, length))
            for first in range(channels[0], channels[-1] + 1, step):
                last = min(first + step, channels[-1] + 1)
                rows = slice(first * batch, last * batch)
                target, product = scratch[0, :rows.stop - rows.start], scratch[1, :rows.stop - rows.start]
                _sum_of_taps(target, product, ((planes[plane, rows, shift:shift + length], weights[tap, rows])
                                               for tap, (plane, shift) in enumerate(taps)))
                self._epilogue(target, None if bias is None else bias[rows])
                # Output (y, x) of row (channel, image) is flat position y * planes_w + x of the row.
                valid = np.lib.stride_tricks.as_strided(
                    target, (last - first, batch, out_h, out_w), (4 * batch * length, 4 * length, 4 * planes_w, 4),
                    writeable=False)
                out[:, first:last] = valid.transpose(1, 0, 2, 3)

        parallel_for(run_channels, range(self.out_channels))

    def _channels_last(self, x: np.ndarray, padding: Padding, out_shape: tuple[int, int],
                       workspace: Workspace) -> np.ndarray:
        """One ``numpy.einsum`` per block of output rows over a sliding-window view of the zero-padded input,
        channels last; returns the ``(B, K, Ho, Wo)`` view of its ``(B, Ho, Wo, K)`` output.

        ``einsum`` runs one multiply-add pass per tap (where ``multiply`` and ``add`` take two), with the same
        roundings in the same tap order as :meth:`_channels_first`, so the two give the same bits. At horizontal
        stride 1 the ``Wo x K`` values of an output row are one contiguous run, and so are those that a tap reads
        (shifted by ``j dw K``): with the weights tiled along the row (:meth:`_row_taps`) numpy's inner loop runs
        over the whole row, ``einsum("yijn,ijn->yn")``. At other strides it runs over the channels of a pixel,
        ``einsum("yxijc,ijc->yxc")``, which pays only on maps of few pixels per channel
        (:data:`DEPTHWISE_EINSUM_RATIO`). Every output's sum runs over the taps in the same order whatever rows a
        block holds, so results do not depend on the blocks.
        """
        batch, _, height, width = x.shape
        top, bottom, left, right = padding
        (kh, kw), (sh, sw), (dh, dw) = self.kernel_size, self.stride, self.dilation
        out_h, out_w = out_shape
        channels = self.out_channels
        multiplier = channels // self.in_channels
        padded = workspace.get("input", (batch, height + top + bottom, width + left + right, self.in_channels))
        padded[:, :top] = 0
        padded[:, top + height:] = 0
        padded[:, top:top + height, :left] = 0
        padded[:, top:top + height, left + width:] = 0
        padded[:, top:top + height, left:left + width] = x.transpose(0, 2, 3, 1)
        if multiplier > 1:  # output channel k reads input channel k // multiplier
            padded = np.repeat(padded, multiplier, axis=3)
        image, row, column, channel = padded.strides
        out = np.empty((batch, out_h, out_w, channels), np.float32)
        if sw == 1:
            windows = np.lib.stride_tricks.as_strided(
                padded, (batch, out_h, kh, kw, out_w * channels), (image, sh * row, dh * row, dw * column, channel),
                writeable=False)
            taps, subscripts = self._row_taps(out_w)[0], "yijn,ijn->yn"
        else:
            windows = np.lib.stride_tricks.as_strided(
                padded, (batch, out_h, out_w, kh, kw, channels),
                (image, sh * row, sw * column, dh * row, dw * column, channel), writeable=False)
            taps, subscripts = self._taps_hwc, "yxijc,ijc->yxc"
        # Output rows as flat runs of Wo * K values, the bias tiled to match (a broadcast over K alone would run
        # numpy's inner loop over K values at a time).
        target, bias = out.reshape(batch, out_h, -1), self._row_taps(out_w)[1]
        rows = max(1, -(-out_h // CHUNK_GRANULE))
        blocks = [(image, first, min(first + rows, out_h)) for image in range(batch) for first in range(0, out_h, rows)]

        def run_blocks(items: Sequence[tuple[int, int, int]]) -> None:
            for image, first, stop in items:
                np.einsum(subscripts, windows[image, first:stop], taps,
                          out=target[image, first:stop] if sw == 1 else out[image, first:stop])
                self._epilogue(target[image, first:stop], bias)

        parallel_for(run_blocks, blocks)
        return out.transpose(0, 3, 1, 2)

    def _row_taps(self, width: int) -> tuple[np.ndarray, np.ndarray | None]:
        """The taps' per-channel weights, ``(kh, kw, width * K)``, and the bias, ``(width * K,)``, repeated for a
        row of ``width`` pixels, kept for the last :data:`ROW_TAPS_WIDTHS` widths used (a spatial block's rows are
        narrower than the map's). Safe to call from several threads at once."""
        with self._row_taps_lock:
            tiled = self._row_taps_by_width.get(width)
            if tiled is not None:
                self._row_taps_by_width.move_to_end(width)
                return tiled
        tiled = (np.ascontiguousarray(np.tile(self._taps_hwc, (1, 1, width))),
                 None if self.bias is None else np.tile(self.bias, width))
        with self._row_taps_lock:
            self._row_taps_by_width[width] = tiled
            if len(self._row_taps_by_width) > ROW_TAPS_WIDTHS:
                self._row_taps_by_width.popitem(last=False)
        return tiled


def _is_channels_last(x: np.ndarray) -> bool:
    """Whether a ``(B, C, H, W)`` array with more than one channel and pixel is the view of a C-contiguous
    ``(B, H, W, C)`` one (read from the strides: ``ndarray.flags`` costs more)."""
    _, channels, height, width = x.shape
    item = x.itemsize
    return (channels > 1 and height * width > 1
            and x.strides[1:] == (item, width * channels * item, channels * item)
            and (x.shape[0] == 1 or x.strides[0] == height * width * channels * item))


def _sum_of_taps(target: np.ndarray, product: np.ndarray, terms: Iterable[tuple[np.ndarray, np.ndarray]]) -> None:
    """``target = sum(shifted * weight)`` over the taps' ``(shifted, weight)`` terms, in tap order; ``product`` is
    scratch of ``target``'s shape (numpy has no fused multiply-add: one multiply and one add pass per tap)."""
    for tap, (shifted, weight) in enumerate(terms):
        if tap == 0:
            np.multiply(shifted, weight, out=target)
        else:
            np.multiply(shifted, weight, out=product)
            target += product


class PointwiseConv2dKernel(_Kernel):
    """A 1x1 convolution with one group: one GEMM per image (and per block of output channels).

    Parameters
    ----------
    weight : numpy.ndarray
        ``(K, C, 1, 1)`` filters.
    bias : numpy.ndarray, optional
        ``(K,)``.
    stride : tuple of int
        ``(vertical, horizontal)``; the input is subsampled first (ResNet's downsampling shortcut).
    relu : bool
        Apply a following ReLU to the output.
    relu_cap : float
        Upper bound of that ReLU (6 for ReLU6; infinite for a plain ReLU).
    channels_last : bool
        Compute channels-last (:meth:`_channels_last`) and return the ``(B, K, Ho, Wo)`` view of a ``(B, Ho, Wo,
        K)`` array, whatever the input's layout (an input in the other layout is copied first).
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int] = (1, 1),
                 relu: bool = False, relu_cap: float = np.inf, channels_last: bool = False):
        super().__init__(weight, bias, stride, (1, 1), relu, relu_cap)
        self.channels_last = channels_last
        if self.kernel_size != (1, 1):
            raise ValueError(f"a pointwise convolution needs 1x1 filters, got {self.kernel_size}")
        self.in_channels = np.shape(weight)[1]
        self._weight = np.ascontiguousarray(np.asarray(weight, np.float32).reshape(self.out_channels,
                                                                                   self.in_channels))
        self._bias = None if self.bias is None else self.bias.reshape(-1, 1, 1)
        # (C, K): the filters transposed, for channels-last inputs.
        self._weight_t = np.ascontiguousarray(self._weight.T)

    def __call__(self, x: np.ndarray, padding: int | Sequence[int] = 0,
                 workspace: Workspace | None = None) -> np.ndarray:
        """Convolve a ``(B, C, H, W)`` float32 batch (any memory layout); returns ``(B, K, Ho, Wo)``, channels-last
        in memory if :attr:`channels_last`.

        The layout of the computation is the kernel's, never the input's: a GEMM of the same operands, laid out
        the same way, gives the same bits, so a spatial block or fused tile (whose inputs are assembled NCHW)
        gets the values of the whole map (OpenBLAS's small-matrix kernels round ``W X`` and ``W (X^T)^T``
        differently). The output starts as the bias and the GEMMs add into it (BLAS ``beta = 1``): one pass fewer
        than a bias pass over the product (ResNet-50's 64 -> 256 layer at 56x56: 1.40 ms against 1.54).
        """
        padding, out_h, out_w = self._checked(x, padding)
        x = np.asarray(x, np.float32)
        sh, sw = self.stride
        source = _padded(x, padding, Workspace() if workspace is None else workspace)
        if self.channels_last:
            return self._channels_last(source.transpose(0, 2, 3, 1)[:, ::sh, ::sw][:, :out_h, :out_w])
        if (sh, sw) != (1, 1) or not source.flags.c_contiguous:
            source = np.ascontiguousarray(source[:, :, ::sh, ::sw][:, :, :out_h, :out_w])
        batch, channels, plane = x.shape[0], self.in_channels, out_h * out_w
        out = self._prefilled((batch, self.out_channels, out_h, out_w), self._bias)
        weight, source_address, out_address = address(self._weight), address(source), address(out)
        blocks = [(image, first, stop) for image in range(batch) for first, stop in _row_blocks(self.out_channels)]

        def run_blocks(items: Sequence[tuple[int, int, int]]) -> None:
            for image, first, stop in items:
                # The views lie in buffers allocated here, of the sizes computed here: no bounds to check.
                sgemm(stop - first, plane, channels, weight + 4 * first * channels, channels,
                      source_address + 4 * image * channels * plane, plane,
                      out_address + 4 * (image * self.out_channels + first) * plane, plane, self._bias is not None)
                self._epilogue(out[image, first:stop], None)

        parallel_for(run_blocks, blocks)
        return out

    def _channels_last(self, x: np.ndarray) -> np.ndarray:
        """The convolution of a ``(B, Ho, Wo, C)`` (subsampled) input, channels last: one GEMM ``X W^T`` of all
        positions by the ``C x K`` transposed filters, in blocks of output channels (columns here); returns the
        ``(B, K, Ho, Wo)`` view of its ``(B, Ho, Wo, K)`` output.

        For convolutions next to depthwise ones (:func:`dcnn.exec.forward.channels_last_layers`), whose
        channels-last input and output (:meth:`DepthwiseConv2dKernel._channels_last`) then need no transposed
        copies: MobileNetV2 at batch 1, 19.5 ms against 22.4 with NCHW pointwise layers (CPU time, one run).
        """
        source = np.ascontiguousarray(x)
        batch, out_h, out_w, channels = source.shape
        positions, width = batch * out_h * out_w, self.out_channels
        out = self._prefilled((batch, out_h, out_w, width), self.bias)
        weight, source_address, out_address = address(self._weight_t), address(source), address(out)

        def run_blocks(items: Sequence[tuple[int, int]]) -> None:
            for first, stop in items:
                sgemm(positions, stop - first, channels, source_address, channels, weight + 4 * first, width,
                      out_address + 4 * first, width, self.bias is not None)
                self._epilogue(out[..., first:stop], None)

        parallel_for(run_blocks, _row_blocks(width))
        return out.transpose(0, 3, 1, 2)

    @staticmethod
    def _prefilled(shape: tuple[int, ...], bias: np.ndarray | None) -> np.ndarray:
        """A float32 array of ``shape`` holding ``bias`` (broadcast) if there is one, else uninitialised."""
        out = np.empty(shape, dtype=np.float32)
        if bias is not None:
            out[...] = bias
        return out


@functools.cache
def _row_blocks(rows: int) -> tuple[tuple[int, int], ...]:
    """Blocks of a pointwise GEMM's output channels for the kernel threads: whole rows of the map each.

    Splitting the columns (the map) instead made each GEMM narrower and slower: ResNet-50's 7x7 and 14x14
    layers ran 1.2-2x slower in four column chunks than in one GEMM (2048 -> 512 at 7x7: 2.3 ms against 1.2). A
    block has at least :data:`POINTWISE_MIN_ROWS` rows (each block re-packs the input), and the blocks depend
    only on ``rows``, never on the thread count, so every result is the same at any thread count. There are 1, 2
    or :data:`~dcnn.kernels.conv.CHUNK_GRANULE` (4) blocks, so 1, 2 and 4 threads get equal shares; inner bounds
    are multiples of 16 rows.
    """
    count = 1 << min(CHUNK_GRANULE.bit_length() - 1, max(1, rows // POINTWISE_MIN_ROWS).bit_length() - 1)
    return tuple(itertools.pairwise([rows * block // count // 16 * 16 for block in range(count)] + [rows]))


def conv_kernel(weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
                dilation: tuple[int, int], groups: int, relu: bool = False, relu_cap: float = np.inf,
                map_size: tuple[int, int] | None = None, channels_last: bool = False
                ) -> Conv2dKernel | DepthwiseConv2dKernel | PointwiseConv2dKernel:
    """The fastest kernel for a convolution: depthwise, pointwise (1x1) or the general one.

    Parameters
    ----------
    weight : numpy.ndarray
        ``(K, C // groups, kh, kw)`` filters.
    bias : numpy.ndarray, optional
        ``(K,)``.
    stride, dilation : tuple of int
        ``(vertical, horizontal)``.
    groups : int
        Channel groups.
    relu : bool
        Fuse a following ReLU.
    relu_cap : float
        Upper bound of that ReLU (6: ReLU6). The general kernel applies the ReLU only: the caller caps its output.
    map_size : tuple of int, optional
        The output map at the network's declared input, for the general kernel's choice of method.
    channels_last : bool
        Run a pointwise convolution channels-last (:class:`PointwiseConv2dKernel`).
    """
    group_channels = np.shape(weight)[1]
    if groups > 1 and group_channels == 1:
        return DepthwiseConv2dKernel(weight, bias, stride, dilation, groups, relu, relu_cap)
    if groups == 1 and np.shape(weight)[2:] == (1, 1):
        return PointwiseConv2dKernel(weight, bias, stride, relu, relu_cap, channels_last)
    return Conv2dKernel(weight, bias, stride, dilation, groups, relu, map_size=map_size)
