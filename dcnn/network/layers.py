"""Layer specifications: hyper-parameters, shapes, tensors and costs of each layer type.

A layer spec is an immutable description (like a PyTorch module without its tensors). Shapes here are per
image and exclude the batch axis: ``(C, H, W)`` for feature maps and ``(F,)`` for flat vectors.

The per-layer numbers of the paper's model come from here and nowhere else:

- ``N_l``, parameters: :meth:`Layer.tensors` (the learnable ones count towards the published totals);
- ``M_l = N_l * b`` with ``b = 4``: parameter bytes;
- ``C_l``, MACs: :meth:`Layer.macs`, the paper's ``k_{l-1} k_l u_l v_l p_l q_l`` for convolutions and
  ``n_{l-1} n_l`` for fully connected layers, zero for everything else (the paper leaves them out).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

from dcnn.errors import ShapeError
from dcnn.network.window import Window, pair

__all__ = [
    "ELU", "Add", "AdaptiveAvgPool2d", "AdaptiveMaxPool2d", "Affine", "AvgPool2d", "BatchNorm2d", "ChannelShuffle",
    "Clip", "Concat", "Conv2d", "Dropout", "Flatten", "Hardsigmoid", "Hardswish", "Layer", "LeakyReLU", "Linear",
    "LocalResponseNorm", "MaxPool2d", "Mul", "PReLU", "Pad2d", "PaddedAdd", "ReLU", "ReLU6", "Shape", "Sigmoid",
    "Softmax", "Tanh", "TensorSpec",
]

Shape = tuple[int, ...]


@dataclass(frozen=True)
class TensorSpec:
    """Shape and role of one stored tensor of a layer.

    Attributes
    ----------
    shape : tuple of int
        Tensor shape.
    learnable : bool
        Counted in the published parameter totals (batch-norm running statistics are not).
    dtype : str
        ``"float32"``, or ``"int64"`` for PyTorch's ``num_batches_tracked`` counter.
    optional : bool
        May be absent from a weights file (PyTorch bookkeeping that inference ignores).
    """

    shape: Shape
    learnable: bool = True
    dtype: str = "float32"
    optional: bool = False

    @property
    def size(self) -> int:
        """Number of elements."""
        return math.prod(self.shape)


class Layer:
    """Base class of layer specs. Subclasses are frozen dataclasses."""

    kind: ClassVar[str] = "layer"
    #: Number of input tensors; ``None`` for any number of at least two (channel concatenation).
    arity: ClassVar[int | None] = 1

    def output_shape(self, *shapes: Shape) -> Shape:
        """Per-image output shape for per-image input shapes (one per input); raises :class:`ShapeError`."""
        return shapes[0]

    def tensors(self) -> dict[str, TensorSpec]:
        """Stored tensors by PyTorch ``state_dict`` suffix (``weight``, ``bias``, ...)."""
        return {}

    def macs(self, in_shape: Shape, out_shape: Shape) -> int:
        """Multiply-accumulates per image, the paper's C_l (zero for layers the paper leaves out)."""
        return 0

    @property
    def window(self) -> Window | None:
        """The sliding window of a conv or pool layer; ``None`` for pointwise and global layers."""
        return None

    def describe(self) -> str:
        """A short human-readable description for tables."""
        return self.kind


def _map_shape(shape: Shape, layer: Layer) -> tuple[int, int, int]:
    if len(shape) != 3:
        raise ShapeError(f"{layer.describe()} needs a (C, H, W) feature map, got shape {shape}")
    return shape  # type: ignore[return-value]


def _per_channel_shape(shape: Shape, layer: Layer, channels: int) -> Shape:
    """The unchanged shape of a per-channel layer, after checking its channel count."""
    if _map_shape(shape, layer)[0] != channels:
        raise ShapeError(f"{layer.describe()} expects {channels} channels, got {shape[0]}")
    return shape


def _windowed_output(shape: Shape, layer: Layer, window: Window, channels: int) -> Shape:
    _, height, width = _map_shape(shape, layer)
    out_h, out_w = window.output_length(height, 0), window.output_length(width, 1)
    if out_h < 1 or out_w < 1:
        raise ShapeError(f"{layer.describe()} cannot run on a {height}x{width} map: the window "
                         f"{window.kernel[0]}x{window.kernel[1]} with padding {window.padding} does not fit")
    return (channels, out_h, out_w)


