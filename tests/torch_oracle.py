"""PyTorch as the oracle of whole networks: a dcnn network and its weights as a ``torch.nn`` module.

Imported by the tests that compare with PyTorch; :func:`conftest.oracle` imports torch, so a missing torch
skips those tests on a developer's machine and fails them in CI.
"""

import numpy as np
from conftest import oracle

from dcnn.network import layers as L


def torch_layer(torch, layer):
    """The ``torch.nn`` module of one dcnn layer spec (the zoo's layer types), its tensors on the meta device
    (unallocated until the weights are assigned)."""
    nn = torch.nn
    if isinstance(layer, L.Conv2d):
        return nn.Conv2d(layer.in_channels, layer.out_channels, layer.kernel_size, layer.stride, layer.padding,
                         layer.dilation, layer.groups, layer.bias, device="meta")
    if isinstance(layer, L.AvgPool2d):
        return nn.AvgPool2d(layer.kernel_size, layer.stride, layer.padding, layer.ceil_mode, layer.count_include_pad)
    if isinstance(layer, L.MaxPool2d):
        return nn.MaxPool2d(layer.kernel_size, layer.stride, layer.padding, layer.dilation, ceil_mode=layer.ceil_mode)
    if isinstance(layer, L.AdaptiveAvgPool2d):
        return nn.AdaptiveAvgPool2d(layer.output_size)
    if isinstance(layer, L.BatchNorm2d):
        return nn.BatchNorm2d(layer.num_features, layer.eps, device="meta")
    if isinstance(layer, L.Linear):
        return nn.Linear(layer.in_features, layer.out_features, layer.bias, device="meta")
    return {L.ReLU: nn.ReLU, L.Tanh: nn.Tanh, L.Dropout: nn.Dropout, L.Flatten: nn.Flatten}[type(layer)]()


def torch_forward(network, weights, x: np.ndarray) -> np.ndarray:
    """The network's output for a ``(B, C, H, W)`` float32 batch, computed by PyTorch in eval mode.

    A chain becomes a ``torch.nn.Sequential`` of its layers; a zoo DAG is the hand-written module of
    :mod:`dcnn.testing.torch_models` (torchvision's layout)."""
    torch = oracle("torch")
    if not network.is_chain:
        from dcnn.testing.torch_models import torch_model

        with torch.no_grad():
            return torch_model(network.name, weights)(torch.from_numpy(np.ascontiguousarray(x))).numpy()
    module = torch.nn.Sequential()
    groups = {}
    for name, layer in network.layers:
        converted = torch_layer(torch, layer)
        if "." not in name:
            module.add_module(name, converted)
            continue
        head, tail = name.split(".")
        if head not in groups:
            groups[head] = torch.nn.Sequential()
            module.add_module(head, groups[head])
        groups[head].add_module(tail, converted)
    module.load_state_dict({key: torch.from_numpy(np.ascontiguousarray(value)) for key, value in weights.items()},
                           assign=True)
    module.eval()
    with torch.no_grad():
        return module(torch.from_numpy(np.ascontiguousarray(x))).numpy()
