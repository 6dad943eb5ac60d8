"""Read an ONNX model file into a dcnn :class:`~dcnn.network.graph.Network` and its weights.

The file is parsed, checked (:func:`onnx.checker.check_model`) and shape-inferred by the ``onnx`` package;
external data files are read from the model's folder. Constant tensors (initializers, ``Constant``,
``ConstantOfShape`` and nodes of constants only, :mod:`dcnn.network.onnx.constants`) become weights; every
other node that the graph's output depends on is mapped onto dcnn layers by the operator registry
(:mod:`dcnn.network.onnx.ops`). Every unsupported operator or attribute is collected first and reported in one
:class:`~dcnn.network.onnx.errors.UnsupportedModelError`. Nothing is unpickled and nothing is downloaded.
"""

from __future__ import annotations

import functools
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from dcnn.errors import DAMAGED_FILE_ERRORS, InputError, ShapeError
from dcnn.network.graph import IMAGENET, INPUT, GraphBuilder, Network, Preprocessing, format_shape
from dcnn.network.layers import ChannelShuffle, Dropout
from dcnn.network.onnx.errors import Unsupported, UnsupportedModelError
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


#: Initializers above this many bytes are left out of the copy of the graph that shape inference reads (their
#: type and shape are enough); smaller ones (target shapes, axes, pads) stay, because inference reads their values.
SHAPE_INFERENCE_MAX_BYTES = 4096


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
        raise InputError(f"{path}: invalid ONNX model ({_first_line(error)})") from None
    try:
        model = onnx.load(str(path))
    except (DecodeError, onnx.checker.ValidationError, *DAMAGED_FILE_ERRORS) as error:
        raise InputError(f"{path}: not a readable ONNX model ({type(error).__name__}: {_first_line(error)})") from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{path}: not an ONNX model (no graph)")
    try:
        shapes = _inferred_shapes(onnx, model)
    except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, *DAMAGED_FILE_ERRORS) as error:
        raise InputError(f"{path}: invalid ONNX model ({_first_line(error)})") from None
    return model, shapes, _probed_shapes(onnx, model, shapes)


#: The (height, width) a dynamic size is tried at (:func:`_probed_shapes` for the model's input,
#: :func:`_layer_output_shape` for a layer's): two sizes, height and width unlike, so that two maps of equal sizes
#: at both have the same size function of the input's.
MAP_PROBES = ((256, 320), (288, 224))


def _probed_shapes(onnx, model, shapes) -> list[dict[str, tuple[int | None, ...]]]:
    """The tensors' shapes with the input's dynamic height and width fixed at each of :data:`MAP_PROBES`
    (empty unless the model reads the shape of a tensor: what tells whether a reshape target's dynamic height
    and width, taken from one tensor, are another's too)."""
    if not any(node.op_type == "Shape" for node in model.graph.node):
        return []
    initialized = {tensor.name for tensor in model.graph.initializer}
    probes = []
    for height, width in MAP_PROBES:
        inputs = []
        for value in model.graph.input:
            shape = shapes.get(value.name)
            if value.name not in initialized and shape is not None and len(shape) == 4:
                fixed = [1 if shape[0] is None else shape[0], shape[1], shape[2] or height, shape[3] or width]
                value = onnx.helper.make_tensor_value_info(value.name, value.type.tensor_type.elem_type, fixed)
            inputs.append(value)
        try:
            probes.append(_inferred_shapes(onnx, model, inputs))
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, *DAMAGED_FILE_ERRORS):
            return []  # the model cannot take that size: no two maps are known to be of one size
    return probes