def _normalize_padding_end(layer: Layer) -> None:
    """``padding_end`` as a pair, or ``None`` where it equals the padding before (the symmetric case)."""
    end = layer.padding_end  # type: ignore[attr-defined]
    if end is not None:
        end = pair(end)
        object.__setattr__(layer, "padding_end", None if end == layer.padding else end)  # type: ignore[attr-defined]


@dataclass(frozen=True)
class Conv2d(Layer):
    """2-D convolution, as :class:`torch.nn.Conv2d` (``padding_mode='zeros'``)."""

    in_channels: int
    out_channels: int
    kernel_size: tuple[int, int]
    stride: tuple[int, int] = (1, 1)
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    groups: int = 1
    bias: bool = True
    padding_end: tuple[int, int] | None = None
    kind: ClassVar[str] = "conv"

    def __post_init__(self):
        for field in ("kernel_size", "stride", "padding", "dilation"):
            object.__setattr__(self, field, pair(getattr(self, field)))
        _normalize_padding_end(self)
        if self.in_channels % self.groups or self.out_channels % self.groups:
            raise ValueError(f"channels {self.in_channels}->{self.out_channels} not divisible by "
                             f"{self.groups} groups")

    @property
    def window(self) -> Window:
        return Window(self.kernel_size, self.stride, self.padding, self.dilation, padding_end=self.padding_end)

    def output_shape(self, shape: Shape) -> Shape:
        channels = _map_shape(shape, self)[0]
        if channels != self.in_channels:
            raise ShapeError(f"{self.describe()} expects {self.in_channels} input channels, got {channels}")
        return _windowed_output(shape, self, self.window, self.out_channels)

    def tensors(self) -> dict[str, TensorSpec]:
        specs = {"weight": TensorSpec((self.out_channels, self.in_channels // self.groups,
                                       *self.kernel_size))}
        if self.bias:
            specs["bias"] = TensorSpec((self.out_channels,))
        return specs

    def macs(self, in_shape: Shape, out_shape: Shape) -> int:
        return (self.out_channels * (self.in_channels // self.groups) * math.prod(self.kernel_size)
                * out_shape[1] * out_shape[2])

    def describe(self) -> str:
        k, s, p = self.kernel_size, self.stride, self.padding
        text = f"conv {k[0]}x{k[1]}/{s[0]} {self.in_channels}->{self.out_channels}"
        if self.padding_end is not None:
            text += " pad " + ",".join(str(v) for v in self.window.declared_padding())
        elif p != (0, 0):
            text += f" pad {p[0]},{p[1]}" if p[0] != p[1] else f" pad {p[0]}"
        if self.dilation != (1, 1):
            text += f" dil {self.dilation[0]}"
        return text + (f" g{self.groups}" if self.groups > 1 else "")


@dataclass(frozen=True)
class MaxPool2d(Layer):
    """Max pooling, as :class:`torch.nn.MaxPool2d`; ``stride`` defaults to the kernel size."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] = (0, 0)
    dilation: tuple[int, int] = (1, 1)
    ceil_mode: bool = False
    padding_end: tuple[int, int] | None = None
    kind: ClassVar[str] = "maxpool"

    def __post_init__(self):
        object.__setattr__(self, "kernel_size", pair(self.kernel_size))
        object.__setattr__(self, "stride", pair(self.kernel_size if self.stride is None else self.stride))
        object.__setattr__(self, "padding", pair(self.padding))
        object.__setattr__(self, "dilation", pair(self.dilation))
        _normalize_padding_end(self)

    @property
    def window(self) -> Window:
        return Window(self.kernel_size, self.stride, self.padding, self.dilation, self.ceil_mode, self.padding_end)

    def output_shape(self, shape: Shape) -> Shape:
        return _windowed_output(shape, self, self.window, shape[0])

    def describe(self) -> str:
        return f"{self.kind} {self.kernel_size[0]}x{self.kernel_size[1]}/{self.stride[0]}"


@dataclass(frozen=True)
class AvgPool2d(Layer):
    """Average pooling, as :class:`torch.nn.AvgPool2d` (same argument order; no dilation)."""

    kernel_size: tuple[int, int]
    stride: tuple[int, int] | None = None
    padding: tuple[int, int] = (0, 0)
    ceil_mode: bool = False
    count_include_pad: bool = True
    padding_end: tuple[int, int] | None = None
    kind: ClassVar[str] = "avgpool"

    def __post_init__(self):
        object.__setattr__(self, "kernel_size", pair(self.kernel_size))
        object.__setattr__(self, "stride", pair(self.kernel_size if self.stride is None else self.stride))
        object.__setattr__(self, "padding", pair(self.padding))
        _normalize_padding_end(self)

    @property
    def window(self) -> Window:
        return Window(self.kernel_size, self.stride, self.padding, (1, 1), self.ceil_mode, self.padding_end)

    def output_shape(self, shape: Shape) -> Shape:
        return _windowed_output(shape, self, self.window, shape[0])

    def describe(self) -> str:
        return f"{self.kind} {self.kernel_size[0]}x{self.kernel_size[1]}/{self.stride[0]}"


@dataclass(frozen=True)
class AdaptiveAvgPool2d(Layer):
    """Adaptive average pooling to a fixed output size, as :class:`torch.nn.AdaptiveAvgPool2d`."""

    output_size: tuple[int, int]
    kind: ClassVar[str] = "adaptiveavgpool"

    def __post_init__(self):
        object.__setattr__(self, "output_size", pair(self.output_size))

    def output_shape(self, shape: Shape) -> Shape:
        return (_map_shape(shape, self)[0], *self.output_size)

    def describe(self) -> str:
        return f"adaptive avgpool {self.output_size[0]}x{self.output_size[1]}"


@dataclass(frozen=True)
class AdaptiveMaxPool2d(Layer):
    """Adaptive max pooling to a fixed output size, as :class:`torch.nn.AdaptiveMaxPool2d` (ONNX's
    ``GlobalMaxPool`` is the size 1)."""

    output_size: tuple[int, int]
    kind: ClassVar[str] = "adaptivemaxpool"

    def __post_init__(self):
        object.__setattr__(self, "output_size", pair(self.output_size))

    def output_shape(self, shape: Shape) -> Shape:
        return (_map_shape(shape, self)[0], *self.output_size)

    def describe(self) -> str:
        return f"adaptive maxpool {self.output_size[0]}x{self.output_size[1]}"


@dataclass(frozen=True)
class Pad2d(Layer):
    """Constant padding of a map's borders, ``(top, bottom, left, right)`` pixels of ``value`` (ONNX's ``Pad``
    in ``constant`` mode). A window of one tap, so the spatial geometry pads only the map's own borders."""

    padding: tuple[int, int, int, int]
    value: float = 0.0
    kind: ClassVar[str] = "pad"

    @property
    def window(self) -> Window:
        top, bottom, left, right = self.padding
        return Window((1, 1), (1, 1), (top, left), padding_end=(bottom, right))

    def output_shape(self, shape: Shape) -> Shape:
        return _windowed_output(shape, self, self.window, shape[0])

    def describe(self) -> str:
        return f"pad {','.join(str(v) for v in self.padding)}" + (f" value {self.value:g}" if self.value else "")


