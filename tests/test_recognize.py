"""python -m dcnn.recognize end to end, in several modes and rank counts, against dlib's own pipeline."""

import importlib.util
import os
import shutil
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import mpi_command
from PIL import Image

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("face_recognition_models") is None or importlib.util.find_spec("dlib") is None,
    reason="needs the [faces] extra and dlib-bin")
#: Bundled 128 x 128 images with one face each: with 5 images per task, the first task has two batches of
#: chips for the descriptor network, which spatial and fused mode deal to two ranks.
FACE_IMAGES = [0, 2, 3, 5, 9, 16, 19, 21]
#: What dcnn.infer prints when a rank's measured peak exceeds the planner's prediction.
MEMORY_WARNING = "above the planner's prediction"


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """8 bundled images as an HDF5 set; a gallery: 'zoe' (one file) and 'bob' (a folder of two), so the person
    with several images comes first (identities index people, not images)."""
    folder = tmp_path_factory.mktemp("recognize")
    with h5py.File("data/faces.h5") as handle:
        images = handle["images"][FACE_IMAGES]
    with h5py.File(folder / "input.h5", "w") as handle:
        handle["images"] = images
    known = folder / "known"
    (known / "bob").mkdir(parents=True)
    Image.fromarray(images[0]).save(known / "zoe.png")
    Image.fromarray(images[1]).save(known / "bob" / "a.png")
    Image.fromarray(images[2]).save(known / "bob" / "b.png")
    return folder, images


def recognize(folder, ranks, *args, env=None, check=True, quiet=True):
    output = folder / f"out-{ranks}-{'-'.join(args)}.h5".replace("/", "_")
    done = subprocess.run([*mpi_command(ranks), sys.executable, "-m", "dcnn.recognize", "--input",
                           str(folder / "input.h5"), "--known", str(folder / "known"), "--output", str(output),
                           "--threads", "1", "--batch-size", "5", *(["--quiet"] if quiet else []), *args],
                          capture_output=True, text=True, timeout=600, env=env)
    if check:
        assert done.returncode == 0, done.stderr
    return output, done


def read(output):
    with h5py.File(output) as handle:
        assert handle.attrs["status"] == "complete"
        return {name: handle[f"outputs/{name}"][()] for name in
                ("detections", "landmarks", "descriptors", "identity", "distance")} | {
            "names": [n.decode() for n in handle["known/names"][()]], "known": handle["known/descriptors"][()]}


@pytest.fixture(scope="module")
def reference(data):
    """dlib's pipeline on the run's detections: landmarks, descriptors, and identities from dlib's distances."""
    import dlib

    from dcnn.faces.detect import default_detector_path
    from dcnn.faces.models import DESCRIPTOR_MODEL, LANDMARK_MODEL, bundled_model

    folder, images = data
    output, done = recognize(folder, 1, "--mode", "single", quiet=False)
    assert MEMORY_WARNING not in done.stderr
    result = read(output)
    predictor = dlib.shape_predictor(str(bundled_model(LANDMARK_MODEL)))
    recogniser = dlib.face_recognition_model_v1(str(bundled_model(DESCRIPTOR_MODEL)))
    detector = dlib.cnn_face_detection_model_v1(str(default_detector_path()))

    def describe(image, rect):
        shape = predictor(image, rect)
        return [[p.x, p.y] for p in shape.parts()], np.array(recogniser.compute_face_descriptor(image, shape, 0))

    known = []
    for path in (*sorted((folder / "known" / "bob").iterdir()), folder / "known" / "zoe.png"):
        image = np.asarray(Image.open(path).convert("RGB"))
        known.append(describe(image, max(detector(image, 0), key=lambda d: d.rect.area()).rect)[1])
    landmarks, descriptors = zip(*(describe(images[row["image"]], dlib.rectangle(
        *(int(row[k]) for k in ("left", "top", "right", "bottom")))) for row in result["detections"]))
    distances = np.linalg.norm(np.array(descriptors)[:, None] - np.array(known)[None], axis=2)
    per_person = np.stack([distances[:, :2].min(axis=1), distances[:, 2]], axis=1)
    identity = np.where(per_person.min(axis=1) <= 0.6, np.array(["bob", "zoe"])[per_person.argmin(axis=1)],
                        "unknown")
    names, counts = np.unique(identity, return_counts=True)
    assert "  identities: " + ", ".join(f"{n} {c}" for n, c in zip(names, counts)) in done.stdout
    return (result, np.array(landmarks), np.array(descriptors), np.array(known), identity, per_person.min(axis=1),
            output)


