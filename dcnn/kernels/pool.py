"""Pooling kernels, float32, NCHW.

Each window tap is one vectorised operation over the whole batch (a loop over ``kh * kw`` taps, never over
pixels). Padding is explicit ``(top, bottom, left, right)``: the layer specification turns PyTorch's symmetric
padding and ``ceil_mode`` into it, and a spatial block pads only the sides on the feature-map border.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

from dcnn.errors import ShapeError
from dcnn.network.window import Padding, conv_output_size, normalize_padding

__all__ = ["adaptive_avg_pool2d", "adaptive_bins", "adaptive_max_pool2d", "avg_pool2d", "max_pool2d", "pad2d"]


def _padded(x: np.ndarray, padding: Padding, fill: float) -> np.ndarray:
    if not any(padding):
        return x
    top, bottom, left, right = padding
    batch, channels, height, width = x.shape
    padded = np.full((batch, channels, height + top + bottom, width + left + right), fill, np.float32)
    padded[:, :, top:top + height, left:left + width] = x
    return padded


def _separable_reduce(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int], padding: Padding,
                      dilation: tuple[int, int], fill: float, combine) -> np.ndarray:
    """Reduce every window with ``combine`` (``np.maximum`` or ``np.add``), rows first, then columns.

    Both reductions are separable, so a ``kh x kw`` window costs ``kh + kw`` vectorised passes.
    """
    height, width = x.shape[2:]
    top, bottom, left, right = padding
    out_h = conv_output_size(height, kernel[0], stride[0], top, bottom, dilation[0])
    out_w = conv_output_size(width, kernel[1], stride[1], left, right, dilation[1])
    if out_h < 1 or out_w < 1:
        raise ShapeError(f"a {height}x{width} input with padding {padding} is smaller than the "
                         f"{kernel[0]}x{kernel[1]} pooling window")
    padded = _padded(x, padding, fill)
    row_span, col_span = stride[0] * (out_h - 1) + 1, stride[1] * (out_w - 1) + 1
    rows = _reduce_taps([padded[:, :, i * dilation[0]:i * dilation[0] + row_span:stride[0]]
                         for i in range(kernel[0])], combine)
    return _reduce_taps([rows[:, :, :, j * dilation[1]:j * dilation[1] + col_span:stride[1]]
                         for j in range(kernel[1])], combine)


def _reduce_taps(taps: list[np.ndarray], combine) -> np.ndarray:
    """``combine`` of all ``taps`` (equal-shaped views) in order, into a new array: the first pass combines the
    first two taps (no copy of the first)."""
    if len(taps) == 1:
        return taps[0].copy()
    out = combine(taps[0], taps[1])
    for tap in taps[2:]:
        combine(out, tap, out=out)
    return out


def pad2d(x: np.ndarray, padding: Padding, value: float = 0.0) -> np.ndarray:
    """``x`` ``(B, C, H, W)`` with ``(top, bottom, left, right)`` rows and columns of ``value`` around it."""
    return _padded(x, padding, value) if any(padding) else x.copy()


def max_pool2d(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
               padding: int | Sequence[int] = 0, dilation: tuple[int, int] = (1, 1)) -> np.ndarray:
    """Max pooling; padded positions never win (they hold ``-inf``).

    Parameters
    ----------
    x : numpy.ndarray
        ``(B, C, H, W)`` input.
    kernel, stride, dilation : tuple of int
        Window geometry, ``(vertical, horizontal)``.
    padding : int or sequence of int
        Explicit padding, see :func:`dcnn.network.window.normalize_padding`.
    """
    return _separable_reduce(x, kernel, stride, normalize_padding(padding), dilation, -np.inf, np.maximum)


def avg_pool2d(x: np.ndarray, kernel: tuple[int, int], stride: tuple[int, int],
               padding: int | Sequence[int] = 0, counted_padding: int | Sequence[int] | None = None
               ) -> np.ndarray:
    """Average pooling with an explicit rule for which padded positions count in the divisor.

    Parameters
    ----------
    x : numpy.ndarray
        ``(B, C, H, W)`` input.
    kernel, stride : tuple of int
        Window geometry.
    padding : int or sequence of int
        Zero padding on each side.
    counted_padding : int or sequence of int, optional
        How many of the padded rows and columns on each side count in the divisor. ``None`` counts all
        padding (PyTorch's ``count_include_pad=True`` without ``ceil_mode``); ``0`` counts none. PyTorch's
        ``ceil_mode`` overhang beyond the symmetric padding never counts.
    """
    padding = normalize_padding(padding)
    counted = padding if counted_padding is None else normalize_padding(counted_padding)
    if any(c > p for c, p in zip(counted, padding)):
        raise ValueError(f"counted padding {counted} exceeds padding {padding}")
    out = _separable_reduce(x, kernel, stride, padding, (1, 1), 0.0, np.add)
    if counted == padding:
        out *= np.float32(1.0 / (kernel[0] * kernel[1]))
        return out
    height, width = x.shape[2:]
    top, _, left, _ = padding
    mask = _padded(np.ones((1, 1, height, width), np.float32), padding, 0.0)
    mask[:, :, top - counted[0]:top + height + counted[1], left - counted[2]:left + width + counted[3]] = 1
    window_counts = _separable_reduce(mask, kernel, stride, (0, 0, 0, 0), (1, 1), 0.0, np.add)
    out /= np.maximum(window_counts, 1.0)
    return out


def adaptive_bins(size: int, bins: int) -> tuple[np.ndarray, np.ndarray]:
    """PyTorch's adaptive pooling bins: bin ``i`` covers ``[floor(i*size/bins), ceil((i+1)*size/bins))``."""
    index = np.arange(bins)
    return (index * size) // bins, -((-(index + 1) * size) // bins)


def adaptive_avg_pool2d(x: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Adaptive average pooling with PyTorch's bin boundaries (:func:`adaptive_bins`).

    Each bin is summed on its own, rows first then columns, in float64, so an output depends only on the
    values inside its bin: a huge, infinite or NaN value elsewhere never reaches it (a summed-area table
    would subtract it back out, losing every other bin to cancellation or ``inf - inf``).

    Parameters
    ----------
    x : numpy.ndarray
        ``(B, C, H, W)`` input.
    output_size : tuple of int
        ``(Ho, Wo)``.

    Returns
    -------
    numpy.ndarray
        ``(B, C, Ho, Wo)`` float32 bin means.
    """
    batch, channels, height, width = x.shape
    out_h, out_w = output_size
    if (height, width) == (out_h, out_w):
        return x.copy()
    if height % out_h == 0 and width % out_w == 0:
        return x.reshape(batch, channels, out_h, height // out_h, out_w, width // out_w).mean(
            axis=(3, 5), dtype=np.float32)
    r0, r1 = adaptive_bins(height, out_h)
    c0, c1 = adaptive_bins(width, out_w)
    rows = np.stack([x[:, :, top:bottom].sum(axis=2, dtype=np.float64) for top, bottom in zip(r0, r1)], axis=2)
    sums = np.stack([rows[..., left:right].sum(axis=3) for left, right in zip(c0, c1)], axis=3)
    area = (r1 - r0)[:, None] * (c1 - c0)[None, :]
    return (sums / area).astype(np.float32)


def adaptive_max_pool2d(x: np.ndarray, output_size: tuple[int, int]) -> np.ndarray:
    """Adaptive max pooling with PyTorch's bin boundaries (:func:`adaptive_bins`); ``(1, 1)`` is ONNX's
    ``GlobalMaxPool``.

    Parameters
    ----------
    x : numpy.ndarray
        ``(B, C, H, W)`` input.
    output_size : tuple of int
        ``(Ho, Wo)``.

    Returns
    -------
    numpy.ndarray
        ``(B, C, Ho, Wo)`` float32 bin maxima.
    """
    r0, r1 = adaptive_bins(x.shape[2], output_size[0])
    c0, c1 = adaptive_bins(x.shape[3], output_size[1])
    rows = np.stack([x[:, :, top:bottom].max(axis=2) for top, bottom in zip(r0, r1)], axis=2)
    return np.stack([rows[..., left:right].max(axis=3) for left, right in zip(c0, c1)], axis=3)
