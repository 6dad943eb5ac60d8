"""Read an ONNX model file into a dcnn :class:`~dcnn.network.graph.Network` and its weights.

The file is parsed, checked (:func:`onnx.checker.check_model`) and shape-inferred by the ``onnx`` package;
external data files are read from the model's folder. Constant tensors (initializers, ``Constant``,
``ConstantOfShape`` and nodes of constants only, :mod:`dcnn.network.onnx.constants`) become weights; every
other node that the graph's output depends on is mapped onto dcnn layers by the operator registry
(:mod:`dcnn.network.onnx.ops`). Every unsupported operator or attribute is collected first and reported in one
:class:`~dcnn.network.onnx.errors.UnsupportedModelError`. Nothing is unpickled and nothing is downloaded.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcnn.errors import DAMAGED_FILE_ERRORS, InputError
from dcnn.network.graph import IMAGENET, INPUT, GraphBuilder, Network, Preprocessing, format_shape
from dcnn.network.layers import Dropout
from dcnn.network.onnx.errors import INCONSISTENT_MODEL_ERRORS, UnsupportedModelError, first_line, inconsistent
from dcnn.network.onnx.shapes import inferred_shapes, probed_shapes, shape_of
from dcnn.network.weights import require_finite, validate_weights

__all__ = ["DYNAMIC_SIZE", "MIN_OPSET", "OnnxModel", "is_onnx_path", "load_onnx", "max_opset"]

#: The oldest default-domain opset dcnn reads (every operator's semantics since then are handled).
MIN_OPSET = 7
#: The height and width a network with a dynamic input size reports as its default (``Network.input_shape``).
DYNAMIC_SIZE = 224


def _onnx():
    """The ``onnx`` package, imported on first use: reading ONNX files is the only thing that needs it."""
    try:
        import onnx
    except ImportError:
        raise InputError("reading ONNX models needs the onnx package: pip install 'dcnn[onnx]'") from None
    return onnx


def max_opset() -> int:
    """The newest default-domain opset dcnn reads: the installed ``onnx`` package's."""
    return _onnx().defs.onnx_opset_version()


@dataclass(frozen=True)
class OnnxModel:
    """An ONNX model as dcnn runs it.

    Attributes
    ----------
    network : Network
        The layers, named after the ONNX tensors they compute (a tensor named ``input`` gets a trailing ``_``).
        ``input_shape`` is the model's ``(C, H, W)``, with :data:`DYNAMIC_SIZE` for a dynamic height or width;
        ``fixed_input_size`` is true when both are fixed. ``preprocessing`` is ImageNet's until the caller
        replaces it (``dataclasses.replace``).
    weights : dict of str to numpy.ndarray
        float32 tensors keyed ``"<layer>.<suffix>"`` as :meth:`Network.state_spec` declares them.
    input_name : str
        The ONNX graph input (the one input without an initializer).
    input_dims : tuple of (int or None)
        Its declared ``(N, C, H, W)``; ``None`` for a dynamic (symbolic or unset) dimension.
    output_name : str
        The ONNX graph output.
    opset : int
        The model's default-domain opset version.
    path : pathlib.Path
        The file.
    """

    network: Network
    weights: dict[str, np.ndarray]
    input_name: str
    input_dims: tuple[int | None, ...]
    output_name: str
    opset: int
    path: Path

    @property
    def dynamic_size(self) -> bool:
        """Whether the model accepts any height and width (at least one of them is dynamic)."""
        return not self.network.fixed_input_size


def is_onnx_path(text: str | os.PathLike) -> bool:
    """Whether a ``--model`` value names an ONNX file (it ends in ``.onnx``, any case) rather than a zoo model."""
    return str(text).lower().endswith(".onnx")


