"""Networks as directed acyclic graphs of named tensors, with shape inference and the per-node cost model.

A network is a list of nodes in a topological order. Each node is a named layer that reads named tensors:
the network input (called :data:`INPUT`) or the outputs of earlier nodes, a tensor being named after the node
that computes it. A chain (each node reads the previous one) is the common case and needs no input names;
residual adds, branches and concatenations name their inputs (:class:`GraphBuilder` helps to write them).
The network's output is the last node's.

:class:`Network` is the one source of truth for the numbers the planner, the summary table, the benchmarks and
the simulator use: per node, the output shape, the parameter count ``N_l``, the parameter bytes ``M_l``, the
MACs ``C_l``, the activation bytes and the values alive while it runs (see :mod:`dcnn.network.layers` for the
formulas).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from dcnn.errors import ShapeError
from dcnn.network.layers import Layer, Shape, TensorSpec

__all__ = [
    "BYTES_PER_VALUE", "IMAGENET", "INPUT", "GraphBuilder", "LayerCost", "Network", "Preprocessing",
    "format_cost_table", "format_shape", "parse_grid", "parse_shape", "raw_pixels",
]

#: The name of the network input tensor.
INPUT = "input"

#: The paper's b: bytes per stored value (float32; PyTorch torch.float32).
BYTES_PER_VALUE = 4


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 images become network input: ``(pixel * scale - mean) / std`` per channel.

    Attributes
    ----------
    mean, std : tuple of float
        Per-channel statistics on the scaled values (ImageNet's on the [0, 1] scale for AlexNet and VGG, as
        torchvision).
    grayscale : bool
        Convert RGB input to one luminance channel first (:func:`dcnn.io.images.luminance`: ITU-R 601-2 in
        Pillow's ``L``-mode fixed-point arithmetic, for every image source).
    scale : float
        The factor applied to the pixel values first: ``1 / 255`` (the [0, 1] scale) unless a model takes its
        pixels as they are (``1.0``, see :func:`raw_pixels`).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    grayscale: bool = False
    scale: float = 1 / 255


IMAGENET = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


def raw_pixels(channels: int) -> Preprocessing:
    """The pixel values as they are (0 to 255, as float32) for a model of ``channels`` input channels (RGB images
    become luminance for one channel)."""
    return Preprocessing(mean=(0.0,) * channels, std=(1.0,) * channels, grayscale=channels == 1, scale=1.0)


@dataclass(frozen=True)
class LayerCost:
    """One row of the cost model.

    Attributes
    ----------
    name : str
        The layer's name, the prefix of its tensors' ``state_dict`` keys.
    layer : Layer
        The layer spec.
    in_shape, out_shape : tuple of int
        Per-image shapes.
    params : int
        Learnable parameters (what published totals count).
    param_bytes : int
        Bytes of all stored float tensors (batch-norm running statistics included): the paper's M_l.
    macs : int
        Multiply-accumulates per image: the paper's C_l.
    activation_bytes : int
        Bytes of the per-image output feature map.
    inputs : tuple of str
        The tensors the node reads (``in_shape`` is the first one's shape).
    live_bytes : int
        Bytes of every tensor alive while the node runs: its inputs, its output and the tensors that later
        nodes still need (a residual skip keeps its tensor alive), per image.
    """

    name: str
    layer: Layer
    in_shape: Shape
    out_shape: Shape
    params: int
    param_bytes: int
    macs: int
    activation_bytes: int
    inputs: tuple[str, ...] = ()
    live_bytes: int = 0


@dataclass(frozen=True)
class Network:
    """A feed-forward network: a DAG of named layers in topological order.

    Attributes
    ----------
    name : str
        Model name as the zoo knows it.
    layers : tuple of (str, Layer)
        Nodes in execution (topological) order; names follow PyTorch's ``state_dict`` prefixes
        (``features.0``, ``layer1.0.conv1``) and name each node's output tensor.
    input_shape : tuple of int
        The default per-image input ``(C, H, W)``.
    preprocessing : Preprocessing
        How uint8 images are normalised.
    description : str
        One line for ``--help`` and tables.
    fixed_input_size : bool
        The network takes only ``input_shape`` (no adaptive pooling before its classifier).
    inputs : tuple of tuple of str, optional
        Per node, the tensors it reads: :data:`INPUT` or earlier nodes' names. ``None`` (a chain): each node
        reads the one before it, the first reads the input.

    Raises
    ------
    ValueError
        For duplicate names, a node that reads a tensor not computed before it, or a wrong number of inputs.
    """

    name: str
    layers: tuple[tuple[str, Layer], ...]
    input_shape: Shape
    preprocessing: Preprocessing = IMAGENET
    description: str = ""
    fixed_input_size: bool = False
    inputs: tuple[tuple[str, ...], ...] | None = None

    def __post_init__(self):
        names = [name for name, _ in self.layers]
        if len(set(names)) != len(names) or INPUT in names:
            raise ValueError(f"{self.name}: duplicate layer names, or a layer named {INPUT!r}")
        if self.inputs is None:
            object.__setattr__(self, "inputs", tuple((source,) for source in [INPUT, *names[:-1]]))
        if len(self.inputs) != len(self.layers):
            raise ValueError(f"{self.name}: {len(self.inputs)} input lists for {len(self.layers)} layers")
        known = {INPUT}
        for (name, layer), sources in zip(self.layers, self.inputs):
            unknown = [source for source in sources if source not in known]
            if unknown:
                raise ValueError(f"{self.name}: layer {name} reads {unknown[0]!r}, which is not computed before it")
            arity = layer.arity
            if (len(sources) != arity) if arity is not None else len(sources) < 2:
                raise ValueError(f"{self.name}: layer {name} ({layer.kind}) takes "
                                 f"{arity or 'at least 2'} inputs, got {len(sources)}")
            known.add(name)

    def __iter__(self) -> Iterator[tuple[str, Layer]]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def in_channels(self) -> int:
        """Input channels the network expects."""
        return self.input_shape[0]

    @property
    def is_chain(self) -> bool:
        """Every node reads exactly the node before it (the first reads the input)."""
        return self.chain_length() == len(self.layers)

    def chain_length(self) -> int:
        """How many leading nodes form a chain (each reads exactly the node before it)."""
        previous = [INPUT, *(name for name, _ in self.layers)]
        return next((index for index, sources in enumerate(self.inputs) if sources != (previous[index],)),
                    len(self.layers))

    def tensor_index(self, name: str) -> int:
        """Position of a tensor in :meth:`shapes`: 0 for the input, ``i + 1`` for node ``i``'s output."""
        if name == INPUT:
            return 0
        return 1 + [node for node, _ in self.layers].index(name)

    def last_uses(self) -> dict[str, int]:
        """Per tensor, the index of the last node that reads it (``len(self)`` for the network output)."""
        last = {INPUT: -1, **{name: index for index, (name, _) in enumerate(self.layers)}}
        for index, sources in enumerate(self.inputs):
            for source in sources:
                last[source] = index
        if self.layers:
            last[self.layers[-1][0]] = len(self.layers)
        return last

    def consumers(self) -> dict[str, list[int]]:
        """Per tensor, the indices of the nodes that read it, in order (a node reading it twice counts once)."""
        readers: dict[str, list[int]] = {INPUT: [], **{name: [] for name, _ in self.layers}}
        for index, sources in enumerate(self.inputs):
            for source in dict.fromkeys(sources):
                readers[source].append(index)
        return readers

    def shapes(self, input_shape: Shape | None = None) -> list[Shape]:
        """Per-image shapes: the input's, then each node's output (``len(self) + 1`` entries).

        Raises
        ------
        ShapeError
            Naming the first layer that cannot take its input, and the network input size.
        """
        shape = tuple(self.input_shape if input_shape is None else input_shape)
        if self.fixed_input_size and shape[1:] != self.input_shape[1:]:
            raise ShapeError(f"{self.name} takes only {format_shape(self.input_shape)} input, got "
                             f"{format_shape(shape)}; resize the images to {format_shape(self.input_shape[1:])}")
        by_name = {INPUT: shape}
        shapes = [shape]
        for (name, layer), sources in zip(self.layers, self.inputs):
            try:
                shape = layer.output_shape(*(by_name[source] for source in sources))
            except ShapeError as error:
                raise ShapeError(f"{self.name} on input {format_shape(shapes[0])}: layer {name} ({error}). "
                                 f"The model's default input is {format_shape(self.input_shape)}.") from None
            by_name[name] = shape
            shapes.append(shape)
        return shapes

    def declared_map_sizes(self) -> list[tuple[int, int] | None]:
        """Per node, its output map's ``(height, width)`` at the network's declared input (what the kernels
        choose their method by, and the planner with them); ``None`` for a flat output, and for every node from
        the first one that cannot run at the declared size (a model of dynamic size whose default input is too
        small for it: its kernels then take their choice for large maps)."""
        by_name = {INPUT: tuple(self.input_shape)}
        sizes: list[tuple[int, int] | None] = []
        for (name, layer), sources in zip(self.layers, self.inputs):
            try:
                shape = layer.output_shape(*(by_name[source] for source in sources))
            except (ShapeError, KeyError):
                return sizes + [None] * (len(self.layers) - len(sizes))
            by_name[name] = shape
            sizes.append((int(shape[1]), int(shape[2])) if len(shape) == 3 else None)
        return sizes

    def live_tensors(self) -> list[list[str]]:
        """Per node, the tensors alive while it runs: its inputs, its output and every earlier tensor a later
        node still reads (a residual skip). A tensor dies after its last reader, where the executor frees it."""
        last = self.last_uses()
        names = [INPUT, *(name for name, _ in self.layers)]
        return [[name for name in names[:index + 2] if last[name] >= index] for index in range(len(self.layers))]

    def live_values(self, input_shape: Shape | None = None) -> list[int]:
        """Per node, the per-image values of the tensors of :meth:`live_tensors` (a chain: input plus output)."""
        shapes = self.shapes(input_shape)
        return [sum(math.prod(shapes[self.tensor_index(name)]) for name in alive) for alive in self.live_tensors()]

    def output_shape(self, input_shape: Shape | None = None) -> Shape:
        """Per-image output shape."""
        return self.shapes(input_shape)[-1]

    def state_spec(self) -> dict[str, TensorSpec]:
        """Every stored tensor by its full ``state_dict`` key, in layer order."""
        return {f"{name}.{suffix}": spec for name, layer in self.layers for suffix, spec in layer.tensors().items()}

    def costs(self, input_shape: Shape | None = None) -> list[LayerCost]:
        """The per-node cost model for one image of the given input shape."""
        shapes = self.shapes(input_shape)
        rows = []
        for (name, layer), sources, out_shape, live in zip(self.layers, self.inputs, shapes[1:],
                                                           self.live_values(input_shape)):
            in_shape = shapes[self.tensor_index(sources[0])]
            tensors = layer.tensors().values()
            rows.append(LayerCost(
                name=name, layer=layer, in_shape=in_shape, out_shape=out_shape,
                params=sum(t.size for t in tensors if t.learnable),
                param_bytes=sum(t.size for t in tensors if t.dtype == "float32") * BYTES_PER_VALUE,
                macs=layer.macs(in_shape, out_shape),
                activation_bytes=math.prod(out_shape) * BYTES_PER_VALUE,
                inputs=sources, live_bytes=live * BYTES_PER_VALUE))
        return rows

    def num_params(self) -> int:
        """Learnable parameter count (independent of the input size)."""
        return sum(spec.size for spec in self.state_spec().values() if spec.learnable)


class GraphBuilder:
    """Collects the nodes of a network in topological order.

    Examples
    --------
    >>> from dcnn.network.layers import Add, Conv2d, ReLU
    >>> graph = GraphBuilder()
    >>> stem = graph.add("conv", Conv2d(3, 8, 3, padding=1))
    >>> branch = graph.add("branch", Conv2d(8, 8, 3, padding=1))
    >>> _ = graph.add("sum", Add(), stem, branch)
    >>> _ = graph.add("relu", ReLU())
    >>> net = graph.build("toy", (3, 16, 16))
    >>> net.inputs
    (('input',), ('conv',), ('conv', 'branch'), ('sum',))
    """

    def __init__(self) -> None:
        self.layers: list[tuple[str, Layer]] = []
        self.inputs: list[tuple[str, ...]] = []

    @property
    def last(self) -> str:
        """The most recent node's name (:data:`INPUT` before the first)."""
        return self.layers[-1][0] if self.layers else INPUT

    def add(self, name: str, layer: Layer, *inputs: str) -> str:
        """Append a node reading ``inputs`` (default: the most recent node); return its name."""
        self.inputs.append(inputs or (self.last,))
        self.layers.append((name, layer))
        return name

    def build(self, name: str, input_shape: Shape, preprocessing: Preprocessing = IMAGENET,
              description: str = "") -> Network:
        """The network of the nodes added so far."""
        return Network(name, tuple(self.layers), input_shape, preprocessing, description,
                       inputs=tuple(self.inputs))


def parse_shape(text: str, name: str = "shape", form: str = "CxHxW such as 3x224x224",
                lengths: tuple[int, ...] = (1, 2, 3)) -> Shape:
    """Parse ``"3x224x224"`` (or ``"224x224"``, or ``"1x32x32"``) into a tuple of positive ints.

    Parameters
    ----------
    text : str
        Sizes joined by ``x``.
    name : str
        What is parsed, for the message: ``"shape"``, or the option (``"--grid"``).
    form : str
        The expected form with an example, for the message.
    lengths : tuple of int
        How many sizes are allowed.

    Raises
    ------
    ShapeError
        For text that is not ``lengths`` positive integers joined by ``x``, naming ``name`` and ``form``.
    """
    try:
        values = tuple(int(part) for part in text.lower().split("x"))
    except ValueError:
        values = ()
    if len(values) not in lengths or any(v < 1 for v in values):
        raise ShapeError(f"{name} {text!r}: expected {form}")
    return values


def parse_grid(text: str, flag: str) -> tuple[int, int]:
    """``"2x3"`` to ``(2, 3)``: rows by columns of a rank or tile grid given with option ``flag``.

    Raises
    ------
    ShapeError
        Naming ``flag`` and the form ``ROWSxCOLS``.
    """
    return parse_shape(text, flag, "ROWSxCOLS such as 2x3", (2,))  # type: ignore[return-value]


def format_shape(shape: Shape) -> str:
    """``(3, 224, 224)`` as ``3x224x224``."""
    return "x".join(str(v) for v in shape)


def _human(value: float, unit: str = "") -> str:
    for suffix in ("", "K", "M", "G", "T"):
        if abs(value) < 1000 or suffix == "T":
            return f"{value:.0f}{suffix}{unit}" if suffix == "" else f"{value:.2f}{suffix}{unit}"
        value /= 1000
    raise AssertionError("unreachable")


def format_cost_table(network: Network, input_shape: Shape | None = None) -> str:
    """The per-node cost table with totals, as printed by ``python -m dcnn.model``.

    A network that is not a chain gets two more columns: each node's inputs and the bytes alive while it runs.
    """
    rows = network.costs(input_shape)
    graph = not network.is_chain
    width = max(14, *(len(row.name) for row in rows)) if graph else 14
    header = f"{'layer':<{width}} {'type':<28} {'output':>14} {'params':>12} {'M_l bytes':>12} " \
             f"{'MACs C_l':>14} {'act. bytes':>12}" + (f" {'live bytes':>12}  inputs" if graph else "")
    lines = [f"{network.name}: input {format_shape(rows[0].in_shape)}", header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.name:<{width}} {row.layer.describe():<28} {format_shape(row.out_shape):>14} "
                     f"{row.params:>12,} {row.param_bytes:>12,} {row.macs:>14,} {row.activation_bytes:>12,}"
                     + (f" {row.live_bytes:>12,}  {', '.join(row.inputs)}" if graph else ""))
    total_params = sum(r.params for r in rows)
    total_bytes = sum(r.param_bytes for r in rows)
    total_macs = sum(r.macs for r in rows)
    peak_act = max(r.activation_bytes for r in rows)
    lines.append("-" * len(header))
    lines.append(f"{'total':<{width}} {'':<28} {'':>14} {total_params:>12,} {total_bytes:>12,} "
                 f"{total_macs:>14,} {peak_act:>12,}" + (f" {max(r.live_bytes for r in rows):>12,}" if graph else ""))
    lines.append(f"params {_human(total_params)}, weights {_human(total_bytes, 'B')}, "
                 f"{_human(total_macs)} MACs ({_human(2 * total_macs, 'FLOP')}) per image, "
                 f"largest activation {_human(peak_act, 'B')}"
                 + (f", peak live activations {_human(max(r.live_bytes for r in rows), 'B')}" if graph else ""))
    return "\n".join(lines)
