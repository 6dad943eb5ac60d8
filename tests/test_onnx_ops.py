"""Every operator of dcnn's ONNX reader against onnxruntime, on small models built with onnx.helper, at old and
new opsets (attribute forms before the opset that made them inputs, and the input forms after)."""

import numpy as np
import pytest
from conftest import oracle, random_array

from dcnn.exec.forward import Forward
from dcnn.network.layers import Affine, Clip, Pad2d, ReLU, ReLU6, Softmax
from dcnn.network.onnx import UnsupportedModelError, load_onnx

onnx = oracle("onnx")
ort = oracle("onnxruntime")
helper, numpy_helper = onnx.helper, onnx.numpy_helper

#: The newest opset the tests build (onnxruntime 1.17+ runs it); the oldest dcnn reads is 7.
NEW = 21


def build(nodes, x_shape, weights=None, opset=NEW, output="y", y_shape=None, input_name="x"):
    """A model of ``nodes`` reading float32 ``x`` of ``x_shape`` (None: a dynamic dimension)."""
    initializers = [numpy_helper.from_array(np.asarray(value), name) for name, value in (weights or {}).items()]
    graph = helper.make_graph(
        nodes,
        "case",
        [helper.make_tensor_value_info(input_name, onnx.TensorProto.FLOAT, list(x_shape))],
        [helper.make_tensor_value_info(output, onnx.TensorProto.FLOAT, y_shape)],
        initializers,
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)])
    model.ir_version = min(model.ir_version, 7 if opset < 15 else 8)
    return onnx.shape_inference.infer_shapes(model)  # the output's shape, which the checker requires


def compare(tmp_path, model, x, rtol=1e-4, atol=1e-5):
    """dcnn's output for ``x`` equals onnxruntime's; returns the loaded model."""
    path = tmp_path / "model.onnx"
    onnx.save(model, path)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    loaded = load_onnx(path, image_input=x.ndim == 4)
    got = Forward(loaded.network, loaded.weights)(x)
    assert got.shape == expected.shape
    np.testing.assert_allclose(got, expected, rtol=rtol, atol=atol)
    return loaded


def node(op, inputs, **attributes):
    return helper.make_node(op, inputs, ["y"], **attributes)


CONV_CASES = [
    dict(pads=[1, 1, 1, 1]),
    dict(group=2, dilations=[2, 1], strides=[2, 1], pads=[1, 0, 2, 1]),
    dict(auto_pad="SAME_UPPER", strides=[2, 2]),
    dict(auto_pad="SAME_LOWER", strides=[2, 2]),
    dict(auto_pad="VALID", strides=[1, 2]),
    dict(auto_pad="SAME_LOWER", strides=[1, 1]),
]


@pytest.mark.parametrize("opset", [7, NEW])
@pytest.mark.parametrize("attributes", CONV_CASES, ids=str)
def test_conv(tmp_path, rng, opset, attributes):
    groups = attributes.get("group", 1)
    weights = {"W": random_array(rng, 4, 4 // groups, 3, 3), "B": random_array(rng, 4)}
    model = build([node("Conv", ["x", "W", "B"], kernel_shape=[3, 3], **attributes)], [2, 4, 9, 8], weights, opset)
    compare(tmp_path, model, random_array(rng, 2, 4, 9, 8))


def test_conv_without_bias_and_a_depthwise_group(tmp_path, rng):
    model = build([node("Conv", ["x", "W"], group=3)], [1, 3, 7, 7], {"W": random_array(rng, 6, 1, 3, 3)})
    compare(tmp_path, model, random_array(rng, 1, 3, 7, 7))


POOL_CASES = [
    ("MaxPool", 7, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1])),
    ("MaxPool", 7, dict(kernel_shape=[2, 2], auto_pad="SAME_UPPER")),
    ("MaxPool", 10, dict(kernel_shape=[3, 3], strides=[2, 2], ceil_mode=1)),
    ("MaxPool", NEW, dict(kernel_shape=[2, 3], dilations=[2, 1], pads=[0, 1, 1, 0])),
    ("AveragePool", 7, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1], count_include_pad=1)),
    ("AveragePool", 7, dict(kernel_shape=[3, 3], pads=[1, 1, 1, 1])),
    ("AveragePool", 10, dict(kernel_shape=[3, 3], strides=[2, 2], pads=[1, 1, 1, 1], ceil_mode=1, count_include_pad=1)),
    ("AveragePool", NEW, dict(kernel_shape=[3, 2], strides=[2, 2], pads=[0, 1, 2, 0], count_include_pad=1)),
    ("AveragePool", NEW, dict(kernel_shape=[3, 3], strides=[2, 2], auto_pad="SAME_LOWER")),
]


@pytest.mark.parametrize("op,opset,attributes", POOL_CASES, ids=str)
def test_pools(tmp_path, rng, op, opset, attributes):
    model = build([node(op, ["x"], **attributes)], [2, 3, 8, 9], opset=opset)
    compare(tmp_path, model, random_array(rng, 2, 3, 8, 9))


@pytest.mark.parametrize("op", ["GlobalAveragePool", "GlobalMaxPool"])
def test_global_pools(tmp_path, rng, op):
    compare(tmp_path, build([node(op, ["x"])], [2, 3, 5, 7]), random_array(rng, 2, 3, 5, 7))


