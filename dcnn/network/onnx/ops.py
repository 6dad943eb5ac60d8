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

from collections.abc import Callable, Collection, Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import onnx

from dcnn.kernels.elementwise import batch_norm_scale_shift
from dcnn.network.layers import (
    ELU,
    AdaptiveAvgPool2d,
    AdaptiveMaxPool2d,
    Add,
    Affine,
    AvgPool2d,
    BatchNorm2d,
    ChannelShuffle,
    Clip,
    Concat,
    Conv2d,
    Flatten,
    Hardsigmoid,
    Hardswish,
    Layer,
    LeakyReLU,
    Linear,
    LocalResponseNorm,
    MaxPool2d,
    Mul,
    Pad2d,
    PReLU,
    ReLU,
    ReLU6,
    Sigmoid,
    SiLU,
    Softmax,
    Tanh,
)
from dcnn.network.onnx.constants import BATCH_SIZE, DYNAMIC_EXTENTS, DYNAMIC_HEIGHT, DYNAMIC_WIDTH
from dcnn.network.onnx.errors import Unsupported

__all__ = ["CONVERTERS", "REFUSED_OPS", "Conversion", "NodeContext", "Step", "supported_ops"]

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
    needed : collection of str
        The tensors the graph's output depends on (an output outside it, such as an unused dropout mask, is
        never computed).
    output_shape : tuple or None
        Set by a converter that passes its input through as another view (``Reshape``, ``Identity``): the ONNX
        shape of its output, ``None`` per dynamic dimension.
    """

    node: onnx.NodeProto
    name: str
    opset: int
    constants: Mapping[str, np.ndarray]
    shapes: Mapping[str, OnnxShape]
    needed: Collection[str] = ()
    #: The ONNX shape of the node's first output as the converter resolved it (a reshape's target, a channel
    #: shuffle's permuted view), for the reader to record where shape inference left it unknown.
    output_shape: OnnxShape | None = None

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
        """Raise :class:`Unsupported` if any output from ``first`` on is used (training-mode outputs)."""
        used = [name for name in self.node.output[first:] if name in self.needed]
        if used:
            raise Unsupported(f"output {used[0]!r} (dcnn computes only the first output)")


def _float32(value: np.ndarray) -> np.ndarray:
    if value.dtype.kind != "f":
        raise Unsupported(f"a {value.dtype} tensor where dcnn expects floats")
    return np.ascontiguousarray(value, dtype=np.float32)


def _ints(ctx: NodeContext, key: str, default: list[int]) -> list[int]:
    return [int(v) for v in ctx.attribute(key, default)]


def _window_geometry(ctx: NodeContext, kernel: tuple[int, ...]) -> dict[str, tuple[int, int]]:
    """Stride, dilation, padding and padding_end of a 2-D conv or pool node (``pads`` or ``auto_pad``).

    ``pads`` is ``[top, left, bottom, right]``. ``auto_pad`` ``SAME_UPPER``/``SAME_LOWER`` pads so that the
    output is ``ceil(input / stride)``, the odd pixel at the end (upper) or the beginning (lower); ``VALID``
    pads nothing (ONNX ``Conv`` specification). With a stride above 1 the SAME padding depends on the input
    size, so it needs a fixed one.
    """
    strides = tuple(_ints(ctx, "strides", [1, 1]))
    dilations = tuple(_ints(ctx, "dilations", [1, 1]))
    auto_pad = ctx.attribute("auto_pad", "NOTSET")
    if len(kernel) != 2 or len(strides) != 2 or len(dilations) != 2:
        raise Unsupported(f"a {len(kernel)}-D window (dcnn runs 2-D ones)")
    if auto_pad in ("NOTSET", ""):
        pads = _ints(ctx, "pads", [0, 0, 0, 0])
        begin, end = (pads[0], pads[1]), (pads[2], pads[3])
    elif auto_pad == "VALID":
        begin, end = (0, 0), (0, 0)
    elif auto_pad in ("SAME_UPPER", "SAME_LOWER"):
        sizes = ctx.shape(0)[2:]
        sides = []
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
            sides.append((small, large) if auto_pad == "SAME_UPPER" else (large, small))
        begin, end = (sides[0][0], sides[1][0]), (sides[0][1], sides[1][1])
    else:
        raise Unsupported(f"auto_pad {auto_pad}")
    if min(begin + end) < 0:
        raise Unsupported(f"negative pads {list(begin + end)}")
    return {"stride": strides, "dilation": dilations, "padding": begin, "padding_end": end}  # type: ignore


def convert_conv(ctx: NodeContext) -> Conversion:
    """``Conv`` (2-D): group, dilations, strides, pads, auto_pad; ``W`` and ``B`` constant."""
    ctx.rank(0)
    weight = _float32(ctx.constant(1, "W"))
    if weight.ndim != 4:
        raise Unsupported(f"a {weight.ndim - 2}-D convolution (dcnn runs 2-D ones)")
    groups = int(ctx.attribute("group", 1))
    kernel = tuple(_ints(ctx, "kernel_shape", list(weight.shape[2:])))
    if kernel != weight.shape[2:]:
        raise Unsupported(f"kernel_shape {list(kernel)} differs from W's {list(weight.shape[2:])}")
    tensors = {"weight": weight}
    if ctx.has_input(2):
        tensors["bias"] = _float32(ctx.constant(2, "B")).reshape(-1)
    layer = Conv2d(
        weight.shape[1] * groups,
        weight.shape[0],
        kernel,
        groups=groups,
        bias="bias" in tensors,
        **_window_geometry(ctx, kernel),
    )  # type: ignore[arg-type]
    return [Step(layer, (ctx.activation(0),), tensors)]


def _pool_window(ctx: NodeContext) -> tuple[tuple[int, ...], dict[str, tuple[int, int]], bool]:
    ctx.rank(0)
    ctx.unused_outputs()
    kernel = tuple(_ints(ctx, "kernel_shape", []))
    return kernel, _window_geometry(ctx, kernel), bool(ctx.attribute("ceil_mode", 0))


def convert_max_pool(ctx: NodeContext) -> Conversion:
    """``MaxPool`` (2-D): strides, pads, auto_pad, dilations and ceil_mode (opset 10+); no ``Indices``
    output (``storage_order`` only orders those)."""
    kernel, geometry, ceil_mode = _pool_window(ctx)
    layer = MaxPool2d(
        kernel, geometry["stride"], geometry["padding"], geometry["dilation"], ceil_mode, geometry["padding_end"]
    )  # type: ignore[arg-type]
    return [Step(layer, (ctx.activation(0),))]


def convert_average_pool(ctx: NodeContext) -> Conversion:
    """``AveragePool`` (2-D): strides, pads, auto_pad, count_include_pad, ceil_mode (opset 10+); dilations
    (opset 19+) only 1."""
    kernel, geometry, ceil_mode = _pool_window(ctx)
    if geometry["dilation"] != (1, 1):
        raise Unsupported(f"dilations {list(geometry['dilation'])}")
    layer = AvgPool2d(
        kernel,
        geometry["stride"],
        geometry["padding"],
        ceil_mode,  # type: ignore[arg-type]
        bool(ctx.attribute("count_include_pad", 0)),
        geometry["padding_end"],
    )
    return [Step(layer, (ctx.activation(0),))]


def convert_global_pool(ctx: NodeContext) -> Conversion:
    """``GlobalAveragePool`` and ``GlobalMaxPool``: one value per channel, kept as a ``(C, 1, 1)`` map."""
    ctx.rank(0)
    pool = AdaptiveAvgPool2d(1) if ctx.node.op_type == "GlobalAveragePool" else AdaptiveMaxPool2d(1)
    return [Step(pool, (ctx.activation(0),))]


def _pointwise(layer: Layer) -> Callable[[NodeContext], Conversion]:
    def convert(ctx: NodeContext) -> Conversion:
        return [Step(layer, (ctx.activation(0),))]

    convert.__doc__ = f"``{layer.kind}``: a pointwise activation."
    return convert


def convert_leaky_relu(ctx: NodeContext) -> Conversion:
    """``LeakyRelu`` (``alpha``, default 0.01)."""
    return [Step(LeakyReLU(float(ctx.attribute("alpha", 0.01))), (ctx.activation(0),))]


def convert_elu(ctx: NodeContext) -> Conversion:
    """``Elu`` (``alpha``, default 1)."""
    return [Step(ELU(float(ctx.attribute("alpha", 1.0))), (ctx.activation(0),))]


def convert_hard_sigmoid(ctx: NodeContext) -> Conversion:
    """``HardSigmoid``: ``max(0, min(1, alpha x + beta))``, defaults 0.2 and 0.5."""
    layer = Hardsigmoid(float(ctx.attribute("alpha", 0.2)), float(ctx.attribute("beta", 0.5)))
    return [Step(layer, (ctx.activation(0),))]


def convert_prelu(ctx: NodeContext) -> Conversion:
    """``PRelu`` with a constant slope that is one value, or one per channel (``(C,)``, ``(C, 1, 1)``)."""
    rank = ctx.rank(0, (2, 4))
    slope = _float32(ctx.constant(1, "slope"))
    vector = _channel_vector(slope, rank, ctx.shape(0)[1])
    if vector is None:
        # Before opset 7 and in PyTorch exports a per-channel slope may be (C,) against an N x C x H x W input.
        vector = slope.reshape(-1) if slope.ndim == 1 and slope.size == ctx.shape(0)[1] else None
    if vector is None:
        raise Unsupported(f"a slope of shape {list(slope.shape)} (dcnn takes one slope or one per channel)")
    slopes = vector[:1] if np.all(vector == vector[0]) and slope.size == 1 else vector
    return [Step(PReLU(slopes.size), (ctx.activation(0),), {"weight": slopes})]


def _clip_bounds(ctx: NodeContext) -> tuple[float, float]:
    """``Clip``'s bounds: attributes ``min``/``max`` before opset 11, optional constant inputs since."""
    if ctx.opset < 11:
        return float(ctx.attribute("min", -np.inf)), float(ctx.attribute("max", np.inf))
    bounds = []
    for index, default in ((1, -np.inf), (2, np.inf)):
        if ctx.has_input(index):
            value = ctx.constant(index, "min" if index == 1 else "max")
            if value.size != 1:
                raise Unsupported(f"a bound of shape {list(value.shape)}")
            bounds.append(float(value.reshape(-1)[0]))
        else:
            bounds.append(default)
    return bounds[0], bounds[1]


