"""The result file is sacred: never truncated, never overwritten unasked, one run per file, resumable as printed."""

import os
import shlex
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import launcher_rank_of, mpi_command, rank_pids, write_digits

from dcnn.errors import one_line as printable
from dcnn.io.results import open_result

NUM_IMAGES, BATCH = 24, 4


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("data") / "digits.h5", NUM_IMAGES, seed=7)


def command(*args, ranks=0):
    launcher = mpi_command(ranks) if ranks else []
    return [*launcher, sys.executable, "-m", "dcnn.infer", "--model", "lenet5", "--batch-size", str(BATCH),
            "--threads", "1", "--quiet", *args]


def infer(*args, ranks=0, cwd=None, timeout=120):
    return subprocess.run(command(*args, ranks=ranks), capture_output=True, text=True, timeout=timeout, cwd=cwd)


@pytest.fixture(scope="module")
def reference(digits, tmp_path_factory):
    path = tmp_path_factory.mktemp("ref") / "reference.h5"
    done = infer("--input", str(digits), "--output", str(path))
    assert done.returncode == 0, done.stderr
    with h5py.File(path) as handle:
        return handle["outputs/logits"][()]


def one_line(stderr: str) -> str:
    lines = stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("dcnn: error: "), stderr
    return lines[0]


def leftovers(folder: Path, keep: set[str]) -> list[str]:
    """Files in ``folder`` other than ``keep`` (temporary copies, lock files)."""
    return sorted(p.name for p in folder.iterdir() if p.name not in keep)


def test_an_existing_result_is_refused_byte_identical_unless_force(tmp_path, digits, reference):
    output = tmp_path / "run.h5"
    assert infer("--input", str(digits), "--output", str(output)).returncode == 0
    before = output.read_bytes()
    refused = infer("--input", str(digits), "--output", str(output))
    assert refused.returncode == 2 and "already exists; give --force" in one_line(refused.stderr)
    assert output.read_bytes() == before and leftovers(tmp_path, {"run.h5"}) == []
    forced = infer("--input", str(digits), "--output", str(output), "--force")
    assert forced.returncode == 0, forced.stderr
    with h5py.File(output) as handle:
        assert handle.attrs["status"] == "complete"
        np.testing.assert_array_equal(handle["outputs/logits"][()], reference)
    assert leftovers(tmp_path, {"run.h5"}) == []


# Each holds the file until its standard input closes (the test's end), however long the runs take.
HOLDERS = {
    # another program with the result open for writing (HDF5 holds an exclusive lock on it)
    "h5py": "import h5py, sys\nf = h5py.File(sys.argv[1], 'r+')\nprint('held', flush=True)\nsys.stdin.read()",
    # a lock that makes HDF5's own locking fail, as on NFS ("unable to lock file")
    "flock": "import fcntl, sys\nf = open(sys.argv[1], 'rb')\nfcntl.flock(f, fcntl.LOCK_EX)\n"
             "print('held', flush=True)\nsys.stdin.read()",
}


@pytest.mark.parametrize("holder", sorted(HOLDERS))
def test_a_refused_run_leaves_a_held_file_byte_identical(tmp_path, digits, reference, holder):
    """Before: h5py's mode "w" truncated the file, then HDF5 failed to lock it: exit 2 and a 0-byte file."""
    output = tmp_path / "held.h5"
    assert infer("--input", str(digits), "--output", str(output)).returncode == 0
    process = subprocess.Popen([sys.executable, "-c", HOLDERS[holder], str(output)], stdin=subprocess.PIPE,
                               stdout=subprocess.PIPE, text=True)
    try:
        assert process.stdout.readline().strip() == "held"
        before = output.read_bytes()  # as the holder left it (h5py's r+ marks the file open)
        refused = infer("--input", str(digits), "--output", str(output))
        assert refused.returncode == 2 and "already exists" in one_line(refused.stderr)
        assert output.read_bytes() == before
        forced = infer("--input", str(digits), "--output", str(output), "--force")
        assert forced.returncode == 0, forced.stderr
    finally:
        process.kill()
        process.wait()
    with h5py.File(output) as handle:
        np.testing.assert_array_equal(handle["outputs/logits"][()], reference)
    assert leftovers(tmp_path, {"held.h5"}) == []


