"""The bundled image sets are found in a checkout and in a non-editable installation (``pip install .``)."""

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import pytest

from dcnn.errors import InputError
from dcnn.io import bundled
from dcnn.io.bundled import BUNDLED, bundled_data, data_folders

ROOT = Path(__file__).resolve().parents[1]


@pytest.mark.parametrize("name", BUNDLED)
def test_the_checkout_holds_every_bundled_file(name):
    assert bundled_data(name) == ROOT / "data" / name


def test_a_missing_file_names_the_folders_searched(monkeypatch, tmp_path):
    monkeypatch.setattr(bundled, "data_folders", lambda: [tmp_path / "a", tmp_path / "b"])
    with pytest.raises(InputError, match=r"the bundled faces.h5 is in none of .*/a, .*/b; reinstall dcnn"):
        bundled_data("faces.h5")
    assert data_folders()  # the real list is untouched


@pytest.mark.slow
def test_a_wheel_installation_runs_the_default_job(tmp_path):
    """Build the wheel, install it (no dependencies, no editable link) under a prefix, and run the default job
    from a folder far from the checkout: the bundled data must come from the installation's share/dcnn."""
    source = tmp_path / "source"  # building writes build/ and *.egg-info next to the sources: not in the checkout
    for name in ("dcnn", "data"):
        shutil.copytree(ROOT / name, source / name, ignore=shutil.ignore_patterns("__pycache__"))
    for name in ("setup.cfg", "pyproject.toml", "README.md"):
        shutil.copy(ROOT / name, source / name)
    wheels = tmp_path / "wheels"
    subprocess.run([sys.executable, "-m", "pip", "wheel", str(source), "--no-deps", "--no-build-isolation", "-q",
                    "-w", str(wheels)], check=True, capture_output=True, timeout=300, cwd=tmp_path)
    prefix = tmp_path / "prefix"
    subprocess.run([sys.executable, "-m", "pip", "install", "--no-deps", "--no-index", "--ignore-installed", "-q",
                    "--prefix", str(prefix), *map(str, wheels.glob("dcnn-*.whl"))], check=True, capture_output=True,
                   timeout=300)
    site = next(prefix.glob("**/site-packages"))
    assert sorted(path.name for path in (prefix / "share" / "dcnn").iterdir()) == sorted(BUNDLED)
    env = {"PYTHONPATH": str(site), "OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    where = subprocess.run([sys.executable, "-c", "import dcnn; print(dcnn.__file__)"], capture_output=True,
                           text=True, env=env, cwd=tmp_path, timeout=60)
    assert where.stdout.startswith(str(site)), where.stdout + where.stderr
    done = subprocess.run([sys.executable, "-m", "dcnn.infer", "--output", "run.h5", "--quiet", "--threads", "1"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, timeout=600)
    assert done.returncode == 0, done.stderr
    with h5py.File(tmp_path / "run.h5") as handle:
        assert handle.attrs["input"].startswith(str(prefix / "share" / "dcnn" / "faces.h5"))
        assert handle["outputs/done"][()].all()
