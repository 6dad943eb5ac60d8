"""Batch mode with several kernel threads per rank: each task thread runs whole tasks, as ranks would, so the
outputs are those of one thread and of any rank count, bit for bit (dcnn.parallel.batch)."""

import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import mpi_command, write_digits
from PIL import Image

FACES = Path(__file__).resolve().parents[1] / "data" / "faces.h5"


def infer(*args, ranks=1, threads=1, timeout=300):
    launcher = mpi_command(ranks) if ranks > 1 else []
    return subprocess.run(
        [*launcher, sys.executable, "-m", "dcnn.infer", "--mode", "batch", "--quiet", "--threads", str(threads), *args],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def outputs(path: Path) -> dict[str, np.ndarray]:
    with h5py.File(path) as handle:
        assert handle.attrs["status"] == "complete" and handle["outputs/done"][()].all()
        assert handle.attrs["memory_within_prediction"]
        return {name: handle[f"outputs/{name}"][()] for name in handle["outputs"]}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("data") / "digits.h5", 13, seed=11)


@pytest.mark.parametrize("batch", [3, 4, 13])
def test_task_threads_give_the_logits_of_one_thread_and_of_two_ranks(digits, tmp_path, batch):
    """13 images: batch 3 and 4 end with a short task (1 image), batch 13 is one task for two threads."""
    common = ("--model", "lenet5", "--input", str(digits), "--batch-size", str(batch))
    runs = {}
    for ranks, threads in ((1, 1), (1, 2), (2, 1), (2, 2)):
        path = tmp_path / f"np{ranks}t{threads}.h5"
        done = infer(*common, "--output", str(path), ranks=ranks, threads=threads)
        assert done.returncode == 0, done.stderr
        runs[ranks, threads] = outputs(path)["logits"]
    for logits in runs.values():
        np.testing.assert_array_equal(logits, runs[1, 1])


def test_task_threads_give_the_detections_of_one_thread(tmp_path):
    """Seven faces in tasks of 2 (the last one image) at two threads per rank, on one and two ranks."""
    images = tmp_path / "faces.h5"
    with h5py.File(FACES) as source, h5py.File(images, "w") as target:
        target["images"] = source["images"][:7]
    common = ("--model", "mmod", "--input", str(images), "--batch-size", "2")
    runs = {}
    for ranks, threads in ((1, 1), (1, 2), (2, 2)):
        path = tmp_path / f"np{ranks}t{threads}.h5"
        done = infer(*common, "--output", str(path), ranks=ranks, threads=threads)
        assert done.returncode == 0, done.stderr
        runs[ranks, threads] = outputs(path)
    assert len(runs[1, 1]["detections"]) > 0
    for result in runs.values():
        for name, values in result.items():
            np.testing.assert_array_equal(values, runs[1, 1][name])


def test_a_failure_on_a_task_thread_is_the_usual_one_line_error(tmp_path):
    """A JPEG whose header is intact but whose data is cut fails on a task thread mid-run: the run ends with the
    error that one thread gives (naming the file, no traceback) and the resume line, without hanging."""
    folder = tmp_path / "photos"
    folder.mkdir()
    with h5py.File(FACES) as handle:
        pixels = handle["images"][:4]
    for index, image in enumerate(pixels):
        Image.fromarray(image).save(folder / f"{index:04d}.png")
    Image.fromarray(pixels[0]).save(tmp_path / "whole.jpg", quality=90)
    (folder / "0002-cut.jpg").write_bytes((tmp_path / "whole.jpg").read_bytes()[:1500])
    common = ("--model", "mmod", "--input", str(folder), "--batch-size", "1")
    one = infer(*common, "--output", str(tmp_path / "one.h5"))
    two = infer(*common, "--output", str(tmp_path / "two.h5"), threads=2)
    assert two.returncode == one.returncode != 0
    assert "0002-cut.jpg" in two.stderr and "Traceback" not in two.stderr and "--resume" in two.stderr
    assert [line for line in two.stderr.splitlines() if line.startswith("dcnn: error")] == [
        line.replace("one.h5", "two.h5") for line in one.stderr.splitlines() if line.startswith("dcnn: error")
    ]