def _read(path: Path):
    """Check, parse and shape-infer the file; raises :class:`InputError` for a missing or damaged one.

    Returns the model and the shapes of its tensors. The checker reads the file itself, before it is parsed
    here, and shape inference runs on a copy of the graph without its large initializers: the weights are held
    once (and once more as arrays while :func:`load_onnx` converts them, one tensor at a time).
    """
    onnx = _onnx()
    from google.protobuf.message import DecodeError

    if path.is_dir():
        raise InputError(f"ONNX model {str(path)!r} is a directory, not a file")
    if not path.is_file():
        raise InputError(f"ONNX model {str(path)!r} does not exist")
    try:
        onnx.checker.check_model(str(path))
    except (DecodeError, onnx.checker.ValidationError, *DAMAGED_FILE_ERRORS) as error:
        if "does not have an ir_version set properly" in str(error):
            # What the checker says of an empty file, a text file or another format (protobuf parses most bytes).
            raise InputError(f"{path}: not an ONNX model (no ONNX IR version: empty, or another format)") from None
        if "Unable to parse" in str(error):
            raise InputError(
                f"{path}: not a readable ONNX model (it does not parse: damaged, truncated or another format)"
            ) from None
        raise InputError(f"{path}: invalid ONNX model ({first_line(error)})") from None
    try:
        model = onnx.load(str(path))
    except (DecodeError, onnx.checker.ValidationError, *DAMAGED_FILE_ERRORS) as error:
        raise InputError(f"{path}: not a readable ONNX model ({type(error).__name__}: {first_line(error)})") from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{path}: not an ONNX model (no graph)")
    try:
        shapes = inferred_shapes(onnx, model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, *DAMAGED_FILE_ERRORS) as error:
        raise InputError(f"{path}: invalid ONNX model ({first_line(error)})") from None
    return model, shapes, probed_shapes(onnx, model, shapes)


def _default_opset(model, path: Path) -> int:
    versions = [entry.version for entry in model.opset_import if entry.domain in ("", "ai.onnx")]
    latest = max_opset()
    if not versions or not MIN_OPSET <= versions[0] <= latest:
        found = versions[0] if versions else "none"
        raise InputError(f"{path}: opset {found}; dcnn reads ONNX opsets {MIN_OPSET} to {latest}")
    return versions[0]


def _needed(graph, output: str) -> tuple[list[bool], set[str]]:
    """Per node, whether the graph output depends on it, and the tensors it depends on (dead branches and
    unused outputs are skipped)."""
    tensors = {output}
    needed = [False] * len(graph.node)
    for index in range(len(graph.node) - 1, -1, -1):
        node = graph.node[index]
        if any(name in tensors for name in node.output):
            needed[index] = True
            tensors.update(name for name in node.input if name)
    return needed, tensors


def _element_type_name(elem: int) -> str:
    """The numpy name of an ONNX tensor element type (``float32``, ``int64`` ...), or ``element type N`` for a
    number the installed onnx does not map (a damaged or newer file)."""
    try:
        return _onnx().helper.tensor_dtype_to_np_dtype(elem).name
    except (KeyError, ValueError, TypeError):
        return f"element type {elem}"


def _channels_last(graph, name: str) -> bool:
    """Whether tensor ``name`` is read by a ``Transpose`` to channels-first (perm ``[0, 3, 1, 2]``): a channels-last
    (TensorFlow) image input."""
    return any(
        node.op_type == "Transpose"
        and node.input[0] == name
        and [int(p) for a in node.attribute if a.name == "perm" for p in a.ints] == [0, 3, 1, 2]
        for node in graph.node
    )


def _dims(dims: tuple[int | None, ...]) -> str:
    """``1x224x224x3``: declared dims, ``?`` for a dynamic one."""
    return "x".join("?" if d is None else str(d) for d in dims)


def _the_input(graph, constants, path: Path, image_input: bool):
    """The graph's one input without an initializer: its name and declared dims."""
    onnx = _onnx()
    inputs = [value for value in graph.input if value.name not in constants]
    if len(inputs) != 1:
        names = ", ".join(value.name for value in inputs) or "none"
        raise InputError(f"{path}: dcnn runs models with one image input, this one has {len(inputs)} ({names})")
    value = inputs[0]
    dims = shape_of(value)
    elem = value.type.tensor_type.elem_type if value.type.HasField("tensor_type") else 0
    if image_input and _channels_last(graph, value.name) and dims is not None and len(dims) == 4:
        raise InputError(
            f"{path}: input {value.name!r} is channels-last ({_dims(dims)}: N x H x W x C, TensorFlow's "
            f"layout, which the model transposes); dcnn runs channels-first N x C x H x W models: convert with "
            f"tf2onnx --inputs-as-nchw {value.name}"
        )
    ranks = (4,) if image_input else (2, 4)
    if elem != onnx.TensorProto.FLOAT or dims is None or len(dims) not in ranks or dims[1] is None:
        kind = _element_type_name(elem) if elem else "non-tensor"
        shape = "of unknown rank" if dims is None else _dims(dims)
        raise InputError(
            f"{path}: input {value.name!r} is {kind} {shape}; dcnn runs float32 N x C x H x W "
            f"images with a fixed channel count"
        )
    return value.name, dims


