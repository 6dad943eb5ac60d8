"""A full disk or quota gives one line and exit code 2 (:func:`dcnn.cli.common.disk_full`, ``run_main``)."""

import argparse
import errno
import os
import shutil
import subprocess
import sys

import numpy as np
import pytest
from conftest import mpi_command, write_digits

from dcnn.cli.common import EXIT_USAGE, add_common_arguments, disk_full, run_main
from dcnn.errors import InputError
from dcnn.io import lockfile, results
from dcnn.io.lockfile import RunLock
from dcnn.io.results import ResultWriter, open_result


@pytest.mark.parametrize(
    "error",
    [
        OSError(errno.ENOSPC, "No space left on device", "out/y.h5"),
        RuntimeError(
            "Unable to synchronously flush file (file write failed: ..., errno = 28, "
            "error message = 'No space left on device')"
        ),
        OSError("Unable to copy object (h5o.copy ... No space left on device)"),
    ],
)
def test_a_full_disk_is_recognised_from_an_errno_or_hdf5s_text(error):
    message = disk_full(error)
    assert message is not None and message.startswith(("out/y.h5: ", "no space"))
    assert message is not None and message.count("\n") == 0 and "no space left on the device" in message


def test_a_quota_and_other_errors():
    assert "disk quota exceeded" in disk_full(OSError(errno.EDQUOT, "Disk quota exceeded"))
    assert disk_full(OSError(errno.EACCES, "Permission denied")) is None
    assert disk_full(RuntimeError("errno = 2")) is None
    try:
        try:
            raise OSError(errno.ENOSPC, "No space left on device")
        except OSError as inner:
            raise KeyError("closing") from inner
    except KeyError as outer:
        assert disk_full(outer) is not None  # found in the chain


def test_run_main_prints_one_line_and_exits_2(capsys):
    parser = argparse.ArgumentParser()
    add_common_arguments(parser)

    def body(args):
        raise RuntimeError("Unable to synchronously flush file (errno = 28, 'No space left on device')")

    assert run_main(body, parser, []) == EXIT_USAGE
    error = capsys.readouterr().err
    assert error.startswith("dcnn: error: no space left on the device") and error.count("\n") == 1
    assert "Traceback" not in error


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, "No space left on device")


def test_a_full_disk_at_the_lock_refuses_in_one_line_and_leaves_no_lock_file(tmp_path, monkeypatch):
    monkeypatch.setattr(lockfile.os, "pwrite", _no_space)
    with pytest.raises(InputError, match="No space left on device"):
        RunLock.acquire(tmp_path / "z.h5")
    assert list(tmp_path.iterdir()) == []


def test_a_full_disk_in_the_final_rewrite_leaves_no_copy_nor_lock_and_the_file_resumable(tmp_path, monkeypatch):
    path = tmp_path / "y.h5"
    writer = ResultWriter.create(path, 2, 3, 1, {"model": "lenet"}, lock=RunLock.acquire(path))
    writer.write_task(0, 0, 2, np.ones((2, 3), np.float32), rank=0, started=0.0, ended=1.0)
    monkeypatch.setattr(results, "_copy_with", _no_space)
    with pytest.raises(OSError) as raised:
        writer.finish({})
    assert disk_full(raised.value) is not None
    assert sorted(p.name for p in tmp_path.iterdir()) == ["y.h5"]
    with open_result(path) as reader:
        assert reader["outputs/done"][()].tolist() == [1, 1]


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
    assert "Traceback" not in done.stderr and "No space left on device" in done.stderr.replace("no space", "No space")
    assert all(line.startswith(("dcnn: ", "Abort(")) for line in done.stderr.splitlines()), done.stderr
    assert not [name for name in os.listdir(small_disk) if name.endswith((".lock", ".tmp"))]