@pytest.mark.parametrize("opset", [7, 9, 15])
def test_batch_normalization(tmp_path, rng, opset):
    weights = {
        "s": random_array(rng, 3),
        "b": random_array(rng, 3),
        "m": random_array(rng, 3),
        "v": rng.random(3).astype(np.float32) + 0.5,
    }
    attributes = {"spatial": 1} if opset < 9 else {}
    model = build(
        [node("BatchNormalization", ["x", "s", "b", "m", "v"], epsilon=1e-3, **attributes)],
        [2, 3, 4, 4],
        weights,
        opset,
    )
    compare(tmp_path, model, random_array(rng, 2, 3, 4, 4))


ACTIVATIONS = [
    ("Relu", 7, {}),
    ("LeakyRelu", 7, dict(alpha=0.2)),
    ("Elu", 7, dict(alpha=0.5)),
    ("Sigmoid", 7, {}),
    ("HardSigmoid", 7, {}),
    ("HardSigmoid", NEW, dict(alpha=0.3, beta=0.4)),
    ("HardSwish", 14, {}),
    ("Tanh", 7, {}),
    ("Identity", 7, {}),
]


@pytest.mark.parametrize("op,opset,attributes", ACTIVATIONS, ids=str)
def test_activations(tmp_path, rng, op, opset, attributes):
    model = build(
        [helper.make_node("Relu", ["x"], ["r"]) if op == "Identity" else node(op, ["x"], **attributes)]
        + ([node("Identity", ["r"])] if op == "Identity" else []),
        [2, 3, 4, 5],
        opset=opset,
    )
    compare(tmp_path, model, 3 * random_array(rng, 2, 3, 4, 5))


@pytest.mark.parametrize("slope_shape", [(3, 1, 1), (1,), (1, 3, 1, 1)])
def test_prelu(tmp_path, rng, slope_shape):
    model = build([node("PRelu", ["x", "a"])], [2, 3, 4, 4], {"a": random_array(rng, *slope_shape)}, 9)
    compare(tmp_path, model, random_array(rng, 2, 3, 4, 4))


@pytest.mark.parametrize(
    "opset,bounds,layer",
    [
        (7, dict(min=-1.0, max=2.0), Clip),
        (7, dict(min=0.0, max=6.0), ReLU6),
        (7, dict(min=0.5), Clip),
        (NEW, (0.0, 6.0), ReLU6),
        (NEW, (0.0, None), ReLU),
        (NEW, (None, 1.5), Clip),
        (NEW, (-2.0, 0.5), Clip),
    ],
)
def test_clip_attributes_before_opset_11_and_inputs_since(tmp_path, rng, opset, bounds, layer):
    if isinstance(bounds, dict):
        model = build([node("Clip", ["x"], **bounds)], [1, 2, 3, 3], opset=opset)
    else:
        names = ["x", "" if bounds[0] is None else "lo", "hi" if bounds[1] is not None else ""]
        weights = {n: np.float32(v) for n, v in zip(["lo", "hi"], bounds) if v is not None}
        model = build([node("Clip", names if names[-1] else names[:2])], [1, 2, 3, 3], weights, opset)
    loaded = compare(tmp_path, model, 4 * random_array(rng, 1, 2, 3, 3))
    assert type(loaded.network.layers[-1][1]) is layer


@pytest.mark.parametrize("size", [3, 5])
def test_lrn(tmp_path, rng, size):
    model = build([node("LRN", ["x"], size=size, alpha=1e-3, beta=0.6, bias=1.5)], [1, 7, 4, 4])
    compare(tmp_path, model, random_array(rng, 1, 7, 4, 4))


@pytest.mark.parametrize(
    "attributes,b_shape,c_shape",
    [
        ({}, (6, 4), (4,)),
        (dict(transB=1, alpha=0.5, beta=2.0), (4, 6), (1, 4)),
        ({}, (6, 4), ()),
        ({}, (6, 4), None),
    ],
)
def test_gemm(tmp_path, rng, attributes, b_shape, c_shape):
    weights = {"B": random_array(rng, *b_shape)}
    inputs = ["f", "B"]
    if c_shape is not None:
        weights["C"] = random_array(rng, *c_shape)
        inputs.append("C")
    nodes = [helper.make_node("Flatten", ["x"], ["f"]), node("Gemm", inputs, **attributes)]
    compare(tmp_path, build(nodes, [2, 6, 1, 1], weights, 11), random_array(rng, 2, 6, 1, 1))


def test_matmul_with_a_bias_add_on_rows(tmp_path, rng):
    nodes = [helper.make_node("MatMul", ["x", "B"], ["m"]), node("Add", ["m", "c"])]
    model = build(nodes, [3, 6], {"B": random_array(rng, 6, 4), "c": random_array(rng, 4)})
    loaded = compare(tmp_path, model, random_array(rng, 3, 6))
    assert isinstance(loaded.network.layers[-1][1], Affine)


@pytest.mark.parametrize(
    "opset,make",
    [
        (7, lambda: [helper.make_node("Flatten", ["x"], ["y"])]),
        (11, lambda: [helper.make_node("Flatten", ["x"], ["y"], axis=-3)]),
        (7, lambda: [helper.make_node("Reshape", ["x", "s"], ["y"])]),
        (11, lambda: [helper.make_node("Squeeze", ["p"], ["y"], axes=[2, 3])]),
        (NEW, lambda: [helper.make_node("Squeeze", ["p", "axes"], ["y"])]),
    ],
    ids=["flatten", "flatten-negative-axis", "reshape", "squeeze-attribute", "squeeze-input"],
)
def test_flattening_reshapes(tmp_path, rng, opset, make):
    weights = {"s": np.array([0, -1], np.int64), "axes": np.array([-1, 2], np.int64)}
    nodes = [helper.make_node("GlobalAveragePool", ["x"], ["p"]), *make()]
    model = build(nodes, [2, 3, 4, 4], weights, opset)
    loaded = compare(tmp_path, model, random_array(rng, 2, 3, 4, 4))
    assert loaded.network.output_shape() in ((3,), (48,))


