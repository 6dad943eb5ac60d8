"""Depthwise and pointwise (1x1) convolutions, float32, NCHW, and the choice of kernel for a convolution.

The general kernel (:class:`dcnn.kernels.conv.Conv2dKernel`) loops over channel groups, which for a depthwise
convolution (MobileNet's ``groups == channels``) is a Python loop over channels. The two kernels here have none:

*Depthwise* (``groups == in_channels``, any multiplier ``K / C``, stride, dilation). Every output channel reads
one input channel, so each kernel tap is one vectorised multiply-add over the whole batch and all channels:
``out += w[:, i, j] * x_padded[:, :, i*dh + sh*y, j*dw + sw*x]``. The padded input is split into its
``sh x sw`` phase planes (rows ``a::sh``, columns ``b::sw``), on which every tap reads a *shifted* window, so
each tap is a contiguous 2-D multiply-add of flat rows (as in the shifted-GEMM convolution), over channel
chunks that stay in cache; outputs in the few extra columns are computed and dropped. At stride 1 the padded
input is the one phase plane, uncopied. ``kh * kw`` passes, no
patch matrix.

*Pointwise* (1x1, one group, any stride). The output is ``W @ X``: one GEMM per image of the ``K x C`` weights
with the ``C x (H W)`` input (taken every ``stride`` pixels first), in column chunks that the kernel threads
share (:func:`dcnn.kernels.threads.parallel_for`), with the bias and fused ReLU applied to each chunk.

:func:`conv_kernel` picks the kernel for a convolution; all three take the same call arguments.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dcnn.errors import ShapeError
from dcnn.kernels.blas import gemm_accumulate
from dcnn.kernels.conv import MIN_CHUNK_COLUMNS, Conv2dKernel, Workspace, balanced_chunks
from dcnn.kernels.threads import parallel_for
from dcnn.network.window import Padding, conv_output_size, normalize_padding

__all__ = ["DepthwiseConv2dKernel", "PointwiseConv2dKernel", "conv_kernel"]

#: Columns of one pointwise GEMM chunk (with the C and K rows, a few MiB of operands at most).
POINTWISE_CHUNK_COLUMNS = 4096
#: Bytes of padded input a depthwise pass works on at a time: its ``kh * kw`` taps then read from cache.
DEPTHWISE_CHUNK_BYTES = 256 << 10


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
                 dilation: tuple[int, int], relu: bool):
        weight = np.asarray(weight, dtype=np.float32)
        if weight.ndim != 4:
            raise ValueError(f"conv weight must be 4-D (K, C/groups, kh, kw), got shape {weight.shape}")
        self.out_channels = weight.shape[0]
        self.kernel_size = (weight.shape[2], weight.shape[3])
        self.stride = (int(stride[0]), int(stride[1]))
        self.dilation = (int(dilation[0]), int(dilation[1]))
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32)
        self.relu = relu

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
        """Add a bias broadcast over ``block``'s trailing axes and apply the fused ReLU, in place."""
        if bias is not None:
            block += bias
        if self.relu:
            np.maximum(block, np.float32(0), out=block)


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
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
                 dilation: tuple[int, int], in_channels: int, relu: bool = False):
        super().__init__(weight, bias, stride, dilation, relu)
        if np.shape(weight)[1] != 1 or self.out_channels % in_channels:
            raise ValueError(f"a depthwise convolution of {in_channels} channels needs (m*{in_channels}, 1, kh, kw) "
                             f"weights, got {np.shape(weight)}")
        self.in_channels = in_channels
        kh, kw = self.kernel_size
        # (kh * kw, K, 1, 1): the tap's per-channel weights, broadcast over the batch and the map.
        self._taps = np.ascontiguousarray(np.asarray(weight, np.float32).reshape(self.out_channels, kh * kw).T
                                          ).reshape(kh * kw, self.out_channels, 1, 1)
        self._bias = None if self.bias is None else self.bias.reshape(-1, 1, 1)

    def __call__(self, x: np.ndarray, padding: int | Sequence[int] = 0,
                 workspace: Workspace | None = None) -> np.ndarray:
        """Convolve a ``(B, C, H, W)`` float32 batch; returns ``(B, K, Ho, Wo)``."""
        padding, out_h, out_w = self._checked(x, padding)
        padded = _padded(np.asarray(x, np.float32), padding, Workspace() if workspace is None else workspace)
        multiplier = self.out_channels // self.in_channels
        if multiplier > 1:
            padded = np.repeat(padded, multiplier, axis=1)
        batch, kh, kw = x.shape[0], *self.kernel_size
        (sh, sw), (dh, dw) = self.stride, self.dilation
        # Tap (i, j) of output (y, x) reads padded row sh*y + i*dh: row y + (i*dh) // sh of the phase plane of
        # rows (i*dh) % sh (mod sh), and likewise for columns. On phase planes every tap is a shift.
        taps = [(divmod(i * dh, sh)[::-1], divmod(j * dw, sw)[::-1]) for i in range(kh) for j in range(kw)]
        rows = out_h + max(r for (_, r), _ in taps)
        width = out_w + max(c for _, (_, c) in taps)
        # Output position n = y * width + x reads position n + r * width + c of its tap's plane; the last valid
        # output (out_h - 1, out_w - 1) reads the last element, so the dropped columns after it are not computed.
        length = (out_h - 1) * width + out_w
        count = batch * self.out_channels
        if (sh, sw) == (1, 1) and padded.flags.c_contiguous:
            planes = {(0, 0): padded.reshape(count, rows * width)}  # one phase: the padded input itself
        else:
            planes = {}
            for phase in dict.fromkeys((a, b) for (a, _), (b, _) in taps):
                source = padded[:, :, phase[0]::sh, phase[1]::sw][:, :, :rows, :width]
                plane = np.zeros((count, rows, width), np.float32)
                plane[:, :source.shape[2], :source.shape[3]] = source.reshape(-1, *source.shape[2:])
                planes[phase] = plane.reshape(count, rows * width)
        weights = np.tile(self._taps.reshape(kh * kw, self.out_channels), (1, batch))[:, :, None]
        flat = np.empty((count, length), np.float32)
        # Channels per pass, so that a pass's planes stay in cache while its taps read them.
        step = max(1, DEPTHWISE_CHUNK_BYTES // (4 * rows * width * len(planes)))

        def run_channels(channels: Sequence[int]) -> None:
            scratch = np.empty((min(step, len(channels)), length), np.float32)
            for first in range(channels[0], channels[-1] + 1, step) if len(channels) else ():
                block = slice(first, min(first + step, channels[-1] + 1))
                target, product = flat[block], scratch[:block.stop - block.start]
                for tap, ((a, r), (b, c)) in enumerate(taps):
                    shifted = planes[(a, b)][block, r * width + c:r * width + c + length]
                    if tap == 0:
                        np.multiply(shifted, weights[tap, block], out=target)
                    else:
                        np.multiply(shifted, weights[tap, block], out=product)
                        target += product

        parallel_for(run_channels, range(count))
        # Output (y, x) of each channel row is flat position y * width + x; the view never reads past length.
        valid = np.lib.stride_tricks.as_strided(flat, (batch, self.out_channels, out_h, out_w),
                                                (self.out_channels * length * 4, length * 4, width * 4, 4),
                                                writeable=False)
        out = valid.copy()
        self._epilogue(out, self._bias)
        return out


class PointwiseConv2dKernel(_Kernel):
    """A 1x1 convolution with one group: one GEMM per image.

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
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int] = (1, 1),
                 relu: bool = False):
        super().__init__(weight, bias, stride, (1, 1), relu)
        if self.kernel_size != (1, 1):
            raise ValueError(f"a pointwise convolution needs 1x1 filters, got {self.kernel_size}")
        self.in_channels = np.shape(weight)[1]
        self._weight = np.ascontiguousarray(np.asarray(weight, np.float32).reshape(self.out_channels,
                                                                                   self.in_channels))
        self._bias = None if self.bias is None else self.bias.reshape(-1, 1)

    def __call__(self, x: np.ndarray, padding: int | Sequence[int] = 0,
                 workspace: Workspace | None = None) -> np.ndarray:
        """Convolve a ``(B, C, H, W)`` float32 batch; returns ``(B, K, Ho, Wo)``."""
        padding, out_h, out_w = self._checked(x, padding)
        source = _padded(np.asarray(x, np.float32), padding, Workspace() if workspace is None else workspace)
        sh, sw = self.stride
        if (sh, sw) != (1, 1) or not source.flags.c_contiguous:
            source = np.ascontiguousarray(source[:, :, ::sh, ::sw][:, :, :out_h, :out_w])
        batch, channels, plane = x.shape[0], self.in_channels, out_h * out_w
        out = np.empty((batch, self.out_channels, out_h, out_w), dtype=np.float32)
        chunks = [(image, start, stop) for image in range(batch)
                  for start, stop in balanced_chunks(plane, max(MIN_CHUNK_COLUMNS, POINTWISE_CHUNK_COLUMNS))]

        def run_chunks(items: Sequence[tuple[int, int, int]]) -> None:
            for image, start, stop in items:
                gemm_accumulate(out, image * self.out_channels * plane + start, plane,
                                self._weight, 0, channels,
                                source, image * channels * plane + start, plane,
                                self.out_channels, stop - start, channels, accumulate=False)
                self._epilogue(out[image].reshape(self.out_channels, plane)[:, start:stop], self._bias)

        parallel_for(run_chunks, chunks)
        return out


def conv_kernel(weight: np.ndarray, bias: np.ndarray | None, stride: tuple[int, int],
                dilation: tuple[int, int], groups: int, relu: bool = False
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
    """
    group_channels = np.shape(weight)[1]
    if groups > 1 and group_channels == 1:
        return DepthwiseConv2dKernel(weight, bias, stride, dilation, groups, relu)
    if groups == 1 and np.shape(weight)[2:] == (1, 1):
        return PointwiseConv2dKernel(weight, bias, stride, relu)
    return Conv2dKernel(weight, bias, stride, dilation, groups, relu)
