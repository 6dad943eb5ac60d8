"""Shape inference of an ONNX graph: every tensor's shape at the model's declared input, and at probe sizes.

ONNX's own shape inference (``onnx.shape_inference``) runs on a copy of the graph without its large initializers.
A model with a dynamic height and width is inferred once more at each of :data:`MAP_PROBES`, which tells whether two
maps have the same size at every input size (what a reshape target taken from another tensor's ``Shape`` needs).
The functions take the ``onnx`` module as an argument: importing this module does not need the package.
"""

from __future__ import annotations

from dcnn.errors import DAMAGED_FILE_ERRORS

__all__ = ["MAP_PROBES", "SHAPE_INFERENCE_MAX_BYTES", "inferred_shapes", "probed_shapes", "shape_of"]

#: Initializers above this many bytes are left out of the copy of the graph that shape inference reads (their
#: type and shape are enough); smaller ones (target shapes, axes, pads) stay, because inference reads their values.
SHAPE_INFERENCE_MAX_BYTES = 4096


#: The (height, width) a dynamic size is tried at (:func:`probed_shapes` for the model's input,
#: :func:`dcnn.network.onnx.nodes.layer_output_shape` for a layer's): two sizes, height and width unlike, so that
#: two maps of equal sizes at both have the same size function of the input's.
MAP_PROBES = ((256, 320), (288, 224))


def probed_shapes(onnx, model, shapes) -> list[dict[str, tuple[int | None, ...]]]:
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
            probes.append(inferred_shapes(onnx, model, inputs))
        except (onnx.checker.ValidationError, onnx.shape_inference.InferenceError, *DAMAGED_FILE_ERRORS):
            return []  # the model cannot take that size: no two maps are known to be of one size
    return probes


def inferred_shapes(onnx, model, inputs=None) -> dict[str, tuple[int | None, ...]]:
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
        if (shape := shape_of(value)) is not None
    }


def shape_of(value_info) -> tuple[int | None, ...] | None:
    """The ``(dims)`` of a ValueInfoProto's tensor type, ``None`` per dynamic dimension; ``None`` if unknown."""
    if not value_info.type.HasField("tensor_type") or not value_info.type.tensor_type.HasField("shape"):
        return None
    return tuple(dim.dim_value if dim.HasField("dim_value") else None for dim in value_info.type.tensor_type.shape.dim)