def test_reshape_to_the_models_own_batch_of_one(tmp_path, rng):
    model = build([node("Reshape", ["x", "s"])], [1, 2, 3, 3], {"s": np.array([1, 18], np.int64)})
    compare(tmp_path, model, random_array(rng, 1, 2, 3, 3))


@pytest.mark.parametrize("opset", [7, 11, NEW])
def test_unsqueezed_constants_scale_and_shift_channels(tmp_path, rng, opset):
    """DenseNet's light model: Unsqueeze of a (C,) vector to (C, 1, 1), then Mul and Add (folded constants)."""
    weights = {"g": random_array(rng, 3), "h": random_array(rng, 3), "axes": np.array([1, 2], np.int64)}
    unsqueeze = (
        (lambda name, out: helper.make_node("Unsqueeze", [name], [out], axes=[1, 2]))
        if opset < 13
        else (lambda name, out: helper.make_node("Unsqueeze", [name, "axes"], [out]))
    )
    nodes = [
        unsqueeze("g", "g3"),
        unsqueeze("h", "h3"),
        helper.make_node("Mul", ["x", "g3"], ["m"]),
        node("Add", ["h3", "m"]),
    ]
    loaded = compare(tmp_path, build(nodes, [2, 3, 4, 4], weights, opset), random_array(rng, 2, 3, 4, 4))
    assert [type(layer) for _, layer in loaded.network] == [Affine, Affine]


def test_residual_sum_gates_and_concat(tmp_path, rng):
    weights = {"W": random_array(rng, 3, 3, 3, 3), "V": random_array(rng, 3, 3, 1, 1)}
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["r"]),
        helper.make_node("Sum", ["x", "c", "r"], ["s"]),
        helper.make_node("GlobalAveragePool", ["s"], ["g"]),
        helper.make_node("Conv", ["g", "V"], ["gv"]),
        helper.make_node("Sigmoid", ["gv"], ["gate"]),
        helper.make_node("Mul", ["gate", "s"], ["m"]),
        helper.make_node("Add", ["m", "x"], ["a"]),
        node("Concat", ["a", "r", "x"], axis=1),
    ]
    compare(tmp_path, build(nodes, [2, 3, 5, 5], weights), random_array(rng, 2, 3, 5, 5))


@pytest.mark.parametrize(
    "opset,attributes,inputs",
    [
        (7, {"ratio": 0.3}, ["x"]),
        (NEW, {}, ["x", "ratio"]),
        (NEW, {}, ["x", "ratio", "training"]),
    ],
)
def test_dropout_is_the_identity(tmp_path, rng, opset, attributes, inputs):
    weights = {"ratio": np.float32(0.4), "training": np.array(False)}
    nodes = [
        helper.make_node("Dropout", inputs, ["d", "mask"] if opset >= 12 else ["d"], **attributes),
        node("Relu", ["d"]),
    ]
    compare(tmp_path, build(nodes, [1, 2, 3, 3], weights, opset), random_array(rng, 1, 2, 3, 3))


@pytest.mark.parametrize(
    "opset,axis,shape,per_image_axis",
    [
        (11, 1, [2, 3, 2, 2], None),  # before opset 13: over every value of an image
        (11, 3, [2, 3, 2, 2], 2),  # ... from the last axis: along it alone
        (13, 1, [2, 3, 2, 2], 0),  # since opset 13: along the channels alone
        (13, -1, [2, 3, 2, 4], 2),
        (11, 1, [2, 5], None),
        (NEW, -1, [2, 5], None),
    ],
)
def test_softmax_axis_before_and_after_opset_13(tmp_path, rng, opset, axis, shape, per_image_axis):
    model = build([node("Softmax", ["x"], axis=axis)], shape, opset=opset)
    loaded = compare(tmp_path, model, random_array(rng, *shape))
    assert loaded.network.layers[-1][1] == Softmax(per_image_axis)


@pytest.mark.parametrize("opset,value", [(7, 0.0), (7, 1.5), (11, 0.0), (NEW, -2.0), (18, 0.5)])
def test_constant_pad(tmp_path, rng, opset, value):
    if opset < 11:
        nodes = [node("Pad", ["x"], pads=[0, 0, 1, 2, 0, 0, 3, 0], value=value)]
        weights = {}
    elif opset < 18:
        nodes = [node("Pad", ["x", "pads", "value"])]
        weights = {"pads": np.array([0, 0, 1, 2, 0, 0, 3, 0], np.int64), "value": np.float32(value)}
    else:
        nodes = [node("Pad", ["x", "pads", "value", "axes"])]
        weights = {
            "pads": np.array([1, 2, 3, 0], np.int64),
            "value": np.float32(value),
            "axes": np.array([-2, 3], np.int64),
        }
    loaded = compare(tmp_path, build(nodes, [1, 2, 3, 4], weights, opset), random_array(rng, 1, 2, 3, 4))
    assert loaded.network.layers[-1][1] == Pad2d((1, 3, 2, 0), value)