def test_a_second_run_on_a_live_file_is_refused_and_the_first_completes(tmp_path, digits, reference):
    """Before: the second run wiped the first's live file, the first failed, the second hung in HDF5."""
    output = tmp_path / "live.h5"
    # Rank 1 is stopped to hold the run live (it cannot end without rank 1), with its lock held by rank 0, while the
    # others try. Rank 0 is slow enough for the run to be stopped before it could end (its sleep after each task is
    # 299 times the task's time: about 1 s from the output's creation here, against the few milliseconds the test
    # takes; a busy machine stretches both). The stopped rank is not throttled: stopped within a task, it would
    # count the stop as task time and sleep 299 times that after it continues (minutes).
    slow = ["--throttle", "0:300"]
    first = subprocess.Popen(command("--input", str(digits), "--output", str(output), "--mode", "batch", *slow,
                                     ranks=2), stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                             start_new_session=True)
    try:
        deadline = time.time() + 120
        while not output.exists():
            assert first.poll() is None and time.time() < deadline, "the first run did not start"
            time.sleep(0.05)
        # the launcher starts the ranks in process groups of their own
        held = [pid for pid in rank_pids(output.name) if launcher_rank_of(pid) == 1]
        assert len(held) == 1
        os.kill(held[0], signal.SIGSTOP)
        seconds = [subprocess.Popen(command(*second, str(output)), stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                    text=True)
                   for second in (["--input", str(digits), "--output"],
                                  ["--input", str(digits), "--force", "--output"], ["--resume"])]
        for second in seconds:
            _, stderr = second.communicate(timeout=120)  # three commands start at once: a hang guard only
            assert second.returncode == 2 and "is being written by another run (process" in one_line(stderr)
        assert first.poll() is None, "the first run ended before it was stopped; slow it down"
        os.kill(held[0], signal.SIGCONT)
        _, stderr = first.communicate(timeout=240)
        assert first.returncode == 0, stderr
    finally:
        if first.poll() is None:
            os.killpg(first.pid, signal.SIGKILL)
    with h5py.File(output) as handle:
        assert handle.attrs["status"] == "complete" and handle["outputs/done"][()].all()
        np.testing.assert_array_equal(handle["outputs/logits"][()], reference)
    assert leftovers(tmp_path, {"live.h5"}) == []