@dataclass(frozen=True)
class BatchNorm2d(Layer):
    """Batch normalisation at inference (running statistics), as :class:`torch.nn.BatchNorm2d`."""

    num_features: int
    eps: float = 1e-5
    kind: ClassVar[str] = "batchnorm"

    def output_shape(self, shape: Shape) -> Shape:
        return _per_channel_shape(shape, self, self.num_features)

    def tensors(self) -> dict[str, TensorSpec]:
        vector = (self.num_features,)
        return {"weight": TensorSpec(vector), "bias": TensorSpec(vector),
                "running_mean": TensorSpec(vector, learnable=False),
                "running_var": TensorSpec(vector, learnable=False),
                "num_batches_tracked": TensorSpec((), learnable=False, dtype="int64", optional=True)}

    def describe(self) -> str:
        return f"batchnorm {self.num_features}"


@dataclass(frozen=True)
class Affine(Layer):
    """Per-channel ``gamma * x + beta`` (dlib's ``affine`` layer: batch norm frozen for inference), or per
    feature of a flat vector (ONNX's ``Mul`` and ``Add`` by constants)."""

    num_features: int
    kind: ClassVar[str] = "affine"

    def output_shape(self, shape: Shape) -> Shape:
        if len(shape) == 1 and shape[0] == self.num_features:
            return shape  # per feature of a flat vector (a bias or a scale after a fully connected layer)
        return _per_channel_shape(shape, self, self.num_features)

    def tensors(self) -> dict[str, TensorSpec]:
        return {"weight": TensorSpec((self.num_features,)), "bias": TensorSpec((self.num_features,))}

    def describe(self) -> str:
        return f"affine {self.num_features}"


@dataclass(frozen=True)
class ReLU(Layer):
    """``max(x, 0)``."""

    kind: ClassVar[str] = "relu"