def test_weights_from_constant_and_constant_of_shape_nodes(tmp_path, rng):
    w = random_array(rng, 2, 3, 1, 1)
    nodes = [
        helper.make_node("Constant", [], ["W"], value=numpy_helper.from_array(w)),
        helper.make_node(
            "ConstantOfShape", ["shape"], ["B"], value=numpy_helper.from_array(np.array([0.25], np.float32))
        ),
        node("Conv", ["x", "W", "B"]),
    ]
    model = build(nodes, [1, 3, 4, 4], {"shape": np.array([2], np.int64)}, 9)
    compare(tmp_path, model, random_array(rng, 1, 3, 4, 4))


def test_the_installed_onnx_latest_opset_is_read(tmp_path, rng):
    """onnxruntime may lag the newest opset; the reader must not: compare with the same model at NEW."""
    latest = onnx.defs.onnx_opset_version()
    weights = {"W": random_array(rng, 2, 3, 3, 3)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), node("Relu", ["c"])]
    x = random_array(rng, 1, 3, 5, 5)
    outputs = []
    for opset in (NEW, latest):
        path = tmp_path / f"m{opset}.onnx"
        onnx.save(build(nodes, [1, 3, 5, 5], weights, opset), path)
        loaded = load_onnx(path)
        assert loaded.opset == opset
        outputs.append(Forward(loaded.network, loaded.weights)(x))
    np.testing.assert_array_equal(*outputs)


@pytest.mark.parametrize("opset", [7, NEW])
def test_channel_shuffle_as_reshape_transpose_reshape(tmp_path, rng, opset):
    """ShuffleNet's shuffle as its ONNX export writes it; random weights, so a wrong permutation shows."""
    weights = {
        "W": random_array(rng, 6, 6, 1, 1),
        "split": np.array([2, 2, 3, 4, 5], np.int64),
        "merge": np.array([2, 6, 4, 5], np.int64),
    }
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"]),
        helper.make_node("Reshape", ["c", "split"], ["g"]),
        helper.make_node("Transpose", ["g"], ["t"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Reshape", ["t", "merge"], ["s"]),
        node("Relu", ["s"]),
    ]
    loaded = compare(tmp_path, build(nodes, [2, 6, 4, 5], weights, opset), random_array(rng, 2, 6, 4, 5))
    assert [layer.kind for _, layer in loaded.network] == ["conv", "shuffle", "relu"]


def test_other_transposes_are_refused(tmp_path, rng):
    model = build([node("Transpose", ["x"], perm=[0, 1, 3, 2])], [1, 2, 3, 4])
    onnx.save(model, tmp_path / "t.onnx")
    with pytest.raises(UnsupportedModelError, match=r"Transpose \(node y: perm \[0, 1, 3, 2\]"):
        load_onnx(tmp_path / "t.onnx")


@pytest.mark.parametrize("op", ["ReduceMean", "ReduceMax"])
@pytest.mark.parametrize("opset", [13, NEW])
@pytest.mark.parametrize("keepdims", [0, 1])
def test_reductions_over_height_and_width(tmp_path, rng, op, opset, keepdims):
    """``x.mean((2, 3))``: axes an attribute before opset 18, an input since; keepdims 1 keeps (N, C, 1, 1)."""
    if opset < 18:
        nodes = [node(op, ["x"], axes=[-1, 2], keepdims=keepdims)]
    else:
        nodes = [node(op, ["x", "axes"], keepdims=keepdims)]
    model = build(nodes, [2, 3, 5, 4], {"axes": np.array([-1, 2], np.int64)}, opset)
    loaded = compare(tmp_path, model, random_array(rng, 2, 3, 5, 4))
    assert loaded.network.output_shape() == ((3,) if keepdims == 0 else (3, 1, 1))


def test_reductions_over_other_axes_are_refused(tmp_path):
    model = build([node("ReduceMean", ["x"], axes=[1])], [1, 2, 3, 4], opset=13)
    onnx.save(model, tmp_path / "r.onnx")
    with pytest.raises(UnsupportedModelError, match=r"ReduceMean \(node y: axes \[1\]"):
        load_onnx(tmp_path / "r.onnx")


def _view_of_the_batch(scale_batch: bool, allow_zero: int = 0):
    """``x.view(x.size(0), -1)`` as the exporter writes it for a dynamic batch (``scale_batch``: ``2 * x.size(0)``,
    arithmetic on the batch size; ``allow_zero``: the Reshape's attribute, 1 from PyTorch's dynamo exporter)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
    ]
    if scale_batch:
        nodes.append(helper.make_node("Mul", ["n1", "two"], ["n2"]))
    nodes += [
        helper.make_node("Concat", ["n2" if scale_batch else "n1", "rest"], ["target"], axis=0),
        node("Reshape", ["x", "target"], allowzero=allow_zero),
    ]
    weights = {
        "zero": np.array(0, np.int64),
        "axes": np.array([0], np.int64),
        "two": np.array([2], np.int64),
        "rest": np.array([-1], np.int64),
    }
    return build(nodes, ["N", 3, 4, 4], weights)


@pytest.mark.parametrize("allow_zero", [0, 1])
def test_a_view_that_keeps_the_dynamic_batch(tmp_path, rng, allow_zero):
    loaded = compare(tmp_path, _view_of_the_batch(False, allow_zero), random_array(rng, 3, 3, 4, 4))
    assert [layer.kind for _, layer in loaded.network] == ["flatten"]


def test_arithmetic_on_the_batch_size_is_refused(tmp_path):
    onnx.save(_view_of_the_batch(True), tmp_path / "v.onnx")
    with pytest.raises(UnsupportedModelError, match=r"Mul \(node n2: arithmetic on the batch size"):
        load_onnx(tmp_path / "v.onnx")


def test_the_sizes_of_a_map_of_dynamic_size(tmp_path, rng):
    """``n, c = x.shape[:2]; x.mean((2, 3)).view(n, c)`` on a map of dynamic height and width: the Shape folds
    (its fixed channel count is used, its dynamic sizes are not)."""
    nodes = [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Gather", ["shape", "one"], ["c"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        helper.make_node("Unsqueeze", ["c", "axes"], ["c1"]),
        helper.make_node("Concat", ["n1", "c1"], ["target"], axis=0),
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        node("Reshape", ["pooled", "target"]),
    ]
    weights = {"zero": np.array(0, np.int64), "one": np.array(1, np.int64), "axes": np.array([0], np.int64)}
    loaded = compare(tmp_path, build(nodes, ["N", 3, "H", "W"], weights), random_array(rng, 2, 3, 5, 7))
    assert [layer.kind for _, layer in loaded.network] == ["adaptiveavgpool", "flatten"]


def test_a_reshape_to_a_dynamic_height_or_width_is_refused(tmp_path):
    """The Shape folds; its dynamic sizes in a reshape target are refused there, and only there: the nodes after
    the refused one (whose shapes are unknown) are not listed."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "order"], ["swapped"], axis=0),
        helper.make_node("Reshape", ["x", "swapped"], ["r"], name="reshape"),
        helper.make_node("Transpose", ["r"], ["t"], perm=[0, 2, 1, 3]),
        node("Relu", ["t"]),
    ]
    onnx.save(build(nodes, ["N", 3, "H", "W"], {"order": np.array([0, 2, 1, 3], np.int64)}), tmp_path / "s.onnx")
    with pytest.raises(UnsupportedModelError) as caught:
        load_onnx(tmp_path / "s.onnx")
    assert list(caught.value.nodes) == ["Reshape"]
    assert "Reshape (node reshape: a dynamic height or width in the target shape" in str(caught.value)


