"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) on dcnn's kernels.

The network (dlib's ``dnn_face_recognition_ex.cpp``, "anet_type") maps a 150x150 RGB chip to 128 numbers:

- input: ``(pixel - mean) / 256`` per channel (``input_rgb_image_sized<150>``);
- a 7x7 stride-2 convolution with 32 filters, affine, ReLU, 3x3 stride-2 max pooling;
- residual units ``relu(x + affine(conv(relu(affine(conv(x))))))`` of 3x3 convolutions: three with 32
  filters, then four with 64, three with 128, three with 256 and one more with 256; the first unit of each
  group after the first is a *down* unit: its first convolution has stride 2 and its shortcut is a 2x2
  stride-2 average pooling of ``x``; dlib adds tensors of different sizes by zero-filling the smaller one at
  the end of each axis (``add_prev``: more channels, and at 8 -> 3 vs 4 pixels a larger map);
- the average over the whole map, then a 256 -> 128 fully connected layer without bias (``fc_no_bias``),
  whose output the ``loss_metric`` layer returns as it is.

dlib serializes such a network from the outside in (dlib/dnn/core.h): the loss, one version per wrapper
(2 for a layer, 1 for a tag or a skip, 3 for the layer on the input), the input layer, then each layer's body
from the input side outwards (its details, three flags and gradient tensors). Tags and skips carry no
body and no id, so the file is checked against the known structure, node by node.

:class:`ResidualProgram` is the executor: a list of steps (layer, ``tag``, ``skip``, ``add_prev``) run in
order over one tensor with named saved tensors, exactly dlib's semantics; each step maps to a node of a DAG.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcnn.errors import ShapeError, WeightsError
from dcnn.faces.dlib_format import DlibReader, read_layer, read_model_bytes
from dcnn.faces.shape_predictor import encode_floats, encode_integers
from dcnn.kernels.conv import Conv2dKernel
from dcnn.kernels.elementwise import affine_channels, linear, relu
from dcnn.kernels.pool import avg_pool2d, max_pool2d

__all__ = [
    "CHIP_SIZE", "DESCRIPTOR_SIZE", "GROUPS", "DescriptorModel", "ResidualProgram", "Step", "read_descriptor_model",
    "resnet_structure", "save_descriptor_model",
]

CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
KIND = "dlib face recognition model file"
#: (filters, units, whether the first unit is a down unit) per group, input side first.
GROUPS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))


@dataclass
class Step:
    """One node of the program.

    Attributes
    ----------
    kind : str
        ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``avg_pool_everything``, ``fc`` (layers with
        a body in the file), or ``tag``, ``skip``, ``add_prev`` (the residual wiring).
    tag : int
        The tag a ``tag`` step saves, a ``skip`` step returns to, or an ``add_prev`` step adds.
    filters, kernel, stride : int
        Expected geometry of a ``con`` (filters, square kernel, stride), pooling (kernel, stride) or ``fc``
        (filters = outputs).
    weight, bias : numpy.ndarray
        Parameters once read: convolution filters and biases, affine scale and shift, ``fc`` matrix ``(out, in)``.
    """

    kind: str
    tag: int = 0
    filters: int = 0
    kernel: int = 0
    stride: int = 1
    padding: int = 0
    weight: np.ndarray | None = field(default=None, repr=False)
    bias: np.ndarray | None = field(default=None, repr=False)


def _unit(filters: int, down: bool) -> list[Step]:
    """dlib's ``ares`` (``down=False``) or ``ares_down`` residual unit, in forward order."""
    stride = 2 if down else 1
    body = [Step("tag", tag=1), Step("con", filters=filters, kernel=3, stride=stride), Step("affine"),
            Step("relu"), Step("con", filters=filters, kernel=3, stride=1), Step("affine")]
    if down:
        body += [Step("tag", tag=2), Step("skip", tag=1), Step("avg_pool", kernel=2, stride=2),
                 Step("add_prev", tag=2)]
    else:
        body.append(Step("add_prev", tag=1))
    return [*body, Step("relu")]


