"""Constant tensors of an ONNX graph: initializers, ``Constant`` and ``ConstantOfShape`` nodes, and nodes whose
inputs are all constant (folded once, at load time, by the ``onnx`` package's reference evaluator).

Weights reach dcnn through these: a convolution's ``W`` may be an initializer, the output of a ``Constant``
node, a ``ConstantOfShape`` fill (ONNX's "light" test models) or an ``Unsqueeze`` of any of them (per-channel
scales broadcast as ``(C, 1, 1)``).
"""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.reference import ReferenceEvaluator

__all__ = [
    "BATCH_SIZE",
    "BATCH_SIZE_OPS",
    "DYNAMIC_EXTENT",
    "DYNAMIC_EXTENTS",
    "DYNAMIC_HEIGHT",
    "DYNAMIC_WIDTH",
    "NONDETERMINISTIC_OPS",
    "constant_node_value",
    "dynamic_size_use",
    "fold_node",
    "holds_map_sizes",
    "shape_node_value",
    "tensor_value",
]

#: Operators whose output is random: never folded, even when their inputs are constant.
NONDETERMINISTIC_OPS = frozenset(
    {"RandomNormal", "RandomNormalLike", "RandomUniform", "RandomUniformLike", "Bernoulli", "Multinomial"}
)


#: What a folded ``Shape`` holds for a dynamic batch dimension: a marker no real dimension has, so that
#: PyTorch's ``x.view(x.size(0), -1)`` (``Shape``, ``Gather``, ``Unsqueeze``, ``Concat``, ``Reshape``) folds to a
#: reshape target whose first entry is the batch, which the ``Reshape`` converter reads as "keep the batch".
BATCH_SIZE = 2**31 - 3
#: What a folded ``Shape`` holds for a dynamic height and width (the last two axes of a map, or of its
#: channel-group view), so that the fixed dimensions of the same ``Shape`` fold (``x.size(1)``, the channels, in
#: ``x.chunk(2, 1)``), a reshape may keep them as its last two axes (ShuffleNet's ``x.view(n, g, c // g, h, w)``),
#: and any other use of them is refused where it is used.
DYNAMIC_HEIGHT, DYNAMIC_WIDTH = 2**31 - 4, 2**31 - 5
#: What a folded ``Shape`` holds for any other dynamic dimension.
DYNAMIC_EXTENT = 2**31 - 6
#: Every marker of a dynamic dimension other than the batch.
DYNAMIC_EXTENTS = (DYNAMIC_HEIGHT, DYNAMIC_WIDTH, DYNAMIC_EXTENT)
#: Operators that may carry :data:`BATCH_SIZE` or :data:`DYNAMIC_EXTENT` from a ``Shape`` to a ``Reshape``: they
#: select and assemble dimensions. Any other operator on them (arithmetic with the sizes) is refused.
BATCH_SIZE_OPS = frozenset({"Cast", "Concat", "Gather", "Identity", "Reshape", "Slice", "Squeeze", "Unsqueeze"})


def shape_node_value(node: onnx.NodeProto, shapes: Mapping[str, tuple[int | None, ...]]) -> np.ndarray | None:
    """The value of a ``Shape`` node, from the shape ONNX's shape inference found for its input.

    Parameters
    ----------
    node : onnx.NodeProto
        A ``Shape`` node (``start`` and ``end`` attributes since opset 15: a Python-style slice of the dims).
    shapes : mapping
        Full shapes by tensor name, ``None`` for a dynamic dimension.

    Returns
    -------
    numpy.ndarray or None
        The int64 dimensions, with :data:`BATCH_SIZE` for a dynamic batch (dimension 0),
        :data:`DYNAMIC_HEIGHT` and :data:`DYNAMIC_WIDTH` for the last two of a tensor of rank 4 or more, and
        :data:`DYNAMIC_EXTENT` for another dynamic dimension; ``None`` if the input's shape is unknown.
    """
    shape = shapes.get(node.input[0])
    if shape is None:
        return None
    attributes = {a.name: onnx.helper.get_attribute_value(a) for a in node.attribute}
    rank = len(shape)
    markers = {0: BATCH_SIZE, **({rank - 2: DYNAMIC_HEIGHT, rank - 1: DYNAMIC_WIDTH} if rank >= 4 else {})}
    dims = [d if d is not None else markers.get(i, DYNAMIC_EXTENT) for i, d in enumerate(shape)]
    selected = dims[int(attributes.get("start", 0)) : int(attributes.get("end", len(dims)))]
    return np.asarray(selected, np.int64)


