"""Every number a user gives is checked before any work: NaN, infinities, zero and negatives get one line."""

import math

import pytest

from dcnn.cli import analyze, infer, simulate
from dcnn.cli import plan as planner_cli
from dcnn.errors import InputError
from dcnn.io.numbers import check_number, parse_number

HUGE = "9" * 400  # float() reads it as infinity


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf])
def test_non_finite_numbers_are_refused(value):
    with pytest.raises(InputError, match="--x must be a finite number"):
        check_number(value, "--x")


def test_bounds_and_parsing():
    assert check_number(1, "--x", minimum=1) == 1
    assert parse_number("0.5", "--x", above=0, maximum=1) == 0.5
    assert parse_number("7", "--x", integer=True) == 7
    with pytest.raises(InputError, match="at least 1, got 0"):
        check_number(0, "--x", minimum=1)
    with pytest.raises(InputError, match=r"above 0 and at most 1, got 1\.5"):
        parse_number("1.5", "--x", above=0, maximum=1)
    with pytest.raises(InputError, match=r"--x takes an integer, got .1\.5."):
        parse_number("1.5", "--x", integer=True)
    with pytest.raises(InputError, match="--x takes a number, got 'abc'"):
        parse_number("abc", "--x")


INFER = [
    (["--capacity", "1,nan"], "--capacity"), (["--capacity", "inf,1"], "--capacity"),
    (["--capacity", "nan"], "--capacity"), (["--capacity", "-1"], "--capacity"), (["--capacity", "0"], "--capacity"),
    (["--throttle", "0:inf"], "--throttle"), (["--throttle", "0:nan"], "--throttle"),
    (["--throttle", "0:0.5"], "--throttle"), (["--throttle", "nan:2"], "--throttle"),
    (["--throttle=-1:2"], "--throttle"), (["--batch-size", "0"], "--batch-size"),
    (["--batch-size", "-3"], "--batch-size"), (["--threads", "0"], "--threads"), (["--upsample", "-1"], "--upsample"),
    (["--seed", "-1"], "--seed"), (["--fuse-depth", "0"], "--fuse-depth"), (["--top", "-1"], "--top"),
    (["--mem-per-rank", "0"], "memory size"), (["--mem-per-rank", "0MiB"], "memory size"),
    (["--mem-per-rank", HUGE], "memory size"), (["--mem-per-rank", "nanGiB"], "memory size"),
    (["--grid", "0x2", "--mode", "spatial"], "0x2"), (["--tiles", "2x-1", "--mode", "fused"], "2x-1"),
]


@pytest.mark.parametrize(("args", "flag"), INFER, ids=[" ".join(a)[:30] for a, _ in INFER])
def test_infer_refuses_bad_numbers_before_any_file_exists(tmp_path, capsys, args, flag):
    output = tmp_path / "run.h5"
    code = infer.main(["--model", "lenet5", "--output", str(output), "--quiet", *args])
    error = capsys.readouterr().err
    assert code == 2 and flag in error and error.count("\n") == 1 and "Traceback" not in error, error
    assert not output.exists() and list(tmp_path.iterdir()) == []


PLAN = [["--nodes", "0"], ["--nodes", "-2"], ["--fraction", "nan"], ["--fraction", "inf"], ["--fraction", "0"],
        ["--fraction", "1.5"], ["--ram", "0"], ["--ram", HUGE], ["--mem-per-rank", "0GiB"], ["--batch-size", "0"],
        ["--images", "0"], ["--input", "0x10"]]


@pytest.mark.parametrize("args", PLAN, ids=[" ".join(a)[:30] for a in PLAN])
def test_plan_refuses_bad_numbers(capsys, args):
    code = planner_cli.main(["lenet5", *args])
    error = capsys.readouterr().err
    assert code == 2 and error.startswith("dcnn: error:") and error.count("\n") == 1, error


SIMULATE = [["--jitter", "nan"], ["--jitter", "inf"], ["--jitter", "-0.1"], ["--nodes", "0"], ["--nodes", "3,nan"],
            ["--images", "0"], ["--images", "-5"], ["--batch-size", "0"], ["--ram", "0"], ["--ram", HUGE],
            ["--image", "0x128"]]


@pytest.mark.parametrize("args", SIMULATE, ids=[" ".join(a)[:30] for a in SIMULATE])
def test_simulate_refuses_bad_numbers_before_simulating(capsys, args):
    code = simulate.main(args)
    captured = capsys.readouterr()
    assert code == 2 and captured.out == "" and captured.err.count("\n") == 1, captured


@pytest.mark.parametrize("count", ["0", "-1"])
def test_analyze_refuses_a_bad_image_count(tmp_path, capsys, count):
    code = analyze.main([str(tmp_path / "none.h5"), "--images", count])
    error = capsys.readouterr().err
    assert code == 2 and "--images must be an integer at least 1" in error


def test_cluster_file_numbers_are_checked(tmp_path):
    from dcnn.planner.plan import Cluster

    for text, name in (('fraction = nan\n[[node]]\nram = "1GiB"', "'fraction'"),
                       ('[[node]]\nram = "1GiB"\nspeed = inf', "'speed'"),
                       ('gmacs = -1\n[[node]]\nram = "1GiB"', "'gmacs'"), ('[[node]]\nram = nan', "memory size")):
        path = tmp_path / "cluster.toml"
        path.write_text(text)
        with pytest.raises(InputError, match=name):
            Cluster.load(path)
