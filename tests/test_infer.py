"""``python -m dcnn.infer`` as a user runs it: real processes, real HDF5 files, real mpiexec."""

import re
import subprocess
import sys
from pathlib import Path

import h5py
import numpy as np
import pytest
from conftest import mpi_command, write_digits
from torch_oracle import torch_forward

from dcnn.exec.forward import Forward
from dcnn.io.images import preprocess
from dcnn.network.weights import init_weights, save_weights
from dcnn.network.zoo import get_model
from dcnn.planner.plan import format_bytes

SAMPLES = str(Path(__file__).resolve().parents[1] / "data" / "samples.h5")


def infer(*args, launcher=(), timeout=120):
    command = [*launcher, sys.executable, "-m", "dcnn.infer", *args]
    return subprocess.run(command, capture_output=True, text=True, timeout=timeout)


@pytest.fixture
def lenet_set(tmp_path):
    return write_digits(tmp_path / "digits.h5", 7, seed=12345)


def test_logits_equal_the_library_forward(tmp_path, lenet_set):
    network = get_model("lenet5")
    weights = init_weights(network, 5)
    weights_path = tmp_path / "w.npz"
    save_weights(weights_path, weights)
    output = tmp_path / "out" / "run.h5"
    done = infer("--model", "lenet5", "--weights", str(weights_path), "--input", str(lenet_set),
                 "--output", str(output), "--batch-size", "3", "--quiet")
    assert done.returncode == 0, done.stderr
    assert done.stdout == ""
    with h5py.File(lenet_set) as handle:
        pixels = handle["images"][()]
    expected = Forward(network, weights)(preprocess(pixels, network.preprocessing))
    with h5py.File(output) as handle:
        np.testing.assert_allclose(handle["outputs/logits"][()], expected, rtol=1e-5, atol=1e-6)
        assert handle["outputs/done"][()].all()
        attrs = dict(handle.attrs)
    assert attrs["status"] == "complete" and attrs["model"] == "lenet5" and attrs["num_images"] == 7
    assert attrs["weights"] == str(weights_path) and "MPI" in attrs["mpi_library"]
    assert attrs["mpi_thread_level"] == "funneled" and "slurm_job_id" in attrs
    assert attrs["command"].startswith("python -m dcnn.infer --model lenet5")
    summary = infer("--model", "lenet5", "--weights", str(weights_path), "--input", str(lenet_set), "--output",
                    str(tmp_path / "again.h5"))
    assert summary.returncode == 0 and "lenet5: 7 images" in summary.stdout and "untrained" not in summary.stdout