def convert_clip(ctx: NodeContext) -> Conversion:
    """``Clip``: ReLU6 for the bounds 0 and 6, ReLU for 0 and none, a general clip otherwise."""
    low, high = _clip_bounds(ctx)
    layer = ReLU6() if (low, high) == (0, 6) else ReLU() if (low, high) == (0, np.inf) else Clip(low, high)
    return [Step(layer, (ctx.activation(0),))]


def convert_lrn(ctx: NodeContext) -> Conversion:
    """``LRN`` across channels: ``x / (bias + alpha / size * sum of squares) ** beta``, an odd ``size`` (ONNX
    centres an even window one channel later than PyTorch)."""
    ctx.rank(0)
    size = int(ctx.attribute("size"))
    if size % 2 == 0:
        raise Unsupported(f"an even size {size}")
    layer = LocalResponseNorm(
        size, float(ctx.attribute("alpha", 1e-4)), float(ctx.attribute("beta", 0.75)), float(ctx.attribute("bias", 1.0))
    )
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


def _flattened(ctx: NodeContext, target: tuple[int | None, ...]) -> Conversion:
    """A node that turns its input ``(N, ...)`` into ``target``: a flatten if ``target`` is ``(N, F)`` with F
    all the per-image values, the input itself if it is the input's shape; else :class:`Unsupported`."""
    shape = ctx.shape(0)
    per_image = int(np.prod(shape[1:])) if all(d is not None for d in shape[1:]) else None
    if tuple(target) == tuple(shape) and None not in shape[1:]:
        return ctx.activation(0)
    if len(target) == 2 and per_image is not None and target[1] == per_image and target[0] in (shape[0], None):
        return [Step(Flatten(), (ctx.activation(0),))]
    if len(target) == 2 and per_image is None:
        raise Unsupported(
            f"a flatten of {list(shape)}, a map of dynamic height or width (export with a fixed input size, or pool "
            "it to a fixed size first)"
        )
    raise Unsupported(f"{list(shape)} to {list(target)} is not a flatten of each image")


