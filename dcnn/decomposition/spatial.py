"""The spatial plan (pure, no MPI): one image's layer maps block-split over a 2-D grid of ranks.

Every node's *output* map (every tensor) is block-split over the ``Py x Px`` grid. A windowed node's needed
input box follows from its output block (:func:`dcnn.decomposition.geometry.input_box`). The needs are derived
per consuming edge: a tensor that several windowed nodes read (a residual block's input, read by the block's
first convolution and by its strided 1x1 shortcut; an Inception module's input) is exchanged once, for the box
that covers all their needs, when its first windowed reader runs; what a rank needs but does not hold comes
from the ranks that hold it (:func:`dcnn.decomposition.geometry.exchange_transfers`). Pointwise nodes (also
adds and concatenations, whose inputs are split alike) run on the blocks as they are. A squeeze-and-excitation
gate mid-network (a global average pooling whose map is read again by a ``Mul``) is a per-channel vector every
rank holds whole: the pooling adds the ranks' block sums (an allreduce), the gate's small layers run on every
rank, and the ``Mul`` scales each rank's block. At the classifier head (:func:`spatial_depth`: adaptive pooling,
flatten, fully connected) the map is gathered on every rank, and every fully connected layer is split by output
neurons: each rank holds and computes about ``1/P`` of its rows (:func:`fc_shard_rows`). The engine that runs the plan
is :class:`dcnn.parallel.spatial.SpatialEngine`.
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

__all__ = ["FC_ROW_ALIGNMENT", "GLOBAL_LAYERS", "SpatialLayerPlan", "SpatialPlan", "fc_shard_rows", "fc_shards",
           "gather_index", "plan_spatial", "spatial_depth"]

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
    vector : bool
        The node's output is a per-channel vector (``C x 1 x 1``: a squeeze-and-excitation gate) that every rank
        holds whole: a global average pooling, or a node that reads only such vectors.
    reduces : bool
        The node is a global average pooling of a split map: each rank sums its block, the sums are added over
        the ranks (an allreduce) and divided by the map's ``H * W``.
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
    vector: bool = False
    reduces: bool = False

    @property
    def windowed(self) -> bool:
        """True for convolution and pooling layers on split maps (their input needs halos)."""
        return self.layer.window is not None and not self.vector

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
        The spatial part, layers ``start .. gather_index - 1``.
    gather_index : int
        Index of the first layer of the classifier head (``len(network)`` for a fully convolutional network).
    gathered_shape : tuple of int
        The map shape gathered on every rank.
    start : int
        The first planned node (0, or the first layer after a fused block).
    vectors : frozenset of str
        The tensors every rank holds whole as per-channel vectors (squeeze-and-excitation gates).
    """

    network: Network
    input_shape: Shape
    dims: tuple[int, int]
    layers: list[SpatialLayerPlan]
    gather_index: int
    gathered_shape: Shape
    start: int = 0
    vectors: frozenset[str] = frozenset()

    @property
    def size(self) -> int:
        """Number of ranks in the grid."""
        return self.dims[0] * self.dims[1]


def spatial_depth(network: Network) -> int:
    """Number of layers before the classifier head: the first global layer (:data:`GLOBAL_LAYERS`) after which
    every node reads only tensors computed from it on. This is what spatial mode splits into blocks and fused
    mode can fuse at most; the rest runs on whole (gathered) maps. A global layer before it is a
    squeeze-and-excitation gate (its map is read again after it), which spatial mode runs on split maps."""
    names = [name for name, _ in network.layers]
    for index, (_, layer) in enumerate(network.layers):
        later = set(names[index:])
        if isinstance(layer, GLOBAL_LAYERS) and all(set(sources) <= later for sources in network.inputs[index + 1:]):
            return index
    return len(network)


def gather_index(network: Network) -> int:
    """:func:`spatial_depth`, where the spatial part ends and its last map is gathered, after checking that every
    global layer before it is a squeeze-and-excitation gate the spatial engine can run.

    A global average pooling to ``1 x 1`` of a split map is a sum over ranks (an allreduce); nodes that read only
    such per-channel vectors (the gate's ``1 x 1`` convolutions and activations) run whole on every rank, and a
    ``Mul`` of a split map by a vector is local.

    Raises
    ------
    PlanError
        For any other global layer before the classifier head: a pooling to more than ``1 x 1``, or a flatten,
        fully connected or softmax layer that a later map still depends on.
    """
    stop = spatial_depth(network)
    for name, layer in network.layers[:stop]:
        if isinstance(layer, GLOBAL_LAYERS) and not _global_pool(layer):
            raise PlanError(f"{network.name} cannot be split spatially: node {name} ({layer.describe()}) comes "
                            f"before the classifier head, and only a global average pooling to 1x1 (a "
                            f"squeeze-and-excitation gate) can run on split maps; use --mode batch")
    return stop


