"""The ONNX graph reading node by node (dcnn.network.onnx.nodes) and its shape inference (shapes.py)."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

onnx = pytest.importorskip("onnx")
from onnx import TensorProto, helper, numpy_helper  # noqa: E402

from dcnn.network.layers import AdaptiveAvgPool2d, Conv2d  # noqa: E402
from dcnn.network.onnx.nodes import SIZE_ARITHMETIC, GraphReading, layer_output_shape  # noqa: E402
from dcnn.network.onnx.shapes import MAP_PROBES, inferred_shapes, probed_shapes  # noqa: E402


def _model(nodes, initializers=(), height="h", width="w"):
    graph = helper.make_graph(
        nodes,
        "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["n", 3, height, width])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, None)],
        list(initializers),
    )
    return helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])


def _read(model) -> GraphReading:
    shapes = inferred_shapes(onnx, model)
    constants = {t.name: numpy_helper.to_array(t) for t in model.graph.initializer}
    reading = GraphReading(Path("m.onnx"), 17, {"": 17}, constants, shapes, probed_shapes(onnx, model, shapes), set())
    for node in model.graph.node:
        reading.read(node)
    return reading


def _conv(name="c", source="x", output="a"):
    weight = numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), f"{name}.w")
    return helper.make_node("Conv", [source, f"{name}.w"], [output], name=name, pads=[1, 1, 1, 1]), weight


def test_flatten_by_the_batch_size_folds_to_a_reshape():
    conv, weight = _conv()
    axes = numpy_helper.from_array(np.array([0], np.int64), "axes")
    minus_one = numpy_helper.from_array(np.array([-1], np.int64), "minus_one")
    index = numpy_helper.from_array(np.array(0, np.int64), "zero")
    nodes = [
        conv,
        helper.make_node("GlobalAveragePool", ["a"], ["p"]),
        helper.make_node("Shape", ["p"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"]),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Concat", ["n1", "minus_one"], ["target"], axis=0),
        helper.make_node("Reshape", ["p", "target"], ["y"]),
    ]
    reading = _read(_model(nodes, [weight, axes, minus_one, index]))
    assert reading.unsupported == {}
    assert [output for output, _ in reading.conversions] == ["a", "p", "y"]
    assert "target" in reading.constants  # folded, with the batch marker in it


def test_arithmetic_on_the_batch_size_is_refused_with_its_reason():
    conv, weight = _conv()
    index = numpy_helper.from_array(np.array(0, np.int64), "zero")
    two = numpy_helper.from_array(np.array(2, np.int64), "two")
    nodes = [
        conv,
        helper.make_node("Shape", ["a"], ["s"]),
        helper.make_node("Gather", ["s", "zero"], ["n"]),
        helper.make_node("Mul", ["n", "two"], ["n2"], name="double"),
        helper.make_node("Reshape", ["a", "n2"], ["y"]),
    ]
    reading = _read(_model(nodes, [weight, index, two]))
    assert reading.unsupported == {"Mul": [("double", SIZE_ARITHMETIC["the batch size"])]}
    assert "n2" in reading.refused


def test_an_unknown_operator_is_collected_not_raised():
    conv, weight = _conv()
    nodes = [conv, helper.make_node("Floor", ["a"], ["y"], name="f")]
    reading = _read(_model(nodes, [weight]))
    assert reading.unsupported == {"Floor": [("f", "")]}


def test_probe_shapes_only_for_a_model_that_reads_a_shape():
    conv, weight = _conv()
    plain = _model([conv, helper.make_node("Relu", ["a"], ["y"])], [weight])
    assert probed_shapes(onnx, plain, inferred_shapes(onnx, plain)) == []
    shaped = _model([conv, helper.make_node("Shape", ["a"], ["y"])], [weight])
    probes = probed_shapes(onnx, shaped, inferred_shapes(onnx, shaped))
    assert [probe["a"] for probe in probes] == [(1, 4, h, w) for h, w in MAP_PROBES]


def test_layer_output_shape_keeps_fixed_sizes_and_marks_dynamic_ones():
    assert layer_output_shape(AdaptiveAvgPool2d((1, 1)), [(8, None, None)]) == (8, 1, 1)
    assert layer_output_shape(Conv2d(8, 4, 3, padding=1), [(8, None, None)]) == (4, None, None)
    assert layer_output_shape(Conv2d(8, 4, 3), [(8, 5, 6)]) == (4, 3, 4)
    assert layer_output_shape(Conv2d(8, 4, 3), [(7, 5, 6)]) is None  # the layer refuses it
