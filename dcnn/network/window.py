"""Sliding-window arithmetic along one or two axes: padding forms, output lengths, the window spec.

One pure place that the kernels (:mod:`dcnn.kernels.conv`, :mod:`dcnn.kernels.pool`), the layer specs
(:mod:`dcnn.network.layers`) and the block geometry (:mod:`dcnn.decomposition.geometry`) share. The output
length of a window of ``k`` taps, dilation ``d`` and stride ``s`` over ``n`` values padded by ``p0`` and ``p1``
is ``floor((n + p0 + p1 - (d (k - 1) + 1)) / s) + 1`` (Dumoulin and Visin, "A guide to convolution arithmetic
for deep learning", 2016, relationship 15; PyTorch's ``Conv2d``/``MaxPool2d`` documentation for ``ceil_mode``).
"""

from __future__ import annotations

import numbers
from collections.abc import Sequence
from dataclasses import dataclass

__all__ = ["Padding", "Window", "conv_output_size", "normalize_padding", "pair", "window_span"]

Padding = tuple[int, int, int, int]
"""Explicit padding as (top, bottom, left, right) pixels."""


def pair(value: int | tuple[int, int]) -> tuple[int, int]:
    """``(v, v)`` for an integer, the two values as ints for a pair.

    >>> pair(3), pair((1, 2))
    ((3, 3), (1, 2))
    """
    if isinstance(value, numbers.Integral):
        return (int(value), int(value))
    first, second = value
    return (int(first), int(second))


def normalize_padding(padding: int | Sequence[int]) -> Padding:
    """Return padding as ``(top, bottom, left, right)``.

    Parameters
    ----------
    padding : int or sequence of int
        One value for all sides, ``(vertical, horizontal)`` as in PyTorch, or ``(top, bottom, left, right)``.

    Raises
    ------
    ValueError
        Not 1, 2 or 4 non-negative integers.

    >>> normalize_padding((1, 2))
    (1, 1, 2, 2)
    """
    values = (padding,) if isinstance(padding, numbers.Integral) else tuple(padding)
    if len(values) == 1:
        values = values * 4
    elif len(values) == 2:
        values = (values[0], values[0], values[1], values[1])
    if len(values) != 4 or any(int(v) != v or v < 0 for v in values):
        raise ValueError(f"padding must be 1, 2 or 4 non-negative integers, got {padding!r}")
    return tuple(int(v) for v in values)  # type: ignore[return-value]


def window_span(kernel: int, dilation: int = 1) -> int:
    """Input positions one window covers along an axis, first to last tap: ``d * (k - 1) + 1``.

    >>> window_span(3, dilation=2)
    5
    """
    return dilation * (kernel - 1) + 1


def conv_output_size(size: int, kernel: int, stride: int, pad_before: int, pad_after: int,
                     dilation: int = 1) -> int:
    """Output length of a convolution or pooling window sweep along one axis (floor mode).

    >>> conv_output_size(224, kernel=11, stride=4, pad_before=2, pad_after=2)
    55
    """
    return (size + pad_before + pad_after - window_span(kernel, dilation)) // stride + 1


@dataclass(frozen=True)
class Window:
    """A sliding window along both axes: what the spatial geometry needs to know of a conv or pool.

    Attributes
    ----------
    kernel, stride, dilation : tuple of int
        ``(vertical, horizontal)``.
    padding : tuple of int
        Padding ``(vertical, horizontal)`` as the layer declares it: before the input (top, left), and after it
        too unless ``padding_end`` says otherwise.
    ceil_mode : bool
        PyTorch's ``ceil_mode`` (ONNX's since opset 10): a last, partial window is kept if it starts inside
        the input or its left padding.
    padding_end : tuple of int, optional
        Padding ``(bottom, right)`` after the input where it differs from ``padding`` (ONNX's asymmetric
        ``pads`` and ``auto_pad`` ``SAME_UPPER``/``SAME_LOWER``).
    """

    kernel: tuple[int, int]
    stride: tuple[int, int]
    padding: tuple[int, int]
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    padding_end: tuple[int, int] | None = None

    def declared_padding(self) -> Padding:
        """The declared ``(top, bottom, left, right)`` padding, without the ``ceil_mode`` overhang."""
        end = self.padding if self.padding_end is None else self.padding_end
        return (self.padding[0], end[0], self.padding[1], end[1])

    def output_length(self, size: int, axis: int) -> int:
        """Number of window positions along ``axis`` (0 vertical, 1 horizontal) for an input of ``size``."""
        k, s, d = self.kernel[axis], self.stride[axis], self.dilation[axis]
        before, after = self.declared_padding()[2 * axis:2 * axis + 2]
        if not self.ceil_mode:
            return conv_output_size(size, k, s, before, after, d)
        length = -(-(size + before + after - window_span(k, d)) // s) + 1
        if (length - 1) * s >= size + before:
            length -= 1
        return length

    def explicit_padding(self, height: int, width: int) -> Padding:
        """``(top, bottom, left, right)`` padding that yields :meth:`output_length` positions in floor mode.

        With ``ceil_mode`` the bottom and right padding grow by the overhang of the last window.
        """
        declared = self.declared_padding()
        sides = []
        for axis, size in enumerate((height, width)):
            before, after = declared[2 * axis:2 * axis + 2]
            length = self.output_length(size, axis)
            needed = (length - 1) * self.stride[axis] + window_span(self.kernel[axis], self.dilation[axis])
            sides.append((before, max(after, needed - size - before)))
        return (sides[0][0], sides[0][1], sides[1][0], sides[1][1])