def _global_pool(layer: Layer) -> bool:
    return isinstance(layer, AdaptiveAvgPool2d) and layer.output_size == (1, 1)


def plan_spatial(network: Network, input_shape: Shape, dims: tuple[int, int], start: int = 0) -> SpatialPlan:
    """Plan the spatial decomposition (pure; the same on every rank).

    Parameters
    ----------
    network : Network
        The model.
    input_shape : tuple of int
        Per-image network input ``(C, H, W)``.
    dims : tuple of int
        ``(Py, Px)``.
    start : int
        Plan nodes ``start ..`` only (the layers after a fused block): every tensor computed before it that they
        read (:func:`~dcnn.decomposition.fused.cut_tensors`) is held whole by every rank, as the input image is.

    Raises
    ------
    PlanError
        If the global part reads more than the gathered map, or a global layer other than a squeeze-and-excitation
        pooling comes before it (see :func:`gather_index`).
    """
    shapes = network.shapes(input_shape)
    size = dims[0] * dims[1]
    stop = max(gather_index(network), start)
    names = [name for name, _ in network.layers]
    shape_of = {name: shapes[network.tensor_index(name)] for name in [INPUT, *names[:stop]]}
    last = network.last_uses()
    held = {name: [Box(0, shape_of[name][1], 0, shape_of[name][2])] * size
            for name in [INPUT, *names[:start]] if last[name] >= start}
    vectors: set[str] = set()
    for index in range(start, stop):
        (name, layer), sources = network.layers[index], network.inputs[index]
        if _global_pool(layer) or all(source in vectors for source in sources):
            vectors.add(name)
            held[name] = [Box(0, shape_of[name][1], 0, shape_of[name][2])] * size
        else:
            held[name] = block_boxes(shape_of[name][1], shape_of[name][2], dims)
    needs: dict[int, tuple[list[Box], list[Padding], list[Box]]] = {}
    windowed_needs: dict[str, list[list[Box]]] = {}
    for index in range(start, stop):
        layer, source = network.layers[index][1], network.inputs[index][0]
        in_shape, out_blocks = shape_of[source], held[names[index]]
        window = layer.window
        if window is None or names[index] in vectors:
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
    for index in range(start, stop):
        (name, layer), sources = network.layers[index], network.inputs[index]
        source = sources[0]
        needed, padding, interior = needs[index]
        exchanges = layer.window is not None and name not in vectors and source in regions
        exchanged = regions.pop(source) if exchanges else None
        transfers = exchange_transfers(held[source], exchanged) if exchanged is not None else []
        plans.append(SpatialLayerPlan(index, layer, shape_of[source], shapes[index + 1], held[source],
                                      held[name], needed, padding, interior, transfers, sources, exchanged,
                                      vector=name in vectors, reduces=_global_pool(layer) and source not in vectors
                                      and len(set(held[source])) > 1))
    return SpatialPlan(network, tuple(input_shape), tuple(dims), plans, stop, shapes[stop], start,
                       frozenset(vectors))


#: Fully connected shards start at multiples of this many rows (16 float32 outputs, one cache line): each rank's
#: GEMM then meets its rows in the blocks the whole matrix's GEMM does, and at batch 1 computes them bit for bit as
#: the single process (measured with OpenBLAS at 2 to 8 ranks and layers of 10 to 4096 rows; shards of 334 rows
#: differed in the last bit). Models whose logits are exactly equal (ONNX's light models, whose weights are
#: constant fills) need it: a softmax of logits of 1e23 turns any rounding difference into a different class.
FC_ROW_ALIGNMENT = 16


def fc_shards(out_features: int, size: int) -> list[tuple[int, int]]:
    """Per rank, the ``[start, stop)`` rows of a fully connected layer of ``out_features`` neurons split over
    ``size`` ranks: :data:`FC_ROW_ALIGNMENT`-row blocks shared by :func:`split_extent` (the last block may be
    short; with fewer blocks than ranks the last ranks hold none)."""
    blocks = split_extent(-(-out_features // FC_ROW_ALIGNMENT), size)
    return [(min(start * FC_ROW_ALIGNMENT, out_features), min(stop * FC_ROW_ALIGNMENT, out_features))
            for start, stop in blocks]


def fc_shard_rows(network: Network, size: int, rank: int) -> dict[str, tuple[int, int]]:
    """Rows of every fully connected layer's tensors that ``rank`` holds: its share of the neurons
    (:func:`fc_shards`)."""
    rows = {}
    for name, layer in network.layers:
        if isinstance(layer, Linear):
            shard = fc_shards(layer.out_features, size)[rank]
            rows[f"{name}.weight"] = shard
            if layer.bias:
                rows[f"{name}.bias"] = shard
    return rows