def test_arithmetic_on_a_dynamic_height_is_refused(tmp_path):
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Mul", ["s", "two"], ["doubled"], name="double"),
        node("Reshape", ["x", "doubled"]),
    ]
    onnx.save(build(nodes, [1, 3, "H", 4], {"two": np.array([1, 1, 2, 1], np.int64)}), tmp_path / "m.onnx")
    with pytest.raises(UnsupportedModelError, match=r"Mul \(node double: arithmetic on a dynamic height or width"):
        load_onnx(tmp_path / "m.onnx")


@pytest.mark.parametrize("opset", [11, NEW])
def test_a_computed_view_followed_by_a_fully_connected_layer(tmp_path, rng, opset):
    """``x.reshape(x.shape[0], -1)`` then ``nn.Linear`` as PyTorch exports it (Constant nodes): ONNX's shape
    inference leaves the Reshape's output unknown (its target is computed), so the layers dcnn made of it give the
    Gemm its input's shape."""

    def constant(name, value):
        return helper.make_node("Constant", [], [name], value=numpy_helper.from_array(np.array(value, np.int64)))

    nodes = [
        helper.make_node("GlobalAveragePool", ["x"], ["pooled"]),
        helper.make_node("Shape", ["pooled"], ["shape"]),
        constant("zero", 0),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n"], ["n1"], axes=[0])
        if opset < 13
        else helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
        constant("rest", [-1]),
        helper.make_node("Concat", ["n1", "rest"], ["target"], axis=0),
        helper.make_node("Reshape", ["pooled", "target"], ["flat"]),
        helper.make_node("Gemm", ["flat", "B", "C"], ["fc"], transB=1),
        node("Relu", ["fc"]),
    ]
    weights = {"axes": np.array([0], np.int64), "B": random_array(rng, 5, 3), "C": random_array(rng, 5)}
    model = build(nodes, ["N", 3, "H", "W"], weights, opset, y_shape=["N", 5])
    flat = [value.type.tensor_type for value in model.graph.value_info if value.name == "flat"]
    unknown = not flat or not flat[0].HasField("shape") or any(not d.HasField("dim_value") for d in flat[0].shape.dim)
    assert unknown, "the case is a Reshape output of a shape ONNX's inference does not know"
    loaded = compare(tmp_path, model, random_array(rng, 3, 3, 4, 5))
    assert [layer.kind for _, layer in loaded.network] == ["adaptiveavgpool", "flatten", "fc", "relu"]


def test_a_batch_fixed_in_a_model_of_dynamic_batch_is_refused_with_the_reason(tmp_path):
    """``x.reshape(len(x), -1)`` traced: the batch of the export became a constant of the target shape."""
    model = build([node("Reshape", ["x", "target"])], ["N", 3, 2, 2], {"target": np.array([2, -1], np.int64)})
    onnx.save(model, tmp_path / "r.onnx")
    with pytest.raises(UnsupportedModelError, match=r"fixes the batch at 2 in a model of dynamic batch .* len\(x\)"):
        load_onnx(tmp_path / "r.onnx")


