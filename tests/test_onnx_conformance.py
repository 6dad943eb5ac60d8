"""ONNX's own backend test data through dcnn's reader: every applicable case passes, every light model whose
operators dcnn runs passes in single mode (each once, at its shipped size)."""

import numpy as np
import pytest
from conftest import oracle

onnx = oracle("onnx")

from dcnn.testing.onnx_conformance import (  # noqa: E402  (after the oracle check: it imports onnx)
    Case,
    applicability,
    light_cases,
    report,
    run_case,
    run_suites,
)

#: Operators with applicable cases in onnx's node and pytorch suites: each must keep passing some.
COVERED = [
    "AveragePool",
    "BatchNormalization",
    "Clip",
    "Conv",
    "Elu",
    "Gemm",
    "GlobalAveragePool",
    "GlobalMaxPool",
    "HardSigmoid",
    "HardSwish",
    "LRN",
    "LeakyRelu",
    "MaxPool",
    "Pad",
    "Relu",
    "Softmax",
]


@pytest.fixture(scope="module")
def results():
    return run_suites(("node", "pytorch"))


def test_every_applicable_node_and_pytorch_case_passes(results):
    failed = [f"{r.name}: {r.reason}" for r in results if r.status == "failed"]
    assert not failed
    passed = {op for r in results if r.status == "passed" for op in r.ops}
    assert set(COVERED) <= passed, sorted(set(COVERED) - passed)


def test_the_report_counts_every_case(results):
    text = report(results)
    total = len(results)
    applicable = sum(r.status != "n/a" for r in results)
    assert f"Applicable cases passing: {applicable} of {applicable} (100 %)." in text
    assert (
        sum(
            int(line.split("|")[2])
            for line in text.splitlines()
            if line.startswith("| node |") or line.startswith("| pytorch-")
        )
        == total
    )


#: ONNX's light models (onnx.backend.test.case.model.collect_testcases).
LIGHT_MODELS = [
    "test_bvlc_alexnet",
    "test_densenet121",
    "test_inception_v1",
    "test_inception_v2",
    "test_resnet50",
    "test_shufflenet",
    "test_squeezenet",
    "test_vgg19",
    "test_zfnet512",
]


@pytest.fixture(scope="module")
def light():
    return {case.name: case for case in light_cases()}


def test_every_light_model_is_found(light):
    assert sorted(light) == LIGHT_MODELS


@pytest.mark.parametrize("name", LIGHT_MODELS)
def test_light_models_in_single_mode(tmp_path, light, name):
    result = run_case(light[name], tmp_path)
    assert result.status == "passed", result.reason


def _model(op, x_shape, other_inputs=(), **attributes):
    helper = onnx.helper
    names = ["x", *[name for name, _ in other_inputs]]
    inputs = [helper.make_tensor_value_info("x", onnx.TensorProto.FLOAT, x_shape)]
    inputs += [helper.make_tensor_value_info(name, onnx.TensorProto.FLOAT, shape) for name, shape in other_inputs]
    graph = helper.make_graph(
        [helper.make_node(op, names, ["y"], **attributes)],
        "g",
        inputs,
        [helper.make_tensor_value_info("y", onnx.TensorProto.FLOAT, None)],
    )
    return onnx.shape_inference.infer_shapes(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)]))


@pytest.mark.parametrize(
    "op,shape,others,reason",
    [
        ("Conv", [1, 2, 5], [("W", [1, 2, 3])], "rank 3"),
        ("Gemm", [2, 3], [("B", [3, 4])], ""),
        ("Relu", [3, 4, 5], [], ""),  # pointwise: lifted to rank 4
        ("Add", [1, 2, 3, 3], [("z", [1, 2, 3, 3])], "several data inputs"),
        ("Floor", [1, 2, 3, 3], [], "operator outside the list: Floor"),
    ],
)
def test_applicability_is_decided_from_the_case(op, shape, others, reason):
    arrays = [np.zeros(shape, np.float32)] + [np.zeros(s, np.float32) for _, s in others]
    assert applicability(_model(op, shape, others), arrays) == reason


def test_a_pointwise_case_is_lifted_and_a_wrong_answer_fails(tmp_path):
    x = np.linspace(-2, 2, 12, dtype=np.float32).reshape(3, 4)
    model = _model("Relu", [3, 4])
    assert run_case(Case("node", "relu", model, [([x], [np.maximum(x, 0)])]), tmp_path).status == "passed"
    wrong = run_case(Case("node", "relu", model, [([x], [np.maximum(x, 0) + 1e-3])]), tmp_path)
    assert wrong.status == "failed" and "values differ" in wrong.reason
