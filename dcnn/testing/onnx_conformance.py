"""dcnn's ONNX reader against ONNX's own backend test data, generated offline by the installed ``onnx`` package.

Three suites, all from ``onnx.backend.test``:

- ``node``: the per-operator cases, built in memory by ``load_model_tests(kind="node")`` (each a one-node or
  "expanded" model with inputs and expected outputs computed by ONNX's reference code);
- ``light``: the shipped "light" models (AlexNet, DenseNet-121, Inception v1/v2, ResNet-50, ShuffleNet,
  SqueezeNet, VGG-19, ZFNet-512) with their expected outputs, fed the input ONNX's runner feeds them
  (``arange(n) / n`` in the input's shape);
- ``pytorch``: the ``pytorch-converted`` and ``pytorch-operator`` models with their test data sets, written at
  opset 6 and converted to opset 7 (dcnn's oldest) by ``onnx.version_converter`` first.

A case is *applicable* when, judged from the case alone before dcnn reads it:

1. every node's operator is one issue 16 lists, or ``Transpose`` (ShuffleNet's channel shuffle), the operators
   dcnn converts (:data:`LISTED_OPS`, with ``Constant`` and ``ConstantOfShape``);
2. the model has one output and at least one input;
3. its first input, the data, is float32 of rank 4 (N x C x H x W), or rank 2 (N x F) for the operators of a
   classifier head (:data:`HEAD_OPS`), or of rank 1 to 4 for pointwise operators (:data:`POINTWISE_OPS`), whose
   data and expected output are lifted to rank 4 by leading unit axes (which changes no value);
4. it has one data input: the other inputs are parameters (weights, bounds, shapes, axes, pads), made
   initializers, except for the operators whose every input is data (:data:`DATA_OPERAND_OPS`), where a second
   input makes the case not applicable (a dcnn model reads one image tensor).

An applicable case that dcnn refuses with :class:`~dcnn.network.onnx.errors.UnsupportedModelError` (an
attribute or operand dcnn does not run: ``transA``, a non-channel ``Concat`` axis, ``Pad`` modes other than
``constant``, training mode, ...) is reported as *not applicable: unsupported attribute* with the reader's reason,
every one listed in the report. Every other applicable case must pass: the same output shape, and values within
the case's own tolerance (``numpy.testing.assert_allclose`` with its ``rtol`` and ``atol``, as ONNX's runner).
"""

from __future__ import annotations

import glob
import os
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnx
from onnx import numpy_helper
from onnx.backend.test.case.model import collect_testcases
from onnx.backend.test.loader import load_model_tests

from dcnn.errors import DcnnError
from dcnn.exec.forward import Forward
from dcnn.network.onnx import MIN_OPSET, UnsupportedModelError, load_onnx

__all__ = [
    "DATA_OPERAND_OPS",
    "HEAD_OPS",
    "LISTED_OPS",
    "POINTWISE_OPS",
    "SUITES",
    "Case",
    "CaseResult",
    "applicability",
    "light_cases",
    "node_cases",
    "pytorch_cases",
    "report",
    "run_case",
    "run_suites",
]

#: The operators issue 16 lists, Transpose (as ShuffleNet's channel shuffle), and the two that only make constants.
LISTED_OPS = frozenset(
    {
        "Conv",
        "MaxPool",
        "AveragePool",
        "GlobalAveragePool",
        "GlobalMaxPool",
        "BatchNormalization",
        "Relu",
        "LeakyRelu",
        "Elu",
        "PRelu",
        "Sigmoid",
        "HardSigmoid",
        "HardSwish",
        "Clip",
        "LRN",
        "Gemm",
        "MatMul",
        "Flatten",
        "Reshape",
        "Squeeze",
        "Unsqueeze",
        "Add",
        "Sum",
        "Mul",
        "Concat",
        "Dropout",
        "Identity",
        "Softmax",
        "Pad",
        "Transpose",
        "Constant",
        "ConstantOfShape",
    }
)
#: Operators a classifier head applies to (N, F) rows: their cases may have a 2-D data input.
HEAD_OPS = frozenset({"Gemm", "MatMul", "Softmax"})
#: Operators whose every input is data (a residual sum, gates, a concatenation).
DATA_OPERAND_OPS = frozenset({"Add", "Sum", "Mul", "Concat"})
#: Operators that act on each value alone (with numpy's right-aligned broadcasting of parameters): their cases of
#: rank 1 to 3 are run lifted to rank 4 by leading unit axes, which changes no value.
POINTWISE_OPS = frozenset(
    {"Relu", "LeakyRelu", "Elu", "PRelu", "Sigmoid", "HardSigmoid", "HardSwish", "Clip", "Dropout", "Identity"}
)
#: ONNX's default tolerance of its backend tests (``onnx.backend.test.loader``).
DEFAULT_RTOL, DEFAULT_ATOL = 1e-3, 1e-7


