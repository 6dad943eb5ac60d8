"""dlib's ResNet face descriptor (``dlib_face_recognition_resnet_model_v1.dat``) as a dcnn network.

The network (dlib's ``dnn_face_recognition_ex.cpp``, "anet_type") maps a 150x150 RGB chip to 128 numbers:

- input: ``(pixel - mean) / 256`` per channel (``input_rgb_image_sized<150>``), here the network's first node:
  an :class:`~dcnn.network.layers.Affine` of scale ``1/256`` and shift ``-mean/256`` on the raw pixel values
  (bit for bit dlib's: a division by a power of two commutes with float32 rounding);
- a 7x7 stride-2 convolution with 32 filters, affine, ReLU, 3x3 stride-2 max pooling;
- residual units ``relu(x + affine(conv(relu(affine(conv(x))))))`` of 3x3 convolutions: three with 32
  filters, then four with 64, three with 128, three with 256 and one more with 256; the first unit of each
  group after the first is a *down* unit: its first convolution has stride 2 and its shortcut is a 2x2
  stride-2 average pooling of ``x``; dlib adds tensors of different sizes by zero-filling the smaller one at
  the end of each axis (``add_prev``, a :class:`~dcnn.network.layers.PaddedAdd` node: more channels, and at
  8 -> 3 vs 4 pixels a larger map); the other units add tensors of one shape (an
  :class:`~dcnn.network.layers.Add` node);
- the average over the whole map (``avg_pool_everything``: adaptive average pooling to 1x1, then flatten),
  then a 256 -> 128 fully connected layer without bias (``fc_no_bias``), whose output the ``loss_metric``
  layer returns as it is.

dlib serializes such a network from the outside in (dlib/dnn/core.h): the loss, one version per wrapper
(2 for a layer, 1 for a tag or a skip, 3 for the layer on the input), the input layer, then each layer's body
from the input side outwards (its details, three flags and gradient tensors). Tags and skips carry no
body and no id, so the file is checked against the known structure, :func:`resnet_structure`, step by step;
:func:`descriptor_network` turns those steps (a tag saves a tensor, a skip returns to one, ``add_prev`` adds
one) into the DAG that :class:`~dcnn.exec.forward.Forward` runs, as it runs every other network.
"""

from __future__ import annotations

import dataclasses
import math
import os
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from dcnn.errors import ShapeError, WeightsError
from dcnn.faces.dlib_format import DlibReader, read_layer, read_model_bytes
from dcnn.faces.shape_predictor import encode_floats, encode_integers
from dcnn.network.graph import GraphBuilder, Network, Preprocessing
from dcnn.network.layers import (
    AdaptiveAvgPool2d,
    Add,
    Affine,
    AvgPool2d,
    Conv2d,
    Flatten,
    Layer,
    Linear,
    MaxPool2d,
    PaddedAdd,
    ReLU,
)
from dcnn.network.weights import validate_weights

__all__ = [
    "CHIP_SIZE", "DESCRIPTOR_BATCH", "DESCRIPTOR_SIZE", "GROUPS", "DescriptorModel", "Step", "descriptor_network",
    "read_descriptor_model", "resnet_structure", "save_descriptor_model",
]

CHIP_SIZE = 150
DESCRIPTOR_SIZE = 128
KIND = "dlib face recognition model file"
#: (filters, units, whether the first unit is a down unit) per group, input side first.
GROUPS = ((32, 3, False), (64, 4, True), (128, 3, True), (256, 3, True), (256, 1, True))
#: Chips per pass of the network: as fast per chip as larger batches on a CPU, and the unit in which a task's
#: faces are dealt to ranks. A descriptor's last bits depend on the chips batched with it (the convolutions'
#: sums are cut by columns), so every mode batches a task's faces alike: results bit-identical across modes.
DESCRIPTOR_BATCH = 4
#: The network's first node, which scales the raw pixel values as dlib's input layer does.
NORMALIZE = "normalize"
#: Chips enter the network as raw 0..255 values; the ``normalize`` node does dlib's scaling (this entry only
#: documents the channels, like the detector's).
RAW_PIXELS = Preprocessing(mean=(0.0, 0.0, 0.0), std=(1 / 255, 1 / 255, 1 / 255))