def test_the_printed_resume_command_works_from_anywhere(tmp_path, digits, reference):
    output = tmp_path / "out dir" / "killed.h5"
    process = subprocess.Popen(command("--input", str(digits), "--output", str(output), "--throttle", "0:300"),
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 120
    while True:
        assert process.poll() is None and time.time() < deadline, "no progress to interrupt"
        try:
            with open_result(output) as handle:
                if handle["outputs/done"][()].sum() >= BATCH:
                    break
        except (OSError, KeyError):
            pass
        time.sleep(0.05)
    process.send_signal(signal.SIGTERM)
    _, stderr = process.communicate(timeout=60)
    assert process.returncode == 128 + signal.SIGTERM and "Traceback" not in stderr
    printed = stderr.split("continue with: ")[1].splitlines()[0]
    assert printed == f"python -m dcnn.infer --resume {shlex.quote(str(output))}"
    elsewhere = tmp_path / "elsewhere"
    elsewhere.mkdir()
    arguments = shlex.split(printed)
    assert arguments[:3] == ["python", "-m", "dcnn.infer"]
    resumed = subprocess.run([sys.executable, *arguments[1:]], capture_output=True, text=True, timeout=120,
                             cwd=elsewhere)
    assert resumed.returncode == 0, resumed.stderr
    with h5py.File(output) as handle:
        assert handle.attrs["status"] == "complete" and handle.attrs["runs"] == 2
        np.testing.assert_array_equal(handle["outputs/logits"][()], reference)
    again = subprocess.run([sys.executable, *arguments[1:]], capture_output=True, text=True, timeout=120)
    assert again.returncode == 0 and "already complete; nothing to do" in again.stdout, again.stderr
    # Given its input again (a sweep's rerun): the same content is nothing to do; another is refused (it said
    # "nothing to do" for any input, as if the file held that input's results).
    same = subprocess.run([sys.executable, *arguments[1:], "--input", str(digits)], capture_output=True, text=True,
                          timeout=120)
    assert same.returncode == 0 and "already complete; nothing to do" in same.stdout, same.stderr
    other = write_digits(tmp_path / "other.h5", 24, seed=5)
    changed = subprocess.run([sys.executable, *arguments[1:], "--input", str(other)], capture_output=True, text=True,
                             timeout=120)
    assert changed.returncode == 2 and f"{str(other)!r} is not the input this run was made with" in changed.stderr


def interrupted(path: Path, first_done: int) -> None:
    """Make the complete result ``path`` look like a run killed after its first ``first_done`` images."""
    with h5py.File(path, "r+", libver="latest") as handle:
        handle.attrs["status"] = "running"
        handle["outputs/done"][first_done:] = 0
        handle["outputs/logits"][first_done:] = np.nan


def test_resume_knows_the_input_by_content_not_by_name(tmp_path, digits, reference):
    """Before: ``./x.h5`` for ``x.h5`` was refused, and another ``x.h5`` was accepted and mixed in."""
    data = tmp_path / "data"
    data.mkdir()
    (data / "x.h5").write_bytes(digits.read_bytes())
    output = tmp_path / "run.h5"
    assert infer("--input", "x.h5", "--output", str(output), cwd=data).returncode == 0
    interrupted(output, 8)
    same = infer("--resume", str(output), "--input", "./x.h5", cwd=data)  # the same file, spelled otherwise
    assert same.returncode == 0, same.stderr
    interrupted(output, 8)
    (data / "x.h5").rename(data / "renamed.h5")
    gone = infer("--resume", str(output))
    assert gone.returncode == 2 and "is gone; if it was moved, give its new place with --input" in gone.stderr
    with h5py.File(data / "x.h5", "w") as handle:  # another file under the old name
        handle["images"] = np.zeros((NUM_IMAGES, 32, 32, 1), np.uint8)
    other = infer("--resume", str(output))
    assert other.returncode == 2 and "is not the input this run was made with" in one_line(other.stderr)
    moved = infer("--resume", str(output), "--input", str(data / "renamed.h5"))
    assert moved.returncode == 0, moved.stderr
    with h5py.File(output) as handle:
        assert handle.attrs["status"] == "complete" and handle.attrs["runs"] == 3
        np.testing.assert_array_equal(handle["outputs/logits"][()], reference)


def test_resume_refuses_other_weights_under_the_same_name(tmp_path, digits):
    from dcnn.network.weights import init_weights, save_weights
    from dcnn.network.zoo import get_model

    network = get_model("lenet5")
    weights = tmp_path / "w.npz"
    save_weights(weights, init_weights(network, 1))
    output = tmp_path / "run.h5"
    assert infer("--input", str(digits), "--weights", str(weights), "--output", str(output)).returncode == 0
    interrupted(output, 8)
    save_weights(weights, init_weights(network, 2))
    other = infer("--resume", str(output))
    assert other.returncode == 2 and "is not the weights this run was made with" in one_line(other.stderr)
    clash = infer("--resume", str(output), "--batch-size", "8")
    assert clash.returncode == 2 and "made with --batch-size 4, this run asks for 8" in one_line(clash.stderr)


def test_non_ascii_and_non_utf8_paths_work(tmp_path, digits, reference):
    """Before: a UnicodeEncodeError traceback (HDF5 attributes take only valid UTF-8; undecodable bytes of a path
    reach Python as surrogates)."""
    folder = Path(os.fsdecode(bytes(tmp_path) + b"/d\xff\xfe"))
    folder.mkdir()
    source = folder / "in.h5"
    source.write_bytes(digits.read_bytes())
    output = tmp_path / "папка" / "café.h5"
    undecodable = Path(os.fsdecode(bytes(tmp_path) + "/папка/caf".encode() + b"\xe9.h5"))
    for path in (output, undecodable):
        loud = [part for part in command("--input", str(source), "--output", str(path)) if part != "--quiet"]
        done = subprocess.run(loud, capture_output=True, timeout=120)  # the summary prints the path
        assert done.returncode == 0 and b"Traceback" not in done.stderr, done.stderr
        assert printable(str(path)).encode() in done.stdout  # undecodable bytes as \xNN
        interrupted(path, 8)
        resumed = subprocess.run(command("--resume", str(path)), capture_output=True, timeout=120)
        assert resumed.returncode == 0, resumed.stderr
        with open_result(path) as handle:
            stored = handle.attrs["input"]
            np.testing.assert_array_equal(handle["outputs/logits"][()], reference)
        assert os.fsencode(source) in (stored if isinstance(stored, bytes) else stored.encode())


def test_force_keeps_the_runs_own_input(tmp_path, digits):
    """Before: --input X.h5 --output X.h5 --force replaced the image set with the results (exit 0, images gone)."""
    own = tmp_path / "own.h5"
    own.write_bytes(digits.read_bytes())
    refused = infer("--input", str(own), "--output", str(own), "--force")
    assert refused.returncode == 2 and "is not a dcnn result file" in one_line(refused.stderr)
    assert own.read_bytes() == digits.read_bytes() and leftovers(tmp_path, {"own.h5"}) == []