def test_single_process_equals_dlib(reference):
    result, landmarks, descriptors, known, identity, distance, _ = reference
    assert len(result["detections"]) == len(FACE_IMAGES)
    assert result["names"] == ["bob", "bob", "zoe"]
    assert np.abs(result["known"] - known).max() < 1e-4
    assert np.array_equal(result["landmarks"], landmarks)
    assert result["descriptors"].shape == (len(landmarks), 128)
    assert np.abs(result["descriptors"] - descriptors).max() < 1e-4
    assert [i.decode() for i in result["identity"]] == identity.tolist()
    assert np.abs(result["distance"] - distance).max() < 1e-4
    assert set(identity) >= {"zoe", "bob", "unknown"}


@pytest.mark.parametrize("ranks,mode", [(2, "batch"), (4, "batch"), (2, "spatial"), (3, "spatial"), (2, "fused"),
                                        (4, "fused")])
def test_every_mode_and_rank_count_gives_the_same_faces(data, reference, ranks, mode):
    """Spatial and fused mode deal each task's faces to the ranks in whole descriptor batches (at 3 and 4 ranks
    some get none): landmarks, descriptors, distances and identities bit for bit those of one process. No rank
    peaks above the planner's prediction, which counts the recognition models and their working set."""
    folder, _ = data
    output, done = recognize(folder, ranks, "--mode", mode)
    assert MEMORY_WARNING not in done.stderr
    result = read(output)
    single = reference[0]
    for name in ("landmarks", "descriptors", "identity", "distance", "names", "known"):
        assert np.array_equal(result[name], single[name]), name
    # spatial and fused mode sum the detector's convolutions in another order (the last bit of a confidence)
    for name in ("left", "top", "right", "bottom", "image"):
        assert np.array_equal(result["detections"][name], single["detections"][name])


def test_task_threads_give_the_faces_of_one_process(data, reference):
    """Batch mode at two threads on one rank runs its two tasks at once, one per task thread, sharing the
    recognition models: every face bit for bit that of one process, within the planner's prediction."""
    folder, _ = data
    output, done = recognize(folder, 1, "--mode", "batch", "--threads", "2")
    assert MEMORY_WARNING not in done.stderr
    result, single = read(output), reference[0]
    for name in ("detections", "landmarks", "descriptors", "identity", "distance", "names", "known"):
        assert np.array_equal(result[name], single[name]), name


def test_a_failed_run_resumes_to_the_same_faces(data, reference):
    folder, _ = data
    output, done = recognize(folder, 2, env={**os.environ, "DCNN_INJECT_FAULT": "1:1"}, check=False)
    assert done.returncode != 0
    with h5py.File(output, "r", swmr=True) as handle:
        assert handle.attrs["status"] == "running"
    done = subprocess.run([*mpi_command(1), sys.executable, "-m", "dcnn.recognize", "--resume", str(output),
                           "--threads", "1", "--quiet"], capture_output=True, text=True, timeout=600)  # the file
    # records the input, gallery, tolerance, jitter and batch size
    assert done.returncode == 0, done.stderr
    result, single = read(output), reference[0]
    for name in ("landmarks", "descriptors", "identity", "distance"):
        assert np.array_equal(result[name], single[name])


