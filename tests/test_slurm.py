"""SLURM for real: a one-node cluster on this machine runs slurm/infer.sbatch, and the HDF5 it writes is checked.

The cluster comes from ``scripts/slurm_cluster.sh``. Where SLURM is not running, the test starts it if it may
install packages (root, and ``CI`` or ``DCNN_TEST_SLURM`` set); otherwise it is skipped with the reason. A
cluster the test started is stopped after the module's tests (``slurm_cluster.sh stop``: exactly the munged,
slurmctld and slurmd it started); one that was already running is left as it was.
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest
from conftest import write_digits

ROOT = Path(__file__).resolve().parents[1]


def slurm_running() -> bool:
    if not shutil.which("sinfo"):
        return False
    done = subprocess.run(["sinfo", "-h", "-o", "%T"], capture_output=True, text=True, timeout=30)
    return done.returncode == 0 and any(state.startswith(("idle", "mixed", "alloc")) for state in done.stdout.split())


@pytest.fixture(scope="module")
def slurm():
    if slurm_running():
        yield
        return
    allowed = os.geteuid() == 0 and (os.environ.get("CI") or os.environ.get("DCNN_TEST_SLURM"))
    if not allowed:
        pytest.skip("no SLURM running; start one with scripts/slurm_cluster.sh (root), or set DCNN_TEST_SLURM=1")
    done = subprocess.run([str(ROOT / "scripts" / "slurm_cluster.sh")], capture_output=True, text=True, timeout=900)
    if done.returncode == 3:
        pytest.skip(f"SLURM could not be installed here: {done.stderr.strip()}")
    try:
        assert done.returncode == 0, done.stdout + done.stderr
        assert slurm_running()
        yield
    finally:
        stopped = subprocess.run([str(ROOT / "scripts" / "slurm_cluster.sh"), "stop"], capture_output=True,
                                 text=True, timeout=120)
        assert stopped.returncode == 0, stopped.stderr


def test_sbatch_runs_the_inference_job(slurm, tmp_path):
    output = tmp_path / "job.h5"
    log = tmp_path / "slurm-%j.out"
    environment = {**os.environ, "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
                   "DCNN_OUTPUT": str(output), "DCNN_PYTHON": sys.executable}
    done = subprocess.run(["sbatch", "--wait", "--ntasks=2", "--cpus-per-task=1", f"--output={log}",
                           "slurm/infer.sbatch", "--quiet"],
                          cwd=ROOT, env=environment, capture_output=True, text=True, timeout=600)
    logs = "".join(path.read_text() for path in tmp_path.glob("slurm-*.out"))
    assert done.returncode == 0, done.stdout + done.stderr + logs
    assert "mpiexec -n 2, 2 task(s) x 1 thread(s)" in logs
    with h5py.File(output) as handle:
        assert handle.attrs["status"] == "complete" and handle.attrs["ranks"] == 2
        assert handle.attrs["model"] == "mmod" and handle["outputs/done"][()].all()
        assert len(handle["outputs/done"]) == 48


def test_sweep_prints_one_sbatch_line_per_job(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text('name = "t"\nnodes = [1, 2]\nimages = [8]\nmodes = ["batch", "spatial"]\n')
    done = subprocess.run([sys.executable, "scripts/sweep.py", str(config)], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    lines = done.stdout.splitlines()
    assert len(lines) == 4 and all("sbatch --job-name=t --dependency=singleton" in line for line in lines)
    assert "--ntasks=2" in lines[1] and "results/sweeps/t/mmod-spatial-8-np2.h5" in lines[3]


def test_sweep_runs_locally_and_each_job_writes_its_file(tmp_path):
    config = tmp_path / "sweep.toml"
    config.write_text('name = "test-local"\nnodes = [1, 2]\nmodels = ["lenet5"]\ninput = "%s"\n'
                      'arguments = ["--quiet", "--top", "0"]\n' % (tmp_path / "digits.h5"))
    write_digits(tmp_path / "digits.h5", 6, seed=0)
    done = subprocess.run([sys.executable, "scripts/sweep.py", str(config), "--local", "--results",
                           str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr
    for ranks in (1, 2):
        with h5py.File(tmp_path / "out" / "test-local" / f"lenet5-batch-set-np{ranks}.h5") as handle:
            assert handle.attrs["ranks"] == ranks and handle["outputs/done"][()].all()
    # Run again: each job's file is resumed, as slurm/infer.sbatch does (it was refused: "already exists").
    again = subprocess.run([sys.executable, "scripts/sweep.py", str(config), "--local", "--results",
                            str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and again.stdout.count("--resume") == 2, again.stderr
    # A job that fails ends the sweep with its status and one line naming it (it ended in a Python traceback).
    config.write_text(config.read_text().replace("test-local", "test-fail").replace('"lenet5"', '"alexnet"'))
    failed = subprocess.run([sys.executable, "scripts/sweep.py", str(config), "--local", "--results",
                             str(tmp_path / "out")], cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert failed.returncode == 2 and "Traceback" not in failed.stderr, failed.stderr
    assert "sweep: job test-fail-alexnet-batch-set-np1 failed (exit status 2)" in failed.stderr


@pytest.mark.parametrize("text,message", [
    ('nodes = [1]\nimages = [4]\n', "'name' must be"),
    ('name = "x"\nnodes = []\nimages = [4]\n', "'nodes' must be a non-empty list"),
    ('name = "x"\nnodes = [1, 0]\nimages = [4]\n', "positive integers"),
    ('name = "x"\nnodes = [1]\n', "either 'images'"),
    ('name = "x"\nnodes = [1]\nimages = [4]\ninput = "a.h5"\n', "either 'images'"),
    ('name = "x"\nnodes = [1]\nimages = [4]\nmodels = ["resnet"]\n', "'models' must be"),
    ('name = "x"\nnodes = [1]\nimages = [4]\nmodes = ["turbo"]\n', "'modes' must be"),
    ('name = "x"\nnodes = [1]\nimages = [4]\narguments = "--quiet"\n', "'arguments' must be"),
    ('name = "x"\nnodes = [1]\nimages = [4]\ncpus_per_task = 0\n', "'cpus_per_task'"),
    ('name = "x\n', "not valid TOML"),
])
def test_bad_sweep_files(tmp_path, text, message):
    from dcnn.errors import InputError
    from dcnn.io.sweep import load_sweep

    path = tmp_path / "sweep.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        load_sweep(path)


def test_a_requeued_job_resumes_its_file_instead_of_failing(tmp_path):
    """The batch script run again on its output (SLURM's requeue): it resumes, and a complete file is no error."""
    import numpy as np

    digits = tmp_path / "digits.h5"
    with h5py.File(digits, "w") as handle:
        handle["images"] = np.zeros((4, 32, 32, 1), np.uint8)
    output = tmp_path / "job.h5"
    environment = {**os.environ, "DCNN_LAUNCHER": "env", "DCNN_PYTHON": sys.executable, "DCNN_OUTPUT": str(output),
                   "PYTHONPATH": str(ROOT)}
    job = ["bash", str(ROOT / "slurm" / "infer.sbatch"), "--model", "lenet5", "--input", str(digits)]
    first = subprocess.run(job, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert first.returncode == 0, first.stderr
    again = subprocess.run(job, cwd=tmp_path, env=environment, capture_output=True, text=True, timeout=300)
    assert again.returncode == 0 and "already complete; nothing to do" in again.stdout, again.stderr