def load_onnx(path: str | os.PathLike, preprocessing: Preprocessing = IMAGENET, image_input: bool = True) -> OnnxModel:
    """Read an ONNX model into a dcnn network and its weights.

    Parameters
    ----------
    path : str or os.PathLike
        The ``.onnx`` file; external data files are looked up relative to its folder.
    preprocessing : Preprocessing
        How uint8 images become the model's input (the network records it; the model itself does not say).
    image_input : bool
        Require an N x C x H x W input (what every dcnn command runs); ``False`` also reads a model of an
        (N, F) input, such as a classifier head (its network's ``input_shape`` is ``(F,)``).

    Returns
    -------
    OnnxModel

    Raises
    ------
    InputError
        A missing, damaged or invalid file, an opset outside ``MIN_OPSET .. max_opset()``, not exactly one
        float32 4-D input with a fixed channel count, or not exactly one output.
    UnsupportedModelError
        (an :class:`InputError`) Listing every unsupported operator type with the names of its nodes.
    WeightsError
        A node whose tensors do not have the shapes its layer needs, or NaN or infinite weights (a damaged
        file).
    ShapeError
        A model with a fixed input size whose layers do not fit it.
    """
    from dcnn.network.onnx.constants import tensor_value
    from dcnn.network.onnx.nodes import GraphReading

    path = Path(path)
    model, shapes, probes = _read(path)
    graph = model.graph
    opset = _default_opset(model, path)
    constants: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        try:
            constants[tensor.name] = tensor_value(tensor)
        except INCONSISTENT_MODEL_ERRORS as error:
            raise inconsistent(path, f"initializer {tensor.name}", error) from None
        tensor.ClearField("raw_data")  # the array holds the values now: free the parsed copy as we go
    input_name, dims = _the_input(graph, constants, path, image_input)
    if len(graph.output) != 1:
        raise InputError(f"{path}: dcnn runs models with one output, this one has {len(graph.output)}")
    output_name = graph.output[0].name
    needed_nodes, needed_tensors = _needed(graph, output_name)
    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    reading = GraphReading(path, opset, opsets, constants, shapes, probes, needed_tensors)
    for node, needed in zip(graph.node, needed_nodes):
        if needed:
            reading.read(node)
    if reading.unsupported:
        raise UnsupportedModelError(str(path), reading.unsupported)

    try:
        network, weights = _build(path, reading.conversions, input_name, output_name, dims, preprocessing, opset)
    except INCONSISTENT_MODEL_ERRORS as error:
        raise inconsistent(path, "the graph", error) from None
    # The tensors a node declares must be the ones its layer reads (a damaged file can break that).
    weights = validate_weights(network, weights, str(path))
    require_finite(weights, str(path))
    if network.fixed_input_size:
        network.shapes()
    return OnnxModel(network, weights, input_name, dims, output_name, opset, path)


def _build(
    path: Path, conversions, input_name: str, output_name: str, dims, preprocessing: Preprocessing, opset: int
) -> tuple[Network, dict[str, np.ndarray]]:
    """Lay the converted nodes out as a dcnn graph: names, inputs, weights."""
    names = {input_name: INPUT}
    builder = GraphBuilder()
    weights: dict[str, np.ndarray] = {}

    builder_names: set[str] = set()

    def layer_name(tensor: str) -> str:
        name = tensor
        while name == INPUT or name in builder_names:
            name += "_"
        return name

    for output, conversion in conversions:
        if isinstance(conversion, str):
            names[output] = names[conversion]
            continue
        for step in conversion:
            produced = step.output or output
            name = layer_name(produced)
            builder.add(name, step.layer, *(names[source] for source in step.inputs))
            builder_names.add(name)
            names[produced] = name
            weights.update({f"{name}.{suffix}": value for suffix, value in step.tensors.items()})
    if names.get(output_name) == INPUT:
        # The graph passes its input through (Identity, Dropout): one identity layer carries it.
        builder.add(layer_name(output_name), Dropout(0.0))
    if len(dims) == 2:
        input_shape, fixed = (int(dims[1]),), True
    else:
        height, width = dims[2], dims[3]
        fixed = height is not None and width is not None
        input_shape = (int(dims[1]), height or DYNAMIC_SIZE, width or DYNAMIC_SIZE)
    network = builder.build(
        path.stem,
        input_shape,
        preprocessing,
        f"ONNX model {path.name} (opset {opset}, input {format_shape(input_shape)})",
    )
    if fixed:
        network = Network(
            network.name,
            network.layers,
            network.input_shape,
            network.preprocessing,
            network.description,
            fixed_input_size=True,
            inputs=network.inputs,
        )
    return network, weights