def test_vgg16_on_the_bundled_samples(tmp_path):
    output = tmp_path / "vgg.h5"
    done = infer("--model", "vgg16", "--input", SAMPLES, "--output", str(output), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "vgg16: 4 images of 224x224" in done.stdout and "top classes" in done.stdout
    # Before: nothing said that these classes come from seeded, untrained weights.
    assert "weights: seeded and untrained (--seed 0)" in done.stdout
    report = subprocess.run([sys.executable, "-m", "dcnn.analyze", str(output)], capture_output=True, text=True,
                            timeout=120)
    assert report.returncode == 0 and "weights: seeded and untrained" in report.stdout, report.stderr
    with h5py.File(output) as handle:
        logits = handle["outputs/logits"][()]
    assert logits.shape == (4, 1000) and np.isfinite(logits).all()


def test_seed_changes_and_reproduces(tmp_path, lenet_set):
    runs = {}
    for name, seed in (("a", "1"), ("b", "1"), ("c", "2")):
        out = tmp_path / f"{name}.h5"
        assert infer("--model", "lenet5", "--seed", seed, "--input", str(lenet_set), "--output", str(out),
                     "--quiet").returncode == 0
        with h5py.File(out) as handle:
            runs[name] = handle["outputs/logits"][()]
    np.testing.assert_array_equal(runs["a"], runs["b"])
    assert not np.array_equal(runs["a"], runs["c"])


@pytest.mark.parametrize("args,message", [
    (["--input", "/nonexistent/set.h5"], "input '/nonexistent/set.h5' does not exist"),
    (["--model", "resnet"], "unknown model 'resnet'"),
    (["--model", "vgg11", "--weights", "/nonexistent/w.npz"], "weights file '/nonexistent/w.npz' does not exist"),
    (["--batch-size", "0"], "--batch-size must be an integer at least 1"),
    # Before: a traceback from HDF5 (the value does not fit a 64-bit attribute) after the file was created.
    (["--batch-size", "99999999999999999999"], "--batch-size must be an integer at least 1 and at most 2147483647"),
    (["--threads", "5000"], "--threads must be an integer at least 1 and at most 1024"),
    # Before: ENOMEM in the first pyramid, with a traceback, after the file was created (no memory budget was
    # checked without --mem-per-rank): 80 % of the node's RAM is the default budget.
    (["--model", "mmod", "--upsample", "9"], "which may use"),
    (["--dataset", "pixels"], "no dataset 'pixels'"),
])
def test_bad_input_is_one_clear_line(tmp_path, args, message):
    done = infer(*args, "--output", str(tmp_path / "x.h5"))
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"dcnn: error: {done.stderr.strip()[13:]}"]
    assert message in done.stderr
    assert "Traceback" not in done.stderr
    assert not (tmp_path / "x.h5").exists()  # refused before any work


def test_a_dataset_name_with_a_folder_input_is_refused(tmp_path):
    """--dataset names a dataset inside an HDF5 input; with a folder it was silently ignored."""
    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("L", (32, 32)).save(photos / "a.png")
    done = infer("--model", "lenet5", "--input", str(photos), "--dataset", "pixels", "--output",
                 str(tmp_path / "x.h5"))
    assert done.returncode == 2 and done.stderr.count("\n") == 1 and not done.stdout, done.stderr
    assert f"--dataset pixels names a dataset inside an HDF5 input, but --input {photos} is a folder" in done.stderr
    assert not (tmp_path / "x.h5").exists()


def test_a_folder_runs_every_image_format_and_notes_what_it_skipped_once(tmp_path):
    """A .bmp was left out without a word, as were subfolders; rank 0 alone now says what was skipped. The result
    file names each row's file (it did not: a user had to redo the sort to know which photo a row was)."""
    from PIL import Image

    photos = tmp_path / "photos"
    (photos / "old").mkdir(parents=True)
    Image.new("L", (32, 32), 7).save(photos / "a.png")
    Image.new("L", (32, 32), 7).save(photos / "b.bmp")
    Image.new("L", (32, 32), 200).save(photos / "Upper.PNG")
    (photos / "notes.txt").write_text("not an image")
    output = tmp_path / "run.h5"
    done = infer("--model", "lenet5", "--input", str(photos), "--output", str(output), "--threads", "1",
                 "--progress", "none", "--top", "1", launcher=mpi_command(2))
    assert done.returncode == 0, done.stderr
    assert done.stderr == (f"dcnn: skipped 2 entries of {photos}: 1 subfolder (old), 1 file not an image "
                           "(notes.txt)\n")
    assert "lenet5: 3 images of 32x32" in done.stdout
    assert "image 0 ('Upper.PNG'): top classes" in done.stdout
    with h5py.File(output) as handle:
        logits = handle["outputs/logits"][()]
        files = handle["outputs/file"].asstr()[()].tolist()
    assert files == ["Upper.PNG", "a.png", "b.bmp"]  # code-point order, the order of the rows
    np.testing.assert_array_equal(logits[1], logits[2])
    assert not np.array_equal(logits[0], logits[1])