@dataclass(frozen=True)
class ReLU6(Layer):
    """``min(max(x, 0), 6)``, as :class:`torch.nn.ReLU6`."""

    kind: ClassVar[str] = "relu6"


@dataclass(frozen=True)
class PReLU(Layer):
    """``x`` where positive, ``a_c x`` elsewhere, with learnt slopes, as :class:`torch.nn.PReLU`.

    ``num_parameters`` is 1 (one slope shared by all channels) or the channel count.
    """

    num_parameters: int = 1
    kind: ClassVar[str] = "prelu"

    def output_shape(self, shape: Shape) -> Shape:
        if self.num_parameters != 1 and (len(shape) < 1 or shape[0] != self.num_parameters):
            raise ShapeError(f"{self.describe()} expects {self.num_parameters} channels, got shape {shape}")
        return shape

    def tensors(self) -> dict[str, TensorSpec]:
        return {"weight": TensorSpec((self.num_parameters,))}

    def describe(self) -> str:
        return f"prelu {self.num_parameters}"


@dataclass(frozen=True)
class Clip(Layer):
    """``min(max(x, min_value), max_value)`` (ONNX's ``Clip``; :class:`ReLU6` is the case 0 and 6)."""

    min_value: float = -math.inf
    max_value: float = math.inf
    kind: ClassVar[str] = "clip"

    def describe(self) -> str:
        return f"clip [{self.min_value:g}, {self.max_value:g}]"


@dataclass(frozen=True)
class Sigmoid(Layer):
    """``1 / (1 + exp(-x))``."""

    kind: ClassVar[str] = "sigmoid"


@dataclass(frozen=True)
class SiLU(Layer):
    """``x * sigmoid(x)`` (swish), as :class:`torch.nn.SiLU`."""

    kind: ClassVar[str] = "silu"


@dataclass(frozen=True)
class Hardsigmoid(Layer):
    """``clip(alpha x + beta, 0, 1)``: :class:`torch.nn.Hardsigmoid` with the defaults ``alpha = 1/6``,
    ``beta = 1/2``; ONNX's ``HardSigmoid`` (its defaults 0.2 and 0.5) with its attributes."""

    alpha: float = 1 / 6
    beta: float = 0.5
    kind: ClassVar[str] = "hardsigmoid"


@dataclass(frozen=True)
class Hardswish(Layer):
    """``x * hardsigmoid(x)``, as :class:`torch.nn.Hardswish` (Howard et al., 2019, MobileNetV3)."""

    kind: ClassVar[str] = "hardswish"


@dataclass(frozen=True)
class LeakyReLU(Layer):
    """Leaky ReLU with a negative slope."""

    negative_slope: float = 0.01
    kind: ClassVar[str] = "leakyrelu"


@dataclass(frozen=True)
class ELU(Layer):
    """Exponential linear unit."""

    alpha: float = 1.0
    kind: ClassVar[str] = "elu"


@dataclass(frozen=True)
class Tanh(Layer):
    """Hyperbolic tangent."""

    kind: ClassVar[str] = "tanh"


@dataclass(frozen=True)
class Dropout(Layer):
    """Dropout: the identity at inference."""

    p: float = 0.5
    kind: ClassVar[str] = "dropout"


@dataclass(frozen=True)
class LocalResponseNorm(Layer):
    """Local response normalisation across channels, as :class:`torch.nn.LocalResponseNorm`."""

    size: int
    alpha: float = 1e-4
    beta: float = 0.75
    k: float = 1.0
    kind: ClassVar[str] = "lrn"

    def output_shape(self, shape: Shape) -> Shape:
        return _map_shape(shape, self)


@dataclass(frozen=True)
class ChannelShuffle(Layer):
    """ShuffleNet's channel shuffle (Zhang et al., "ShuffleNet", CVPR 2018): the channels, viewed as a
    ``groups x (C / groups)`` matrix, transposed, as :class:`torch.nn.ChannelShuffle` (ONNX: a Reshape to
    ``(N, g, C/g, H, W)``, a Transpose ``[0, 2, 1, 3, 4]`` and a Reshape back)."""

    groups: int
    kind: ClassVar[str] = "shuffle"

    def output_shape(self, shape: Shape) -> Shape:
        if _map_shape(shape, self)[0] % self.groups:
            raise ShapeError(f"{self.describe()} needs channels divisible by {self.groups}, got {shape[0]}")
        return shape

    def describe(self) -> str:
        return f"channel shuffle {self.groups}"


