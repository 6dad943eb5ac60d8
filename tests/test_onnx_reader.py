"""dcnn's ONNX reader: files, inputs and outputs, errors (one each, naming the file), external data."""

import numpy as np
import pytest
from conftest import oracle, random_array

from dcnn.errors import InputError, ShapeError, WeightsError
from dcnn.exec.forward import Forward
from dcnn.network.graph import INPUT
from dcnn.network.layers import Dropout, ReLU
from dcnn.network.onnx import DYNAMIC_SIZE, UnsupportedModelError, is_onnx_path, load_onnx, max_opset
from dcnn.network.weights import validate_weights

onnx = oracle("onnx")
helper, numpy_helper = onnx.helper, onnx.numpy_helper


def save(
    tmp_path, nodes, x_shape=(1, 3, 8, 8), weights=None, opset=13, inputs=None, outputs=None, name="m.onnx", **options
):
    initializers = [numpy_helper.from_array(np.asarray(value), key) for key, value in (weights or {}).items()]
    graph = helper.make_graph(
        nodes,
        "g",
        inputs or [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, list(x_shape))],
        outputs or [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
        initializers,
    )
    model = onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", opset)]))
    path = tmp_path / name
    onnx.save(model, path, **options)
    return path


def conv_relu(tmp_path, rng, x_shape=(1, 3, 8, 8), **options):
    weights = {"W": random_array(rng, 4, 3, 3, 3), "B": random_array(rng, 4)}
    nodes = [
        helper.make_node("Conv", ["x", "W", "B"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    return save(tmp_path, nodes, x_shape, weights, **options), weights


def test_a_model_reads_into_a_network_and_its_weights(tmp_path, rng):
    path, weights = conv_relu(tmp_path, rng)
    model = load_onnx(path)
    assert model.network.name == "m" and [name for name, _ in model.network] == ["c", "y"]
    assert model.input_name == "x" and model.output_name == "y" and model.opset == 13
    assert model.input_dims == (1, 3, 8, 8) and model.network.input_shape == (3, 8, 8)
    assert model.network.fixed_input_size and not model.dynamic_size
    assert set(validate_weights(model.network, model.weights)) == {"c.weight", "c.bias"}
    np.testing.assert_array_equal(model.weights["c.weight"], weights["W"])


def test_a_fixed_input_size_is_checked_and_a_dynamic_one_is_not(tmp_path, rng):
    fixed = load_onnx(conv_relu(tmp_path, rng)[0])
    with pytest.raises(ShapeError, match="takes only 3x8x8"):
        fixed.network.shapes((3, 9, 8))
    dynamic = load_onnx(conv_relu(tmp_path, rng, ("N", 3, "H", "W"), name="d.onnx")[0])
    assert dynamic.input_dims == (None, 3, None, None) and dynamic.dynamic_size
    assert dynamic.network.input_shape == (3, DYNAMIC_SIZE, DYNAMIC_SIZE)
    assert dynamic.network.output_shape((3, 5, 7)) == (4, 5, 7)
    assert Forward(dynamic.network, dynamic.weights)(random_array(rng, 2, 3, 5, 7)).shape == (2, 4, 5, 7)


def test_unsupported_operators_are_all_listed_with_their_nodes(tmp_path):
    nodes = [
        helper.make_node("Floor", ["x"], ["f"], name="f1"),
        helper.make_node("Floor", ["f"], ["t"], name="f2"),
        helper.make_node("Transpose", ["t"], ["u"], perm=[0, 1, 3, 2], name="swap"),
        helper.make_node("LRN", ["u"], ["l"], size=4, name="norm"),
        helper.make_node("Pad", ["l", "pads"], ["p"], mode="reflect", name="pad"),
        helper.make_node("Relu", ["p"], ["y"], name="fine"),
        helper.make_node("Ceil", ["x"], ["dead"], name="unused"),
    ]
    path = save(tmp_path, nodes, weights={"pads": np.array([0, 0, 1, 1, 0, 0, 1, 1], np.int64)})
    with pytest.raises(UnsupportedModelError) as caught:
        load_onnx(path)
    message = str(caught.value)
    assert "\n" not in message and message.startswith(f"{path}: unsupported ONNX operators: ")
    assert "Floor (nodes f1, f2); Transpose (node swap: perm [0, 1, 3, 2]" in message
    assert "LRN (node norm: an even size 4" in message and "Pad (node pad: mode reflect)" in message
    assert "Ceil" not in message  # a node the output does not depend on is never run
    assert caught.value.nodes["Floor"] == [("f1", ""), ("f2", "")]
    assert isinstance(caught.value, InputError)


def test_an_unnamed_node_is_named_by_its_output(tmp_path):
    path = save(tmp_path, [helper.make_node("Floor", ["x"], ["y"])])
    with pytest.raises(UnsupportedModelError, match=r"Floor \(node y\)"):
        load_onnx(path)


def test_a_nonexistent_file(tmp_path):
    with pytest.raises(InputError, match="does not exist"):
        load_onnx(tmp_path / "none.onnx")


@pytest.mark.parametrize("damage", ["garbage", "truncated", "empty"])
def test_a_damaged_file_is_one_input_error(tmp_path, rng, damage):
    path, _ = conv_relu(tmp_path, rng)
    data = path.read_bytes()
    path.write_bytes(
        {"garbage": b"\x08\xff" + bytes(range(256)) * 4, "truncated": data[: len(data) // 2], "empty": b""}[damage]
    )
    with pytest.raises(InputError, match=rf"^{path}: (not a readable ONNX model|not an ONNX model|invalid ONNX)"):
        load_onnx(path)


def test_an_invalid_graph_is_one_input_error(tmp_path):
    path = save(tmp_path, [helper.make_node("Relu", ["nowhere"], ["y"])])
    with pytest.raises(InputError, match="invalid ONNX model"):
        load_onnx(path)


def test_opsets_outside_the_range_are_refused(tmp_path):
    path = save(tmp_path, [helper.make_node("Relu", ["x"], ["y"])], opset=6)
    with pytest.raises(InputError, match=f"opset 6; dcnn reads ONNX opsets 7 to {max_opset()}"):
        load_onnx(path)


@pytest.mark.parametrize(
    "inputs,message",
    [
        ([("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4]), ("z", onnx.TensorProto.FLOAT, [1, 3, 4, 4])], "has 2 .x, z."),
        ([("x", onnx.TensorProto.INT64, [1, 3, 4, 4])], "is int64 1x3x4x4"),
        ([("x", onnx.TensorProto.FLOAT, [1, 3, 4])], "is float32 1x3x4"),
        ([("x", onnx.TensorProto.FLOAT, [1, "C", 4, 4])], "with a fixed channel count"),
    ],
)
def test_the_one_input_must_be_float32_images(tmp_path, inputs, message):
    values = [helper.make_tensor_value_info(*spec) for spec in inputs]
    output = helper.make_tensor_value_info("y", inputs[0][1], inputs[0][2])
    nodes = [helper.make_node("Identity", ["x"], ["y"])]
    with pytest.raises(InputError, match=message):
        load_onnx(save(tmp_path, nodes, inputs=values, outputs=[output]))


def test_two_outputs_are_refused(tmp_path):
    nodes = [helper.make_node("Relu", ["x"], ["y"]), helper.make_node("Relu", ["x"], ["z"])]
    outputs = [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, None) for name in "yz"]
    with pytest.raises(InputError, match="one output, this one has 2"):
        load_onnx(save(tmp_path, nodes, outputs=outputs))


def test_initializers_listed_as_inputs_are_weights(tmp_path, rng):
    """Old exporters (IR version 3) list every initializer among the graph inputs too."""
    weights = {"W": random_array(rng, 2, 3, 1, 1)}
    inputs = [
        helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, [1, 3, 4, 4]),
        helper.make_tensor_value_info("W", onnx.TensorProto.FLOAT, [2, 3, 1, 1]),
    ]
    model = load_onnx(save(tmp_path, [helper.make_node("Conv", ["x", "W"], ["y"])], weights=weights, inputs=inputs))
    assert model.input_name == "x" and list(model.weights) == ["y.weight"]


def test_a_tensor_named_input_and_a_pass_through_graph(tmp_path):
    inputs = [helper.make_tensor_value_info("data", onnx.TensorProto.FLOAT, [1, 3, 4, 4])]
    nodes = [helper.make_node("Relu", ["data"], [INPUT]), helper.make_node("Relu", [INPUT], ["y"])]
    network = load_onnx(save(tmp_path, nodes, inputs=inputs)).network
    assert [name for name, _ in network] == [f"{INPUT}_", "y"] and network.inputs == ((INPUT,), (f"{INPUT}_",))
    identity = load_onnx(save(tmp_path, [helper.make_node("Identity", ["x"], ["y"])], name="i.onnx")).network
    assert identity.layers == (("y", Dropout(0.0)),)


def test_external_data_is_read_from_the_models_folder(tmp_path, rng):
    path, weights = conv_relu(
        tmp_path,
        rng,
        save_as_external_data=True,
        all_tensors_to_one_file=True,
        location="weights.bin",
        size_threshold=0,
    )
    assert (tmp_path / "weights.bin").stat().st_size >= weights["W"].nbytes
    model = load_onnx(path)
    np.testing.assert_array_equal(model.weights["c.weight"], weights["W"])
    (tmp_path / "weights.bin").unlink()
    with pytest.raises(InputError, match=rf"^{path}: "):
        load_onnx(path)


def test_is_onnx_path():
    assert is_onnx_path("models/ResNet50.ONNX") and is_onnx_path("a.onnx")
    assert not is_onnx_path("resnet50") and not is_onnx_path("onnx")


def test_a_pointwise_layer_follows_the_graph_order(tmp_path, rng):
    network = load_onnx(conv_relu(tmp_path, rng)[0]).network
    assert isinstance(network.layers[-1][1], ReLU) and network.is_chain


def test_inconsistent_or_non_finite_weights_are_refused(tmp_path, rng):
    """A file that passes the checker but whose tensors contradict the layer, or hold NaN (damage)."""
    weights = {"W": random_array(rng, 4, 3, 3, 3), "B": random_array(rng, 5)}
    path = save(tmp_path, [helper.make_node("Conv", ["x", "W", "B"], ["y"])], weights=weights)
    with pytest.raises(WeightsError, match=r"'y.bias' has shape \(5,\)"):
        load_onnx(path)
    weights = {"W": np.full((4, 3, 3, 3), np.nan, np.float32)}
    path = save(tmp_path, [helper.make_node("Conv", ["x", "W"], ["y"])], weights=weights, name="nan.onnx")
    with pytest.raises(WeightsError, match="NaN or infinite"):
        load_onnx(path)


def test_a_directory_is_not_a_model_file(tmp_path):
    (tmp_path / "dir.onnx").mkdir()
    with pytest.raises(InputError, match=r"dir\.onnx' is a directory, not a file"):
        load_onnx(tmp_path / "dir.onnx")


@pytest.mark.parametrize("x_shape", [(1, 16, 16, 3), ("N", "H", "W", 3)])
def test_a_channels_last_input_is_refused_with_the_conversion(tmp_path, rng, x_shape):
    """TensorFlow's layout (tf2onnx): N x H x W x C, transposed to channels-first inside the model."""
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "W"], ["y"]),
    ]
    path = save(tmp_path, nodes, x_shape, {"W": random_array(rng, 4, 3, 3, 3)})
    with pytest.raises(InputError) as caught:
        load_onnx(path)
    size = "x".join("?" if isinstance(d, str) else str(d) for d in x_shape)
    assert str(caught.value) == (
        f"{path}: input 'x' is channels-last ({size}: N x H x W x C, TensorFlow's layout, which the model "
        "transposes); dcnn runs channels-first N x C x H x W models: convert with tf2onnx --inputs-as-nchw x"
    )


@pytest.mark.parametrize("content", [b"", b"this is a text file, not a model\n"])
def test_a_file_of_another_format_is_not_an_onnx_model(tmp_path, content):
    path = tmp_path / "notes.onnx"
    path.write_bytes(content)
    with pytest.raises(
        InputError, match=rf"^{path}: not an ONNX model \(no ONNX IR version: empty, or another format\)$"
    ):
        load_onnx(path)


def test_a_model_of_a_newer_ir_version_is_named_as_such(tmp_path, rng):
    """The checker's complaint about a newer IR version is its own message, not "not an ONNX model"."""
    path, _ = conv_relu(tmp_path, rng)
    model = onnx.load(path)
    model.ir_version = 99
    onnx.save(model, path)
    with pytest.raises(InputError, match=r"invalid ONNX model \(Your model ir_version 99 is higher"):
        load_onnx(path)


def test_the_message_groups_the_nodes_of_one_reason_and_counts_the_rest(tmp_path):
    nodes = [helper.make_node("Floor", ["x" if i == 0 else f"f{i - 1}"], [f"f{i}"], name=f"floor{i}") for i in range(6)]
    nodes.append(helper.make_node("Relu", ["f5"], ["y"]))
    with pytest.raises(UnsupportedModelError) as caught:
        load_onnx(save(tmp_path, nodes))
    assert str(caught.value).endswith(
        "unsupported ONNX operators: Floor (nodes floor0, floor1, floor2, floor3 and 2 more)"
    )
    assert len(caught.value.nodes["Floor"]) == 6