def convert_reshape(ctx: NodeContext) -> Conversion:
    """``Reshape`` to ``(N, C*H*W)``, a flatten, or to the input's own shape; the shape is constant (an
    input since opset 5). ``0`` copies a dimension (unless ``allowzero``), ``-1`` takes the rest."""
    shape = ctx.shape(0)
    target = [int(v) for v in ctx.constant(1, "the target shape").reshape(-1)]
    allow_zero = bool(ctx.attribute("allowzero", 0))
    if any(v in DYNAMIC_EXTENTS for v in target):
        return _reshape_keeping_height_and_width(ctx, shape, target)
    if BATCH_SIZE in target and (target.index(BATCH_SIZE) != 0 or target.count(BATCH_SIZE) > 1):
        raise Unsupported(f"the batch size elsewhere than first in the target shape {target}")
    # The batch size first (x.view(x.size(0), -1), with or without allowzero) is the input's own batch.
    resolved: list[int | None] = [
        shape[i] if (v == 0 and not allow_zero and i < len(shape)) or (i == 0 and v == BATCH_SIZE) else v
        for i, v in enumerate(target)
    ]
    known = [d for d in resolved if d is not None and d != -1]
    if resolved.count(-1) == 1 and None not in shape:
        resolved[resolved.index(-1)] = int(np.prod(shape)) // max(1, int(np.prod(known)))
    elif resolved.count(-1) == 1 and resolved[0] == shape[0] and -1 in resolved[1:] and None not in shape[1:]:
        # The batch kept (0, or the batch size from a Shape), the rest of each image known.
        rest = int(np.prod([d for d in resolved[1:] if d != -1]))
        resolved[resolved.index(-1)] = int(np.prod(shape[1:])) // max(1, rest)
    elif resolved.count(-1) == 1 and len(resolved) == 2 and resolved[0] != -1:
        # (N or 0, -1) on a tensor with a dynamic batch: everything but the batch in one row.
        resolved[1] = int(np.prod(shape[1:])) if None not in shape[1:] else None
    elif resolved.count(-1) == 1 and len(resolved) == 2 and resolved[1] is not None and resolved[1] != -1:
        resolved[0] = shape[0] if None not in shape[1:] and resolved[1] == int(np.prod(shape[1:])) else -1
    if _splits_or_merges_channels(shape, tuple(resolved)):
        ctx.output_shape = tuple(resolved)
        return ctx.activation(0)
    fixed_rows = len(resolved) == 2 and resolved[0] not in (None, -1)
    if shape[0] is None and fixed_rows and None not in shape[1:] and resolved[1] == int(np.prod(shape[1:])):
        raise Unsupported(
            f"the target shape {target} fixes the batch at {resolved[0]} in a model of dynamic batch (a traced "
            "len(x) or x.shape[0] became a constant; export with torch.flatten(x, 1) or x.view(x.size(0), -1))"
        )
    conversion = _flattened(ctx, tuple(resolved))
    ctx.output_shape = tuple(resolved)
    return conversion