@pytest.mark.parametrize("opset", [7, NEW])
@pytest.mark.parametrize(
    "op,constant_first,shape",
    [("Sub", False, (3, 1, 1)), ("Sub", True, (1,)), ("Div", False, (3, 1, 1)), ("Div", False, ())],
)
def test_sub_and_div_by_constants(tmp_path, rng, opset, op, constant_first, shape):
    """``(x - mean) / std`` in the model, ``1 - x``, ``x / 6``: per-channel affine layers."""
    value = rng.random(shape).astype(np.float32) + 0.5
    inputs = ["c", "x"] if constant_first else ["x", "c"]
    loaded = compare(
        tmp_path, build([node(op, inputs)], [2, 3, 4, 5], {"c": value}, opset), random_array(rng, 2, 3, 4, 5)
    )
    assert [type(layer) for _, layer in loaded.network] == [Affine]


def test_sub_of_two_tensors(tmp_path, rng):
    weights = {"W": random_array(rng, 3, 3, 3, 3)}
    nodes = [helper.make_node("Conv", ["x", "W"], ["c"], pads=[1, 1, 1, 1]), node("Sub", ["x", "c"])]
    loaded = compare(tmp_path, build(nodes, [2, 3, 5, 5], weights), random_array(rng, 2, 3, 5, 5))
    assert [layer.kind for _, layer in loaded.network] == ["conv", "affine", "add"]


def test_a_constant_divided_by_a_tensor_is_refused(tmp_path):
    onnx.save(build([node("Div", ["c", "x"])], [1, 3, 2, 2], {"c": np.float32(2)}), tmp_path / "d.onnx")
    with pytest.raises(UnsupportedModelError, match=r"Div \(node y: a division by a tensor\)"):
        load_onnx(tmp_path / "d.onnx")


def test_swish_is_silu(tmp_path, rng):
    """``Swish`` (opset 24) with alpha 1 is SiLU; other alphas are refused."""
    x = random_array(rng, 2, 3, 4, 5)
    path = tmp_path / "s.onnx"
    onnx.save(build([node("Swish", ["x"])], [2, 3, 4, 5], opset=24), path)
    loaded = load_onnx(path)
    np.testing.assert_allclose(Forward(loaded.network, loaded.weights)(x), x / (1 + np.exp(-x)), rtol=1e-5, atol=1e-6)
    onnx.save(build([node("Swish", ["x"], alpha=2.0)], [2, 3, 4, 5], opset=24), path)
    with pytest.raises(UnsupportedModelError, match=r"Swish \(node y: alpha 2 \(dcnn runs SiLU"):
        load_onnx(path)


@pytest.mark.parametrize(
    "op,inputs,reason",
    [
        ("Resize", ["x", "", "scales"], "upsampling"),
        ("Erf", ["x"], "the error function of GELU"),
        ("LogSoftmax", ["x"], "dcnn has no log-softmax"),
        ("ConvTranspose", ["x", "kernel"], "a transposed convolution"),
    ],
)
def test_known_operators_are_refused_with_the_reason(tmp_path, op, inputs, reason):
    weights = {"scales": np.array([1, 1, 2, 2], np.float32), "kernel": np.ones((4, 2, 2, 2), np.float32)}
    nodes = [helper.make_node(op, inputs, ["y"])]
    onnx.save(build(nodes, [1, 4, 2, 2], weights, opset=13), tmp_path / "k.onnx")
    with pytest.raises(UnsupportedModelError, match=rf"{op} \(node y: {reason}"):
        load_onnx(tmp_path / "k.onnx")


@pytest.mark.parametrize("power", [1, 2, 3])
def test_integer_powers(tmp_path, rng, power):
    """``x ** 3`` of GELU's tanh approximation (PyTorch's dynamo exporter writes Pow): products of the input."""
    model = build(
        [helper.make_node("Relu", ["x"], ["r"]), node("Pow", ["r", "p"])], [2, 3, 4, 5], {"p": np.float32(power)}
    )
    loaded = compare(tmp_path, model, random_array(rng, 2, 3, 4, 5))
    assert [layer.kind for _, layer in loaded.network] == ["relu"] + ["mul"] * (power - 1)


def test_other_powers_are_refused(tmp_path):
    onnx.save(build([node("Pow", ["x", "p"])], [1, 3, 2, 2], {"p": np.float32(0.5)}), tmp_path / "p.onnx")
    with pytest.raises(UnsupportedModelError, match=r"Pow \(node y: exponent 0.5 \(dcnn runs integer powers 1 to 4"):
        load_onnx(tmp_path / "p.onnx")


def test_sizes_computed_from_a_dynamic_height_are_refused_once(tmp_path):
    """PyTorch's dynamo exporter writes an adaptive pool on a map of dynamic size as arithmetic on its height and
    width feeding a view: the arithmetic is refused, and what it feeds (a scalar reshaped, once an IndexError
    reported as an invalid model) is not listed."""
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        helper.make_node("Gather", ["s", "two"], ["h"], axis=0),
        helper.make_node("Div", ["h", "two"], ["half"], name="floordiv"),
        helper.make_node("Mul", ["half", "three"], ["m"]),
        helper.make_node("Reshape", ["m", "one"], ["m1"]),
        helper.make_node("Concat", ["batch", "m1"], ["target"], axis=0),
        node("Reshape", ["x", "target"], allowzero=1),
    ]
    weights = {
        "two": np.array(2, np.int64),
        "three": np.array(3, np.int64),
        "one": np.array([1], np.int64),
        "batch": np.array([1], np.int64),
    }
    onnx.save(build(nodes, [1, 3, "H", 4], weights, opset=18), tmp_path / "a.onnx")
    with pytest.raises(UnsupportedModelError) as caught:
        load_onnx(tmp_path / "a.onnx")
    assert caught.value.nodes == {
        "Div": [("floordiv", "arithmetic on a dynamic height or width (export with a fixed input size)")]
    }