def dynamic_size_use(value: np.ndarray) -> str | None:
    """What a folded integer tensor holds of a dynamic size: ``"the batch size"`` (:data:`BATCH_SIZE`),
    ``"a dynamic height or width"`` (:data:`DYNAMIC_EXTENTS`), or ``None`` for neither."""
    if value.dtype.kind not in "iuf":
        return None
    if np.any(value == BATCH_SIZE):
        return "the batch size"
    if np.any(np.isin(value, DYNAMIC_EXTENTS)):
        return "a dynamic height or width"
    return None


def holds_map_sizes(value: np.ndarray) -> bool:
    """Whether a folded tensor holds a marker of a dynamic height, width or other extent (the batch's aside)."""
    return value.dtype.kind in "iuf" and bool(np.isin(value, DYNAMIC_EXTENTS).any())


def tensor_value(tensor: onnx.TensorProto) -> np.ndarray:
    """A tensor's values as an array (external data must already be loaded, as :func:`onnx.load` does)."""
    return np.asarray(numpy_helper.to_array(tensor))


def constant_node_value(node: onnx.NodeProto, constants: Mapping[str, np.ndarray]) -> np.ndarray | None:
    """The value of a ``Constant`` node, or of a ``ConstantOfShape`` node whose shape input is constant.

    ``Constant`` holds one of the attributes ``value`` (a tensor), ``value_float``, ``value_floats``,
    ``value_int``, ``value_ints`` (opset 12+); ``ConstantOfShape`` fills its shape with the one-element tensor
    ``value`` (default float32 zero). Returns ``None`` for any other node, or a sparse or string constant.
    """
    attributes = {attribute.name: onnx.helper.get_attribute_value(attribute) for attribute in node.attribute}
    if node.op_type == "Constant":
        if "value" in attributes:
            return tensor_value(attributes["value"])
        kinds = {"value_float": np.float32, "value_floats": np.float32, "value_int": np.int64, "value_ints": np.int64}
        for key, dtype in kinds.items():
            if key in attributes:
                return np.asarray(attributes[key], dtype=dtype)
        return None
    if node.op_type == "ConstantOfShape" and node.input and node.input[0] in constants:
        fill = tensor_value(attributes["value"]) if "value" in attributes else np.zeros(1, np.float32)
        shape = tuple(int(v) for v in constants[node.input[0]].reshape(-1))
        return np.full(shape, fill.reshape(-1)[0], dtype=fill.dtype)
    return None


def fold_node(
    node: onnx.NodeProto, constants: Mapping[str, np.ndarray], opsets: Mapping[str, int]
) -> list[np.ndarray] | None:
    """Evaluate a node whose every input is constant; ``None`` if it has a non-constant or no input.

    Parameters
    ----------
    node : onnx.NodeProto
        The node.
    constants : mapping
        Known constant tensors by name.
    opsets : mapping
        The model's opset imports, ``{domain: version}``.

    Returns
    -------
    list of numpy.ndarray or None
        One array per output of the node.
    """
    names = [name for name in node.input if name]
    if (
        not names
        or node.op_type in NONDETERMINISTIC_OPS
        or node.domain not in ("", "ai.onnx")
        or any(name not in constants for name in names)
    ):
        return None
    inputs = [
        onnx.helper.make_tensor_value_info(
            name, onnx.helper.np_dtype_to_tensor_dtype(constants[name].dtype), constants[name].shape
        )
        for name in names
    ]
    outputs = [onnx.helper.make_empty_tensor_value_info(name) for name in node.output]
    graph = onnx.helper.make_graph([node], "fold", inputs, outputs)
    model = onnx.helper.make_model(
        graph, opset_imports=[onnx.helper.make_opsetid(domain, version) for domain, version in opsets.items()]
    )
    evaluator = ReferenceEvaluator(model)
    return [np.asarray(value) for value in evaluator.run(None, {name: constants[name] for name in names})]
