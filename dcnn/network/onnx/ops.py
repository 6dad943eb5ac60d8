"""The operator registry: one converter per ONNX operator type, mapping a node onto dcnn layer specs.

A converter receives a :class:`NodeContext` (the node, its attributes, the model's opset, the constant tensors
and the shapes ONNX's shape inference found) and returns either the name of the input tensor the node passes
through unchanged (``Identity``, ``Dropout`` at inference) or a list of :class:`Step` s: dcnn layers with the
tensors they store, keyed by ``state_dict`` suffix. It raises :class:`~dcnn.network.onnx.errors.Unsupported`
for attributes, ranks or operand kinds dcnn cannot run; the reader collects those of every node before it
reports them all at once.

Operator semantics are those of the ONNX operator specification (``onnx/docs/Operators.md``), per opset.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from dcnn.network.layers import (
    Add,
    Affine,
    BatchNorm2d,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    ReLU,
)
from dcnn.network.onnx.errors import Unsupported

__all__ = ["CONVERTERS", "Conversion", "NodeContext", "Step", "supported_ops"]

OnnxShape = tuple[int | None, ...]


@dataclass(frozen=True)
class Step:
    """One dcnn layer a node becomes.

    Attributes
    ----------
    layer : Layer
        The layer spec.
    inputs : tuple of str
        The ONNX tensors it reads (or earlier steps' ``output`` names).
    tensors : dict of str to numpy.ndarray
        Its stored tensors by suffix (``weight``, ``bias``, ...), float32, of the shapes ``layer.tensors()``
        declares.
    output : str or None
        The tensor it computes; ``None`` for the node's first output (the last step of a node must leave it
        ``None``).
    """

    layer: Layer
    inputs: tuple[str, ...]
    tensors: dict[str, np.ndarray] = field(default_factory=dict)
    output: str | None = None


#: What a converter returns: the name of an input passed through unchanged, or the layers the node becomes.
Conversion = str | list[Step]


@dataclass
class NodeContext:
    """A node as a converter sees it.

    Attributes
    ----------
    node : onnx.NodeProto
        The node.
    name : str
        Its name for messages: ``node.name``, or its first output's name when it has none.
    opset : int
        The model's version of the default (``ai.onnx``) operator set.
    constants : mapping
        Every constant tensor known before this node, by name.
    shapes : mapping
        Full ONNX shapes (batch first) of tensors by name, ``None`` for a dynamic dimension.
    """

    node: onnx.NodeProto
    name: str
    opset: int
    constants: Mapping[str, np.ndarray]
    shapes: Mapping[str, OnnxShape]

    def __post_init__(self) -> None:
        self.attributes = {a.name: onnx.helper.get_attribute_value(a) for a in self.node.attribute}

    def attribute(self, key: str, default: Any = None) -> Any:
        """An attribute's value (bytes decoded to str), or ``default``."""
        value = self.attributes.get(key, default)
        return value.decode() if isinstance(value, bytes) else value

    def has_input(self, index: int) -> bool:
        """Whether input ``index`` is given (ONNX marks an omitted optional input by an empty name)."""
        return index < len(self.node.input) and bool(self.node.input[index])

    def constant(self, index: int, what: str) -> np.ndarray:
        """Input ``index``'s constant value; raises :class:`Unsupported` naming ``what`` if it is computed."""
        name = self.node.input[index]
        if name not in self.constants:
            raise Unsupported(f"{what} is computed, not a constant")
        return self.constants[name]

    def activation(self, index: int = 0) -> str:
        """Input ``index``'s name, which must be a computed tensor (not a constant)."""
        name = self.node.input[index]
        if name in self.constants:
            raise Unsupported("a constant input where dcnn expects a feature map")
        return name

    def shape(self, index: int = 0) -> OnnxShape:
        """Input ``index``'s full ONNX shape; raises :class:`Unsupported` when shape inference left it unknown."""
        shape = self.shapes.get(self.node.input[index])
        if shape is None:
            raise Unsupported(f"the shape of input {self.node.input[index]!r} is unknown")
        return shape

    def rank(self, index: int = 0, allowed: tuple[int, ...] = (4,)) -> int:
        """Input ``index``'s rank, which must be one of ``allowed``."""
        rank = len(self.shape(index))
        if rank not in allowed:
            kinds = " or ".join(f"{r}-D" for r in allowed)
            raise Unsupported(f"{rank}-D input (dcnn runs {kinds} tensors here)")
        return rank

    def unused_outputs(self, first: int = 1) -> None:
        """Raise :class:`Unsupported` if any output from ``first`` on is given (training-mode outputs)."""
        used = [name for name in self.node.output[first:] if name]
        if used:
            raise Unsupported(f"output {used[0]!r} (dcnn computes only the first output)")


def _float32(value: np.ndarray) -> np.ndarray:
    if value.dtype.kind != "f":
        raise Unsupported(f"a {value.dtype} tensor where dcnn expects floats")
    return np.ascontiguousarray(value, dtype=np.float32)