def _channel_shuffle_of_dynamic_size(groups: int, x_shape, rng):
    """ShuffleNet's ``n, c, h, w = x.size(); x.view(n, g, c // g, h, w).transpose(1, 2).reshape(n, -1, h, w)`` as
    the exporter writes it for a dynamic batch (and height and width), then ``x.reshape(x.shape)``, a mean over
    height and width and a fully connected layer (whose input's shape ONNX's inference does not know)."""
    gathers = [helper.make_node("Gather", ["s", f"i{axis}"], [f"d{axis}"], axis=0) for axis in range(4)]
    unsqueezed = [helper.make_node("Unsqueeze", [f"d{axis}", "axes"], [f"u{axis}"]) for axis in range(4)]
    nodes = [
        helper.make_node("Shape", ["x"], ["s"]),
        *gathers,
        *unsqueezed,
        helper.make_node("Div", ["u1", "g"], ["per_group"]),
        helper.make_node("Concat", ["u0", "g", "per_group", "u2", "u3"], ["split"], axis=0),
        helper.make_node("Reshape", ["x", "split"], ["grouped"]),
        helper.make_node("Transpose", ["grouped"], ["shuffled"], perm=[0, 2, 1, 3, 4]),
        helper.make_node("Concat", ["u0", "minus_one", "u2", "u3"], ["merge"], axis=0),
        helper.make_node("Reshape", ["shuffled", "merge"], ["merged"]),
        helper.make_node("Shape", ["merged"], ["own"]),
        helper.make_node("Reshape", ["merged", "own"], ["same"]),
        helper.make_node("ReduceMean", ["same"], ["mean"], axes=[2, 3], keepdims=0),
        node("Gemm", ["mean", "B"], transB=1),
    ]
    weights = {f"i{axis}": np.array(axis, np.int64) for axis in range(4)}
    weights |= {"axes": np.array([0], np.int64), "g": np.array([groups], np.int64), "minus_one": np.array([-1])}
    weights["B"] = random_array(rng, 4, 6)
    return build(nodes, x_shape, weights, opset=13, y_shape=["N", 4])


@pytest.mark.parametrize("x_shape", [["N", 6, "H", "W"], ["N", 6, 5, 7]])
def test_a_channel_shuffle_of_dynamic_size(tmp_path, rng, x_shape):
    model = _channel_shuffle_of_dynamic_size(3, x_shape, rng)
    loaded = compare(tmp_path, model, random_array(rng, 2, 6, 5, 7))
    assert [layer.kind for _, layer in loaded.network] == ["shuffle", "adaptiveavgpool", "flatten", "fc"]


@pytest.mark.parametrize("opset", [7, 10, NEW])
@pytest.mark.parametrize("rows", [False, True])
def test_channel_slices(tmp_path, rng, opset, rows):
    """``x[:, 1:4]``, ``x[:, ::2]``, ``x[:, -2:]`` of maps and rows: starts and ends attributes before opset 10,
    inputs since (steps too). Each is an exact channel selection."""
    shape = [2, 5] if rows else [2, 5, 3, 4]
    cases = [(1, 4, 1), (0, 2**62, 2), (-2, 2**62, 1)] if opset >= 10 else [(1, 4, 1), (-2, 2**62, 1)]
    nodes, weights, outputs = [], {}, []
    for index, (start, end, step) in enumerate(cases):
        if opset < 10:
            nodes.append(helper.make_node("Slice", ["x"], [f"s{index}"], starts=[start], ends=[end], axes=[1]))
        else:
            names = [f"{key}{index}" for key in ("b", "e", "a", "t")]
            weights |= dict(zip(names, (np.array([v], np.int64) for v in (start, end, 1, step))))
            nodes.append(helper.make_node("Slice", ["x", *names], [f"s{index}"]))
        outputs.append(f"s{index}")
    nodes.append(node("Concat", outputs, axis=1))
    x = random_array(rng, *shape)
    loaded = compare(tmp_path, build(nodes, shape, weights, opset), x, rtol=0, atol=0)
    assert {layer.kind for _, layer in loaded.network} == {"fc" if rows else "conv", "concat"}


@pytest.mark.parametrize("opset,sizes", [(11, [2, 4]), (13, [3, 3]), (18, None)])
def test_channel_splits(tmp_path, rng, opset, sizes):
    """``x.split([2, 4], 1)`` and ``x.chunk(2, 1)``: the sizes an attribute, an input, or ``num_outputs``; the
    outputs in swapped order, and an output the graph does not use computes nothing."""
    attributes = {"axis": 1}
    weights = {}
    inputs = ["x"]
    if opset < 13:
        attributes["split"] = sizes
    elif sizes is not None:
        weights["sizes"] = np.array(sizes, np.int64)
        inputs.append("sizes")
    else:
        attributes["num_outputs"] = 3
    outputs = ["a", "b"] if opset < 18 else ["a", "b", "unused"]
    nodes = [
        helper.make_node("Split", inputs, outputs, **attributes),
        helper.make_node("Relu", ["a"], ["r"]),
        node("Concat", ["b", "r"], axis=1),
    ]
    x = random_array(rng, 2, 6, 3, 4)
    loaded = compare(tmp_path, build(nodes, [2, 6, 3, 4], weights, opset), x)
    assert [layer.kind for _, layer in loaded.network].count("conv") == 2