def _inferred_shapes(onnx, model, inputs=None) -> dict[str, tuple[int | None, ...]]:
    """Every tensor's shape that ONNX's shape inference finds, by name (``None`` per dynamic dimension);
    ``inputs``: value infos that replace the graph's inputs."""
    graph, helper = model.graph, onnx.helper
    small = [tensor for tensor in graph.initializer if tensor.ByteSize() <= SHAPE_INFERENCE_MAX_BYTES]
    declared = {value.name for value in graph.input}
    typed = [
        helper.make_tensor_value_info(tensor.name, tensor.data_type, tensor.dims)
        for tensor in graph.initializer
        if tensor.ByteSize() > SHAPE_INFERENCE_MAX_BYTES and tensor.name not in declared
    ]
    skeleton = helper.make_model(
        helper.make_graph(
            graph.node,
            graph.name,
            [*(graph.input if inputs is None else inputs), *typed],
            graph.output,
            small,
            value_info=graph.value_info,
        ),
        ir_version=model.ir_version,
        opset_imports=model.opset_import,
        functions=model.functions,
    )
    inferred = onnx.shape_inference.infer_shapes(skeleton, strict_mode=False).graph
    return {
        value.name: shape
        for value in [*inferred.input, *inferred.value_info, *inferred.output]
        if (shape := _shape_of(value)) is not None
    }


#: What numpy and the layer specs raise on a model that passes the checker but whose tensors contradict each
#: other (a damaged or hand-edited file): reported as an invalid model, naming the node.
INCONSISTENT_MODEL_ERRORS = (ValueError, IndexError, KeyError, TypeError, ArithmeticError)


def _inconsistent(path: Path, where: str, error: BaseException) -> InputError:
    return InputError(f"{path}: invalid ONNX model ({where}: {type(error).__name__}: {_first_line(error)})")


def _first_line(error: BaseException) -> str:
    text = str(error).strip()
    return text.splitlines()[0] if text else type(error).__name__


