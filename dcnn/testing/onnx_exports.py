"""ONNX files for the tests and ``scripts/bench_onnx.py``: small PyTorch networks and zoo references exported with
``torch.onnx.export``, and models that dcnn must refuse.

Everything is written at run time into a folder the caller owns (a test's ``tmp_path``), never downloaded and
never committed. Importing this module needs PyTorch and onnx (the ``test`` and ``bench`` extras).
"""

from __future__ import annotations

import os
import warnings
from pathlib import Path

import numpy as np
import onnx
import torch
from onnx import TensorProto, helper
from torch import nn

from dcnn.network.weights import init_weights
from dcnn.network.zoo import get_model
from dcnn.testing.torch_models import torch_model

__all__ = [
    "INPUT_NAME",
    "chain_cnn",
    "channels_last_model",
    "export",
    "export_zoo",
    "hand_written_cnn",
    "residual_cnn",
    "run_onnxruntime",
    "two_heads_cnn",
    "unsupported_model",
]

#: The input name of every exported model.
INPUT_NAME = "image"


class ResidualCNN(nn.Module):
    """A stem, one residual block with a projection shortcut, a branch pair joined by concatenation, a classifier."""

    def __init__(self, classes: int = 7):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.body = nn.Sequential(
            nn.Conv2d(8, 12, 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(12),
            nn.ReLU(),
            nn.Conv2d(12, 12, 3, padding=1, bias=False),
            nn.BatchNorm2d(12),
        )
        self.shortcut = nn.Sequential(nn.Conv2d(8, 12, 1, stride=2, bias=False), nn.BatchNorm2d(12))
        self.left = nn.Conv2d(12, 6, 1)
        self.right = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(12, 6, 3, padding=1, groups=2))
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(12, classes))

    def forward(self, x):
        x = self.stem(x)
        x = torch.relu(self.body(x) + self.shortcut(x))
        x = torch.cat([self.left(x), torch.sigmoid(self.right(x)) * 2.0], dim=1)
        return self.head(x)


class HandWritten(nn.Module):
    """Model code as users write it: normalisation inside the model, a hand-written hard swish, swish as
    ``x * sigmoid(x)``, SiLU, GELU's tanh approximation, a difference of two maps, ``x.chunk`` and ShuffleNet's
    channel shuffle on ``x.size()``, ``x.mean([2, 3], keepdim=True)``, ``F.adaptive_avg_pool2d(x, 1)``,
    ``torch.cat`` and a view to ``(n, 2 * c)``, a softmax."""

    def __init__(self):
        super().__init__()
        self.register_buffer("mean", torch.tensor([0.485, 0.456, 0.406]).view(1, 3, 1, 1))
        self.register_buffer("std", torch.tensor([0.229, 0.224, 0.225]).view(1, 3, 1, 1))
        self.conv = nn.Conv2d(3, 8, 3, padding=1)
        self.fc = nn.Linear(16, 5)

    def forward(self, x):
        functional = nn.functional
        x = self.conv((x - self.mean) / self.std)
        x = x * functional.relu6(x + 3) / 6
        y = x * torch.sigmoid(x) + functional.gelu(x, approximate="tanh")
        z = functional.hardswish(x) - functional.silu(x)
        left, right = z.chunk(2, dim=1)
        z = torch.cat([right, functional.relu(left)], 1)
        n, c, h, w = z.size()
        z = z.view(n, 2, c // 2, h, w).transpose(1, 2).contiguous().view(n, -1, h, w)
        pooled = torch.cat([y.mean([2, 3], keepdim=True), functional.adaptive_avg_pool2d(z, 1)], 1)
        return functional.softmax(self.fc(pooled.view(n, 2 * c)), dim=1)


def hand_written_cnn() -> nn.Module:
    """:class:`HandWritten` with random weights drawn from PyTorch's seeded generator, in eval mode."""
    torch.manual_seed(3)
    return HandWritten().eval()


def chain_cnn(classes: int = 10) -> nn.Module:
    """A chain: convolutions with batch norm, ReLU, ReLU6 and leaky ReLU, max and average pooling, a global
    pool and two fully connected layers (random weights drawn from PyTorch's seeded generator)."""
    torch.manual_seed(0)
    module = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.MaxPool2d(2),
        nn.Conv2d(8, 16, 3, stride=2, padding=1),
        nn.ReLU6(),
        nn.AvgPool2d(3, 1, 1, count_include_pad=False),
        nn.Conv2d(16, 16, 3, padding=2, dilation=2),
        nn.LeakyReLU(0.1),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
        nn.Linear(16, 32),
        nn.ReLU(),
        nn.Linear(32, classes),
    )
    return _randomised(module)


def residual_cnn(classes: int = 7) -> nn.Module:
    """:class:`ResidualCNN` with random weights and batch-norm statistics."""
    torch.manual_seed(1)
    return _randomised(ResidualCNN(classes))