@dataclass(frozen=True)
class Step:
    """One layer of dlib's network in forward order: the unit of its file.

    Attributes
    ----------
    kind : str
        ``con``, ``affine``, ``relu``, ``max_pool``, ``avg_pool``, ``avg_pool_everything``, ``fc``,
        ``add_prev`` (layers with a body in the file), or ``tag`` and ``skip`` (wiring without a body).
    name : str
        The network node it becomes (empty for ``tag`` and ``skip``).
    tag : int
        The tag a ``tag`` step saves, a ``skip`` step returns to, or an ``add_prev`` step adds.
    filters, kernel, stride : int
        Geometry of a ``con`` (filters, square kernel, stride), pooling (kernel, stride) or ``fc``
        (filters = outputs).
    """

    kind: str
    name: str = ""
    tag: int = 0
    filters: int = 0
    kernel: int = 0
    stride: int = 1

    @property
    def padding(self) -> int:
        """dlib's default padding of a ``con``: half the kernel at stride 1, none otherwise."""
        return self.kernel // 2 if self.kind == "con" and self.stride == 1 else 0


def _unit(prefix: str, filters: int, down: bool) -> list[Step]:
    """dlib's ``ares`` (``down=False``) or ``ares_down`` residual unit, in forward order."""
    stride = 2 if down else 1
    body = [Step("tag", tag=1), Step("con", f"{prefix}.conv1", filters=filters, kernel=3, stride=stride),
            Step("affine", f"{prefix}.affine1"), Step("relu", f"{prefix}.relu1"),
            Step("con", f"{prefix}.conv2", filters=filters, kernel=3), Step("affine", f"{prefix}.affine2")]
    if down:
        body += [Step("tag", tag=2), Step("skip", tag=1), Step("avg_pool", f"{prefix}.shortcut", kernel=2, stride=2),
                 Step("add_prev", f"{prefix}.add", tag=2)]
    else:
        body.append(Step("add_prev", f"{prefix}.add", tag=1))
    return [*body, Step("relu", f"{prefix}.relu")]


def resnet_structure(groups: tuple[tuple[int, int, bool], ...] = GROUPS) -> list[Step]:
    """The face descriptor network as dlib's layers in forward order.

    ``groups`` gives (filters, units, down unit first) per group; the stem has the first group's filters
    (narrower networks of the same wiring serve the reader's damaged-file tests). Nodes are named
    ``stem.conv``, ``group2.0.conv1``, ``group2.0.shortcut``, ``group2.0.add``, ..., ``pool``, ``fc``.
    """
    steps = [Step("con", "stem.conv", filters=groups[0][0], kernel=7, stride=2), Step("affine", "stem.affine"),
             Step("relu", "stem.relu"), Step("max_pool", "stem.pool", kernel=3, stride=2)]
    for group, (filters, units, down) in enumerate(groups, start=1):
        for unit in range(units):
            steps += _unit(f"group{group}.{unit}", filters, down and unit == 0)
    return [*steps, Step("avg_pool_everything", "pool"), Step("fc", "fc", filters=DESCRIPTOR_SIZE)]


