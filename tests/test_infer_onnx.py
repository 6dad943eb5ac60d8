"""``python -m dcnn.infer``, ``dcnn.model`` and ``dcnn.plan`` with ``--model FILE.onnx``, as a user runs them: real
processes and real mpiexec, with onnxruntime (on models exported from PyTorch) and ONNX's own expected outputs (its
"light" test models) as the oracles."""

import shutil
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import mpi_command, oracle

from dcnn.io.images import preprocess
from dcnn.network.graph import IMAGENET

oracle("torch")
oracle("onnxruntime")
from dcnn.testing.onnx_exports import (  # noqa: E402  (after the oracles: skipped without them)
    chain_cnn,
    channels_last_model,
    export,
    export_zoo,
    hand_written_cnn,
    residual_cnn,
    run_onnxruntime,
    two_heads_cnn,
    unsupported_model,
)

#: ONNX's light test models (full-size networks whose weights are ConstantOfShape fills), with expected outputs.
LIGHT = Path(oracle("onnx").__file__).parent / "backend" / "test" / "data" / "light"


def infer(*args, ranks=1, timeout=300):
    launcher = mpi_command(ranks) if ranks > 1 else []
    return subprocess.run([*launcher, sys.executable, "-m", "dcnn.infer", "--threads", "1", *args],
                          capture_output=True, text=True, timeout=timeout)


def tensors(path: Path, batch: np.ndarray) -> Path:
    with h5py.File(path, "w") as handle:
        handle["images"] = batch
    return path


def logits(path: Path) -> np.ndarray:
    with h5py.File(path) as handle:
        assert handle.attrs["status"] == "complete"
        return handle["outputs/logits"][()]


@pytest.fixture(scope="module")
def exported(tmp_path_factory):
    """The exported models (dynamic height and width) and a float32 set of odd-sized images for them."""
    folder = tmp_path_factory.mktemp("onnx")
    rng = np.random.default_rng(3)
    return {"chain": export(chain_cnn(), folder / "chain.onnx", (3, 21, 19)),
            "residual": export(residual_cnn(), folder / "residual.onnx", (3, 21, 19)),
            "hand": export(hand_written_cnn(), folder / "hand.onnx", (3, 21, 19), opset=11),
            "resnet18": export_zoo("resnet18", folder / "resnet18.onnx", (3, 40, 36)),
            "mobilenet_v2": export_zoo("mobilenet_v2", folder / "mobilenet_v2.onnx", (3, 36, 40)),
            "small": tensors(folder / "small.h5", rng.standard_normal((3, 3, 21, 19)).astype(np.float32)),
            "large": tensors(folder / "large.h5", rng.standard_normal((3, 3, 40, 36)).astype(np.float32))}


#: (model, image set, mode options, ranks): every mode, both fused policies, at 1 to 3 ranks.
RUNS = [
    ("chain", "small", ("--mode", "single"), 1),
    ("chain", "small", ("--mode", "batch", "--batch-size", "1"), 2),
    ("chain", "small", ("--mode", "spatial"), 3),
    ("chain", "small", ("--mode", "fused", "--tiles", "2x2", "--halo-policy", "recompute"), 2),
    ("chain", "small", ("--mode", "fused", "--tiles", "3x2", "--halo-policy", "reuse"), 3),
    ("residual", "small", ("--mode", "single"), 1),
    ("residual", "small", ("--mode", "spatial", "--grid", "1x2"), 2),
    ("residual", "small", ("--mode", "fused", "--tiles", "2x2", "--halo-policy", "reuse"), 2),
    ("residual", "small", ("--mode", "fused", "--tiles", "2x2", "--halo-policy", "recompute"), 3),
    ("hand", "small", ("--mode", "spatial"), 2),
    ("hand", "small", ("--mode", "fused", "--tiles", "2x2", "--halo-policy", "reuse"), 2),
    ("resnet18", "large", ("--mode", "spatial"), 2),
    ("resnet18", "large", ("--mode", "fused", "--tiles", "2x2", "--halo-policy", "reuse"), 3),
    ("mobilenet_v2", "large", ("--mode", "batch"), 2),
    ("mobilenet_v2", "large", ("--mode", "fused", "--tiles", "2x2", "--halo-policy", "recompute"), 2),
    ("mobilenet_v2", "large", ("--mode", "spatial", "--grid", "3x1"), 3),
]