class TwoHeads(nn.Module):
    """Two branches from the image joined after a flatten: one convolution flattened, the other averaged to a
    vector per channel, concatenated. No layer starts a classifier head that every later node follows from, so
    spatial mode cannot split it; batch and single mode run it whole."""

    def __init__(self) -> None:
        super().__init__()
        self.flattened = nn.Conv2d(3, 4, 3)
        self.pooled = nn.Conv2d(3, 4, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([torch.flatten(self.flattened(x), 1), self.pooled(x).mean([2, 3])], 1)


def two_heads_cnn() -> nn.Module:
    """:class:`TwoHeads` with random weights drawn from PyTorch's seeded generator, in eval mode."""
    torch.manual_seed(4)
    return TwoHeads().eval()


def _randomised(module: nn.Module) -> nn.Module:
    """``module`` in eval mode with non-trivial batch-norm statistics (so folding them is tested)."""
    generator = torch.Generator().manual_seed(2)
    for layer in module.modules():
        if isinstance(layer, nn.BatchNorm2d):
            layer.running_mean.copy_(torch.randn(layer.num_features, generator=generator) * 0.1)
            layer.running_var.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
            layer.weight.data.copy_(torch.rand(layer.num_features, generator=generator) + 0.5)
            layer.bias.data.copy_(torch.randn(layer.num_features, generator=generator) * 0.1)
    return module.eval()


def export(
    module: nn.Module, path: str | os.PathLike, input_shape: tuple[int, int, int], dynamic: bool = True, opset: int = 17
) -> Path:
    """Export ``module`` to ``path`` with input :data:`INPUT_NAME` of ``(batch, *input_shape)``.

    ``dynamic``: batch, height and width are named dimensions (any size); otherwise the batch is 1 and the
    input size fixed. Returns the path.
    """
    axes = {INPUT_NAME: {0: "batch", 2: "height", 3: "width"}} if dynamic else None
    with torch.no_grad(), warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # dynamo=False: the TorchScript exporter (no onnxscript)
        torch.onnx.export(
            module,
            (torch.zeros((1, *input_shape)),),
            str(path),
            input_names=[INPUT_NAME],
            output_names=["logits"],
            dynamic_axes=axes,
            opset_version=opset,
            dynamo=False,
        )
    return Path(path)


def export_zoo(
    name: str, path: str | os.PathLike, input_shape: tuple[int, int, int], seed: int = 0, dynamic: bool = True
) -> Path:
    """The PyTorch reference of zoo model ``name`` (:mod:`dcnn.testing.torch_models`) with dcnn's seeded weights,
    exported to ``path``."""
    return export(torch_model(name, init_weights(get_model(name), seed)), path, input_shape, dynamic)


def unsupported_model(path: str | os.PathLike) -> Path:
    """A model with two unsupported operator types (``TopK`` twice, ``Cos`` once) after a supported ``Relu``."""
    k = helper.make_tensor("k", TensorProto.INT64, [1], [2])
    nodes = [
        helper.make_node("Relu", ["x"], ["r"], name="relu"),
        helper.make_node("Cos", ["r"], ["c"], name="cosine"),
        helper.make_node("Flatten", ["c"], ["f"], name="flat"),
        helper.make_node("TopK", ["f", "k"], ["v1", "i1"], name="top_a"),
        helper.make_node("TopK", ["v1", "k"], ["y", "i2"], name="top_b"),
    ]
    graph = helper.make_graph(
        nodes,
        "refused",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 3, 8, 8])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 2])],
        initializer=[k],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def channels_last_model(path: str | os.PathLike) -> Path:
    """A model of TensorFlow's layout, as tf2onnx writes it: an N x H x W x C input transposed to channels-first
    before its convolution."""
    weight = onnx.numpy_helper.from_array(np.ones((4, 3, 3, 3), np.float32), "W")
    nodes = [
        helper.make_node("Transpose", ["x"], ["t"], perm=[0, 3, 1, 2]),
        helper.make_node("Conv", ["t", "W"], ["y"]),
    ]
    graph = helper.make_graph(
        nodes,
        "channels_last",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", 16, 16, 3])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4, 14, 14])],
        initializer=[weight],
    )
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 13)])
    onnx.checker.check_model(model)
    onnx.save(model, str(path))
    return Path(path)


def run_onnxruntime(path: str | os.PathLike, batch: np.ndarray) -> np.ndarray:
    """The model's first output for ``batch`` computed by onnxruntime on one thread, one image at a time (so
    models with a fixed batch of 1 run too): the oracle."""
    import onnxruntime

    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = 1
    options.inter_op_num_threads = 1
    session = onnxruntime.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])
    name = session.get_inputs()[0].name
    images = np.ascontiguousarray(batch, np.float32)
    return np.concatenate([session.run(None, {name: images[i : i + 1]})[0] for i in range(len(images))])
