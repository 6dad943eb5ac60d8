"""Networks as named layer chains, with shape inference and the per-layer cost model.

:class:`Network` is the one source of truth for the numbers the planner, the summary table, the benchmarks and
the simulator use: per layer, the output shape, the parameter count ``N_l``, the parameter bytes ``M_l``, the
MACs ``C_l`` and the activation bytes (see :mod:`dcnn.network.layers` for the formulas).
"""

from __future__ import annotations

import math
from collections.abc import Iterator
from dataclasses import dataclass

from dcnn.errors import ShapeError
from dcnn.network.layers import Layer, Shape, TensorSpec

__all__ = [
    "BYTES_PER_VALUE", "IMAGENET", "LayerCost", "Network", "Preprocessing", "format_cost_table", "format_shape",
    "parse_grid",
    "parse_shape",
]

#: The paper's b: bytes per stored value (float32; PyTorch torch.float32).
BYTES_PER_VALUE = 4


@dataclass(frozen=True)
class Preprocessing:
    """How uint8 images become network input: ``(pixel / 255 - mean) / std`` per channel.

    Attributes
    ----------
    mean, std : tuple of float
        Per-channel statistics on the [0, 1] scale (ImageNet's for AlexNet and VGG, as torchvision).
    grayscale : bool
        Convert RGB input to one luminance channel first (:func:`dcnn.io.images.luminance`: ITU-R 601-2 in
        Pillow's ``L``-mode fixed-point arithmetic, for every image source).
    """

    mean: tuple[float, ...]
    std: tuple[float, ...]
    grayscale: bool = False


IMAGENET = Preprocessing(mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))


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
    """

    name: str
    layer: Layer
    in_shape: Shape
    out_shape: Shape
    params: int
    param_bytes: int
    macs: int
    activation_bytes: int


@dataclass(frozen=True)
class Network:
    """A feed-forward chain of named layers.

    Attributes
    ----------
    name : str
        Model name as the zoo knows it.
    layers : tuple of (str, Layer)
        Layers in execution order; names follow PyTorch's ``state_dict`` prefixes (``features.0``).
    input_shape : tuple of int
        The default per-image input ``(C, H, W)``.
    preprocessing : Preprocessing
        How uint8 images are normalised.
    description : str
        One line for ``--help`` and tables.
    fixed_input_size : bool
        The network takes only ``input_shape`` (no adaptive pooling before its classifier).
    """

    name: str
    layers: tuple[tuple[str, Layer], ...]
    input_shape: Shape
    preprocessing: Preprocessing = IMAGENET
    description: str = ""
    fixed_input_size: bool = False

    def __post_init__(self):
        names = [name for name, _ in self.layers]
        if len(set(names)) != len(names):
            raise ValueError(f"{self.name}: duplicate layer names")

    def __iter__(self) -> Iterator[tuple[str, Layer]]:
        return iter(self.layers)

    def __len__(self) -> int:
        return len(self.layers)

    @property
    def in_channels(self) -> int:
        """Input channels the network expects."""
        return self.input_shape[0]

    def shapes(self, input_shape: Shape | None = None) -> list[Shape]:
        """Per-image shapes: the input's, then each layer's output (``len(self) + 1`` entries).

        Raises
        ------
        ShapeError
            Naming the first layer that cannot take its input, and the network input size.
        """
        shape = tuple(self.input_shape if input_shape is None else input_shape)
        if self.fixed_input_size and shape[1:] != self.input_shape[1:]:
            raise ShapeError(f"{self.name} takes only {format_shape(self.input_shape)} input, got "
                             f"{format_shape(shape)}; resize the images to {format_shape(self.input_shape[1:])}")
        shapes = [shape]
        for name, layer in self.layers:
            try:
                shape = layer.output_shape(shape)
            except ShapeError as error:
                raise ShapeError(f"{self.name} on input {format_shape(shapes[0])}: layer {name} ({error}). "
                                 f"The model's default input is {format_shape(self.input_shape)}.") from None
            shapes.append(shape)
        return shapes

    def output_shape(self, input_shape: Shape | None = None) -> Shape:
        """Per-image output shape."""
        return self.shapes(input_shape)[-1]

    def state_spec(self) -> dict[str, TensorSpec]:
        """Every stored tensor by its full ``state_dict`` key, in layer order."""
        return {f"{name}.{suffix}": spec for name, layer in self.layers for suffix, spec in layer.tensors().items()}

    def costs(self, input_shape: Shape | None = None) -> list[LayerCost]:
        """The per-layer cost model for one image of the given input shape."""
        shapes = self.shapes(input_shape)
        rows = []
        for (name, layer), in_shape, out_shape in zip(self.layers, shapes, shapes[1:]):
            tensors = layer.tensors().values()
            rows.append(LayerCost(
                name=name, layer=layer, in_shape=in_shape, out_shape=out_shape,
                params=sum(t.size for t in tensors if t.learnable),
                param_bytes=sum(t.size for t in tensors if t.dtype == "float32") * BYTES_PER_VALUE,
                macs=layer.macs(in_shape, out_shape),
                activation_bytes=math.prod(out_shape) * BYTES_PER_VALUE))
        return rows

    def num_params(self) -> int:
        """Learnable parameter count (independent of the input size)."""
        return sum(spec.size for spec in self.state_spec().values() if spec.learnable)


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
    """The per-layer cost table with totals, as printed by ``python -m dcnn.model``."""
    rows = network.costs(input_shape)
    header = f"{'layer':<14} {'type':<28} {'output':>14} {'params':>12} {'M_l bytes':>12} " \
             f"{'MACs C_l':>14} {'act. bytes':>12}"
    lines = [f"{network.name}: input {format_shape(rows[0].in_shape)}", header, "-" * len(header)]
    for row in rows:
        lines.append(f"{row.name:<14} {row.layer.describe():<28} {format_shape(row.out_shape):>14} "
                     f"{row.params:>12,} {row.param_bytes:>12,} {row.macs:>14,} {row.activation_bytes:>12,}")
    total_params = sum(r.params for r in rows)
    total_bytes = sum(r.param_bytes for r in rows)
    total_macs = sum(r.macs for r in rows)
    peak_act = max(r.activation_bytes for r in rows)
    lines.append("-" * len(header))
    lines.append(f"{'total':<14} {'':<28} {'':>14} {total_params:>12,} {total_bytes:>12,} {total_macs:>14,} "
                 f"{peak_act:>12,}")
    lines.append(f"params {_human(total_params)}, weights {_human(total_bytes, 'B')}, "
                 f"{_human(total_macs)} MACs ({_human(2 * total_macs, 'FLOP')}) per image, "
                 f"largest activation {_human(peak_act, 'B')}")
    return "\n".join(lines)