def _shape_of(value_info) -> tuple[int | None, ...] | None:
    """The ``(dims)`` of a ValueInfoProto's tensor type, ``None`` per dynamic dimension; ``None`` if unknown."""
    if not value_info.type.HasField("tensor_type") or not value_info.type.tensor_type.HasField("shape"):
        return None
    return tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in value_info.type.tensor_type.shape.dim)


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
    dims = _shape_of(value)
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
    from dcnn.network.onnx.constants import (
        BATCH_SIZE_OPS,
        constant_node_value,
        dynamic_size_use,
        fold_node,
        holds_map_sizes,
        shape_node_value,
        tensor_value,
    )
    from dcnn.network.onnx.ops import CONVERTERS, REFUSED_OPS, NodeContext, Step

    path = Path(path)
    model, shapes, probes = _read(path)
    graph = model.graph
    opset = _default_opset(model, path)
    opsets = {entry.domain or "": entry.version for entry in model.opset_import}
    constants: dict[str, np.ndarray] = {}
    for tensor in graph.initializer:
        try:
            constants[tensor.name] = tensor_value(tensor)
        except INCONSISTENT_MODEL_ERRORS as error:
            raise _inconsistent(path, f"initializer {tensor.name}", error) from None
        tensor.ClearField("raw_data")  # the array holds the values now: free the parsed copy as we go
    input_name, dims = _the_input(graph, constants, path, image_input)
    if len(graph.output) != 1:
        raise InputError(f"{path}: dcnn runs models with one output, this one has {len(graph.output)}")
    output_name = graph.output[0].name
    unsupported: dict[str, list[tuple[str, str]]] = {}
    conversions: list[tuple[str, str | list[Step]]] = []
    needed_nodes, needed_tensors = _needed(graph, output_name)
    unknown_sizes: set[str] = set()  # values computed from a Shape that could not be folded
    # The maps whose dynamic height and width a folded value holds (by their view roots), and the tensors that
    # are views of another with its height and width (a passed-through reshape, a channel shuffle).
    size_sources: dict[str, frozenset[str]] = {}
    views: dict[str, str] = {}
    refused: set[str] = set()  # outputs of the nodes reported unsupported
    for node, needed in zip(graph.node, needed_nodes):
        if not needed:
            continue
        name = node.name or node.output[0]
        op = node.op_type if node.domain in ("", "ai.onnx") else f"{node.domain}.{node.op_type}"
        refuse = functools.partial(_refuse, unsupported, refused, node, op, name)
        sizes = {dynamic_size_use(constants[n]) for n in node.input if n in constants} - {None}
        if node.op_type not in BATCH_SIZE_OPS and sizes:
            # Before anything evaluates the node: a ConstantOfShape of a marker would allocate billions of values.
            refuse("; ".join(SIZE_ARITHMETIC[size] for size in sorted(sizes)))
            unknown_sizes.update(node.output)
            continue
        try:
            value = constant_node_value(node, constants)
        except INCONSISTENT_MODEL_ERRORS as error:
            raise _inconsistent(path, f"node {name} ({op})", error) from None
        if value is None and node.op_type == "Shape":
            value = shape_node_value(node, shapes)
            if value is None and node.input[0] in refused:
                unknown_sizes.update(node.output)  # the shape of a refused node's output: that node is the reason
                continue
            if value is None:
                refuse(f"the shape of {node.input[0]!r} is unknown")
                unknown_sizes.update(node.output)
                continue
        if value is None and _computes_sizes(node, constants, unknown_sizes):
            # Arithmetic on the sizes of a refused Shape (x.size(1) // 2 ...): that Shape is the reason.
            unknown_sizes.update(node.output)
            continue
        if value is not None:
            constants[node.output[0]] = value
            if node.op_type == "Shape" and holds_map_sizes(value):
                size_sources[node.output[0]] = frozenset({_view_root(views, node.input[0])})
            continue
        try:
            folded = fold_node(node, constants, opsets)
        except Exception as error:  # any failure of the reference evaluator is the node's
            refuse(f"cannot fold its constants ({_first_line(error)})")
            continue
        if folded is not None:
            constants.update(zip(node.output, folded))
            sources = frozenset().union(*(size_sources.get(n, frozenset()) for n in node.input))
            size_sources.update(
                (output, sources) for output, value in zip(node.output, folded) if sources and holds_map_sizes(value)
            )
            continue
        if sizes and node.op_type != "Reshape":
            # A selection of a map by its sizes (x[:, :x.size(0)]): only a reshape's target may hold them.
            refuse(f"{sorted(sizes)[0]} as an operand of a computed tensor (dcnn reshapes by it only)")
            continue
        if node.op_type == "Reshape" and len(node.input) > 1 and not _same_map_size(
            probes, _view_root(views, node.input[0]), size_sources.get(node.input[1], frozenset())
        ):
            refuse("a target shape with another tensor's dynamic height and width (dcnn keeps a map's own)")
            continue
        converter = CONVERTERS.get(op)
        if converter is None:
            refuse(REFUSED_OPS.get(op, ""))
            continue
        try:
            context = NodeContext(node, name, opset, constants, shapes, needed_tensors)
            conversion = converter(context)
            conversions.append((node.output[0], conversion))
            if isinstance(conversion, str):
                views[node.output[0]] = conversion
            elif len(conversion) == 1 and isinstance(conversion[0].layer, ChannelShuffle):
                views[node.output[0]] = conversion[0].inputs[0]
            _propagate_shape(node.output[0], conversion, context.output_shape, shapes)
        except (Unsupported, *INCONSISTENT_MODEL_ERRORS) as error:
            if any(n in unknown_sizes or (n in refused and not _fully_known(shapes.get(n))) for n in node.input):
                # It reads what a refused node computes (sizes, or a tensor of unknown shape): that node is why.
                refused.update(node.output)
            elif isinstance(error, Unsupported):
                refuse(error.reason)
            else:
                raise _inconsistent(path, f"node {name} ({op})", error) from None
    if unsupported:
        raise UnsupportedModelError(str(path), unsupported)

    try:
        network, weights = _build(path, conversions, input_name, output_name, dims, preprocessing, opset)
    except INCONSISTENT_MODEL_ERRORS as error:
        raise _inconsistent(path, "the graph", error) from None
    # The tensors a node declares must be the ones its layer reads (a damaged file can break that).
    weights = validate_weights(network, weights, str(path))
    require_finite(weights, str(path))
    if network.fixed_input_size:
        network.shapes()
    return OnnxModel(network, weights, input_name, dims, output_name, opset, path)


#: Why arithmetic on a dynamic size is refused, and what to export instead.
SIZE_ARITHMETIC = {
    "the batch size": "arithmetic on the batch size (dcnn runs any batch: view as x.view(x.size(0), -1))",
    "a dynamic height or width": "arithmetic on a dynamic height or width (export with a fixed input size)",
}