def _ints(ctx: NodeContext, key: str, default: list[int]) -> list[int]:
    return [int(v) for v in ctx.attribute(key, default)]


def _window_geometry(ctx: NodeContext, kernel: tuple[int, int]) -> dict[str, tuple[int, int]]:
    """Strides, dilations and padding of a 2-D conv or pool node (``pads`` or ``auto_pad``).

    ``auto_pad`` ``SAME_UPPER``/``SAME_LOWER`` pads so that the output is ``ceil(input / stride)``, with the
    odd pixel at the end (upper) or the beginning (lower); ``VALID`` pads nothing (ONNX Conv specification).
    """
    strides = tuple(_ints(ctx, "strides", [1, 1]))
    dilations = tuple(_ints(ctx, "dilations", [1, 1]))
    auto_pad = ctx.attribute("auto_pad", "NOTSET")
    if len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2:
        raise Unsupported("not a 2-D window")
    if auto_pad in ("NOTSET", ""):
        pads = _ints(ctx, "pads", [0, 0, 0, 0])
        begin, end = (pads[0], pads[1]), (pads[2], pads[3])
    elif auto_pad == "VALID":
        begin, end = (0, 0), (0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        sizes = ctx.shape(0)[2:]
        begin_end = []
        for axis in range(2):
            span = dilations[axis] * (kernel[axis] - 1) + 1
            if strides[axis] == 1:
                total = span - 1
            elif sizes[axis] is None:
                raise Unsupported(f"auto_pad {auto_pad} with stride {strides[axis]} on a dynamic input size")
            else:
                size = int(sizes[axis])
                total = max(0, (-(-size // strides[axis]) - 1) * strides[axis] + span - size)
            small, large = total // 2, total - total // 2
            begin_end.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        begin, end = (begin_end[0][0], begin_end[1][0]), (begin_end[0][1], begin_end[1][1])
    else:
        raise Unsupported(f"auto_pad {auto_pad}")
    if begin != end:
        raise Unsupported(f"asymmetric pads {list(begin) + list(end)}")
    return {"stride": strides, "dilation": dilations, "padding": begin}  # type: ignore[dict-item]


def convert_conv(ctx: NodeContext) -> Conversion:
    """``Conv`` (2-D): groups, dilations, strides, pads, auto_pad; ``W`` and ``B`` constant."""
    ctx.rank(0)
    weight = _float32(ctx.constant(1, "W"))
    if weight.ndim != 4:
        raise Unsupported(f"{weight.ndim - 2}-D convolution")
    groups = int(ctx.attribute("group", 1))
    kernel = tuple(_ints(ctx, "kernel_shape", list(weight.shape[2:])))
    if kernel != weight.shape[2:]:
        raise Unsupported(f"kernel_shape {list(kernel)} differs from W's {list(weight.shape[2:])}")
    tensors = {"weight": weight}
    if ctx.has_input(2):
        tensors["bias"] = _float32(ctx.constant(2, "B"))
    layer = Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        kernel,
        groups=groups,
        bias="bias" in tensors,
        **_window_geometry(ctx, kernel),
    )  # type: ignore[arg-type]
    return [Step(layer, (ctx.activation(0),), tensors)]


def convert_max_pool(ctx: NodeContext) -> Conversion:
    """``MaxPool`` (2-D): strides, pads, auto_pad, dilations and ceil_mode (opset 10+); no ``Indices``."""
    ctx.rank(0)
    ctx.unused_outputs()
    kernel = tuple(_ints(ctx, "kernel_shape", []))
    geometry = _window_geometry(ctx, kernel)  # type: ignore[arg-type]
    layer = MaxPool2d(
        kernel,
        geometry["stride"],
        geometry["padding"],
        geometry["dilation"],
        ceil_mode=bool(ctx.attribute("ceil_mode", 0)),
    )  # type: ignore[arg-type]
    return [Step(layer, (ctx.activation(0),))]


def convert_relu(ctx: NodeContext) -> Conversion:
    """``Relu``."""
    return [Step(ReLU(), (ctx.activation(0),))]


def convert_flatten(ctx: NodeContext) -> Conversion:
    """``Flatten`` at axis 1 (every value of an image in one row, C order), the only axis a CNN uses."""
    rank = len(ctx.shape(0))
    axis = int(ctx.attribute("axis", 1))
    if axis + (rank if axis < 0 else 0) != 1:
        raise Unsupported(f"axis {axis} (dcnn flattens at axis 1)")
    return [Step(Flatten(), (ctx.activation(0),))]


def _bias_vector(value: np.ndarray, length: int, what: str) -> np.ndarray:
    """A constant that broadcasts along one axis of ``length`` values (a scalar, ``(n,)`` or ``(1, n)``) as
    ``(length,)``; raises :class:`Unsupported` for any other shape."""
    squeezed = value.reshape(-1) if value.size in (1, length) and max(value.shape, default=1) == value.size else None
    if squeezed is None:
        raise Unsupported(f"{what} of shape {list(value.shape)} (dcnn needs one value per output or one in all)")
    return np.broadcast_to(_float32(squeezed), (length,)).copy()


def convert_gemm(ctx: NodeContext) -> Conversion:
    """``Gemm``: ``alpha * A B' + beta * C`` with A the (N, F) activations, B and C constant (transB any,
    transA 0), as a fully connected layer with ``weight = alpha * B'`` (out x in) and ``bias = beta * C``."""
    ctx.rank(0, (2,))
    if ctx.attribute("transA", 0):
        raise Unsupported("transA=1 (the batch would be a column)")
    b = _float32(ctx.constant(1, "B"))
    if b.ndim != 2:
        raise Unsupported(f"{b.ndim}-D B")
    weight = b if ctx.attribute("transB", 0) else b.T
    weight = np.ascontiguousarray(weight * np.float32(ctx.attribute("alpha", 1.0)))
    tensors = {"weight": weight}
    if ctx.has_input(2):
        c = ctx.constant(2, "C")
        tensors["bias"] = _bias_vector(c, weight.shape[0], "C") * np.float32(ctx.attribute("beta", 1.0))
    return [Step(Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors), (ctx.activation(0),), tensors)]


def _channel_vector(ctx: NodeContext, value: np.ndarray, rank: int, channels: int) -> np.ndarray | None:
    """A constant operand that broadcasts per channel of a rank-``rank`` tensor (per feature of an (N, F)
    one) as a ``(channels,)`` vector, or ``None`` if it varies along another axis."""
    if value.ndim > rank:
        return None
    # Right-aligned (numpy) broadcasting: pad the operand's shape with leading ones to the tensor's rank.
    aligned = (1,) * (rank - value.ndim) + tuple(value.shape)
    if aligned[0] != 1 or aligned[1] not in (1, channels) or any(dim != 1 for dim in aligned[2:]):
        return None
    return np.broadcast_to(_float32(value.reshape(-1)), (channels,)).copy()


def _elementwise_with_constant(ctx: NodeContext, scale: bool) -> Conversion:
    """``Add`` or ``Mul`` of a feature map and a per-channel constant: a per-channel affine layer."""
    constant_index = 0 if ctx.node.input[0] in ctx.constants else 1
    source = 1 - constant_index
    shape = ctx.shape(source)
    ctx.rank(source, (4,))
    vector = _channel_vector(ctx, ctx.constants[ctx.node.input[constant_index]], len(shape), int(shape[1]))
    if vector is None:
        raise Unsupported(
            f"a constant of shape {list(ctx.constants[ctx.node.input[constant_index]].shape)} "
            f"(dcnn applies one value per channel)"
        )
    ones, zeros = np.ones_like(vector), np.zeros_like(vector)
    tensors = {"weight": vector, "bias": zeros} if scale else {"weight": ones, "bias": vector}
    return [Step(Affine(vector.size), (ctx.activation(source),), tensors)]


def convert_add(ctx: NodeContext) -> Conversion:
    """``Add``: two feature maps of one shape (a residual sum), or a map plus a per-channel constant."""
    if any(name in ctx.constants for name in ctx.node.input):
        return _elementwise_with_constant(ctx, scale=False)
    if ctx.shape(0) != ctx.shape(1):
        raise Unsupported(f"broadcasting {list(ctx.shape(0))} + {list(ctx.shape(1))}")
    return [Step(Add(), (ctx.activation(0), ctx.activation(1)))]


def convert_batch_norm(ctx: NodeContext) -> Conversion:
    """``BatchNormalization`` at inference (running statistics; ``spatial=1`` before opset 9; no training
    mode or outputs)."""
    ctx.rank(0)
    ctx.unused_outputs()
    if not ctx.attribute("spatial", 1) or ctx.attribute("training_mode", 0):
        raise Unsupported("training mode or per-position statistics (spatial=0)")
    names = ("weight", "bias", "running_mean", "running_var")
    tensors = {key: _float32(ctx.constant(index, key)).reshape(-1) for index, key in enumerate(names, start=1)}
    channels = tensors["weight"].size
    if any(value.size != channels for value in tensors.values()):
        raise Unsupported("statistics of different lengths")
    return [Step(BatchNorm2d(channels, eps=float(ctx.attribute("epsilon", 1e-5))), (ctx.activation(0),), tensors)]


#: Operator type to converter: every ONNX operator dcnn runs.
CONVERTERS: dict[str, Callable[[NodeContext], Conversion]] = {
    "Add": convert_add,
    "BatchNormalization": convert_batch_norm,
    "Conv": convert_conv,
    "Flatten": convert_flatten,
    "Gemm": convert_gemm,
    "MaxPool": convert_max_pool,
    "Relu": convert_relu,
}


def supported_ops() -> list[str]:
    """The ONNX operator types dcnn converts (``Constant`` and ``ConstantOfShape`` are always folded)."""
    return sorted([*CONVERTERS, "Constant", "ConstantOfShape"])