def test_a_run_with_a_relative_gallery_resumes_from_another_folder(data, reference, tmp_path):
    """Before: the file recorded --known as given (people) and its configuration the absolute path, so the resume
    command dcnn printed was refused (made with known = people, this run has /.../people), from any folder and with
    --known /abs/people too. Now the gallery is known by its content: a changed one is refused. Skipped gallery
    entries are named in a note."""
    folder, _ = data
    work = tmp_path / "work"
    shutil.copytree(folder / "known", work / "people")
    (work / "people" / "notes.txt").write_text("not a face")
    output = tmp_path / "out" / "run.h5"
    done = subprocess.run([*mpi_command(2), sys.executable, "-m", "dcnn.recognize", "--input",
                           str(folder / "input.h5"), "--known", "people", "--output", str(output), "--threads", "1",
                           "--batch-size", "5"], capture_output=True, text=True, timeout=600, cwd=work,
                          env={**os.environ, "DCNN_INJECT_FAULT": "1:1"})
    assert done.returncode != 0
    assert "dcnn: skipped 1 entry of --known people: 1 file not an image (notes.txt)\n" in done.stderr
    with h5py.File(output, "r", swmr=True) as handle:
        assert handle.attrs["status"] == "running" and handle.attrs["known"] == str(work / "people")

    def resume(*args):
        return subprocess.run([*mpi_command(1), sys.executable, "-m", "dcnn.recognize", "--resume", str(output),
                               "--threads", "1", "--quiet", *args], capture_output=True, text=True, timeout=600,
                              cwd=tmp_path)

    changed = tmp_path / "changed"
    shutil.copytree(work / "people", changed)
    shutil.copy(changed / "zoe.png", changed / "bob" / "c.png")
    done = resume("--known", str(changed))
    assert done.returncode == 2
    assert done.stderr.strip() == (f"dcnn: error: --resume {str(output)!r}: {str(changed)!r} is not the gallery this "
                                   f"run was made with (its content differs; the run used {str(work / 'people')!r})")
    older = tmp_path / "older.h5"  # as the previous dcnn left it: the gallery's path without its fingerprint
    with h5py.File(output, "r", swmr=True) as source, h5py.File(older, "w", libver="latest") as copy:
        for name in source:
            source.copy(source[name], copy, name=name)
        copy.attrs.update({key: value for key, value in source.attrs.items() if key != "known_fingerprint"})
    done = resume()  # the command dcnn prints, from another folder
    assert done.returncode == 0, done.stderr
    result, single = read(output), reference[0]
    for name in ("landmarks", "descriptors", "identity", "distance", "names", "known"):
        assert np.array_equal(result[name], single[name]), name
    done = subprocess.run([*mpi_command(1), sys.executable, "-m", "dcnn.recognize", "--resume", str(older),
                           "--threads", "1", "--quiet"], capture_output=True, text=True, timeout=600, cwd=tmp_path)
    assert done.returncode == 0, done.stderr  # the same path still names the same gallery
    assert np.array_equal(read(older)["descriptors"], single["descriptors"])
    # Complete now: given a gallery again, it is compared (it said "nothing to do" for any gallery).
    done = resume("--known", str(work / "people"))
    assert done.returncode == 0 and done.stderr == "", done.stderr
    done = resume("--known", str(changed))
    assert done.returncode == 2 and f"{str(changed)!r} is not the gallery this run was made with" in done.stderr


def test_jitter_changes_descriptors_a_little(data, reference):
    folder, _ = data
    result = read(recognize(folder, 1, "--mode", "single", "--jitter", "2")[0])
    difference = np.abs(result["descriptors"] - reference[0]["descriptors"]).max()
    assert 1e-4 < difference < 0.2


