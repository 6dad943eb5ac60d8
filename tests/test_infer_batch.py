"""Batch mode as a user runs it: work stealing across processes, crash safety and --resume."""

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import mpi_command, rank_pids, write_digits

from dcnn.io.results import open_result

NUM_IMAGES, BATCH = 160, 4


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("data") / "digits.h5", NUM_IMAGES, seed=3)


def command(ranks, digits, *args):
    return [*mpi_command(ranks), sys.executable, "-m", "dcnn.infer", "--model", "lenet5", "--input", str(digits),
            "--batch-size", str(BATCH), "--threads", "1", "--quiet", *args]


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    """An uninterrupted batch run at np=2."""
    path = tmp_path_factory.mktemp("ref") / "reference.h5"
    done = subprocess.run(command(2, digits, "--mode", "batch", "--output", str(path)), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    with h5py.File(path) as handle:
        return handle["outputs/logits"][()]


def test_every_image_exactly_once_and_equal_to_single_mode(digits, tmp_path, reference):
    batch, single = tmp_path / "batch.h5", tmp_path / "single.h5"
    done = subprocess.run(command(3, digits, "--mode", "batch", "--output", str(batch)), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    assert subprocess.run(command(1, digits, "--output", str(single)), timeout=300).returncode == 0
    with h5py.File(batch) as b, h5py.File(single) as s:
        assert b["outputs/done"][()].all() and b.attrs["status"] == "complete"
        ranks = b["timing/task_rank"][()]
        assert ranks.shape == (NUM_IMAGES // BATCH,) and set(ranks) <= {0, 1, 2} and (ranks >= 0).all()
        assert (b["timing/task_end"][()] >= b["timing/task_start"][()]).all()
        steal = b["stats/steal"][()]
        assert steal.shape == (3, 6) and steal[:, 0].sum() == NUM_IMAGES // BATCH
        np.testing.assert_array_equal(b["outputs/logits"][()], reference)
        np.testing.assert_array_equal(s["outputs/logits"][()], reference)


def wait_for_progress(path: Path, minimum: int, process: subprocess.Popen, limit: float = 120) -> None:
    deadline = time.time() + limit
    while time.time() < deadline:
        assert process.poll() is None, "the run ended before it could be killed"
        if path.exists():
            try:
                with open_result(path) as handle:
                    if handle["outputs/done"][()].sum() >= minimum:
                        return
            except (OSError, KeyError):
                pass  # the file is being created
        time.sleep(0.05)
    raise AssertionError("no progress to interrupt")


@pytest.mark.parametrize("victim", ["job", "rank", "SIGTERM", "SIGINT"])
def test_killed_run_keeps_its_results_and_resumes_to_the_same_file(digits, tmp_path, reference, victim):
    """SIGKILL of the job or of one rank mid-task, or SIGTERM (SLURM's time limit) or SIGINT (Ctrl-C) to mpiexec:
    the job ends, the file keeps every finished task, and --resume completes it with no duplicate and no gap."""
    path = tmp_path / f"killed-{victim}.h5"
    slow = ["--throttle", "0:30", "--throttle", "1:30"]
    process = subprocess.Popen(command(2, digits, "--mode", "batch", "--output", str(path), *slow),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        wait_for_progress(path, 3 * BATCH, process)
        if victim == "job":
            os.killpg(process.pid, signal.SIGKILL)
        elif victim == "rank":
            os.kill(rank_pids(path.name)[-1], signal.SIGKILL)
        else:
            process.send_signal(getattr(signal, victim))
        # The timeout guards against a hang only; how fast the job ends is no test's business.
        _, stderr = process.communicate(timeout=120)
        assert process.returncode != 0
        if victim.startswith("SIG"):
            assert f"dcnn: interrupted by {victim}" in stderr and f"--resume {path}" in stderr, stderr
            assert "Traceback" not in stderr
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    with open_result(path) as handle:
        done = handle["outputs/done"][()].astype(bool)
        logits = handle["outputs/logits"][()]
        assert handle.attrs["status"] == "running"
    assert 3 * BATCH <= done.sum() < NUM_IMAGES
    np.testing.assert_array_equal(logits[done], reference[done])
    resumed = subprocess.run(command(3, digits, "--mode", "batch", "--resume", str(path)), capture_output=True,
                             text=True, timeout=300)
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(path) as handle:
        assert handle.attrs["status"] == "complete" and handle.attrs["runs"] == 2
        assert handle.attrs["images_computed"] == NUM_IMAGES - done.sum()
        assert handle["outputs/done"][()].all()
        np.testing.assert_array_equal(handle["outputs/logits"][()], reference)


def test_resume_refuses_another_configuration(digits, tmp_path):
    path = tmp_path / "run.h5"
    assert subprocess.run(command(1, digits, "--output", str(path), "--model", "lenet5"), timeout=300).returncode == 0
    done = subprocess.run(command(1, digits, "--resume", str(path), "--batch-size", "8"), capture_output=True,
                          text=True, timeout=300)
    assert done.returncode == 2 and "made with --batch-size 4" in done.stderr