def test_file_names_that_are_not_utf8_are_recorded_escaped(tmp_path):
    """Before: ``/outputs/file`` could not hold a Latin-1 name (``caf\\xe9.png``): "unexpected failure", a temporary
    file left beside the output. Such bytes are stored as ``\\xNN`` escapes, in ``/skipped/path`` too."""
    import os

    from PIL import Image

    photos = tmp_path / "photos"
    photos.mkdir()
    Image.new("L", (32, 32), 7).save(Path(os.fsdecode(bytes(photos) + b"/caf\xe9.png")), format="PNG")
    Path(os.fsdecode(bytes(photos) + b"/d\xe9j\xe0.png")).write_text("not an image")
    output = tmp_path / "run.h5"
    done = infer("--model", "lenet5", "--input", str(photos), "--output", str(output), "--threads", "1",
                 "--skip-unreadable", "--quiet")
    assert done.returncode == 0, done.stderr
    with h5py.File(output) as handle:
        assert handle["outputs/file"].asstr()[()].tolist() == ["caf\\xe9.png", "d\\xe9j\\xe0.png"]
        assert handle["skipped/path"].asstr()[0].endswith("d\\xe9j\\xe0.png")
    assert sorted(path.name for path in tmp_path.iterdir()) == ["photos", "run.h5"]


def test_mismatched_weights_name_the_key(tmp_path):
    weights_path = tmp_path / "lenet.npz"
    save_weights(weights_path, init_weights(get_model("lenet5")))
    done = infer("--model", "alexnet", "--weights", str(weights_path), "--input", SAMPLES)
    assert done.returncode == 2 and "missing key 'features.8.weight' (and 9 more) for model alexnet" in done.stderr


def test_wrong_image_size_for_lenet(tmp_path):
    path = write_digits(tmp_path / "big.h5", 1, seed=0, side=40)
    done = infer("--model", "lenet5", "--input", str(path))
    assert done.returncode == 2 and "takes only 1x32x32 input" in done.stderr


def test_debug_shows_traceback(tmp_path):
    done = infer("--input", "/nonexistent.h5", "--debug")
    assert done.returncode == 2 and "Traceback" in done.stderr


def test_help_describes_every_option():
    done = infer("--help")
    assert done.returncode == 0
    for option in ("--model", "--weights", "--seed", "--input", "--dataset", "--output", "--batch-size",
                   "--threads", "--mode", "--quiet", "--debug"):
        assert option in done.stdout


def test_single_mode_under_mpirun_refuses_instead_of_repeating_work(tmp_path, lenet_set):
    output = tmp_path / "never.h5"
    done = infer("--model", "lenet5", "--mode", "single", "--input", str(lenet_set), "--output", str(output),
                 launcher=mpi_command(3), timeout=120)
    assert done.returncode != 0
    assert done.stderr.count("dcnn: error:") == 1, done.stderr
    assert "--mode single runs on one process, but 3 were started" in done.stderr
    assert "--mode batch or spatial" in done.stderr
    assert not output.exists()


