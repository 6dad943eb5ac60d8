"""The engine of a rank that runs whole images alone: batch and single mode.

Nothing is split, so nothing is planned and no MPI call is made: the compiled network
(:class:`~dcnn.exec.forward.Forward`) runs the batch, the layers before its flat tail in blocks of images that fit
the cache (:meth:`~dcnn.exec.forward.Forward.block_plan`), and any graph of nodes (two heads joined after a flatten,
which :mod:`dcnn.parallel.spatial` cannot split, included). Its per-layer seconds are counted as the other engines
count theirs.
"""

from __future__ import annotations

import numpy as np

from dcnn.exec.forward import Forward
from dcnn.parallel.spatial import LayerStats

__all__ = ["WholeEngine"]


class WholeEngine:
    """Run whole images of one shape on this rank alone.

    Parameters
    ----------
    forward : Forward
        The compiled network, shared with the rank's other engines (and threads).

    Attributes
    ----------
    stats : LayerStats
        Per-layer compute seconds (no waits, no bytes: a rank alone sends nothing).
    """

    def __init__(self, forward: Forward):
        self.forward = forward
        self.stats = LayerStats.zeros(len(forward.ops))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """The network's output for a ``(B, C, H, W)`` batch."""
        return self.forward(x, seconds=self.stats.compute_seconds)

    def close(self) -> None:
        """Nothing to free (the interface of the engines that hold communicators)."""