@pytest.mark.parametrize("model,images,options,ranks", RUNS, ids=[f"{m}-{o[1]}-{o[-1]}-np{r}" for m, _, o, r in RUNS])
def test_exported_networks_agree_with_onnxruntime(tmp_path, exported, model, images, options, ranks):
    output = tmp_path / "run.h5"
    done = infer("--model", str(exported[model]), "--input", str(exported[images]), "--output", str(output),
                 "--quiet", *options, ranks=ranks)
    assert done.returncode == 0, done.stderr
    assert "warning" not in done.stderr, "the planner's prediction covers the ONNX reader"
    with h5py.File(exported[images]) as handle:
        expected = run_onnxruntime(exported[model], handle["images"][()])
    actual = logits(output)
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


@pytest.mark.parametrize("ranks", [1, 3])
def test_unsupported_operators_are_one_line_before_any_work_at_any_rank_count(tmp_path, exported, ranks):
    model = unsupported_model(tmp_path / "refused.onnx")
    output = tmp_path / "run.h5"
    done = infer("--model", str(model), "--input", str(exported["small"]), "--output", str(output), ranks=ranks,
                 timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr
    assert done.stderr.count("dcnn: error") == 1 and not done.stdout
    assert f"{model}: unsupported ONNX operators: Cos (node cosine); TopK (nodes top_a, top_b)" in done.stderr
    assert not output.exists() and not list(tmp_path.glob("run.h5*"))
    table = subprocess.run([sys.executable, "-m", "dcnn.model", str(model)], capture_output=True, text=True,
                           timeout=120)
    assert table.returncode == 2 and table.stderr.count("\n") == 1 and "TopK (nodes top_a, top_b)" in table.stderr


@pytest.mark.parametrize("kind", ["channels-last", "text", "truncated"])
def test_a_model_file_refused_by_the_reader_is_one_line_at_two_ranks(tmp_path, exported, kind):
    """A TensorFlow-layout model and a file of another format under a .onnx name: one line, exit 2, no output,
    no MPI hang."""
    model = tmp_path / f"{kind}.onnx"
    if kind == "text":
        model.write_text("not a model\n")
    elif kind == "truncated":
        model.write_bytes(exported["chain"].read_bytes()[:300])
    else:
        channels_last_model(model)
    output = tmp_path / "run.h5"
    done = infer("--model", str(model), "--input", str(exported["small"]), "--output", str(output), ranks=2,
                 timeout=120)
    assert done.returncode == 2 and "Traceback" not in done.stderr and not done.stdout
    assert done.stderr.count("dcnn: error") == 1 and not output.exists()
    expected = {"channels-last": "input 'x' is channels-last", "text": "not a readable ONNX model",
                "truncated": "not a readable ONNX model"}
    assert f"{model}: {expected[kind]}" in done.stderr


def test_a_fixed_input_size_is_checked_against_the_images_before_any_work(tmp_path, exported):
    model = export(chain_cnn(), tmp_path / "fixed.onnx", (3, 16, 16), dynamic=False)
    done = infer("--model", str(model), "--input", str(exported["small"]), "--output", str(tmp_path / "x.h5"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1
    assert (f"{exported['small']}:images: 21x19 images do not fit fixed.onnx, whose input 'image' is 1x3x16x16 "
            "(N x C x H x W): it takes 16x16 images only; resize them") in done.stderr
    fits = tmp_path / "fits.h5"
    batch = np.random.default_rng(0).standard_normal((2, 3, 16, 16)).astype(np.float32)
    done = infer("--model", str(model), "--input", str(tensors(fits, batch)), "--output", str(tmp_path / "y.h5"),
                 "--quiet")
    assert done.returncode == 0, done.stderr
    assert np.abs(logits(tmp_path / "y.h5") - run_onnxruntime(model, batch)).max() < 1e-4


def test_uint8_images_need_preprocess_which_matches_the_normalised_tensors(tmp_path, exported):
    pixels = np.random.default_rng(1).integers(0, 256, (2, 21, 19, 3), dtype=np.uint8)
    path = tmp_path / "pixels.h5"
    with h5py.File(path, "w") as handle:
        handle["images"] = pixels
    common = ("--model", str(exported["chain"]), "--input", str(path), "--quiet")
    refused = infer(*common, "--output", str(tmp_path / "x.h5"))
    assert refused.returncode == 2 and "give --preprocess imagenet" in refused.stderr
    assert infer(*common, "--preprocess", "imagenet", "--output", str(tmp_path / "a.h5")).returncode == 0
    assert infer(*common, "--preprocess", "none", "--output", str(tmp_path / "b.h5")).returncode == 0
    normalised = run_onnxruntime(exported["chain"], preprocess(pixels, IMAGENET))
    raw = run_onnxruntime(exported["chain"], pixels.transpose(0, 3, 1, 2).astype(np.float32))
    assert np.abs(logits(tmp_path / "a.h5") - normalised).max() <= 1e-4 * np.abs(normalised).max()
    assert np.abs(logits(tmp_path / "b.h5") - raw).max() <= 1e-4 * np.abs(raw).max()
    with h5py.File(tmp_path / "a.h5") as handle:
        assert handle.attrs["preprocess"] == "imagenet" and handle.attrs["model_file"] == str(exported["chain"])


def test_resume_restores_the_model_file_and_refuses_another_under_its_name(tmp_path, exported):
    model = tmp_path / "net.onnx"
    shutil.copy(exported["chain"], model)
    output = tmp_path / "run.h5"
    assert infer("--model", str(model), "--input", str(exported["small"]), "--output", str(output), "--quiet",
                 "--batch-size", "1").returncode == 0
    expected = logits(output)

    def interrupt():
        with h5py.File(output, "r+") as handle:
            handle["outputs/done"][1:] = 0
            handle["outputs/logits"][1:] = np.nan
            handle.attrs["status"] = "running"

    interrupt()
    moved = tmp_path / "moved" / "renamed.onnx"
    moved.parent.mkdir()
    shutil.move(model, moved)
    gone = infer("--resume", str(output))
    assert gone.returncode == 2 and "its model" in gone.stderr and "give its new place with --model" in gone.stderr
    done = infer("--resume", str(output), "--model", str(moved), "--quiet")
    assert done.returncode == 0, done.stderr
    np.testing.assert_array_equal(logits(output), expected)
    interrupt()
    shutil.copy(exported["residual"], moved)
    refused = infer("--resume", str(output), "--model", str(moved))
    assert refused.returncode == 2 and refused.stderr.count("\n") == 1
    assert f"'{moved}' is not the model file this run was made with (its content differs" in refused.stderr


def test_a_model_spatial_mode_cannot_split_runs_whole_and_is_refused_split_before_any_work(tmp_path):
    """Two branches joined after a flatten: batch and single mode run it (they never split a map), spatial mode is
    one line before any work, and the planner offers batch mode (it once failed mid-run in every mode, naming
    --mode batch)."""
    model = export(two_heads_cnn(), tmp_path / "two_heads.onnx", (3, 15, 15), dynamic=False)
    images = tensors(tmp_path / "images.h5", np.random.default_rng(5).standard_normal((3, 3, 15, 15), np.float32))
    expected = run_onnxruntime(model, h5py.File(images)["images"][()])
    for options, ranks in ((("--mode", "single"), 1), (("--mode", "batch", "--batch-size", "1"), 2), ((), 2)):
        output = tmp_path / f"run_{ranks}_{len(options)}.h5"
        done = infer("--model", str(model), "--input", str(images), "--output", str(output), "--quiet", *options,
                     ranks=ranks)
        assert done.returncode == 0, done.stderr
        assert np.abs(logits(output) - expected).max() <= 1e-5 * np.abs(expected).max()
    output = tmp_path / "spatial.h5"
    done = infer("--model", str(model), "--input", str(images), "--output", str(output), "--mode", "spatial",
                 ranks=2, timeout=120)
    assert done.returncode == 2 and done.stderr.count("dcnn: error") == 1 and "Traceback" not in done.stderr
    assert "cannot be split spatially" in done.stderr and "use --mode batch" in done.stderr
    assert not output.exists()
    plan = subprocess.run([sys.executable, "-m", "dcnn.plan", str(model), "--nodes", "2"], capture_output=True,
                          text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert "chosen: batch" in plan.stdout


def test_the_cost_table_and_the_planner_of_a_model_file(exported):
    table = subprocess.run([sys.executable, "-m", "dcnn.model", str(exported["residual"]), "--input", "3x21x19"],
                           capture_output=True, text=True, timeout=120)
    assert table.returncode == 0, table.stderr
    assert table.stdout.startswith("residual: input 3x21x19") and "live bytes" in table.stdout
    plan = subprocess.run([sys.executable, "-m", "dcnn.plan", str(exported["resnet18"]), "--input", "3x64x64",
                           "--nodes", "4"], capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert (f"python -m dcnn.infer --model {exported['resnet18']} --input IMAGES --preprocess {{imagenet,none}} "
            "--mode") in plan.stdout and "with IMAGES your HDF5 image set" in plan.stdout


def light_case(name: str):
    """A light model's input (the ramp ONNX's runner feeds it), expected output and tolerance."""
    from dcnn.testing.onnx_conformance import light_cases

    case = next(case for case in light_cases() if case.name == f"test_{name}")
    (inputs, outputs), = case.data_sets
    return inputs[0], outputs[0], case.rtol, case.atol


#: The cheapest light models (by multiply-accumulates and weights) in spatial and fused mode at 2 to 4 ranks.
#: Their weights are constant fills, so all 1000 logits are equal (about 1e23 for Inception v1) and the expected
#: softmax is exactly uniform: it passes only if every rank's shard of the last fully connected layer computes
#: its rows bit for bit as the whole layer does (``fc_shards``; unaligned shards of 334 rows at np 3 failed).
#: The fused depths are the deepest cuts that leave a 2x2 map (``scripts/onnx_light_modes.py``).
LIGHT_RUNS = [
    ("squeezenet", ("--mode", "spatial"), 2),
    ("squeezenet", ("--mode", "fused", "--tiles", "3x3", "--halo-policy", "reuse"), 4),
    ("inception_v1", ("--mode", "spatial", "--grid", "1x3"), 3),
    ("inception_v1", ("--mode", "fused", "--tiles", "2x2", "--fuse-depth", "138", "--halo-policy", "recompute"), 4),
]


@pytest.mark.parametrize("name,options,ranks", LIGHT_RUNS, ids=[f"{n}-{o[1]}-np{r}" for n, o, r in LIGHT_RUNS])
def test_onnx_light_models_pass_in_spatial_and_fused_mode(tmp_path, name, options, ranks):
    batch, expected, rtol, atol = light_case(name)
    output = tmp_path / "run.h5"
    done = infer("--model", str(LIGHT / f"light_{name}.onnx"), "--input", str(tensors(tmp_path / "x.h5", batch)),
                 "--output", str(output), "--quiet", *options, ranks=ranks, timeout=600)
    assert done.returncode == 0, done.stderr
    np.testing.assert_allclose(logits(output), expected.reshape(len(batch), -1), rtol=rtol, atol=atol)