@dataclass(frozen=True)
class Flatten(Layer):
    """Flatten ``(C, H, W)`` to ``(C * H * W,)`` in C order, as ``torch.flatten(x, 1)``."""

    kind: ClassVar[str] = "flatten"

    def output_shape(self, shape: Shape) -> Shape:
        return (math.prod(shape),)


@dataclass(frozen=True)
class Linear(Layer):
    """Fully connected layer, as :class:`torch.nn.Linear`."""

    in_features: int
    out_features: int
    bias: bool = True
    kind: ClassVar[str] = "fc"

    def output_shape(self, shape: Shape) -> Shape:
        if shape != (self.in_features,):
            raise ShapeError(f"{self.describe()} expects {self.in_features} input features, got shape {shape}")
        return (self.out_features,)

    def tensors(self) -> dict[str, TensorSpec]:
        specs = {"weight": TensorSpec((self.out_features, self.in_features))}
        if self.bias:
            specs["bias"] = TensorSpec((self.out_features,))
        return specs

    def macs(self, in_shape: Shape, out_shape: Shape) -> int:
        return self.in_features * self.out_features

    def describe(self) -> str:
        return f"fc {self.in_features}->{self.out_features}"


@dataclass(frozen=True)
class Softmax(Layer):
    """Softmax over all of an image's values (``axis`` ``None``: a flat vector of class scores, or ONNX's
    ``Softmax`` before opset 13 at axis 1), or along one per-image axis (0: the channels of a map).

    ``axis`` counts per-image axes (the batch axis is not one): ONNX's ``axis`` minus one.
    """

    axis: int | None = None
    kind: ClassVar[str] = "softmax"

    def output_shape(self, shape: Shape) -> Shape:
        if self.axis is not None and not 0 <= self.axis < len(shape):
            raise ShapeError(f"softmax along axis {self.axis} of a shape {shape}")
        return shape

    def describe(self) -> str:
        return self.kind if self.axis is None else f"softmax axis {self.axis}"


@dataclass(frozen=True)
class Add(Layer):
    """Element-wise sum of two tensors of one shape (a residual connection)."""

    kind: ClassVar[str] = "add"
    arity: ClassVar[int | None] = 2

    def output_shape(self, *shapes: Shape) -> Shape:
        if shapes[0] != shapes[1]:
            raise ShapeError(f"add needs two tensors of one shape, got {shapes[0]} and {shapes[1]}")
        return shapes[0]


@dataclass(frozen=True)
class Mul(Layer):
    """A ``(C, H, W)`` map times per-channel ``(C, 1, 1)`` gates (squeeze-and-excitation), or two equal shapes."""

    kind: ClassVar[str] = "mul"
    arity: ClassVar[int | None] = 2

    def output_shape(self, *shapes: Shape) -> Shape:
        first, second = shapes
        gates = len(first) == 3 and second == (first[0], 1, 1)
        if first != second and not gates:
            raise ShapeError(f"mul needs two tensors of one shape or (C, H, W) and (C, 1, 1) gates, "
                             f"got {first} and {second}")
        return first


@dataclass(frozen=True)
class Concat(Layer):
    """Concatenation of feature maps along the channel axis, as ``torch.cat(xs, 1)`` (of flat vectors, along
    their features)."""

    kind: ClassVar[str] = "concat"
    arity: ClassVar[int | None] = None

    def output_shape(self, *shapes: Shape) -> Shape:
        if all(len(shape) == 1 for shape in shapes):
            return (sum(shape[0] for shape in shapes),)
        maps = [_map_shape(shape, self) for shape in shapes]
        if len({shape[1:] for shape in maps}) != 1:
            raise ShapeError(f"concat needs maps of one height and width, got {', '.join(map(str, maps))}")
        return (sum(shape[0] for shape in maps), *maps[0][1:])


@dataclass(frozen=True)
class PaddedAdd(Layer):
    """Element-wise sum of two maps of any sizes, over the larger extent of every axis, the smaller map
    zero-filled at the end of each axis (dlib's ``add_prev``: ``dlib/dnn/layers.h`` and ``tt::add`` of
    tensors of different sizes; a residual unit that widens its channels or whose strided branch is a
    pixel smaller than its pooled shortcut)."""

    kind: ClassVar[str] = "padded_add"
    arity: ClassVar[int | None] = 2

    def output_shape(self, *shapes: Shape) -> Shape:
        first, second = (_map_shape(shape, self) for shape in shapes)
        return tuple(max(a, b) for a, b in zip(first, second))
