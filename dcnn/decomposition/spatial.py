"""The spatial plan (pure, no MPI): one image's layer maps block-split over a 2-D grid of ranks.

Every layer's *output* map is block-split over the ``Py x Px`` grid. A windowed layer's needed input box
follows from its output block (:func:`dcnn.decomposition.geometry.input_box`); what a rank needs but does not
hold comes from the ranks that hold it (:func:`dcnn.decomposition.geometry.exchange_transfers`). Pointwise
layers run on the blocks as they are. At the first global layer (adaptive pooling, flatten, fully connected)
the map is gathered on every rank, and every fully connected layer is split by output neurons: each rank holds
and computes ``1/P`` of its rows (:func:`fc_shard_rows`). The engine that runs the plan is
:class:`dcnn.parallel.spatial.SpatialEngine`.
"""

from __future__ import annotations

from dataclasses import dataclass

from dcnn.decomposition.geometry import (
    Box,
    Transfer,
    block_boxes,
    exchange_transfers,
    input_box,
    interior_box,
    split_extent,
)
from dcnn.network.graph import BYTES_PER_VALUE, Network
from dcnn.network.layers import AdaptiveAvgPool2d, Flatten, Layer, Linear, Shape, Softmax
from dcnn.network.window import Padding

__all__ = ["GLOBAL_LAYERS", "SpatialLayerPlan", "SpatialPlan", "fc_shard_rows", "plan_spatial", "spatial_depth"]

#: Layers that end the spatial part: the map is gathered before the first of them.
GLOBAL_LAYERS = (AdaptiveAvgPool2d, Flatten, Linear, Softmax)


@dataclass(frozen=True)
class SpatialLayerPlan:
    """Who holds, needs and sends what for one layer of the spatial part.

    Attributes
    ----------
    index : int
        Layer index in the network.
    layer : Layer
        The layer spec.
    in_shape, out_shape : tuple of int
        Per-image map shapes.
    held : list of Box
        The input box each rank holds (the whole map on every rank for the first layer).
    out_blocks : list of Box
        The output block each rank computes.
    needed, padding : list
        Per rank, the input box its output block reads and the map-border padding (windowed layers).
    interior : list of Box
        Per rank, the outputs computable without any halo.
    transfers : list of Transfer
        Every message of this layer's exchange.
    """

    index: int
    layer: Layer
    in_shape: Shape
    out_shape: Shape
    held: list[Box]
    out_blocks: list[Box]
    needed: list[Box]
    padding: list[Padding]
    interior: list[Box]
    transfers: list[Transfer]

    @property
    def windowed(self) -> bool:
        """True for convolution and pooling layers."""
        return self.layer.window is not None

    def halo_bytes(self, batch: int = 1) -> int:
        """Bytes every rank together receives in this layer's exchange."""
        return sum(t.box.area for t in self.transfers) * self.in_shape[0] * BYTES_PER_VALUE * batch


@dataclass(frozen=True)
class SpatialPlan:
    """The spatial decomposition of a network for one input shape and grid.

    Attributes
    ----------
    dims : tuple of int
        ``(Py, Px)``.
    layers : list of SpatialLayerPlan
        The spatial part, layers ``0 .. gather_index - 1``.
    gather_index : int
        Index of the first global layer (``len(network)`` for a fully convolutional network).
    gathered_shape : tuple of int
        The map shape gathered on every rank.
    """

    network: Network
    input_shape: Shape
    dims: tuple[int, int]
    layers: list[SpatialLayerPlan]
    gather_index: int
    gathered_shape: Shape

    @property
    def size(self) -> int:
        """Number of ranks in the grid."""
        return self.dims[0] * self.dims[1]


def spatial_depth(network: Network) -> int:
    """Number of layers before the first global layer (:data:`GLOBAL_LAYERS`): what spatial mode splits into
    blocks and fused mode can fuse at most; the rest runs on whole (gathered) maps."""
    for index, (_, layer) in enumerate(network.layers):
        if isinstance(layer, GLOBAL_LAYERS):
            return index
    return len(network)


def plan_spatial(network: Network, input_shape: Shape, dims: tuple[int, int]) -> SpatialPlan:
    """Plan the spatial decomposition (pure; the same on every rank)."""
    shapes = network.shapes(input_shape)
    size = dims[0] * dims[1]
    whole = Box(0, input_shape[1], 0, input_shape[2])
    held = [whole] * size
    plans = []
    gather_index = spatial_depth(network)
    for index, (_, layer) in enumerate(network.layers[:gather_index]):
        in_shape, out_shape = shapes[index], shapes[index + 1]
        out_blocks = block_boxes(out_shape[1], out_shape[2], dims)
        window = layer.window
        if window is None:
            needed, padding = list(out_blocks), [(0, 0, 0, 0)] * size
            interior = list(out_blocks)
        else:
            explicit = window.explicit_padding(in_shape[1], in_shape[2])
            geometry = (window.kernel, window.stride, window.dilation, explicit, in_shape[1], in_shape[2])
            boxes = [input_box(out, *geometry) for out in out_blocks]
            needed, padding = [b for b, _ in boxes], [p for _, p in boxes]
            interior = [interior_box(out, own, *geometry) for out, own in zip(out_blocks, held)]
        transfers = exchange_transfers(held, needed) if window is not None else []
        plans.append(SpatialLayerPlan(index, layer, in_shape, out_shape, held, out_blocks, needed, padding,
                                      interior, transfers))
        held = out_blocks
    return SpatialPlan(network, tuple(input_shape), tuple(dims), plans, gather_index, shapes[gather_index])


def fc_shard_rows(network: Network, size: int, rank: int) -> dict[str, tuple[int, int]]:
    """Rows of every fully connected layer's tensors that ``rank`` holds: its ``1/size`` of the neurons."""
    rows = {}
    for name, layer in network.layers:
        if isinstance(layer, Linear):
            shard = split_extent(layer.out_features, size)[rank]
            rows[f"{name}.weight"] = shard
            if layer.bias:
                rows[f"{name}.bias"] = shard
    return rows