def _reshape_keeping_height_and_width(ctx: NodeContext, shape: OnnxShape, target: list[int]) -> Conversion:
    """A reshape whose target ends in its input's own dynamic height and width (ShuffleNet's
    ``x.view(n, g, c // g, h, w)`` and ``x.view(n, -1, h, w)`` with ``n, c, h, w = x.size()``): a view of the
    channel groups or its merge, the last two axes kept; any other use of a dynamic height or width is refused."""
    refused = Unsupported(
        "a dynamic height or width in the target shape (dcnn reshapes to (N, C*H*W) or views the channel groups "
        "of a map, keeping its height and width)"
    )
    if len(shape) < 4 or tuple(shape[-2:]) != (None, None) or tuple(target[-2:]) != (DYNAMIC_HEIGHT, DYNAMIC_WIDTH):
        raise refused
    middle = target[1:-2]
    if any(v in DYNAMIC_EXTENTS or v == BATCH_SIZE for v in middle) or None in shape[1:-2]:
        raise refused
    volume = int(np.prod(shape[1:-2]))  # the values of each image at one pixel
    if middle.count(-1) == 1:
        middle[middle.index(-1)] = volume // max(1, int(np.prod([v for v in middle if v != -1])))
    first = shape[0] if target[0] in (BATCH_SIZE, 0) else target[0]
    resolved = (first, *middle, None, None)
    same = len(resolved) == len(shape) and tuple(middle) == tuple(shape[1:-2])  # x.reshape(x.shape)
    if not same and not _splits_or_merges_channels(shape, resolved, dynamic_size=True):
        raise refused
    ctx.output_shape = resolved
    return ctx.activation(0)


def _splits_or_merges_channels(
    shape: tuple[int | None, ...], target: tuple[int | None, ...], dynamic_size: bool = False
) -> bool:
    """Whether a reshape views the channels of ``(N, C, H, W)`` as ``(N, g, C/g, H, W)`` or merges them back:
    the values keep their order, so dcnn keeps the 4-D tensor (a channel shuffle's first and last step).
    ``dynamic_size``: the height and width are dynamic, and the target keeps the input's own."""
    if len(shape) == 4 and len(target) == 5:
        grouped, plain = target, shape
    elif len(shape) == 5 and len(target) == 4:
        grouped, plain = shape, target
    else:
        return False
    known = None not in grouped[1:3] and plain[1] is not None
    return (
        known
        and grouped[1] * grouped[2] == plain[1]
        and tuple(grouped[3:]) == tuple(plain[2:])
        and (dynamic_size or None not in plain[2:])
    )


def convert_transpose(ctx: NodeContext) -> Conversion:
    """``Transpose`` of the channel groups of a ``(N, g, C/g, H, W)`` view (``perm`` ``[0, 2, 1, 3, 4]``):
    ShuffleNet's channel shuffle; the identity permutation passes its input through."""
    shape = ctx.shape(0)
    perm = [int(p) for p in ctx.attribute("perm", list(range(len(shape)))[::-1])]
    if perm == list(range(len(shape))):
        return ctx.activation(0)
    if len(shape) == 5 and perm == [0, 2, 1, 3, 4] and shape[1] is not None:
        ctx.output_shape = tuple(shape[p] for p in perm)
        return [Step(ChannelShuffle(int(shape[1])), (ctx.activation(0),))]
    raise Unsupported(f"perm {perm} of a {len(shape)}-D tensor (dcnn transposes only channel groups)")


def _axes(ctx: NodeContext, rank: int) -> list[int] | None:
    """``Squeeze``/``Unsqueeze`` axes: an attribute before opset 13, an optional constant input since."""
    if ctx.opset < 13:
        axes = ctx.attribute("axes")
    else:
        axes = ctx.constant(1, "axes").reshape(-1) if ctx.has_input(1) else None
    return None if axes is None else sorted(int(a) % rank for a in axes)


def convert_reduce(ctx: NodeContext) -> Conversion:
    """``ReduceMean`` / ``ReduceMax`` over height and width (PyTorch's ``x.mean((2, 3))``): a global pool.

    ``keepdims`` (default 1) keeps ``(N, C, 1, 1)``; 0 gives ``(N, C)``, a flatten after the pool. The axes are
    an attribute before opset 18, an optional constant input since (``noop_with_empty_axes`` 0: no axes reduce
    every axis, the batch too, which dcnn refuses).
    """
    rank = ctx.rank(0)
    if ctx.opset < 18:
        axes = ctx.attribute("axes")
    else:
        axes = ctx.constant(1, "axes").reshape(-1) if ctx.has_input(1) else None
        if axes is not None and axes.size == 0:
            axes = None
        if axes is None and ctx.attribute("noop_with_empty_axes", 0):
            return ctx.activation(0)
    axes = None if axes is None else sorted(int(a) % rank for a in axes)
    if axes != [2, 3]:
        raise Unsupported(f"axes {axes if axes is not None else 'all'} (dcnn reduces height and width, axes [2, 3])")
    pool = AdaptiveAvgPool2d(1) if ctx.node.op_type == "ReduceMean" else AdaptiveMaxPool2d(1)
    if ctx.attribute("keepdims", 1):
        return [Step(pool, (ctx.activation(0),))]
    pooled = f"{ctx.node.output[0]}_pool"
    return [Step(pool, (ctx.activation(0),), output=pooled), Step(Flatten(), (pooled,))]


def convert_squeeze(ctx: NodeContext) -> Conversion:
    """``Squeeze`` of unit axes after the channels, e.g. ``(N, C, 1, 1)`` to ``(N, C)``: a flatten."""
    shape = ctx.shape(0)
    axes = _axes(ctx, len(shape))
    if axes is None:
        raise Unsupported("no axes (the batch axis would go too when it is 1)")
    if 0 in axes or any(shape[a] != 1 for a in axes):
        raise Unsupported(f"axes {axes} of shape {list(shape)}")
    return _flattened(ctx, tuple(d for i, d in enumerate(shape) if i not in axes))


