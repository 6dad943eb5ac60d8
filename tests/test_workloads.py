"""The registry of workloads (``dcnn/exec/workloads.py``): the detector is named once, and everyone asks it."""

import ast
from pathlib import Path

import pytest

from dcnn.errors import InputError
from dcnn.exec.workloads import DETECTOR, is_detector, workload_names
from dcnn.faces.detect import mmod_network
from dcnn.io.sweep import load_sweep
from dcnn.network.zoo import model_names

PACKAGE = Path(__file__).resolve().parents[1] / "dcnn"


def test_the_detector_is_the_first_workload_and_names_its_network():
    assert workload_names() == [DETECTOR, *model_names()]
    assert mmod_network().name == DETECTOR
    assert is_detector(DETECTOR.upper()) and not any(is_detector(name) for name in model_names())


def _detector_literals(path: Path) -> list[int]:
    """Lines of ``path`` holding a string constant that is exactly the detector's name (docstrings and longer
    strings that merely contain it do not count)."""
    tree = ast.parse(path.read_text())
    return [node.lineno for node in ast.walk(tree) if isinstance(node, ast.Constant) and node.value == DETECTOR]


def test_the_detector_name_is_written_once_in_the_package():
    """``"mmod"`` once stood in four places (infer, sweep validation, the detector, the cost table); every use
    now asks :mod:`dcnn.exec.workloads`, whose ``DETECTOR`` is the MMOD network's own name."""
    places = {
        str(path.relative_to(PACKAGE)): lines
        for path in sorted(PACKAGE.rglob("*.py"))
        if (lines := _detector_literals(path))
    }
    assert list(places) == ["faces/detect.py"] and len(places["faces/detect.py"]) == 1, places


def _sweep(tmp_path, extra=""):
    path = tmp_path / "sweep.toml"
    path.write_text(f'name = "x"\nnodes = [1]\nimages = [4]\n{extra}')
    return path


def test_sweep_models_are_the_registered_workloads(tmp_path):
    assert load_sweep(_sweep(tmp_path)).models == (DETECTOR,)
    chosen = [DETECTOR, model_names()[0]]
    assert load_sweep(_sweep(tmp_path, f"models = {chosen!r}\n".replace("'", '"'))).models == tuple(chosen)
    with pytest.raises(InputError, match=f"'models' must be a non-empty list of {DETECTOR}, "):
        load_sweep(_sweep(tmp_path, 'models = ["nosuchnet"]\n'))
