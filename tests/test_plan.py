"""The planner without MPI: sizes, cluster files, memory per mode, the choice, and the infeasible message."""

import math
import re

import pytest

from dcnn.errors import InputError, PlanError
from dcnn.kernels.conv import layout_bytes, set_exact
from dcnn.kernels.winograd import winograd_pays
from dcnn.network.graph import GraphBuilder
from dcnn.network.layers import Add, Linear, MaxPool2d, ReLU
from dcnn.network.zoo import get_model
from dcnn.planner.plan import (
    GIB,
    MIB,
    MODEL_MARGIN,
    Cluster,
    Stage,
    best_plan,
    choose_plan,
    for_process,
    format_bytes,
    memory_batch,
    memory_fused,
    memory_spatial,
    parse_bytes,
    plan_for,
    plan_shapes,
    plans,
    worst_shapes,
)

VGG16 = get_model("vgg16")
SHAPE = (3, 224, 224)
#: The L2 the planner's chunk scratch is computed with here, whatever this machine's: the figures below are fixed.
L2_BYTES = 1 << 20


@pytest.fixture(autouse=True)
def _fixed_l2(monkeypatch):
    from dcnn.planner import plan

    monkeypatch.setattr(plan, "cache_bytes", lambda level: L2_BYTES)


@pytest.mark.parametrize("text,expected", [("512MiB", 512 * 2**20), ("3.2GiB", int(3.2 * 2**30)), ("4G", 4 * 2**30),
                                           ("4GB", 4 * 10**9), ("1000B", 1000), (" 2 kib ", 2048)])
def test_parse_bytes(text, expected):
    assert parse_bytes(text) == expected


@pytest.mark.parametrize("text", ["", "12 parsecs", "-1MiB", "MiB", "1..2G"])
def test_parse_bytes_refuses_nonsense(text):
    with pytest.raises(InputError, match="memory size"):
        parse_bytes(text)


@pytest.mark.parametrize("text", ["200", " 3.5 ", 200, 3.5])
def test_parse_bytes_refuses_a_size_without_unit(text):
    """``--mem-per-rank 200`` or ``ram = 200`` in a cluster file could mean bytes or MiB: refused, with the spelling
    that works (a number in a cluster file was once read as bytes)."""
    with pytest.raises(InputError, match=r"no unit; write for example .*MiB"):
        parse_bytes(text)


def test_format_bytes():
    assert format_bytes(512 * MIB) == "512.0 MiB" and format_bytes(3 * 2**30) == "3.0 GiB"
    # Before: a 1 KiB budget printed as "0.0 MiB".
    assert format_bytes(1024) == "1.0 KiB" and format_bytes(12) == "12 B" and format_bytes(200_000) == "0.2 MiB"
    # Before: the plan of --upsample 100 printed a 56-digit number of GiB.
    assert format_bytes(999_999 * 2**30) == "999999.0 GiB" and format_bytes(3.2e55 * 2**30) == "3.2e+55 GiB"


