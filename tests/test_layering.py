"""The package's layering: only dcnn/parallel imports mpi4py, and the serial commands never load it."""

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "dcnn"
MPI_IMPORT = re.compile(r"^\s*(import mpi4py|from mpi4py\b)", re.MULTILINE)
#: Serial entry points and the modules behind them, with arguments that run them to completion.
SERIAL_COMMANDS = [
    ("dcnn.model", ["lenet5"]),
    ("dcnn.plan", ["--model", "lenet5", "--nodes", "2", "--ram", "1GiB"]),
    ("dcnn.simulate", ["--calibrate", "paper", "--nodes", "2", "--images", "8"]),
    ("dcnn.analyze", ["/nonexistent.h5"]),
]


def test_only_parallel_imports_mpi4py():
    importers = sorted(str(path.relative_to(PACKAGE)) for path in PACKAGE.rglob("*.py")
                       if MPI_IMPORT.search(path.read_text()))
    assert importers, "the MPI layer imports mpi4py somewhere"
    assert all(path.startswith("parallel/") for path in importers), importers


def _mpi4py_loaded(code: str) -> bool:
    done = subprocess.run([sys.executable, "-c", f"{code}\nimport sys\nprint('mpi4py' in sys.modules)"],
                          capture_output=True, text=True, timeout=120)
    return done.stdout.strip().splitlines()[-1] == "True"


@pytest.mark.parametrize("module", ["dcnn", "dcnn.analysis.plots", "dcnn.analysis.analyze",
                                    "dcnn.analysis.simulate", "dcnn.planner.plan", "dcnn.decomposition.fused"])
def test_importing_serial_modules_does_not_load_mpi4py(module):
    assert not _mpi4py_loaded(f"import {module}")


@pytest.mark.parametrize("module,args", SERIAL_COMMANDS)
def test_serial_commands_run_without_mpi4py(module, args):
    code = (f"import runpy, sys\nsys.argv = [{module!r}, *{args!r}]\n"
            f"try:\n    runpy.run_module({module!r}, run_name='__main__')\nexcept SystemExit:\n    pass")
    assert not _mpi4py_loaded(code)


def test_the_parallel_command_loads_mpi4py():
    assert _mpi4py_loaded("import dcnn.infer")


@pytest.mark.parametrize("variable", ["PMI_RANK", "OMPI_COMM_WORLD_RANK", "PMIX_RANK"])
def test_launcher_rank_reads_the_launchers_variables(monkeypatch, variable):
    from dcnn.cli.common import RANK_VARIABLES, launcher_rank

    for name in RANK_VARIABLES:
        monkeypatch.delenv(name, raising=False)
    assert launcher_rank() == 0
    monkeypatch.setenv(variable, "3")
    assert launcher_rank() == 3


def test_a_serial_tool_under_a_launcher_prints_on_rank_0_only():
    def model(rank, *args):
        env = {**os.environ, "PMI_RANK": str(rank)}
        return subprocess.run([sys.executable, "-m", "dcnn.model", *args], capture_output=True, text=True, env=env,
                              timeout=120)

    first, other = model(0, "lenet5"), model(1, "lenet5")
    assert first.returncode == other.returncode == 0
    assert "params" in first.stdout and other.stdout == ""
    first, other = model(0, "nosuchmodel"), model(1, "nosuchmodel")
    assert first.returncode == other.returncode == 2
    assert first.stderr.startswith("dcnn: error: unknown model") and other.stderr == ""


def test_the_planner_model_does_not_import_its_command():
    """``python -m dcnn.plan`` once ran its module twice (plan.py and planner_cli.py imported each other)."""
    done = subprocess.run([sys.executable, "-c", "import sys, dcnn.planner.plan\n"
                           "print(sorted(name for name in sys.modules if name.startswith('dcnn.cli')))"],
                          capture_output=True, text=True, timeout=120)
    assert done.stdout.strip() == "[]"
