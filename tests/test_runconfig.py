"""--resume FILE alone: the options a result file records and how they come back."""

import argparse
import json

import pytest

from dcnn.cli.runconfig import FREE, IDENTITY, PER_RANKS, configuration, restore
from dcnn.errors import InputError


def namespace(tmp_path, **changes):
    source = tmp_path / "x.h5"
    source.touch()
    values = {key: None for key in (*IDENTITY, *FREE, *PER_RANKS)}
    values.update(model="lenet5", input=str(source), dataset="images", batch_size=4, mode="batch", upsample=0,
                  seed=0, tiles="4x4", halo_policy="reuse", no_comm_overlap=False, no_steal=False,
                  throttle=[])
    values.update(changes)
    return argparse.Namespace(**values)


def test_paths_are_stored_resolved(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stored = json.loads(configuration(namespace(tmp_path, input="./x.h5"), 2))
    assert stored["input"] == str(tmp_path / "x.h5") and stored["ranks"] == 2


def test_options_not_given_come_from_the_file(tmp_path):
    text = configuration(namespace(tmp_path, batch_size=8, mode="spatial", grid="1x2", tiles="2x2"), 2)
    args = namespace(tmp_path, input="elsewhere.h5")
    restore(args, frozenset({"resume"}), text, "run.h5", ranks=2)
    assert (args.batch_size, args.mode, args.grid, args.tiles) == (8, "spatial", "1x2", "2x2")
    assert args.input == str(tmp_path / "x.h5")
    other_ranks = namespace(tmp_path)
    restore(other_ranks, frozenset(), text, "run.h5", ranks=3)
    assert other_ranks.grid is None and other_ranks.mode == "spatial", "a 1x2 grid cannot serve 3 ranks"


def test_given_options_must_agree_or_may_replace(tmp_path):
    text = configuration(namespace(tmp_path), 1)
    with pytest.raises(InputError, match="made with --batch-size 4, this run asks for 8"):
        restore(namespace(tmp_path, batch_size=8), frozenset({"batch_size"}), text, "run.h5", ranks=1)
    args = namespace(tmp_path, tiles="3x3", input="moved.h5")
    restore(args, frozenset({"tiles", "input"}), text, "run.h5", ranks=1)
    assert args.tiles == "3x3" and args.input == "moved.h5", "checked later by content fingerprint"


def test_a_vanished_input_or_an_old_file_is_one_clear_error(tmp_path):
    args = namespace(tmp_path)
    text = configuration(args, 1)
    (tmp_path / "x.h5").unlink()
    with pytest.raises(InputError, match="is gone; if it was moved, give its new place with --input"):
        restore(args, frozenset(), text, "run.h5", ranks=1)
    with pytest.raises(InputError, match="made by an older dcnn"):
        restore(args, frozenset(), "none", "run.h5", ranks=1)


def test_files_with_the_old_option_names_resume(tmp_path):
    """Files written before --overlap and --no-overlap were renamed store them under their old names."""
    stored = json.loads(configuration(namespace(tmp_path, halo_policy="recompute", no_comm_overlap=True), 1))
    stored["overlap"], stored["no_overlap"] = stored.pop("halo_policy"), stored.pop("no_comm_overlap")
    args = namespace(tmp_path)
    restore(args, frozenset(), json.dumps(stored), "run.h5", ranks=1)
    assert (args.halo_policy, args.no_comm_overlap) == ("recompute", True)


def test_a_model_file_is_stored_resolved_and_may_move(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "net.onnx").write_bytes(b"model")
    args = namespace(tmp_path, model="./net.onnx", preprocess="imagenet")
    text = configuration(args, 1)
    assert json.loads(text)["model"] == str(tmp_path / "net.onnx")
    restored = namespace(tmp_path, model=None, preprocess=None)
    restore(restored, frozenset(), text, "run.h5", ranks=1)
    assert restored.model == str(tmp_path / "net.onnx") and restored.preprocess == "imagenet"
    moved = namespace(tmp_path, model="elsewhere/net.onnx")
    restore(moved, frozenset({"model"}), text, "run.h5", ranks=1)
    assert moved.model == "elsewhere/net.onnx", "checked later by content fingerprint"
    with pytest.raises(InputError, match=r"made with --model .*net.onnx, this run asks for lenet5"):
        restore(namespace(tmp_path), frozenset({"model"}), text, "run.h5", ranks=1)
    with pytest.raises(InputError, match="made with --preprocess imagenet, this run asks for none"):
        restore(namespace(tmp_path, preprocess="none"), frozenset({"preprocess"}), text, "run.h5", ranks=1)
    (tmp_path / "net.onnx").unlink()
    with pytest.raises(InputError, match=r"its model .*net.onnx. is gone; if it was moved, give its new place with "
                                         r"--model"):
        restore(namespace(tmp_path), frozenset(), text, "run.h5", ranks=1)


def test_files_from_before_preprocess_resume(tmp_path):
    stored = json.loads(configuration(namespace(tmp_path), 1))
    del stored["preprocess"]
    args = namespace(tmp_path, preprocess="none")
    restore(args, frozenset(), json.dumps(stored), "run.h5", ranks=1)
    assert args.preprocess is None
