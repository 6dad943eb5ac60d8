"""Models exported by PyTorch's ONNX exporter read and run as onnxruntime runs them (a small network with the
patterns the exporter writes: folded batch norm or not, Clip for ReLU6, Flatten and Gemm, squeeze-and-excitation
gates, ceil-mode pools, dynamic height and width)."""

import warnings

import numpy as np
import pytest
from conftest import oracle

from dcnn.exec.forward import Forward
from dcnn.network.onnx import load_onnx

torch = oracle("torch")
oracle("onnx")
ort = oracle("onnxruntime")
nn = torch.nn
from dcnn.testing.onnx_exports import hand_written_cnn  # noqa: E402  (after the oracles: skipped without them)


class Exported(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 2, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.depthwise = nn.Sequential(nn.Conv2d(8, 8, 3, 1, 1, groups=8), nn.BatchNorm2d(8), nn.Hardswish())
        self.gate = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Conv2d(8, 4, 1), nn.ReLU(), nn.Conv2d(4, 8, 1), nn.Hardsigmoid()
        )
        self.pool = nn.MaxPool2d(3, 2, ceil_mode=True)
        self.tail = nn.Sequential(
            nn.Conv2d(8, 8, 1), nn.LeakyReLU(0.1), nn.AvgPool2d(2, ceil_mode=True, count_include_pad=False)
        )
        self.head = nn.Sequential(
            nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.2), nn.Linear(16, 5), nn.Softmax(dim=1)
        )

    def forward(self, x):
        x = self.stem(x)
        y = self.depthwise(x)
        x = self.pool(x + y * self.gate(y))
        return self.head(torch.cat([self.tail(x), torch.sigmoid(self.tail(x))], 1))


def test_a_pytorch_export_matches_onnxruntime(tmp_path):
    torch.manual_seed(0)
    module = Exported().eval()
    for norm in (module.stem[1], module.depthwise[1]):
        norm.running_mean.uniform_(-0.5, 0.5)
        norm.running_var.uniform_(0.5, 2.0)
    x = np.random.default_rng(0).standard_normal((2, 3, 29, 34)).astype(np.float32)
    path = tmp_path / "exported.onnx"
    torch.onnx.export(
        module,
        torch.from_numpy(x),
        str(path),
        input_names=["image"],
        opset_version=13,
        dynamic_axes={"image": {0: "N", 2: "H", 3: "W"}},
        dynamo=False,
    )
    model = load_onnx(path)
    assert model.input_name == "image" and model.dynamic_size
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [(2, 3, 29, 34), (1, 3, 40, 23)]:
        image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        expected = session.run(None, {"image": image})[0]
        np.testing.assert_allclose(Forward(model.network, model.weights)(image), expected, rtol=1e-4, atol=1e-6)


class Viewed(nn.Module):
    """Hand-written model code: ``x.view(x.size(0), -1)`` and ``x.mean((2, 3))`` instead of nn.Flatten and
    nn.AdaptiveAvgPool2d."""

    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 8, 3)
        self.flat = nn.Linear(8 * 6 * 6, 5)
        self.mean = nn.Linear(8, 5)

    def forward(self, x):
        x = torch.relu(self.conv(x))
        return self.flat(x.view(x.size(0), -1)) + self.mean(x.mean((2, 3)))


def test_a_view_on_the_dynamic_batch_and_a_spatial_mean(tmp_path):
    """With a dynamic batch the exporter writes Shape, Gather, Unsqueeze, Concat before the Reshape."""
    torch.manual_seed(0)
    path = tmp_path / "viewed.onnx"
    x = np.random.default_rng(0).standard_normal((3, 3, 8, 8)).astype(np.float32)
    torch.onnx.export(
        Viewed().eval(), torch.from_numpy(x), str(path), input_names=["x"], dynamic_axes={"x": {0: "N"}}, dynamo=False
    )
    assert {"Shape", "Gather", "ReduceMean"} <= {node.op_type for node in oracle("onnx").load(path).graph.node}
    model = load_onnx(path)
    expected = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"]).run(None, {"x": x})[0]
    np.testing.assert_allclose(Forward(model.network, model.weights)(x), expected, rtol=1e-4, atol=1e-6)


def export_and_compare(module, path, x, dynamo, opset):
    axes = {"x": {0: "N", 2: "H", 3: "W"}}
    dynamic = (
        {"dynamo": True, "dynamic_shapes": {"x": {axis: torch.export.Dim.AUTO for axis in axes["x"]}}, "verbose": False}
        if dynamo
        else {"dynamo": False, "dynamic_axes": axes}
    )
    torch.onnx.export(module, (torch.from_numpy(x),), str(path), input_names=["x"], opset_version=opset, **dynamic)
    model = load_onnx(path)
    session = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    for shape in [x.shape, (3, 3, 11, 7)]:
        image = np.random.default_rng(1).standard_normal(shape).astype(np.float32)
        expected = session.run(None, {"x": image})[0]
        np.testing.assert_allclose(Forward(model.network, model.weights)(image), expected, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("opset", [11, 13, 17, 18])
def test_hand_written_model_code_at_every_opset(tmp_path, opset):
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 10)).astype(np.float32)
    export_and_compare(hand_written_cnn(), tmp_path / "hand.onnx", x, dynamo=False, opset=opset)


def test_hand_written_model_code_by_the_dynamo_exporter(tmp_path):
    """PyTorch's default exporter (``dynamo=True``, onnxscript): Reshape with allowzero, Pow for the cube."""
    oracle("onnxscript")
    x = np.random.default_rng(0).standard_normal((2, 3, 9, 10)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        export_and_compare(hand_written_cnn(), tmp_path / "hand.onnx", x, dynamo=True, opset=18)