@dataclass
class Case:
    """One test case: a model, its input arrays and its expected outputs."""

    suite: str
    name: str
    model: onnx.ModelProto
    data_sets: list[tuple[list[np.ndarray], list[np.ndarray]]]
    rtol: float = DEFAULT_RTOL
    atol: float = DEFAULT_ATOL


@dataclass
class CaseResult:
    """The outcome of one case.

    Attributes
    ----------
    suite, name : str
        Where the case comes from.
    ops : tuple of str
        Its operator types (``Constant`` and ``ConstantOfShape`` left out unless alone).
    status : str
        ``"passed"``, ``"failed"`` or ``"n/a"``.
    reason : str
        Why it is not applicable, or how it failed.
    max_error : float or None
        The largest absolute difference from the expected output (run cases).
    """

    suite: str
    name: str
    ops: tuple[str, ...]
    status: str
    reason: str = ""
    max_error: float | None = None


def _as_array(value) -> np.ndarray:
    """A case's tensor as an array; a sequence or optional value (never applicable) as an object array."""
    if isinstance(value, onnx.TensorProto):
        return numpy_helper.to_array(value)
    if isinstance(value, (np.ndarray, np.generic, int, float)):
        return np.asarray(value)
    array = np.empty((), dtype=object)
    array[()] = value
    return array


def case_ops(model: onnx.ModelProto) -> tuple[str, ...]:
    """The case's operator types, sorted; the constant makers only when nothing else is there."""
    ops = sorted({node.op_type for node in model.graph.node})
    main = [op for op in ops if op not in ("Constant", "ConstantOfShape")]
    return tuple(main or ops)


def applicability(model: onnx.ModelProto, inputs: list[np.ndarray]) -> str:
    """Why a case is not applicable (rules 1-4 of the module docstring), or ``""`` if it is."""
    ops = {node.op_type for node in model.graph.node}
    outside = sorted(
        op for op in ops if op not in LISTED_OPS or any(node.domain not in ("", "ai.onnx") for node in model.graph.node)
    )
    if outside:
        return f"operator outside the list: {', '.join(outside)}"
    initialized = {tensor.name for tensor in model.graph.initializer}
    graph_inputs = [value for value in model.graph.input if value.name not in initialized]
    if len(model.graph.output) != 1:
        return "several outputs"
    if not graph_inputs or not inputs:
        return "no data input"
    data = inputs[0]
    if data.dtype != np.float32:
        return f"dtype {data.dtype}"
    ranks = (2, 4) if ops <= HEAD_OPS | {"Constant"} else (1, 2, 3, 4) if ops <= POINTWISE_OPS else (4,)
    if data.ndim not in ranks:
        return f"rank {data.ndim}"
    if len(inputs) > 1 and ops & DATA_OPERAND_OPS:
        return "several data inputs"
    return ""


def with_parameters(model: onnx.ModelProto, inputs: list[np.ndarray], rank: int) -> onnx.ModelProto:
    """The model with every input but the first made an initializer holding the case's value (still listed as
    a graph input, as IR version 3 requires), and its data input and output lifted to ``rank`` by leading unit
    axes (pointwise cases, :data:`POINTWISE_OPS`)."""
    model = onnx.ModelProto.FromString(model.SerializeToString())
    initialized = {tensor.name for tensor in model.graph.initializer}
    graph_inputs = [value for value in model.graph.input if value.name not in initialized]
    for value, array in zip(graph_inputs[1:], inputs[1:]):
        model.graph.initializer.append(numpy_helper.from_array(array, value.name))
    for value in (graph_inputs[0], model.graph.output[0]):
        shape = value.type.tensor_type.shape
        if value.type.tensor_type.HasField("shape") and len(shape.dim) < rank:
            dims = [dim.dim_param or dim.dim_value for dim in shape.dim]
            value.type.tensor_type.shape.ClearField("dim")
            for dim in [1] * (rank - len(dims)) + dims:
                entry = shape.dim.add()
                if isinstance(dim, str):
                    entry.dim_param = dim
                else:
                    entry.dim_value = dim
    return model