def convert_unsqueeze(ctx: NodeContext) -> Conversion:
    """``Unsqueeze`` adds axes, never flattens: only constants are unsqueezed (folded at load time)."""
    raise Unsupported("adds axes to a computed tensor (dcnn unsqueezes constants only)")


def convert_identity(ctx: NodeContext) -> Conversion:
    """``Identity``: the input, passed through."""
    ctx.output_shape = ctx.shapes.get(ctx.node.input[0])
    return ctx.activation(0)


def convert_dropout(ctx: NodeContext) -> Conversion:
    """``Dropout`` at inference: the input, passed through (no mask output, no training mode)."""
    ctx.unused_outputs()
    if ctx.has_input(2) and bool(ctx.constant(2, "training_mode").reshape(-1)[0]):
        raise Unsupported("training_mode true")
    ctx.output_shape = ctx.shapes.get(ctx.node.input[0])
    return ctx.activation(0)


def _bias_vector(value: np.ndarray, length: int, what: str) -> np.ndarray:
    """A constant that broadcasts along one axis of ``length`` values (a scalar, ``(n,)`` or ``(1, n)``) as
    ``(length,)``; raises :class:`Unsupported` for any other shape."""
    if value.size not in (1, length) or max(value.shape, default=1) != value.size:
        raise Unsupported(f"{what} of shape {list(value.shape)} (dcnn needs one value per output or one in all)")
    return np.broadcast_to(_float32(value.reshape(-1)), (length,)).copy()


def convert_gemm(ctx: NodeContext) -> Conversion:
    """``Gemm``: ``alpha * A B' + beta * C`` with A the (N, F) activations, B and C constant (transB any,
    transA 0), as a fully connected layer with ``weight = alpha * B'`` (out x in) and ``bias = beta * C``."""
    ctx.rank(0, (2,))
    if ctx.attribute("transA", 0):
        raise Unsupported("transA=1 (the batch would be a column)")
    b = _float32(ctx.constant(1, "B"))
    if b.ndim != 2:
        raise Unsupported(f"a {b.ndim}-D B")
    weight = b if ctx.attribute("transB", 0) else b.T
    weight = np.ascontiguousarray(weight * np.float32(ctx.attribute("alpha", 1.0)))
    tensors = {"weight": weight}
    if ctx.has_input(2):
        c = ctx.constant(2, "C")
        tensors["bias"] = _bias_vector(c, weight.shape[0], "C") * np.float32(ctx.attribute("beta", 1.0))
    return [Step(Linear(weight.shape[1], weight.shape[0], bias="bias" in tensors), (ctx.activation(0),), tensors)]


def convert_matmul(ctx: NodeContext) -> Conversion:
    """``MatMul`` of the (N, F) activations by a constant (F, K) matrix: a fully connected layer without
    bias."""
    ctx.rank(0, (2,))
    b = _float32(ctx.constant(1, "B"))
    if b.ndim != 2:
        raise Unsupported(f"a {b.ndim}-D B")
    return [
        Step(Linear(b.shape[0], b.shape[1], bias=False), (ctx.activation(0),), {"weight": np.ascontiguousarray(b.T)})
    ]


def _channel_vector(value: np.ndarray, rank: int, channels: int | None) -> np.ndarray | None:
    """A constant operand that broadcasts per channel of a rank-``rank`` tensor (per feature of an (N, F)
    one) as a ``(channels,)`` vector, or ``None`` if it varies along another axis."""
    if value.ndim > rank or channels is None:
        return None
    # Right-aligned (numpy) broadcasting: pad the operand's shape with leading ones to the tensor's rank.
    aligned = (1,) * (rank - value.ndim) + tuple(value.shape)
    if aligned[0] != 1 or aligned[1] not in (1, channels) or any(dim != 1 for dim in aligned[2:]):
        return None
    return np.broadcast_to(_float32(value.reshape(-1)), (channels,)).copy()


def _with_constant(ctx: NodeContext) -> Conversion:
    """``Add``, ``Sub``, ``Mul`` or ``Div`` of a tensor and a constant that is one value, or one per channel (per
    feature of an (N, F) tensor): a per-channel affine layer ``weight * x + bias``.

    ``x + c``: weight 1, bias c; ``x - c``: 1, -c; ``c - x``: -1, c; ``x * c``: c, 0; ``x / c``: 1 / c, 0
    (``c / x`` is no affine map: refused).
    """
    op = ctx.node.op_type
    constant_index = 0 if ctx.node.input[0] in ctx.constants else 1
    source = 1 - constant_index
    rank = ctx.rank(source, (2, 4))
    value = ctx.constants[ctx.node.input[constant_index]]
    vector = _channel_vector(value, rank, ctx.shape(source)[1])
    if vector is None:
        raise Unsupported(f"a constant of shape {list(value.shape)} (dcnn applies one value per channel)")
    if op == "Div" and constant_index == 0:
        raise Unsupported("a constant divided by a tensor")
    ones, zeros = np.ones_like(vector), np.zeros_like(vector)
    weight, bias = {
        "Add": (ones, vector),
        "Sub": (ones, -vector) if constant_index == 1 else (-ones, vector),
        "Mul": (vector, zeros),
        "Div": (np.float32(1) / vector, zeros),
    }[op]
    return [Step(Affine(vector.size), (ctx.activation(source),), {"weight": weight, "bias": bias})]