def test_model_table_cli():
    done = subprocess.run([sys.executable, "-m", "dcnn.model", "vgg16", "--input", "3x224x224"],
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0
    assert "138,357,544" in done.stdout and "15.47G MACs" in done.stdout
    bad = subprocess.run([sys.executable, "-m", "dcnn.model", "lenet5", "--input", "1x28x28"],
                         capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2 and "takes only 1x32x32" in bad.stderr


def test_spatial_mode_equals_single_mode_and_records_timings(tmp_path):
    single, spatial = tmp_path / "single.h5", tmp_path / "spatial.h5"
    common = ("--model", "alexnet", "--input", SAMPLES, "--quiet", "--threads", "1")
    assert infer(*common, "--output", str(single), timeout=300).returncode == 0
    done = infer(*common, "--mode", "spatial", "--grid", "3x1", "--output", str(spatial), launcher=mpi_command(3),
                 timeout=300)
    assert done.returncode == 0, done.stderr
    with h5py.File(single) as a, h5py.File(spatial) as b:
        expected, actual = a["outputs/logits"][()], b["outputs/logits"][()]
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()
        assert b.attrs["grid"] == "3x1" and b.attrs["ranks"] == 3 and b.attrs["mode"] == "spatial"
        layers = len(b["timing/layer_names"])
        for name in ("compute_seconds", "wait_seconds", "bytes_sent", "bytes_received"):
            assert b[f"timing/{name}"].shape == (3, layers)
        assert b["timing/bytes_received"][()].sum() > 0 and (b["timing/compute_seconds"][()].sum(axis=1) > 0).all()
        assert (b["stats/peak_rss_bytes"][()] > 0).all() and b["stats/peak_rss_bytes"].shape == (3,)
        assert a["timing/compute_seconds"].shape == (1, layers)


def interrupt(path, first_missing):
    """Make a finished run look killed before image ``first_missing``: later images not done, status running."""
    with h5py.File(path, "r+") as handle:
        handle["outputs/done"][first_missing:] = 0
        handle["outputs/logits"][first_missing:] = np.nan
        handle.attrs["status"] = "running"


def test_spatial_resume_on_another_grid_agrees_within_float_rounding(tmp_path, lenet_set):
    """A resume at the same grid is bit-identical to the uninterrupted run; at another grid the images it
    recomputes reduce in another order (BLAS over other block shapes) and agree to the documented 1e-5 of the
    largest logit (measured: 1.5e-7)."""
    whole, same, other = (tmp_path / f"{name}.h5" for name in ("whole", "same", "other"))
    common = ("--model", "lenet5", "--input", str(lenet_set), "--mode", "spatial", "--batch-size", "2", "--quiet")
    assert infer(*common, "--grid", "1x2", "--output", str(whole), launcher=mpi_command(2)).returncode == 0
    for path, grid in ((same, "1x2"), (other, "2x1")):
        path.write_bytes(whole.read_bytes())
        interrupt(path, 4)
        done = infer(*common, "--grid", grid, "--resume", str(path), launcher=mpi_command(2))
        assert done.returncode == 0, done.stderr
    with h5py.File(whole) as a, h5py.File(same) as b, h5py.File(other) as c:
        expected = a["outputs/logits"][()]
        np.testing.assert_array_equal(b["outputs/logits"][()], expected)
        resumed = c["outputs/logits"][()]
        np.testing.assert_array_equal(resumed[:4], expected[:4])
        assert np.abs(resumed - expected).max() <= 1e-5 * np.abs(expected).max()
        assert c.attrs["status"] == "complete" and c.attrs["grid"] == "2x1"


@pytest.mark.parametrize("name,size", [("lenet5", (32, 32)), ("alexnet", (67, 71))])
def test_batch_mode_equals_pytorch(tmp_path, rng, name, size):
    """Batch mode end to end (images stolen across ranks, read and preprocessed from HDF5) against PyTorch."""
    network = get_model(name)
    path, output = tmp_path / "set.h5", tmp_path / "run.h5"
    pixels = rng.integers(0, 256, (3, *size, 3), dtype=np.uint8)
    with h5py.File(path, "w") as handle:
        handle["images"] = pixels
    done = infer("--model", name, "--input", str(path), "--output", str(output), "--mode", "batch",
                 "--batch-size", "1", "--seed", "4", "--quiet", launcher=mpi_command(2), timeout=300)
    assert done.returncode == 0, done.stderr
    expected = torch_forward(network, init_weights(network, 4), preprocess(pixels, network.preprocessing))
    with h5py.File(output) as handle:
        actual = handle["outputs/logits"][()]
    assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()


def test_grid_that_does_not_match_the_ranks(tmp_path):
    done = infer("--model", "lenet5", "--mode", "spatial", "--grid", "2x2", "--output", str(tmp_path / "x.h5"),
                 launcher=mpi_command(3))
    assert done.returncode != 0
    assert done.stderr.count("dcnn: error:") == 1
    assert "--grid 2x2 needs 4 ranks, but 3 were started" in done.stderr


@pytest.mark.parametrize("halo_policy", ["recompute", "reuse"])
def test_fused_mode_equals_single_mode_and_reports_redundancy(tmp_path, halo_policy):
    single, fused = tmp_path / "single.h5", tmp_path / "fused.h5"
    common = ("--model", "alexnet", "--input", SAMPLES, "--quiet", "--threads", "1")
    assert infer(*common, "--mode", "single", "--output", str(single), timeout=300).returncode == 0
    done = infer(*common, "--mode", "fused", "--tiles", "2x3", "--fuse-depth", "8", "--halo-policy", halo_policy,
                 "--batch-size", "2", "--output", str(fused), launcher=mpi_command(2), timeout=300)
    assert done.returncode == 0, done.stderr
    with h5py.File(single) as a, h5py.File(fused) as b:
        expected, actual = a["outputs/logits"][()], b["outputs/logits"][()]
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()
        assert b.attrs["tiles"] == "2x3" and b.attrs["fuse_depth"] == 8 and b.attrs["halo_policy"] == halo_policy
        assert 0 < b.attrs["redundant_macs_per_image"] < b.attrs["plain_macs_per_image"]
        fields = [name.decode() for name in b["stats/fused_fields"][()]]
        totals = dict(zip(fields, b["stats/fused"][()].sum(axis=0), strict=True))
        images = len(expected)
        assert totals["tiles_run"] == 6 * 2 and totals["fallbacks"] == 0
        assert totals["macs"] == images * b.attrs["fused_macs_per_image"]
        assert totals["bytes_got"] == images * b.attrs["strip_bytes_per_image"]
        assert (totals["bytes_got"] > 0) == (halo_policy == "reuse")
        assert b["timing/tile_seconds"].shape == (2, 6) and (b["timing/tile_seconds"][()].sum(axis=0) > 0).all()
        # Every layer, in the fused block and after it, has its compute time on some rank.
        assert (b["timing/compute_seconds"][()].sum(axis=0) > 0).all()


def test_tile_grid_finer_than_the_map(tmp_path):
    done = infer("--model", "alexnet", "--mode", "fused", "--tiles", "9x9", "--input", SAMPLES,
                 "--output", str(tmp_path / "x.h5"))
    assert done.returncode == 2 and done.stderr.count("dcnn: error:") == 1
    assert "tile grid 9x9 is finer than the 6x6 output map of layer features.12" in done.stderr


def test_an_interruption_before_the_result_file_says_nothing_was_written(tmp_path, lenet_set, capsys):
    """Before: "dcnn: interrupted by SIGINT" alone while the scan, the models or a gallery loaded: had it written
    a file to resume? (The command interrupted in that phase, as a signal there raises it.)"""
    import signal

    from dcnn.cli.common import Interrupted, run_main
    from dcnn.cli.infer import build_parser, run
    from dcnn.parallel.comm import world

    def interrupted(args, comm, ranks_per_node):
        raise Interrupted(signal.SIGINT)

    output = tmp_path / "x.h5"
    argv = ["--model", "lenet5", "--input", str(lenet_set), "--output", str(output)]
    assert run_main(lambda args: run(args, interrupted), build_parser(), argv, comm=world()) == 130
    assert capsys.readouterr().err == "dcnn: interrupted by SIGINT; nothing was written\n"
    assert sorted(tmp_path.iterdir()) == [lenet_set]  # no file, no lock


def test_an_empty_output_name_is_refused(tmp_path, lenet_set):
    """Before: --output '' (an unset shell variable) wrote the run to results/<timestamp>.h5 instead, exit 0."""
    done = subprocess.run([sys.executable, "-m", "dcnn.infer", "--model", "lenet5", "--input", str(lenet_set),
                           "--output", ""], capture_output=True, text=True, timeout=120, cwd=tmp_path)
    assert done.returncode == 2 and done.stderr.count("dcnn: error:") == 1
    assert "--output '': an empty file name" in done.stderr and not (tmp_path / "results").exists()


def test_a_directory_named_as_a_model_file_is_one_line(tmp_path, lenet_set):
    (tmp_path / "dir.onnx").mkdir()
    done = infer("--model", str(tmp_path / "dir.onnx"), "--input", str(lenet_set))
    assert done.returncode == 2 and done.stderr.count("dcnn: error:") == 1 and not done.stdout
    assert "dir.onnx' is a directory, not a file" in done.stderr


def test_planner_command_refuses_an_impossible_cluster():
    done = subprocess.run([sys.executable, "-m", "dcnn.plan", "vgg16", "--nodes", "4", "--ram", "384MiB",
                           "--exact-conv"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2 and done.stderr.count("dcnn: error:") == 1 and not done.stdout
    # How many nodes depends on this machine's L2 (the planner's chunk scratch); tests/test_plan.py pins it.
    assert "classifier.0" in done.stderr and re.search(r"It fits on \d+ such nodes", done.stderr)


def test_plan_auto_says_when_the_exact_kernels_layouts_would_fit(tmp_path):
    """Before: "use nodes with more memory" alone, where --exact-conv (no Winograd filters) fits on a few nodes."""
    done = infer("--model", "vgg16", "--input", SAMPLES, "--mem-per-rank", "300MiB", "--plan",
                 "auto", "--output", str(tmp_path / "x.h5"))
    assert done.returncode == 2 and done.stderr.count("dcnn: error:") == 1 and not (tmp_path / "x.h5").exists()
    assert "with --exact-conv (filters in the exact kernels' layouts, not Winograd's) it fits on" in done.stderr


def test_planner_command_prints_candidates_and_the_choice():
    done = subprocess.run([sys.executable, "-m", "dcnn.plan", "vgg16", "--nodes", "14", "--ram", "384MiB",
                           "--exact-conv"],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    assert "batch, batch 1" in done.stdout and "DOES NOT FIT" in done.stdout
    assert "chosen: spatial" in done.stdout or "chosen: fused" in done.stdout
    assert "mpirun -np 14 python -m dcnn.infer --model vgg16 --input IMAGES --exact-conv --mode" in done.stdout


def test_the_planner_command_and_a_run_predict_the_same_memory_for_the_same_options(tmp_path):
    """dcnn.plan planned one task per rank while a batch run of 2 threads runs 2 at once (each with its input and
    working set); the same options now give the same prediction, and the command printed carries the threads."""
    options = ["--mode", "batch", "--batch-size", "1", "--threads", "2", "--mem-per-rank", "4GiB"]
    plan = subprocess.run([sys.executable, "-m", "dcnn.plan", "squeezenet1_1", "--nodes", "1", "--images", "4",
                           *options], capture_output=True, text=True, timeout=120)
    assert plan.returncode == 0, plan.stderr
    assert "--mode batch --batch-size 1 --threads 2" in plan.stdout
    output = tmp_path / "run.h5"
    done = infer("--model", "squeezenet1_1", "--input", SAMPLES, *options, "--output", str(output), "--quiet")
    assert done.returncode == 0, done.stderr
    with h5py.File(output) as handle:
        predicted = int(handle["stats/predicted_peak_bytes"][0])
    assert re.search(r"chosen: batch, batch 1 \(predicted [0-9.]+ s, peak (.*)\)", plan.stdout)[1] == format_bytes(
        predicted)


def test_a_branching_network_in_batch_mode_equals_single_mode(tmp_path):
    single, batch = tmp_path / "single.h5", tmp_path / "batch.h5"
    common = ("--model", "squeezenet1_1", "--input", SAMPLES, "--quiet", "--threads", "1", "--batch-size", "1")
    assert infer(*common, "--output", str(single), timeout=300).returncode == 0
    done = infer(*common, "--mode", "batch", "--output", str(batch), launcher=mpi_command(2), timeout=300)
    assert done.returncode == 0, done.stderr
    with h5py.File(single) as a, h5py.File(batch) as b:
        np.testing.assert_array_equal(b["outputs/logits"][()], a["outputs/logits"][()])


def test_a_residual_network_in_spatial_mode_equals_single_mode(tmp_path):
    single, spatial = tmp_path / "single.h5", tmp_path / "spatial.h5"
    common = ("--model", "resnet18", "--input", SAMPLES, "--quiet", "--threads", "1", "--batch-size", "2")
    assert infer(*common, "--output", str(single), timeout=300).returncode == 0
    done = infer(*common, "--mode", "spatial", "--grid", "2x1", "--output", str(spatial), launcher=mpi_command(2),
                 timeout=300)
    assert done.returncode == 0, done.stderr
    with h5py.File(single) as a, h5py.File(spatial) as b:
        expected, actual = a["outputs/logits"][()], b["outputs/logits"][()]
        assert np.abs(actual - expected).max() <= 1e-4 * np.abs(expected).max()
        assert b["timing/bytes_received"][()].sum() > 0


def test_fused_mode_refuses_a_depth_past_a_squeeze_and_excitation_pooling_in_one_line(tmp_path):
    done = infer("--model", "mobilenet_v3_small", "--mode", "fused", "--fuse-depth", "23", "--input", SAMPLES,
                 "--output", str(tmp_path / "x.h5"))
    assert done.returncode == 2 and done.stderr.count("dcnn: error:") == 1 and "Traceback" not in done.stderr
    assert ("--fuse-depth 23 cannot be tiled: node features.1.block.1.avgpool (adaptive avgpool 1x1) reduces the "
            "whole map, of which a tile holds a part; fuse at most 6 layers or use --mode spatial") in done.stderr


def test_a_winograd_run_stays_within_its_planned_memory_and_names_single_mode(tmp_path, rng):
    """ResNet-18's 3x3 layers run Winograd: its transformed filters are in the plan (it peaked at 400 MiB
    against a prediction of 208 MiB before), and a --mode single run records its plan as single."""
    images = tmp_path / "rn.h5"
    with h5py.File(images, "w") as handle:
        handle["images"] = rng.integers(0, 256, (1, 64, 64, 3), dtype=np.uint8)
    output = tmp_path / "rn-out.h5"
    done = infer("--model", "resnet18", "--input", str(images), "--mode", "single", "--threads", "1",
                 "--output", str(output), timeout=300)
    assert done.returncode == 0, done.stderr
    assert "above the planner's prediction" not in done.stderr
    with h5py.File(output) as handle:
        assert handle.attrs["plan"].startswith("single, batch ")


def test_a_float_image_holding_nan_is_named_or_skipped(tmp_path):
    """Before: a float32 set whose image held NaN ran silently and reported "top classes 343 (nan)"."""
    images = np.random.default_rng(0).standard_normal((4, 1, 32, 32)).astype(np.float32)
    images[2, 0, 5, 7] = np.nan
    source = tmp_path / "set.h5"
    with h5py.File(source, "w") as handle:
        handle["images"] = images
    strict = infer("--model", "lenet5", "--input", str(source), "--output", str(tmp_path / "strict.h5"),
                   "--batch-size", "1", "--threads", "1")
    assert strict.returncode == 2 and f"{source}:images[2]: the image holds NaN or infinite values" in strict.stderr
    output = tmp_path / "run.h5"
    done = infer("--model", "lenet5", "--input", str(source), "--output", str(output), "--skip-unreadable",
                 "--threads", "1", "--top", "1", "--progress", "none")
    assert done.returncode == 0, done.stderr
    assert "image 1: top classes" in done.stdout and "image 2:" not in done.stdout  # it showed "343 (nan)"
    with h5py.File(output) as handle:
        assert handle["skipped/index"][()].tolist() == [2] and handle["outputs/done"][()].tolist() == [1, 1, 0, 1]
        assert np.isfinite(handle["outputs/logits"][[0, 1, 3]]).all()
