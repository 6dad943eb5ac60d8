"""The package's layering: only dcnn/parallel imports mpi4py, and the serial commands never load it."""

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