def test_cluster_file(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text('fraction = 0.75\ngmacs = 2.5\nbandwidth_gbit = 10\n'
                    '[[node]]\nname = "rock"\nram = "4GiB"\ncount = 3\n'
                    '[[node]]\nname = "pc"\nram = "16GiB"\nspeed = 4\n')
    cluster = Cluster.load(path)
    assert [node.name for node in cluster.nodes] == ["rock0", "rock1", "rock2", "pc"]
    assert cluster.budget(0) == int(0.75 * 4 * 2**30) and cluster.rate(3) == 4 * 2.5e9
    assert cluster.bandwidth == 10e9 / 8


@pytest.mark.parametrize("text,message", [("[[node]]\nram = '4GiB'\nspeed = -1\n", "'speed' must be a finite number"),
                                          ("[[node]]\nram = 4\n", r"cluster.toml: 'ram': memory size 4 has no unit"),
                                          ("[[node]]\nname = 'x'\n", "bad cluster entry"),
                                          ("fraction = 2\n[[node]]\nram = '1GiB'\n", "fraction"),
                                          ("nodes = [", "not valid TOML"), ("", "at least one node")])
def test_bad_cluster_files(tmp_path, text, message):
    path = tmp_path / "cluster.toml"
    path.write_text(text)
    with pytest.raises(InputError, match=message):
        Cluster.load(path)


def test_missing_cluster_file(tmp_path):
    with pytest.raises(InputError, match="cannot read the cluster file"):
        Cluster.load(tmp_path / "none.toml")


def _layouts(network, shape):
    """The kernels' filter layouts of every convolution (:func:`dcnn.kernels.conv.layout_bytes`)."""
    return sum(layout_bytes((r.layer.out_channels, r.layer.in_channels // r.layer.groups, *r.layer.kernel_size),
                            r.layer.stride, r.layer.dilation, r.layer.groups)
               for r in network.costs(shape) if r.layer.kind == "conv")


def test_batch_mode_holds_every_weight():
    plan = memory_batch(VGG16, SHAPE, 2, Cluster.uniform(3, 4 * 2**30))
    assert plan.memory[0]["weights"] == sum(row.param_bytes for row in VGG16.costs(SHAPE)) + _layouts(VGG16, SHAPE)
    assert plan.memory[0] == plan.memory[2]
    assert plan.peak() == int(sum(plan.memory[0].values()) * (1 + MODEL_MARGIN))


def test_winograd_layers_count_their_transformed_filters():
    network, shape, cluster = get_model("resnet18"), (3, 64, 64), Cluster.uniform(1, 4 * 2**30)
    # Winograd where its map at the declared 224x224 input is large enough: not layer4's 7x7 ones (im2col).
    declared = network.shapes()
    geometry = [(index, r) for index, r in enumerate(network.costs(shape)) if r.layer.kind == "conv"
                and r.layer.kernel_size == (3, 3) and r.layer.stride == (1, 1)
                and min(r.layer.in_channels, r.layer.out_channels) >= 16]
    winograd = [r for index, r in geometry
                if winograd_pays(r.layer.in_channels, r.layer.out_channels, declared[index + 1][1:])]
    assert 0 < len(winograd) < len(geometry)
    nine_taps = sum(9 * 4 * r.layer.out_channels * r.layer.in_channels for r in winograd)
    fast = memory_batch(network, shape, 1, cluster).memory[0]["weights"]
    set_exact(True)
    try:
        exact = memory_batch(network, shape, 1, cluster).memory[0]["weights"]
    finally:
        set_exact(False)
    assert winograd and fast - exact == 3 * nine_taps  # 36 transformed values per filter instead of 9


def test_spatial_mode_splits_the_fully_connected_weights():
    fc = sum(row.param_bytes for row in VGG16.costs(SHAPE) if isinstance(row.layer, Linear))
    one = memory_spatial(VGG16, SHAPE, 1, Cluster.uniform(1, 2**34), (1, 1)).memory[0]["weights"]
    four = memory_spatial(VGG16, SHAPE, 1, Cluster.uniform(4, 2**34), (2, 2))
    assert sum(m["weights"] for m in four.memory) == pytest.approx(4 * one - 3 * fc, abs=16)
    assert four.memory[0]["activations"] < memory_batch(VGG16, SHAPE, 1, Cluster.uniform(4, 2**34)).memory[0][
        "activations"]


def test_finer_tiles_need_less_activation_memory_and_reuse_needs_a_pool():
    cluster = Cluster.uniform(2, 2**34)
    coarse = memory_fused(VGG16, SHAPE, 1, cluster, (2, 2), "recompute")
    fine = memory_fused(VGG16, SHAPE, 1, cluster, (7, 7), "recompute")
    reuse = memory_fused(VGG16, SHAPE, 1, cluster, (4, 4), "reuse")
    assert fine.memory[0]["activations"] < coarse.memory[0]["activations"]
    assert coarse.memory[0]["strip pool"] == 0 < reuse.memory[0]["strip pool"]


def test_a_fused_block_ending_inside_a_residual_block_counts_the_skip_it_hands_over():
    network, shape, cluster = get_model("resnet18"), (3, 65, 71), Cluster.uniform(2, 2**34)
    names = [name for name, _ in network.layers]
    inside, after = names.index("layer1.1.conv2") + 1, names.index("layer1.1.relu") + 1
    shapes = network.shapes(shape)
    for depth, tensors in ((inside, ("layer1.0.relu", "layer1.1.conv2")), (after, ("layer1.1.relu",))):
        plan = memory_fused(network, shape, 1, cluster, (2, 2), "reuse", depth)
        handed = sum(math.prod(shapes[network.tensor_index(name)]) for name in tensors)
        assert plan.memory[0]["tile outputs"] == int(handed * 4 * (2 + 0.5))
        assert plan_for(network, shape, cluster, "fused", 1, (2, 2), "reuse", depth=depth).seconds > 0


def test_plenty_of_memory_chooses_batch_mode():
    plan = choose_plan(VGG16, SHAPE, Cluster.uniform(20, 4 * 2**30), 4, 1000)
    assert (plan.mode, plan.batch) == ("batch", 4)
    assert plan.infer_arguments() == ["--mode", "batch", "--batch-size", "4"]


def test_a_tight_budget_chooses_a_split_plan_that_fits():
    cluster = Cluster.uniform(14, 640 * MIB)
    plan = choose_plan(VGG16, SHAPE, cluster, 4, 1000)
    assert plan.mode in ("spatial", "fused") and plan.overflow(cluster) is None
    assert all(candidate.seconds >= plan.seconds for candidate in plans(VGG16, SHAPE, cluster, 4, 1000)
               if candidate.overflow(cluster) is None)


@pytest.fixture
def exact_conv():
    """Plans of runs with ``--exact-conv``: the convolution weights in the kernels' 9-tap layouts."""
    set_exact(True)
    yield
    set_exact(False)


def test_an_impossible_budget_names_what_does_not_fit_and_what_would(exact_conv):
    cluster = Cluster.uniform(4, 384 * MIB)
    with pytest.raises(PlanError) as error:
        choose_plan(VGG16, SHAPE, cluster, 4, 1000)
    message = str(error.value)
    assert "does not fit" in message and "307.2 MiB (80% of 384.0 MiB)" in message
    assert "the weights" in message and "classifier.0" in message
    nodes = int(re.search(r"fits on (\d+) such nodes", message).group(1))
    for count, fits in ((nodes, True), (nodes - 1, False)):
        larger = Cluster.uniform(count, 384 * MIB)
        assert any(p.overflow(larger) is None for p in plans(VGG16, SHAPE, larger, 1, modes=("spatial",))) == fits


def test_a_budget_below_the_runtime_says_no_node_count_helps():
    with pytest.raises(PlanError, match="No number of such nodes"):
        choose_plan(VGG16, SHAPE, Cluster.uniform(4, 64 * MIB), 1)


def test_large_face_images_under_a_small_budget_are_tiled():
    from dcnn.faces.detect import FaceDetector

    detector = FaceDetector.load(None, 0)
    shape = detector.input_shape(500, 1000)
    cluster = Cluster.per_rank_budget(2, 200 * MIB)
    assert memory_batch(detector.network, shape, 1, cluster).overflow(cluster) is not None
    plan = choose_plan(detector.network, shape, cluster, 4, 1000)
    assert plan.mode == "fused" and plan.overflow(cluster) is None and plan.batch == 1


def test_unknown_mode():
    with pytest.raises(PlanError, match="modes"):
        plan_for(VGG16, SHAPE, Cluster.uniform(1, 2**30), "magic", 1)


def test_cluster_file_with_an_absurd_node_count(tmp_path):
    path = tmp_path / "cluster.toml"
    path.write_text('[[node]]\nram = "4GiB"\ncount = 1000000000000\n')
    with pytest.raises(InputError, match="between 1 and 100000"):
        Cluster.load(path)


def test_a_map_too_small_to_tile_still_gets_an_explanation(exact_conv):
    """VGG-16 on 32x32 ends in a 1x1 map: no tile grid exists, and the message still says what would fit."""
    with pytest.raises(PlanError, match=r"fits on \d+ such nodes"):
        choose_plan(VGG16, (3, 32, 32), Cluster.uniform(2, 300 * MIB), 1)


def test_worst_shapes_keep_only_the_sizes_no_other_exceeds():
    counts = {(3, 100, 100): 5, (3, 90, 90): 9, (3, 120, 40): 1, (3, 50, 130): 2, (3, 40, 40): 1, (3, 99, 99): 1}
    worst = worst_shapes(counts, batch=4)
    # 90x90 stays: its real batch (4) exceeds that of every larger size but 100x100 (4 too, which dominates it).
    assert worst == [((3, 100, 100), 5), ((3, 50, 130), 2), ((3, 120, 40), 1)]
    assert worst_shapes(counts, batch=1)[0] == ((3, 100, 100), 5) and len(worst_shapes(counts, batch=1)) == 3
    many = {(3, h, w): 1 for h in range(10, 60) for w in range(10, 60)}
    assert worst_shapes(many, 4) == [((3, 59, 59), 1)]


def test_the_real_batch_is_at_most_the_images_of_a_size():
    cluster = Cluster.uniform(1, 2**40)
    one = plan_for(VGG16, SHAPE, cluster, "batch", 1)
    assert plan_for(VGG16, SHAPE, cluster, "batch", 4, batch_images=1).memory == one.memory
    assert plan_for(VGG16, SHAPE, cluster, "batch", 4, batch_images=1).batch == 4
    assert plan_for(VGG16, SHAPE, cluster, "batch", 4, batch_images=3).peak() < plan_for(VGG16, SHAPE, cluster,
                                                                                         "batch", 4).peak()


def test_a_plan_must_fit_every_worst_shape():
    network = get_model("alexnet")
    small, large = (3, 96, 96), (3, 400, 400)
    budget = plan_for(network, small, Cluster.uniform(1, 2**40), "batch", 1).peak() + MIB
    cluster = Cluster.per_rank_budget(2, budget)
    chosen = choose_plan(network, small, cluster, 1, 2, ("batch",), 1)
    assert chosen.overflow(cluster) is None
    with pytest.raises(PlanError, match="also fits 3x400x400"):
        choose_plan(network, small, cluster, 1, 2, ("batch",), 1, [(large, 1)])
    both = choose_plan(network, small, cluster, 1, 2, ("batch", "spatial"), 1, [(large, 1)])
    assert both.mode == "spatial" and both.memory == plan_for(network, large, cluster, "spatial", 1).memory
    heaviest, shape = plan_shapes(network, [(small, 1), (large, 1)], Cluster.uniform(2, 2**40), "spatial", 1)
    assert shape == large and heaviest.peak() > plan_for(network, small, Cluster.uniform(2, 2**40), "spatial", 1).peak()


def test_a_shorter_fused_block_is_modelled_with_its_spatial_tail():
    cluster = Cluster.uniform(2, 2**40)
    whole = plan_for(VGG16, SHAPE, cluster, "fused", 1, (4, 4), "recompute")
    short = plan_for(VGG16, SHAPE, cluster, "fused", 1, (4, 4), "recompute", depth=5)
    assert short.peak() > 0 and "gathered map" in short.memory[0] and "gathered map" not in whole.memory[0]
    assert short.depth == 5 and "depth 5" in short.describe() and short.infer_arguments()[-2:] == ["--fuse-depth", "5"]
    # The tail runs the rest of the convolutions on half the map per rank, the tiles only the first five layers.
    assert short.memory[0]["activations"] != whole.memory[0]["activations"]


def test_tile_grids_are_limited_to_the_smallest_map():
    grids = {plan.grid for plan in plans(VGG16, SHAPE, Cluster.uniform(2, 2**40), 1, modes=("fused",),
                                         tile_limit=(3, 5))}
    assert grids == {(2, 2), (3, 3)}


def test_a_residual_skip_counts_in_the_working_set():
    """A skip alive across a node adds its values to the node's working set, in batch and spatial mode."""
    graph = GraphBuilder()
    skip = graph.add("pool", MaxPool2d(1))
    graph.add("relu1", ReLU())
    graph.add("relu2", ReLU())
    graph.add("add", Add(), "relu2", skip)
    network, shape = graph.build("skip", (8, 10, 10)), (8, 10, 10)
    one_map = 8 * 10 * 10
    # relu1 reads the skip; relu2 holds its input, its output and the skip; the add its two inputs and output.
    assert [row.live_bytes // 4 for row in network.costs(shape)] == [2 * one_map, 2 * one_map, 3 * one_map,
                                                                     3 * one_map]
    cluster = Cluster.uniform(1, 2**34)
    assert memory_batch(network, shape, 2, cluster).memory[0]["activations"] == 2 * 3 * one_map * 4
    assert memory_spatial(network, shape, 2, cluster, (1, 1)).memory[0]["activations"] == 2 * 3 * one_map * 4
    chain = get_model("vgg11")
    assert all(row.live_bytes == 4 * (math.prod(row.in_shape) + math.prod(row.out_shape))
               for row in chain.costs((3, 64, 64)))


def test_a_dag_gets_every_candidate():
    network = get_model("mobilenet_v2")
    candidates = plans(network, (3, 96, 96), Cluster.uniform(2, 2**34), 1)
    assert {(plan.mode, plan.halo_policy) for plan in candidates} == {
        ("batch", None), ("spatial", None), ("fused", "recompute"), ("fused", "reuse")}
    reuse = plan_for(network, (3, 96, 96), Cluster.uniform(2, 2**34), "fused", 1, (2, 2), "reuse")
    assert reuse.memory[0]["strip pool"] > 0


@pytest.mark.timeout(300)
def test_a_thousand_nodes_are_planned_without_enumerating_rank_pairs():
    """A hang guard (issue 14: 221 s at 1,000 nodes when halo messages were found by all rank pairs)."""
    cluster = Cluster.uniform(1000, 4 * 2**30)
    candidates = plans(VGG16, SHAPE, cluster, 2, 1000)
    spatial = [plan for plan in candidates if plan.mode == "spatial"]
    assert {plan.grid for plan in spatial} == {(5, 200), (8, 125), (10, 100), (20, 50), (25, 40), (40, 25),
                                               (50, 20), (100, 10), (125, 8), (200, 5)}
    assert best_plan(candidates, VGG16, SHAPE, cluster).overflow(cluster) is None


def test_spatial_grids_leave_no_rank_without_a_block():
    """100,000 ranks cannot split a 224x224 image: spatial mode is not offered, and alone it is refused."""
    cluster = Cluster.uniform(100_000, 4 * 2**30)
    assert plans(VGG16, SHAPE, cluster, 1, modes=("spatial",)) == []
    with pytest.raises(PlanError, match="no spatial plan for 100000 nodes"):
        choose_plan(VGG16, SHAPE, cluster, 1, modes=("spatial",))


#: A stage every rank runs after VGG-16: LeNet-5 on batches of 8 with 3 MiB of other models and 1 MiB scratch.
LENET_STAGE = Stage("second", get_model("lenet5"), 8, 3 * MIB, MIB, 0.5)


@pytest.mark.parametrize("mode,grid", [("batch", None), ("spatial", (1, 2)), ("fused", (2, 2))])
def test_a_stage_adds_its_networks_weights_and_working_set_to_every_rank(mode, grid):
    cluster = Cluster.uniform(2, 2**34)
    alone = plan_for(VGG16, SHAPE, cluster, mode, 2, grid)
    staged = plan_for(VGG16, SHAPE, cluster, mode, 2, grid, stage=LENET_STAGE)
    lenet = memory_batch(LENET_STAGE.network, LENET_STAGE.network.input_shape, 8, cluster).memory[0]
    for rank in range(2):
        assert staged.memory[rank]["second models"] == lenet["weights"] + 3 * MIB
        assert staged.memory[rank]["second activations"] == (lenet["input"] + lenet["activations"] + MIB
                                                             + int(0.5 * 2 * math.prod(SHAPE)))
        # LeNet's 5x5 layers take the kernel-row formulation, whose chunks are the widest (four L2 caches).
        assert staged.memory[rank]["chunk scratch"] == 4 * L2_BYTES > alone.memory[rank]["chunk scratch"]
        assert {k: v for k, v in staged.memory[rank].items() if not k.startswith("second") and k != "chunk scratch"} \
            == {k: v for k, v in alone.memory[rank].items() if k != "chunk scratch"}
        extra = (staged.memory[rank]["second models"] + staged.memory[rank]["second activations"]
                 + staged.memory[rank]["chunk scratch"] - alone.memory[rank]["chunk scratch"])
        assert staged.peak(rank) == pytest.approx(alone.peak(rank) + extra * (1 + MODEL_MARGIN), abs=2)


def test_a_node_too_small_for_a_stage_is_refused_naming_it():
    heavy = Stage("recognition", VGG16, 1)  # 0.6 GiB of models whatever the plan
    cluster = Cluster.uniform(4, 600 * MIB)
    assert choose_plan(get_model("lenet5"), (1, 32, 32), cluster, 4).overflow(cluster) is None
    with pytest.raises(PlanError) as error:
        choose_plan(get_model("lenet5"), (1, 32, 32), cluster, 4, stage=heavy)
    message = str(error.value)
    assert "Whatever the plan, every node holds the recognition models (" in message
    assert "No number of such nodes" in message


def test_a_rank_process_adds_its_model_reader_to_the_runtime_and_sets_its_threads():
    """``dcnn.plan`` and ``dcnn.infer`` both add a model file's reader bytes through ``for_process``."""
    cluster = Cluster.uniform(2, 8 * GIB)
    process = for_process(cluster, 123 * MIB, 2)
    assert process.runtime_bytes == cluster.runtime_bytes + 123 * MIB and process.threads == 2
    assert process.nodes == cluster.nodes and process.fraction == cluster.fraction
    base, read = (plan_for(VGG16, SHAPE, c, "batch", 1).memory[0] for c in (for_process(cluster), process))
    assert read["runtime"] - base["runtime"] == 123 * MIB
    # Each of the two kernel threads keeps its Winograd band buffers.
    assert read["winograd scratch"] == 2 * base["winograd scratch"] > 0
    with pytest.raises(InputError, match="--threads"):
        for_process(cluster, 0, 0)


def test_the_winograd_scratch_covers_what_a_thread_keeps():
    """The band buffers a thread holds after a whole VGG-11 batch, measured, against the planner's item; the
    exact formulations (``--exact-conv``) keep none."""
    import threading

    import numpy as np

    from dcnn.exec.forward import Forward
    from dcnn.kernels import threads, winograd
    from dcnn.network.weights import init_weights

    network, shape, batch = get_model("vgg11"), (3, 48, 40), 3
    held = []

    def run():
        # A fresh thread: its buffers are only what this batch needed.
        Forward(network, init_weights(network, seed=0))(np.zeros((batch, *shape), np.float32))
        held.append(sum(buffer.nbytes for buffer in winograd._scratch.__dict__.values()))

    before = threads.get_num_threads()
    threads.set_num_threads(1)
    try:
        worker = threading.Thread(target=run)
        worker.start()
        worker.join()
    finally:
        threads.set_num_threads(before)
    predicted = plan_for(network, shape, Cluster.uniform(1, 8 * GIB), "batch", batch).memory[0]["winograd scratch"]
    assert 0 < held[0] <= predicted <= 1.1 * held[0]
    set_exact(True)
    try:
        assert "winograd scratch" not in plan_for(network, shape, Cluster.uniform(1, 8 * GIB), "batch",
                                                  batch).memory[0]
    finally:
        set_exact(False)


def test_batch_mode_counts_the_tasks_its_task_threads_run_at_once_per_batch_size():
    """A rank of T threads runs T tasks at once when the batch leaves it T tasks (dcnn.modes.concurrent_tasks);
    the planner once took one count for every candidate (dcnn.plan: always 1), so plan and infer disagreed."""
    network, shape = get_model("lenet5"), (1, 32, 32)
    threaded = for_process(Cluster.uniform(2, 8 * GIB), 0, 2, 2)
    single = for_process(Cluster.uniform(2, 8 * GIB), 0, 2, 1)  # single mode: no task threads
    per_task = ("input", "activations")
    for batch, at_once in ((2, 2), (4, 1)):  # 8 images: 4 tasks fill 2 ranks x 2 threads, 2 tasks do not
        many, one = (plan_for(network, shape, cluster, "batch", batch, images=8).memory[0]
                     for cluster in (threaded, single))
        assert [many[item] for item in per_task] == [at_once * one[item] for item in per_task]
    # Each candidate counts its own tasks: batches 1 and 2 run two at once (8 and 4 tasks), batch 4 one (2 tasks).
    by_batch = {plan.batch: plan.memory[0]["activations"] for plan in plans(network, shape, threaded, 4, 8, ("batch",))}
    assert by_batch[2] == 2 * by_batch[1] and by_batch[4] == by_batch[2]
    spatial = [plan_for(network, shape, cluster, "spatial", 2, images=8).memory for cluster in (threaded, single)]
    assert spatial[0] == spatial[1]


def test_the_node_count_that_fits_counts_the_tasks_each_count_runs_at_once(capsys):
    """With 2 task threads, 8 images at batch 1 leave each of up to 4 ranks two tasks at once (VGG-16's two working
    sets overflow 1070 MiB, one fits); from 5 ranks on, each runs one. The hint once planned every count for one
    image, hence one task, and said 2 nodes, on which the run still holds two tasks per rank and does not fit."""
    from dcnn.cli.plan import main

    cluster = for_process(Cluster.per_rank_budget(1, 1070 * MIB), 0, 2, 2)
    candidates = plans(VGG16, SHAPE, cluster, 1, 8, ("batch",))
    with pytest.raises(PlanError, match="It fits on 5 such nodes"):
        best_plan(candidates, VGG16, SHAPE, cluster, ("batch",), images=8)
    for nodes, fits in ((4, False), (5, True)):  # the hint is the fewest nodes that hold the plan
        larger = for_process(Cluster.per_rank_budget(nodes, 1070 * MIB), 0, 2, 2)
        assert (plan_for(VGG16, SHAPE, larger, "batch", 1, images=8).overflow(larger) is None) == fits
    argv = ["vgg16", "--nodes", "1", "--mem-per-rank", "1070MiB", "--batch-size", "1", "--mode", "batch",
            "--images", "8"]
    assert main([*argv, "--threads", "2"]) == 2
    assert "It fits on 5 such nodes" in capsys.readouterr().err


def test_the_plan_command_says_when_the_exact_kernels_layouts_would_fit(capsys):
    """Winograd's filters (four times VGG-16's 3x3 ones, on every rank) fit on no number of 390 MiB nodes; before,
    dcnn.plan said only "use nodes with more memory", where --exact-conv fits on 8 of them."""
    from dcnn.cli.plan import main

    assert main(["vgg16", "--nodes", "4", "--ram", "390MiB"]) == 2
    error = capsys.readouterr().err
    assert "No number of such nodes up to 256 holds it" in error
    assert error.strip().endswith("with --exact-conv (filters in the exact kernels' layouts, not Winograd's) it fits "
                                  "on 8 such nodes")
    assert main(["vgg16", "--nodes", "4", "--ram", "640MiB"]) == 2  # fits as it is with the exact layouts
    assert "with --exact-conv (filters in the exact kernels' layouts, not Winograd's) it fits: spatial 2x2, batch 4" \
        in capsys.readouterr().err
    assert main(["vgg16", "--nodes", "4", "--ram", "390MiB", "--exact-conv"]) == 2
    assert "It fits on 8 such nodes" in capsys.readouterr().err
    assert main(["vgg16", "--nodes", "4", "--ram", "4GiB"]) == 0 and "with --exact-conv" not in capsys.readouterr().out


def test_the_leanest_plan_named_is_the_smallest_batch_among_equals():
    """One image plans alike at every batch size; before, the message named the largest ("batch 16")."""
    cluster = Cluster.per_rank_budget(1, 150 * MIB)
    candidates = plans(VGG16, SHAPE, cluster, 16, 1, ("batch",), batch_images=1)
    assert len({plan.peak() for plan in candidates}) == 1 and len(candidates) == 5
    with pytest.raises(PlanError, match=r"even the leanest plan \(batch, batch 1\)"):
        best_plan(candidates, VGG16, SHAPE, cluster, ("batch",))


def test_more_nodes_than_the_planner_takes_are_refused_at_once(capsys):
    """Before: ``--nodes 1000000`` ran on without output (4,000 nodes: 88 s, 860 MB)."""
    from dcnn.cli.plan import main

    assert main(["vgg16", "--nodes", "1000000"]) == 2
    captured = capsys.readouterr()
    assert captured.out == "" and "--nodes must be an integer at least 1 and at most 4096, got 1000000" in captured.err
