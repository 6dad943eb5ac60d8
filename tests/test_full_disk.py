"""A run on a full disk ends in one line with exit 2 and leaves no lock file or copy (end to end, on a tmpfs)."""

import os
import re
import shutil
import subprocess
import sys

import pytest
from conftest import mpi_command, write_digits

FACES = os.path.join(os.path.dirname(__file__), os.pardir, "data", "faces.h5")


@pytest.fixture
def small_disk(tmp_path):
    """A 200 KiB tmpfs at ``tmp_path / 'full'`` (needs root, as in CI; skipped where mounting is not permitted)."""
    mount = tmp_path / "full"
    mount.mkdir()
    if (
        shutil.which("mount") is None
        or subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=200k", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here")
    yield mount
    subprocess.run(["umount", str(mount)], check=False)


@pytest.mark.parametrize("room", [0, 40_000])
def test_a_run_on_a_full_disk_ends_in_one_line_with_exit_2_and_leaves_no_lock_or_copy(tmp_path, small_disk, room):
    digits = write_digits(tmp_path / "digits.h5", 64, seed=3)
    with open(small_disk / "filler", "wb") as filler:
        filler.write(b"\0" * (204_800 - room))
    done = subprocess.run(
        [
            *mpi_command(2),
            sys.executable,
            "-m",
            "dcnn.infer",
            "--model",
            "lenet5",
            "--threads",
            "1",
            "--quiet",
            "--batch-size",
            "4",
            "--input",
            str(digits),
            "--output",
            str(small_disk / "z.h5"),
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and re.search("no space left on (the )?device", done.stderr, re.I)
    # dcnn's own lines only (the launcher adds its abort notice: MPICH one line, Open MPI a block).
    errors = [line for line in done.stderr.splitlines() if line.startswith("dcnn: error")]
    assert len(errors) == 1 and re.search("no space left", errors[0], re.I), done.stderr
    assert not [name for name in os.listdir(small_disk) if name.endswith((".lock", ".tmp"))]


@pytest.mark.parametrize("ranks", [1, 2])
def test_a_recognition_run_on_a_full_disk_ends_in_one_line_without_a_crash(tmp_path, small_disk, ranks):
    """Before: a recognition task's write held the detections table when the flush failed; HDF5 then crashed
    closing it (exit 139 alone, signal 11 under mpiexec). Now the write is refused while the file is still
    clean."""
    with open(small_disk / "filler", "wb") as filler:
        filler.write(b"\0" * 150_000)
    launcher = mpi_command(2) if ranks == 2 else []
    done = subprocess.run(
        [*launcher, sys.executable, "-m", "dcnn.recognize", "--threads", "1", "--quiet",
         "--batch-size", "4", "--input", FACES, "--output", str(small_disk / "faces.h5")],
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL,
    )
    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr and "WARN" not in done.stderr, done.stderr
    errors = [line for line in done.stderr.splitlines() if line.startswith("dcnn: error")]
    assert len(errors) == 1 and re.search("no space left", errors[0], re.I), done.stderr
    assert "continue with" in done.stderr
    assert not [name for name in os.listdir(small_disk) if name.endswith((".lock", ".tmp"))]
