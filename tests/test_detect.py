"""dlib's MMOD face detector in dcnn: the file reader, the pyramid, decoding, and detections equal to dlib's."""

import importlib.util
import json
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import oracle

from dcnn.errors import ShapeError, WeightsError
from dcnn.exec.forward import Forward
from dcnn.faces.detect import FaceDetector, default_detector_path, mmod_network, receptive_mapping
from dcnn.faces.dlib_format import read_mmod
from dcnn.faces.pyramid import nms, pyramid_sizes, resize_rgb, round_half_away, tiled_layout

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "scripts"))
from make_dlib_fixture import FIXTURE, cases

pytestmark = pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None,
                                reason="needs the [faces] extra (face_recognition_models)")


@pytest.fixture(scope="module")
def detector_file():
    return default_detector_path()


@pytest.fixture(scope="module")
def runner():
    detectors = {up: FaceDetector.load(upsample=up) for up in (0, 1, 2)}
    forwards = {up: Forward(d.network, d.weights) for up, d in detectors.items()}
    return lambda images, up: detectors[up].detect(images, forwards[up])


def test_reader_matches_the_published_structure_and_checksums(detector_file):
    model = read_mmod(detector_file)
    assert model.mean_rgb == pytest.approx((122.782, 117.001, 104.298), abs=1e-4)
    assert (model.pyramid_padding, model.pyramid_outer_padding) == (10, 11)
    assert model.options.windows == [(80, 80)] and model.options.nms_iou == pytest.approx(0.3382761351109955)
    convs = [layer for layer in model.layers if layer.kind == "con"]
    assert [c.num_filters for c in convs] == [16, 32, 32, 45, 45, 45, 1]
    assert float(convs[0].weight.astype(np.float64).sum()) == pytest.approx(-0.0302698242, rel=1e-7)
    assert float(convs[-1].bias[0]) == pytest.approx(-0.24727094, rel=1e-6)
    affines = [layer for layer in model.layers if layer.kind == "affine"]
    assert float(affines[0].weight.astype(np.float64).sum()) == pytest.approx(1483.33775, rel=1e-7)


@pytest.mark.parametrize("fraction", [0.0, 0.001, 0.01, 0.3, 0.7, 0.9999])
def test_truncated_files_are_a_clear_error(tmp_path, detector_file, fraction):
    data = detector_file.read_bytes()
    path = tmp_path / "cut.dat"
    path.write_bytes(data[:int(len(data) * fraction)])
    with pytest.raises(WeightsError, match=r"not a valid dlib MMOD detector file"):
        read_mmod(path)


def test_altered_files_never_crash(tmp_path, detector_file):
    """Random bit flips either still parse (most land in float weights) or raise WeightsError, nothing else.

    Odd trials flip a bit of the first 135 bytes (loss options, layer versions, input layer): mostly structure.
    """
    data = bytearray(detector_file.read_bytes())
    rng = np.random.default_rng(7)
    errors = 0
    for trial in range(150):
        altered = bytearray(data)
        position = int(rng.integers(0, 135)) if trial % 2 else int(rng.integers(0, len(data)))
        altered[position] ^= 1 << int(rng.integers(0, 8))
        path = tmp_path / f"flip{trial}.dat"
        path.write_bytes(bytes(altered))
        try:
            model = read_mmod(path)
            FaceDetector(model, mmod_network(), {}).network.shapes((3, 64, 64))
        except WeightsError:
            errors += 1
    assert errors >= 10


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        FaceDetector.load(tmp_path / "none.dat")


def test_pyramid_layout_of_a_512_image():
    sizes = pyramid_sizes(512, 512)
    rows, cols, rects = tiled_layout(sizes, 10, 11)
    assert (rows, cols) == (1895, 534) and len(rects) == 24
    assert rects[:2] == [(11, 11, 522, 522), (11, 533, 436, 958)]
    assert rects[5] == (319, 1680, 522, 1883) and rects[-1] == (518, 559, 522, 563)


def test_receptive_mapping_and_rounding():
    assert receptive_mapping(mmod_network()) == (8, 14)
    assert round_half_away(np.array([-2.5, -1.5, -0.5, 0.5, 1.5, 2.4])).tolist() == [-3, -2, -1, 1, 2, 2]


def test_nms_uses_the_bounding_box_of_both_boxes():
    # Shifted 28 px diagonally: intersection 72*72 = 5184, true IoU 5184/14816 = 0.350 (> 0.338), but over the
    # bounding box of both, 128*128 = 16384, only 0.316.
    first = np.array([[0, 0, 99, 99, 2.0]])
    diagonal = np.array([[28, 28, 127, 127, 1.0]])
    kept = nms(np.concatenate([first, diagonal]), 0.3382761351109955, 1.0)
    assert len(kept) == 2, "dlib divides by the bounding box area, so these two do not suppress each other"
    close = np.array([[10, 0, 109, 99, 1.0]])
    assert len(nms(np.concatenate([first, close]), 0.3382761351109955, 1.0)) == 1


def test_small_images_are_refused():
    detector = FaceDetector.load()
    with pytest.raises(ShapeError, match="too small"):
        detector.prepare(np.zeros((1, 9, 40, 3), np.uint8))


