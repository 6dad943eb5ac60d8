"""2-D convolution on BLAS GEMM, float32, NCHW.

Two formulations, both without a Python loop over pixels or output channels:

*Shifted GEMMs* (stride 1, any dilation). The padded input of every image is laid out as one flat row per
channel, ``(C, B * Hp * Wp)``. For kernel tap ``(i, j)`` the input pixel under output position ``n`` (counted
in the padded geometry) is at ``n + i * dh * Wp + j * dw``, so the whole tap is one GEMM of the tap's
``K x C`` weight matrix with a *shifted view* of the flat input, accumulated into the output with BLAS
``beta = 1``. Positions that fall in the padding columns are computed and discarded (a few percent of the
work). Nothing is copied besides the padding itself; the GEMMs run over column chunks that stay in cache.

*Chunked im2col* (strided convolutions, and inputs with few channels such as RGB). The patch matrix is built
for a band of output rows at a time, small enough to stay in cache, and multiplied by the ``K x (C kh kw)``
weight matrix.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dcnn.errors import ShapeError
from dcnn.kernels.blas import gemm_accumulate
from dcnn.kernels.threads import get_num_threads, parallel_for
from dcnn.network.window import Padding, conv_output_size, normalize_padding, pair

__all__ = ["Conv2dKernel", "Workspace", "conv2d"]

#: Inputs with fewer channels per group than this use im2col: a shifted GEMM with a tiny inner dimension
#: runs far below the BLAS peak (measured by ``scripts/bench_kernels.py``).
TAP_GEMM_MIN_CHANNELS = 16
#: Target size in bytes of the operands one GEMM chunk touches (swept by hand: 0.5 to 4 MiB are within noise).
CHUNK_BYTES = 2 << 20
#: Chunks never get narrower than this many columns, so each GEMM stays efficient.
MIN_CHUNK_COLUMNS = 1024


def balanced_chunks(total: int, target: int) -> list[tuple[int, int]]:
    """Split ``range(total)`` into near-equal ``(start, stop)`` chunks of about ``target`` or fewer.

    The number of chunks is a multiple of the kernel thread count, so every thread gets the same work.
    """
    workers = get_num_threads()
    count = -(-total // max(1, target))
    count = min(total, -(-count // workers) * workers)
    bounds = [total * i // count for i in range(count + 1)]
    return [(bounds[i], bounds[i + 1]) for i in range(count)]


class Workspace:
    """Scratch buffers reused across kernel calls, grown on demand.

    Reusing the padded-input and GEMM-output buffers avoids allocating (and page-faulting) tens of megabytes
    per layer; worker threads faulting in fresh pages at the same time serialise in the kernel. One workspace
    serves a whole network run on one thread: each buffer is dead once its kernel call returns.
    """

    def __init__(self) -> None:
        self._buffers: dict[str, np.ndarray] = {}

    def get(self, role: str, shape: tuple[int, ...]) -> np.ndarray:
        """A C-contiguous float32 array of ``shape`` backed by the buffer for ``role`` (contents undefined)."""
        size = int(np.prod(shape))
        buffer = self._buffers.get(role)
        if buffer is None or buffer.size < size:
            buffer = np.empty(size, dtype=np.float32)
            self._buffers[role] = buffer
        return buffer[:size].reshape(shape)

    @property
    def nbytes(self) -> int:
        """Bytes held."""
        return sum(buffer.nbytes for buffer in self._buffers.values())


def _pad_into(target: np.ndarray, x: np.ndarray, padding: Padding) -> None:
    """Copy ``x`` (B, C, H, W) into the (..., H + pads, W + pads) view ``target`` and zero only the border."""
    top, _, left, _ = padding
    height, width = x.shape[-2:]
    target[..., top:top + height, left:left + width] = x
    target[..., :top, :] = 0
    target[..., top + height:, :] = 0
    target[..., top:top + height, :left] = 0
    target[..., top:top + height, left + width:] = 0


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

    Notes
    -----
    Padding is an argument of :meth:`__call__`, not of the kernel, because a spatial block pads only the
    sides that lie on the border of the whole feature map. Bias and ReLU are applied to each chunk of output
    right after its GEMMs, on the worker thread, while the chunk is still in cache.
    """

    def __init__(self, weight: np.ndarray, bias: np.ndarray | None = None,
                 stride: tuple[int, int] = (1, 1), dilation: tuple[int, int] = (1, 1), groups: int = 1,
                 relu: bool = False):
        weight = np.asarray(weight, dtype=np.float32)
        if weight.ndim != 4:
            raise ValueError(f"conv weight must be 4-D (K, C/groups, kh, kw), got shape {weight.shape}")
        out_channels, group_channels, kh, kw = weight.shape
        if groups < 1 or out_channels % groups:
            raise ValueError(f"{out_channels} output channels cannot be split into {groups} groups")
        self.out_channels = out_channels
        self.in_channels = group_channels * groups
        self.kernel_size = (kh, kw)
        self.stride = (int(stride[0]), int(stride[1]))
        self.dilation = (int(dilation[0]), int(dilation[1]))
        self.groups = groups
        self.bias = None if bias is None else np.ascontiguousarray(bias, dtype=np.float32).reshape(-1, 1)
        self.relu = relu
        self.use_tap_gemm = self.stride == (1, 1) and group_channels >= TAP_GEMM_MIN_CHANNELS
        if self.use_tap_gemm:
            # (kh * kw, K, C/g): one contiguous K x C/g matrix per tap.
            self._weight = np.ascontiguousarray(weight.transpose(2, 3, 0, 1)).reshape(kh * kw, out_channels,
                                                                                      group_channels)
        else:
            # (K, C/g * kh * kw): the layout of an im2col patch matrix with (channel, tap) row order.
            self._weight = np.ascontiguousarray(weight.reshape(out_channels, group_channels * kh * kw))

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
        height, width = x.shape[2:]
        out_h, out_w = self.output_shape(height, width, padding)
        if out_h < 1 or out_w < 1:
            raise ShapeError(
                f"a {height}x{width} input with padding {padding} is smaller than the "
                f"{self.kernel_size[0]}x{self.kernel_size[1]} kernel (dilation {self.dilation})")
        workspace = Workspace() if workspace is None else workspace
        if self.use_tap_gemm:
            return self._shifted_gemm(np.asarray(x, dtype=np.float32), padding, out_h, out_w, workspace)
        return self._chunked_im2col(np.asarray(x, dtype=np.float32), padding, out_h, out_w, workspace)

    def _shifted_gemm(self, x: np.ndarray, padding: Padding, out_h: int, out_w: int,
                      workspace: Workspace) -> np.ndarray:
        batch, channels, height, width = x.shape
        top, bottom, left, right = padding
        padded_h, padded_w = height + top + bottom, width + left + right
        image_len = padded_h * padded_w
        flat_len = batch * image_len
        flat = workspace.get("input", (channels, flat_len))
        _pad_into(flat.reshape(channels, batch, padded_h, padded_w), x.transpose(1, 0, 2, 3), padding)

        kh, kw = self.kernel_size
        dh, dw = self.dilation
        tap_offsets = [i * dh * padded_w + j * dw for i in range(kh) for j in range(kw)]
        # Output position n reads flat[:, n + offset]; the last valid position reads the last element.
        n_valid = (batch - 1) * image_len + (out_h - 1) * padded_w + out_w
        group_in = channels // self.groups
        group_out = self.out_channels // self.groups
        result = workspace.get("output", (self.out_channels, flat_len))
        target = max(MIN_CHUNK_COLUMNS, CHUNK_BYTES // (4 * (group_in + group_out)))

        def run_chunks(chunks: Sequence[tuple[int, int]]) -> None:
            for start, stop in chunks:
                cols = stop - start
                for group in range(self.groups):
                    for tap, offset in enumerate(tap_offsets):
                        gemm_accumulate(
                            result, group * group_out * flat_len + start, flat_len,
                            self._weight, (tap * self.out_channels + group * group_out) * group_in, group_in,
                            flat, group * group_in * flat_len + start + offset, flat_len,
                            group_out, cols, group_in, accumulate=tap > 0)
                self._epilogue(result[:, start:start + cols], self.bias)

        parallel_for(run_chunks, balanced_chunks(n_valid, target))
        valid = result.reshape(self.out_channels, batch, padded_h, padded_w)[:, :, :out_h, :out_w]
        out = np.empty((batch, self.out_channels, out_h, out_w), dtype=np.float32)

        def copy_channels(channels_slice: Sequence[int]) -> None:
            if len(channels_slice):
                block = slice(channels_slice[0], channels_slice[-1] + 1)
                out[:, block] = valid[block].transpose(1, 0, 2, 3)

        parallel_for(copy_channels, range(self.out_channels))
        return out

    def _chunked_im2col(self, x: np.ndarray, padding: Padding, out_h: int, out_w: int,
                        workspace: Workspace) -> np.ndarray:
        batch, channels, height, width = x.shape
        top, bottom, left, right = padding
        padded = workspace.get("input", (batch, channels, height + top + bottom, width + left + right))
        _pad_into(padded, x, padding)
        kh, kw = self.kernel_size
        sh, sw = self.stride
        dh, dw = self.dilation
        group_in = channels // self.groups
        group_out = self.out_channels // self.groups
        depth = group_in * kh * kw
        target_rows = max(1, max(MIN_CHUNK_COLUMNS, CHUNK_BYTES // (4 * depth)) // out_w)
        row_bands = balanced_chunks(out_h, target_rows)
        max_rows = max(stop - start for start, stop in row_bands)
        out = np.empty((batch, self.out_channels, out_h, out_w), dtype=np.float32)
        plane = out_h * out_w
        bands = [(image, group, row0, row1) for image in range(batch) for group in range(self.groups)
                 for row0, row1 in row_bands]

        def run_bands(items: Sequence[tuple[int, int, int, int]]) -> None:
            patches = np.empty(group_in * kh * kw * max_rows * out_w, dtype=np.float32)
            for image, group, row0, row1 in items:
                rows = row1 - row0
                band = patches[:depth * rows * out_w].reshape(group_in, kh * kw, rows, out_w)
                source = padded[image, group * group_in:(group + 1) * group_in]
                for i in range(kh):
                    first = row0 * sh + i * dh
                    for j in range(kw):
                        band[:, i * kw + j] = source[:, first:first + sh * (rows - 1) + 1:sh,
                                                     j * dw:j * dw + sw * (out_w - 1) + 1:sw]
                gemm_accumulate(
                    out, (image * self.out_channels + group * group_out) * plane + row0 * out_w, plane,
                    self._weight, group * group_out * depth, depth,
                    band.reshape(depth, rows * out_w), 0, rows * out_w,
                    group_out, rows * out_w, depth, accumulate=False)
                channels = slice(group * group_out, (group + 1) * group_out)
                self._epilogue(out[image, channels].reshape(group_out, plane)[:, row0 * out_w:(row0 + rows) * out_w],
                               None if self.bias is None else self.bias[channels])

        parallel_for(run_bands, bands)
        return out

    def _epilogue(self, block: np.ndarray, bias: np.ndarray | None) -> None:
        """Add the bias and apply the fused ReLU to a (channels, columns) block of output, in place."""
        if bias is not None:
            block += bias
        if self.relu:
            np.maximum(block, np.float32(0), out=block)


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