def convert_add(ctx: NodeContext) -> Conversion:
    """``Add``: two tensors of one shape (a residual sum), or a tensor plus a per-channel constant."""
    if any(name in ctx.constants for name in ctx.node.input):
        return _with_constant(ctx)
    if ctx.shape(0) != ctx.shape(1):
        raise Unsupported(f"broadcasting {list(ctx.shape(0))} + {list(ctx.shape(1))}")
    return [Step(Add(), (ctx.activation(0), ctx.activation(1)))]


def convert_sub(ctx: NodeContext) -> Conversion:
    """``Sub``: a tensor and a per-channel constant (either side), or two tensors of one shape: the second
    negated (an affine layer of weight -1) and added."""
    if any(name in ctx.constants for name in ctx.node.input):
        return _with_constant(ctx)
    shape = ctx.shape(0)
    if shape != ctx.shape(1) or len(shape) not in (2, 4) or shape[1] is None:
        raise Unsupported(f"broadcasting {list(shape)} - {list(ctx.shape(1))}")
    negated = f"{ctx.node.output[0]}_negated"
    channels = int(shape[1])
    tensors = {"weight": np.full(channels, -1, np.float32), "bias": np.zeros(channels, np.float32)}
    return [
        Step(Affine(channels), (ctx.activation(1),), tensors, output=negated),
        Step(Add(), (ctx.activation(0), negated)),
    ]


def convert_div(ctx: NodeContext) -> Conversion:
    """``Div`` of a tensor by a per-channel constant (``x / 6`` of a hand-written hard swish, ``x / std``)."""
    if ctx.node.input[1] not in ctx.constants:
        raise Unsupported("a division by a tensor")
    return _with_constant(ctx)


#: The largest integer exponent ``Pow`` runs (as products of its input: ``x ** 3`` in GELU's tanh approximation).
MAX_POWER = 4


def convert_pow(ctx: NodeContext) -> Conversion:
    """``Pow`` of a tensor by a constant integer exponent 1 to :data:`MAX_POWER`: products of the tensor
    (``x ** 3`` is ``(x * x) * x``, the cube of GELU's tanh approximation)."""
    exponent = ctx.constant(1, "the exponent")
    power = float(exponent.reshape(-1)[0]) if exponent.size == 1 else None
    if power is None or power != int(power) or not 1 <= power <= MAX_POWER:
        raise Unsupported(f"exponent {exponent.tolist()} (dcnn runs integer powers 1 to {MAX_POWER})")
    x = ctx.activation(0)
    if power == 1:
        return x
    steps, product = [], x
    for index in range(2, int(power) + 1):
        output = None if index == power else f"{ctx.node.output[0]}_power{index}"
        steps.append(Step(Mul(), (product, x), output=output))
        product = output or ""
    return steps


def _channel_selection(source: str, rank: int, channels: int, picked: list[int], output: str | None) -> Step:
    """A layer that copies the channels ``picked`` of a ``(N, channels, ...)`` tensor in that order: a 1 x 1
    convolution (a fully connected layer for (N, F) rows) whose weights select them, one 1 per output. Each output
    is ``1 * x + 0 * (the others)``, so the copy is exact for finite values."""
    if not picked:
        raise Unsupported("an empty slice")
    weight = np.zeros((len(picked), channels), np.float32)
    weight[np.arange(len(picked)), picked] = 1
    if rank == 2:
        return Step(Linear(channels, len(picked), bias=False), (source,), {"weight": weight}, output=output)
    layer = Conv2d(channels, len(picked), (1, 1), bias=False)
    return Step(layer, (source,), {"weight": weight.reshape(len(picked), channels, 1, 1)}, output=output)


def convert_slice(ctx: NodeContext) -> Conversion:
    """``Slice`` of the channels (``x[:, a:b]``, ``x[:, ::2]``) of a map or the features of rows: starts, ends,
    axes and steps attributes before opset 10, constant inputs since; every other axis whole. A channel
    selection (:func:`_channel_selection`)."""
    shape = ctx.shape(0)
    rank = ctx.rank(0, (2, 4))
    if ctx.opset < 10:
        starts, ends = _ints(ctx, "starts", []), _ints(ctx, "ends", [])
        axes, steps = _ints(ctx, "axes", list(range(len(starts)))), [1] * len(starts)
    else:
        starts = [int(v) for v in ctx.constant(1, "starts").reshape(-1)]
        ends = [int(v) for v in ctx.constant(2, "ends").reshape(-1)]
        given = ctx.has_input(3)
        axes = [int(v) for v in ctx.constant(3, "axes").reshape(-1)] if given else list(range(len(starts)))
        steps = [int(v) for v in ctx.constant(4, "steps").reshape(-1)] if ctx.has_input(4) else [1] * len(starts)
    picked = None
    for start, end, axis, step in zip(starts, ends, axes, steps):
        axis %= rank
        size = shape[axis]
        whole = step == 1 and start == 0 and ((size is not None and end >= size) or end >= 2**31 - 1)
        if axis == 1 and size is not None:
            picked = list(range(size))[slice(start, end, step)]
        elif not whole:
            raise Unsupported(f"a slice of axis {axis} (dcnn slices channels, axis 1)")
    if picked is None:
        return ctx.activation(0)
    return [_channel_selection(ctx.activation(0), rank, int(shape[1]), picked, None)]


