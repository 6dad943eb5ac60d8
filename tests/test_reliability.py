"""Failures mid-run end the whole job promptly, with one clear message (see docs/reliability.md)."""

import os
import subprocess
import sys
import time

import h5py
import numpy as np
import pytest
from conftest import mpi_command

MODES = {
    "batch": ["--mode", "batch"],
    "spatial": ["--mode", "spatial"],
    "fused-recompute": ["--mode", "fused", "--tiles", "2x2", "--fuse-depth", "3", "--overlap", "recompute"],
    "fused-reuse": ["--mode", "fused", "--tiles", "2x2", "--fuse-depth", "3", "--overlap", "reuse"],
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    path = tmp_path_factory.mktemp("data") / "digits.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = np.random.default_rng(5).integers(0, 256, (32, 32, 32, 1), dtype=np.uint8)
    return path


@pytest.mark.parametrize("mode", MODES)
def test_an_exception_on_one_rank_ends_a_4_rank_job_within_seconds(digits, tmp_path, mode):
    # Batch mode: rank 2 starts with tasks 4 and 5 (8 tasks over 4 ranks); the other modes run every task on
    # every rank, so rank 2 fails at task 1 while the others wait for it in halo exchanges or gathers.
    fault = "2:4" if mode == "batch" else "2:1"
    output = tmp_path / "run.h5"
    started = time.time()
    done = subprocess.run([*mpi_command(4), sys.executable, "-m", "dcnn.infer", "--model", "lenet5", "--input",
                           str(digits), "--batch-size", "4", "--threads", "1", "--quiet", "--output", str(output),
                           *MODES[mode]], env={**os.environ, "DCNN_INJECT_FAULT": fault},
                          capture_output=True, text=True, timeout=120)
    elapsed = time.time() - started
    assert done.returncode != 0
    assert elapsed < 30, f"the job took {elapsed:.1f} s to end"
    assert f"fault injected by DCNN_INJECT_FAULT on rank 2 at task {fault.split(':')[1]}" in done.stderr
    assert "dcnn: error (rank 2): unexpected failure" in done.stderr
    with h5py.File(output, "r", swmr=True) as handle:  # what was finished before the failure stays readable
        assert handle.attrs["status"] == "running"
