"""Phase planes: a zero-padded input split by row and column modulo the stride.

Plane ``(p, q)`` of a stride ``(sh, sw)`` holds the padded pixels ``(p + r sh, q + c sw)``, so a strided window
reads contiguous runs of each plane, and a Winograd tile's rows ``4 t + i`` are whole rows of phase ``i mod 4``
(:mod:`dcnn.kernels.conv`, :mod:`dcnn.kernels.winograd`, :mod:`dcnn.kernels.depthwise`).
"""

from __future__ import annotations

import numpy as np

from dcnn.kernels.threads import parallel_for
from dcnn.network.window import Padding

__all__ = ["split_phases", "split_phases_serial"]


def split_phases(target: np.ndarray, x: np.ndarray, padding: Padding, stride: tuple[int, int]) -> None:
    """Copy ``x`` (B, C, H, W), zero-padded, into its phase planes ``target`` (sh, sw, C, B, Hq, Wq).

    Plane ``(p, q)`` row ``r`` column ``c`` holds padded pixel ``(p + r sh, q + c sw)``; only the border that
    falls in the padding (or past the padded map) is zeroed, the rest is overwritten. Parallel over the images
    (over the channels for one image): a copy of the whole input that one thread would otherwise make alone.
    """
    if len(x) > 1:
        parallel_for(lambda b: split_phases_serial(target[:, :, :, b[0]:b[-1] + 1], x[b[0]:b[-1] + 1], padding,
                                                    stride), range(len(x)))
    else:
        parallel_for(lambda c: split_phases_serial(target[:, :, c[0]:c[-1] + 1], x[:, c[0]:c[-1] + 1], padding,
                                                    stride), range(x.shape[1]))


def split_phases_serial(target: np.ndarray, x: np.ndarray, padding: Padding, stride: tuple[int, int]) -> None:
    """:func:`split_phases` on one thread: the same parameters (``target`` (sh, sw, C, B, Hq, Wq), ``x``
    (B, C, H, W)). A ``top`` padding below zero starts the planes ``-top`` rows into ``x`` (a band of a map)."""
    top, _, left, _ = padding
    height, width = x.shape[-2:]
    source = x.transpose(1, 0, 2, 3)
    planes_h, planes_w = target.shape[-2:]

    def data_range(phase: int, before: int, size: int, step: int, planes: int) -> tuple[int, int, int]:
        # Plane indices r with before <= phase + r * step < before + size, and the first source index.
        first = max(0, -((phase - before) // step))
        last = max(first, min(planes, -((phase - before - size) // step)))
        return first, last, phase + first * step - before

    sh, sw = stride
    for p in range(sh):
        r0, r1, x_row = data_range(p, top, height, sh, planes_h)
        for q in range(sw):
            c0, c1, x_col = data_range(q, left, width, sw, planes_w)
            plane = target[p, q]
            plane[..., r0:r1, c0:c1] = source[..., x_row::sh, x_col::sw][..., :r1 - r0, :c1 - c0]
            plane[..., :r0, :] = 0
            plane[..., r1:, :] = 0
            plane[..., r0:r1, :c0] = 0
            plane[..., r0:r1, c1:] = 0