def descriptor_network(steps: list[Step]) -> Network:
    """The DAG of dlib's layers ``steps`` (from :func:`resnet_structure`), after the ``normalize`` node.

    A ``tag`` names the current tensor, a ``skip`` makes a tagged tensor current again, an ``add_prev`` reads
    the current and the tagged tensor: an :class:`~dcnn.network.layers.Add` where both have one shape by
    construction (the tag is the unit's input), a :class:`~dcnn.network.layers.PaddedAdd` after a shortcut.
    ``avg_pool_everything`` becomes adaptive average pooling to 1x1 and a ``flatten`` node.
    """
    graph = GraphBuilder()
    current = graph.add(NORMALIZE, Affine(3))
    channels = {current: 3}
    tags: dict[int, str] = {}
    for step in steps:
        if step.kind == "tag":
            tags[step.tag] = current
            continue
        if step.kind == "skip":
            current = tags[step.tag]
            continue
        inputs = [current]
        width = channels[current]
        layer: Layer
        if step.kind == "con":
            layer = Conv2d(width, step.filters, step.kernel, step.stride, step.padding)
            width = step.filters
        elif step.kind == "affine":
            layer = Affine(width)
        elif step.kind == "relu":
            layer = ReLU()
        elif step.kind in ("max_pool", "avg_pool"):
            layer = (MaxPool2d if step.kind == "max_pool" else AvgPool2d)(step.kernel, step.stride)
        elif step.kind == "add_prev":
            inputs.append(tags[step.tag])
            shortcut = graph.layers[-1][1]
            layer = PaddedAdd() if isinstance(shortcut, AvgPool2d) else Add()
            width = max(width, channels[tags[step.tag]])
        elif step.kind == "avg_pool_everything":
            graph.add(step.name, AdaptiveAvgPool2d(1), current)
            inputs, layer = [graph.last], Flatten()
            step = dataclasses.replace(step, name="flatten")
        else:  # fc
            layer = Linear(width, step.filters, bias=False)
            width = step.filters
        current = graph.add(step.name, layer, *inputs)
        channels[current] = width
    network = graph.build("dlib_resnet", (3, CHIP_SIZE, CHIP_SIZE), RAW_PIXELS,
                          "dlib's face recognition ResNet (150x150 chips to 128-D descriptors)")
    return dataclasses.replace(network, fixed_input_size=True)


def _normalize_weights(mean_rgb: tuple[float, float, float]) -> dict[str, np.ndarray]:
    """The ``normalize`` node's scale ``1/256`` and shift ``-mean/256`` (float32, as dlib's input layer)."""
    return {f"{NORMALIZE}.weight": np.full(3, 1 / 256, np.float32),
            f"{NORMALIZE}.bias": -np.asarray(mean_rgb, np.float32) / np.float32(256)}


@dataclass
class DescriptorModel:
    """The parsed face descriptor network.

    Attributes
    ----------
    mean_rgb : tuple of float
        Input means subtracted before the division by 256.
    weights : dict
        The layers' tensors by node name (``stem.conv.weight``, ..., ``fc.weight``), ``normalize`` excluded.
    groups : tuple
        The widths, as :func:`resnet_structure` takes them.
    network : Network
        The DAG (:func:`descriptor_network`).
    """

    mean_rgb: tuple[float, float, float]
    weights: dict[str, np.ndarray]
    groups: tuple[tuple[int, int, bool], ...] = GROUPS
    network: Network = field(init=False, repr=False)

    def __post_init__(self) -> None:
        self.network = descriptor_network(resnet_structure(self.groups))

    def tensors(self) -> dict[str, np.ndarray]:
        """Every tensor of :attr:`network`, the ``normalize`` node's included, checked against its nodes.

        Raises
        ------
        WeightsError
            If a tensor is missing or of the wrong shape.
        """
        return validate_weights(self.network, {**self.weights, **_normalize_weights(self.mean_rgb)},
                                "face recognition model")

    @staticmethod
    def input_tensor(chips: np.ndarray) -> np.ndarray:
        """``N x 150 x 150 x 3`` uint8 chips to the ``N x 3 x 150 x 150`` float32 network input (raw values).

        Raises
        ------
        ShapeError
            For chips of another shape or type.
        """
        if chips.ndim != 4 or chips.shape[1:] != (CHIP_SIZE, CHIP_SIZE, 3) or chips.dtype != np.uint8:
            raise ShapeError(f"face descriptors take N x {CHIP_SIZE} x {CHIP_SIZE} x 3 uint8 chips, got "
                             f"{chips.shape} {chips.dtype}")
        return np.ascontiguousarray(chips.transpose(0, 3, 1, 2), dtype=np.float32)

    def describe(self, chips: np.ndarray, run: Callable[[np.ndarray], np.ndarray],
                 batch: int = DESCRIPTOR_BATCH) -> np.ndarray:
        """128-D descriptors ``(N, 128)`` float32 of ``N x 150 x 150 x 3`` uint8 chips, ``batch`` chips per
        pass of ``run`` (:attr:`network` compiled with :meth:`tensors`, a :class:`~dcnn.exec.forward.Forward`)."""
        self.input_tensor(chips[:0])
        if len(chips) == 0:
            return np.zeros((0, DESCRIPTOR_SIZE), np.float32)
        return np.concatenate([run(self.input_tensor(chips[start:start + batch]))
                               for start in range(0, len(chips), batch)])