def convert_split(ctx: NodeContext) -> Conversion:
    """``Split`` of the channels of a map or the features of rows (``x.chunk(2, 1)``, ShuffleNetV2's split): the
    sizes an attribute before opset 13, an input since, or ``num_outputs`` (opset 18) or equal parts. One channel
    selection per output the graph uses (:func:`_channel_selection`)."""
    shape = ctx.shape(0)
    rank = ctx.rank(0, (2, 4))
    axis = int(ctx.attribute("axis", 0)) % rank
    if axis != 1 or shape[1] is None:
        raise Unsupported(f"a split of axis {axis} (dcnn splits channels, axis 1)")
    channels, parts = int(shape[1]), len(ctx.node.output)
    if ctx.opset < 13 and "split" in ctx.attributes:
        sizes = _ints(ctx, "split", [])
    elif ctx.opset >= 13 and ctx.has_input(1):
        sizes = [int(v) for v in ctx.constant(1, "split").reshape(-1)]
    else:
        size = -(-channels // parts)  # equal parts, the last one smaller (ONNX's num_outputs)
        sizes = [min(size, channels - size * index) for index in range(parts)]
    if len(sizes) != parts or sum(sizes) != channels or min(sizes) < 0:
        raise Unsupported(f"split sizes {sizes} of {channels} channels into {parts} outputs")
    source, steps, begin = ctx.activation(0), [], 0
    for output, size in zip(ctx.node.output, sizes):
        if output in ctx.needed:
            steps.append(_channel_selection(source, rank, channels, list(range(begin, begin + size)), output))
        begin += size
    return steps


def convert_swish(ctx: NodeContext) -> Conversion:
    """``Swish`` (opset 24): ``x * sigmoid(alpha * x)``; alpha 1 (SiLU) only."""
    alpha = float(ctx.attribute("alpha", 1.0))
    if alpha != 1.0:
        raise Unsupported(f"alpha {alpha:g} (dcnn runs SiLU, alpha 1)")
    return [Step(SiLU(), (ctx.activation(0),))]


def convert_sum(ctx: NodeContext) -> Conversion:
    """``Sum`` of tensors of one shape: a chain of additions (one input: the input itself)."""
    names = [ctx.activation(index) for index in range(len(ctx.node.input))]
    if len({ctx.shape(index) for index in range(len(names))}) != 1:
        raise Unsupported("inputs of different shapes")
    if len(names) == 1:
        return names[0]
    steps, total = [], names[0]
    for index, name in enumerate(names[1:], start=1):
        output = None if index == len(names) - 1 else f"{ctx.node.output[0]}:{index}"
        steps.append(Step(Add(), (total, name), output=output))
        total = output or ""
    return steps


def convert_mul(ctx: NodeContext) -> Conversion:
    """``Mul``: two tensors of one shape, a map by per-channel ``(N, C, 1, 1)`` gates (squeeze-and-excitation),
    or a tensor by a per-channel constant."""
    if any(name in ctx.constants for name in ctx.node.input):
        return _with_constant(ctx)
    first, second = ctx.shape(0), ctx.shape(1)
    if first == second:
        return [Step(Mul(), (ctx.activation(0), ctx.activation(1)))]
    gates = [
        i
        for i, (a, b) in enumerate([(first, second), (second, first)])
        if len(a) == 4 and len(b) == 4 and b[2:] == (1, 1) and a[1] == b[1]
    ]
    if not gates:
        raise Unsupported(f"broadcasting {list(first)} * {list(second)}")
    order = (0, 1) if gates[0] == 0 else (1, 0)
    return [Step(Mul(), (ctx.activation(order[0]), ctx.activation(order[1])))]


def convert_concat(ctx: NodeContext) -> Conversion:
    """``Concat`` along the channels of maps (axis 1 of N x C x H x W) or the features of (N, F) rows."""
    rank = len(ctx.shape(0))
    axis = int(ctx.attribute("axis"))
    if axis % rank != 1 or rank not in (2, 4):
        raise Unsupported(f"axis {axis} of {rank}-D tensors (dcnn concatenates channels)")
    names = tuple(ctx.activation(index) for index in range(len(ctx.node.input)))
    if len(names) == 1:
        return names[0]
    return [Step(Concat(), names)]


def convert_softmax(ctx: NodeContext) -> Conversion:
    """``Softmax``. Before opset 13 it normalises over all axes from ``axis`` on (default 1: every value of an
    image); since, along ``axis`` alone (default -1)."""
    rank = ctx.rank(0, (2, 4))
    axis = int(ctx.attribute("axis", 1 if ctx.opset < 13 else -1)) % rank
    shape = ctx.shape(0)
    if ctx.opset < 13 and axis not in (1, rank - 1):
        raise Unsupported(f"axis {axis} (before opset 13 dcnn normalises from axis 1 or the last axis)")
    if axis == 0:
        raise Unsupported("axis 0 (across the batch)")
    if axis == 1 and (ctx.opset < 13 or rank == 2 or all(d == 1 for d in shape[2:])):
        return [Step(Softmax(), (ctx.activation(0),))]
    return [Step(Softmax(axis - 1), (ctx.activation(0),))]


def convert_pad(ctx: NodeContext) -> Conversion:
    """``Pad`` in ``constant`` mode of a map's height and width: ``pads`` and ``value`` attributes before
    opset 11, inputs since (``axes`` since opset 18)."""
    ctx.rank(0)
    mode = ctx.attribute("mode", "constant")
    if mode != "constant":
        raise Unsupported(f"mode {mode}")
    if ctx.opset < 11:
        pads, value = _ints(ctx, "pads", []), float(ctx.attribute("value", 0.0))
    else:
        pads = [int(v) for v in ctx.constant(1, "pads").reshape(-1)]
        value = float(ctx.constant(2, "constant_value").reshape(-1)[0]) if ctx.has_input(2) else 0.0
    axes = [int(a) % 4 for a in ctx.constant(3, "axes").reshape(-1)] if ctx.has_input(3) else [0, 1, 2, 3]
    begin, end = dict(zip(axes, pads[: len(axes)])), dict(zip(axes, pads[len(axes) :]))
    if any(begin.get(a, 0) or end.get(a, 0) for a in (0, 1)):
        raise Unsupported("padding of the batch or channel axis")
    padding = (begin.get(2, 0), end.get(2, 0), begin.get(3, 0), end.get(3, 0))
    if min(padding) < 0:
        raise Unsupported(f"negative pads {list(padding)} (cropping)")
    return [Step(Pad2d(padding, value), (ctx.activation(0),))]


def convert_batch_norm(ctx: NodeContext) -> Conversion:
    """``BatchNormalization`` at inference (running statistics; ``spatial=1`` before opset 9; no training
    mode or outputs) of maps, or of (N, F) rows (``nn.BatchNorm1d`` in a classifier head: a per-feature affine
    layer of the folded scale and shift)."""
    rank = ctx.rank(0, (2, 4))
    ctx.unused_outputs()
    if not ctx.attribute("spatial", 1) or ctx.attribute("training_mode", 0):
        raise Unsupported("training mode or per-position statistics (spatial=0)")
    names = ("weight", "bias", "running_mean", "running_var")
    tensors = {key: _float32(ctx.constant(index, key)).reshape(-1) for index, key in enumerate(names, start=1)}
    channels = tensors["weight"].size
    if any(value.size != channels for value in tensors.values()):
        raise Unsupported("statistics of different lengths")
    if rank == 2:
        scale, shift = batch_norm_scale_shift(*tensors.values(), float(ctx.attribute("epsilon", 1e-5)))
        return [Step(Affine(channels), (ctx.activation(0),), {"weight": scale, "bias": shift})]
    return [Step(BatchNorm2d(channels, eps=float(ctx.attribute("epsilon", 1e-5))), (ctx.activation(0),), tensors)]


#: Operator type to converter: every ONNX operator dcnn runs.
CONVERTERS: dict[str, Callable[[NodeContext], Conversion]] = {
    "Add": convert_add,
    "AveragePool": convert_average_pool,
    "BatchNormalization": convert_batch_norm,
    "Clip": convert_clip,
    "Concat": convert_concat,
    "Conv": convert_conv,
    "Div": convert_div,
    "Dropout": convert_dropout,
    "Elu": convert_elu,
    "Flatten": convert_flatten,
    "Gemm": convert_gemm,
    "GlobalAveragePool": convert_global_pool,
    "GlobalMaxPool": convert_global_pool,
    "HardSigmoid": convert_hard_sigmoid,
    "HardSwish": _pointwise(Hardswish()),
    "Identity": convert_identity,
    "LRN": convert_lrn,
    "LeakyRelu": convert_leaky_relu,
    "MatMul": convert_matmul,
    "MaxPool": convert_max_pool,
    "Mul": convert_mul,
    "PRelu": convert_prelu,
    "ReduceMax": convert_reduce,
    "ReduceMean": convert_reduce,
    "Pad": convert_pad,
    "Pow": convert_pow,
    "Relu": convert_relu,
    "Reshape": convert_reshape,
    "Sigmoid": _pointwise(Sigmoid()),
    "Slice": convert_slice,
    "Softmax": convert_softmax,
    "Split": convert_split,
    "Squeeze": convert_squeeze,
    "Sub": convert_sub,
    "Sum": convert_sum,
    "Swish": convert_swish,
    "Tanh": _pointwise(Tanh()),
    "Transpose": convert_transpose,
    "Unsqueeze": convert_unsqueeze,
}


#: Why dcnn refuses some operator types that CNN exports meet (an operator type outside both tables is refused
#: without a reason): the message says what the node is and what dcnn runs instead.
REFUSED_OPS: dict[str, str] = {
    "Resize": "upsampling (dcnn runs classifiers and detectors without upsampling layers)",
    "ConvTranspose": "a transposed convolution (upsampling: dcnn runs classifiers and detectors without it)",
    "Upsample": "upsampling (dcnn runs classifiers and detectors without upsampling layers)",
    "Erf": "the error function of GELU (dcnn has no GELU layer; GELU's tanh approximation runs)",
    "Gelu": "dcnn has no GELU layer (GELU's tanh approximation, exported before opset 20, runs)",
    "LayerNormalization": "dcnn has no layer normalisation (ConvNeXt, transformers)",
    "LogSoftmax": "dcnn has no log-softmax (export the logits or a Softmax)",
    "Softplus": "dcnn has no softplus (nor Mish, which uses it)",
    "Mish": "dcnn has no Mish layer",
    "QuantizeLinear": "a quantised model (dcnn runs float32 weights)",
    "DequantizeLinear": "a quantised model (dcnn runs float32 weights)",
    "QLinearConv": "a quantised model (dcnn runs float32 weights)",
}


def supported_ops() -> list[str]:
    """The ONNX operator types dcnn converts (``Constant``, ``ConstantOfShape`` and ``Shape`` are folded)."""
    return sorted([*CONVERTERS, "Constant", "ConstantOfShape", "Shape"])