def _refuse(unsupported: dict[str, list[tuple[str, str]]], refused: set[str], node, op: str, name: str, reason: str):
    """Report a node as unsupported (``op``: its operator type, ``name``: its name) and mark its outputs."""
    unsupported.setdefault(op, []).append((name, reason))
    refused.update(node.output)


def _same_map_size(probes, tensor: str, sources: frozenset[str]) -> bool:
    """Whether each of ``sources`` has the height and width of ``tensor`` at every input size (it is
    ``tensor``, or both have the same known sizes at each of the probed input sizes, :func:`_probed_shapes`)."""
    for source in sources - {tensor}:
        sizes = [(probe.get(tensor, ())[-2:], probe.get(source, ())[-2:]) for probe in probes]
        if not sizes or any(len(a) != 2 or a != b or None in a for a, b in sizes):
            return False
    return True


def _view_root(views: Mapping[str, str], tensor: str) -> str:
    """The tensor whose height and width ``tensor`` has by being a view of it (itself if it is no view)."""
    while tensor in views:
        tensor = views[tensor]
    return tensor


def _computes_sizes(node, constants, unknown_sizes: set[str]) -> bool:
    """Whether a node computes only from constants and sizes of a refused ``Shape`` (at least one)."""
    names = [name for name in node.input if name]
    return any(name in unknown_sizes for name in names) and all(
        name in unknown_sizes or name in constants for name in names
    )


def _fully_known(shape: tuple[int | None, ...] | None) -> bool:
    """Whether a tensor's shape is known but for its batch."""
    return bool(shape) and None not in shape[1:]  # type: ignore[index]


def _knows_more(shape: tuple[int | None, ...], than: tuple[int | None, ...] | None) -> bool:
    """Whether ``shape`` knows more dimensions than ``than`` (``None``: an unknown shape)."""
    return than is None or sum(d is None for d in than) > sum(d is None for d in shape)


def _propagate_shape(output: str, conversion, resolved, shapes: dict[str, tuple[int | None, ...]]) -> None:
    """Record the shape of each tensor a converted node computes where ONNX's shape inference left it (or a size
    of each image) unknown.

    Shape inference runs before the constants are folded, so it cannot follow a ``Reshape`` whose target is
    computed (``x.view(x.size(0), -1)``, ``x.reshape(x.shape[0], -1)``): the node after it would find its input's
    shape unknown. The shape the converter resolved (``resolved``: a reshape's target, a passed-through view's)
    or the dcnn layers the node became (:meth:`Layer.output_shape` of each image, the batch of the first input)
    give it; a shape that stays unknown (a dynamic height or width) is left out.
    """
    if resolved is not None and _knows_more(tuple(resolved), shapes.get(output)):
        shapes[output] = tuple(resolved)
    if isinstance(conversion, str):
        return
    known = dict(shapes)
    for step in conversion:
        inputs = [known.get(source) for source in step.inputs]
        if any(shape is None or not shape for shape in inputs):
            return
        per_image = _layer_output_shape(step.layer, [tuple(shape[1:]) for shape in inputs])
        if per_image is None:
            return  # the network's own shape check reports it
        produced = step.output or output
        known[produced] = (inputs[0][0], *per_image)
        if _knows_more(known[produced], shapes.get(produced)):
            shapes[produced] = known[produced]


def _layer_output_shape(layer, shapes: list[tuple[int | None, ...]]) -> tuple[int | None, ...] | None:
    """A layer's per-image output shape for per-image input shapes with ``None`` for a dynamic size: the
    dimensions that do not depend on it, ``None`` for those that do; ``None`` if the layer refuses the shapes.
    The dynamic sizes are tried at each of :data:`MAP_PROBES` (the last axis at its width, the others at its
    height): a size the output keeps across both is fixed (a global pool's 1), one that differs is dynamic."""
    outputs = []
    for height, width in MAP_PROBES:
        sized = [tuple(d if d is not None else width if i == len(s) - 1 else height for i, d in enumerate(s))
                 for s in shapes]
        try:
            outputs.append(layer.output_shape(*sized))
        except (ShapeError, *INCONSISTENT_MODEL_ERRORS):
            return None
        if not any(None in shape for shape in shapes):
            return outputs[0]
    return tuple(a if a == b else None for a, b in zip(*outputs))


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