def run_case(case: Case, workdir: str | os.PathLike) -> CaseResult:
    """Run one case through dcnn's reader and executor and judge it (see the module docstring)."""
    ops = case_ops(case.model)
    first_inputs = [_as_array(value) for value in case.data_sets[0][0]]
    reason = applicability(case.model, first_inputs)
    if reason:
        return CaseResult(case.suite, case.name, ops, "n/a", reason)
    worst = 0.0
    rank = 4 if set(ops) <= POINTWISE_OPS else first_inputs[0].ndim
    for index, (inputs, outputs) in enumerate(case.data_sets):
        inputs = [_as_array(value) for value in inputs]
        expected = _as_array(outputs[0])
        lift = (1,) * (rank - inputs[0].ndim)
        inputs[0], expected = inputs[0].reshape(lift + inputs[0].shape), expected.reshape(lift + expected.shape)
        path = Path(workdir) / f"{case.suite}_{case.name}_{index}.onnx"
        onnx.save(with_parameters(case.model, inputs, rank), path)
        try:
            model = load_onnx(path, image_input=False)
        except UnsupportedModelError as error:
            return CaseResult(
                case.suite,
                case.name,
                ops,
                "n/a",
                "unsupported attribute: "
                + "; ".join(f"{op} {reason}" for op, entries in error.nodes.items() for _, reason in entries),
            )
        except DcnnError as error:
            return CaseResult(case.suite, case.name, ops, "failed", f"refused: {error}")
        got = Forward(model.network, model.weights)(inputs[0])
        if got.shape != expected.shape:
            return CaseResult(
                case.suite, case.name, ops, "failed", f"shape {list(got.shape)}, expected {list(expected.shape)}"
            )
        try:
            np.testing.assert_allclose(got, expected, rtol=case.rtol, atol=case.atol)
        except AssertionError as error:
            mismatch = next((line.strip() for line in str(error).splitlines() if "Max absolute" in line), "")
            return CaseResult(
                case.suite,
                case.name,
                ops,
                "failed",
                f"values differ ({mismatch})",
                float(np.nanmax(np.abs(got - expected))),
            )
        worst = max(worst, float(np.max(np.abs(got - expected), initial=0.0)))
    return CaseResult(case.suite, case.name, ops, "passed", max_error=worst)


def node_cases() -> Iterator[Case]:
    """ONNX's per-operator cases, built in memory by the installed package."""
    for test in load_model_tests(kind="node"):
        yield Case("node", test.name, test.model, [(list(i), list(o)) for i, o in test.data_sets], test.rtol, test.atol)


def light_cases() -> Iterator[Case]:
    """The shipped light models with their expected outputs, on ONNX's runner's input ``arange(n) / n``."""
    data = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    for test in collect_testcases():
        if test.kind != "real":
            continue
        path = data / f"light_{test.model_name}.onnx"
        model = onnx.load(str(path))
        initialized = {tensor.name for tensor in model.graph.initializer}
        value = next(v for v in model.graph.input if v.name not in initialized)
        shape = tuple(d.dim_value if d.HasField("dim_value") else 1 for d in value.type.tensor_type.shape.dim)
        size = int(np.prod(shape))
        x = (np.arange(size).reshape(shape) / size).astype(np.float32)
        expected = numpy_helper.to_array(onnx.load_tensor(str(data / f"light_{test.model_name}_output_0.pb")))
        yield Case("light", test.name, model, [([x], [expected])], test.rtol, test.atol)


def pytorch_cases() -> Iterator[Case]:
    """The ``pytorch-converted`` and ``pytorch-operator`` models, converted from opset 6 to opset 7 by
    ``onnx.version_converter`` (a model it cannot convert keeps its opset, and dcnn then refuses it)."""
    for kind in ("pytorch-converted", "pytorch-operator"):
        for test in load_model_tests(kind=kind):
            model = onnx.load(os.path.join(test.model_dir, "model.onnx"))
            if model.opset_import[0].version < 7:
                try:
                    model = onnx.version_converter.convert_version(model, 7)
                except Exception:
                    pass
            data_sets = []
            for folder in sorted(glob.glob(os.path.join(test.model_dir, "test_data_set_*"))):
                inputs = [onnx.load_tensor(path) for path in sorted(glob.glob(os.path.join(folder, "input_*.pb")))]
                outputs = [onnx.load_tensor(path) for path in sorted(glob.glob(os.path.join(folder, "output_*.pb")))]
                data_sets.append((inputs, outputs))
            yield Case(kind, test.name, model, data_sets, test.rtol, test.atol)


#: The suites by name, each a generator of cases.
SUITES = {"node": node_cases, "light": light_cases, "pytorch": pytorch_cases}


