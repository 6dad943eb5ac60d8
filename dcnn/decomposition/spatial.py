"""The spatial plan (pure, no MPI): one image's layer maps block-split over a 2-D grid of ranks.

Every node's *output* map (every tensor) is block-split over the ``Py x Px`` grid. A windowed node's needed
input box follows from its output block (:func:`dcnn.decomposition.geometry.input_box`). The needs are derived
per consuming edge: a tensor that several windowed nodes read (a residual block's input, read by the block's
first convolution and by its strided 1x1 shortcut; an Inception module's input) is exchanged once, for the box
that covers all their needs, when its first windowed reader runs; what a rank needs but does not hold comes
from the ranks that hold it (:func:`dcnn.decomposition.geometry.exchange_transfers`). Pointwise nodes (also
adds and concatenations, whose inputs are split alike) run on the blocks as they are.
At the first global layer (adaptive pooling, flatten, fully connected)
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
    cover,
    exchange_transfers,
    input_box,
    interior_box,
    split_extent,
)
from dcnn.errors import PlanError
from dcnn.network.graph import BYTES_PER_VALUE, INPUT, Network
from dcnn.network.layers import AdaptiveAvgPool2d, AdaptiveMaxPool2d, Flatten, Layer, Linear, Shape, Softmax
from dcnn.network.window import Padding

__all__ = ["GLOBAL_LAYERS", "SpatialLayerPlan", "SpatialPlan", "fc_shard_rows", "gather_index", "plan_spatial",
           "spatial_depth"]

#: Layers that end the spatial part: the map is gathered before the first of them.
GLOBAL_LAYERS = (AdaptiveAvgPool2d, AdaptiveMaxPool2d, Flatten, Linear, Softmax)


@dataclass(frozen=True)
class SpatialLayerPlan:
    """Who holds, needs and sends what for one node of the spatial part.

    Attributes
    ----------
    index : int
        Node index in the network.
    layer : Layer
        The layer spec.
    in_shape, out_shape : tuple of int
        Per-image map shapes (of the first input).
    held : list of Box
        The box of the (first) input tensor each rank holds (the whole map on every rank for the input image).
    out_blocks : list of Box
        The output block each rank computes.
    needed, padding : list
        Per rank, the input box its output block reads and the map-border padding (windowed layers).
    interior : list of Box
        Per rank, the outputs computable without any halo.
    transfers : list of Transfer
        Every message of the exchange this node runs (empty when its input was exchanged for an earlier reader).
    sources : tuple of str
        The tensors the node reads.
    exchanged : list of Box
        Per rank, the box of the input tensor its exchange assembles: the cover of the needs of every windowed
        reader of that tensor (``needed`` itself for a chain); empty when the node runs no exchange.
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
    sources: tuple[str, ...] = (INPUT,)
    exchanged: list[Box] | None = None

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


def gather_index(network: Network) -> int:
    """:func:`spatial_depth`, where the spatial part ends and its last map is gathered, after checking that the
    global part reads nothing else.

    Raises
    ------
    PlanError
        If a node after it reads a tensor computed before the node that precedes it: the gathered map would
        not be the only tensor the global part needs (a squeeze-and-excitation gate mid-network).
    """
    names = [name for name, _ in network.layers]
    first = spatial_depth(network)
    allowed = set(names[max(first - 1, 0):]) | ({INPUT} if first == 0 else set())
    for name, sources in zip(names[first:], network.inputs[first:]):
        outside = [source for source in sources if source not in allowed]
        if outside:
            raise PlanError(f"{network.name} cannot be split spatially: node {name} after the gathered map "
                            f"({names[first - 1]}) reads {outside[0]}, computed before it; use --mode batch")
    return first


def plan_spatial(network: Network, input_shape: Shape, dims: tuple[int, int]) -> SpatialPlan:
    """Plan the spatial decomposition (pure; the same on every rank).

    Raises
    ------
    PlanError
        If the global part reads more than the gathered map (see :func:`gather_index`).
    """
    shapes = network.shapes(input_shape)
    size = dims[0] * dims[1]
    stop = gather_index(network)
    names = [name for name, _ in network.layers]
    shape_of = {name: shapes[network.tensor_index(name)] for name in [INPUT, *names[:stop]]}
    held = {INPUT: [Box(0, input_shape[1], 0, input_shape[2])] * size}
    for name in names[:stop]:
        held[name] = block_boxes(shape_of[name][1], shape_of[name][2], dims)
    needs: dict[int, tuple[list[Box], list[Padding], list[Box]]] = {}
    windowed_needs: dict[str, list[list[Box]]] = {}
    for index in range(stop):
        layer, source = network.layers[index][1], network.inputs[index][0]
        in_shape, out_blocks = shape_of[source], held[names[index]]
        window = layer.window
        if window is None:
            needs[index] = (list(out_blocks), [(0, 0, 0, 0)] * size, list(out_blocks))
            continue
        explicit = window.explicit_padding(in_shape[1], in_shape[2])
        geometry = (window.kernel, window.stride, window.dilation, explicit, in_shape[1], in_shape[2])
        boxes = [input_box(out, *geometry) for out in out_blocks]
        interior = [interior_box(out, own, *geometry) for out, own in zip(out_blocks, held[source])]
        needs[index] = ([b for b, _ in boxes], [p for _, p in boxes], interior)
        windowed_needs.setdefault(source, []).append([b for b, _ in boxes])
    # One exchange per tensor, run by its first windowed reader, for the cover of all its readers' needs.
    regions = {source: [cover(list(per_rank)) for per_rank in zip(*readers)]
               for source, readers in windowed_needs.items()}
    plans = []
    for index in range(stop):
        layer, sources = network.layers[index][1], network.inputs[index]
        source = sources[0]
        needed, padding, interior = needs[index]
        exchanges = layer.window is not None and source in regions
        exchanged = regions.pop(source) if exchanges else None
        transfers = exchange_transfers(held[source], exchanged) if exchanged is not None else []
        plans.append(SpatialLayerPlan(index, layer, shape_of[source], shapes[index + 1], held[source],
                                      held[names[index]], needed, padding, interior, transfers, sources,
                                      exchanged))
    return SpatialPlan(network, tuple(input_shape), tuple(dims), plans, stop, shapes[stop])


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
