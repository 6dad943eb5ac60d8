"""Model files around the reader: --model names, --preprocess, fixed and dynamic input sizes, image-set checks."""

import h5py
import numpy as np
import pytest
from conftest import oracle

from dcnn.errors import InputError, ShapeError
from dcnn.exec.imported import (
    ONNX_PACKAGE_BYTES,
    READER_COPIES,
    check_image_set,
    dims_text,
    load_model_file,
    model_input,
    preprocessing_for,
    reader_bytes,
)
from dcnn.exec.workloads import is_model_file, workload_input
from dcnn.io.images import open_image_set
from dcnn.network.graph import IMAGENET, raw_pixels


def conv_model(path, dims, channels=3):
    """A one-convolution ONNX model (3x3, padding 1, then ReLU) with input ``dims`` (None: dynamic)."""
    onnx = oracle("onnx")
    helper = onnx.helper
    weight = np.random.default_rng(0).standard_normal((4, channels, 3, 3)).astype(np.float32)
    nodes = [helper.make_node("Conv", ["x", "w"], ["c"], name="conv", pads=[1, 1, 1, 1]),
             helper.make_node("Relu", ["c"], ["y"], name="relu")]
    shape = [d if d is not None else name for d, name in zip(dims, "NCHW")]
    graph = helper.make_graph(nodes, "conv", [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, shape)],
                              [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, [shape[0], 4, *shape[2:]])],
                              initializer=[onnx.numpy_helper.from_array(weight, "w")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]), str(path))
    return str(path)


def test_model_files_are_named_by_suffix_or_by_an_existing_file(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    assert is_model_file("missing/model.ONNX") and not is_model_file("vgg16") and not is_model_file("mmod")
    (tmp_path / "exported.bin").write_bytes(b"x")
    (tmp_path / "vgg16").write_bytes(b"x")
    assert is_model_file("exported.bin"), "any existing file"
    assert not is_model_file("vgg16"), "a zoo name stays the zoo's model beside a file of that name"


def test_preprocess_choices():
    assert preprocessing_for("imagenet", 3) is IMAGENET
    assert preprocessing_for("none", 1) == raw_pixels(1) and preprocessing_for(None, 3) == raw_pixels(3)
    with pytest.raises(InputError, match="--preprocess imagenet normalises RGB images, but the model takes 1 channel;"):
        preprocessing_for("imagenet", 1)


def test_fixed_sizes_are_checked_per_dimension_and_dynamic_ones_take_any(tmp_path):
    fixed = load_model_file(conv_model(tmp_path / "fixed.onnx", (1, 3, 16, 16)))
    assert model_input(fixed)(16, 16) == (3, 16, 16)
    with pytest.raises(ShapeError, match=r"20x16 images do not fit fixed.onnx, whose input 'x' is 1x3x16x16 "
                                         r"\(N x C x H x W\): it takes 16x16 images only"):
        model_input(fixed)(20, 16)
    wide = load_model_file(conv_model(tmp_path / "wide.onnx", (None, 3, 8, None)))
    assert model_input(wide)(8, 31) == (3, 8, 31)
    with pytest.raises(ShapeError, match="takes 8xW images only"):
        model_input(wide)(9, 31)
    assert dims_text(wide.input_dims) == "Nx3x8xW"
    free = load_model_file(conv_model(tmp_path / "free.onnx", (None, 3, None, None)), "imagenet")
    assert model_input(free)(5, 7) == (3, 5, 7) and free.network.preprocessing is IMAGENET


def test_image_sets_a_model_file_takes(tmp_path, rng):
    model = load_model_file(conv_model(tmp_path / "m.onnx", (None, 3, None, None)))
    tensors, pixels = tmp_path / "t.h5", tmp_path / "p.h5"
    with h5py.File(tensors, "w") as handle:
        handle["images"] = rng.standard_normal((2, 3, 5, 5)).astype(np.float32)
        handle["four"] = rng.standard_normal((2, 4, 5, 5)).astype(np.float32)
    with h5py.File(pixels, "w") as handle:
        handle["images"] = rng.integers(0, 256, (2, 5, 5, 3), dtype=np.uint8)
        handle["two"] = rng.integers(0, 256, (2, 5, 5, 2), dtype=np.uint8)
    check_image_set(model, open_image_set(tensors), None)
    check_image_set(model, open_image_set(pixels), "none")
    with pytest.raises(InputError, match=r"uint8 images, and m.onnx does not say how it normalises pixels; give "
                                         r"--preprocess imagenet"):
        check_image_set(model, open_image_set(pixels), None)
    with pytest.raises(InputError, match=r"--preprocess imagenet applies to uint8 images; .* holds float32 tensors"):
        check_image_set(model, open_image_set(tensors), "imagenet")
    with pytest.raises(InputError, match=r"tensors have 4 channels, m.onnx's input 'x' takes 3"):
        check_image_set(model, open_image_set(tensors, "four"), None)
    with pytest.raises(InputError, match=r"images have 2 channels, m.onnx takes 3"):
        check_image_set(model, open_image_set(pixels, "two"), "none")


def test_the_cost_table_input_of_a_model_file(tmp_path):
    path = conv_model(tmp_path / "m.onnx", (1, 3, None, None))
    network, shape, label = workload_input(path, "3x10x12")
    assert shape == (3, 10, 12) and label == "3x10x12" and network.name == "m"
    assert workload_input(path, "10x12")[1] == (3, 10, 12)
    assert workload_input(path)[1] == network.input_shape
    with pytest.raises(ShapeError, match=r"--input 1x10x12: m.onnx takes 3 channels"):
        workload_input(path, "1x10x12")


def test_the_planner_counts_the_reader(tmp_path):
    model = load_model_file(conv_model(tmp_path / "m.onnx", (1, 3, 8, 8)))
    assert reader_bytes(model.path) == ONNX_PACKAGE_BYTES + READER_COPIES * (tmp_path / "m.onnx").stat().st_size