def assert_same_detections(actual, expected):
    """The same boxes, and confidences equal to float rounding (the pyramid is dlib's bit for bit; only the
    convolutions add in another order: measured at most 2.6e-6)."""
    assert len(actual) == len(expected), (actual, expected)
    expected = np.asarray(expected, dtype=np.float64).reshape(-1, 5)
    if len(actual):
        np.testing.assert_array_equal(actual[:, :4], expected[:, :4])
        assert np.abs(actual[:, 4] - expected[:, 4]).max() <= 1e-5


@pytest.mark.parametrize("case", ["images-up0", "images-up1", "wide-up0", "mosaic512-up0"])
def test_detections_equal_dlibs_recorded_ones(runner, case):
    expected = json.loads(FIXTURE.read_text())["cases"][case]
    images, upsample = cases()[case]
    for start in range(0, len(images), 8):
        for actual, per_image in zip(runner(images[start:start + 8], upsample), expected[start:start + 8]):
            assert_same_detections(actual, per_image)
    assert sum(len(per_image) for per_image in expected) > 0


@pytest.mark.parametrize("upsample,size", [(1, (67, 61)), (1, (59, 71)), (2, (45, 43)), (2, (37, 41))])
def test_upsampled_detections_equal_live_dlib_at_odd_sizes(runner, upsample, size):
    """Regression: dcnn's upsampling differed from dlib's pyramid_up by 1 on 1.8 % of pixels (confidences off
    by up to 3.4e-3, one box in 100 by 3 px at upsample 2). Shrunk faces, so upsampling is what finds them."""
    dlib = oracle("dlib")
    detector = dlib.cnn_face_detection_model_v1(str(default_detector_path()))
    with h5py.File(Path(__file__).resolve().parents[1] / "data" / "faces.h5") as handle:
        faces = handle["images"][[0, 2, 3]]
    found = 0
    for face in faces:
        small = resize_rgb(face[3:124, 2:125], *size)
        expected = [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence]
                    for d in detector(small, upsample)]
        assert_same_detections(runner(small[None], upsample)[0], expected)
        found += len(expected)
    assert found >= 2


def test_detections_equal_live_dlib_on_fresh_crops(runner):
    dlib = oracle("dlib")
    detector = dlib.cnn_face_detection_model_v1(str(default_detector_path()))
    with h5py.File(Path(__file__).resolve().parents[1] / "data" / "faces.h5") as handle:
        wide = handle["wide"][()]
    rng = np.random.default_rng(5)
    for _ in range(4):
        height, width = int(rng.integers(120, 400)), int(rng.integers(120, 600))
        top, left = int(rng.integers(0, 500 - height)), int(rng.integers(0, 1000 - width))
        crop = np.ascontiguousarray(wide[int(rng.integers(0, 2)), top:top + height, left:left + width])
        expected = [[d.rect.left(), d.rect.top(), d.rect.right(), d.rect.bottom(), d.confidence]
                    for d in detector(crop, 0)]
        assert_same_detections(runner(crop[None], 0)[0], expected)


@pytest.mark.parametrize("upsample", [0, 1])
def test_the_input_shape_is_geometry_and_equals_the_pyramid(detector_file, upsample):
    """The header scan maps every image size to the network input without building a pyramid."""
    detector = FaceDetector.load(detector_file, upsample)
    for height, width in [(10, 10), (37, 91), (128, 128), (300, 17)]:
        tensor, _ = detector.prepare(np.zeros((1, height, width, 3), np.uint8))
        assert detector.input_shape(height, width) == tensor.shape[1:]


def test_the_first_convolution_reads_the_pyramid_in_place(monkeypatch, detector_file):
    """Given what runs the network, ``prepare`` builds the pyramid in a buffer of the rows the first convolution
    reads in place (no copy of its 3-channel input), through a compiled network or batch mode's one-process
    engine (which hands the layer a box a row short of the tensor, past its last level), with the scores of a
    plain tensor bit for bit."""
    from dcnn.kernels import conv
    from dcnn.parallel.spatial import SpatialEngine

    detector = FaceDetector.load(detector_file, 1)
    forward = Forward(detector.network, detector.weights)
    images = np.random.default_rng(2).integers(0, 256, (2, 41, 37, 3), dtype=np.uint8)
    plain, rects = detector.prepare(images)
    copies = []
    row_phases = conv._row_phases_into
    monkeypatch.setattr(conv, "_row_phases_into", lambda planes, x, *rest: copies.append(x.shape[1]) or
                        row_phases(planes, x, *rest))
    with SpatialEngine(detector.network, detector.weights, plain.shape[1:], None, forward=forward) as engine:
        for run in (forward, engine):
            shared, shared_rects = detector.prepare(images, run.forward if run is engine else forward)
            np.testing.assert_array_equal(shared, plain)
            assert shared_rects == rects
            assert shared.strides[0] == forward.input_rows(plain.shape[2]) * shared.strides[2]
            copies.clear()
            scores = run(shared)
            assert 3 not in copies
            np.testing.assert_array_equal(scores, run(plain.copy()))