def _pool_body(reader: DlibReader, step: Step) -> None:
    sizes = [reader.integer() for _ in range(6)]  # rows, cols, stride y, stride x, padding y, padding x
    expected = [0, 0, 1, 1, 0, 0] if step.kind == "avg_pool_everything" else \
        [step.kernel, step.kernel, step.stride, step.stride, 0, 0]
    if sizes != expected:
        raise reader.fail(f"{step.kind} of geometry {sizes}, expected {expected}")


def _fc_body(reader: DlibReader, spec: Linear, name: str) -> np.ndarray:
    """The matrix ``(out, in)`` of a ``fc_no_bias`` layer."""
    outputs, declared = reader.integer(signed=False), reader.integer(signed=False)
    params = reader.tensor().reshape(-1)
    weight_shape, _ = reader.alias_tensor(), reader.alias_tensor()
    bias_mode = reader.integer()
    for _ in range(4):
        reader.real()  # learning-rate and weight-decay multipliers
    if name == "fc_3":
        reader.boolean()  # use_bias: without a bias mode it has no effect
    inputs = spec.in_features
    if (outputs, declared, bias_mode) != (spec.out_features, inputs, 1) or params.size != inputs * outputs or \
            math.prod(weight_shape) != inputs * outputs:
        raise reader.fail(f"a fully connected layer {declared} -> {outputs} (bias mode {bias_mode}, "
                          f"{params.size} parameters), expected {inputs} -> {spec.out_features} without bias")
    # dlib computes x (N x in) times its (in x out) matrix; dcnn's linear takes (out, in).
    return np.ascontiguousarray(params.reshape(inputs, outputs).T)


def _body(reader: DlibReader, step: Step, spec: Layer, weights: dict[str, np.ndarray]) -> None:
    """Read one layer body, check it against the node ``spec`` and put its tensors into ``weights``."""
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
        if isinstance(spec, Conv2d):
            geometry = (layer.num_filters, layer.kernel, layer.stride, layer.weight.shape[1], layer.padding)
            wanted = (spec.out_channels, spec.kernel_size, spec.stride, spec.in_channels, spec.padding)
            if geometry != wanted:
                raise reader.fail(f"convolution (filters, kernel, stride, channels, padding) {geometry}, "
                                  f"expected {wanted}")
        elif isinstance(spec, Affine) and layer.num_filters != spec.num_features:
            raise reader.fail(f"an affine layer of {layer.num_filters} channels where {spec.num_features} "
                              f"were expected")
        if layer.weight is not None:
            weights[f"{step.name}.weight"], weights[f"{step.name}.bias"] = layer.weight, layer.bias
        return
    reader.string()
    if step.kind == "fc":
        weights[f"{step.name}.weight"] = _fc_body(reader, spec, name)  # type: ignore[arg-type]
    elif step.kind != "add_prev":
        _pool_body(reader, step)