def run_suites(suites: tuple[str, ...] = tuple(SUITES)) -> list[CaseResult]:
    """Run every case of the named suites (keys of :data:`SUITES`)."""
    results = []
    with tempfile.TemporaryDirectory() as workdir:
        for suite in suites:
            for case in SUITES[suite]():
                results.append(run_case(case, workdir))
    return results


def report(results: list[CaseResult], command: str = "") -> str:
    """The Markdown report: totals per suite, per operator, then every failure and non-applicable reason.

    The rules of applicability (this module's docstring) are stated in the report's head, with ``command``.
    """
    latest = onnx.defs.onnx_opset_version()
    lines = [f"# dcnn ONNX conformance (onnx {onnx.__version__}, opsets {MIN_OPSET}-{latest})", ""]
    if command:
        lines += [f"Written by `{command}`.", ""]
    lines += [
        "Cases come from the installed onnx package, generated offline: `node` (per-operator cases built in memory),",
        "`light` (the shipped light models and expected outputs), `pytorch-converted` and `pytorch-operator` (opset",
        "6 models with test data, converted to opset 7 by onnx.version_converter). A case is applicable when all its",
        "operators are issue 16's (or Transpose, as a channel shuffle), it has one output, its one data input is",
        "float32 N x C x H x W (N x F for Gemm, MatMul and Softmax; rank 1-4 lifted to 4 by leading unit axes for",
        "pointwise operators), and its other inputs",
        "are parameters (made initializers). Applicable cases that dcnn refuses with its unsupported-operator error",
        "are listed below as 'unsupported attribute' with the reason; every other applicable case must match the",
        "expected output's shape and values within the case's rtol/atol (numpy.testing.assert_allclose).",
        "",
    ]
    lines += ["| suite | cases | passed | failed | not applicable |", "|---|---:|---:|---:|---:|"]
    for suite in dict.fromkeys(result.suite for result in results):
        rows = [r for r in results if r.suite == suite]
        lines.append(
            f"| {suite} | {len(rows)} | {_count(rows, 'passed')} | {_count(rows, 'failed')} | {_count(rows, 'n/a')} |"
        )
    applicable = [r for r in results if r.status != "n/a"]
    passed = _count(applicable, "passed")
    lines += [
        "",
        f"Applicable cases passing: {passed} of {len(applicable)} ({100 * passed / max(1, len(applicable)):.0f} %).",
        "",
    ]
    lines += [
        "## Per operator (cases of listed operators; a case counts under each operator it contains)",
        "",
        "| operator | passed | failed | n/a: unsupported attribute | n/a: dtype, rank or inputs |",
        "|---|---:|---:|---:|---:|",
    ]
    for op in sorted(LISTED_OPS):
        rows = [r for r in results if op in r.ops and not r.reason.startswith("operator outside")]
        if rows:
            attribute = sum(r.reason.startswith("unsupported attribute") for r in rows)
            lines.append(
                f"| {op} | {_count(rows, 'passed')} | {_count(rows, 'failed')} | {attribute} | "
                f"{_count(rows, 'n/a') - attribute} |"
            )
    models = [r for r in results if r.suite == "light"]
    if models:
        lines += [
            "",
            "## Light models (single process)",
            "",
            "Their weights are constant fills (ConstantOfShape), so the expected outputs check the graph, its shapes",
            "and every layer's arithmetic on uniform weights; dcnn's per-operator tests (tests/test_onnx_ops.py)",
            "check random weights against onnxruntime.",
            "",
            "| model | status | largest abs. error | note |",
            "|---|---|---:|---|",
        ]
        lines += [
            f"| {r.name} | {r.status} | {'' if r.max_error is None else f'{r.max_error:.2g}'} | {r.reason} |"
            for r in models
        ]
    outside = [r for r in results if r.reason.startswith("operator outside")]
    lines += ["", f"Cases with an operator outside the list (not applicable): {len(outside)}.", ""]
    for title, keep in (
        ("Failures", lambda r: r.status == "failed"),
        ("Not applicable: unsupported attribute", lambda r: r.reason.startswith("unsupported")),
        (
            "Not applicable: dtype, rank or inputs",
            lambda r: r.status == "n/a" and not r.reason.startswith(("unsupported", "operator")),
        ),
    ):
        chosen = [r for r in results if keep(r)]
        lines += [f"## {title} ({len(chosen)})", ""]
        lines += [f"- {r.suite} `{r.name}` ({', '.join(r.ops)}): {r.reason}" for r in chosen] or ["none"]
        lines.append("")
    return "\n".join(lines)


def _count(rows: list[CaseResult], status: str) -> int:
    return sum(row.status == status for row in rows)