def test_slices_of_other_axes_are_refused(tmp_path):
    weights = {"b": np.array([1], np.int64), "e": np.array([3], np.int64), "a": np.array([2], np.int64)}
    onnx.save(build([node("Slice", ["x", "b", "e", "a"])], [1, 3, 4, 4], weights), tmp_path / "s.onnx")
    with pytest.raises(UnsupportedModelError, match=r"Slice \(node y: a slice of axis 2 \(dcnn slices channels"):
        load_onnx(tmp_path / "s.onnx")


def test_splits_of_other_axes_are_refused(tmp_path):
    onnx.save(
        build([helper.make_node("Split", ["x"], ["y", "z"], axis=2)], [1, 3, 4, 4], opset=13), tmp_path / "s.onnx"
    )
    with pytest.raises(UnsupportedModelError, match=r"Split \(node y: a split of axis 2 \(dcnn splits channels"):
        load_onnx(tmp_path / "s.onnx")


@pytest.mark.parametrize("opset", [7, NEW])
def test_batch_normalization_of_rows(tmp_path, rng, opset):
    """``nn.BatchNorm1d`` after a fully connected layer: a per-feature affine layer."""
    weights = {
        "B": random_array(rng, 4, 6),
        "s": random_array(rng, 6),
        "b": random_array(rng, 6),
        "m": random_array(rng, 6),
        "v": rng.random(6).astype(np.float32) + 0.5,
    }
    nodes = [
        helper.make_node("MatMul", ["x", "B"], ["fc"]),
        node("BatchNormalization", ["fc", "s", "b", "m", "v"], epsilon=1e-3, **({"spatial": 1} if opset < 9 else {})),
    ]
    loaded = compare(tmp_path, build(nodes, [3, 4], weights, opset), random_array(rng, 3, 4))
    assert [layer.kind for _, layer in loaded.network] == ["fc", "affine"]


def _batch_size_nodes():
    """``n = x.size(0)`` as a one-element tensor, the way the exporter computes it."""
    return [
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "zero"], ["n"], axis=0),
        helper.make_node("Unsqueeze", ["n", "axes"], ["n1"]),
    ]


SIZES = {"zero": np.array(0, np.int64), "axes": np.array([0], np.int64)}


def test_a_constant_of_the_batch_size_is_refused_before_it_is_made(tmp_path):
    """``torch.zeros(x.size(0), 48)``: refused, not an array of the marker's size (hundreds of GiB)."""
    nodes = [
        *_batch_size_nodes(),
        helper.make_node("Concat", ["n1", "width"], ["dims"], axis=0),
        helper.make_node("ConstantOfShape", ["dims"], ["zeros"], name="zeros"),
        helper.make_node("Flatten", ["x"], ["flat"]),
        node("Add", ["flat", "zeros"]),
    ]
    onnx.save(build(nodes, ["N", 3, 4, 4], {**SIZES, "width": np.array([48], np.int64)}), tmp_path / "z.onnx")
    with pytest.raises(UnsupportedModelError, match=r"ConstantOfShape \(node zeros: arithmetic on the batch size"):
        load_onnx(tmp_path / "z.onnx")


def test_a_slice_by_the_batch_size_is_refused(tmp_path):
    """``x[:, :x.size(0)]``: the sizes are reshape targets only, never a computed tensor's operand."""
    nodes = [*_batch_size_nodes(), node("Slice", ["x", "start", "n1", "channel"])]
    weights = {**SIZES, "start": np.array([0], np.int64), "channel": np.array([1], np.int64)}
    onnx.save(build(nodes, ["N", 3, 4, 4], weights), tmp_path / "s.onnx")
    with pytest.raises(UnsupportedModelError, match=r"Slice \(node y: the batch size as an operand"):
        load_onnx(tmp_path / "s.onnx")


def test_a_reshape_by_another_maps_height_and_width_is_refused(tmp_path, rng):
    """``c.view(n, -1, h, w)`` with ``h, w`` of the input and ``c`` a strided convolution of it: its own height
    and width differ, so keeping "the map's own" would be wrong."""
    nodes = [
        helper.make_node("Conv", ["x", "W"], ["c"], strides=[2, 2]),
        helper.make_node("Shape", ["x"], ["shape"]),
        helper.make_node("Gather", ["shape", "picked"], ["dims"], axis=0),
        helper.make_node("Concat", ["dims", "rest"], ["nhw"], axis=0),
        helper.make_node("Gather", ["nhw", "order"], ["target"], axis=0),
        helper.make_node("Reshape", ["c", "target"], ["y"], name="view"),
    ]
    weights = {
        "W": random_array(rng, 12, 3, 2, 2),
        "picked": np.array([0, 2, 3], np.int64),
        "rest": np.array([-1], np.int64),
        "order": np.array([0, 3, 1, 2], np.int64),
    }
    onnx.save(build(nodes, ["N", 3, "H", "W"], weights), tmp_path / "v.onnx")
    with pytest.raises(UnsupportedModelError, match=r"Reshape \(node view: a target shape with another tensor's"):
        load_onnx(tmp_path / "v.onnx")