def _versions(steps: list[Step]) -> list[int]:
    """dlib's wrapper version of each step in forward order: 3 for the layer on the input, 1 for tags and
    skips, 2 for every other layer."""
    versions = [1 if step.kind in ("tag", "skip") else 2 for step in steps]
    versions[0] = 3
    return versions


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
    specs = dict(descriptor_network(steps).layers)
    expected = _versions(steps)
    versions = [reader.integer() for _ in steps][::-1]
    if versions != expected:
        first = next(i for i, (a, b) in enumerate(zip(versions, expected)) if a != b)
        raise reader.fail(f"wrapper version {versions[first]} for {steps[first].kind} node {first}, "
                          f"expected {expected[first]}")
    reader.expect("input_rgb_image_sized")
    mean = (reader.real(), reader.real(), reader.real())
    if (reader.integer(), reader.integer()) != (CHIP_SIZE, CHIP_SIZE):
        raise reader.fail(f"an input size other than {CHIP_SIZE} x {CHIP_SIZE}")
    weights: dict[str, np.ndarray] = {}
    for index, step in enumerate(steps):
        if step.kind in ("tag", "skip"):
            continue
        _body(reader, step, specs.get(step.name), weights)  # type: ignore[arg-type]
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
    if not all(np.isfinite(value).all() for value in weights.values()):
        raise WeightsError(f"{path}: the face recognition model holds NaN or infinite values")
    if not all(math.isfinite(v) for v in mean):
        raise reader.fail("a non-finite input mean")
    return DescriptorModel(mean, weights, groups)


def _tensor(values: np.ndarray, shape: tuple[int, int, int, int]) -> list[bytes]:
    return [_integers(2, *shape), np.asarray(values, "<f4").tobytes()]


def _integers(*values: int) -> bytes:
    return encode_integers(np.array(values, np.int64))


def _string(text: str) -> bytes:
    return _integers(len(text)) + text.encode("latin-1")


def _reals(*values: float) -> bytes:
    return encode_integers(encode_floats(np.array(values, np.float32)))


def _step_body(step: Step, weights: dict[str, np.ndarray]) -> list[bytes]:
    """One layer's details as dlib writes them (the fields :func:`read_descriptor_model` reads)."""
    weight, bias = weights.get(f"{step.name}.weight"), weights.get(f"{step.name}.bias")
    if step.kind == "con":
        filters, channels, rows, cols = weight.shape
        params = np.concatenate([weight.reshape(-1), bias])
        return [_string("con_4"), *_tensor(params, (params.size, 1, 1, 1)),
                _integers(filters, rows, cols, step.stride, step.stride, step.padding, step.padding, 1,
                          filters, channels, rows, cols, 1, 1, filters, 1, 1), _reals(1, 1, 1, 0)]
    if step.kind == "affine":
        channels = weight.size
        params = np.concatenate([weight, bias])
        return [_string("affine_"), *_tensor(params, (2 * channels, 1, 1, 1)),
                _integers(1, 1, channels, 1, 1, 1, 1, channels, 1, 1, 0)]
    if step.kind == "relu":
        return [_string("relu_")]
    if step.kind == "add_prev":
        return [_string("add_prev_")]
    if step.kind == "fc":
        outputs, inputs = weight.shape
        return [_string("fc_2"), _integers(outputs, inputs), *_tensor(weight.T, (inputs, outputs, 1, 1)),
                _integers(1, inputs, outputs, 1, 1, 1, 0, 0, 0, 0, 1), _reals(1, 1, 1, 0)]
    geometry = [0, 0, 1, 1] if step.kind == "avg_pool_everything" else [step.kernel, step.kernel, step.stride,
                                                                        step.stride]
    return [_string("max_pool_2" if step.kind == "max_pool" else "avg_pool_2"), _integers(*geometry, 0, 0)]


def save_descriptor_model(model: DescriptorModel, path: str | os.PathLike) -> None:
    """Write ``model`` in dlib's serialization, readable by :func:`read_descriptor_model` (and by dlib: the
    training-only fields get dlib's defaults, so the bytes differ from a file dlib wrote)."""
    steps = resnet_structure(model.groups)
    empty = _integers(2, 0, 0, 0, 0)
    chunks = [_integers(1), _string("loss_metric_"), _integers(*_versions(steps)[::-1]),
              _string("input_rgb_image_sized"), _reals(*model.mean_rgb), _integers(CHIP_SIZE, CHIP_SIZE)]
    for index, step in enumerate(steps):
        if step.kind in ("tag", "skip"):
            continue
        chunks += [*_step_body(step, model.weights), b"000", empty, empty]
        chunks += [empty, _integers(1)] if index == 0 else [empty]
    Path(path).write_bytes(b"".join(chunks))