def resnet_structure(groups: tuple[tuple[int, int, bool], ...] = GROUPS) -> list[Step]:
    """The face descriptor network as steps in forward order, parameters not yet read.

    ``groups`` gives (filters, units, down unit first) per group; the stem has the first group's filters
    (narrower networks of the same wiring serve the reader's damaged-file tests).
    """
    steps = [Step("con", filters=groups[0][0], kernel=7, stride=2), Step("affine"), Step("relu"),
             Step("max_pool", kernel=3, stride=2)]
    for filters, units, down in groups:
        for unit in range(units):
            steps += _unit(filters, down and unit == 0)
    return [*steps, Step("avg_pool_everything"), Step("fc", filters=DESCRIPTOR_SIZE)]


def _add_padded(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """dlib's ``add_prev``: the sum over the larger extent of every axis, the smaller tensor zero-filled."""
    if a.shape == b.shape:
        return a + b
    out = np.zeros(tuple(max(x, y) for x, y in zip(a.shape, b.shape)), np.float32)
    out[tuple(slice(0, n) for n in a.shape)] = a
    out[tuple(slice(0, n) for n in b.shape)] += b
    return out


@dataclass
class ResidualProgram:
    """Runs a list of :class:`Step` on a batch with dcnn's kernels.

    Attributes
    ----------
    steps : list of Step
        Forward order, parameters filled in.
    """

    steps: list[Step]
    _kernels: dict[int, Conv2dKernel] = field(default_factory=dict, repr=False)

    def __post_init__(self) -> None:
        for index, step in enumerate(self.steps):
            if step.kind == "con":
                self._kernels[index] = Conv2dKernel(step.weight, step.bias, (step.stride, step.stride))

    def __call__(self, x: np.ndarray) -> np.ndarray:
        """``(B, C, H, W)`` float32 in, the last step's output out."""
        saved: dict[int, np.ndarray] = {}
        for index, step in enumerate(self.steps):
            if step.kind == "con":
                x = self._kernels[index](x, step.padding)
            elif step.kind == "affine":
                x = affine_channels(x, step.weight, step.bias)
            elif step.kind == "relu":
                x = relu(x)
            elif step.kind == "max_pool":
                x = max_pool2d(x, (step.kernel, step.kernel), (step.stride, step.stride), step.padding)
            elif step.kind == "avg_pool":
                x = avg_pool2d(x, (step.kernel, step.kernel), (step.stride, step.stride), step.padding)
            elif step.kind == "avg_pool_everything":
                x = x.mean(axis=(2, 3), dtype=np.float32)
            elif step.kind == "fc":
                x = linear(x.reshape(len(x), -1), step.weight)
            elif step.kind == "tag":
                saved[step.tag] = x
            elif step.kind == "skip":
                x = saved[step.tag]
            else:  # add_prev
                x = _add_padded(x, saved[step.tag])
        return x


@dataclass
class DescriptorModel:
    """The parsed face descriptor network.

    Attributes
    ----------
    mean_rgb : tuple of float
        Input means subtracted before the division by 256.
    program : ResidualProgram
        The network.
    """

    mean_rgb: tuple[float, float, float]
    program: ResidualProgram

    def input_tensor(self, chips: np.ndarray) -> np.ndarray:
        """``N x 150 x 150 x 3`` uint8 chips to the ``N x 3 x 150 x 150`` network input, as dlib scales them."""
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
            raise ShapeError(f"face descriptors take N x {CHIP_SIZE} x {CHIP_SIZE} x 3 uint8 chips, got "
                             f"{chips.shape} {chips.dtype}")
        values = (chips.astype(np.float32) - np.asarray(self.mean_rgb, np.float32)) / np.float32(256)
        return np.ascontiguousarray(values.transpose(0, 3, 1, 2))

    def describe(self, chips: np.ndarray, batch: int = 16) -> np.ndarray:
        """128-D descriptors ``(N, 128)`` float32 of ``N x 150 x 150 x 3`` uint8 chips, ``batch`` at a time."""
        if len(chips) == 0:
            return np.zeros((0, DESCRIPTOR_SIZE), np.float32)
        return np.concatenate([self.program(self.input_tensor(chips[start:start + batch]))
                               for start in range(0, len(chips), batch)])


def _pool_body(reader: DlibReader, step: Step) -> None:
    sizes = [reader.integer() for _ in range(6)]  # rows, cols, stride y, stride x, padding y, padding x
    expected = [0, 0, 1, 1, 0, 0] if step.kind == "avg_pool_everything" else \
        [step.kernel, step.kernel, step.stride, step.stride, 0, 0]
    if sizes != expected:
        raise reader.fail(f"{step.kind} of geometry {sizes}, expected {expected}")


def _fc_body(reader: DlibReader, step: Step, inputs: int, name: str) -> None:
    outputs, declared = reader.integer(signed=False), reader.integer(signed=False)
    params = reader.tensor().reshape(-1)
    weight_shape, _ = reader.alias_tensor(), reader.alias_tensor()
    bias_mode = reader.integer()
    for _ in range(4):
        reader.real()  # learning-rate and weight-decay multipliers
    if name == "fc_3":
        reader.boolean()  # use_bias: without a bias mode it has no effect
    if (outputs, declared, bias_mode) != (step.filters, inputs, 1) or params.size != inputs * outputs or \
            math.prod(weight_shape) != inputs * outputs:
        raise reader.fail(f"a fully connected layer {declared} -> {outputs} (bias mode {bias_mode}, "
                          f"{params.size} parameters), expected {inputs} -> {step.filters} without bias")
    # dlib computes x (N x in) times its (in x out) matrix; dcnn's linear takes (out, in).
    step.weight = np.ascontiguousarray(params.reshape(inputs, outputs).T)


def _body(reader: DlibReader, step: Step, channels: int) -> int:
    """Read one layer body into ``step``; the channel count after it."""
    start = reader.position
    name = reader.string()
    reader.position = start
    expected = {"con": ("con_",), "affine": ("affine_", "bn_con"), "relu": ("relu_",), "max_pool": ("max_pool_2",),
                "avg_pool": ("avg_pool_2",), "avg_pool_everything": ("avg_pool_2",), "add_prev": ("add_prev_",),
                "fc": ("fc_2", "fc_3")}[step.kind]
    if not name.startswith(expected):
        raise reader.fail(f"found layer {name!r} where {step.kind} was expected")
    if step.kind in ("con", "affine", "relu"):
        layer = read_layer(reader)
        if step.kind == "con":
            geometry = (layer.num_filters, layer.kernel, layer.stride, layer.weight.shape[1])
            wanted = (step.filters, (step.kernel, step.kernel), (step.stride, step.stride), channels)
            pad = step.kernel // 2 if step.stride == 1 else 0
            if geometry != wanted or layer.padding != (pad, pad):
                raise reader.fail(f"convolution {geometry} with padding {layer.padding}, expected {wanted} "
                                  f"with padding {(pad, pad)}")
            step.padding, channels = pad, step.filters
        elif step.kind == "affine" and layer.num_filters != channels:
            raise reader.fail(f"an affine layer of {layer.num_filters} channels after {channels}")
        step.weight, step.bias = layer.weight, layer.bias
        return channels
    reader.string()
    if step.kind == "fc":
        _fc_body(reader, step, channels, name)
        return step.filters
    if step.kind != "add_prev":
        _pool_body(reader, step)
    return channels


def read_descriptor_model(path: str | os.PathLike,
                          groups: tuple[tuple[int, int, bool], ...] = GROUPS) -> DescriptorModel:
    """Parse ``dlib_face_recognition_resnet_model_v1.dat`` (or a file of the same network; ``groups`` as in
    :func:`resnet_structure`).

    Raises
    ------
    WeightsError
        If the file is missing, truncated, altered, or holds another network.
    """
    reader = DlibReader(read_model_bytes(path, "face recognition model file"), str(path), KIND)
    if reader.integer() != 1:
        raise reader.fail("loss layer version")
    if reader.expect("loss_metric_", "loss_metric_2") == "loss_metric_2":
        reader.real(), reader.real()  # margin and distance threshold: training only
    steps = resnet_structure(groups)
    expected = [1 if step.kind in ("tag", "skip") else 2 for step in steps]
    expected[0] = 3
    versions = [reader.integer() for _ in steps][::-1]
    if versions != expected:
        first = next(i for i, (a, b) in enumerate(zip(versions, expected)) if a != b)
        raise reader.fail(f"wrapper version {versions[first]} for {steps[first].kind} node {first}, "
                          f"expected {expected[first]}")
    reader.expect("input_rgb_image_sized")
    mean = (reader.real(), reader.real(), reader.real())
    if (reader.integer(), reader.integer()) != (CHIP_SIZE, CHIP_SIZE):
        raise reader.fail(f"an input size other than {CHIP_SIZE} x {CHIP_SIZE}")
    channels = 3
    for index, step in enumerate(steps):
        if step.kind in ("tag", "skip"):
            continue
        channels = _body(reader, step, channels)
        for _ in range(3):
            reader.boolean()
        reader.tensor(), reader.tensor()  # x_grad, cached output (empty in a saved network)
        if index == 0:
            reader.tensor()  # grad_final
            reader.integer(signed=False)  # sample expansion factor
        else:
            reader.tensor()  # params_grad
    if reader.position != len(reader.data):
        raise reader.fail(f"{len(reader.data) - reader.position} unexpected trailing bytes")
    for step in steps:
        for value in (step.weight, step.bias):
            if value is not None and not np.isfinite(value).all():
                raise WeightsError(f"{path}: the face recognition model holds NaN or infinite values")
    if not all(math.isfinite(v) for v in mean):
        raise reader.fail("a non-finite input mean")
    return DescriptorModel(mean, ResidualProgram(steps))


def _tensor(values: np.ndarray, shape: tuple[int, int, int, int]) -> list[bytes]:
    return [_integers(2, *shape), np.asarray(values, "<f4").tobytes()]


def _integers(*values: int) -> bytes:
    return encode_integers(np.array(values, np.int64))


def _string(text: str) -> bytes:
    return _integers(len(text)) + text.encode("latin-1")


def _reals(*values: float) -> bytes:
    return encode_integers(encode_floats(np.array(values, np.float32)))


def _step_body(step: Step) -> list[bytes]:
    """One layer's details as dlib writes them (the fields :func:`read_descriptor_model` reads)."""
    if step.kind == "con":
        filters, channels, rows, cols = step.weight.shape
        params = np.concatenate([step.weight.reshape(-1), step.bias])
        return [_string("con_4"), *_tensor(params, (params.size, 1, 1, 1)),
                _integers(filters, rows, cols, step.stride, step.stride, step.padding, step.padding, 1,
                          filters, channels, rows, cols, 1, 1, filters, 1, 1), _reals(1, 1, 1, 0)]
    if step.kind == "affine":
        channels = step.weight.size
        params = np.concatenate([step.weight, step.bias])
        return [_string("affine_"), *_tensor(params, (2 * channels, 1, 1, 1)),
                _integers(1, 1, channels, 1, 1, 1, 1, channels, 1, 1, 0)]
    if step.kind == "relu":
        return [_string("relu_")]
    if step.kind == "add_prev":
        return [_string("add_prev_")]
    if step.kind == "fc":
        outputs, inputs = step.weight.shape
        return [_string("fc_2"), _integers(outputs, inputs), *_tensor(step.weight.T, (inputs, outputs, 1, 1)),
                _integers(1, inputs, outputs, 1, 1, 1, 0, 0, 0, 0, 1), _reals(1, 1, 1, 0)]
    geometry = [0, 0, 1, 1] if step.kind == "avg_pool_everything" else [step.kernel, step.kernel, step.stride,
                                                                        step.stride]
    return [_string("max_pool_2" if step.kind == "max_pool" else "avg_pool_2"), _integers(*geometry, 0, 0)]


def save_descriptor_model(model: DescriptorModel, path: str | os.PathLike) -> None:
    """Write ``model`` in dlib's serialization, readable by :func:`read_descriptor_model` (and by dlib: the
    training-only fields get dlib's defaults, so the bytes differ from a file dlib wrote)."""
    steps = model.program.steps
    versions = [1 if step.kind in ("tag", "skip") else 2 for step in steps]
    versions[0] = 3
    empty = _integers(2, 0, 0, 0, 0)
    chunks = [_integers(1), _string("loss_metric_"), _integers(*versions[::-1]), _string("input_rgb_image_sized"),
              _reals(*model.mean_rgb), _integers(CHIP_SIZE, CHIP_SIZE)]
    for index, step in enumerate(steps):
        if step.kind in ("tag", "skip"):
            continue
        chunks += [*_step_body(step), b"000", empty, empty]
        chunks += [empty, _integers(1)] if index == 0 else [empty]
    Path(path).write_bytes(b"".join(chunks))