def test_a_gallery_image_without_a_face_is_one_clear_error(data, tmp_path):
    folder, images = data
    known = tmp_path / "known"
    known.mkdir()
    Image.fromarray(images[0]).save(known / "zoe.png")
    Image.fromarray(np.full((64, 64, 3), 90, np.uint8)).save(known / "wall.png")
    done = subprocess.run([*mpi_command(2), sys.executable, "-m", "dcnn.recognize", "--input",
                           str(folder / "input.h5"), "--known", str(known), "--output", str(tmp_path / "x.h5")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines()[-1].endswith(f"--known: no face found in {known / 'wall.png'} "
                                                          "(--upsample 1 or more finds smaller faces)")


def test_a_run_without_faces_names_no_identities(data, tmp_path):
    """Before: "0 faces found in 0 of 1 images" and an empty "identities: " line."""
    folder, _ = data
    with h5py.File(tmp_path / "wall.h5", "w") as handle:
        handle["images"] = np.full((1, 64, 64, 3), 90, np.uint8)
    done = subprocess.run([sys.executable, "-m", "dcnn.recognize", "--input", str(tmp_path / "wall.h5"), "--known",
                           str(folder / "known"), "--output", str(tmp_path / "x.h5"), "--threads", "1"],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "mmod: 1 image of 64x64 in" in done.stdout
    assert "  0 faces found in 0 of 1 image computed (upsample 0)" in done.stdout
    assert "identities" not in done.stdout


def test_two_gallery_entries_of_one_person_are_refused_on_every_rank(data, tmp_path):
    """Before: ann.png and ann.jpg (two people) silently became one person 'ann' with two images."""
    folder, images = data
    known = tmp_path / "known"
    known.mkdir()
    Image.fromarray(images[0]).save(known / "ann.png")
    Image.fromarray(images[1]).save(known / "ann.jpg")
    done = subprocess.run([*mpi_command(2), sys.executable, "-m", "dcnn.recognize", "--input",
                           str(folder / "input.h5"), "--known", str(known), "--output", str(tmp_path / "x.h5")],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and not (tmp_path / "x.h5").exists()
    assert done.stderr.strip() == (f"dcnn: error: --known {known}: ann.jpg and ann.png both name the person 'ann'; "
                                   "rename one (a person with several images is one subfolder of them)")


def test_help_lists_only_the_options_recognition_takes():
    """Before: --model (vgg16 ... or ONNX: refused), --preprocess, --top and --seed were listed."""
    recognize_help = subprocess.run([sys.executable, "-m", "dcnn.recognize", "--help"], capture_output=True,
                                    text=True, timeout=120).stdout
    infer_help = subprocess.run([sys.executable, "-m", "dcnn.infer", "--help"], capture_output=True, text=True,
                                timeout=120).stdout
    for flag in ("--model", "--preprocess", "--top", "--seed"):
        assert flag not in recognize_help and flag in infer_help, flag
    assert "--known" in recognize_help and "--upsample" in recognize_help


@pytest.mark.parametrize("args,message", [
    (["--tolerance", "0"], "--tolerance must be a finite number above 0, got 0.0"),
    (["--tolerance", "inf"], "--tolerance must be a finite number above 0, got inf"),
    (["--jitter", "-1"], "--jitter must be an integer at least 0 and at most 10000, got -1"),
    (["--jitter", "1000000000"], "--jitter must be an integer at least 0 and at most 10000"),  # years, before
    (["--model", "lenet5"], "unrecognized arguments: --model lenet5"),
    (["--seed", "1"], "unrecognized arguments: --seed 1"),
    (["--known", "/nonexistent"], "--known '/nonexistent': not a folder"),
    (["--mem-per-rank", "160MiB"], "(most of it recognition models, "),
])
def test_bad_arguments(data, tmp_path, args, message):
    folder, _ = data
    done = subprocess.run([sys.executable, "-m", "dcnn.recognize", "--input", str(folder / "input.h5"),
                           "--output", str(tmp_path / "x.h5"), *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 2 and message in done.stderr


def test_analyze_draws_identities_and_landmarks(reference, tmp_path):
    from dcnn.analysis.analyze import draw_detections

    assert draw_detections(str(reference[-1]), str(tmp_path / "faces.png"), 4) == 4
    assert Image.open(tmp_path / "faces.png").size == (1024, 256)
