"""Weights: reproducible initialisation, .npz/HDF5 round trips, and errors that name the key."""

import h5py
import numpy as np
import pytest

from dcnn.errors import WeightsError
from dcnn.network.weights import init_weights, load_weights, save_weights, validate_weights
from dcnn.network.zoo import get_model


@pytest.fixture(scope="module")
def lenet():
    return get_model("lenet5")


def test_init_is_reproducible_and_seeded(lenet):
    first, again, other = init_weights(lenet, 1), init_weights(lenet, 1), init_weights(lenet, 2)
    assert list(first) == list(lenet.state_spec())
    for key in first:
        np.testing.assert_array_equal(first[key], again[key])
    assert not np.array_equal(first["features.0.weight"], other["features.0.weight"])


def test_he_initialisation_scale():
    network = get_model("vgg11")
    weights = init_weights(network, 0)
    w = weights["features.8.weight"]  # 512 x 256 x 3 x 3
    assert w.dtype == np.float32
    assert w.std() == pytest.approx(np.sqrt(2 / (256 * 9)), rel=0.02)
    assert np.any(weights["features.8.bias"] != 0)


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_round_trip(tmp_path, lenet, suffix):
    weights = init_weights(lenet, 3)
    path = tmp_path / f"w{suffix}"
    save_weights(path, weights)
    loaded = load_weights(path, lenet)
    assert list(loaded) == list(weights)
    for key in weights:
        np.testing.assert_array_equal(loaded[key], weights[key])


def test_batch_norm_counter_is_optional_and_dropped():
    network = get_model("vgg11_bn")
    weights = init_weights(network, 0)
    assert "features.1.num_batches_tracked" in weights
    checked = validate_weights(network, weights)
    assert "features.1.num_batches_tracked" not in checked
    del weights["features.1.num_batches_tracked"]
    validate_weights(network, weights)


def test_missing_key(lenet):
    weights = init_weights(lenet)
    del weights["classifier.2.bias"]
    with pytest.raises(WeightsError, match=r"missing key 'classifier\.2\.bias'"):
        validate_weights(lenet, weights)


def test_extra_key(lenet):
    weights = init_weights(lenet)
    weights["classifier.9.weight"] = np.zeros(3, np.float32)
    with pytest.raises(WeightsError, match=r"unexpected key 'classifier\.9\.weight'"):
        validate_weights(lenet, weights)


def test_wrong_shape_names_both_shapes(lenet):
    weights = init_weights(lenet)
    weights["features.3.weight"] = np.zeros((16, 6, 3, 3), np.float32)
    with pytest.raises(WeightsError, match=r"'features.3.weight' has shape \(16, 6, 3, 3\).*expects \(16, 6, 5, 5\)"):
        validate_weights(lenet, weights)


def test_wrong_dtype(lenet):
    weights = init_weights(lenet)
    weights["features.0.bias"] = weights["features.0.bias"].astype(np.float64)
    with pytest.raises(WeightsError, match="dtype float64, expected float32"):
        validate_weights(lenet, weights)


def test_mismatched_model(tmp_path, lenet):
    path = tmp_path / "alex.npz"
    save_weights(path, init_weights(lenet))
    with pytest.raises(WeightsError, match="missing key"):
        load_weights(path, get_model("alexnet"))


def test_missing_file(tmp_path):
    with pytest.raises(WeightsError, match="does not exist"):
        load_weights(tmp_path / "nope.npz")


@pytest.mark.parametrize("content", [b"", b"not a weights file", b"PK\x03\x04 truncated zip"])
def test_garbage_files(tmp_path, content):
    path = tmp_path / "bad.npz"
    path.write_bytes(content)
    with pytest.raises(WeightsError):
        load_weights(path)


def test_truncated_npz(tmp_path, lenet):
    path = tmp_path / "w.npz"
    save_weights(path, init_weights(lenet))
    data = path.read_bytes()
    path.write_bytes(data[:len(data) // 2])
    with pytest.raises(WeightsError):
        load_weights(path, lenet)


def test_pickled_object_arrays_are_refused(tmp_path):
    path = tmp_path / "obj.npz"
    np.savez(path, **{"features.0.weight": np.array([{"evil": 1}], dtype=object)})
    with pytest.raises(WeightsError, match="cannot read weights"):
        load_weights(path)


def test_hdf5_nested_groups_and_non_numeric(tmp_path, lenet):
    weights = init_weights(lenet)
    path = tmp_path / "nested.h5"
    with h5py.File(path, "w") as handle:
        for key, value in weights.items():
            handle.create_dataset(key.replace(".", "/"), data=value)
    assert set(load_weights(path, lenet)) == set(weights)
    with h5py.File(path, "a") as handle:
        handle.create_dataset("note", data="text")
    with pytest.raises(WeightsError, match="not numeric"):
        load_weights(path)


def test_unknown_extension(tmp_path, lenet):
    with pytest.raises(WeightsError, match=r"\.npz, \.h5"):
        save_weights(tmp_path / "w.pt", init_weights(lenet))


@pytest.mark.parametrize("suffix", [".npz", ".h5"])
def test_row_shards_equal_rows_of_the_full_tensors(tmp_path, suffix):
    network = get_model("vgg11")
    rows = {"classifier.0.weight": (1000, 1700), "classifier.0.bias": (1000, 1700), "classifier.6.bias": (0, 3)}
    full = init_weights(network, 7)
    shard = init_weights(network, 7, rows=rows)
    path = tmp_path / f"w{suffix}"
    save_weights(path, full)
    loaded = load_weights(path, network, rows=rows)
    for key in full:
        expected = full[key][slice(*rows[key])] if key in rows else full[key]
        np.testing.assert_array_equal(shard[key], expected)
        np.testing.assert_array_equal(loaded[key], expected)
